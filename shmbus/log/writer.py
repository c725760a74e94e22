"""The supervisor's segment writer: appends spilled frames to a partition's active segment.

One :class:`SegmentWriter` per partition. Each spill step goes to the
compiled ``write_frames`` (``shmbus/core/_native.c``) or, without the C
verbs, to :func:`numba_write_frames` (the numba kernel
``kernels/segment_write.py`` lays the step out; this module writes it): the
same bytes in the ``.log`` file and its indexes either way.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from shmbus.core import native, ownership
from shmbus.layout import frame as F
from shmbus.layout.segment import IDX_BYTES, TIDX_BYTES
from shmbus.log.filepool import SEGMENT_FDS, FilePool
from shmbus.log.files import fsync_path, list_segments, segment_path, write_recovery_point
from shmbus.log.flusher import FLUSHER, pending
from shmbus.log.index import INDEX_INTERVAL
from shmbus.log.reader import PartitionLog

segment_write = native.LazyModule("shmbus.kernels.segment_write")  # numba, imported when first used

IOV_BATCH = 512  # buffers per writev call (below any system's IOV_MAX)


def write_all(fd: int, views: list) -> None:
    """Write ``views`` (memoryviews) to ``fd`` in order, whole: short writes are finished."""
    for first in range(0, len(views), IOV_BATCH):
        part = views[first: first + IOV_BATCH]
        k = 0
        while k < len(part):
            n = os.writev(fd, part[k:])
            while k < len(part) and n >= len(part[k]):
                n -= len(part[k])
                k += 1
            if n:
                part[k] = part[k][n:]


def numba_write_frames(buf, rows, cols, first, fd, ifd, tfd, size, segment_bytes, base, last_index_pos,
                       max_ts, index_interval, next_offset):
    """The compiled ``write_frames``'s twin, with its arguments and results (see shmbus/core/_native.c).

    The kernel lays the step out; the frames go out with ``os.writev``, then
    the index records. A write that fails cuts the three files back to their
    sizes at the call and raises OSError: nothing of this call stays on disk,
    so a retry writes the same frames once.
    """
    if cols < F.SP_MIN_COLS or index_interval <= 0 or rows.ndim != 2 or rows.shape[1] != cols:
        raise ValueError("write_frames: rows need 5 columns or more, index_interval > 0")
    mv = memoryview(buf).cast("B")
    rows = np.ascontiguousarray(rows, np.int64)
    isize0 = tsize0 = -1
    if fd >= 0:
        isize0 = os.fstat(ifd).st_size
        tsize0 = os.fstat(tfd).st_size
    k = max(len(rows) - first, 0)
    runs = np.empty((k, 2), np.int64)
    ient = np.empty(k * IDX_BYTES, np.uint8)
    tent = np.empty(k * TIDX_BYTES, np.uint8)
    out = np.zeros(segment_write.W_COLS, np.int64)
    status = segment_write.lay_out_frames(rows, first, mv.nbytes, fd >= 0, size, segment_bytes, base,
                                          last_index_pos, max_ts, index_interval, next_offset, runs, ient, tent, out)
    if status == segment_write.BAD_ROW:
        raise ValueError(f"write_frames: row {int(out[segment_write.W_BAD_ROW])} lies outside the buffer")
    nruns, nent = int(out[segment_write.W_RUNS]), int(out[segment_write.W_ENTRIES])
    try:
        write_all(fd, [mv[a: a + ln] for a, ln in runs[:nruns].tolist()])
        if nent:
            write_all(ifd, [memoryview(ient[: nent * IDX_BYTES])])
            write_all(tfd, [memoryview(tent[: nent * TIDX_BYTES])])
    except OSError:
        for f, sz in ((fd, size), (ifd, isize0), (tfd, tsize0)):
            try:
                os.ftruncate(f, sz)
            except OSError:
                pass  # the next recovery cuts a torn tail
        raise
    return tuple(int(v) for v in out[: segment_write.W_NEXT_OFFSET + 1])


# each spill step: C, or the numba twin when the C verbs are not loaded
WRITE_FRAMES = native.write_frames if native.write_frames is not None else numba_write_frames


class SegmentWriter:
    """Appends spilled frames to a partition's active segment; rolls by size and age.

    Owned by one supervisor thread; not for concurrent use. With a :class:`FilePool`, its
    files may be closed while it is idle (parked) and are reopened on the next append;
    ``lock`` (the partition's state lock, held by whoever uses the writer) guards that.
    """

    def __init__(self, pdir: str, segment_bytes: int, segment_ms: int, now_ms: int,
                 pool: FilePool | None = None, lock=None, index_interval: int = INDEX_INTERVAL,
                 write_frames=None):
        self.pdir = pdir
        self.index_interval = index_interval
        self.write_frames = write_frames if write_frames is not None else WRITE_FRAMES  # one spill step
        self.segment_bytes = segment_bytes
        self.segment_ms = segment_ms
        self.pool = pool
        self.lock = lock if lock is not None else threading.Lock()
        self.used = False  # appended since the pool last looked (FilePool's CLOCK)
        self.last_used_ms = now_ms
        ownership.makedirs(pdir)
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
            self.pool.closed_fds(SEGMENT_FDS)
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
        self._flushing = [(f, e) for f, e in self._flushing if pending(e)]
        self._flushing.append((items, FLUSHER.submit(items, self.pdir, max(self.next_offset, 0), self.pool)))
        self.dirty = False

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Wait for the flusher to finish the rolled segments (before closing: no fd is left open)."""
        for _items, e in self._flushing:
            if not e.wait(timeout):
                return False
        self._flushing = [(f, e) for f, e in self._flushing if pending(e)]  # (fsync_all syncs what is left)
        return True

    def _sync_rolled(self) -> None:
        """fsync rolled segments still waiting for the flusher, here, without waiting for it.

        The flusher may be busy with other partitions' segments. The flusher
        closes an fd only after its fsync, so an fd closed meanwhile is synced
        already (EBADF, or a reused number: an extra fsync of another file).
        """
        for items, e in self._flushing:
            if not pending(e):
                continue
            for item in items:
                if isinstance(item, int):
                    try:
                        os.fsync(item)
                    except OSError:
                        pass
                else:  # a parked segment's file, by name: not synced unless this succeeds
                    try:
                        fsync_path(item)
                    except OSError:
                        if pending(e):
                            raise
            if e.is_set():
                e.synced = True
        self._flushing = [(f, e) for f, e in self._flushing if pending(e)]

    def _open(self, base: int, now_ms: int) -> None:
        self._retire()  # fsynced in the background; recovery checks it until that is done
        self.fd, self.ifd, self.tfd = self._open_files(base, create=True)
        self.base = base
        self.size = os.fstat(self.fd).st_size
        # a new segment's first frame always gets an entry
        self.last_index_pos = -self.index_interval if self.size == 0 else self.size - 1
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
                self.pool.closed_fds(SEGMENT_FDS)

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
                fsync_path(path, 10.0)
        self.dirty = False
        if self.next_offset >= 0:
            write_recovery_point(self.pdir, self.next_offset)

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
        n = len(rows)
        i = written = 0
        cols = rows.shape[1] if rows.ndim == 2 else 0
        while i < n:
            i, k, size, lip, mts, nxt = self.write_frames(
                ring_mv, rows, cols, i, self.fd, self.ifd, self.tfd, self.size if self.fd >= 0 else 0,
                self.segment_bytes, self.base if self.fd >= 0 else 0, self.last_index_pos if self.fd >= 0 else 0,
                self.max_ts if self.fd >= 0 else -1, self.index_interval, self.next_offset)
            if k:
                self.size, self.last_index_pos, self.max_ts, self.next_offset = size, lip, mts, nxt
                self.dirty = True
                written += k
            if i < n:  # the frame at row i needs a (new) segment, based at its offset
                self._open(int(rows[i, F.SP_OFFSET]), now_ms)
        return written

    def fsync(self) -> None:
        """Make every record written so far durable (acks='disk'): rolled segments too."""
        self._sync_rolled()
        if self.dirty:
            if self.fd >= 0:
                os.fsync(self.fd)
            elif self.parked:
                fsync_path(self._paths()[0])  # out of fds: raises; the spiller retries next round
            self.dirty = False
