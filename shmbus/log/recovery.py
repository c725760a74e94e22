"""Recovery on start: make a partition's files whole before anything is appended to them.

The supervisor calls :func:`recover_partition` once per partition, before it
opens (or recreates) the partition's ring and starts spilling. In order:

1. Finish or undo an interrupted swap (``swap.resolve_leftovers``): a clean
   that crashed leaves the old segment or the new one, never neither.
2. The segments that may hold records not known to be fsynced: the newest,
   and any rolled at or after the partition's recovery point (rolled
   segments are fsynced in the background, then the point moves past them;
   see ``log.py``). Scan every frame with its checksum; cut the file after
   the last good frame (a torn write, garbage, zeros from a crash that
   extended the file, or a frame whose offset does not grow), and delete the
   segments after a cut one (the log stays a prefix, as Kafka's recovery
   does); rebuild their ``.index`` and ``.timeindex`` from the scan.
3. Older segments (fsynced): keep their data; rebuild an index that is
   missing or damaged (:func:`index_ok`).

Indexes are derived data (``log.py``): rebuilding one only costs a scan.
Older segments are not truncated: a corrupt record in the middle of the log
is reported to readers as ``CorruptRecordError`` (offset, file and
position; a seek past it reads on), and cutting it would also cut every
good record after it. :func:`recover_partition` lists them in
``Report.older``; the supervisor checks their checksums in the background
(:func:`check_segment`, not at start: that reads the whole log) and logs a
warning for each corrupt one; ``shmbus doctor --verify`` checks every
segment (:func:`verify_partition`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from shmbus.kernels import frames as K
from shmbus.layout import frame as F
from shmbus.log import swap
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus.log.files import list_segments, read_recovery_point, segment_path
from shmbus.log.index import INDEX_INTERVAL, read_entries


@dataclass
class SegmentScan:
    """What a checked scan of one segment file found."""

    size: int  # bytes in the file
    good_end: int  # file position after the last good frame
    pos: np.ndarray  # file position of each good frame
    offsets: np.ndarray
    timestamps: np.ndarray
    lens: np.ndarray  # frame lengths
    stop: int  # why the scan stopped (K.STOP_*); STOP_END with good_end == size: a clean end
    bad_pos: int = -1  # where the first bad byte is, when good_end < size


@dataclass
class Report:
    """What :func:`recover_partition` did to one partition (for the supervisor's log)."""

    truncated: list = field(default_factory=list)  # (file, old size, new size, why)
    rebuilt: list = field(default_factory=list)  # index files rebuilt
    swaps: list = field(default_factory=list)  # leftovers of an interrupted clean, resolved
    older: list = field(default_factory=list)  # segment files below the recovery point: not checksummed here

    def __bool__(self) -> bool:
        return bool(self.truncated or self.rebuilt or self.swaps)


NOT_RISING = 99  # a scan stop of ours: a frame whose offset is not above the one before it
_REASONS = {K.STOP_EMPTY: "zeros", K.STOP_CORRUPT: "bad frame header", K.STOP_CRC: "checksum mismatch",
            K.STOP_END: "torn frame", NOT_RISING: "offset not increasing"}


def scan_segment(path: str, verify: bool = True, chunk_bytes: int = 1 << 20) -> SegmentScan:
    """Every good frame of a segment file, and where the good part ends.

    A frame is good if its header parses, it lies wholly in the file, it is
    DATA, its checksum matches (``verify``) and its offset is above the one
    before it. The scan stops at the first frame that is not.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = np.empty(max(chunk_bytes, 64), np.uint8)
        meta = np.zeros((4097, K.META_COLS), np.int64)
        parts = []
        filepos = 0
        stop = K.STOP_END
        last_off = -1
        while filepos < size:
            got = os.preadv(fd, [buf], filepos)
            if got == 0:
                break
            n = K.scan(buf, 0, -1, 0, got, 4096, 0, bool(verify), meta)
            rows = meta[1: n + 1]
            reason = int(meta[0, F.MS_REASON])
            adv = int(meta[0, F.MS_POS])
            if n:
                offs = rows[:, F.M_OFFSET]
                rising = np.concatenate(([offs[0] > last_off], offs[1:] > offs[:-1]))
                if not rising.all():
                    k = int(np.argmin(rising))
                    rows = rows[:k]
                    n = k
                    reason = NOT_RISING
                if n:
                    parts.append(rows[:, [F.M_POS, F.M_OFFSET, F.M_TS, F.M_LEN]] + np.array([filepos, 0, 0, 0]))
                    last_off = int(rows[-1, F.M_OFFSET])
            if reason == K.STOP_MAX:
                filepos += adv  # only the row budget ran out
                continue
            if reason == K.STOP_END and filepos + got < size:
                if adv == 0:
                    ln = int.from_bytes(buf[0:4].tobytes(), "little")
                    if filepos + ln > size:
                        break  # a frame longer than the rest of the file: torn
                    buf = np.empty(ln + 64, np.uint8)  # one frame larger than the buffer
                filepos += adv
                continue
            stop = reason
            break
        allrows = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)  # file pos, offset, ts, frame len
        good_end = int(allrows[-1, 0] + allrows[-1, 3]) if len(allrows) else 0
        return SegmentScan(size, good_end, allrows[:, 0], allrows[:, 1], allrows[:, 2], allrows[:, 3], stop,
                           good_end if good_end < size else -1)
    finally:
        os.close(fd)


def index_entries(pos: np.ndarray, offsets: np.ndarray, timestamps: np.ndarray, base: int):
    """The sparse ``.index`` and ``.timeindex`` entries for frames at file positions ``pos``.

    As ``SegmentWriter`` writes them: the first frame at or after each
    ``INDEX_INTERVAL`` boundary gets an entry, the time entry carrying the
    largest timestamp so far. A pure function.
    """
    if len(pos) == 0:
        return np.zeros(0, INDEX_DTYPE), np.zeros(0, TIMEINDEX_DTYPE)
    b = np.asarray(pos, np.int64) // INDEX_INTERVAL
    prev = np.concatenate(([-1], b[:-1]))
    pick = np.nonzero(b != prev)[0]
    run_max = np.maximum.accumulate(np.asarray(timestamps, np.int64))
    ent = np.empty(len(pick), INDEX_DTYPE)
    ent["rel"] = np.asarray(offsets)[pick] - base
    ent["pos"] = np.asarray(pos)[pick]
    tent = np.zeros(len(pick), TIMEINDEX_DTYPE)
    tent["ts"] = run_max[pick]
    tent["rel"] = ent["rel"]
    return ent, tent


def index_ok(ent: np.ndarray, tent: np.ndarray, size: int) -> bool:
    """Whether a segment's index entries can be trusted (a pure function).

    Both files as long as each other; offsets and positions strictly
    increasing; positions 8-aligned and inside the file; the first entry at
    position 0; the time index on the same offsets, timestamps not falling.
    An empty index is right only for an empty file.
    """
    if len(ent) != len(tent):
        return False
    if len(ent) == 0:
        return size == 0
    rel = ent["rel"].astype(np.int64)
    pos = ent["pos"].astype(np.int64)
    if pos[0] != 0 or pos[-1] >= size or (pos % F.ALIGN).any():
        return False
    if (np.diff(rel) <= 0).any() or (np.diff(pos) <= 0).any():
        return False
    return not ((tent["rel"].astype(np.int64) != rel).any() or (np.diff(tent["ts"]) < 0).any())


def write_indexes(pdir: str, base: int, ent: np.ndarray, tent: np.ndarray, suffix: str = "") -> None:
    """Write (replace) a segment's two index files, fsynced; ``suffix`` e.g. ``.cleaned``."""
    for ext, arr in ((".index", ent), (".timeindex", tent)):
        path = segment_path(pdir, base, ext) + suffix
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, arr.tobytes())
            os.fsync(fd)
        finally:
            os.close(fd)


def _frame_offset_at(path: str, pos: int) -> int | None:
    with open(path, "rb") as f:
        f.seek(pos)
        hdr = f.read(16)
    if len(hdr) < 16 or hdr[F.OFF_TYPE] != F.DATA:
        return None
    return int.from_bytes(hdr[F.OFF_OFFSET:F.OFF_OFFSET + 8], "little", signed=True)


def indexes_ok(pdir: str, base: int) -> bool:
    """:func:`index_ok` on the files, plus the first and last entries checked against the log."""
    path = segment_path(pdir, base)
    try:
        size = os.stat(path).st_size
        ent = read_entries(segment_path(pdir, base, ".index"), INDEX_DTYPE)
        tent = read_entries(segment_path(pdir, base, ".timeindex"), TIMEINDEX_DTYPE)
    except FileNotFoundError:
        return False
    if not index_ok(ent, tent, size):
        return False
    for e in (ent[:1], ent[-1:]):
        if len(e) and _frame_offset_at(path, int(e["pos"][0])) != base + int(e["rel"][0]):
            return False
    return True


def rebuild_indexes(pdir: str, base: int, scan: SegmentScan | None = None) -> None:
    if scan is None:
        scan = scan_segment(segment_path(pdir, base), verify=False)
    ent, tent = index_entries(scan.pos, scan.offsets, scan.timestamps, base)
    write_indexes(pdir, base, ent, tent)


def recover_partition(pdir: str) -> Report:
    """Make one partition's files whole (see the module doc). Run before spilling into it."""
    rep = Report()
    if not os.path.isdir(pdir):
        return rep
    rep.swaps = swap.resolve_leftovers(pdir)
    segs = list_segments(pdir)
    if not segs:
        return rep
    rp = read_recovery_point(pdir)
    # the first segment that may hold an offset >= the recovery point (all of them if it is 0)
    first = max([i for i, b in enumerate(segs) if b <= rp] or [0])
    rep.older = [segment_path(pdir, base) for base in segs[:first]]
    for base in segs[:first]:
        if not indexes_ok(pdir, base):
            rebuild_indexes(pdir, base)
            rep.rebuilt.append(segment_path(pdir, base, ".index"))
    for k, base in enumerate(segs[first:], start=first):
        path = segment_path(pdir, base)
        sc = scan_segment(path, verify=True)
        cut = sc.good_end < sc.size
        if cut:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, sc.good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
            rep.truncated.append((path, sc.size, sc.good_end, _REASONS.get(sc.stop, str(sc.stop))))
        if not indexes_ok(pdir, base) or cut:
            rep.rebuilt.append(segment_path(pdir, base, ".index"))
        rebuild_indexes(pdir, base, sc)  # always: cheap after the scan, and entries past a cut must go
        if cut and k + 1 < len(segs):
            # records after a torn one were never fsynced either: the log must stay a prefix
            for later in segs[k + 1:]:
                for suffix in (".log", ".index", ".timeindex"):
                    try:
                        os.unlink(segment_path(pdir, later, suffix))
                    except FileNotFoundError:
                        pass
                rep.truncated.append((segment_path(pdir, later), -1, 0, "after a torn segment"))
            break
    swap.fsync_dir(pdir)
    return rep


@dataclass
class BadFrame:
    """The first bad frame of a segment: where, the offset it should hold, and what is wrong."""

    file: str
    position: int
    offset: int  # the offset after the last good frame before it (the segment's base if none)
    why: str


def check_segment(path: str, newest: bool = False) -> tuple[int, BadFrame | None]:
    """(good records, first bad frame or None) of one segment file, checksums checked.

    In the ``newest`` segment a tail of zeros or a frame cut short is a write
    in progress (or what recovery cuts at the next start), not corruption.
    """
    sc = scan_segment(path, verify=True)
    n = len(sc.offsets)
    if sc.good_end >= sc.size or (newest and sc.stop in (K.STOP_END, K.STOP_EMPTY)):
        return n, None
    base = int(os.path.basename(path)[:20])
    offset = int(sc.offsets[-1]) + 1 if n else base
    return n, BadFrame(path, sc.good_end, offset, _REASONS.get(sc.stop, str(sc.stop)))


def verify_partition(pdir: str) -> dict:
    """Checksums of every segment of a partition: {segments, records, bytes, bad: BadFrame | None}.

    ``records`` counts the good records before the first bad frame of each
    segment; ``bad`` is the first bad frame of the partition. Segments deleted
    or replaced while this reads (a running supervisor) are skipped.
    """
    segs = list_segments(pdir)
    out = {"segments": 0, "records": 0, "bytes": 0, "bad": None, "corrupt_segments": 0}
    for k, base in enumerate(segs):
        path = segment_path(pdir, base)
        try:
            size = os.stat(path).st_size
            n, bad = check_segment(path, newest=k == len(segs) - 1)
        except FileNotFoundError:
            continue
        out["segments"] += 1
        out["records"] += n
        out["bytes"] += size
        if bad is not None:
            out["corrupt_segments"] += 1
            if out["bad"] is None:
                out["bad"] = bad
    return out


def log_end_offset(pdir: str) -> int | None:
    """The offset after the last good record on disk (checksums checked), or None if no segment.

    Changes nothing: a client that recreates a ring before the supervisor ran
    recovery gets the offset recovery will cut the log back to.
    """
    segs = list_segments(pdir)
    if not segs:
        return None
    for base in reversed(segs):
        try:
            sc = scan_segment(segment_path(pdir, base), verify=True)
        except FileNotFoundError:
            continue
        if len(sc.offsets):
            return int(sc.offsets[-1]) + 1
        return base  # an empty newest segment: its base is the next offset
    return None


__all__ = ["BadFrame", "Report", "SegmentScan", "check_segment", "verify_partition", "index_entries", "index_ok", "indexes_ok", "log_end_offset",
           "rebuild_indexes", "recover_partition", "scan_segment", "write_indexes"]
