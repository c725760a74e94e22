"""A partition's segment files by name: their paths, their listing, and its recovery point.

::

    data_dir/topics/<topic>/<partition>/
      00000000000000000000.log        frames (layout/frame.py), DATA only, in offset order
      00000000000000000000.index      (offset - base u32, file position u32) every ~4 KiB
      00000000000000000000.timeindex  (max timestamp so far i64, offset - base u32, pad u32)
      00000000000000123456.log        the next segment: its first offset is 123456
      ...
      recovery-point                  every segment ending below this offset is fsynced

The ``.log`` files are the truth; the indexes (log/index.py) are derived
(rebuildable by scanning the log) and only ever make a lookup start earlier
than needed.
"""

from __future__ import annotations

import os
import time

from shmbus.core import paths as core_paths, ownership
from shmbus.core.limits import fd_exhausted

RECOVERY_POINT = "recovery-point"  # in a partition dir: every segment ending below this offset is fsynced


def list_segments(pdir: str) -> list[int]:
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".log") and len(n) == 24 and n[:20].isdigit())


def segment_path(pdir: str, base: int, suffix: str = ".log") -> str:
    return os.path.join(pdir, core_paths.segment_name(base, suffix))


def read_recovery_point(pdir: str) -> int:
    """The partition's recovery point: records below it are fsynced (0 if unknown: check everything)."""
    try:
        with open(os.path.join(pdir, RECOVERY_POINT)) as f:
            return max(int(f.read().strip() or 0), 0)
    except (OSError, ValueError):
        return 0


def write_recovery_point(pdir: str, offset: int) -> None:
    """Record that every segment ending below ``offset`` is fsynced (not itself fsynced: a lost
    point only makes recovery check more)."""
    tmp = os.path.join(pdir, f"{RECOVERY_POINT}.tmp")
    try:
        ownership.write_file(os.path.join(pdir, RECOVERY_POINT), f"{offset}\n".encode(), fsync=False, tmp=tmp)
    except OSError:
        pass  # (a partition being deleted) a stale point only makes recovery check more


def fsync_path(path: str, patience_s: float = 0.0) -> bool:
    """fsync a file by name (a parked writer's, whose fds are closed; fsync syncs the file,
    whichever fd wrote it). True if synced or gone (deleted: nothing to keep). Out of fds,
    it retries for up to ``patience_s``, then raises."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        except OSError as e:
            if fd_exhausted(e) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

