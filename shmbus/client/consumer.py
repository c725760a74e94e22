"""``Consumer``: reads partitions straight out of the rings, and from disk behind them.

A ``Consumer`` belongs to one process and one thread at a time. A call made
while another thread is inside one of its methods raises
``ConcurrentAccessError`` (as Kafka's Java consumer does). Each public method
that touches read state takes the consumer's one token on entry and puts it
back on return: ``list.pop`` and ``list.append`` on a one-item list, atomic
and ~45 ns together (a ``threading.Lock`` acquire and release cost ~250 ns
here, a quarter of an idle ``poll``). A thread that finds the token gone
proceeds only if it is the one inside (``_owner``, set on the paths that run
user code: a rebalance listener that calls ``commit`` or ``seek``, iteration).

Where a partition is read from. Each assigned partition has a *position*
(the next offset to return) and a *cursor*: a ring position from which
scanning, skipping offsets below the position, yields exactly the records
due. While the cursor is known the consumer reads the ring. It becomes
unknown after a seek, at the start, and when the spiller released the bytes
under it (the reader was lapped); then the consumer *locates*: records below
the ring's released position are on disk, so it reads the segment files until
they run out, then sets the cursor to the released position it saw before
looking at the disk. Every ring read is checked after copying: if the
released position passed a frame while it was copied, the copy is dropped and
read again from disk.

Waiting. ``poll(timeout_ms)`` spins on the header word at each cursor for a
short window (``spin_us``), then counts itself as a sleeper on its rings and
sleeps on the bus doorbell (a futex) until a producer rings it or the timeout
ends: an idle consumer uses no CPU.
"""

from __future__ import annotations

import functools
import struct
import threading
import time

import numpy as np

from shmbus.core import paths as _paths
from shmbus.client.handle import BusHandle
from shmbus.log.partition import partition_start_offset
from shmbus.core.config import validate_topic_name
from shmbus.errors import (
    CommitFailedError,
    ConcurrentAccessError,
    InvalidArgumentError,
    InvalidConfigError,
    OffsetOutOfRangeError,
    ShmbusError,
    UnknownTopicError,
)
from shmbus.core import native
from shmbus.layout import frame as F
from shmbus.core.native import LazyModule

# The numba kernels, imported only when the compiled verbs (shmbus/native.py) are not
# loaded (SHMBUS_NATIVE=0, or no C build): then on the first general-path read.
K = LazyModule("shmbus.kernels.frames")
_Reader = native.Reader  # None: SHMBUS_NATIVE=0 or no C build; then _take1 reads in Python
_build = native.build_records  # None: _records_from builds records in Python
from shmbus.layout import ring as R
from shmbus.core.headers import decode_headers
from shmbus.records import ConsumerRecord, OffsetAndTimestamp, RecordBatch, TopicPartition
from shmbus.log.reader import PartitionLog

_BIG = 1 << 62
_INT64_END = 1 << 63  # offsets and timestamps are int64, >= 0
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (faster)
_RESETS = ("earliest", "latest", "none")
_EMPTY = ()  # _take1: nothing published at the cursor
# header words read from Python (a ring's int64 view starts with its 4096-byte header)
_W_RELEASED = R.OFF_RELEASED // 8
_W_RECLAIMING = R.OFF_RECLAIMING // 8
_W_CLAIM_POS = R.OFF_CLAIM_POS // 8
_W_CLAIM_OFFSET = R.OFF_CLAIM_OFFSET // 8
# offset, timestamp, key len, value len, headers len, from F.OFF_OFFSET on
_unpack_frame = struct.Struct("<qqiii").unpack_from
_TYPE_BITS = F.TYPE_MASK << F.TYPE_SHIFT  # a header word's type: 0 (FREE) = nothing published there
_STRATEGIES = ("range", "roundrobin", "sticky")


def _known_assignor(name) -> bool:
    from shmbus.core import assignors

    try:
        assignors.get(name)
        return True
    except KeyError:
        return False


_get_ident = threading.get_ident


def _busy(name: str):
    raise ConcurrentAccessError(
        f"a Consumer is for one thread at a time (one consumer per thread; or guard it with your own lock): "
        f"{name}() called from thread {threading.current_thread().name!r} while another thread is inside this consumer")


def _one_thread(fn):
    """``fn`` runs only while no other thread is inside this consumer (else ConcurrentAccessError)."""
    name = fn.__name__

    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        tok = self._token
        try:
            t = tok.pop()
        except IndexError:
            if self._owner != _get_ident():
                _busy(name)
            return fn(self, *args, **kwargs)  # re-entered by the thread inside (a listener callback)
        self._owner = _get_ident()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._owner = None
            tok.append(t)

    return guarded


class _Part:
    """Read state of one assigned partition."""

    __slots__ = ("tp", "ring", "log", "position", "cursor", "paused", "qwords", "mv", "hq", "mask", "ring_bytes",
                 "addr", "rd")

    def __init__(self, tp, ring, log, rd=None):
        self.rd = rd  # a native.Reader (in _NativePart), set first: it holds cursor and position
        self.tp = tp
        self.ring = ring
        self.log = log
        self.position = None
        self.cursor = -1
        self.paused = False
        self.mv = ring.memoryview()
        self.qwords = self.mv.cast("q")
        self.hq = R.HEADER_BYTES // 8
        self.mask = ring.mask
        self.ring_bytes = ring.ring_bytes
        self.addr = ring.address

    def settled_position(self):
        """The position, moved past offsets that no record will ever have.

        A writer that died between claim and publish took offsets that the
        supervisor turned into padding: a gap. Behind it the next record's
        offset moves the position on; but when the dead claim was the last
        one, nothing would, and a caught-up reader would stay below
        ``end_offsets`` (and its lag above 0) for good. When the cursor stands
        at the claim tail, every offset below the tail's next offset has been
        read, skipped or lost, so the position is at least that. The two words
        are read as a seqlock: the claim position grows with every claim and is
        written together with the offset (one 16-byte compare-and-swap).
        """
        pos = self.position
        c = self.cursor
        if pos is None or c < 0:
            return pos
        q = self.qwords
        if q[_W_CLAIM_POS] != c:
            return pos
        nxt = q[_W_CLAIM_OFFSET]
        if q[_W_CLAIM_POS] == c and nxt > pos:
            self.position = nxt
            return nxt
        return pos


class _NativePart(_Part):
    """A partition read through a compiled ``native.Reader``, which owns the cursor and position."""

    __slots__ = ()

    def __init__(self, tp, ring, log):
        super().__init__(tp, ring, log, _Reader(ring.address, tp, ConsumerRecord))

    @property
    def cursor(self):
        return self.rd.cursor

    @cursor.setter
    def cursor(self, c):
        self.rd.cursor = c

    @property
    def position(self):
        v = self.rd.position_raw
        return None if v == F.POS_NONE else v

    @position.setter
    def position(self, v):
        self.rd.position_raw = F.POS_NONE if v is None else v


class Consumer:
    """Reads records from partitions of one bus (docs/api.md lists every argument).

    Extra keywords: ``spin_us`` (default 100): how long a blocking poll spins
    before it sleeps. Longer buys latency for CPU. ``load_kernels`` (default
    True) matters only without the compiled verbs (``SHMBUS_NATIVE=0`` or no C
    build): it loads the numba kernels of the general read path (disk,
    batches, seeks) at construction, ~0.5 s once per process, rather than at the first read
    that needs them, which would stall that poll mid-stream. With the compiled
    verbs a consumer imports no numba and starts in ~30 ms.
    """

    def __init__(self, *topics, data_dir=None, group_id=None, auto_offset_reset="latest",
                 enable_auto_commit=True, auto_commit_interval_ms=5000, max_poll_records=500,
                 partition_assignment_strategy="range", session_timeout_ms=10000,
                 max_poll_interval_ms=300000, consumer_timeout_ms=None, key_deserializer=None,
                 value_deserializer=None, spin_us=100, load_kernels=True, _bus=None):
        if auto_offset_reset not in _RESETS:
            raise InvalidConfigError(f"auto_offset_reset must be one of {', '.join(_RESETS)}: "
                                     f"auto_offset_reset={auto_offset_reset!r}")
        strategies = partition_assignment_strategy
        if isinstance(strategies, str):
            strategies = [strategies]
        for s in strategies:
            name = s if isinstance(s, str) else getattr(s, "name", None)
            if name not in _STRATEGIES and not _known_assignor(name):
                raise InvalidConfigError(f"unknown partition_assignment_strategy: {s!r} "
                                         f"(one of {', '.join(_STRATEGIES)})")
        for name, v, lo in (("max_poll_records", max_poll_records, 1), ("auto_commit_interval_ms", auto_commit_interval_ms, 1),
                            ("session_timeout_ms", session_timeout_ms, 1), ("max_poll_interval_ms", max_poll_interval_ms, 1),
                            ("spin_us", spin_us, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidConfigError(f"{name} must be an int >= {lo}: {name}={v!r}")
        if consumer_timeout_ms is not None and (not isinstance(consumer_timeout_ms, (int, float)) or consumer_timeout_ms < 0):
            raise InvalidConfigError(f"consumer_timeout_ms must be a number >= 0 or None: consumer_timeout_ms={consumer_timeout_ms!r}")
        self._token = [True]  # taken by the thread inside a public method (see the module docstring)
        self._owner = None  # that thread's ident, on the paths that may re-enter
        self._member = None  # group membership (shmbus/group_member.py) when group_id is set
        self._own_bus = _bus is None
        self._bus = _bus if _bus is not None else BusHandle(data_dir)
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.consumer_timeout_ms = consumer_timeout_ms
        self._kdes = key_deserializer
        self._vdes = value_deserializer
        self._spin_s = spin_us / 1e6
        self._spin_ns = int(spin_us * 1000)
        self._spin_cap_ns = min(self._spin_ns, 100_000)  # poll's compiled spin, per call
        self._plain = key_deserializer is None and value_deserializer is None  # records as they are stored
        self._parts: dict[TopicPartition, _Part] = {}
        self._order: list[_Part] = []
        self._solo: _Part | None = None  # the only assigned partition, if there is one: poll's short path
        self._rr = 0
        self._subscription: list[str] | None = None
        self._meta = np.zeros((4097, F.META_COLS), np.int64)
        self._meta_addr = self._meta.ctypes.data
        self._meta_rows = self._meta.shape[0]
        # the ring scans by address: C (one function, the copying form with two more arguments), or
        # the numba entry points loaded on first use
        self._scan_ring = native.scan_ring or self._lazy("scan_ring")
        self._scan_copy_ring = native.scan_ring or self._lazy("scan_copy_ring")
        self._values = np.empty(1 << 20, np.uint8)
        self._iter_buf: list = []
        self._closed = False
        if native.scan is None and (load_kernels or _Reader is None):
            K.load_reader_kernels()  # numba (~0.7 s), so that no poll stalls on it mid-stream
        if group_id is not None:
            from shmbus.client.group_member import GroupMember

            try:
                self._member = GroupMember(self, group_id, strategies, session_timeout_ms, max_poll_interval_ms,
                                           enable_auto_commit, auto_commit_interval_ms)
            except BaseException:
                if self._own_bus:
                    self._bus.close()
                raise
        if topics:
            self.subscribe(list(topics))

    def _lazy(self, name):
        """Load kernel ``name`` on first use (tens of ms), then call it directly."""

        def first_call(*args):
            f = K.entry(name)
            setattr(self, "_" + name, f)
            return f(*args)

        return first_call

    # --- assignment ---
    def _make_part(self, tp: TopicPartition) -> _Part:
        meta = self._bus.topic_meta(tp.topic)
        if not 0 <= tp.partition < meta.partitions:
            raise UnknownTopicError(f"partition does not exist: topic={tp.topic!r} partition={tp.partition} "
                                    f"(it has {meta.partitions})")
        ring = self._bus.ring(meta, tp.partition)
        log = PartitionLog(_paths.partition_dir(self._bus.data_dir, tp.topic, tp.partition))
        return _NativePart(tp, ring, log) if _Reader is not None else _Part(tp, ring, log)

    def _set_assignment(self, tps) -> None:
        new = {}
        for tp in tps:
            tp = TopicPartition(*tp)
            new[tp] = self._parts.get(tp) or self._make_part(tp)
        for tp, p in self._parts.items():
            if tp not in new:
                p.log.close()
        self._parts = new
        self._order = list(new.values())
        self._solo = self._order[0] if len(self._order) == 1 else None

    @_one_thread
    def subscribe(self, topics=(), pattern=None, listener=None) -> None:
        if isinstance(topics, str):
            topics = [topics]
        topics = list(topics)
        for t in topics:
            validate_topic_name(t)
        if self._member is not None:  # the group's coordinator assigns the partitions
            return self._member.subscribe(self, topics, pattern, listener)
        tps = []
        for t in topics:
            meta = self._bus.topic_meta(t)
            tps.extend(TopicPartition(t, p) for p in range(meta.partitions))
        self._subscription = topics
        self._set_assignment(tps)

    def subscription(self):
        return set(self._subscription) if self._subscription is not None else None

    @_one_thread
    def unsubscribe(self) -> None:
        if self._member is not None:
            return self._member.unsubscribe(self)
        self._subscription = None
        self._set_assignment([])

    @_one_thread
    def assign(self, partitions) -> None:
        tps = []
        for tp in partitions:
            if not isinstance(tp, tuple) or len(tp) != 2:
                raise TypeError(f"assign takes TopicPartition(topic, partition) items: got {tp!r}")
            validate_topic_name(tp[0])
            tps.append(TopicPartition(tp[0], int(tp[1])))
        if self._member is not None:
            raise ShmbusError(f"assign() is for consumers without a group: group_id={self.group_id!r} (subscribe() "
                              f"to let the group share the partitions, or make a Consumer without group_id)")
        self._subscription = None
        self._set_assignment(tps)

    def assignment(self) -> set:
        return set(self._parts)

    def topics(self) -> set:
        return set(self._bus.list_topics())

    def partitions_for_topic(self, topic: str):
        return set(range(self._bus.topic_meta(topic).partitions))

    # --- offsets ---
    def _part(self, tp) -> _Part:
        tp = TopicPartition(*tp)
        p = self._parts.get(tp)
        if p is None:
            raise ShmbusError(f"partition is not assigned to this consumer: topic={tp.topic!r} "
                              f"partition={tp.partition} (assign() or subscribe() it first)")
        return p

    def _start(self, p: _Part) -> int:
        return partition_start_offset(p.ring, p.log)

    def _reset(self, p: _Part, why: str) -> None:
        if self.auto_offset_reset == "earliest":
            p.position = self._start(p)
        elif self.auto_offset_reset == "latest":
            p.position = p.ring.next_offset()
        else:
            raise OffsetOutOfRangeError(
                f"{why}: topic={p.tp.topic!r} partition={p.tp.partition} position={p.position} "
                f"start={self._start(p)} end={p.ring.next_offset()} (seek, or set auto_offset_reset="
                f"'earliest' or 'latest')")
        p.cursor = -1

    @_one_thread
    def position(self, tp) -> int:
        p = self._part(tp)
        if p.position is None:
            self._reset(p, "no position and no committed offset")
        return p.settled_position()

    @_one_thread
    def seek(self, tp, offset: int) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < _INT64_END:
            raise InvalidArgumentError(f"offset must be an int >= 0 and < 2**63: offset={offset!r}")
        p = self._part(tp)
        p.position = offset
        p.cursor = -1

    @_one_thread
    def seek_to_beginning(self, *tps) -> None:
        for p in ([self._part(tp) for tp in tps] if tps else self._order):
            p.position = self._start(p)
            p.cursor = -1

    @_one_thread
    def seek_to_end(self, *tps) -> None:
        for p in ([self._part(tp) for tp in tps] if tps else self._order):
            p.position = p.ring.next_offset()
            p.cursor = -1

    def _with_part(self, tp, fn):
        tp = TopicPartition(*tp)
        p = self._parts.get(tp)
        if p is not None:
            return fn(p)
        tmp = self._make_part(tp)
        try:
            return fn(tmp)
        finally:
            tmp.log.close()

    @_one_thread
    def beginning_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._with_part(tp, self._start) for tp in partitions}

    @_one_thread
    def end_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._with_part(tp, lambda p: p.ring.next_offset()) for tp in partitions}

    @_one_thread
    def offsets_for_times(self, timestamps: dict) -> dict:
        out = {}
        for tp, ts in timestamps.items():
            if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < _INT64_END:
                raise InvalidArgumentError(f"timestamp must be an int >= 0 and < 2**63 (ms since the epoch): "
                                           f"timestamp={ts!r}")
            out[TopicPartition(*tp)] = self._with_part(tp, lambda p, ts=ts: self._offset_for_time(p, ts))
        return out

    def _offset_for_time(self, p: _Part, ts: int):
        for _ in range(100):
            rel = p.ring.reclaiming()
            hit = p.log.offset_for_time(ts)
            if hit is not None:
                return OffsetAndTimestamp(*hit)
            pos = rel
            found = None
            while True:
                n = native.scan_frames(p.ring.buf, R.HEADER_BYTES, p.ring.mask, pos, _BIG, 1024, 0, False, self._meta)
                rows = self._meta[1: n + 1]
                h = np.nonzero(rows[:, F.M_TS] >= ts)[0]
                if len(h):
                    found = OffsetAndTimestamp(int(rows[h[0], F.M_OFFSET]), int(rows[h[0], F.M_TS]))
                    break
                if n == 0:
                    break
                pos = int(self._meta[0, F.MS_POS])
            if p.ring.reclaiming() <= rel:
                return found
        return None

    @_one_thread
    def committed(self, tp, metadata=False):
        if self._member is not None:
            return self._member.committed(tp)
        return None

    @_one_thread
    def commit(self, offsets=None) -> None:
        if self._member is not None:
            return self._member.commit(self, offsets)
        raise CommitFailedError("commit needs a consumer group: group_id=None (create the Consumer with group_id=...)")

    @_one_thread
    def commit_async(self, offsets=None, callback=None) -> None:
        self.commit(offsets)

    @_one_thread
    def pause(self, *tps) -> None:
        for tp in tps:
            self._part(tp).paused = True

    @_one_thread
    def resume(self, *tps) -> None:
        for tp in tps:
            self._part(tp).paused = False

    def paused(self) -> set:
        return {p.tp for p in self._order if p.paused}

    # --- reading ---
    def _locate(self, p: _Part, max_n: int, batch: bool):
        """Position is not in a known ring place: read disk, else set the cursor."""
        if p.position is None:
            self._reset(p, "no position and no committed offset")
        rel0 = p.ring.reclaiming()
        end = p.ring.next_offset()
        if p.position > end:
            self._reset(p, "offset beyond the end of the partition")
            if p.position is None:
                return None
        n, meta, chunk = p.log.read(p.position, max_n)
        if n:
            rows = meta[1: n + 1].copy() if batch else meta[1: n + 1]
            first, last = int(rows[0, F.M_OFFSET]), int(rows[-1, F.M_OFFSET])
            out = self._records_from(p, rows, chunk, batch, chunk)
            # (build the records first: the start-offset lookup reuses the log's buffers)
            if first > p.position and p.position < self._start(p):
                self._reset(p, "offset below the start of the partition")
                return self._locate(p, max_n, batch)
            p.position = last + 1
            return out
        if p.position < self._start_if_gone(p, rel0):
            self._reset(p, "offset below the start of the partition")
        p.cursor = rel0
        return None

    def _start_if_gone(self, p: _Part, rel0: int) -> int:
        """The start offset, looked up only when the disk had nothing at all.

        With segments listed, the disk had nothing at or after the position:
        below the first segment's base means retention deleted it.
        """
        if p.log.segs:
            return p.log.segs[0]
        return self._start(p)

    def _records_from(self, p: _Part, rows, buf, batch: bool, chunk=None):
        """Records for scan ``rows`` (an array of meta rows) whose bodies are in ``buf``."""
        if batch:
            return self._batch_from_rows(p, rows, chunk if chunk is not None else p.ring.buf)
        tp = p.tp
        topic, part = tp.topic, tp.partition
        kd, vd = self._kdes, self._vdes
        if _build is not None:  # compiled (shmbus/core/_native.c)
            out = _build(buf, rows, topic, part, ConsumerRecord)
            if kd is not None or vd is not None:
                out = [r._replace(key=kd(r.key) if kd is not None and r.key is not None else r.key,
                                  value=vd(r.value) if vd is not None else r.value) for r in out]
            return out
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
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
            out.append(_new_tuple(ConsumerRecord, (topic, part, off, ts, key, value, headers)))
        return out

    def _batch_from_rows(self, p: _Part, rows, buf):
        a = np.asarray(rows, np.int64).reshape(-1, F.META_COLS)
        vl = a[:, F.M_VLEN]
        src = a[:, F.M_BODY] + np.maximum(a[:, F.M_KLEN], 0)
        lens = np.maximum(vl, 0)
        starts = np.zeros(len(a), np.int64)
        if len(a):
            np.cumsum(lens[:-1], out=starts[1:])
        total = int(lens.sum())
        if total and len(a) and buf is not p.ring.buf:
            # a segment chunk (frames back to back): the compiled scan_copy gathers the values
            # (a Python loop per record made reads from disk ~20x slower than from the ring)
            if total > len(self._values):
                self._values = np.empty(max(total, 2 * len(self._values)), np.uint8)
            end = int(a[-1, F.M_POS] + a[-1, F.M_LEN])
            k = native.scan_copy_frames(buf, 0, -1, int(a[0, F.M_POS]), end, len(a), int(a[0, F.M_OFFSET]), False,
                                        self._meta, self._values)
            if k == len(a):
                return RecordBatch(p.tp.topic, p.tp.partition, a[:, F.M_OFFSET].copy(), a[:, F.M_TS].copy(),
                                   self._values[:total].copy(), starts, vl.copy())
        data = np.empty(total, np.uint8)
        for i in range(len(a)):
            data[starts[i]: starts[i] + lens[i]] = buf[src[i]: src[i] + lens[i]]
        return RecordBatch(p.tp.topic, p.tp.partition, a[:, F.M_OFFSET].copy(), a[:, F.M_TS].copy(), data, starts,
                           vl.copy())

    def _fetch(self, p: _Part, max_n: int, batch: bool):
        """Records of one partition (a list, or a RecordBatch if ``batch``), or None."""
        for _attempt in range(4):
            if p.cursor < 0:
                got = self._locate(p, max_n, batch)
                if got is not None:
                    return got
            ring = p.ring
            rd = p.rd
            if rd is not None and not batch and self._plain:
                got = rd.take_many(max_n, 0)  # compiled: no numba for a reader that stays in the ring
                if got.__class__ is list:
                    return got
                if got is not None:
                    return None  # nothing published at the cursor yet
            if batch:
                n = self._scan_copy_ring(ring.address, p.cursor, max_n, p.position, self._meta_addr, self._meta_rows,
                                         self._values.ctypes.data, len(self._values))
            else:
                n = self._scan_ring(ring.address, p.cursor, max_n, p.position, self._meta_addr, self._meta_rows)
            meta = self._meta
            if n == 0:
                if int(meta[0, F.MS_REASON]) == F.STOP_MAX and batch and self._values is not None:
                    # a single value larger than the buffer: grow it
                    self._values = np.empty(len(self._values) * 2, np.uint8)
                    continue
                new = int(meta[0, F.MS_POS])
                if new < ring.reclaiming():
                    p.cursor = -1  # lapped: what we passed is on disk now
                    continue
                p.cursor = new
                return None
            if batch:
                rows = meta[1: n + 1]
                total = int(np.maximum(rows[:, F.M_VLEN], 0).sum())
                result = RecordBatch(p.tp.topic, p.tp.partition, rows[:, F.M_OFFSET].copy(), rows[:, F.M_TS].copy(),
                                     self._values[:total].copy(), rows[:, F.M_BODY].copy(), rows[:, F.M_VLEN].copy())
                first_pos = int(rows[0, F.M_POS])
                last_off = int(rows[-1, F.M_OFFSET])
                new = int(meta[0, F.MS_POS])
            else:
                new = int(meta[0, F.MS_POS])  # row 0 is the scan's state
                first_pos = int(meta[1, F.M_POS])
                try:
                    result = self._records_from(p, meta[1: n + 1], p.mv, False)
                except Exception:
                    # bytes overwritten while we decoded them (we were lapped): re-read from disk
                    if first_pos < ring.reclaiming():
                        p.cursor = -1
                        continue
                    raise
                last_off = int(meta[n, F.M_OFFSET])
            if first_pos < ring.reclaiming():
                # the spiller released bytes we were copying: drop and re-read (from disk)
                p.cursor = -1
                continue
            p.cursor = new
            p.position = last_off + 1
            return result
        return None

    def _take1(self, p: _Part, budget: int):
        """The short path: one record at the cursor, decoded in Python (no kernel call).

        Returns [record]; or ``_EMPTY`` when nothing is published at the
        cursor; or None when the general path must decide (more than one
        record ready, padding, a seek below the frame, the reader lapped, an
        exactly full ring). Reads are plain loads, which x86-64 keeps in
        program order (the producer publishes the header word last); the copy
        is checked against RECLAIMING afterwards, like every ring read.
        """
        c = p.cursor
        if c < 0 or p.paused:
            return None
        rd = p.rd
        if rd is not None:  # the compiled twin of the code below (shmbus/core/_native.c: Reader)
            rec = rd.take(budget > 1)
            if rec.__class__ is not ConsumerRecord:
                return None if rec is None else _EMPTY
            if self._kdes is not None or self._vdes is not None:
                key, value = rec[4], rec[5]
                if key is not None and self._kdes is not None:
                    key = self._kdes(key)
                if self._vdes is not None:
                    value = self._vdes(value)
                rec = rec._replace(key=key, value=value)
            return [rec]
        q = p.qwords
        w = q[p.hq + ((c & p.mask) >> 3)]
        t = (w >> F.TYPE_SHIFT) & F.TYPE_MASK
        if t != F.DATA:
            if (t == F.FREE or t == F.RESERVED) and q[_W_RECLAIMING] <= c:  # nothing published, and not lapped
                return _EMPTY
            return None
        if c >= q[_W_RELEASED] + p.ring_bytes:
            return _EMPTY  # an exactly full ring: this is the oldest frame, not a new one
        flen = w & F.LEN_MASK
        if flen < F.HEADER_BYTES or flen & (F.ALIGN - 1) or (c & p.mask) + flen > p.ring_bytes:
            return None  # a header that cannot be (a lapped cursor, say): the general path's scan finds out
        nxt = c + flen
        if budget > 1 and (q[p.hq + ((nxt & p.mask) >> 3)] >> F.TYPE_SHIFT) & F.TYPE_MASK == F.DATA:
            return None  # more records are ready: one kernel call reads them all
        mv = p.mv
        i = R.HEADER_BYTES + (c & p.mask)
        off, ts, kl, vl, hl = _unpack_frame(mv, i + F.OFF_OFFSET)
        if off < p.position or kl < -1 or vl < -1 or hl < 0 or \
                F.HEADER_BYTES + (kl if kl > 0 else 0) + (vl if vl > 0 else 0) + hl > flen:
            return None  # below the position (a seek), or lengths that cannot be
        b = i + F.OFF_BODY
        if kl >= 0:
            key = mv[b: b + kl].tobytes()
            b += kl
        else:
            key = None
        if vl >= 0:
            value = mv[b: b + vl].tobytes()
            b += vl
        else:
            value = None
        try:
            headers = decode_headers(mv[b: b + hl]) if hl else []
        except Exception:
            if q[_W_RECLAIMING] > c:
                return None  # bytes being zeroed under us (lapped): the general path reads the disk
            raise
        if q[_W_RECLAIMING] > c:
            return None  # the spiller reclaimed these bytes while we copied them
        p.cursor = nxt
        p.position = off + 1
        if key is not None and self._kdes is not None:
            key = self._kdes(key)
        if self._vdes is not None:
            value = self._vdes(value)
        tp = p.tp
        return [_new_tuple(ConsumerRecord, (tp.topic, tp.partition, off, ts, key, value, headers))]

    def _idle(self, p: _Part) -> bool:
        """Nothing published at a known cursor (checked in Python: an empty partition costs no kernel call)."""
        c = p.cursor
        if c < 0:
            return False
        q = p.qwords
        t = (q[p.hq + ((c & p.mask) >> 3)] >> F.TYPE_SHIFT) & F.TYPE_MASK
        return (t == F.FREE or t == F.RESERVED) and q[_W_RECLAIMING] <= c

    def _ready(self, p: _Part) -> bool:
        c = p.cursor
        if c < 0:
            return True
        ring = p.ring
        if ring.reclaiming() > c:
            return True  # lapped: the locate path has work
        # a published word at the cursor, and the cursor not a whole ring ahead of
        # RELEASED (there the word is the oldest frame of an exactly full ring)
        return p.qwords[p.hq + ((c & ring.mask) >> 3)] & _TYPE_BITS != 0 and c < ring.released() + ring.ring_bytes

    def _poll(self, timeout_ms, max_records, batch: bool, spun_s: float = 0.0) -> dict:
        self._owner = _get_ident()  # (listeners run in here and may call back)
        if self._closed:
            raise ShmbusError("poll on a closed consumer (make a new one)")
        if timeout_ms.__class__ is not int or timeout_ms < 0:
            if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
                raise ValueError(f"timeout_ms must be a number >= 0: timeout_ms={timeout_ms!r}")
        budget = max_records if max_records is not None else self.max_poll_records
        if budget.__class__ is not int or budget < 1:
            raise ValueError(f"max_records must be an int >= 1: max_records={max_records!r}")
        if not batch:
            budget = min(budget, 1024)
        deadline = None
        solo = self._solo
        member = self._member
        while True:
            if member is not None:
                member.before_poll(self)  # rebalances and auto-commit; keeps _solo None (group_member.py)
            if solo is not None and not batch:
                got = self._take1(solo, budget)
                if got:
                    return {solo.tp: got}
                if got is not None:  # nothing there
                    if timeout_ms == 0:
                        return {}
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout_ms / 1000.0
                    if now >= deadline:
                        return {}
                    self._wait(deadline, spun_s)
                    spun_s = 0.0
                    continue
            out = {}
            parts = self._order
            n = len(parts)
            left = budget
            for k in range(n):
                p = parts[(self._rr + k) % n]
                if p.paused:
                    continue
                if batch:
                    if self._idle(p):
                        continue
                    got = self._fetch(p, left, batch)
                else:
                    rd = p.rd
                    if rd is not None and self._plain:
                        got = rd.take_many(left, 0)  # the records at the cursor, compiled
                        if got.__class__ is not list:
                            got = self._fetch(p, left, batch) if got is None else None
                    else:
                        got = self._take1(p, left)  # one record, or nothing there, without a kernel call
                        if got is None:
                            got = self._fetch(p, left, batch)
                if got:
                    out[p.tp] = got
                    left -= len(got)
                    if left <= 0:
                        break
            if n:
                self._rr = (self._rr + 1) % n
            if out or timeout_ms == 0:
                return out
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_ms / 1000.0
            if now >= deadline:
                return out
            self._wait(deadline, spun_s)
            spun_s = 0.0

    def _wait(self, deadline: float, spun_s: float = 0.0) -> None:
        """Spin for what is left of spin_us (``spun_s`` of it was spun already, in C), then sleep."""
        active = [p for p in self._order if not p.paused]
        now = time.monotonic()
        spin_end = min(deadline, now + self._spin_s - spun_s)
        solo = self._solo
        if solo is not None and solo.cursor >= 0 and not solo.paused:
            # one partition: spin on its header word alone (a few loads per turn)
            q = solo.qwords
            c = solo.cursor
            i = solo.hq + ((c & solo.mask) >> 3)
            rb = solo.ring_bytes
            while now < spin_end:
                for _ in range(16):
                    w = q[i]
                    if w and (w >> F.TYPE_SHIFT) & F.TYPE_MASK != F.RESERVED and c < q[_W_RELEASED] + rb:  # published
                        return
                if q[_W_RECLAIMING] > c:
                    return  # lapped: the general path reads the disk
                now = time.monotonic()
        while now < spin_end:
            for p in active:
                if self._ready(p):
                    return
            now = time.monotonic()
        if now >= deadline:
            return
        ctl = self._bus.ctl
        seen = ctl.doorbell()
        add = native.add_sleepers
        for p in active:
            add(p.addr, 1) if add is not None else K.add_sleepers(p.ring.buf, 1)
        try:
            if not any(self._ready(p) for p in active):
                ctl.sleep(seen, min(deadline - now, 0.25))
        finally:
            for p in active:
                add(p.addr, -1) if add is not None else K.add_sleepers(p.ring.buf, -1)

    def poll(self, timeout_ms=0, max_records=None, update_offsets=True) -> dict:
        """{TopicPartition: [ConsumerRecord, ...]}; waits up to ``timeout_ms`` for the first record."""
        tok = self._token  # (the guard of _one_thread, inline: this is the hot path)
        try:
            t = tok.pop()
        except IndexError:
            if self._owner != _get_ident():
                _busy("poll")
            return self._poll(timeout_ms, max_records, False)  # re-entered: iteration, a listener callback
        try:
            solo = self._solo
            if solo is not None and solo.rd is not None and self._plain and timeout_ms.__class__ is int \
                    and timeout_ms >= 0 and not solo.paused:
                # compiled: the records at the cursor, after a spin of up to spin_us for one to come
                n = self.max_poll_records if max_records is None else max_records
                if n.__class__ is int and n >= 1:
                    # (the spin is at most 100 µs per call, below any timeout but 0: it holds the GIL;
                    # a longer spin_us goes on in _poll. No min(): a builtin call costs as much as the rest of this wrapper.)
                    spin = self._spin_cap_ns if timeout_ms else 0
                    got = solo.rd.poll(n, spin)
                    if got:
                        return got
                    return self._poll(timeout_ms, max_records, False, spin / 1e9)  # (no second spin of the same)
                return self._poll(timeout_ms, max_records, False)
            if solo is not None and max_records is None and timeout_ms.__class__ is int and timeout_ms >= 0:
                got = self._take1(solo, self.max_poll_records)  # one record waiting: no further checks
                if got:
                    return {solo.tp: got}
                if got is not None and timeout_ms and self._spin_s:
                    # nothing yet: spin here on the header word (the common wait of a follower), then
                    # read; _poll's general loop takes over for sleeping and everything else
                    c = solo.cursor
                    q = solo.qwords
                    i = solo.hq + ((c & solo.mask) >> 3)
                    end = time.monotonic() + min(self._spin_s, timeout_ms / 1000.0)
                    while True:
                        for _ in range(32):
                            w = q[i]
                            if w and (w >> F.TYPE_SHIFT) & F.TYPE_MASK != F.RESERVED:  # published (DATA, or padding)
                                got = self._take1(solo, self.max_poll_records)
                                if got:
                                    return {solo.tp: got}
                                break
                        else:
                            if time.monotonic() < end and q[_W_RECLAIMING] <= c:
                                continue
                        break
            return self._poll(timeout_ms, max_records, False)
        finally:
            self._owner = None
            tok.append(t)

    @_one_thread
    def poll_batch(self, timeout_ms=0, max_records=None) -> dict:
        """{TopicPartition: RecordBatch}: the fast path, numpy arrays and no object per record."""
        return self._poll(timeout_ms, max_records, True)

    # --- iteration ---
    def __iter__(self):
        return self

    @_one_thread
    def __next__(self) -> ConsumerRecord:
        if self._iter_buf:
            return self._iter_buf.pop()
        limit = self.consumer_timeout_ms
        deadline = None if limit is None else time.monotonic() + limit / 1000.0
        while True:
            wait = 1000 if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000.0)
            got = self.poll(timeout_ms=wait)
            if got:
                recs = [r for lst in got.values() for r in lst]
                recs.reverse()
                self._iter_buf = recs
                return self._iter_buf.pop()
            if deadline is not None and time.monotonic() >= deadline:
                raise StopIteration

    # --- lifecycle ---
    @_one_thread
    def close(self, autocommit=True) -> None:
        if self._closed:
            return
        if self._member is not None:
            try:
                self._member.close(self, autocommit)  # commit, on_partitions_revoked, leave the group
            except ShmbusError:
                pass
        self._closed = True
        for p in self._order:
            p.qwords.release()
            p.mv.release()
            p.log.close()
        self._parts = {}
        self._order = []
        self._solo = None
        if self._own_bus:
            self._bus.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Consumer"]
