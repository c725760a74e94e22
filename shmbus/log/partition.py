"""A partition's ring, made again at the log end when its shared memory is gone, where a
partition starts (the first offset on disk, else the ring's base), and the first record at or
after a time (on disk, else in the ring)."""

from __future__ import annotations

import os

import numpy as np
import posix_ipc

from shmbus.core import native
from shmbus.core import paths as _paths
from shmbus.core.ring import Ring
from shmbus.errors import UnknownTopicError
from shmbus.layout import frame
from shmbus.layout import ring as ring_layout
from shmbus.log import metadata


def open_or_recreate_ring(data_dir: str, bid: str, meta: metadata.TopicMeta, partition: int) -> Ring:
    """The partition's ring; if its shared memory is gone (a reboot), a new empty one at the log end.

    The log end is the offset after the last record on disk whose checksum
    holds: where the supervisor's recovery cuts a torn tail, whoever gets
    here first.
    """
    name = _paths.ring_name(bid, meta.id, partition)
    try:
        return Ring.open(name)
    except posix_ipc.ExistentialError:
        pass
    from shmbus.log.recovery import log_end_offset  # (numba: only when a ring must be remade)

    pdir = _paths.partition_dir(data_dir, meta.name, partition)
    if not os.path.isdir(pdir):
        raise UnknownTopicError(f"topic does not exist: topic={meta.name!r} partition={partition}")
    end = log_end_offset(pdir)
    base = 0 if end is None else end
    try:
        return Ring.create(name, meta.config["ring.bytes"], base, meta.id_int, partition,
                           meta.config["max.message.bytes"])
    except posix_ipc.ExistentialError:
        return Ring.open(name)


def partition_start_offset(ring: Ring, log) -> int:
    """The first offset still readable: the first on disk, else the ring's base offset.

    Every offset from the ring's base (the log end when the ring was made) on
    is on disk or in the ring, so with an empty disk the base is the start,
    whatever the spiller is doing meanwhile. (The first frame found in the
    ring would not do: that races the spiller moving frames to disk.)
    """
    s = log.start_offset()
    return s if s is not None else ring.base_offset()


def offset_for_time(ring: Ring, log, ts: int, meta) -> tuple[int, int] | None:
    """(offset, timestamp) of the first record whose timestamp is >= ``ts``: on disk, else in the ring; or None.

    ``meta``: a scan's int64 rows buffer (``len(meta) - 1`` frames per scan). The
    ring is scanned from the position the spiller was reclaiming before the disk
    was looked at; if it reclaimed past it meanwhile (what was scanned may have
    been overwritten), the search starts again.
    """
    for _ in range(100):
        rel = ring.reclaiming()
        hit = log.offset_for_time(ts)
        if hit is not None:
            return hit
        pos = rel
        found = None
        end = ring.released() + ring.ring_bytes
        while True:
            n = native.scan_frames(ring.buf, ring_layout.HEADER_BYTES, ring.mask, pos, end, len(meta) - 1, 0, False,
                                   meta)
            rows = meta[1: n + 1]
            h = np.nonzero(rows[:, frame.M_TS] >= ts)[0]
            if len(h):
                found = (int(rows[h[0], frame.M_OFFSET]), int(rows[h[0], frame.M_TS]))
                break
            if n == 0:
                break
            pos = int(meta[0, frame.MS_POS])
        if ring.reclaiming() <= rel:
            return found
    return None


__all__ = ["offset_for_time", "open_or_recreate_ring", "partition_start_offset"]
