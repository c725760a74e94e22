"""Reading records of one partition: from its ring, and from the disk behind it.

While the cursor is known the consumer reads the ring. It becomes unknown
after a seek, at the start, and when the spiller released the bytes under it
(the reader was lapped); then the consumer *locates*: records below the ring's
released position are on disk, so it reads the segment files until they run
out, then sets the cursor to the released position it saw before looking at
the disk. Every ring read is checked after copying: if the released position
passed a frame while it was copied, the copy is dropped and read again from
disk.

One record at a known cursor is read by the compiled ``native.Reader``
(``_take_one``); everything else (more records, batches, padding to step over
without the Reader, disk reads) by the general path: a ring scan (C, or the
numba ``scan_ring`` entry point) whose rows the records builder turns into
records.
"""

from __future__ import annotations

import numpy as np

from shmbus.client.consumer.partition import PartitionState
from shmbus.core import native
from shmbus.core.headers import decode_headers
from shmbus.layout import frame
from shmbus.records import ConsumerRecord, RecordBatch

NOTHING = ()  # _take_one: nothing published at the cursor
FRAMES = "frames"  # _locate's third mode (beside records and a RecordBatch): the chunk and its scan rows
AGAIN = object()  # _read_ring: the cursor was lapped (now unknown), or the values buffer grew: read again
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (faster)


def python_records(rows, buf, topic: str, partition: int, key_deserializer=None, value_deserializer=None) -> list:
    """ConsumerRecords for scan ``rows`` whose bodies are in ``buf``: the twin of the compiled
    ``native.build_records``, used without the C build. It only slices and makes objects; the
    header bytes are read by ``decode_headers`` (the numba ``parse_headers`` kernel)."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    kd, vd = key_deserializer, value_deserializer
    out = []
    for _pos, off, ts, kl, vl, hl, bi, _ln in rows.tolist():
        key = mv[bi: bi + kl].tobytes() if kl >= 0 else None
        b = bi + (kl if kl > 0 else 0)
        value = mv[b: b + vl].tobytes() if vl >= 0 else None
        if hl:
            b += vl if vl > 0 else 0
            headers = decode_headers(mv[b: b + hl])
        else:
            headers = []
        if kd is not None and key is not None:
            key = kd(key)
        if vd is not None:
            value = vd(value)
        out.append(_new_tuple(ConsumerRecord, (topic, partition, off, ts, key, value, headers)))
    return out


class FetchMixin:
    def _take_one(self, p: PartitionState, budget: int):
        """The short path: one record at the cursor, read by the compiled Reader.

        Returns [record]; or ``NOTHING`` when nothing is published at the
        cursor; or None when the general path must decide (no compiled
        Reader, more than one record ready, a seek below the frame, the
        reader lapped, a header that cannot be).
        """
        reader = p.reader
        if reader is None or p.paused:
            return None
        rec = reader.take(budget > 1)
        if rec.__class__ is not ConsumerRecord:
            return None if rec is None else NOTHING
        kd, vd = self._key_deserializer, self._value_deserializer
        if kd is not None or vd is not None:
            key, value = rec[4], rec[5]
            if key is not None and kd is not None:
                key = kd(key)
            if vd is not None:
                value = vd(value)
            rec = rec._replace(key=key, value=value)
        return [rec]

    def _locate(self, p: PartitionState, max_n: int, batch: bool):
        """Position is not in a known ring place: read disk, else set the cursor."""
        if p.position is None:
            self._reset(p, "no position and no committed offset")
        rel0 = p.ring.reclaiming()
        end = p.ring.next_offset()
        if p.position > end:
            self._reset(p, "offset beyond the end of the partition")
            if p.position is None:
                return None
        n, meta, chunk = p.log.read(p.position, max_n, self._values if batch is True else None)
        if n:
            copied = batch is True and p.log.copied  # (the scan copied the values out already)
            rows = meta[1: n + 1].copy() if batch is True and not copied else meta[1: n + 1]
            first, last = int(rows[0, frame.M_OFFSET]), int(rows[-1, frame.M_OFFSET])
            if batch is FRAMES:
                out = chunk, rows
            elif copied:
                total = int(np.maximum(rows[:, frame.M_VLEN], 0).sum())
                out = RecordBatch(p.tp.topic, p.tp.partition, rows[:, frame.M_OFFSET].copy(),
                                  rows[:, frame.M_TS].copy(), self._values[:total].copy(),
                                  rows[:, frame.M_BODY].copy(), rows[:, frame.M_VLEN].copy())
            else:
                out = self._records_from(p, rows, chunk, batch, chunk)
            # (the start-offset lookup lists the directory and reads one frame header: it leaves the
            # log's rows and chunk as they are)
            if first > p.position and p.position < self._start(p):
                self._reset(p, "offset below the start of the partition")
                return self._locate(p, max_n, batch)
            p.position = last + 1
            return out
        if p.position < self._start_if_gone(p, rel0):
            self._reset(p, "offset below the start of the partition")
        p.cursor = rel0
        return None

    def _start_if_gone(self, p: PartitionState, rel0: int) -> int:
        """The start offset, looked up only when the disk had nothing at all.

        With segments listed, the disk had nothing at or after the position:
        below the first segment's base means retention deleted it.
        """
        if p.log.segs:
            return p.log.segs[0]
        return self._start(p)

    def _records_from(self, p: PartitionState, rows, buf, batch: bool, chunk=None):
        """Records for scan ``rows`` (an array of meta rows) whose bodies are in ``buf``."""
        if batch:
            return self._batch_from_rows(p, rows, chunk if chunk is not None else p.ring.buf)
        tp = p.tp
        kd, vd = self._key_deserializer, self._value_deserializer
        build = native.build_records
        if build is None:
            return python_records(rows, buf, tp.topic, tp.partition, kd, vd)
        out = build(buf, rows, tp.topic, tp.partition, ConsumerRecord)
        if kd is not None or vd is not None:
            out = [r._replace(key=kd(r.key) if kd is not None and r.key is not None else r.key,
                              value=vd(r.value) if vd is not None else r.value) for r in out]
        return out

    def _batch_from_rows(self, p: PartitionState, rows, buf):
        a = np.asarray(rows, np.int64).reshape(-1, frame.META_COLS)
        vl = a[:, frame.M_VLEN]
        src = a[:, frame.M_BODY] + np.maximum(a[:, frame.M_KLEN], 0)
        lens = np.maximum(vl, 0)
        starts = np.zeros(len(a), np.int64)
        if len(a):
            np.cumsum(lens[:-1], out=starts[1:])
        total = int(lens.sum())
        if total and len(a) and buf is not p.ring.buf:
            # a segment chunk (frames back to back): the compiled scan_copy gathers the values
            # (a Python loop per record would make reads from disk many times slower than from the ring)
            if total > len(self._values):
                self._values = np.empty(max(total, 2 * len(self._values)), np.uint8)
            end = int(a[-1, frame.M_POS] + a[-1, frame.M_LEN])
            k = native.scan_copy_frames(buf, 0, -1, int(a[0, frame.M_POS]), end, len(a), int(a[0, frame.M_OFFSET]),
                                        False, self._meta, self._values)
            if k == len(a):
                return RecordBatch(p.tp.topic, p.tp.partition, a[:, frame.M_OFFSET].copy(), a[:, frame.M_TS].copy(),
                                   self._values[:total].copy(), starts, vl.copy())
        data = np.empty(total, np.uint8)
        for i in range(len(a)):
            data[starts[i]: starts[i] + lens[i]] = buf[src[i]: src[i] + lens[i]]
        return RecordBatch(p.tp.topic, p.tp.partition, a[:, frame.M_OFFSET].copy(), a[:, frame.M_TS].copy(), data,
                           starts, vl.copy())

    def _fetch(self, p: PartitionState, max_n: int, batch: bool):
        """Records of one partition (a list, or a RecordBatch if ``batch``), or None."""
        for _attempt in range(4):
            if p.cursor < 0:
                got = self._locate(p, max_n, batch)
                if got is not None:
                    return got
            reader = p.reader
            if reader is not None and not batch and self._plain:
                got = reader.take_many(max_n, 0)  # compiled: no numba for a reader that stays in the ring
                if got.__class__ is list:
                    return got
                if got is not None:
                    return None  # nothing published at the cursor yet
            got = self._read_ring(p, max_n, batch)
            if got is not AGAIN:
                return got
        return None

    def _copy_frames(self, max_records: int, sink) -> int:
        """Hand the frames due in the assigned partitions to ``sink(tp, buf, rows, ring)``, up to
        ``max_records`` records; returns how many records ``sink`` took.

        ``rows`` are scan rows (layout/frame.py: one DATA frame each, its body at ``M_BODY`` in ``buf``),
        valid only during the call; ``sink`` returns how many of them it took, and the next read starts
        after those. ``ring`` is None for a segment chunk; else ``buf`` is that ring's memory, which the
        spiller may release under the reader: ``sink`` copies each frame, then checks
        ``ring.reclaiming()`` against the frame's position, and stops before the first one that fails
        (the rest is read again, from disk). For readers that hand records on without a Python object
        per record (the bridge's compiled copier).
        """
        left = max_records
        parts = self._assigned
        n = len(parts)
        for j in range(n):
            p = parts[(self._next_partition + j) % n]
            if p.paused or self._idle(p):
                continue
            left -= self._frames_of(p, min(left, self._meta_rows - 1), sink)
            if left <= 0:
                break
        if n:
            self._next_partition = (self._next_partition + 1) % n
        return max_records - left

    def _frames_of(self, p: PartitionState, max_n: int, sink) -> int:
        """One partition's turn of ``_copy_frames``: the records ``sink`` took."""
        for _attempt in range(4):
            if p.cursor < 0:
                pos0 = p.position
                got = self._locate(p, max_n, FRAMES)
                if got is not None:
                    k = sink(p.tp, got[0], got[1], None)
                    if k < len(got[1]):
                        p.position = int(got[1][k - 1, frame.M_OFFSET]) + 1 if k else pos0
                    return k
                if p.cursor < 0:
                    return 0
            ring = p.ring
            n = self._scan_ring(ring.address, p.cursor, max_n, p.position, self._meta_addr, self._meta_rows)
            cell = self._meta_cell
            new = cell[0, frame.MS_POS]
            if n == 0:
                if new < ring.reclaiming():
                    p.cursor = -1  # lapped: what was passed is on disk now
                    continue
                p.cursor = new
                return 0
            rows = self._meta[1: n + 1]
            k = sink(p.tp, ring.buf, rows, ring)
            p.cursor = -1 if k < n else new
            if k:
                p.position = cell[k, frame.M_OFFSET] + 1
            if k < n:
                # the spiller released row k while it was copied (its bytes, offset too, may be another
                # frame's now): read on after the last row taken, from disk
                if k:
                    return k
                continue
            return n
        return 0

    def _read_ring(self, p: PartitionState, max_n: int, batch: bool):
        """The general path's ring read at a known cursor: up to ``max_n`` records (a list, or a
        RecordBatch), None when none is due, or AGAIN (lapped: the cursor is now unknown; or the
        values buffer was too small for one value and has grown)."""
        ring = p.ring
        if batch:
            n = self._scan_copy_ring(ring.address, p.cursor, max_n, p.position, self._meta_addr, self._meta_rows,
                                     self._values.ctypes.data, len(self._values))
        else:
            n = self._scan_ring(ring.address, p.cursor, max_n, p.position, self._meta_addr, self._meta_rows)
        meta = self._meta
        cell = self._meta_cell  # (one int of the rows: cheaper than a numpy scalar)
        if n == 0:
            if cell[0, frame.MS_REASON] == frame.STOP_MAX and batch:
                # a single value larger than the buffer: grow it
                self._values = np.empty(len(self._values) * 2, np.uint8)
                return AGAIN
            new = cell[0, frame.MS_POS]
            if new < ring.reclaiming():
                p.cursor = -1  # lapped: what we passed is on disk now
                return AGAIN
            p.cursor = new
            return None
        new = cell[0, frame.MS_POS]  # row 0 is the scan's state
        if batch:
            rows = meta[1: n + 1]
            total = int(np.maximum(rows[:, frame.M_VLEN], 0).sum())
            result = RecordBatch(p.tp.topic, p.tp.partition, rows[:, frame.M_OFFSET].copy(),
                                 rows[:, frame.M_TS].copy(), self._values[:total].copy(),
                                 rows[:, frame.M_BODY].copy(), rows[:, frame.M_VLEN].copy())
            first_pos = int(rows[0, frame.M_POS])
            last_off = int(rows[-1, frame.M_OFFSET])
        else:
            first_pos = cell[1, frame.M_POS]
            try:
                result = self._records_from(p, meta[1: n + 1], p.mv, False)
            except Exception:
                # bytes overwritten while we decoded them (we were lapped): re-read from disk
                if first_pos < ring.reclaiming():
                    p.cursor = -1
                    return AGAIN
                raise
            last_off = cell[n, frame.M_OFFSET]
        if first_pos < ring.reclaiming():
            # the spiller released bytes we were copying: drop and re-read (from disk)
            p.cursor = -1
            return AGAIN
        p.cursor = new
        p.position = last_off + 1
        return result
