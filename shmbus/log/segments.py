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
from collections import OrderedDict

import numpy as np

from shmbus.core import paths as _paths, ownership as _private
from shmbus.core.limits import fd_exhausted
from shmbus.errors import CorruptRecordError
from shmbus.layout import frame as F
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus.core import native
from shmbus.core.native import scan_frames  # C, or the numba kernel when the C verbs are not loaded

_write_frames = native.write_frames  # None: SegmentWriter appends with numpy

INDEX_INTERVAL = 4096
_BIG = 1 << 62


def list_segments(pdir: str) -> list[int]:
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".log") and len(n) == 24 and n[:20].isdigit())


def segment_path(pdir: str, base: int, suffix: str = ".log") -> str:
    return os.path.join(pdir, _paths.segment_name(base, suffix))


def read_entries(path: str, dtype) -> np.ndarray:
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


def _fsync_path(path: str, patience_s: float = 0.0) -> bool:
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


class _Flusher:
    """One background thread that fsyncs and closes rolled segments, oldest first (as Kafka's
    flush on roll): a roll costs the spill loop nothing. Each job then moves its partition's
    recovery point, so a crash of the machine before the fsync makes recovery check that
    segment too (segments/recovery.py). A job's files are open fds (closed here, and given
    back to the writer's :class:`FilePool`) or, for a writer that was parked, paths."""

    PATH_PATIENCE_S = 10.0  # out of fds: how long a path's fsync is retried before its point stays

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, items, pdir: str, point: int, pool=None) -> threading.Event:
        """Queue a job; its event is set when done, with ``synced`` False if a file could not be synced."""
        done = threading.Event()
        done.synced = False
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="segment-flusher", daemon=True)
                self.thread.start()
        self.q.put((items, pdir, point, pool, done))
        return done

    def _run(self) -> None:
        while True:
            items, pdir, point, pool, done = self.q.get()
            synced = True
            closed = 0
            try:
                for item in items:
                    if isinstance(item, int):
                        try:
                            os.fsync(item)
                        except OSError:
                            pass
                        finally:
                            os.close(item)
                            closed += 1
                    else:
                        try:
                            _fsync_path(item, self.PATH_PATIENCE_S)
                        except OSError:
                            synced = False  # not known to be on disk: recovery keeps checking it
                if synced:
                    _write_recovery_point(pdir, point)
            finally:
                if pool is not None and closed:
                    pool.closed_fds(closed)
                done.synced = synced
                done.set()


_FLUSHER = _Flusher()


def _pending(done: threading.Event) -> bool:
    """Is a flusher job not done, or done without syncing every file?"""
    return not done.is_set() or not done.synced

_FDS = 3  # a writer's open segment: .log, .index, .timeindex


class FilePool:
    """Bounds the segment files the :class:`SegmentWriter` s of a pool hold open (the supervisor's).

    A writer with an active segment holds three fds until it is *parked*: its fds are
    closed, everything else about the segment stays (base, size, index position, newest
    timestamp, age, whether it is fsynced), and its next append reopens the files
    (``O_APPEND``). Writers are parked when idle (:meth:`park_idle`) and, least recently
    used first (a CLOCK: a writer used since it was last looked at gets another turn),
    when opening a segment would take the pool past ``cap_fds`` (:meth:`make_room`).
    Fds of rolled segments count until the flusher has closed them.

    A writer is parked only under its lock (its partition's state lock), taken without
    waiting: a writer busy in another thread is passed over. Appends to an open writer
    cost two attribute stores: no syscall, no lock.
    """

    def __init__(self, cap_fds: int):
        self.base_cap = max(cap_fds, 4 * _FDS)
        self.cap_fds = self.base_cap
        self.lock = threading.Lock()
        self.open_fds = 0
        self._writers: OrderedDict = OrderedDict()  # writers with open files, CLOCK order
        self.parked = 0  # how many times a writer was parked, and reopened
        self.reopened = 0

    def writers_open(self) -> int:
        return len(self._writers)

    def opened(self, w: "SegmentWriter") -> None:
        with self.lock:
            self.open_fds += _FDS
            self._writers[w] = None
            self._writers.move_to_end(w)

    def dropped(self, w: "SegmentWriter") -> None:
        """``w`` holds no files any more (parked, closed, or handed to the flusher)."""
        with self.lock:
            self._writers.pop(w, None)

    def closed_fds(self, n: int) -> None:
        with self.lock:
            self.open_fds -= n

    def make_room(self, w: "SegmentWriter | None" = None) -> None:
        """Park writers, least recently used first, until a segment more fits under the cap."""
        turns = 2 * len(self._writers) + 2
        while self.open_fds + _FDS > self.cap_fds and turns > 0:
            turns -= 1
            with self.lock:
                if not self._writers:
                    return
                v = next(iter(self._writers))
                self._writers.move_to_end(v)
            if v is w:
                continue
            if v.used:
                v.used = False
                continue
            self._try_park(v)

    def park_idle(self, now_ms: int, idle_ms: int) -> int:
        """Park the writers that appended nothing for ``idle_ms``; let the cap grow back. Returns how many."""
        self.cap_fds = min(self.base_cap, self.cap_fds + max(self.base_cap // 8, _FDS))
        with self.lock:
            idle = [v for v in self._writers if now_ms - v.last_used_ms >= idle_ms]
        return sum(self._try_park(v) for v in idle)

    def pressure(self) -> None:
        """Out of fds: something else holds more than the cap left for it. Shrink the pool by an eighth."""
        self.cap_fds = max(4 * _FDS, min(self.cap_fds, self.open_fds) * 7 // 8)
        self.make_room()

    @staticmethod
    def _try_park(v: "SegmentWriter") -> bool:
        if not v.lock.acquire(blocking=False):
            return False
        try:
            return v.park()
        finally:
            v.lock.release()


class SegmentWriter:
    """Appends spilled frames to a partition's active segment; rolls by size and age.

    Owned by one supervisor thread; not for concurrent use. With a :class:`FilePool`, its
    files may be closed while it is idle (parked) and are reopened on the next append;
    ``lock`` (the partition's state lock, held by whoever uses the writer) guards that.
    """

    def __init__(self, pdir: str, segment_bytes: int, segment_ms: int, now_ms: int,
                 pool: FilePool | None = None, lock=None):
        self.pdir = pdir
        self.segment_bytes = segment_bytes
        self.segment_ms = segment_ms
        self.pool = pool
        self.lock = lock if lock is not None else threading.Lock()
        self.used = False  # appended since the pool last looked (FilePool's CLOCK)
        self.last_used_ms = now_ms
        _private.makedirs(pdir)
        segs = list_segments(pdir)
        self.fd = -1
        self.ifd = -1
        self.tfd = -1
        self.parked = False  # an active segment whose files are closed (see FilePool)
        self.dirty = False
        self._flushing: list[tuple] = []  # (files, done event) of rolled segments whose fsync is under way
        self.next_offset = -1
        with self.lock:  # in a pool from its first open on
            if segs:
                self._open(segs[-1], now_ms)
            self.next_offset = self._scan_end() if segs else -1
            if pool is not None:
                self.park()  # the first append opens the files again

    def _paths(self) -> tuple[str, str, str]:
        return tuple(segment_path(self.pdir, self.base, sfx) for sfx in (".log", ".index", ".timeindex"))

    def _has_segment(self) -> bool:
        """Is there an active segment (open, or parked)?"""
        return self.fd >= 0 or self.parked

    def park(self) -> bool:
        """Close the active segment's files, keeping its state (not fsynced: ``fsync`` and
        ``fsync_all`` sync a parked segment by name). The caller holds ``lock``."""
        if self.fd < 0:
            return False
        fds = (self.fd, self.ifd, self.tfd)
        self.parked = True  # first: active_base() is read without the lock (retention.enforce)
        self.fd = self.ifd = self.tfd = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.pool is not None:
            self.pool.dropped(self)
            self.pool.closed_fds(_FDS)
            self.pool.parked += 1
        return True

    def _open_files(self, base: int, create: bool) -> tuple[int, int, int]:
        """Open a segment's three files for appending (all or none)."""
        if self.pool is not None:
            self.pool.make_room(self)
        flags = os.O_WRONLY | os.O_APPEND
        fds = []
        try:
            for i, sfx in enumerate((".log", ".index", ".timeindex")):
                # a parked .log must still be there (else the partition is being deleted)
                f = flags | os.O_CREAT if create or i else flags
                fds.append(os.open(segment_path(self.pdir, base, sfx), f, 0o600))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if self.pool is not None:
            self.pool.opened(self)
        return fds[0], fds[1], fds[2]

    def _reopen(self) -> None:
        """Open a parked segment's files again; its size is the file's."""
        self.fd, self.ifd, self.tfd = self._open_files(self.base, create=False)
        self.parked = False
        self.size = os.fstat(self.fd).st_size
        if self.pool is not None:
            self.pool.reopened += 1

    def _retire(self) -> None:
        """Hand the active segment to the flusher (fsync, close, then the recovery point moves)."""
        if self.fd >= 0:
            items = (self.fd, self.ifd, self.tfd)
            self.fd = self.ifd = self.tfd = -1
            if self.pool is not None:
                self.pool.dropped(self)  # its fds count until the flusher closes them
        elif self.parked:
            items = self._paths()
            self.parked = False
        else:
            return
        self._flushing = [(f, e) for f, e in self._flushing if _pending(e)]
        self._flushing.append((items, _FLUSHER.submit(items, self.pdir, max(self.next_offset, 0), self.pool)))
        self.dirty = False

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Wait for the flusher to finish the rolled segments (before closing: no fd is left open)."""
        for _items, e in self._flushing:
            if not e.wait(timeout):
                return False
        self._flushing = [(f, e) for f, e in self._flushing if _pending(e)]  # (fsync_all syncs what is left)
        return True

    def _sync_rolled(self) -> None:
        """fsync rolled segments still waiting for the flusher, here, without waiting for it.

        The flusher may be busy with other partitions' segments. The flusher
        closes an fd only after its fsync, so an fd closed meanwhile is synced
        already (EBADF, or a reused number: an extra fsync of another file).
        """
        for items, e in self._flushing:
            if not _pending(e):
                continue
            for item in items:
                if isinstance(item, int):
                    try:
                        os.fsync(item)
                    except OSError:
                        pass
                else:  # a parked segment's file, by name: not synced unless this succeeds
                    try:
                        _fsync_path(item)
                    except OSError:
                        if _pending(e):
                            raise
            if e.is_set():
                e.synced = True
        self._flushing = [(f, e) for f, e in self._flushing if _pending(e)]

    def _open(self, base: int, now_ms: int) -> None:
        self._retire()  # fsynced in the background; recovery checks it until that is done
        self.fd, self.ifd, self.tfd = self._open_files(base, create=True)
        self.base = base
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
        was_open = self.fd >= 0
        for name in ("fd", "ifd", "tfd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self.parked = False
        if self.pool is not None:
            self.pool.dropped(self)
            if was_open:
                self.pool.closed_fds(_FDS)

    def start_empty(self, now_ms: int) -> None:
        """Make an empty active segment at ``next_offset`` (retention is deleting the last one).

        It keeps the partition's start offset (its base) when every older
        segment is gone.
        """
        if self.next_offset >= 0 and (not self._has_segment() or self.size > 0):
            self._open(self.next_offset, now_ms)

    def active_base(self) -> int | None:
        """The base of the segment being appended to, or None (rolled, nothing new yet)."""
        return self.base if self._has_segment() else None

    def snapshot(self) -> tuple[list[int], int | None, int | None]:
        """(segment bases, active base, active size): what the log keeper may work on (the
        caller holds the partition's state lock; see supervisor/cleaner.py clean_partition)."""
        return list_segments(self.pdir), self.active_base(), self.size if self._has_segment() else None

    def fsync_all(self) -> None:
        """fsync everything written (before a clean stop): rolled segments, the active one and its indexes."""
        self._sync_rolled()
        self.wait_flushed(30)  # so that the flusher's (older) recovery points are written before ours
        for fd in (self.fd, self.ifd, self.tfd):
            if fd >= 0:
                os.fsync(fd)
        if self.parked:
            for path in self._paths():
                _fsync_path(path, 10.0)
        self.dirty = False
        if self.next_offset >= 0:
            _write_recovery_point(self.pdir, self.next_offset)

    def roll(self) -> None:
        """Close the active segment (fsynced in the background); the next append starts a new one."""
        self._retire()

    def should_roll(self, now_ms: int) -> bool:
        return (self.fd >= 0 or self.parked) and self.size > 0 and now_ms - self.created_ms >= self.segment_ms

    def append(self, ring_mv: memoryview, rows: np.ndarray, now_ms: int) -> int:
        """Write the DATA frames described by spill_scan ``rows`` (ring index, len, offset, ts, type).

        Returns the number of frames written. Frames below ``next_offset`` are on disk already (a
        supervisor restarted between writing and releasing them) and are passed over. A step that
        fails (a full disk) leaves the files as they were before it and raises OSError; the
        frames written by earlier steps count, so a retry writes each frame once.
        """
        if self.should_roll(now_ms):
            self._retire()
        if self.parked:
            self._reopen()
        self.used = True
        self.last_used_ms = now_ms
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
            ent = np.empty(len(pick), INDEX_DTYPE)
            ent["rel"] = offs[pick] - self.base
            ent["pos"] = starts[pick]
            os.write(self.ifd, ent.tobytes())
            tent = np.zeros(len(pick), TIMEINDEX_DTYPE)
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
        if self.dirty:
            if self.fd >= 0:
                os.fsync(self.fd)
            elif self.parked:
                _fsync_path(self._paths()[0])  # out of fds: raises; the spiller retries next round
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

    def read(self, offset: int, max_n: int):
        """Up to ``max_n`` records at or after ``offset``.

        Returns (n, meta, chunk): ``meta[1:n+1]`` rows as from the ``scan`` kernel with
        body indexes into ``chunk``; n == 0 means nothing on disk at or after
        ``offset`` (yet). Valid until the next call.

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
            n = scan_frames(self.chunk, 0, -1, 0, got, max_n, offset, self.verify, self.meta) if got else 0
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
            # frame that is wholly in the file): the next segment, if any
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
            base, pos, final = later[0], 0, False

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
