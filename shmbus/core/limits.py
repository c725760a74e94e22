"""Operating-system limits a bus can run into, and the errors that name them.

A process has ``RLIMIT_NOFILE`` fds (``ulimit -n``; EMFILE past it), the
machine ``fs.file-max`` (ENFILE), and a process ``vm.max_map_count`` memory
mappings (ENOMEM from mmap; each ring or group table is one mapping).
"""

from __future__ import annotations

import errno
import resource

from shmbus.errors import ResourceLimitError


def fd_exhausted(e: BaseException) -> bool:
    """Is ``e`` the process (EMFILE) or the system (ENFILE) running out of file descriptors?"""
    return isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE)


def nofile() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def limit_error(e: OSError, doing: str) -> ResourceLimitError | None:
    """The :class:`ResourceLimitError` for an OSError that is a limit (None if it is not one)."""
    if e.errno == errno.EMFILE:
        soft, hard = nofile()
        return ResourceLimitError(
            f"too many open files in this process while {doing}: RLIMIT_NOFILE soft={soft} hard={hard} "
            f"(raise it: `ulimit -n {max(4 * soft, 4096) if hard == resource.RLIM_INFINITY else hard}` in the "
            f"shell that starts it, or LimitNOFILE= in a systemd unit, or --ulimit nofile= for docker; "
            f"above the hard limit, raise that too)")
    if e.errno == errno.ENFILE:
        return ResourceLimitError(
            f"too many open files on this machine while {doing}: fs.file-max={_read('/proc/sys/fs/file-max')} "
            f"(raise it: sysctl -w fs.file-max=..., or close processes that hold many files)")
    if e.errno == errno.ENOMEM and "mmap" in str(e):
        return ResourceLimitError(
            f"cannot map shared memory while {doing}: out of memory or of memory mappings: "
            f"vm.max_map_count={_read('/proc/sys/vm/max_map_count')} (raise it: sysctl -w vm.max_map_count=..., "
            f"or use fewer partitions)")
    return None


__all__ = ["fd_exhausted", "limit_error", "nofile"]
