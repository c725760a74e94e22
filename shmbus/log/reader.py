"""A partition's log as a reader reads it: records by offset or by time, from its segment files.

Many :class:`PartitionLog` s may read while the supervisor's writer
(log/writer.py) appends: readers read with ``pread`` and treat a frame cut
short by the end of the file as not there yet.
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np

from shmbus.core.native import scan_copy_frames, scan_frames  # C, or numba kernels without the C verbs
from shmbus.errors import CorruptRecordError
from shmbus.layout import frame as F
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus.log.files import list_segments, segment_path
from shmbus.log.index import read_entries

PAST_ANY_OFFSET = 1 << 62  # an offset above every record's: the last index record of a segment
HUGE_PAGE = 2 << 20


def read_buffer(nbytes: int) -> np.ndarray:
    """A uint8 buffer of ``nbytes`` for ``pread`` to copy segment bytes into, on transparent huge pages
    where the kernel offers them (``madvise``): on a virtual machine, copying the page cache into 4 KiB
    pages measured from 1.8 to 11 GB/s, process by process; into huge pages about 10 GB/s every time.
    Nothing is touched (no memory used) until the first read."""
    size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE  # (room to align the start)
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    a = np.frombuffer(m, np.uint8)
    start = (-a.ctypes.data) % HUGE_PAGE
    return a[start: start + nbytes]


class PartitionLog:
    """Reads a partition's segments by offset or by time. One per reader; not thread-safe.

    Segments may vanish (retention) or be replaced by a compacted copy (the
    cleaner renames a new file over the old one) while this reads. An open fd
    keeps reading the file it opened, so a read in progress stays consistent;
    file positions (the cursor) are only ever used with the fd they came
    from. Fds of deleted or replaced files are dropped when the reader
    catches up with the disk, and at least every ``CHECK_S`` while it reads,
    so their disk space is not held for long. An index entry is trusted only
    if the frame it points at carries the entry's offset (an index may
    belong to the other side of a swap, or be damaged): else the scan starts
    at the segment's first frame.
    """

    CHUNK = 1 << 20
    CHECK_S = 1.0

    def __init__(self, pdir: str, verify: bool = True):
        self.pdir = pdir
        self.verify = verify
        self.segs = list_segments(pdir)
        self.meta = np.zeros((4097, F.META_COLS), np.int64)  # up to 4096 records per read
        self.chunk = read_buffer(self.CHUNK + F.HEADER_BYTES)
        self._fds: dict[int, int] = {}
        self.cursor = None  # (base, file pos, next offset) after the last read
        self.copied = False  # whether the last read's rows index the values buffer it was given
        self._checked = time.monotonic()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.cursor = None

    release = close  # drop every fd (the reader moves to the ring); reopened on the next read

    def refresh(self) -> None:
        """Re-list the segments; drop fds of files deleted or replaced since they were opened."""
        self.segs = list_segments(self.pdir)
        live = set(self.segs)
        for base in list(self._fds):
            fd = self._fds[base]
            if base in live:
                try:
                    if os.fstat(fd).st_ino == os.stat(segment_path(self.pdir, base)).st_ino:
                        continue
                except FileNotFoundError:
                    pass
            os.close(self._fds.pop(base))
        if self.cursor is not None and self.cursor[0] not in self._fds:
            self.cursor = None  # its positions belong to the file that is gone
        self._checked = time.monotonic()

    def _fd(self, base: int) -> int:
        fd = self._fds.get(base)
        if fd is None:
            fd = os.open(segment_path(self.pdir, base), os.O_RDONLY)
            self._fds[base] = fd
        return fd

    def _entry_pos(self, base: int, rel: int, pos: int) -> int:
        """``pos`` if the frame there has offset ``base + rel``, else 0 (scan from the start)."""
        try:
            hdr = os.pread(self._fd(base), 16, pos)
        except OSError:
            return 0
        if len(hdr) == 16 and hdr[F.OFF_TYPE] == F.DATA and \
                int.from_bytes(hdr[F.OFF_OFFSET:F.OFF_OFFSET + 8], "little", signed=True) == base + rel:
            return pos
        return 0

    def _index_pos(self, base: int, offset: int) -> int:
        try:
            ent = read_entries(segment_path(self.pdir, base, ".index"), INDEX_DTYPE)
        except FileNotFoundError:
            return 0
        i = int(np.searchsorted(ent["rel"], offset - base, side="right")) - 1
        return self._entry_pos(base, int(ent["rel"][i]), int(ent["pos"][i])) if i >= 0 else 0

    def _time_pos(self, base: int, ts: int) -> int:
        """A file position at or before the first frame with timestamp >= ts."""
        try:
            tent = read_entries(segment_path(self.pdir, base, ".timeindex"), TIMEINDEX_DTYPE)
            ent = read_entries(segment_path(self.pdir, base, ".index"), INDEX_DTYPE)
        except FileNotFoundError:
            return 0
        n = min(len(tent), len(ent))
        i = int(np.searchsorted(tent["ts"][:n], ts, side="left")) - 1
        return self._entry_pos(base, int(ent["rel"][i]), int(ent["pos"][i])) if i >= 0 else 0

    def _read_chunk(self, base: int, pos: int) -> int:
        """Read the segment from ``pos`` into the chunk buffer; bytes read.

        The frame at ``pos`` always fits: when it is longer than the buffer
        (and wholly in the file: a length read from a torn or corrupt header
        must not size an allocation), the buffer grows to hold it.
        """
        fd = self._fd(base)
        got = os.preadv(fd, [self.chunk], pos)
        if got == len(self.chunk):
            h = int.from_bytes(self.chunk[:8].tobytes(), "little")
            ln = h & F.LEN_MASK
            if (h >> F.TYPE_SHIFT) & F.TYPE_MASK == F.DATA and ln > got and pos + ln <= os.fstat(fd).st_size:
                self.chunk = np.empty(F.align(ln) + F.HEADER_BYTES, np.uint8)
                got = os.preadv(fd, [self.chunk], pos)
        return got

    def _scan_chunk(self, base, pos, nbytes, max_n, min_offset, verify):
        """Frames of the chunk read from ``pos``; CorruptRecordError if a bad frame comes before any.

        Records before a bad frame are returned (``meta[0, 0]`` then stops at
        the bad frame, so that the next read from there raises).
        """
        n = scan_frames(self.chunk, 0, -1, 0, nbytes, max_n, min_offset, verify, self.meta)
        if n == 0 and int(self.meta[0, F.MS_REASON]) in (F.STOP_CORRUPT, F.STOP_CRC):
            raise self._corrupt(base, pos, int(self.meta[0, F.MS_BAD]), int(self.meta[0, F.MS_REASON]))
        return n

    def _corrupt(self, base: int, pos: int, at: int, reason: int, offset: int | None = None,
                 after: tuple | None = None) -> CorruptRecordError:
        """The error for a bad frame at chunk index ``at`` of a chunk read from file position ``pos``.

        ``offset``: the offset the frame should hold (the one after the last
        good frame), when the caller knows it; else the frames of the chunk
        before it tell, else the frame's own offset field.
        """
        bad = pos + at
        if offset is None:
            offset = self._offset_before(at)
        if offset is None:
            field = int.from_bytes(self.chunk[at + F.OFF_OFFSET: at + F.OFF_OFFSET + 8].tobytes(), "little", signed=True)
            offset = field if field >= base else None
        what = "checksum mismatch" if reason == F.STOP_CRC else "bad frame header"
        if after is not None:
            skip = f"seek to offset {after[1]} or later to read on past it"
        else:
            skip = "no intact frame follows it in this segment: seek to a later segment"
        return CorruptRecordError(
            f"corrupt record in segment: {what} offset={offset if offset is not None else 'unknown'} "
            f"file={segment_path(self.pdir, base)} position={bad} ({skip}; records before it are read; "
            f"`shmbus doctor --verify` checks every segment)")

    def _offset_before(self, at: int) -> int | None:
        """The offset after the last frame that ends at chunk index ``at`` (walking from index 0), or None."""
        i = 0
        last = None
        while i < at:
            h = int.from_bytes(self.chunk[i: i + 8].tobytes(), "little")
            ln = h & 0xFFFFFFFF
            if ln < F.HEADER_BYTES or ln % F.ALIGN:
                return None
            last = int.from_bytes(self.chunk[i + F.OFF_OFFSET: i + F.OFF_OFFSET + 8].tobytes(), "little", signed=True)
            i += ln
        return last + 1 if i == at and last is not None else None

    def _intact_at(self, i: int, nbytes: int, min_offset: int) -> int | None:
        """The offset of an intact DATA frame (header, bounds, checksum) at chunk index ``i``, or None."""
        if i + F.HEADER_BYTES > nbytes:
            return None
        h = int.from_bytes(self.chunk[i: i + 8].tobytes(), "little")
        ln = h & 0xFFFFFFFF
        if (h >> 32) & 0xFF != F.DATA or ln < F.HEADER_BYTES or ln % F.ALIGN or i + ln > nbytes:
            return None
        off = int.from_bytes(self.chunk[i + F.OFF_OFFSET: i + F.OFF_OFFSET + 8].tobytes(), "little", signed=True)
        if off < min_offset:
            return None
        one = np.zeros((2, F.META_COLS), np.int64)
        if scan_frames(self.chunk, 0, -1, i, i + ln, 1, 0, True, one) != 1:
            return None
        return off

    def _next_intact(self, base: int, bad: int, after_offset: int):
        """(file position, offset) of the first intact frame after the bad frame at file position ``bad``.

        First where the bad frame's own length points (if the length is
        sane), else at each 8-byte boundary after it (frames are aligned; a
        frame counts only with a matching checksum and an offset above
        ``after_offset``), up to what one chunk read from ``bad`` holds.
        None if there is none.
        """
        got = self._read_chunk(base, bad)
        if got < F.HEADER_BYTES:
            return None
        words = self.chunk[: got - got % F.ALIGN].view("<u8")
        ln = int(words[0]) & 0xFFFFFFFF
        at = np.arange(len(words), dtype=np.int64) * F.ALIGN
        lens = (words & 0xFFFFFFFF).astype(np.int64)
        # 8-byte boundaries whose word could head a DATA frame lying wholly in what was read
        maybe = np.nonzero((((words >> 32) & 0xFF) == F.DATA) & (lens >= F.HEADER_BYTES) & (lens % F.ALIGN == 0)
                           & (at + lens <= got) & (at > 0))[0]
        cands = [ln] if ln >= F.HEADER_BYTES and ln % F.ALIGN == 0 and ln < got else []
        for i in cands + (at[maybe]).tolist():
            off = self._intact_at(i, got, after_offset + 1)
            if off is not None:
                return bad + i, off
        return None

    def read(self, offset: int, max_n: int, values=None):
        """Up to ``max_n`` records at or after ``offset``.

        Returns (n, meta, chunk): ``meta[1:n+1]`` rows as from the ``scan`` kernel with
        body indexes into ``chunk``; n == 0 means nothing on disk at or after
        ``offset`` (yet). Valid until the next call.

        With ``values`` (a uint8 array), the same scan also copies the values there back to back
        (the ``scan_copy`` kernel): as many records as it holds, and then ``M_BODY`` is each
        value's start in it and ``copied`` is True. A first value larger than all of ``values``
        is read as without it (``copied`` False).

        A corrupt frame: the records before it are returned; a read that
        starts at it raises CorruptRecordError naming its offset, file and
        position. A read for an offset past it (a ``seek`` beyond the bad
        record) steps over it to the next intact frame.
        """
        max_n = min(max_n, self.meta.shape[0] - 1)
        if self._fds and time.monotonic() - self._checked > self.CHECK_S:
            self.refresh()  # a long read: let go of files deleted or replaced meanwhile
        if self.cursor is not None and self.cursor[2] == offset:
            base, pos = self.cursor[0], self.cursor[1]
            known = offset  # the frame at pos holds this offset (the one after the last read)
        else:
            if not self.segs or offset >= self.segs[-1]:
                self.refresh()
            if not self.segs:
                return 0, self.meta, self.chunk
            i = max(0, int(np.searchsorted(self.segs, offset, side="right")) - 1)
            base = self.segs[i]
            pos = self._index_pos(base, offset)
            known = None
        final = False  # whether ``base`` is known to be complete (a later segment was seen)
        while True:
            try:
                got = self._read_chunk(base, pos)
            except FileNotFoundError:
                self.refresh()
                self.cursor = None
                return self.read(offset, max_n) if self.segs else (0, self.meta, self.chunk)
            n = self._scan(got, max_n, offset, values)
            adv = int(self.meta[0, F.MS_POS]) if got else 0
            new_pos = pos + adv
            if n:
                # body indexes are chunk-relative already (base 0)
                last = int(self.meta[n, F.M_OFFSET])
                self.cursor = (base, new_pos, last + 1)
                return n, self.meta, self.chunk
            reason = int(self.meta[0, F.MS_REASON]) if got else F.STOP_END
            if reason in (F.STOP_CORRUPT, F.STOP_CRC):
                at = int(self.meta[0, F.MS_BAD])
                expect = known if at == 0 and known is not None else self._offset_before(at)
                nxt = self._next_intact(base, pos + at, (expect if expect is not None else base) - 1)
                if nxt is not None and nxt[1] <= offset:
                    pos = nxt[0]  # the record wanted is past the bad frame: read on from the next intact one
                    known = None
                    continue
                self._read_chunk(base, pos)  # (the chunk as scanned, for the offsets before the bad frame)
                self.cursor = None
                raise self._corrupt(base, pos, at, reason, expect, nxt)
            known = None
            if got and new_pos > pos:
                pos = new_pos  # skipped frames below `offset`; keep going in this segment
                continue
            # end of this segment (or a frame not wholly written yet: _read_chunk reads any
            # frame that is wholly in the file): the next segment, if any (the listing is read
            # again only when it names none: segments are only ever added after the newest)
            later = [b for b in self.segs if b > base]
            if not later:
                self.refresh()
                later = [b for b in self.segs if b > base]
            if not later:
                # caught up with the disk: the reader goes to the ring; hold no file open
                # (a segment deleted or replaced meanwhile would keep its disk space)
                self.release()
                return 0, self.meta, self.chunk
            if not final:
                # The writer appends only to the newest segment, and fills it before it makes
                # the next: with a later segment listed, this one is complete. But it may have
                # grown between the read above and the listing (the writer finished it and
                # rolled meanwhile): read the rest of it once more before moving on, or the
                # records written in between would be passed over.
                final = True
                continue
            fd = self._fds.pop(base, None)  # (done with it: a reader holds the file it reads, no more)
            if fd is not None:
                os.close(fd)
            base, pos, final = later[0], 0, False

    def _scan(self, got: int, max_n: int, offset: int, values) -> int:
        """The scan of a chunk of ``got`` bytes (see ``read``)."""
        self.copied = False
        if not got:
            return 0
        if values is not None:
            n = scan_copy_frames(self.chunk, 0, -1, 0, got, max_n, offset, self.verify, self.meta, values)
            if n or int(self.meta[0, F.MS_REASON]) != F.STOP_MAX:
                self.copied = n > 0
                return n
        return scan_frames(self.chunk, 0, -1, 0, got, max_n, offset, self.verify, self.meta)

    def start_offset(self) -> int | None:
        """The first offset on disk (the first segment's first frame, else its base), or None.

        One directory listing and one 16-byte read. An empty first segment
        (retention deleted everything before the active one) gives its base:
        the offset the next record on disk will have.
        """
        for _ in range(8):
            self.refresh()
            if not self.segs:
                return None
            base = self.segs[0]
            try:
                fd = os.open(segment_path(self.pdir, base), os.O_RDONLY)
            except FileNotFoundError:
                continue  # deleted by retention meanwhile: list again
            try:
                hdr = os.pread(fd, 16, 0)
            finally:
                os.close(fd)
            if len(hdr) < 16:
                return base
            return int.from_bytes(hdr[8:16], "little", signed=True)
        return None

    def end_of_segment(self, base: int) -> int:
        """The offset after the last whole frame of segment ``base`` (its base if empty)."""
        end = base
        pos = self._index_pos(base, PAST_ANY_OFFSET)
        while True:
            got = self._read_chunk(base, pos)
            if not got:
                return end
            n = self._scan_chunk(base, pos, got, self.meta.shape[0] - 1, 0, False)
            if n:
                end = int(self.meta[n, F.M_OFFSET]) + 1
            adv = int(self.meta[0, F.MS_POS])
            if adv == 0:
                return end
            pos += adv

    def offset_for_time(self, ts: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= ts, or None."""
        self.refresh()
        for base in self.segs:
            try:
                pos = self._time_pos(base, ts)
            except FileNotFoundError:
                continue  # deleted by retention meanwhile
            while True:
                try:
                    got = self._read_chunk(base, pos)
                except FileNotFoundError:
                    break
                if not got:
                    break
                n = self._scan_chunk(base, pos, got, self.meta.shape[0] - 1, 0, False)
                rows = self.meta[1: n + 1]
                hit = np.nonzero(rows[:, F.M_TS] >= ts)[0]
                if len(hit):
                    r = rows[hit[0]]
                    self.release()
                    return int(r[F.M_OFFSET]), int(r[F.M_TS])
                adv = int(self.meta[0, F.MS_POS])
                if adv == 0:
                    break
                pos += adv
        self.release()
        return None
