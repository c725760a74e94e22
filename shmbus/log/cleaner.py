"""Compaction (``cleanup.policy`` with ``compact``): keep the latest record per key.

The algorithm, per partition, in two passes over its segments:

1. Read every record on disk (closed segments and the active one) and note,
   per key, the latest record's offset and timestamp and the newest
   timestamp among its earlier versions (:class:`KeyInfo`).
2. Rewrite each closed segment that has a record to drop, keeping the
   others byte for byte (same offsets, same order; the gaps are where the
   dropped records were). A segment left with nothing is deleted, unless it
   is the last file (its base keeps the partition's start offset).

When a record may go (:func:`drop_time`, a pure function; the clock is
passed in): a record with a newer one of its key, once it is older than
``min.compaction.lag.ms``; a tombstone (a key with ``value=None``) that is
its key's latest, once it is older than ``delete.retention.ms`` and every
earlier version of its key may go too. Records without a key stay (Kafka
refuses them in compacted topics; shmbus keeps them). The active segment
is never rewritten.

The swap is atomic (``segments/swap.py``): a crash mid-clean leaves the old
segment or the new one. Readers holding the old file read on in it.

When to clean (:meth:`Cleaner.due`): the first time; when the closed
segments not yet cleaned hold at least ``DIRTY_RATIO`` of the closed bytes
(Kafka's ``min.cleanable.dirty.ratio``); when a record kept for its lag or a
tombstone kept for ``delete.retention.ms`` may go now; when the topic's
config changed. Run by the supervisor's log-keeper thread (daemon.py), beside the spill thread.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field

import numpy as np

from shmbus.kernels import frames as K
from shmbus.layout import frame as F
from shmbus.log import swap
from shmbus.log.files import segment_path, list_segments
from shmbus.log.recovery import index_entries

NEVER = 1 << 62  # drop_time of a record only a newer record of its key can drop
DIRTY_RATIO = 0.5


class KeyInfo:
    """Per key: the latest record's offset and timestamp; the newest timestamp of earlier versions."""

    __slots__ = ("earlier_max_ts", "latest", "latest_ts")

    def __init__(self, offset: int, ts: int):
        self.latest = offset
        self.latest_ts = ts
        self.earlier_max_ts = -1

    def add(self, offset: int, ts: int) -> None:
        if offset > self.latest:
            self.earlier_max_ts = max(self.earlier_max_ts, self.latest_ts)
            self.latest, self.latest_ts = offset, ts
        elif offset < self.latest:
            self.earlier_max_ts = max(self.earlier_max_ts, ts)


def drop_time(offset: int, ts: int, tombstone: bool, info: KeyInfo, lag_ms: int, delete_retention_ms: int) -> int:
    """From when (ms since the epoch) a keyed record may be dropped; ``NEVER`` if not by time.

    - Superseded (its key has a newer record): ``ts + min.compaction.lag.ms``.
    - The latest of its key, a value: never (until a newer record comes).
    - The latest, a tombstone: once it is older than both the lag and
      ``delete.retention.ms``, and every earlier version may be dropped.
    """
    if offset != info.latest:
        return ts + lag_ms
    if not tombstone:
        return NEVER
    t = max(ts + lag_ms, ts + delete_retention_ms)
    if info.earlier_max_ts >= 0:
        t = max(t, info.earlier_max_ts + lag_ms)
    return t


@dataclass
class SegmentRecords:
    """The records of one segment file, read whole."""

    data: np.ndarray  # the file's bytes
    rows: np.ndarray  # K.scan rows: pos, offset, ts, key len, value len, headers len, body index, frame len

    def keys(self) -> list:
        d = self.data
        return [d[bi: bi + kl].tobytes() if kl >= 0 else None
                for kl, bi in zip(self.rows[:, F.M_KLEN].tolist(), self.rows[:, F.M_BODY].tolist())]


def read_segment(path: str, limit: int | None = None) -> SegmentRecords:
    """Every record of a segment file (of its first ``limit`` bytes: the active segment, which the
    spill thread may be appending to, is read up to the size it had when the pass began); stops
    at the first bad frame (raises: a clean needs whole input)."""
    data = np.fromfile(path, np.uint8, count=-1 if limit is None else limit)
    meta = np.zeros((4097, K.META_COLS), np.int64)
    parts = []
    pos = 0
    while pos < len(data):
        n = K.scan(data, 0, -1, pos, len(data), 4096, 0, True, meta)
        if n:
            parts.append(meta[1: n + 1].copy())
        reason = int(meta[0, F.MS_REASON])
        new = int(meta[0, F.MS_POS])
        if reason in (K.STOP_CORRUPT, K.STOP_CRC, K.STOP_EMPTY) or (reason == K.STOP_END and new < len(data)):
            raise ValueError(f"segment has a bad frame, not cleaned: file={path} position={new}")
        if new <= pos:
            break
        pos = new
    rows = np.concatenate(parts) if parts else np.zeros((0, K.META_COLS), np.int64)
    return SegmentRecords(data, rows)


def keep_mask(seg: SegmentRecords, latest: dict, now_ms: int, lag_ms: int, delete_retention_ms: int):
    """Which records of a closed segment stay, and when the next one kept may go (pure given its inputs)."""
    rows = seg.rows
    keep = np.ones(len(rows), bool)
    due = NEVER
    offs = rows[:, F.M_OFFSET].tolist()
    tss = rows[:, F.M_TS].tolist()
    tomb = (rows[:, F.M_VLEN] == F.NULL_LEN).tolist()
    for i, key in enumerate(seg.keys()):
        if key is None:
            continue
        t = drop_time(offs[i], tss[i], tomb[i], latest[key], lag_ms, delete_retention_ms)
        if t <= now_ms:
            keep[i] = False
        elif t < due:
            due = t
    return keep, due


@dataclass
class PassStats:
    read: int = 0  # records read
    dropped: int = 0
    rewritten: list = field(default_factory=list)  # bases of segments replaced
    deleted: list = field(default_factory=list)  # bases of segments emptied and deleted
    due_ms: int = NEVER


class Aborted(Exception):
    """A pass stopped half-way because the supervisor is stopping (nothing was left half-done)."""


def clean_partition(pdir: str, active_base: int | None, config: dict, now_ms: int, segs=None,
                    active_size: int | None = None, abort=None) -> PassStats:
    """One compaction pass over a partition (see the module doc).

    The log keeper's thread runs it while the spill thread appends to the active segment, so
    it works on a snapshot taken under the partition's lock: ``segs`` (the segments then),
    ``active_base`` and ``active_size`` (the active one's whole frames then). Segments made
    later are not touched; the active one is only read, up to that size. ``abort()`` true
    between two segments ends the pass (``Aborted``): every segment is swapped whole or not.
    """
    stats = PassStats()
    segs = list_segments(pdir) if segs is None else list(segs)
    closed = [b for b in segs if b != active_base]
    latest: dict = {}
    for base in segs:  # pass 1: the latest record of every key
        if abort is not None and abort():
            raise Aborted(pdir)
        seg = read_segment(segment_path(pdir, base), active_size if base == active_base else None)
        stats.read += len(seg.rows)
        for key, off, ts in zip(seg.keys(), seg.rows[:, F.M_OFFSET].tolist(), seg.rows[:, F.M_TS].tolist()):
            if key is None:
                continue
            info = latest.get(key)
            if info is None:
                latest[key] = KeyInfo(off, ts)
            else:
                info.add(off, ts)
    lag, dret = config["min.compaction.lag.ms"], config["delete.retention.ms"]
    for base in closed:  # pass 2: rewrite what has records to drop
        if abort is not None and abort():
            raise Aborted(pdir)
        path = segment_path(pdir, base)
        seg = read_segment(path)
        keep, due = keep_mask(seg, latest, now_ms, lag, dret)
        stats.due_ms = min(stats.due_ms, due)
        if keep.all():
            continue
        stats.dropped += int((~keep).sum())
        kept = seg.rows[keep]
        if len(kept) == 0 and base != segs[-1]:
            swap.delete_segment(pdir, base)
            stats.deleted.append(base)
            continue
        lens = kept[:, F.M_LEN]
        new_pos = np.zeros(len(kept), np.int64)
        if len(kept):
            np.cumsum(lens[:-1], out=new_pos[1:])
        parts = _runs(seg.data, kept[:, F.M_POS], lens)
        ent, tent = index_entries(new_pos, kept[:, F.M_OFFSET], kept[:, F.M_TS], base)
        swap.write_cleaned(pdir, base, parts, ent.tobytes(), tent.tobytes())
        swap.commit_cleaned(pdir, base)
        stats.rewritten.append(base)
    return stats


def _runs(data: np.ndarray, pos: np.ndarray, lens: np.ndarray) -> list:
    """The kept frames as few buffers as possible (adjacent frames in one)."""
    if len(pos) == 0:
        return []
    brk = np.nonzero(pos[1:] != pos[:-1] + lens[:-1])[0] + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [len(pos)]))
    return [data[int(pos[a]): int(pos[b - 1] + lens[b - 1])] for a, b in zip(starts, ends)]


@dataclass
class _State:
    cleaned: set = field(default_factory=set)  # closed bases as of the last pass
    due_ms: int = NEVER
    config: dict | None = None
    failed: str | None = None


class Cleaner:
    """Decides when each partition is cleaned, and cleans it. The supervisor's log-keeper thread only."""

    def __init__(self):
        # per SegmentWriter: a topic deleted and made again gets a new writer, so a fresh state
        self.states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def due(self, st: _State, closed_sizes: dict, config: dict, now_ms: int) -> bool:
        if not closed_sizes:
            return False
        if st.config != config or now_ms >= st.due_ms:
            return True
        dirty = sum(size for base, size in closed_sizes.items() if base not in st.cleaned)
        total = sum(closed_sizes.values())
        return dirty > 0 and dirty >= DIRTY_RATIO * total

    def maybe_clean(self, writer, config: dict, now_ms: int, snapshot=None, abort=None) -> PassStats | None:
        """Clean the partition of ``writer`` (a ``SegmentWriter``) if it is due. Returns what a pass did.

        ``snapshot``: (segment bases, active base, active size), taken under the partition's lock
        (the spill thread appends meanwhile; see clean_partition); None: read them here.
        """
        if "compact" not in config["cleanup.policy"].split(","):
            self.states.pop(writer, None)
            return None
        st = self.states.setdefault(writer, _State())
        if snapshot is None:
            snapshot = writer.snapshot()
        segs, active, active_size = snapshot
        closed_sizes = {}
        for base in segs:
            if base != active:
                try:
                    closed_sizes[base] = os.stat(segment_path(writer.pdir, base)).st_size
                except FileNotFoundError:
                    pass
        if not self.due(st, closed_sizes, config, now_ms):
            return None
        try:
            stats = clean_partition(writer.pdir, active, config, now_ms, segs, active_size, abort)
        except (ValueError, FileNotFoundError) as e:
            # a bad frame: leave the partition as it is until something changes
            st.cleaned, st.due_ms, st.config, st.failed = set(closed_sizes), NEVER, dict(config), str(e)
            raise
        st.cleaned = set(closed_sizes) - set(stats.deleted)
        st.due_ms = stats.due_ms
        st.config = dict(config)
        st.failed = None
        return stats


__all__ = ["NEVER", "Aborted", "Cleaner", "KeyInfo", "PassStats", "clean_partition", "drop_time", "keep_mask", "read_segment"]
