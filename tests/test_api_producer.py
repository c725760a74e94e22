"""The public API in one process: Producer.send and Producer.send_batch, as a kafka-python user expects them.

Most tests share one bus (and its supervisor) per module (the ``sbus``
fixture, tests/conftest.py), each on topics of its own (``make_topic``),
because starting a supervisor costs ~2 s; tests that stop the supervisor,
count the bus's shared-memory objects or need a second bus take the per-test
``bus`` fixture instead.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from helpers.api import end_offsets, now_ms, read_all, read_n

from shmbus import (
    BatchMetadata,
    Consumer,
    ConsumerRecord,
    InvalidConfigError,
    InvalidTopicError,
    Producer,
    RecordMetadata,
    RecordTooLargeError,
    ShmbusError,
    TopicPartition,
)
from shmbus.core.partitioner import partition_for_key

TP = TopicPartition


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
