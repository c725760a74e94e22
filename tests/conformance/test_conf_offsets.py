"""Positions, seeks, beginning and end offsets, offsets for times, pause and resume: the same on both backends."""

from __future__ import annotations

import pytest

from shmbus import OffsetAndTimestamp, ShmbusError, TopicPartition

pytestmark = pytest.mark.timeout(180)


def _fill(backend, t, n=10, ts0=1_600_000_000_000):
    with backend.bus.producer() as p:
        return [p.send(t, f"v{i}".encode(), partition=0, timestamp_ms=ts0 + 10 * i) for i in range(n)]


def test_positions_seeks_and_offsets(backend, drain):
    t = backend.topic(1)
    tp = TopicPartition(t, 0)
    _fill(backend, t)
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        assert c.assignment() == {tp}
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 10}
        assert c.position(tp) == 0
        c.seek(tp, 6)
        assert c.position(tp) == 6
        recs = drain(c, 4)
        assert [r.offset for r in recs] == [6, 7, 8, 9]
        assert c.position(tp) == 10
        c.seek_to_beginning(tp)
        assert c.position(tp) == 0
        assert drain(c, 1)[0].offset == 0
        c.seek_to_end()
        assert c.position(tp) == 10
        assert c.poll(timeout_ms=300) == {}
        c.seek(tp, 3)
        assert [r.value for r in drain(c, 7)] == [f"v{i}".encode() for i in range(3, 10)]
    d = backend.bus.describe_topic(t)
    assert d.name == t and [(q.partition, q.start_offset, q.end_offset) for q in d.partitions][0] == (0, 0, 10)


def test_offsets_for_times(backend, kafka_address):
    t = backend.topic(1)
    tp = TopicPartition(t, 0)
    ts0 = 1_600_000_000_000
    _fill(backend, t, ts0=ts0)
    if backend.name == "kafka":
        import confluent_kafka

        raw = confluent_kafka.Consumer({"bootstrap.servers": kafka_address, "group.id": "probe", "log_level": 3})
        try:
            got = raw.offsets_for_times([confluent_kafka.TopicPartition(t, 0, ts0)], timeout=30)[0].offset
        finally:
            raw.close()
        if got != 0:
            pytest.skip(f"the cluster does not answer ListOffsets by timestamp (librdkafka asked for a timestamp "
                        f"that the first record has and got offset={got}): librdkafka's mock cluster looks up "
                        f"only the earliest and latest offsets")
    with backend.bus.consumer() as c:
        got = c.offsets_for_times({tp: ts0 + 45})
        assert got == {tp: OffsetAndTimestamp(5, ts0 + 50)}
        assert c.offsets_for_times({tp: ts0}) == {tp: OffsetAndTimestamp(0, ts0)}
        assert c.offsets_for_times({tp: ts0 + 10_000}) == {tp: None}


def test_pause_and_resume(backend, drain):
    t = backend.topic(2)
    a, b = TopicPartition(t, 0), TopicPartition(t, 1)
    with backend.bus.producer() as p:
        for i in range(3):
            p.send(t, b"a", partition=0)
            p.send(t, b"b", partition=1)
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([a, b])
        c.pause(a)
        assert c.paused() == {a}
        recs = drain(c, 3)
        assert {r.partition for r in recs} == {1}
        assert c.poll(timeout_ms=500) == {}
        c.resume(a)
        assert c.paused() == set()
        assert {r.partition for r in drain(c, 3)} == {0}


def test_unassigned_partition_and_bad_seek(backend):
    t = backend.topic(2)
    with backend.bus.consumer() as c:
        c.assign([TopicPartition(t, 0)])
        with pytest.raises(ShmbusError):
            c.position(TopicPartition(t, 1))
        with pytest.raises(ShmbusError):
            c.seek(TopicPartition(t, 1), 0)
        with pytest.raises(ShmbusError):
            c.pause(TopicPartition(t, 1))
        with pytest.raises(ValueError):
            c.seek(TopicPartition(t, 0), -1)
