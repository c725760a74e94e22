"""A partition's log on disk: segment files of frames, with sparse indexes.

::

    data_dir/topics/<topic>/<partition>/
      00000000000000000000.log        frames (layout/frame.py), DATA only, in offset order
      00000000000000000000.index      (offset - base u32, file position u32) every ~4 KiB
      00000000000000000000.timeindex  (max timestamp so far i64, offset - base u32, pad u32)
      00000000000000123456.log        the next segment: its first offset is 123456
      ...

The ``.log`` files are the truth; the indexes are derived (rebuildable by
scanning the log) and only ever make a lookup start earlier than needed.

:class:`SegmentWriter` is the supervisor's (one writer per partition).
:class:`PartitionLog` is a reader's; many may read while the writer appends:
readers read with ``pread`` and treat a frame cut short by the end of the
file as not there yet.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np

from shmbus import _paths, _private
from shmbus.errors import CorruptRecordError
from shmbus.layout import frame as F
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus import native
from shmbus.native import scan_frames  # C, or the numba kernel when the C verbs are not loaded

_write_frames = native.write_frames  # None: SegmentWriter appends with numpy

INDEX_INTERVAL = 4096
_IDX = INDEX_DTYPE  # an .index record (layout/segment.py)
_TIDX = TIMEINDEX_DTYPE  # a .timeindex record
_BIG = 1 << 62


def list_segments(pdir: str) -> list[int]:
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".log") and len(n) == 24 and n[:20].isdigit())


def _seg_path(pdir: str, base: int, suffix: str = ".log") -> str:
    return os.path.join(pdir, _paths.segment_name(base, suffix))


def _read_entries(path: str, dtype) -> np.ndarray:
    """Whole entries of an index file (a reader may see the last one half written)."""
    with open(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype)


RECOVERY_POINT = "recovery-point"  # in a partition dir: every segment ending below this offset is fsynced


def read_recovery_point(pdir: str) -> int:
    """The partition's recovery point: records below it are fsynced (0 if unknown: check everything)."""
    try:
        with open(os.path.join(pdir, RECOVERY_POINT)) as f:
            return max(int(f.read().strip() or 0), 0)
    except (OSError, ValueError):
        return 0


def _write_recovery_point(pdir: str, offset: int) -> None:
    tmp = os.path.join(pdir, f"{RECOVERY_POINT}.tmp")
    try:
        _private.write_file(os.path.join(pdir, RECOVERY_POINT), f"{offset}\n".encode(), fsync=False, tmp=tmp)
    except OSError:
        pass  # (a partition being deleted) a stale point only makes recovery check more


class _Flusher:
    """One background thread that fsyncs and closes rolled segments, oldest first (as Kafka's
    flush on roll): a roll costs the spill loop nothing. Each job then moves its partition's
    recovery point, so a crash of the machine before the fsync makes recovery check that
    segment too (segments/recovery.py)."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, fds, pdir: str, point: int) -> threading.Event:
        done = threading.Event()
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="segment-flusher", daemon=True)
                self.thread.start()
        self.q.put((fds, pdir, point, done))
        return done

    def _run(self) -> None:
        while True:
            fds, pdir, point, done = self.q.get()
            try:
                for fd in fds:
                    try:
                        os.fsync(fd)
                    except OSError:
                        pass
                    finally:
                        os.close(fd)
                _write_recovery_point(pdir, point)
            finally:
                done.set()


_FLUSHER = _Flusher()


class SegmentWriter:
    """Appends spilled frames to a partition's active segment; rolls by size and age.

    Owned by one supervisor thread; not for concurrent use.
    """

    def __init__(self, pdir: str, segment_bytes: int, segment_ms: int, now_ms: int):
        self.pdir = pdir
        self.segment_bytes = segment_bytes
        self.segment_ms = segment_ms
        _private.makedirs(pdir)
        segs = list_segments(pdir)
        self.fd = -1
        self.ifd = -1
        self.tfd = -1
        self._flushing: list[tuple] = []  # (fds, done event) of rolled segments whose fsync is under way
        self.next_offset = -1
        if segs:
            self._open(segs[-1], now_ms)
        self.next_offset = self._scan_end() if segs else -1

    def _retire(self) -> None:
        """Hand the active segment to the flusher (fsync, close, then the recovery point moves)."""
        if self.fd < 0:
            return
        fds = (self.fd, self.ifd, self.tfd)
        self.fd = self.ifd = self.tfd = -1
        self._flushing = [(f, e) for f, e in self._flushing if not e.is_set()]
        self._flushing.append((fds, _FLUSHER.submit(fds, self.pdir, max(self.next_offset, 0))))
        self.dirty = False

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Wait for the flusher to finish the rolled segments (before closing: no fd is left open)."""
        for _fds, e in self._flushing:
            if not e.wait(timeout):
                return False
        self._flushing = []
        return True

    def _sync_rolled(self) -> None:
        """fsync rolled segments still waiting for the flusher, here, without waiting for it.

        The flusher may be busy with other partitions' segments. The flusher
        closes an fd only after its fsync, so an fd closed meanwhile is synced
        already (EBADF, or a reused number: an extra fsync of another file).
        """
        for fds, e in self._flushing:
            if e.is_set():
                continue
            for fd in fds:
                try:
                    os.fsync(fd)
                except OSError:
                    pass
        self._flushing = [(f, e) for f, e in self._flushing if not e.is_set()]

    def _open(self, base: int, now_ms: int) -> None:
        self._retire()  # fsynced in the background; recovery checks it until that is done
        self.base = base
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.fd = os.open(_seg_path(self.pdir, base), flags, 0o600)
        self.ifd = os.open(_seg_path(self.pdir, base, ".index"), flags, 0o600)
        self.tfd = os.open(_seg_path(self.pdir, base, ".timeindex"), flags, 0o600)
        self.size = os.fstat(self.fd).st_size
        # a new segment's first frame always gets an entry
        self.last_index_pos = -INDEX_INTERVAL if self.size == 0 else self.size - 1
        self.max_ts = -1
        self.created_ms = now_ms
        self.dirty = False

    def _scan_end(self) -> int:
        """The offset after the last whole frame of the active segment."""
        log = PartitionLog(self.pdir)
        try:
            return log.end_of_segment(self.base)
        finally:
            log.close()

    def close(self) -> None:
        """Close the active segment's files (not fsynced: see fsync_all) after the rolled ones are flushed."""
        self.wait_flushed(30)
        for name in ("fd", "ifd", "tfd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def start_empty(self, now_ms: int) -> None:
        """Make an empty active segment at ``next_offset`` (retention is deleting the last one).

        It keeps the partition's start offset (its base) when every older
        segment is gone.
        """
        if self.next_offset >= 0 and (self.fd < 0 or self.size > 0):
            self._open(self.next_offset, now_ms)

    def active_base(self) -> int | None:
        """The base of the segment being appended to, or None (rolled, nothing new yet)."""
        return self.base if self.fd >= 0 else None

    def snapshot(self) -> tuple[list[int], int | None, int | None]:
        """(segment bases, active base, active size): what the log keeper may work on (the
        caller holds the partition's state lock; see supervisor/cleaner.py clean_partition)."""
        return list_segments(self.pdir), self.active_base(), self.size if self.fd >= 0 else None

    def fsync_all(self) -> None:
        """fsync everything written (before a clean stop): rolled segments, the active one and its indexes."""
        self._sync_rolled()
        self.wait_flushed(30)  # so that the flusher's (older) recovery points are written before ours
        for fd in (self.fd, self.ifd, self.tfd):
            if fd >= 0:
                os.fsync(fd)
        self.dirty = False
        if self.next_offset >= 0:
            _write_recovery_point(self.pdir, self.next_offset)

    def roll(self) -> None:
        """Close the active segment (fsynced in the background); the next append starts a new one."""
        self._retire()

    def should_roll(self, now_ms: int) -> bool:
        return self.fd >= 0 and self.size > 0 and now_ms - self.created_ms >= self.segment_ms

    def append(self, ring_mv: memoryview, rows: np.ndarray, now_ms: int) -> int:
        """Write the DATA frames described by spill_scan ``rows`` (ring index, len, offset, ts, type).

        Returns the number of frames written. Frames below ``next_offset`` are on disk already (a
        supervisor restarted between writing and releasing them) and are passed over. A step that
        fails (a full disk) leaves the files as they were before it and raises OSError; the
        frames written by earlier steps count, so a retry writes each frame once.
        """
        if self.fd >= 0 and self.size > 0 and self.should_roll(now_ms):
            self._retire()
        if _write_frames is None:
            return self._append_numpy(ring_mv, rows, now_ms)
        n = len(rows)
        i = written = 0
        cols = rows.shape[1] if rows.ndim == 2 else 0
        while i < n:
            i, k, size, lip, mts, nxt = _write_frames(
                ring_mv, rows, cols, i, self.fd, self.ifd, self.tfd, self.size if self.fd >= 0 else 0,
                self.segment_bytes, self.base if self.fd >= 0 else 0, self.last_index_pos if self.fd >= 0 else 0,
                self.max_ts if self.fd >= 0 else -1, INDEX_INTERVAL, self.next_offset)
            if k:
                self.size, self.last_index_pos, self.max_ts, self.next_offset = size, lip, mts, nxt
                self.dirty = True
                written += k
            if i < n:  # the frame at row i needs a (new) segment, based at its offset
                self._open(int(rows[i, F.SP_OFFSET]), now_ms)
        return written

    def _append_numpy(self, ring_mv: memoryview, rows: np.ndarray, now_ms: int) -> int:
        """``append`` without the compiled ``write_frames`` (SHMBUS_NATIVE=0, or no C build)."""
        d = rows[rows[:, F.SP_TYPE] == F.DATA]
        if self.next_offset >= 0:
            d = d[d[:, F.SP_OFFSET] >= self.next_offset]
        written = 0
        while len(d):
            if self.fd < 0 or (self.size > 0 and self.size + d[0, F.SP_LEN] > self.segment_bytes):
                self._open(int(d[0, F.SP_OFFSET]), now_ms)
            lens = d[:, F.SP_LEN]
            cum = np.cumsum(lens)
            room = self.segment_bytes - self.size
            k = int(np.searchsorted(cum, room, side="right"))
            if k == 0:
                k = 1  # an empty segment takes at least one frame
            chunk = d[:k]
            sizes = (self.size, os.fstat(self.ifd).st_size, os.fstat(self.tfd).st_size)
            try:
                self._write_chunk(ring_mv, chunk, cum[:k])
            except OSError:
                # leave the files as they were (a retry writes these frames again, once)
                for fd, size in zip((self.fd, self.ifd, self.tfd), sizes):
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass  # the next recovery cuts a torn tail
                raise
            written += k
            d = d[k:]
        return written

    def _write_chunk(self, ring_mv: memoryview, chunk: np.ndarray, cum: np.ndarray) -> None:
        idx = chunk[:, F.SP_INDEX]
        lens = chunk[:, F.SP_LEN]
        starts = self.size + cum - lens  # file position of each frame
        # contiguous runs in the ring become one iovec each
        brk = np.nonzero(idx[1:] != idx[:-1] + lens[:-1])[0] + 1
        run_starts = np.concatenate(([0], brk))
        run_ends = np.concatenate((brk, [len(chunk)]))
        iov = [ring_mv[int(idx[a]): int(idx[b - 1] + lens[b - 1])] for a, b in zip(run_starts, run_ends)]
        total = int(cum[-1])
        for i in range(0, len(iov), 512):
            part = iov[i: i + 512]
            want = sum(len(v) for v in part)
            n = os.writev(self.fd, part)
            while n < want:  # short write: finish it
                rest = b"".join(bytes(v) for v in part)[n:]
                n += os.write(self.fd, rest)
        # sparse indexes: the first frame at or after each INDEX_INTERVAL boundary
        offs = chunk[:, F.SP_OFFSET]
        ts = chunk[:, F.SP_TS]
        run_max = np.maximum.accumulate(np.maximum(ts, self.max_ts))
        b = starts // INDEX_INTERVAL
        prev = np.concatenate(([self.last_index_pos // INDEX_INTERVAL], b[:-1]))
        pick = np.nonzero(b != prev)[0]
        if len(pick):
            ent = np.empty(len(pick), _IDX)
            ent["rel"] = offs[pick] - self.base
            ent["pos"] = starts[pick]
            os.write(self.ifd, ent.tobytes())
            tent = np.zeros(len(pick), _TIDX)
            tent["ts"] = run_max[pick]
            tent["rel"] = offs[pick] - self.base
            os.write(self.tfd, tent.tobytes())
            self.last_index_pos = int(starts[pick[-1]])
        self.max_ts = int(run_max[-1])
        self.size += total
        self.next_offset = int(offs[-1]) + 1
        self.dirty = True

    def fsync(self) -> None:
        """Make every record written so far durable (acks='disk'): rolled segments too."""
        self._sync_rolled()
        if self.fd >= 0 and self.dirty:
            os.fsync(self.fd)
            self.dirty = False


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
        self.chunk = np.empty(self.CHUNK + F.HEADER_BYTES, np.uint8)
        self._fds: dict[int, int] = {}
        self.cursor = None  # (base, file pos, next offset) after the last read
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
                    if os.fstat(fd).st_ino == os.stat(_seg_path(self.pdir, base)).st_ino:
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
            fd = os.open(_seg_path(self.pdir, base), os.O_RDONLY)
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
            ent = _read_entries(_seg_path(self.pdir, base, ".index"), _IDX)
        except FileNotFoundError:
            return 0
        i = int(np.searchsorted(ent["rel"], offset - base, side="right")) - 1
        return self._entry_pos(base, int(ent["rel"][i]), int(ent["pos"][i])) if i >= 0 else 0

    def _time_pos(self, base: int, ts: int) -> int:
        """A file position at or before the first frame with timestamp >= ts."""
        try:
            tent = _read_entries(_seg_path(self.pdir, base, ".timeindex"), _TIDX)
            ent = _read_entries(_seg_path(self.pdir, base, ".index"), _IDX)
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
        n = scan_frames(self.chunk, 0, -1, 0, nbytes, max_n, min_offset, verify, self.meta)
        reason = int(self.meta[0, F.MS_REASON])
        if reason in (F.STOP_CORRUPT, F.STOP_CRC):
            bad = pos + int(self.meta[0, F.MS_BAD])
            what = "checksum mismatch" if reason == F.STOP_CRC else "bad frame header"
            raise CorruptRecordError(
                f"corrupt record in segment: {what} file={_seg_path(self.pdir, base)} position={bad} "
                f"(the supervisor cuts torn tails on start; otherwise restore the file or seek past it)"
            )
        return n

    def read(self, offset: int, max_n: int):
        """Up to ``max_n`` records at or after ``offset``.

        Returns (n, meta, chunk): ``meta[1:n+1]`` rows as from the ``scan`` kernel with
        body indexes into ``chunk``; n == 0 means nothing on disk at or after
        ``offset`` (yet). Valid until the next call.
        """
        max_n = min(max_n, self.meta.shape[0] - 1)
        if self._fds and time.monotonic() - self._checked > self.CHECK_S:
            self.refresh()  # a long read: let go of files deleted or replaced meanwhile
        if self.cursor is not None and self.cursor[2] == offset:
            base, pos = self.cursor[0], self.cursor[1]
        else:
            if not self.segs or offset >= self.segs[-1]:
                self.refresh()
            if not self.segs:
                return 0, self.meta, self.chunk
            i = max(0, int(np.searchsorted(self.segs, offset, side="right")) - 1)
            base = self.segs[i]
            pos = self._index_pos(base, offset)
        while True:
            try:
                got = self._read_chunk(base, pos)
            except FileNotFoundError:
                self.refresh()
                self.cursor = None
                return self.read(offset, max_n) if self.segs else (0, self.meta, self.chunk)
            n = self._scan_chunk(base, pos, got, max_n, offset, self.verify) if got else 0
            new_pos = pos + int(self.meta[0, F.MS_POS])
            if n:
                # body indexes are chunk-relative already (base 0)
                last = int(self.meta[n, F.M_OFFSET])
                self.cursor = (base, new_pos, last + 1)
                return n, self.meta, self.chunk
            if got and new_pos > pos:
                pos = new_pos  # skipped frames below `offset`; keep going in this segment
                continue
            # end of this segment (or a frame not wholly written yet: _read_chunk reads any
            # frame that is wholly in the file): the next segment, if any
            self.refresh()
            later = [b for b in self.segs if b > base]
            if not later:
                # caught up with the disk: the reader goes to the ring; hold no file open
                # (a segment deleted or replaced meanwhile would keep its disk space)
                self.release()
                return 0, self.meta, self.chunk
            base, pos = later[0], 0

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
                fd = os.open(_seg_path(self.pdir, base), os.O_RDONLY)
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
        pos = self._index_pos(base, _BIG)
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
