"""Produce and InitProducerId: a Kafka client's producer writes into the bus.

Produce (v3 and later: RecordBatch v2 only). Each partition's batches are
checked whole (``shmbus/kafka/batches.py``: framing, CRC-32C, codec, every
record) before anything is written; then each batch goes into the
partition's ring in one claim (``shmbus/kernels/kafka_in.py``), so it gets
consecutive offsets from the answered base offset and readers see it whole
or not at all. Every record keeps its key, value, headers and timestamp
(CreateTime: the batch's first timestamp plus the record's delta; a negative
one, from a client that sends none, becomes the time the listener got it).

``acks``: 0, no answer (the client learns nothing, as with Kafka); 1 and -1
(``all``) the same: the answer is sent once the records are in the ring,
which is when they are visible to every reader and survive the death of any
process, the listener's included (the supervisor spills them to disk). There
are no replicas to wait for. Other values: INVALID_REQUIRED_ACKS.

Per partition, the error codes:

- UNKNOWN_TOPIC_OR_PARTITION: no such partition, or the topic was deleted
  while the request ran. An unknown topic is created first when
  auto-creation is on (``auto.create.topics.enable``, on by default, with
  the listener's default partition count);
- INVALID_TOPIC_EXCEPTION: a name that cannot be a topic;
- MESSAGE_TOO_LARGE: a record whose key + value + headers exceed the topic's
  ``max.message.bytes``, or a batch whose frames take more than a quarter of
  the ring (a lone record: more than half); nothing of the batch is written;
- CORRUPT_MESSAGE, UNSUPPORTED_FOR_MESSAGE_FORMAT, UNSUPPORTED_COMPRESSION_TYPE:
  see ``batches.py``;
- INVALID_REQUEST: a transactional or control batch, or a request with a
  ``transactional_id``: the bus has no transactions;
- REQUEST_TIMED_OUT: the ring stayed full for the request's ``timeout_ms``
  (the supervisor's spiller is asked to make room and the handler waits,
  sleeping, until then);
- idempotence: OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID,
  INVALID_PRODUCER_EPOCH (below).

Idempotent producers (``enable.idempotence``). InitProducerId hands out a
producer id, unique across restarts of the listener (the start time in ms,
shifted left 20 bits, plus a counter), with epoch 0; a ``transactional_id``
is answered INVALID_REQUEST. Per (producer id, topic, partition) the listener
keeps the sequence numbers of the last 5 batches written, as Kafka does: a
batch whose first and last sequence equal one of them is a client's retry of
a batch already written, answered NONE with that batch's base offset and not
written again; a batch that does not continue the last sequence is refused
with OUT_OF_ORDER_SEQUENCE_NUMBER; a producer id the partition has not seen
must start at sequence 0, else UNKNOWN_PRODUCER_ID (librdkafka then asks for
a new producer id and goes on); an older epoch than the partition's last is
INVALID_PRODUCER_EPOCH. The state is in the listener's memory (the most
recently used 100,000 producer-partitions): it does not survive a restart of
the supervisor, so a retry that crosses a restart may be written twice.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref

from kafka.protocol.producer import (
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)

from shmbus.errors import InvalidTopicError, ShmbusError
from shmbus.kafka.batches import BatchError, parse_batches
from shmbus.kafka.handlers import errors as E
from shmbus.kafka.registry import handles
from shmbus.kernels import kafka_in as K
from shmbus.layout import frame as F

MAX_BATCH_DECOMPRESSED = 100 * 1024 * 1024  # the most a batch's records may decompress to
RECENT_BATCHES = 5  # Kafka's: sequence numbers of this many batches per producer and partition
MAX_PRODUCER_STATES = 100_000
_BACKOFF_MIN_S = 0.0005
_BACKOFF_MAX_S = 0.01


class _SeqState:
    """One producer's sequence state on one partition (guarded by ``lock``)."""

    __slots__ = ("lock", "epoch", "last_seq", "recent")

    def __init__(self):
        self.lock = threading.Lock()
        self.epoch = None  # None: nothing written by this producer here yet
        self.last_seq = -1
        self.recent = collections.deque(maxlen=RECENT_BATCHES)  # (first seq, last seq, base offset)


class ProducerStates:
    """The listener's idempotent producers: ids handed out, sequence state per partition."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seed = (time.time_ns() // 1_000_000) << 20
        self._issued = 0
        self._states: collections.OrderedDict = collections.OrderedDict()

    def new_id(self) -> int:
        with self._lock:
            self._issued += 1
            return self._seed + self._issued

    def state(self, key) -> _SeqState:
        with self._lock:
            s = self._states.get(key)
            if s is None:
                s = self._states[key] = _SeqState()
                if len(self._states) > MAX_PRODUCER_STATES:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key)
            return s


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def producer_states(broker) -> ProducerStates:
    with _STATES_LOCK:
        s = _STATES.get(broker)
        if s is None:
            s = _STATES[broker] = ProducerStates()
        return s


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@handles(InitProducerIdRequest, InitProducerIdResponse, 0, 4)
def init_producer_id(session, req):
    if req.transactional_id is not None:
        return InitProducerIdResponse(throttle_time_ms=0, error_code=E.INVALID_REQUEST, producer_id=-1,
                                      producer_epoch=-1)
    pid = producer_states(session.broker).new_id()
    return InitProducerIdResponse(throttle_time_ms=0, error_code=E.NONE, producer_id=pid, producer_epoch=0)


# Versions 0..2 (message sets before RecordBatch v2) are offered but not served, as Kafka 4 does:
# librdkafka needs them in ApiVersions to detect RecordBatch v2 support (KAFKA-18659); a
# request at those versions does not decode with the v3+ schema, which closes the connection.
@handles(ProduceRequest, ProduceResponse, 0, 12)
def produce(session, req):
    b = session.broker
    T = ProduceResponse.TopicProduceResponse
    P = T.PartitionProduceResponse
    deadline = time.monotonic() + max(req.timeout_ms, 0) / 1000.0
    refuse = None
    if req.acks not in (0, 1, -1):
        refuse = (E.INVALID_REQUIRED_ACKS, f"acks must be 0, 1 or -1 (all): acks={req.acks}")
    elif req.transactional_id is not None:
        refuse = (E.INVALID_REQUEST, "transactions are not supported: the bus has no transactions "
                                     "(leave transactional.id unset)")
    responses = []
    for topic in req.topic_data:
        parts = []
        meta = None
        topic_error = refuse
        if topic_error is None:
            topic_error, meta = _topic(b, topic.name)
        for pd in topic.partition_data:
            if topic_error is not None:
                code, message = topic_error
                base = -1
            else:
                code, base, message = _produce_partition(b, meta, pd.index, pd.records, deadline)
            if code != E.NONE and code != E.UNKNOWN_TOPIC_OR_PARTITION:
                b.log(f"kafka listener: produce to topic={topic.name!r} partition={pd.index} refused "
                      f"(error {code}) from {session}: {message}")
            parts.append(P(index=pd.index, error_code=code, base_offset=base, log_append_time_ms=-1,
                           log_start_offset=-1, record_errors=[], error_message=message if code else None))
        responses.append(T(name=topic.name, partition_responses=parts))
    if req.acks == 0:
        return None
    return ProduceResponse(responses=responses, throttle_time_ms=0)


def _topic(b, name):
    """(None, meta), or ((error code, message), None)."""
    try:
        meta = b.topic(name, create=True)
    except InvalidTopicError as e:
        return (E.INVALID_TOPIC_EXCEPTION, str(e)), None
    if meta is None:
        return (E.UNKNOWN_TOPIC_OR_PARTITION, f"no such topic: {name!r}"), None
    return None, meta


def _produce_partition(b, meta, p, records, deadline):
    """(error code, base offset, message) for one partition's records."""
    if not 0 <= p < meta.partitions:
        return E.UNKNOWN_TOPIC_OR_PARTITION, -1, f"no such partition: {meta.name!r} has {meta.partitions}"
    try:
        ring = b.ring(meta, p)
    except ShmbusError as e:
        return E.UNKNOWN_TOPIC_OR_PARTITION, -1, str(e)
    except FileNotFoundError:
        return E.UNKNOWN_TOPIC_OR_PARTITION, -1, f"topic {meta.name!r} was deleted"
    try:
        batches = parse_batches(records, ring.max_message_bytes(), MAX_BATCH_DECOMPRESSED)
        base = -1
        for batch in batches:
            if batch.producer_id >= 0:
                off = _append_idempotent(b, meta, p, ring, batch, deadline)
            else:
                off = _append(b, meta, ring, batch, deadline)
            if base < 0:
                base = off
    except (BatchError, _Refused) as e:
        return e.code, -1, str(e)
    return E.NONE, base, None


def _append_idempotent(b, meta, p, ring, batch, deadline) -> int:
    s = producer_states(b).state((batch.producer_id, meta.id, p))
    first, last, epoch = batch.base_sequence, batch.last_sequence, batch.producer_epoch
    with s.lock:
        if s.epoch is None:
            if first != 0:
                raise _Refused(E.UNKNOWN_PRODUCER_ID, f"producer id {batch.producer_id} is unknown on this "
                                                      f"partition and its batch starts at sequence {first}, not 0")
        elif epoch < s.epoch:
            raise _Refused(E.INVALID_PRODUCER_EPOCH, f"producer epoch {epoch} is older than this partition's "
                                                     f"{s.epoch} for producer id {batch.producer_id}")
        elif epoch > s.epoch:
            if first != 0:
                raise _Refused(E.OUT_OF_ORDER_SEQUENCE_NUMBER, f"a new producer epoch {epoch} starts at sequence "
                                                               f"{first}, not 0")
            s.recent.clear()
        else:
            for f, la, off in s.recent:
                if f == first and la == last:
                    return off  # a retry of a batch already written
            want = (s.last_seq + 1) & 0x7FFFFFFF
            if first != want:
                raise _Refused(E.OUT_OF_ORDER_SEQUENCE_NUMBER, f"batch sequence {first} where {want} comes next "
                                                               f"(producer id {batch.producer_id})")
        off = _append(b, meta, ring, batch, deadline)
        s.epoch = epoch
        s.last_seq = last
        s.recent.append((first, last, off))
        return off


def _append(b, meta, ring, batch, deadline) -> int:
    """Append one batch in one claim; its base offset. A full ring: wait (sleeping) up to the deadline."""
    now_ms = time.time_ns() // 1_000_000
    pid = os.getpid()
    ctl = b.bus.ctl
    sleep = _BACKOFF_MIN_S
    while True:
        r = K.append_records(ring.buf, batch.data, batch.hbuf, batch.table, batch.count, batch.first_timestamp,
                             now_ms, pid)
        if r >= 0:
            if r & 1:
                ctl.ring_doorbell()
            if r & 2:
                ctl.ring_spill_bell()
            c = b.counters
            c.produced_records += batch.count
            c.produced_bytes += batch.size
            return r >> 2
        if r == F.ST_DELETED:
            b.forget(meta.name)
            raise _Refused(E.UNKNOWN_TOPIC_OR_PARTITION, f"topic {meta.name!r} was deleted")
        if r == F.ST_OVER_MAX:
            raise _Refused(E.MESSAGE_TOO_LARGE, f"a record is larger than the topic's max.message.bytes="
                                                f"{ring.max_message_bytes()}")
        if r == F.ST_TOO_LARGE:
            raise _Refused(E.MESSAGE_TOO_LARGE, f"a batch of {batch.count} records takes more than "
                                                f"{'half' if batch.count == 1 else 'a quarter'} of the ring "
                                                f"(ring.bytes={ring.ring_bytes}): send smaller batches "
                                                f"(batch.size) or give the topic a larger ring.bytes")
        if r != F.ST_FULL and r != F.ST_STALLED:  # stalled: the claim was fenced, nothing written; again
            raise RuntimeError(f"append_records answered an unknown status {r}")
        if r == F.ST_FULL:
            ctl.ring_spill_bell()
        now = time.monotonic()
        if now >= deadline or b.closing.is_set():
            raise _Refused(E.REQUEST_TIMED_OUT, f"the ring of {meta.name!r} stayed full for the request's "
                                                f"timeout (is the supervisor's spiller keeping up? `shmbus status`)")
        time.sleep(min(sleep, deadline - now))
        sleep = min(sleep * 2, _BACKOFF_MAX_S)
