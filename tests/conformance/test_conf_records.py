"""Records go through both backends the same: fields, partitioning by key, batches, serializers, iteration."""

from __future__ import annotations

import numpy as np
import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2

from shmbus import RecordBatch, TopicPartition

pytestmark = pytest.mark.timeout(180)


def test_round_trip_keys_headers_timestamps_and_nulls(backend, drain):
    t = backend.topic(1)
    sent = [
        dict(value=b"v0", key=b"k0", headers=[("a", b"1"), ("b", None)], timestamp_ms=1_700_000_000_000),
        dict(value=None, key=b"tomb"),
        dict(value=b"", key=None, headers=[("empty", b"")]),
        dict(value=bytearray(b"v3"), key=memoryview(b"k3"), timestamp_ms=1_700_000_000_003),
        dict(value=np.frombuffer(b"v4", np.uint8)),
    ]
    with backend.bus.producer() as p:
        mds = [p.send(t, partition=0, **kw) for kw in sent]
    assert [m.offset for m in mds] == list(range(5))
    assert all(m.topic == t and m.partition == 0 for m in mds)
    assert mds[0].timestamp_ms == 1_700_000_000_000 and mds[3].timestamp_ms == 1_700_000_000_003
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(t, 0)])
        recs = drain(c, 5)
    assert [r.offset for r in recs] == list(range(5))
    assert [r.value for r in recs] == [b"v0", None, b"", b"v3", b"v4"]
    assert [r.key for r in recs] == [b"k0", b"tomb", None, b"k3", None]
    assert recs[0].headers == [("a", b"1"), ("b", None)]
    assert recs[2].headers == [("empty", b"")]
    assert recs[1].headers == [] and recs[4].headers == []
    assert recs[0].timestamp == 1_700_000_000_000 and recs[3].timestamp == 1_700_000_000_003
    assert all(r.timestamp == m.timestamp_ms for r, m in zip(recs, mds))


def test_keys_go_to_the_java_clients_partition(backend, drain):
    t = backend.topic(3)
    n = t.partitions
    assert n >= 2
    keys = [f"key-{i}".encode() for i in range(24)]
    with backend.bus.producer() as p:
        mds = [p.send(t, b"x", key=k) for k in keys]
        assert p.partitions_for(t) == set(range(n))
    want = [(kafka_murmur2(k) & 0x7FFFFFFF) % n for k in keys]
    assert [m.partition for m in mds] == want
    assert len(set(want)) >= 2  # (the test spreads over partitions)
    with backend.bus.consumer(t, auto_offset_reset="earliest") as c:
        recs = drain(c, len(keys))
    assert sorted((r.key, r.partition) for r in recs) == sorted(zip(keys, want))


def test_send_batch_and_poll_batch(backend, drain):
    t = backend.topic(1)
    rows = np.arange(40 * 8, dtype=np.uint8).reshape(40, 8)
    with backend.bus.producer() as p:
        md = p.send_batch(t, rows, partition=0)
        md2 = p.send_batch(t, [b"a", None, b"ccc"], keys=[b"1", b"2", None], partition=0)
    assert md.topic == t and list(md.partitions) == [0] * 40 and list(md.offsets) == list(range(40))
    assert list(md2.offsets) == [40, 41, 42]
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(t, 0)])
        batches = drain(c, 43, batch=True)
    assert all(isinstance(b, RecordBatch) and b.topic == t and b.partition == 0 for b in batches)
    offsets = np.concatenate([b.offsets for b in batches])
    assert list(offsets) == list(range(43))
    values = [v for b in batches for v in b.values()]
    assert values[:40] == [r.tobytes() for r in rows]
    assert values[40:] == [b"a", None, b"ccc"]
    first = batches[0]
    if all(len(v) == 8 for v in first.values()):
        assert np.array_equal(first.values_array(), rows[: len(first)])
    assert all(b.timestamps.dtype == np.int64 and (b.timestamps > 0).all() for b in batches)


def test_send_batch_by_key(backend, drain):
    t = backend.topic(3)
    n = t.partitions
    keys = [f"b-{i}".encode() for i in range(20)]
    with backend.bus.producer() as p:
        md = p.send_batch(t, [b"v"] * 20, keys=keys)
    assert list(md.partitions) == [(kafka_murmur2(k) & 0x7FFFFFFF) % n for k in keys]
    with backend.bus.consumer(t, auto_offset_reset="earliest") as c:
        recs = drain(c, 20)
    got = {(r.partition, r.offset) for r in recs}
    assert got == set(zip(md.partitions.tolist(), md.offsets.tolist()))


def test_serializers_and_iteration_with_consumer_timeout(backend):
    t = backend.topic(1)
    with backend.bus.producer(value_serializer=lambda v: v.encode(), key_serializer=lambda k: k.encode()) as p:
        for i in range(5):
            p.send(t, f"value-{i}", key=f"key-{i}")
    with backend.bus.consumer(t, auto_offset_reset="earliest", consumer_timeout_ms=3000,
                              value_deserializer=bytes.decode, key_deserializer=bytes.decode) as c:
        recs = list(c)  # stops after consumer_timeout_ms without a record
    assert sorted((r.key, r.value) for r in recs) == [(f"key-{i}", f"value-{i}") for i in range(5)]


def test_latest_reads_only_records_sent_after_the_position(backend, drain):
    t = backend.topic(1)
    tp = TopicPartition(t, 0)
    with backend.bus.producer() as p:
        p.send(t, b"old", partition=0)
        with backend.bus.consumer(auto_offset_reset="latest") as c:
            c.assign([tp])
            assert c.position(tp) == 1
            p.send(t, b"new", partition=0)
            recs = drain(c, 1)
    assert [(r.offset, r.value) for r in recs] == [(1, b"new")]


def test_send_async_and_flush(backend, drain):
    t = backend.topic(1)
    with backend.bus.producer() as p:
        futs = [p.send_async(t, f"a{i}".encode(), key=b"k", partition=0) for i in range(20)]
        p.flush()
        mds = [f.result(timeout=60) for f in futs]
    assert [m.offset for m in mds] == list(range(20)) and all(m.partition == 0 for m in mds)
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(t, 0)])
        assert [r.value for r in drain(c, 20)] == [f"a{i}".encode() for i in range(20)]
