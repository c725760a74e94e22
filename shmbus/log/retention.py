"""Retention: delete whole closed segments by age or by size (``cleanup.policy`` with ``delete``).

Policy (:func:`segments_to_delete`, a pure function; the clock is passed in),
as Kafka's log manager does it:

- Only closed segments; never the active one (the one being appended to).
- ``retention.ms`` >= 0: a segment whose newest record is older than
  ``now - retention.ms`` goes.
- ``retention.bytes`` >= 0: while the partition (every ``.log``, the active
  one too) would still hold at least ``retention.bytes`` without its oldest
  segment, that segment goes.
- Oldest first, and only a prefix: deletion stops at the first segment that
  breaches neither limit, so the log stays contiguous.
- -1 means no limit.

:func:`enforce` is the supervisor's glue for one partition: it gathers the
facts, applies the policy and deletes (``swap.delete_segment``: the log
first). When the segment to delete is the last one (the writer rolled it by
``segment.ms`` and nothing new came), an empty active segment is made at
the log end offset first, so the partition's start offset survives.

Readers below the new start get ``OffsetOutOfRangeError`` or their
``auto_offset_reset``; a reader with the file open reads on and lets go of
it when it catches up or within ``PartitionLog.CHECK_S``.
"""

from __future__ import annotations

import contextlib

import os
from typing import NamedTuple

import numpy as np

from shmbus.kernels import frames as K
from shmbus.layout import frame as F
from shmbus.log import swap
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus.log.files import segment_path, list_segments
from shmbus.log.index import read_entries


class SegmentInfo(NamedTuple):
    base: int
    size: int  # bytes of the .log
    max_ts: int  # newest record's timestamp (ms); -1 if the segment is empty
    active: bool


def segments_to_delete(segments: list[SegmentInfo], config: dict, now_ms: int) -> list[int]:
    """Bases of the segments retention deletes now, oldest first (see the module doc)."""
    if "delete" not in config["cleanup.policy"].split(","):
        return []
    retention_ms = config["retention.ms"]
    retention_bytes = config["retention.bytes"]
    segs = sorted(segments)
    total = sum(s.size for s in segs)
    out = []
    for s in segs:
        if s.active:
            break
        too_old = retention_ms >= 0 and s.max_ts < now_ms - retention_ms
        too_big = retention_bytes >= 0 and total - s.size >= retention_bytes
        if not (too_old or too_big):
            break
        out.append(s.base)
        total -= s.size
    return out


# (pdir, base) -> (size, mtime_ns, inode, max_ts): closed segments do not change unless replaced
_max_ts_cache: dict[tuple[str, int], tuple[int, int, int, int]] = {}


def segment_max_timestamp(pdir: str, base: int) -> int:
    """The newest record's timestamp in a segment (-1 if empty).

    The last ``.timeindex`` entry is the largest timestamp up to the last
    index point; the frames after it (at most ~``INDEX_INTERVAL`` bytes and a
    frame) are scanned for the rest. Cached per file version.
    """
    path = segment_path(pdir, base)
    st = os.stat(path)
    key = (pdir, base)
    hit = _max_ts_cache.get(key)
    if hit is not None and hit[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
        return hit[3]
    best = -1
    pos = 0
    try:
        ent = read_entries(segment_path(pdir, base, ".index"), INDEX_DTYPE)
        tent = read_entries(segment_path(pdir, base, ".timeindex"), TIMEINDEX_DTYPE)
        n = min(len(ent), len(tent))
        if n and int(ent["pos"][n - 1]) < st.st_size:
            pos = int(ent["pos"][n - 1])
            best = int(tent["ts"][n - 1])
    except FileNotFoundError:
        pass
    with open(path, "rb") as f:
        f.seek(pos)
        data = np.frombuffer(f.read(), np.uint8)
    meta = np.zeros((1025, K.META_COLS), np.int64)
    at = 0
    while at < len(data):
        n = K.scan(data, 0, -1, at, len(data), 1024, 0, False, meta)
        if n:
            best = max(best, int(meta[1: n + 1, F.M_TS].max()))
        if int(meta[0, F.MS_POS]) <= at:
            break
        at = int(meta[0, F.MS_POS])
    _max_ts_cache[key] = (st.st_size, st.st_mtime_ns, st.st_ino, best)
    return best


def segment_infos(pdir: str, active_base: int | None) -> list[SegmentInfo]:
    out = []
    for base in list_segments(pdir):
        try:
            size = os.stat(segment_path(pdir, base)).st_size
            max_ts = segment_max_timestamp(pdir, base) if base != active_base else -1
        except FileNotFoundError:
            continue
        out.append(SegmentInfo(base, size, max_ts, base == active_base))
    return out


def enforce(writer, config: dict, now_ms: int, lock=None) -> list[int]:
    """Apply retention to the partition of ``writer`` (a ``SegmentWriter``). Returns the bases deleted.

    Runs in the log-keeper thread while the spill thread appends: only closed segments are
    deleted (the active one, and any made after the listing, are never in ``doomed``), and the
    writer is touched (``start_empty``) only under ``lock``, the partition's state lock.
    """
    if "delete" not in config["cleanup.policy"].split(","):
        return []
    if config["retention.ms"] < 0 and config["retention.bytes"] < 0:
        return []
    pdir = writer.pdir
    infos = segment_infos(pdir, writer.active_base())
    doomed = segments_to_delete(infos, config, now_ms)
    if not doomed:
        return []
    if doomed[-1] == infos[-1].base:
        last = infos[-1]
        with lock if lock is not None else contextlib.nullcontext():
            # judged without the lock: the writer may have made this segment its active one
            # again since (an open that failed half-way, then a retry) and appended to it
            try:
                size = os.stat(segment_path(pdir, last.base)).st_size
            except FileNotFoundError:
                size = None
            if writer.active_base() == last.base or size != last.size:
                doomed = doomed[:-1]
            else:
                writer.start_empty(now_ms)  # keep a segment: its base is the start offset
    for base in doomed:
        swap.delete_segment(pdir, base)
        _max_ts_cache.pop((pdir, base), None)
    return doomed


__all__ = ["SegmentInfo", "enforce", "segment_infos", "segment_max_timestamp", "segments_to_delete"]
