"""Partition rings and the bus control block: POSIX shared memory, mapped.

:class:`Ring` is safe to use from many processes at once (that is its job);
one ``Ring`` object is not meant to be shared by threads without a lock.
Python reads header words through a ``memoryview`` cast to int64: on x86-64
(and any 64-bit platform CPython supports) an aligned 8-byte read is a single
load, and CPython does not reorder it. Everything that must be atomic across
processes (claims, publishes, counters) happens in the kernels.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
import weakref

import numpy as np
import posix_ipc

from shmbus.core import futex as _futex
from shmbus.core import paths as _paths, ownership as _private
from shmbus.errors import ShmbusError
from shmbus.layout import ring as R

_Q = 8  # bytes per int64 word
# Map rings with their pages already in our page tables: a first touch of a
# page costs a fault (microseconds in a VM), which would land on sends.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map(fd: int, size: int) -> np.ndarray:
    """Map ``size`` bytes of ``fd`` shared, read-write, as a uint8 array; no fd is kept.

    (``mmap.mmap`` keeps a duplicate of the fd for as long as the mapping lives: one fd
    per ring would make the open-files limit a limit on partitions.) The mapping goes
    when the last array or memoryview over it is gone, never under a live view.
    """
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, _MAP_FLAGS, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap failed: {os.strerror(err)}")
    raw = (ctypes.c_ubyte * size).from_address(addr)
    # not at exit: a daemon thread may still be reading it; the mapping goes with the process
    weakref.finalize(raw, _libc.munmap, addr, size).atexit = False
    return np.frombuffer(raw, np.uint8)


def _shm_open(name: str, **kw):
    """``posix_ipc.SharedMemory`` whose running out of fds is an OSError with errno EMFILE or ENFILE."""
    try:
        return posix_ipc.SharedMemory(name, **kw)
    except posix_ipc.Error:
        raise
    except OSError as e:
        if e.errno is None:  # posix_ipc gives no errno; its messages tell the two cases apart
            msg = str(e)
            if "maximum number of files open" in msg:
                raise OSError(errno.EMFILE, msg) from None
            if "total number of open files" in msg:
                raise OSError(errno.ENFILE, msg) from None
        raise


def create_shm(name: str, size: int):
    """Create ``name`` exclusively, mode 0600, and map it. Raises ExistentialError if it exists."""
    old = os.umask(0o077)
    try:
        shm = _shm_open(name, flags=posix_ipc.O_CREX, mode=0o600, size=size)
    finally:
        os.umask(old)
    try:
        try:
            # reserve the pages now: on a full /dev/shm a mapped page would be a SIGBUS later
            os.posix_fallocate(shm.fd, 0, size)
        except OSError as e:
            shm.unlink()
            free = _shm_free()
            raise ShmbusError(
                f"no room in /dev/shm for a shared-memory object: name={name} bytes={size} free_bytes={free} "
                f"({e.strerror}; use a smaller ring.bytes, delete unused topics, or enlarge /dev/shm, e.g. "
                f"docker run --shm-size=1g)") from None
        try:
            mm = _map(shm.fd, size)
        except OSError:
            shm.unlink()
            raise
    finally:
        shm.close_fd()
    return mm


def _shm_free() -> int:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


def open_shm(name: str):
    """Map an existing object of the bus, after checking that it is this user's alone.

    Raises ExistentialError if there is none, :class:`ForeignObjectError` if
    another user owns it or others may open it (nothing is read or written).
    """
    try:
        shm = _shm_open(name)
    except posix_ipc.PermissionsError:
        _private.check_path(name)  # another user's, mode 0600: say whose
        raise
    try:
        _private.check_object(name, shm.fd)
        size = os.fstat(shm.fd).st_size
        if size == 0:
            raise posix_ipc.ExistentialError(f"{name} is still being created")
        mm = _map(shm.fd, size)
    finally:
        shm.close_fd()
    return mm


def unlink(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


class Mapped:
    """A shared mapping (a uint8 array, see :func:`_map`; ``buf`` for kernels) and an int64 view of its header."""

    def __init__(self, name: str, mm: np.ndarray, header_bytes: int):
        self.name = name
        self._mm = mm
        self.buf = mm
        self.words = memoryview(mm)[:header_bytes].cast("q")
        self.address = self.buf.ctypes.data

    def close(self) -> None:
        """Drop this object's views; the mapping goes with the last view anyone holds (never under one)."""
        if self._mm is None:
            return
        self.words.release()
        self.buf = None
        self._mm = None

    def memoryview(self) -> memoryview:
        return memoryview(self._mm)


class Ring(Mapped):
    """One partition's ring (see layout/ring.py for the bytes)."""

    def __init__(self, name: str, mm: np.ndarray):
        super().__init__(name, mm, R.HEADER_BYTES)
        w = self.words
        self.ring_bytes = w[R.OFF_RING_BYTES // _Q]
        self.mask = self.ring_bytes - 1

    @classmethod
    def create(cls, name: str, ring_bytes: int, base_offset: int, topic_id: int, partition: int,
               max_message_bytes: int = 1 << 30) -> "Ring":
        mm = create_shm(name, R.HEADER_BYTES + ring_bytes)
        w = memoryview(mm)[: R.HEADER_BYTES].cast("q")
        w[R.OFF_VERSION // _Q] = R.VERSION | (R.HEADER_BYTES << 32)
        w[R.OFF_RING_BYTES // _Q] = ring_bytes
        w[R.OFF_BASE_OFFSET // _Q] = base_offset
        w[R.OFF_TOPIC_ID // _Q] = topic_id
        w[R.OFF_PARTITION // _Q] = partition
        w[R.OFF_MAX_MESSAGE // _Q] = max_message_bytes
        w[R.OFF_CLAIM_POS // _Q] = 0
        w[R.OFF_CLAIM_OFFSET // _Q] = base_offset
        w[R.OFF_RELEASED // _Q] = 0
        w[R.OFF_RECLAIMING // _Q] = 0
        w[R.OFF_DURABLE // _Q] = base_offset
        w[R.OFF_MAGIC // _Q] = R.MAGIC  # last: the ring is ready
        w.release()
        return cls(name, mm)

    @classmethod
    def open(cls, name: str, wait_s: float = 2.0) -> "Ring":
        """Open an existing ring; waits briefly for one that is being created."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                mm = open_shm(name)
            except posix_ipc.ExistentialError:
                raise
            w = memoryview(mm)[:8].cast("q")
            ok = w[0] == R.MAGIC
            w.release()
            if ok:
                return cls(name, mm)
            del mm
            if time.monotonic() > deadline:
                raise posix_ipc.ExistentialError(f"{name} was never initialised")
            time.sleep(0.001)

    # --- header words, read from Python ---
    def released(self) -> int:
        return self.words[R.OFF_RELEASED // _Q]

    def reclaiming(self) -> int:
        """Bytes below this may be changing (being zeroed); a copy from below it is void."""
        return self.words[R.OFF_RECLAIMING // _Q]

    def durable(self) -> int:
        return self.words[R.OFF_DURABLE // _Q]

    def claim_position(self) -> int:
        return self.words[R.OFF_CLAIM_POS // _Q]

    def next_offset(self) -> int:
        """The offset the next claim gets (Kafka's log end offset)."""
        return self.words[R.OFF_CLAIM_OFFSET // _Q]

    def base_offset(self) -> int:
        return self.words[R.OFF_BASE_OFFSET // _Q]

    def topic_id(self) -> int:
        return self.words[R.OFF_TOPIC_ID // _Q]

    def deleted(self) -> bool:
        return bool(self.words[R.OFF_FLAGS // _Q] & R.FLAG_DELETED)

    def mark_deleted(self) -> None:
        self.words[R.OFF_FLAGS // _Q] = self.words[R.OFF_FLAGS // _Q] | R.FLAG_DELETED

    def max_message_bytes(self) -> int:
        return self.words[R.OFF_MAX_MESSAGE // _Q]

    def set_max_message_bytes(self, n: int) -> None:
        self.words[R.OFF_MAX_MESSAGE // _Q] = n

    def durable_want(self) -> int:
        return self.words[R.OFF_DURABLE_WANT // _Q]

    def want_durable(self, offset: int) -> None:
        if self.words[R.OFF_DURABLE_WANT // _Q] < offset:
            self.words[R.OFF_DURABLE_WANT // _Q] = offset

    def set_durable(self, offset: int) -> None:
        self.words[R.OFF_DURABLE // _Q] = offset

    def fill(self) -> int:
        """Bytes claimed and not yet released (approximate, racy by nature)."""
        return self.claim_position() - self.released()


class ControlBlock(Mapped):
    """The bus's wake-up words (one per data dir)."""

    def __init__(self, name: str, mm: np.ndarray):
        super().__init__(name, mm, R.CTL_BYTES)
        self.u32 = memoryview(mm)[: R.CTL_BYTES].cast("I")
        self.doorbell_addr = self.address + R.CTL_OFF_DOORBELL
        self.spill_bell_addr = self.address + R.CTL_OFF_SPILL_BELL

    def close(self) -> None:
        if self._mm is not None:
            self.u32.release()
        super().close()

    @classmethod
    def open_or_create(cls, bid: str, data_dir: str = "") -> "ControlBlock":
        name = _paths.ctl_name(bid)
        try:
            mm = create_shm(name, R.CTL_BYTES)
            path = data_dir.encode()[: R.CTL_BYTES - R.CTL_OFF_DATA_DIR - 4]
            memoryview(mm)[R.CTL_OFF_DATA_DIR: R.CTL_OFF_DATA_DIR + 4 + len(path)] = len(path).to_bytes(4, "little") + path
            w = memoryview(mm)[:8].cast("q")
            w[0] = R.CTL_MAGIC
            w.release()
        except posix_ipc.ExistentialError:
            mm = open_shm(name)
        return cls(name, mm)

    def data_dir(self) -> str:
        """The data dir of the bus that made this block ('' if unknown)."""
        n = int.from_bytes(bytes(self._mm[R.CTL_OFF_DATA_DIR: R.CTL_OFF_DATA_DIR + 4]), "little")
        return bytes(self._mm[R.CTL_OFF_DATA_DIR + 4: R.CTL_OFF_DATA_DIR + 4 + n]).decode(errors="replace")

    # consumers
    def doorbell(self) -> int:
        return self.u32[R.CTL_OFF_DOORBELL // 4]

    def ring_doorbell(self) -> None:
        """Wake every sleeping consumer of the bus (they re-check their partitions)."""
        i = R.CTL_OFF_DOORBELL // 4
        self.u32[i] = (self.u32[i] + 1) & 0xFFFFFFFF
        _futex.wake(self.doorbell_addr)

    def sleep(self, seen: int, timeout_s: float) -> None:
        _futex.wait(self.doorbell_addr, seen, timeout_s)

    # the spiller
    def spill_bell(self) -> int:
        return self.u32[R.CTL_OFF_SPILL_BELL // 4]

    def ring_spill_bell(self) -> None:
        i = R.CTL_OFF_SPILL_BELL // 4
        self.u32[i] = (self.u32[i] + 1) & 0xFFFFFFFF
        if self.u32[R.CTL_OFF_SPILLER_ASLEEP // 4]:
            _futex.wake(self.spill_bell_addr)

    def spill_errno(self) -> int:
        """The errno with which the supervisor's spills fail (0: spilling works)."""
        return self.u32[R.CTL_OFF_SPILL_ERRNO // 4]

    def set_spill_errno(self, errno: int) -> None:
        self.u32[R.CTL_OFF_SPILL_ERRNO // 4] = errno & 0xFFFFFFFF

    def spill_failure(self, data_dir: str) -> str | None:
        """'spilling is failing: <what> at <data dir>' while the supervisor's spills fail, else None."""
        e = self.spill_errno()
        if not e:
            return None
        return f"spilling is failing: {os.strerror(e)[:1].lower()}{os.strerror(e)[1:]} at {data_dir}"

    def spiller_sleep(self, seen: int, timeout_s: float) -> None:
        i = R.CTL_OFF_SPILLER_ASLEEP // 4
        self.u32[i] = 1
        try:
            _futex.wait(self.spill_bell_addr, seen, timeout_s)
        finally:
            self.u32[i] = 0
