"""The public API in one process: the Consumer (poll, poll_batch, iteration, assignment, offsets) and
records read back from the ring and from the segment files, as a kafka-python user expects them.

Most tests share one bus (and its supervisor) per module (the ``sbus``
fixture, tests/conftest.py), each on topics of its own (``make_topic``),
because starting a supervisor costs ~2 s; tests that stop the supervisor,
count the bus's shared-memory objects or need a second bus take the per-test
``bus`` fixture instead.
"""

from __future__ import annotations


import numpy as np
import pytest

from helpers.api import read_all, read_n, ring_of, wait_all_spilled

from shmbus import (
    InvalidConfigError,
    OffsetAndTimestamp,
    OffsetOutOfRangeError,
    RecordBatch,
    ShmbusError,
    TopicPartition,
    UnknownTopicError,
)
from shmbus.client import control as client

TP = TopicPartition


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
    wait_all_spilled(sbus, t)
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
        wait_all_spilled(bus, t)
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
