"""Whether a supervisor runs for a data dir: it holds an exclusive ``flock`` on the lock file
(``supervisor.lock``, whose first line is its pid) for its whole life."""

from __future__ import annotations

import fcntl
import os

from shmbus.core import paths as _paths


def running_pid(data_dir: str) -> int | None:
    """The pid of the live supervisor of ``data_dir``, or None (probes its lock; changes nothing).

    -1: the lock is held but the pid is not written yet.
    """
    path = _paths.lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.pread(fd, 32, 0).split()[0])
            except (ValueError, IndexError):
                return -1  # locked, pid not written yet
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


__all__ = ["running_pid"]
