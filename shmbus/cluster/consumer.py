"""``ClusterConsumer``: the ``Consumer`` API on a Kafka cluster (a librdkafka consumer).

Without ``group_id`` the consumer assigns itself every partition of the subscribed topics
(librdkafka still needs a group id: a private one, never joined nor committed to). With
``group_id`` librdkafka's group protocol shares the partitions (``sticky`` is librdkafka's
``cooperative-sticky``: incremental, as shared memory's rebalances are).

Commits are the consumer's own, as on shared memory: the position (the next offset to read)
of each assigned partition, every ``auto_commit_interval_ms`` from ``poll``, at a revoke and
at ``close`` (librdkafka's own auto-commit is off). Positions are librdkafka's; one not yet
known (nothing read since the assignment) is resolved as shared memory does: the committed
offset, else ``auto_offset_reset``.

``poll`` returns what librdkafka has fetched, waiting up to ``timeout_ms`` for the first
record; ``poll(timeout_ms=0)`` returns only records already fetched. One thread at a time
(``ConcurrentAccessError`` otherwise); a rebalance listener runs inside ``poll``.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from shmbus.client.consumer.guard import one_thread
from shmbus.client.consumer.iteration import IterationMixin
from shmbus.cluster.errors import kafka_error
from shmbus.cluster.librdkafka import load_confluent
from shmbus.cluster.options import CONSUMER_NAMES, UNSET, check_int, kafka_options, strategies, warn_shm_only
from shmbus.errors import (
    CommitFailedError,
    InvalidArgumentError,
    InvalidConfigError,
    OffsetOutOfRangeError,
    ShmbusError,
    UnknownTopicError,
)
from shmbus.records import ConsumerRecord, OffsetAndTimestamp, RecordBatch, TopicPartition

log = logging.getLogger(__name__)
_RESETS = {"earliest": "earliest", "latest": "latest", "none": "error"}
_FATAL = ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "OFFSET_OUT_OF_RANGE",
          "_AUTO_OFFSET_RESET", "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "_FATAL")


class ClusterConsumer(IterationMixin):
    """Reads records from partitions of a Kafka cluster (docs/api.md, docs/backends.md).

    ``kafka``: librdkafka consumer properties (``fetch.min.bytes``, ``isolation.level``, ...).
    ``spin_us`` and ``load_kernels`` are shared memory's; given here, they are warned of.
    """

    def __init__(self, bus, *topics, group_id=None, auto_offset_reset="latest", enable_auto_commit=True,
                 auto_commit_interval_ms=5000, max_poll_records=500, partition_assignment_strategy="range",
                 session_timeout_ms=10000, max_poll_interval_ms=300000, consumer_timeout_ms=None,
                 key_deserializer=None, value_deserializer=None, spin_us=UNSET, load_kernels=UNSET, kafka=None):
        self._ck = ck = load_confluent()
        if auto_offset_reset not in _RESETS:
            raise InvalidConfigError(f"auto_offset_reset must be one of earliest, latest, none: "
                                     f"auto_offset_reset={auto_offset_reset!r}")
        strategy = strategies(partition_assignment_strategy)
        for name, v in (("max_poll_records", max_poll_records), ("auto_commit_interval_ms", auto_commit_interval_ms),
                        ("session_timeout_ms", session_timeout_ms), ("max_poll_interval_ms", max_poll_interval_ms)):
            check_int(name, v, 1)
        if consumer_timeout_ms is not None and (isinstance(consumer_timeout_ms, bool) or not isinstance(
                consumer_timeout_ms, (int, float)) or consumer_timeout_ms < 0):
            raise InvalidConfigError(f"consumer_timeout_ms must be a number >= 0 or None: "
                                     f"consumer_timeout_ms={consumer_timeout_ms!r}")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise InvalidConfigError(f"group_id must be a non-empty str or None: group_id={group_id!r}")
        for name, f in (("key_deserializer", key_deserializer), ("value_deserializer", value_deserializer)):
            if f is not None and not callable(f):
                raise InvalidConfigError(f"{name} must be callable: {name}={f!r}")
        if spin_us is not UNSET:
            warn_shm_only("spin_us", spin_us, "librdkafka waits on its own queue")
        if load_kernels is not UNSET:
            warn_shm_only("load_kernels", load_kernels, "a Kafka-cluster consumer runs no numba kernels")
        kafka = kafka_options(kafka, CONSUMER_NAMES, "consumer()")
        self._bus = bus
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.consumer_timeout_ms = consumer_timeout_ms
        self._auto_commit = bool(enable_auto_commit) and group_id is not None
        self._commit_every = auto_commit_interval_ms / 1000.0
        self._next_commit = time.monotonic() + self._commit_every
        self._key_des = key_deserializer
        self._value_des = value_deserializer
        self._token = [True]  # one thread at a time (shmbus/client/consumer/guard.py)
        self._owner = None
        self._subscription: list[str] | None = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._seeked: dict[TopicPartition, int] = {}  # positions set since the partition's last record came
        self._listener = None
        self._iter_buf: list = []
        self._closed = False
        self._timeout = bus.timeout_ms / 1000.0
        conf = bus.client_config({
            "group.id": group_id if group_id is not None else f"shmbus-nogroup-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "auto.offset.reset": _RESETS[auto_offset_reset],
            "partition.assignment.strategy": strategy, "session.timeout.ms": session_timeout_ms,
            "max.poll.interval.ms": max_poll_interval_ms, "enable.partition.eof": False, **kafka})
        try:
            self._c = ck.Consumer(conf)
        except ck.KafkaException as e:
            raise kafka_error(e, "bad kafka options for the consumer") from None
        if topics:
            self.subscribe(list(topics))

    # --- helpers ---
    def _tp(self, tp, offset=None):
        if not isinstance(tp, tuple) or len(tp) != 2:
            raise TypeError(f"a partition is a TopicPartition(topic, partition): got {tp!r}")
        if offset is None:
            return self._ck.TopicPartition(tp[0], int(tp[1]))
        return self._ck.TopicPartition(tp[0], int(tp[1]), int(offset))

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ShmbusError(f"{what} on a closed consumer (make a new one)")

    def _owned(self, tp, what: str) -> TopicPartition:
        tp = TopicPartition(tp[0], tp[1]) if isinstance(tp, tuple) and len(tp) == 2 else tp
        if tp not in self._assignment():
            raise ShmbusError(f"{what}: partition not assigned to this consumer: {tp} "
                              f"(assignment() lists the consumer's partitions)")
        return tp

    def _assignment(self) -> set[TopicPartition]:
        if self.group_id is None:
            return set(self._assigned)
        return {TopicPartition(t.topic, t.partition) for t in self._c.assignment()}

    # --- assignment ---
    @one_thread
    def subscribe(self, topics=(), pattern=None, listener=None) -> None:
        self._check_open("subscribe")
        if isinstance(topics, str):
            topics = [topics]
        topics = list(topics or [])
        if pattern is not None:
            if self.group_id is None:
                raise ShmbusError("subscribe(pattern=...) needs a consumer group: group_id=None")
            topics.append(pattern if pattern.startswith("^") else "^" + pattern)
        elif not topics:
            raise ValueError("subscribe needs topics or a pattern")
        if self.group_id is None:
            tps = set()
            for t in topics:
                n = self._bus.partition_count(t)  # UnknownTopicError
                tps |= {TopicPartition(t, p) for p in range(n)}
            self._subscription = topics
            self._assign(tps)
            return
        self._subscription = topics
        self._listener = listener
        try:
            self._c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        except self._ck.KafkaException as e:
            raise kafka_error(e, f"subscribe: topics={topics!r}") from None

    def _on_assign(self, consumer, partitions) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if self._listener is not None and hasattr(self._listener, "on_partitions_assigned"):
            self._listener.on_partitions_assigned(tps)

    def _on_revoke(self, consumer, partitions) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if self._auto_commit and tps:
            try:
                self._commit_positions(tps, asynchronous=False)
            except ShmbusError:
                pass  # fenced already: the new owner starts from the last commit
        self._paused -= tps
        for tp in tps:
            self._seeked.pop(tp, None)
        if self._listener is not None and hasattr(self._listener, "on_partitions_revoked"):
            self._listener.on_partitions_revoked(tps)

    def _on_lost(self, consumer, partitions) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._paused -= tps
        for tp in tps:
            self._seeked.pop(tp, None)
        if self._listener is not None:
            f = getattr(self._listener, "on_partitions_lost", None) or \
                getattr(self._listener, "on_partitions_revoked", None)
            if f is not None:
                f(tps)

    def _assign(self, tps: set) -> None:
        for tp in tps:
            if not isinstance(tp, tuple) or len(tp) != 2 or not isinstance(tp[0], str) or \
                    isinstance(tp[1], bool) or not isinstance(tp[1], int):
                raise TypeError(f"assign takes TopicPartition(topic, partition) items: got {tp!r}")
        tps = {TopicPartition(t, p) for t, p in tps}
        for topic in {t for t, _ in tps}:
            n = self._bus.partition_count(topic)
            bad = sorted(p for t, p in tps if t == topic and not 0 <= p < n)
            if bad:
                raise UnknownTopicError(f"unknown partition: topic={topic!r} partitions={bad} (it has {n})")
        start = self._ck.OFFSET_BEGINNING if self.auto_offset_reset == "earliest" else \
            self._ck.OFFSET_END if self.auto_offset_reset == "latest" else self._ck.OFFSET_INVALID
        keep = {tp: self._known_position(tp) for tp in tps & self._assigned}
        self._seeked = {tp: off for tp, off in self._seeked.items() if tp in tps}
        self._c.assign([self._tp(tp, keep.get(tp, start)) for tp in sorted(tps)])
        self._assigned = tps
        self._paused &= tps
        if self._paused:
            self._c.pause([self._tp(tp) for tp in self._paused])

    @one_thread
    def assign(self, partitions) -> None:
        self._check_open("assign")
        if self.group_id is not None:
            raise ShmbusError(f"assign() in a consumer group: group_id={self.group_id!r} (use subscribe(), or a "
                              f"consumer without group_id)")
        self._subscription = None
        self._assign(set(partitions))

    @one_thread
    def unsubscribe(self) -> None:
        self._subscription = None
        if self.group_id is None:
            self._c.unassign()
            self._assigned = set()
        else:
            self._c.unsubscribe()
        self._paused = set()
        self._seeked = {}

    def subscription(self):
        return set(self._subscription) if self._subscription is not None else None

    @one_thread
    def assignment(self) -> set:
        return self._assignment()

    def topics(self) -> set:
        return set(self._bus.list_topics())

    def partitions_for_topic(self, topic) -> set:
        return set(range(self._bus.partition_count(topic)))

    # --- positions and offsets ---
    def _resolve(self, tp: TopicPartition) -> int:
        """Where reading starts when nothing was read since the assignment: the committed offset, else the reset."""
        if self.group_id is not None:
            c = self._committed(tp)
            if c is not None:
                return c
        lo, hi = self._bus.watermarks(tp)
        if self.auto_offset_reset == "earliest":
            return lo
        if self.auto_offset_reset == "latest":
            return hi
        raise OffsetOutOfRangeError(f"no position and no committed offset with auto_offset_reset='none': {tp}")

    def _known_position(self, tp: TopicPartition) -> int:
        """The position set by a seek, else librdkafka's (past the last record returned); < 0: none yet."""
        off = self._seeked.get(tp)
        return off if off is not None else self._c.position([self._tp(tp)])[0].offset

    def _position(self, tp: TopicPartition) -> int:
        off = self._seeked.get(tp)
        if off is not None and self.auto_offset_reset != "none":
            lo, hi = self._bus.watermarks(tp)
            if not lo <= off <= hi:  # out of range: where the reset takes the fetch (with "none", poll raises)
                off = lo if self.auto_offset_reset == "earliest" else hi
                self._seek(tp, off)
            return off
        off = self._known_position(tp)
        if off < 0:
            off = self._resolve(tp)
            self._seek(tp, off)  # the answer binds: reading starts there
        return off

    @one_thread
    def position(self, tp) -> int:
        self._check_open("position")
        return self._position(self._owned(tp, "position"))

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self._seeked[tp] = offset
        try:
            self._c.seek(self._tp(tp, offset))
        except self._ck.KafkaException as e:
            if self.group_id is None:  # (not fetching yet: assign again, at that offset)
                others = [self._tp(t, self._known_position(t)) for t in self._assigned if t != tp]
                self._c.assign(others + [self._tp(tp, offset)])
                return
            raise kafka_error(e, f"seek: {tp} offset={offset}") from None

    @one_thread
    def seek(self, tp, offset) -> None:
        self._check_open("seek")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgumentError(f"seek takes an offset int >= 0: offset={offset!r}")
        self._seek(self._owned(tp, "seek"), offset)

    def _all_or(self, tps) -> list:
        return [self._owned(tp, "seek") for tp in tps] if tps else sorted(self._assignment())

    @one_thread
    def seek_to_beginning(self, *tps) -> None:
        for tp in self._all_or(tps):
            self._seek(tp, self._bus.watermarks(tp)[0])

    @one_thread
    def seek_to_end(self, *tps) -> None:
        for tp in self._all_or(tps):
            self._seek(tp, self._bus.watermarks(tp)[1])

    def beginning_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._bus.watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._bus.watermarks(tp)[1] for tp in partitions}

    def offsets_for_times(self, timestamps: dict) -> dict:
        """The first record at or after each timestamp (ListOffsets); the timestamp is the record's own,
        read from the record (the Kafka client API returns only the offset)."""
        query = []
        for tp, ts in timestamps.items():
            if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 1 << 63:
                raise InvalidArgumentError(f"offsets_for_times takes timestamps as ints in [0, 2**63): {tp} "
                                           f"timestamp={ts!r}")
            query.append(self._tp(tp, ts))
        if not query:
            return {}
        try:
            got = self._c.offsets_for_times(query, timeout=self._timeout)
        except self._ck.KafkaException as e:
            raise kafka_error(e, "offsets_for_times") from None
        out = {}
        for t in got:
            tp = TopicPartition(t.topic, t.partition)
            if t.error is not None:
                raise kafka_error(t.error, f"offsets_for_times: {tp}")
            out[tp] = None if t.offset < 0 else OffsetAndTimestamp(t.offset, self._timestamp_at(tp, t.offset))
        return out

    def _timestamp_at(self, tp: TopicPartition, offset: int) -> int:
        """The timestamp of the record at ``offset``, read by a consumer of its own."""
        c = self._ck.Consumer(self._bus.client_config({"group.id": f"shmbus-ts-{uuid.uuid4().hex}",
                                                       "enable.auto.commit": False, "enable.partition.eof": False}))
        try:
            c.assign([self._tp(tp, offset)])
            deadline = time.monotonic() + self._timeout
            while time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and m.error() is None and m.offset() >= offset:
                    return m.timestamp()[1]
            raise ShmbusError(f"offsets_for_times: the record at the offset found did not arrive: {tp} "
                              f"offset={offset}")
        finally:
            c.close()

    # --- pause ---
    @one_thread
    def pause(self, *tps) -> None:
        tps = [self._owned(tp, "pause") for tp in tps]
        if tps:
            self._c.pause([self._tp(tp) for tp in tps])
        self._paused |= set(tps)

    @one_thread
    def resume(self, *tps) -> None:
        tps = [self._owned(tp, "resume") for tp in tps]
        if tps:
            self._c.resume([self._tp(tp) for tp in tps])
        self._paused -= set(tps)

    def paused(self) -> set:
        return set(self._paused)

    # --- commits ---
    def _committed(self, tp) -> int | None:
        try:
            got = self._c.committed([self._tp(tp)], timeout=self._timeout)
        except self._ck.KafkaException as e:
            raise kafka_error(e, f"committed: {tp}") from None
        off = got[0].offset
        return None if off < 0 else off

    @one_thread
    def committed(self, tp, metadata=False):
        if self.group_id is None:
            return None
        return self._committed(TopicPartition(*tp))

    def _commit_positions(self, tps, asynchronous: bool) -> None:
        offsets = {}
        for tp in tps:
            off = self._known_position(tp)
            if off >= 0:
                offsets[tp] = off
        if offsets:
            self._commit(offsets, asynchronous)

    def _commit(self, offsets: dict, asynchronous: bool) -> None:
        try:
            self._c.commit(offsets=[self._tp(tp, off) for tp, off in offsets.items()], asynchronous=asynchronous)
        except self._ck.KafkaException as e:
            err = e.args[0] if e.args else None
            if err is not None and err.code() == self._ck.KafkaError._NO_OFFSET:
                return
            raise kafka_error(e, f"commit: offsets={offsets}") from None

    @one_thread
    def commit(self, offsets=None) -> None:
        self._check_open("commit")
        if self.group_id is None:
            raise CommitFailedError("commit needs a consumer group: group_id=None (create the consumer with "
                                    "group_id=...)")
        owned = self._assignment()
        if offsets is None:
            offsets = {tp: self._position(tp) for tp in owned}
        else:
            offsets = {TopicPartition(*tp): off for tp, off in offsets.items()}
            lost = sorted(tp for tp in offsets if tp not in owned)
            if lost:
                raise CommitFailedError(f"commit for partitions this member does not own: {lost} (the group "
                                        f"rebalanced; poll again, then commit)")
            for tp, off in offsets.items():
                if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                    raise InvalidArgumentError(f"a committed offset is an int >= 0: {tp} offset={off!r}")
        if offsets:
            self._commit(offsets, False)

    def commit_async(self, offsets=None, callback=None) -> None:
        """As ``commit`` (synchronously, as on shared memory)."""
        self.commit(offsets)

    # --- reading ---
    def _deliver(self, msgs: list, batch: bool) -> dict:
        out: dict = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                name = err.name()
                if name in _FATAL or err.fatal():
                    raise kafka_error(err, f"poll: topic={m.topic()!r} partition={m.partition()}")
                log.warning("consumer: %s: %s (librdkafka retries by itself)", name, err.str())
                continue
            out.setdefault(TopicPartition(m.topic(), m.partition()), []).append(m)
        for tp in out:
            self._seeked.pop(tp, None)  # librdkafka's position is past these records
        if batch:
            return {tp: self._batch(tp, ms) for tp, ms in out.items()}
        kd, vd = self._key_des, self._value_des
        res = {}
        for tp, ms in out.items():
            recs = []
            for m in ms:
                k, v = m.key(), m.value()
                if kd is not None and k is not None:
                    k = kd(k)
                if vd is not None and v is not None:
                    v = vd(v)
                recs.append(ConsumerRecord(tp.topic, tp.partition, m.offset(), m.timestamp()[1], k, v,
                                           list(m.headers() or [])))
            res[tp] = recs
        return res

    @staticmethod
    def _batch(tp, ms) -> RecordBatch:
        n = len(ms)
        vals = [m.value() for m in ms]
        lens = np.fromiter((len(v) if v is not None else -1 for v in vals), np.int64, n)
        starts = np.zeros(n, np.int64)
        if n:
            np.cumsum(np.maximum(lens, 0)[:-1], out=starts[1:])
        data = np.frombuffer(b"".join(v for v in vals if v is not None), np.uint8).copy()
        offsets = np.fromiter((m.offset() for m in ms), np.int64, n)
        stamps = np.fromiter((m.timestamp()[1] for m in ms), np.int64, n)
        return RecordBatch(tp.topic, tp.partition, offsets, stamps, data, starts, lens)

    def _poll(self, timeout_ms, max_records, batch: bool) -> dict:
        self._check_open("poll")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise ValueError(f"timeout_ms must be a number >= 0: timeout_ms={timeout_ms!r}")
        n = max_records if max_records is not None else self.max_poll_records
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_records must be an int >= 1: max_records={max_records!r}")
        if self._auto_commit and time.monotonic() >= self._next_commit:
            self._next_commit = time.monotonic() + self._commit_every
            try:
                self._commit_positions(self._assignment(), asynchronous=True)
            except ShmbusError:
                pass  # the next interval, the revoke or the close commits again
        try:
            msgs = self._c.consume(n, 0)
            if not msgs and timeout_ms > 0:
                m = self._c.poll(timeout_ms / 1000.0)
                if m is not None:
                    msgs = [m] + (self._c.consume(n - 1, 0) if n > 1 else [])
        except self._ck.KafkaException as e:
            raise kafka_error(e, "poll") from None
        except RuntimeError as e:
            raise ShmbusError(f"poll: {e}") from None
        return self._deliver(msgs, batch)

    @one_thread
    def poll(self, timeout_ms=0, max_records=None, update_offsets=True) -> dict:
        """{TopicPartition: [ConsumerRecord, ...]}; waits up to ``timeout_ms`` for the first record."""
        return self._poll(timeout_ms, max_records, False)

    @one_thread
    def poll_batch(self, timeout_ms=0, max_records=None) -> dict:
        """{TopicPartition: RecordBatch}: numpy arrays built from the fetched records."""
        return self._poll(timeout_ms, max_records, True)

    # --- lifecycle ---
    @one_thread
    def close(self, autocommit=True) -> None:
        if self._closed:
            return
        if self.group_id is not None and not (self._auto_commit and autocommit):
            self._auto_commit = False  # (no commit at the revoke of close either)
        try:
            if self._auto_commit:
                try:
                    self._commit_positions(self._assignment(), asynchronous=False)
                except ShmbusError:
                    pass
            self._c.close()  # leaves the group (on_partitions_revoked is called)
        finally:
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ClusterConsumer"]
