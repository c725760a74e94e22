"""The public API in one process, as a kafka-python user expects it (API.md).

Most tests share one bus (and its supervisor) per module, each on topics of
its own (``make_topic``), because starting a supervisor costs ~2 s; tests
that stop the supervisor, count the bus's shared-memory objects or need a
second bus take the per-test ``bus`` fixture instead.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid

import numpy as np
import pytest

from helpers.bus import cleanup_bus

from shmbus import (
    BatchMetadata,
    Bus,
    Consumer,
    ConsumerRecord,
    InvalidConfigError,
    InvalidTopicError,
    OffsetAndTimestamp,
    OffsetOutOfRangeError,
    Producer,
    RecordBatch,
    RecordMetadata,
    RecordTooLargeError,
    ShmbusError,
    TopicExistsError,
    TopicPartition,
    UnknownTopicError,
)
from shmbus.core.partitioner import partition_for_key
from shmbus.client import control as client

TP = TopicPartition


# --- fixtures and helpers ------------------------------------------------------

@pytest.fixture(scope="module")
def sbus(tmp_path_factory):
    """One bus with a supervisor for the module's tests (each makes its own topics)."""
    d = str(tmp_path_factory.mktemp("api") / "bus")
    try:
        b = Bus(d)
        try:
            yield b
        finally:
            b.close()
    finally:
        cleanup_bus(d)


@pytest.fixture
def make_topic(sbus):
    """make_topic(partitions=1, config=None) -> a new topic's name on the shared bus; deleted afterwards."""
    made = []

    def make(partitions=1, config=None):
        name = f"t-{uuid.uuid4().hex[:12]}"
        sbus.create_topic(name, partitions, config)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            try:
                sbus.delete_topic(name)
            except UnknownTopicError:
                pass


@pytest.fixture
def producer(sbus):
    with sbus.producer() as p:
        yield p


def wait_until(cond, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s} s")
        time.sleep(0.01)


def read_n(consumer, n: int, timeout_s: float = 30.0, **poll_kw) -> list:
    """Poll until ``n`` records came (or the timeout); records of each partition in order."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=100, **poll_kw).values():
            out.extend(recs)
    return out


def read_all(bus, topic, n, **kw) -> list:
    with bus.consumer(topic, auto_offset_reset="earliest", **kw) as c:
        recs = read_n(c, n)
        assert c.poll(timeout_ms=0) == {}  # nothing more than expected
    return sorted(recs, key=lambda r: (r.partition, r.offset))


def end_offsets(bus, topic) -> list:
    return [p.end_offset for p in bus.describe_topic(topic).partitions]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ring_of(bus, topic, partition=0):
    return bus.ring(bus.topic_meta(topic), partition)


def wait_spilled(bus, topic, partition=0):
    """Until the segment files hold everything published (the ring keeps recent records too)."""
    import os

    from shmbus.log.files import list_segments
    from shmbus.log.reader import PartitionLog

    ring = ring_of(bus, topic, partition)
    pdir = os.path.join(bus.data_dir, "topics", topic, str(partition))

    def on_disk():
        segs = list_segments(pdir)
        if not segs:
            return False
        log = PartitionLog(pdir)
        try:
            return log.end_of_segment(segs[-1]) >= ring.next_offset()
        finally:
            log.close()

    wait_until(on_disk, f"{topic}/{partition} to spill")


# --- Producer.send ----------------------------------------------------------------

def test_send_returns_record_metadata(sbus, make_topic, producer):
    t = make_topic(3)
    before = now_ms()
    mds = [producer.send(t, b"v%d" % i, partition=2) for i in range(3)]
    after = now_ms()
    assert all(isinstance(md, RecordMetadata) for md in mds)
    assert [(md.topic, md.partition, md.offset) for md in mds] == [(t, 2, 0), (t, 2, 1), (t, 2, 2)]
    assert all(before <= md.timestamp_ms <= after for md in mds)
    recs = read_all(sbus, t, 3)
    assert [(r.partition, r.offset, r.timestamp, r.value) for r in recs] == [
        (2, md.offset, md.timestamp_ms, b"v%d" % i) for i, md in enumerate(mds)]
    assert all(isinstance(r, ConsumerRecord) and r.topic == t for r in recs)
    assert end_offsets(sbus, t) == [0, 0, 3]


def test_send_keeps_an_explicit_timestamp(sbus, make_topic, producer):
    t = make_topic()
    md = producer.send(t, b"old", timestamp_ms=1_000)
    md2 = producer.send(t, b"future", timestamp_ms=4_102_444_800_000)
    assert (md.timestamp_ms, md2.timestamp_ms) == (1_000, 4_102_444_800_000)
    assert [r.timestamp for r in read_all(sbus, t, 2)] == [1_000, 4_102_444_800_000]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy", "numpy slice", "memoryview slice"])
def test_bytes_like_keys_and_values(sbus, make_topic, producer, kind):
    t = make_topic(2)
    raw_v = bytes(range(256)) * 3
    raw_k = b"the-key\x00\xff"

    def conv(b):
        return {
            "bytes": lambda: b,
            "bytearray": lambda: bytearray(b),
            "memoryview": lambda: memoryview(b),
            "numpy": lambda: np.frombuffer(b, np.uint8).copy(),
            "numpy slice": lambda: np.frombuffer(b"XX" + b + b"YY", np.uint8)[2:-2],
            "memoryview slice": lambda: memoryview(b"XX" + b + b"YY")[2:-2],
        }[kind]()

    md = producer.send(t, conv(raw_v), key=conv(raw_k))
    assert md.partition == partition_for_key(raw_k, 2)
    (r,) = read_all(sbus, t, 1)
    assert (r.key, r.value) == (raw_k, raw_v)
    assert type(r.key) is bytes and type(r.value) is bytes


def test_arrays_that_are_not_contiguous_uint8_are_refused(sbus, make_topic, producer):
    t = make_topic()
    with pytest.raises(TypeError):
        producer.send(t, np.arange(8, dtype=np.uint8)[::2])
    with pytest.raises(TypeError):
        producer.send(t, np.arange(8, dtype=np.int32))
    assert end_offsets(sbus, t) == [0]


def test_tombstone_reads_back_as_none(sbus, make_topic, producer):
    t = make_topic()
    producer.send(t, b"alive", key=b"k")
    producer.send(t, None, key=b"k")
    producer.send(t, b"", key=b"k")  # empty is not null
    assert [(r.key, r.value) for r in read_all(sbus, t, 3)] == [(b"k", b"alive"), (b"k", None), (b"k", b"")]


def test_headers_round_trip(sbus, make_topic, producer):
    t = make_topic()
    hs = [("a", b"1"), ("empty", b""), ("null", None), ("ключ", bytes(range(256))), ("a", b"dup")]
    producer.send(t, b"v", key=b"k", headers=hs)
    producer.send(t, None, key=b"k2", headers=[("only", b"x")])
    producer.send(t, b"no headers")
    producer.send(t, b"empty headers", headers=[])
    recs = read_all(sbus, t, 4)
    assert [r.headers for r in recs] == [hs, [("only", b"x")], [], []]
    assert [(r.key, r.value) for r in recs] == [(b"k", b"v"), (b"k2", None), (None, b"no headers"),
                                                (None, b"empty headers")]


def test_bad_headers_are_a_type_error(sbus, make_topic, producer):
    t = make_topic()
    with pytest.raises(TypeError):
        producer.send(t, b"v", headers=[(b"bytes key", b"v")])
    with pytest.raises(TypeError):
        producer.send(t, b"v", headers=[("k", "str value")])
    with pytest.raises(TypeError):
        producer.send(t, b"v", headers=["not a pair"])
    assert end_offsets(sbus, t) == [0]


def test_serializers_and_deserializers(sbus, make_topic):
    t = make_topic(2)
    with sbus.producer(key_serializer=lambda k: k.encode(), value_serializer=lambda v: json.dumps(v).encode()) as p:
        md = p.send(t, {"x": [1, 2]}, key="user-1")
        p.send(t, [3], partition=0)
        p.send_batch(t, [{"b": 1}, {"b": 2}], keys=["user-1", "user-1"])
    assert md.partition == partition_for_key(b"user-1", 2)
    with sbus.consumer(t, auto_offset_reset="earliest", key_deserializer=lambda b: b.decode(),
                       value_deserializer=json.loads) as c:
        recs = sorted(read_n(c, 4), key=lambda r: (r.partition, r.offset))
    got = {(r.key, json.dumps(r.value)) for r in recs}
    assert got == {("user-1", '{"x": [1, 2]}'), (None, "[3]"), ("user-1", '{"b": 1}'), ("user-1", '{"b": 2}')}
    by_key = [r.value for r in recs if r.key == "user-1"]
    assert by_key == [{"x": [1, 2]}, {"b": 1}, {"b": 2}]  # one partition, in order


def test_str_or_int_value_without_serializer_is_a_type_error(sbus, make_topic, producer):
    t = make_topic()
    for bad in ("a str", 42, 1.5, ["list"]):
        with pytest.raises(TypeError):
            producer.send(t, bad)
    with pytest.raises(TypeError):
        producer.send(t, b"v", key="str key")
    with pytest.raises(TypeError):
        producer.send_batch(t, ["str"])
    assert end_offsets(sbus, t) == [0]


def test_record_too_large_writes_nothing(sbus, make_topic, producer):
    t = make_topic(config={"max.message.bytes": 1000})
    producer.send(t, b"x" * 1000)  # exactly the limit
    producer.send(t, b"x" * 600, key=b"k" * 400)
    for kw in ({"value": b"x" * 1001}, {"value": b"x" * 600, "key": b"k" * 401},
               {"value": b"x" * 990, "headers": [("h", b"0123456789")]}):
        with pytest.raises(RecordTooLargeError, match="max.message.bytes"):
            producer.send(t, **kw)
    with pytest.raises(RecordTooLargeError):
        producer.send_batch(t, [b"ok", b"y" * 1001, b"ok"])
    assert end_offsets(sbus, t) == [2]
    assert [len(r.value) for r in read_all(sbus, t, 2)] == [1000, 600]


def test_record_too_large_for_the_ring(sbus, make_topic, producer):
    t = make_topic(config={"ring.bytes": 4096})
    with pytest.raises(RecordTooLargeError, match="ring"):
        producer.send(t, b"x" * 3000)
    with pytest.raises(RecordTooLargeError):
        producer.send_batch(t, [b"x" * 3000])
    assert end_offsets(sbus, t) == [0]
    producer.send(t, b"x" * 2000)  # under half the ring
    assert end_offsets(sbus, t) == [1]


def test_partition_out_of_range(sbus, make_topic, producer):
    t = make_topic(3)
    for bad in (3, -1, 100, np.int64(3)):
        with pytest.raises(ValueError, match="partition"):
            producer.send(t, b"v", partition=bad)
        with pytest.raises(ValueError, match="partition"):
            producer.send_batch(t, [b"v"], partition=bad)
    for bad in (True, "1", 1.0):
        with pytest.raises(TypeError, match="partition"):
            producer.send(t, b"v", partition=bad)
        with pytest.raises((TypeError, ValueError), match="partition"):  # TypeError: see below
            producer.send_batch(t, [b"v"], partition=bad)
    assert end_offsets(sbus, t) == [0, 0, 0]


def test_partition_as_a_numpy_integer(sbus, make_topic, producer):
    t = make_topic(3)
    assert producer.send(t, b"v", partition=np.int64(1)).partition == 1
    assert producer.send(t, b"v", partition=np.uint8(2)).partition == 2


def test_send_batch_partition_as_a_numpy_integer(sbus, make_topic, producer):
    t = make_topic(3)
    with pytest.raises(TypeError, match="partition"):
        producer.send_batch(t, [b"v"], partition=True)
    md = producer.send_batch(t, [b"a", b"b"], partition=np.int64(1))
    assert md.partitions.tolist() == [1, 1]


def test_unkeyed_records_spread_over_partitions(sbus, make_topic, producer):
    t = make_topic(4)
    parts = [producer.send(t, b"v").partition for _ in range(40)]
    counts = np.bincount(parts, minlength=4)
    assert counts.max() - counts.min() <= 1
    md = producer.send_batch(t, [b"w"] * 400)
    counts = np.bincount(md.partitions, minlength=4)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1
    assert sum(end_offsets(sbus, t)) == 440


def test_keyed_records_use_partition_for_key(sbus, make_topic, producer):
    t = make_topic(5)
    keys = [b"key-%d" % i for i in range(50)]
    for k in keys:
        md = producer.send(t, b"v", key=k)
        assert md.partition == partition_for_key(k, 5)
    again = [producer.send(t, b"v", key=k).partition for k in keys]
    assert again == [partition_for_key(k, 5) for k in keys]
    assert len(set(again)) > 1


def test_producer_and_consumer_made_directly(sbus, make_topic):
    t = make_topic()
    with Producer(sbus.data_dir) as p:
        assert p.send(t, b"direct").offset == 0
    with Consumer(t, data_dir=sbus.data_dir, auto_offset_reset="earliest") as c:
        assert [r.value for r in read_n(c, 1)] == [b"direct"]
    with pytest.raises(InvalidConfigError, match="acks"):
        Producer(sbus.data_dir, acks="all")
    with pytest.raises(InvalidConfigError, match="max_block_ms"):
        Producer(sbus.data_dir, max_block_ms=-1)
    with pytest.raises(InvalidConfigError, match="value_serializer"):
        Producer(sbus.data_dir, value_serializer="json")
    with pytest.raises(InvalidConfigError, match="max_poll_records"):
        Consumer(t, data_dir=sbus.data_dir, max_poll_records=0)
    with pytest.raises(InvalidConfigError, match="partition_assignment_strategy"):
        Consumer(t, data_dir=sbus.data_dir, partition_assignment_strategy="random")


def test_altered_max_message_bytes_applies_to_an_open_producer(sbus, make_topic, producer):
    t = make_topic()
    producer.send(t, b"x" * 100)
    sbus.alter_topic_config(t, {"max.message.bytes": 10})
    with pytest.raises(RecordTooLargeError):
        producer.send(t, b"y" * 11)
    assert end_offsets(sbus, t) == [1]


def test_send_to_an_invalid_topic_name(sbus, make_topic, producer):
    t = make_topic()
    for bad in ("a/b", "x" * 300, f"../topics/{t}", f"./{t}"):
        with pytest.raises(InvalidTopicError):
            producer.send(bad, b"v")
        with pytest.raises(InvalidTopicError):
            producer.send_batch(bad, [b"v"])
    assert end_offsets(sbus, t) == [0]


def test_a_large_record_round_trips(sbus, make_topic, producer):
    t = make_topic(config={"max.message.bytes": 4 << 20})
    tp = TP(t, 0)
    big = bytes(range(256)) * (3 << 12)  # 3 MiB: more than the consumer's first value buffer
    producer.send(t, big, key=b"k", headers=[("h", b"v")])
    producer.send(t, b"small")
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        recs = read_n(c, 2)
        assert [(r.key, r.value, r.headers) for r in recs] == [(b"k", big, [("h", b"v")]), (None, b"small", [])]
        c.seek_to_beginning()
        vals = []
        deadline = time.monotonic() + 30
        while len(vals) < 2 and time.monotonic() < deadline:
            for b in c.poll_batch(timeout_ms=100).values():
                vals.extend(b.values())
        assert vals == [big, b"small"]
        assert c.position(tp) == 2


def test_producer_after_close_raises(sbus, make_topic):
    t = make_topic()
    p = sbus.producer()
    p.send(t, b"v")
    p.close()
    with pytest.raises(ShmbusError):
        p.send(t, b"w")


# --- Producer.send_batch -----------------------------------------------------------

def test_send_batch_list(sbus, make_topic, producer):
    t = make_topic(2)
    vals = [b"a", b"bb", b"", None, bytearray(b"e"), memoryview(b"ff"), np.frombuffer(b"ggg", np.uint8)]
    md = producer.send_batch(t, vals, partition=1)
    assert isinstance(md, BatchMetadata) and md.topic == t
    assert isinstance(md.partitions, np.ndarray) and isinstance(md.offsets, np.ndarray)
    assert md.partitions.tolist() == [1] * 7 and md.offsets.tolist() == list(range(7))
    md2 = producer.send_batch(t, [b"h"], partition=1)
    assert md2.offsets.tolist() == [7]
    recs = read_all(sbus, t, 8)
    assert [r.value for r in recs] == [b"a", b"bb", b"", None, b"e", b"ff", b"ggg", b"h"]
    assert all(r.partition == 1 for r in recs)


def test_send_batch_2d_array(sbus, make_topic, producer):
    t = make_topic(1)
    arr = (np.arange(100 * 16) % 251).astype(np.uint8).reshape(100, 16)
    md = producer.send_batch(t, arr)
    assert md.partitions.tolist() == [0] * 100 and md.offsets.tolist() == list(range(100))
    recs = read_all(sbus, t, 100)
    assert [r.value for r in recs] == [row.tobytes() for row in arr]
    # a Fortran-ordered array gives the same rows
    md = producer.send_batch(t, np.asfortranarray(arr[:3]))
    assert md.offsets.tolist() == [100, 101, 102]
    with pytest.raises(TypeError):
        producer.send_batch(t, np.zeros(8, np.uint8))  # 1-D
    with pytest.raises(TypeError):
        producer.send_batch(t, np.zeros((2, 2), np.int16))


def test_send_batch_with_keys(sbus, make_topic, producer):
    t = make_topic(3)
    keys = [b"k%d" % (i % 7) for i in range(60)]
    vals = [b"v%d" % i for i in range(60)]
    md = producer.send_batch(t, vals, keys=keys)
    assert md.partitions.tolist() == [partition_for_key(k, 3) for k in keys]
    for p in range(3):  # consecutive offsets per partition, in batch order
        assert md.offsets[md.partitions == p].tolist() == list(range(int((md.partitions == p).sum())))
    recs = read_all(sbus, t, 60)
    got = {(r.partition, r.offset): (r.key, r.value) for r in recs}
    assert got == {(int(p), int(o)): (k, v) for p, o, k, v in zip(md.partitions, md.offsets, keys, vals)}
    with pytest.raises(ValueError):
        producer.send_batch(t, vals, keys=keys[:-1])


def test_send_batch_empty(sbus, make_topic, producer):
    t = make_topic()
    md = producer.send_batch(t, [])
    assert len(md.offsets) == 0 and len(md.partitions) == 0
    assert end_offsets(sbus, t) == [0]


# --- Consumer: poll, poll_batch, iteration ----------------------------------------

def test_poll_max_records(sbus, make_topic, producer):
    t = make_topic()
    producer.send_batch(t, [b"%d" % i for i in range(30)])
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        got = c.poll(timeout_ms=1000, max_records=7)
        assert [r.offset for r in got[TP(t, 0)]] == list(range(7))
        got = c.poll(timeout_ms=1000, max_records=100)
        assert [r.offset for r in got[TP(t, 0)]] == list(range(7, 30))
    with sbus.consumer(t, auto_offset_reset="earliest", max_poll_records=10) as c:
        sizes = []
        while sum(sizes) < 30:
            sizes.append(sum(len(v) for v in c.poll(timeout_ms=1000).values()))
        assert max(sizes) <= 10 and sum(sizes) == 30


def test_poll_max_records_across_partitions(sbus, make_topic, producer):
    t = make_topic(3)
    for p in range(3):
        producer.send_batch(t, [b"x"] * 10, partition=p)
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        seen = 0
        while seen < 30:
            n = sum(len(v) for v in c.poll(timeout_ms=1000, max_records=4).values())
            assert 1 <= n <= 4
            seen += n


def test_poll_batch_arrays(sbus, make_topic, producer):
    t = make_topic()
    arr = np.arange(50 * 8, dtype=np.uint8).reshape(50, 8)
    producer.send_batch(t, arr)
    producer.send(t, b"odd one", timestamp_ms=123)
    producer.send(t, None, key=b"tomb")
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        got = c.poll_batch(timeout_ms=1000, max_records=50)
        (b,) = got.values()
        assert list(got) == [TP(t, 0)] and isinstance(b, RecordBatch) and len(b) == 50
        assert b.offsets.dtype == np.int64 and b.offsets.tolist() == list(range(50))
        assert b.timestamps.dtype == np.int64 and len(b.timestamps) == 50
        assert np.array_equal(b.values_array(), arr)
        assert b.values() == [row.tobytes() for row in arr]
        b2 = c.poll_batch(timeout_ms=1000)[TP(t, 0)]
        assert b2.offsets.tolist() == [50, 51]
        assert b2.timestamps[0] == 123
        assert b2.values() == [b"odd one", None]
        with pytest.raises(ValueError):
            b2.values_array()
        assert [(r.offset, r.value) for r in b2] == [(50, b"odd one"), (51, None)]
        assert c.position(TP(t, 0)) == 52
        assert c.poll_batch(timeout_ms=0) == {}


def test_poll_batch_max_records_across_partitions(sbus, make_topic, producer):
    t = make_topic(3)
    for p in range(3):
        producer.send_batch(t, [b"x"] * 10, partition=p)
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        got = c.poll_batch(timeout_ms=1000, max_records=5)
        assert 1 <= sum(len(b) for b in got.values()) <= 5


def test_iteration_stops_after_consumer_timeout(sbus, make_topic, producer):
    t = make_topic(2)
    for i in range(20):
        producer.send(t, b"%d" % i, key=b"%d" % i)
    with sbus.consumer(t, auto_offset_reset="earliest", consumer_timeout_ms=300) as c:
        recs = list(c)
    assert sorted(int(r.value) for r in recs) == list(range(20))
    for p in (0, 1):
        offs = [r.offset for r in recs if r.partition == p]
        assert offs == list(range(len(offs)))
    # an empty topic: the iterator just stops
    t2 = make_topic()
    with sbus.consumer(t2, consumer_timeout_ms=100) as c:
        assert list(c) == []


# --- Consumer: assignment -------------------------------------------------------------

def test_assign_subscribe_unsubscribe_assignment(sbus, make_topic, producer):
    a = make_topic(2)
    b = make_topic(3)
    producer.send(a, b"a0", partition=0)
    producer.send(a, b"a1", partition=1)
    producer.send(b, b"b2", partition=2)
    with sbus.consumer(auto_offset_reset="earliest") as c:
        assert c.assignment() == set()
        assert c.poll(timeout_ms=0) == {}
        c.assign([TP(a, 1), TP(b, 2)])
        assert c.assignment() == {TP(a, 1), TP(b, 2)}
        assert sorted(r.value for r in read_n(c, 2)) == [b"a1", b"b2"]
        c.subscribe([a, b])
        assert c.assignment() == {TP(a, 0), TP(a, 1), TP(b, 0), TP(b, 1), TP(b, 2)}
        assert c.subscription() == {a, b}
        c.unsubscribe()
        assert c.assignment() == set() and c.poll(timeout_ms=0) == {}
        c.subscribe(a)  # a single name, as kafka-python allows
        assert c.assignment() == {TP(a, 0), TP(a, 1)}
    with sbus.consumer(a, b) as c:
        assert c.assignment() == {TP(a, 0), TP(a, 1), TP(b, 0), TP(b, 1), TP(b, 2)}
    with sbus.consumer() as c:
        with pytest.raises(UnknownTopicError):
            c.assign([TP(a, 2)])  # no such partition


# --- Consumer: offsets -------------------------------------------------------------------

def test_seek_position_beginning_and_end_offsets(sbus, make_topic, producer):
    t = make_topic(2)
    producer.send_batch(t, [b"%d" % i for i in range(10)], partition=0)
    producer.send_batch(t, [b"x"] * 3, partition=1)
    tp0, tp1 = TP(t, 0), TP(t, 1)
    with sbus.consumer(auto_offset_reset="earliest") as c:
        assert c.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}  # also for partitions not assigned
        assert c.end_offsets([tp0, tp1]) == {tp0: 10, tp1: 3}
        c.assign([tp0])
        assert c.position(tp0) == 0
        c.seek(tp0, 6)
        assert c.position(tp0) == 6
        assert [r.value for r in c.poll(timeout_ms=1000)[tp0]] == [b"6", b"7", b"8", b"9"]
        assert c.position(tp0) == 10
        c.seek_to_beginning(tp0)
        assert c.position(tp0) == 0
        assert c.poll(timeout_ms=1000, max_records=1)[tp0][0].value == b"0"
        c.seek(tp0, 2)
        assert c.poll(timeout_ms=1000, max_records=1)[tp0][0].offset == 2
        c.seek_to_end(tp0)
        assert c.position(tp0) == 10 and c.poll(timeout_ms=0) == {}
        producer.send(t, b"10", partition=0)
        assert [r.value for r in c.poll(timeout_ms=1000)[tp0]] == [b"10"]
        c.seek_to_beginning()  # all assigned
        assert c.position(tp0) == 0
        with pytest.raises(ShmbusError):
            c.seek(tp1, 0)  # not assigned
        with pytest.raises(ValueError):
            c.seek(tp0, -1)


def test_offsets_for_times(sbus, make_topic, producer):
    t = make_topic()
    tp = TP(t, 0)
    for i, ts in enumerate([1000, 2000, 2000, 3000, 5000]):
        producer.send(t, b"%d" % i, timestamp_ms=ts)
    with sbus.consumer() as c:
        got = c.offsets_for_times({tp: 0})
        assert got == {tp: OffsetAndTimestamp(0, 1000)}
        assert c.offsets_for_times({tp: 1000})[tp] == (0, 1000)
        assert c.offsets_for_times({tp: 1001})[tp] == (1, 2000)
        assert c.offsets_for_times({tp: 2000})[tp] == (1, 2000)
        assert c.offsets_for_times({tp: 4999})[tp] == (4, 5000)
        assert c.offsets_for_times({tp: 5000})[tp] == (4, 5000)
        assert c.offsets_for_times({tp: 5001}) == {tp: None}  # past the last
        assert isinstance(got[tp], OffsetAndTimestamp) and got[tp].offset == 0 and got[tp].timestamp == 1000
        with pytest.raises(ValueError):
            c.offsets_for_times({tp: -1})


def test_pause_resume(sbus, make_topic, producer):
    t = make_topic(2)
    tp0, tp1 = TP(t, 0), TP(t, 1)
    producer.send(t, b"p0", partition=0)
    producer.send(t, b"p1", partition=1)
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        c.pause(tp0)
        assert c.paused() == {tp0}
        got = c.poll(timeout_ms=1000)
        assert list(got) == [tp1]
        assert c.poll(timeout_ms=50) == {}
        c.resume(tp0)
        assert c.paused() == set()
        assert [r.value for r in c.poll(timeout_ms=1000)[tp0]] == [b"p0"]
        c.pause(tp0, tp1)
        producer.send(t, b"later", partition=1)
        assert c.poll(timeout_ms=50) == {}
        c.resume(tp1)
        assert [r.value for r in c.poll(timeout_ms=1000)[tp1]] == [b"later"]


def test_auto_offset_reset_earliest_and_latest(sbus, make_topic, producer):
    t = make_topic()
    tp = TP(t, 0)
    producer.send_batch(t, [b"old"] * 5)
    with sbus.consumer(t, auto_offset_reset="earliest") as c:
        assert [r.offset for r in read_n(c, 5)] == [0, 1, 2, 3, 4]
    with sbus.consumer(t, auto_offset_reset="latest") as c:
        assert c.position(tp) == 5  # resolved now, as in Kafka
        producer.send(t, b"new")
        assert [(r.offset, r.value) for r in c.poll(timeout_ms=1000)[tp]] == [(5, b"new")]
    with sbus.consumer(t) as c:  # latest is the default
        assert c.poll(timeout_ms=50) == {}
        assert c.position(tp) == 6
    with pytest.raises(InvalidConfigError, match="auto_offset_reset"):
        sbus.consumer(t, auto_offset_reset="smallest")


def test_auto_offset_reset_none_without_a_position_raises(sbus, make_topic, producer):
    # Kafka raises NoOffsetForPartitionError here (an InvalidOffsetError, as OffsetOutOfRange is);
    # shmbus has no such class and raises OffsetOutOfRangeError.
    t = make_topic()
    tp = TP(t, 0)
    producer.send(t, b"v")
    with sbus.consumer(t, auto_offset_reset="none") as c:
        with pytest.raises(OffsetOutOfRangeError):
            c.poll(timeout_ms=0)
        with pytest.raises(OffsetOutOfRangeError):
            c.position(tp)
        c.seek(tp, 0)  # with a position it reads
        assert [r.value for r in c.poll(timeout_ms=1000)[tp]] == [b"v"]


@pytest.mark.parametrize("reset, expect", [("earliest", [0, 1, 2]), ("latest", []), ("none", OffsetOutOfRangeError)])
def test_seek_past_the_end(sbus, make_topic, producer, reset, expect):
    t = make_topic()
    tp = TP(t, 0)
    producer.send_batch(t, [b"a", b"b", b"c"])
    with sbus.consumer(auto_offset_reset=reset) as c:
        c.assign([tp])
        c.seek(tp, 3)  # the end itself is in range
        assert c.poll(timeout_ms=0) == {} and c.position(tp) == 3
        c.seek(tp, 50)
        if expect is OffsetOutOfRangeError:
            with pytest.raises(OffsetOutOfRangeError):
                c.poll(timeout_ms=0)
        else:
            got = c.poll(timeout_ms=200)
            assert [r.offset for r in got.get(tp, [])] == expect
            assert c.position(tp) == 3


# --- admin -------------------------------------------------------------------------------

def test_unknown_topic(sbus, producer):
    with pytest.raises(UnknownTopicError):
        producer.send("no-such-topic", b"v")
    with pytest.raises(UnknownTopicError):
        producer.send_batch("no-such-topic", [b"v"])
    with pytest.raises(UnknownTopicError):
        sbus.consumer("no-such-topic")
    with sbus.consumer() as c:
        with pytest.raises(UnknownTopicError):
            c.subscribe(["no-such-topic"])
        with pytest.raises(UnknownTopicError):
            c.assign([TP("no-such-topic", 0)])
        with pytest.raises(UnknownTopicError):
            c.end_offsets([TP("no-such-topic", 0)])
    with pytest.raises(UnknownTopicError):
        sbus.describe_topic("no-such-topic")
    with pytest.raises(UnknownTopicError):
        sbus.delete_topic("no-such-topic")
    with pytest.raises(UnknownTopicError):
        sbus.alter_topic_config("no-such-topic", {"retention.ms": 1})
    assert "no-such-topic" not in sbus.list_topics()


@pytest.mark.parametrize("partitions, config, key", [
    (1, {"retention.ms": "soon"}, "retention.ms"),
    (1, {"ring.bytes": 100000}, "ring.bytes"),
    (1, {"ring.bytes": 1024}, "ring.bytes"),
    (1, {"no.such.key": 1}, "no.such.key"),
    (1, {"cleanup.policy": "forever"}, "cleanup.policy"),
    (1, {"max.message.bytes": 0}, "max.message.bytes"),
    (1, {"segment.bytes": True}, "segment.bytes"),
    (0, None, "partitions"),
    (2, {"ring.bytes": 4096, "retention.bytes": -2}, "retention.bytes"),
])
def test_bad_config_names_the_key_and_creates_nothing(sbus, partitions, config, key):
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    shm_before = sbus.shared_memory_names()
    topics_before = sbus.list_topics()
    files_before = sorted(os.listdir(os.path.join(sbus.data_dir, "topics")))
    with pytest.raises(InvalidConfigError, match=key.replace(".", r"\.")):
        sbus.create_topic(name, partitions, config)
    assert sbus.list_topics() == topics_before
    assert sbus.shared_memory_names() == shm_before
    assert sorted(os.listdir(os.path.join(sbus.data_dir, "topics"))) == files_before
    sbus.create_topic(name, 1)  # the name is free
    sbus.delete_topic(name)


def test_create_topic_twice(sbus, make_topic, producer):
    t = make_topic(2, {"retention.ms": 1234})
    producer.send(t, b"keep")
    with pytest.raises(TopicExistsError):
        sbus.create_topic(t)
    with pytest.raises(TopicExistsError):
        sbus.create_topic(t, 5, {"ring.bytes": 4096})
    d = sbus.describe_topic(t)
    assert len(d.partitions) == 2 and d.config["retention.ms"] == 1234
    assert sum(end_offsets(sbus, t)) == 1


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "sp ace", "x" * 250, "tab\t", "ümlaut", "a:b", None, 5])
def test_invalid_topic_names(sbus, name):
    with pytest.raises(InvalidTopicError):
        sbus.create_topic(name)
    with pytest.raises(InvalidTopicError):
        sbus.describe_topic(name)
    with pytest.raises(InvalidTopicError):
        sbus.delete_topic(name)
    with sbus.consumer() as c:
        with pytest.raises(InvalidTopicError):
            c.subscribe([name])


def test_valid_unusual_topic_names(sbus):
    names = ["x" * 249, "a.b-c_D9", "-", "..."]
    try:
        for n in names:
            sbus.create_topic(n)
        assert set(names) <= set(sbus.list_topics())
    finally:
        for n in names:
            try:
                sbus.delete_topic(n)
            except UnknownTopicError:
                pass


def test_list_describe_alter_delete_topics(bus):
    assert bus.list_topics() == []
    d = bus.create_topic("one", 3, {"retention.ms": "60000", "ring.bytes": 65536})
    bus.create_topic("two")
    assert bus.list_topics() == ["one", "two"]
    assert d.name == "one" and [p.partition for p in d.partitions] == [0, 1, 2]
    assert all((p.start_offset, p.end_offset) == (0, 0) for p in d.partitions)
    cfg = bus.describe_topic("one").config
    assert cfg == {"cleanup.policy": "delete", "retention.ms": 60000, "retention.bytes": -1,
                   "segment.bytes": 67108864, "segment.ms": 604800000, "max.message.bytes": 1048576,
                   "delete.retention.ms": 86400000, "min.compaction.lag.ms": 0, "ring.bytes": 65536,
                   "unblock.timeout.ms": 1000}
    with bus.producer() as p:
        p.send_batch("one", [b"x"] * 4, partition=1)
    d = bus.describe_topic("one")
    assert [(p.start_offset, p.end_offset) for p in d.partitions] == [(0, 0), (0, 4), (0, 0)]
    bus.alter_topic_config("one", {"max.message.bytes": 10, "cleanup.policy": "compact"})
    cfg2 = bus.describe_topic("one").config
    assert cfg2 == {**cfg, "max.message.bytes": 10, "cleanup.policy": "compact"}
    with pytest.raises(InvalidConfigError, match="ring.bytes"):
        bus.alter_topic_config("one", {"ring.bytes": 131072})
    with pytest.raises(InvalidConfigError, match="bogus"):
        bus.alter_topic_config("one", {"bogus": 1})
    assert bus.describe_topic("one").config == cfg2
    with bus.producer() as p:  # a new producer sees the new limit
        with pytest.raises(RecordTooLargeError):
            p.send("one", b"x" * 11)
    bus.delete_topic("one")
    assert bus.list_topics() == ["two"]
    with pytest.raises(UnknownTopicError):
        bus.describe_topic("one")
    assert not os.path.exists(os.path.join(bus.data_dir, "topics", "one"))


def test_delete_topic_then_send(bus):
    bus.create_topic("gone", 2)
    with bus.producer() as live:
        live.send("gone", b"before", partition=1)
        names = bus.shared_memory_names()
        with Bus(bus.data_dir, autostart=False) as admin:  # see the same-Bus tests below
            admin.delete_topic("gone")
        assert len(bus.shared_memory_names()) == len(names) - 2  # both rings unlinked
        with pytest.raises(UnknownTopicError):
            live.send("gone", b"after", partition=1)  # a producer that had the topic open
        with pytest.raises(UnknownTopicError):
            live.send_batch("gone", [b"after"], partition=1)
        with bus.producer() as fresh:
            with pytest.raises(UnknownTopicError):
                fresh.send("gone", b"after")
        # the same name again is a new, empty topic; the old producer follows it
        bus.create_topic("gone", 2)
        assert live.send("gone", b"new", partition=1).offset == 0
    assert [r.value for r in read_all(bus, "gone", 1)] == [b"new"]


def child_delete_under_clients(data_dir, scenario, q):
    """Delete a topic while clients of one Bus object use it; report what each saw.

    "bus": the clients' own Bus deletes it, then two producers send.
    "elsewhere": another Bus deletes it; producer 1 notices first, then producer 2 sends.
    "consumer": the consumer's own Bus deletes it, then the consumer polls.
    """
    from shmbus import Bus, UnknownTopicError

    seen = []

    def send(name, p):
        try:
            p.send("gone", b"late")
            seen.append(f"{name} sent")
        except UnknownTopicError:
            seen.append(f"{name} UnknownTopicError")

    with Bus(data_dir, autostart=False) as bus:
        bus.create_topic("gone")
        if scenario == "consumer":
            with bus.producer() as p:
                p.send("gone", b"one")
            c = bus.consumer("gone", auto_offset_reset="earliest")
            seen.append(len(read_n(c, 1)))
            bus.delete_topic("gone")
            try:
                seen.append(f"poll {len(c.poll(timeout_ms=100))}")
            except UnknownTopicError:
                seen.append("poll UnknownTopicError")
            except Exception as e:  # noqa: BLE001 (reported to the test)
                seen.append(f"poll {type(e).__name__}: {e}")
            c.close()
        else:
            p1, p2 = bus.producer(), bus.producer()
            p1.send("gone", b"one")
            p2.send("gone", b"two")
            if scenario == "bus":
                bus.delete_topic("gone")
            else:
                with Bus(data_dir, autostart=False) as admin:
                    admin.delete_topic("gone")
            send("p1", p1)
            send("p2", p2)
    q.put(seen)


def run_delete_scenario(data_dir, procs, scenario):
    from helpers.waiting import SPAWN

    q = SPAWN.Queue()
    p = procs.start(child_delete_under_clients, data_dir, scenario, q)
    procs.join_all(50)
    assert p.exitcode == 0, f"the process died: exitcode={p.exitcode}"
    return q.get(timeout=10)


@pytest.mark.timeout(60)
def test_delete_topic_through_the_bus_its_producers_use(data_dir, procs):
    assert run_delete_scenario(data_dir, procs, "bus") == ["p1 UnknownTopicError", "p2 UnknownTopicError"]


@pytest.mark.timeout(60)
def test_topic_deleted_elsewhere_under_two_producers_of_one_bus(data_dir, procs):
    assert run_delete_scenario(data_dir, procs, "elsewhere") == ["p1 UnknownTopicError", "p2 UnknownTopicError"]


@pytest.mark.timeout(60)
def test_delete_topic_through_the_bus_its_consumer_uses(data_dir, procs):
    seen = run_delete_scenario(data_dir, procs, "consumer")
    assert seen[0] == 1 and seen[1] in ("poll 0", "poll UnknownTopicError"), seen


def test_describe_group_that_does_not_exist_is_dead(sbus):
    g = sbus.describe_group("nobody")
    assert (g.group_id, g.state, g.members, g.offsets) == ("nobody", "Dead", [], {})


# --- shared memory ---------------------------------------------------------------------

def test_shared_memory_names_and_modes(bus):
    bus.create_topic("a", 3)
    bus.create_topic("b", 1, {"ring.bytes": 4096})
    names = bus.shared_memory_names()
    assert len(names) == 1 + 4  # the control block and one ring per partition
    mine = [n for n in os.listdir("/dev/shm") if bus.id in n]
    assert sorted("/" + n for n in mine) == names
    for n in mine:
        assert n.startswith("shmbus"), n
        st = os.stat(os.path.join("/dev/shm", n))
        assert stat.S_IMODE(st.st_mode) == 0o600, (n, oct(st.st_mode))
        assert st.st_uid == os.getuid()


def test_two_buses_have_disjoint_shared_memory(bus, tmp_path):
    d2 = str(tmp_path / "other")
    try:
        with Bus(d2, autostart=False) as bus2:
            assert bus2.id != bus.id
            for b in (bus, bus2):
                b.create_topic("same-name", 2)
            n1, n2 = set(bus.shared_memory_names()), set(bus2.shared_memory_names())
            assert len(n1) == len(n2) == 3 and not n1 & n2
            with bus.producer() as p1, bus2.producer() as p2:
                p1.send("same-name", b"one", partition=0)
                p2.send("same-name", b"two", partition=0)
                p2.send("same-name", b"three", partition=0)
            assert [r.value for r in read_all(bus, "same-name", 1)] == [b"one"]
            assert [r.value for r in read_all(bus2, "same-name", 2)] == [b"two", b"three"]
    finally:
        cleanup_bus(d2)


# --- across processes ----------------------------------------------------------------

def child_create_and_send(data_dir, topic, q):
    try:
        with Bus(data_dir, autostart=False) as bus:
            bus.create_topic(topic, 2)
            with bus.producer() as p:
                md = p.send(topic, b"from the child", key=b"k", headers=[("pid", str(os.getpid()).encode())])
        q.put(("ok", md.partition, md.offset))
    except BaseException as e:  # report it to the test
        q.put(("error", repr(e), None))


def child_read(data_dir, topic, n, q):
    try:
        with Bus(data_dir, autostart=False) as bus:
            topics = bus.list_topics()
            with bus.consumer(topic, auto_offset_reset="earliest") as c:
                recs = read_n(c, n)
        q.put(("ok", topics, [(r.partition, r.offset, r.key, r.value) for r in recs]))
    except BaseException as e:
        q.put(("error", repr(e), None))


@pytest.mark.timeout(60)
def test_topic_created_in_one_process_is_visible_in_another(bus, procs):
    from helpers.waiting import SPAWN

    q = SPAWN.Queue()
    procs.start(child_create_and_send, bus.data_dir, "made-by-child", q)
    status, part, off = q.get(timeout=50)
    assert status == "ok", part
    procs.join_all(30)
    assert "made-by-child" in bus.list_topics()
    assert len(bus.describe_topic("made-by-child").partitions) == 2
    (r,) = read_all(bus, "made-by-child", 1)
    assert (r.partition, r.offset, r.key, r.value) == (part, off, b"k", b"from the child")
    # and the other way round
    bus.create_topic("made-by-parent", 3)
    sent = set()
    with bus.producer() as p:
        for i in range(9):
            md = p.send("made-by-parent", b"v%d" % i, key=b"k%d" % i)
            sent.add((md.partition, md.offset, b"k%d" % i, b"v%d" % i))
    procs.start(child_read, bus.data_dir, "made-by-parent", 9, q)
    status, topics, recs = q.get(timeout=50)
    assert status == "ok", topics
    assert {"made-by-child", "made-by-parent"} <= set(topics)
    assert set(map(tuple, recs)) == sent


# --- records that left the ring ----------------------------------------------------

def value_for(i: int) -> bytes:
    return b"%06d|" % i + bytes([i % 251]) * (40 + i % 70)


@pytest.mark.parametrize("ring_bytes", [4096, 8192])
def test_records_that_left_a_small_ring_read_back_intact(sbus, make_topic, producer, ring_bytes):
    t = make_topic(config={"ring.bytes": ring_bytes})
    tp = TP(t, 0)
    n = 400  # several times what the ring holds
    sent = []
    for i in range(n):
        key = None if i % 5 == 0 else b"k%d" % i
        val = None if i % 17 == 3 else value_for(i)
        hdrs = [("i", b"%d" % i)] if i % 3 == 0 else None
        md = producer.send(t, val, key=key, headers=hdrs, timestamp_ms=10_000 + i)
        sent.append((md.offset, 10_000 + i, key, val, hdrs or []))
    wait_spilled(sbus, t)
    ring = ring_of(sbus, t)
    assert ring.released() > ring_bytes  # the oldest records have left the ring: they come from disk
    d = sbus.describe_topic(t)
    assert (d.partitions[0].start_offset, d.partitions[0].end_offset) == (0, n)
    recs = read_all(sbus, t, n)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs] == sent
    with sbus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        assert c.beginning_offsets([tp]) == {tp: 0} and c.end_offsets([tp]) == {tp: n}
        c.seek(tp, 123)
        assert [r.offset for r in read_n(c, 5, max_records=5)] == [123, 124, 125, 126, 127]
        b = c.poll_batch(timeout_ms=1000, max_records=50)[tp]
        assert b.offsets.tolist() == list(range(128, 178))
        assert b.values() == [v for _, _, _, v, _ in sent[128:178]]
        assert c.offsets_for_times({tp: 10_250})[tp] == (250, 10_250)
        assert c.offsets_for_times({tp: 10_000 + n}) == {tp: None}


def test_seek_and_offsets_for_times_on_disk_and_in_the_ring(bus):
    """Records 0..299 on disk, then the supervisor stops and 300..319 stay in the ring."""
    t = "split"
    tp = TP(t, 0)
    bus.create_topic(t, config={"ring.bytes": 8192})
    with bus.producer() as p:
        for i in range(300):
            p.send(t, value_for(i), timestamp_ms=50_000 + 10 * i)
        wait_spilled(bus, t)
        client.stop(bus.data_dir)
        ring = ring_of(bus, t)
        released = ring.released()
        for i in range(300, 320):
            p.send(t, value_for(i), timestamp_ms=50_000 + 10 * i)
    assert ring.released() == released < ring.claim_position()  # these are only in the ring
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        assert c.beginning_offsets([tp]) == {tp: 0} and c.end_offsets([tp]) == {tp: 320}
        c.seek(tp, 310)  # in the ring
        assert [(r.offset, r.value) for r in read_n(c, 10)] == [(i, value_for(i)) for i in range(310, 320)]
        c.seek(tp, 290)  # on disk, then on into the ring
        assert [(r.offset, r.value) for r in read_n(c, 30)] == [(i, value_for(i)) for i in range(290, 320)]
        c.seek(tp, 5)
        b = c.poll_batch(timeout_ms=1000, max_records=3)[tp]
        assert b.offsets.tolist() == [5, 6, 7] and b.values() == [value_for(i) for i in (5, 6, 7)]
        c.seek_to_beginning(tp)
        assert [r.offset for r in read_n(c, 320, max_records=1000)] == list(range(320))
        ot = c.offsets_for_times({tp: 50_000 + 10 * 100 - 5})  # between 99 and 100, on disk
        assert ot[tp] == (100, 51_000)
        ot = c.offsets_for_times({tp: 50_000 + 10 * 305})  # in the ring
        assert ot[tp] == (305, 53_050)
        ot = c.offsets_for_times({tp: 50_000 + 10 * 300 - 1})  # the first in the ring
        assert ot[tp] == (300, 53_000)
        assert c.offsets_for_times({tp: 60_000}) == {tp: None}


def test_everything_round_trips_through_the_ring_alone(bus_nosup):
    """No supervisor: nothing spills, so every read below comes from shared memory."""
    bus = bus_nosup
    t = "ring-only"
    tp = TP(t, 0)
    bus.create_topic(t, config={"ring.bytes": 65536})
    sent = []
    with bus.producer() as p:
        for i in range(60):
            key = None if i % 4 == 0 else b"k%d" % i
            val = None if i % 9 == 5 else value_for(i)
            hdrs = [("i", b"%d" % i), ("n", None)] if i % 3 == 0 else []
            md = p.send(t, val, key=key, headers=hdrs, timestamp_ms=7_000 + i)
            sent.append((md.offset, 7_000 + i, key, val, hdrs))
    ring = ring_of(bus, t)
    assert ring.released() == 0  # nothing left the ring
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in read_all(bus, t, 60)] == sent
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(tp, 20)
        b = c.poll_batch(timeout_ms=1000, max_records=10)[tp]
        assert b.offsets.tolist() == list(range(20, 30))
        assert b.timestamps.tolist() == list(range(7_020, 7_030))
        assert b.values() == [v for _, _, _, v, _ in sent[20:30]]
        assert c.offsets_for_times({tp: 7_041})[tp] == (41, 7_041)
        assert c.offsets_for_times({tp: 7_060}) == {tp: None}
        assert c.beginning_offsets([tp]) == {tp: 0} and c.end_offsets([tp]) == {tp: 60}
        c.seek_to_end(tp)
        assert c.poll(timeout_ms=0) == {}


def test_an_exactly_full_ring_reads_each_record_once(bus_nosup):
    bus = bus_nosup
    bus.create_topic("tiles", config={"ring.bytes": 4096})
    with bus.producer(max_block_ms=0) as p:
        for i in range(64):  # 64-byte frames tile the 4 KiB ring exactly
            p.send("tiles", b"%024d" % i)
    with bus.consumer("tiles", auto_offset_reset="earliest") as c:
        got = c.poll(timeout_ms=0, max_records=200)
    assert [r.offset for r in got[TP("tiles", 0)]] == list(range(64))
