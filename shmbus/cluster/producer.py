"""``ClusterProducer``: the ``Producer`` API on a Kafka cluster (a librdkafka producer).

``send`` returns ``RecordMetadata``, so it waits for the record's delivery report: a round trip
to the partition leader per record (and, with the default ``acks="all"``, to its in-sync
replicas). That is what shared memory answers at once; on a cluster it is the slow path.
The fast paths: ``send_async`` (a future per record; ``flush`` waits for them all) and
``send_batch`` (every record handed to librdkafka, then one wait).

Keys go to partitions as on shared memory and in the Java client: librdkafka's
``murmur2_random`` partitioner (murmur2 of the key; a record without a key to a random
partition). The producer belongs to one process and may be shared by its threads.
"""

from __future__ import annotations

import numbers
import threading
import time
from concurrent.futures import Future

import numpy as np

from shmbus.client.producer import check_timestamp
from shmbus.cluster.errors import kafka_error
from shmbus.cluster.librdkafka import load_confluent
from shmbus.cluster.options import PRODUCER_NAMES, UNSET, check_int, kafka_options, warn_shm_only
from shmbus.core.headers import as_bytes as bytes_like
from shmbus.errors import (
    BufferFullError,
    InvalidConfigError,
    InvalidRecordError,
    RecordTooLargeError,
    ShmbusError,
)
from shmbus.records import BatchMetadata, RecordMetadata

_KAFKA_ACKS = {"all": "all", -1: "all", "-1": "all", 1: "1", "1": "1", 0: "0", "0": "0"}


def as_bytes(x, what: str) -> bytes | None:
    """``x`` as bytes (None stays None): the shared-memory producer's rules and messages."""
    return None if x is None else bytes_like(x, what)


def check_headers(headers) -> list | None:
    if not headers:
        return None
    if isinstance(headers, (str, bytes)) or not hasattr(headers, "__iter__"):
        raise TypeError(f"headers must be a list of (str, bytes) pairs: got {type(headers).__name__}")
    out = []
    for h in headers:
        if not isinstance(h, (tuple, list)) or len(h) != 2 or not isinstance(h[0], str):
            raise TypeError(f"headers must be a list of (str, bytes) pairs: got item {h!r}")
        try:
            kb = h[0].encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecordError(f"a header name must be valid Unicode: name={h[0]!r}") from None
        if len(kb) > 65535:
            raise InvalidRecordError(f"a header name is at most 65535 bytes of UTF-8: bytes={len(kb)}")
        out.append((h[0], as_bytes(h[1], "header value")))
    return out


class ClusterProducer:
    """Sends records to topics of a Kafka cluster (docs/api.md, docs/backends.md).

    ``acks``: ``"all"`` (default), ``1`` or ``0`` as Kafka's; ``"memory"`` is taken as ``"all"``
    (acknowledged when every in-sync replica has it), ``"disk"`` too, with a warning (Kafka
    acknowledges replicated records, not fsynced ones). ``max_block_ms``: how long ``send``
    waits for room in librdkafka's queue. ``kafka``: librdkafka producer properties.
    """

    def __init__(self, bus, *, acks=UNSET, max_block_ms: int = 60000, key_serializer=None, value_serializer=None,
                 kafka=None):
        self._ckm = load_confluent()
        kafka = kafka_options(kafka, PRODUCER_NAMES, "producer()")
        if acks is UNSET or acks == "memory":
            kacks = "all"
        elif acks == "disk":
            warn_shm_only("acks", acks, "Kafka acknowledges a record once every in-sync replica has it, not once "
                                        "it is fsynced; acks='all' is used")
            kacks = "all"
        elif acks in _KAFKA_ACKS and not isinstance(acks, bool):
            kacks = _KAFKA_ACKS[acks]
        else:
            raise InvalidConfigError(f"acks must be 'all', 1 or 0 on a Kafka cluster (or 'memory'/'disk', taken as "
                                     f"'all'): acks={acks!r}")
        check_int("max_block_ms", max_block_ms, 0)
        for name, f in (("key_serializer", key_serializer), ("value_serializer", value_serializer)):
            if f is not None and not callable(f):
                raise InvalidConfigError(f"{name} must be callable: {name}={f!r}")
        self._bus = bus
        self.acks = acks if acks is not UNSET else "all"
        self.max_block_ms = max_block_ms
        self._key_ser = key_serializer
        self._value_ser = value_serializer
        self._counts: dict[str, int] = {}
        self._closed = False
        self._lock = threading.Lock()
        conf = bus.client_config({"partitioner": "murmur2_random", "acks": kacks, **kafka})
        try:
            self._p = self._ckm.Producer(conf)
        except self._ckm.KafkaException as e:
            raise kafka_error(e, "bad kafka options for the producer") from None

    # --- topics ---
    def _partitions(self, topic: str) -> int:
        n = self._counts.get(topic)
        if n is None:
            self._bus.validate_name(topic)
            n = self._counts[topic] = self._bus.partition_count(topic)  # UnknownTopicError
        return n

    def partitions_for(self, topic: str) -> set[int]:
        self._counts.pop(topic, None)
        return set(range(self._partitions(topic)))

    # --- sending ---
    def _prepare(self, topic, value, key, headers, partition, timestamp_ms):
        if self._closed:
            raise ShmbusError("send on a closed producer (make a new one)")
        if self._value_ser is not None:
            value = self._value_ser(value)
        if self._key_ser is not None and key is not None:
            key = self._key_ser(key)
        value = as_bytes(value, "value")
        key = as_bytes(key, "key")
        p = self._partition(topic, partition)
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(timestamp_ms)
        return value, key, check_headers(headers), p, ts

    def _partition(self, topic, partition) -> int:
        """The partition to produce to: ``partition`` checked, or -1 for librdkafka's partitioner."""
        n = self._partitions(topic)
        if partition is None:
            return -1
        if isinstance(partition, bool) or not isinstance(partition, numbers.Integral):
            raise TypeError(f"partition must be an int: partition={partition!r}")
        p = int(partition)
        if not 0 <= p < n:
            raise ValueError(f"partition out of range: topic={topic!r} partition={p} "
                             f"(it has {n} partitions: 0..{n - 1})")
        return p

    def _produce(self, topic, value, key, hdrs, p, ts, on_delivery) -> None:
        deadline = None
        while True:
            try:
                kw = {"headers": hdrs} if hdrs else {}
                self._p.produce(topic, value, key, partition=p, timestamp=ts, on_delivery=on_delivery, **kw)
                return
            except BufferError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.max_block_ms / 1000.0
                if now >= deadline:
                    raise BufferFullError(f"librdkafka's queue stayed full for max_block_ms={self.max_block_ms}: "
                                          f"topic={topic!r} (is the cluster up? raise the producer's "
                                          f"kafka={{'queue.buffering.max.messages': ...}})") from None
                self._p.poll(0.05)
            except self._ckm.KafkaException as e:
                err = kafka_error(e, f"send: topic={topic!r}")
                if isinstance(err, RecordTooLargeError):
                    size = (len(value) if value else 0) + (len(key) if key else 0)
                    err = RecordTooLargeError(f"{err} bytes={size}")
                raise err from None

    @staticmethod
    def _report(topic, ts, on_done):
        def report(err, msg):
            if err is not None:
                on_done(None, kafka_error(err, f"send: topic={topic!r}"))
            else:
                # the timestamp sent (a LogAppendTime topic's records carry the broker's: read them to see it)
                on_done(RecordMetadata(msg.topic(), msg.partition(), msg.offset(), ts), None)

        return report

    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None) -> RecordMetadata:
        """One record; returns its ``RecordMetadata`` once the cluster acknowledged it (a round trip)."""
        fut = self.send_async(topic, value, key, headers, partition, timestamp_ms)
        while not fut.done():
            self._p.poll(0.1)
        return fut.result()

    def send_async(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None) -> Future:
        """One record handed to librdkafka; a ``Future`` of its ``RecordMetadata`` (or of the error).

        Errors found before sending (a bad argument, an unknown topic, a record over the
        producer's ``message.max.bytes``) raise here; the cluster's answer comes in the future,
        once ``flush`` (or a later ``send``) served the delivery reports.
        """
        value, key, hdrs, p, ts = self._prepare(topic, value, key, headers, partition, timestamp_ms)
        fut: Future = Future()

        def done(md, err):
            fut.set_exception(err) if err is not None else fut.set_result(md)

        self._produce(topic, value, key, hdrs, p, ts, self._report(topic, ts, done))
        self._p.poll(0)
        return fut

    def send_batch(self, topic, values, keys=None, partition=None) -> BatchMetadata:
        """Many records, one wait: every record is handed to librdkafka, then its delivery reports awaited."""
        if self._closed:
            raise ShmbusError("send_batch on a closed producer (make a new one)")
        if isinstance(values, np.ndarray):
            if values.ndim != 2 or values.dtype != np.uint8:
                raise TypeError(f"values as an array must be 2-D uint8: ndim={values.ndim} dtype={values.dtype}")
            vals = [row.tobytes() for row in values]
        else:
            vals = [self._value_ser(v) for v in values] if self._value_ser is not None else list(values)
            vals = [as_bytes(v, "value") for v in vals]
        n = len(vals)
        if keys is None:
            ks = [None] * n
        else:
            ks = [self._key_ser(k) if k is not None else None for k in keys] if self._key_ser is not None \
                else list(keys)
            ks = [as_bytes(k, "key") for k in ks]
            if len(ks) != n:
                raise ValueError(f"keys and values differ in length: keys={len(ks)} values={n}")
        limit = int(self._bus.kafka.get("message.max.bytes", 1000000))
        sizes = [(len(v) if v else 0) + (len(k) if k else 0) for v, k in zip(vals, ks)]
        if n and max(sizes) > limit:
            i = int(np.argmax(sizes))
            raise RecordTooLargeError(f"record too large: index={i} bytes={sizes[i]} message.max.bytes={limit} "
                                      f"topic={topic!r} (nothing of the batch was sent)")
        parts = np.full(n, -1, np.int64)
        offsets = np.full(n, -1, np.int64)
        errors: list = []
        left = [n]
        if n == 0:
            self._partition(topic, partition)
            return BatchMetadata(topic, parts, offsets)
        ts = time.time_ns() // 1_000_000
        p0 = self._partition(topic, partition)

        def on(i):
            def report(err, msg):
                left[0] -= 1
                if err is not None:
                    errors.append((i, err))
                else:
                    parts[i] = msg.partition()
                    offsets[i] = msg.offset()

            return report

        sent = 0
        try:
            for i in range(n):
                self._produce(topic, vals[i], ks[i], None, p0, ts, on(i))
                sent += 1
        finally:
            left[0] -= n - sent
            while left[0] > 0:
                self._p.poll(0.1)
        if errors:
            i, err = min(errors, key=lambda e: e[0])
            raise kafka_error(err, f"send_batch: topic={topic!r} index={i} ({len(errors)} of {n} records failed; "
                                   f"the others were sent)")
        return BatchMetadata(topic, parts, offsets)

    def flush(self, timeout=None) -> None:
        """Wait until every record sent is acknowledged (or failed: see its future); ``timeout`` in seconds."""
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise BufferFullError(f"flush: {left} records not yet acknowledged after timeout={timeout}s "
                                  f"(is the cluster up?)")

    def close(self, timeout=None) -> None:
        """Flush, then close."""
        if self._closed:
            return
        self._closed = True
        self._p.flush(-1 if timeout is None else timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ClusterProducer"]
