"""futex(2) wait and wake on a 32-bit word in shared memory (Linux).

A shared (not PRIVATE) futex works across processes that map the same
object. Used only on the slow path: a consumer that has spun without data
sleeps here, and a producer that finds a sleeper wakes it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238, "riscv64": 98}.get(platform.machine(), 202)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at ``addr`` equals ``expected``, at most ``timeout_s``.

    Returns on a wake, a changed word, a signal or the timeout (callers re-check).
    """
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    r = _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_uint32(expected & 0xFFFFFFFF),
                 ctypes.byref(ts), None, 0)
    if r == -1:
        e = ctypes.get_errno()
        if e not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(e, os.strerror(e))


def wake(addr: int, n: int = _INT_MAX) -> int:
    """Wake up to ``n`` sleepers on the word at ``addr``."""
    return _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, n, None, None, 0)
