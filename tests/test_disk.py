"""The spilled log on disk: segment files, acks="disk", reading records that left the ring."""

from __future__ import annotations

import os
import time

import pytest

from helpers.bus import read_n, wait_spilled

from shmbus import CorruptRecordError, TopicPartition

TP = TopicPartition("d", 0)


def test_segment_files_are_where_people_look(bus):
    bus.create_topic("d", config={"ring.bytes": 8192})
    with bus.producer() as p:
        for i in range(500):
            p.send("d", b"%05d" % i)
    wait_spilled(bus, "d", 0, 499)
    pdir = os.path.join(bus.data_dir, "topics", "d", "0")
    names = sorted(os.listdir(pdir))
    assert "00000000000000000000.log" in names
    assert "00000000000000000000.index" in names
    assert all(len(n.split(".")[0]) == 20 for n in names)


def test_acks_disk_returns_after_fsync_into_a_segment(bus):
    bus.create_topic("d")
    with bus.producer(acks="disk", max_block_ms=20_000) as p:
        md = p.send("d", b"durable", key=b"k")
        mds = p.send_batch("d", [b"b1", b"b2"])
    assert md.offset == 0 and list(mds.offsets) == [1, 2]
    ring = bus.ring(bus.topic_meta("d"), 0)
    assert ring.durable() >= 3
    seg = os.path.join(bus.data_dir, "topics", "d", "0", "00000000000000000000.log")
    data = open(seg, "rb").read()
    assert b"durable" in data and b"b2" in data


def test_acks_disk_without_supervisor_times_out(bus_nosup):
    from shmbus import BufferFullError

    bus_nosup.create_topic("d")
    with bus_nosup.producer(acks="disk", max_block_ms=200) as p:
        with pytest.raises(BufferFullError, match="fsynced"):
            p.send("d", b"x")


def test_records_that_left_the_ring_read_from_disk_with_seek(bus):
    bus.create_topic("d", config={"ring.bytes": 8192})
    with bus.producer() as p:
        for i in range(2000):
            p.send("d", b"%05d" % i + b"." * (i % 30))
    wait_spilled(bus, "d", 0, 1999)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TP])
        got = read_n(c, 2000)
        assert [int(r.value[:5]) for r in got] == list(range(2000))
        assert [r.offset for r in got] == list(range(2000))
        c.seek(TP, 1234)
        assert [r.offset for r in read_n(c, 3)][:3] == [1234, 1235, 1236]
        ts = got[1500].timestamp
        hit = c.offsets_for_times({TP: ts})[TP]
        assert hit.offset <= 1500 and hit.timestamp == ts
        c.seek_to_beginning(TP)
        assert c.position(TP) == 0
        c.seek_to_end(TP)
        assert c.position(TP) == 2000


def test_corrupt_record_on_disk_raises_naming_file_and_position(bus):
    bus.create_topic("d", config={"ring.bytes": 8192})
    with bus.producer() as p:
        for i in range(300):
            p.send("d", b"value-%05d" % i)
    wait_spilled(bus, "d", 0, 299)
    seg = os.path.join(bus.data_dir, "topics", "d", "0", "00000000000000000000.log")
    with open(seg, "r+b") as f:
        data = f.read()
        at = data.index(b"value-00007")
        f.seek(at)
        f.write(b"VALUE")
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TP])
        with pytest.raises(CorruptRecordError) as e:
            read_n(c, 300)
    msg = str(e.value)
    assert seg in msg and "position=" in msg


def test_poll_batch_from_disk_gives_the_values_back_to_back(bus):
    bus.create_topic("d", config={"ring.bytes": 8192})
    values = [None if i % 17 == 5 else b"%05d" % i + b"v" * (i % 50) for i in range(3000)]
    with bus.producer() as p:
        for i, v in enumerate(values):
            p.send("d", v, key=b"k" if v is None else None)
    wait_spilled(bus, "d", 0, 2999)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TP])
        got, offsets = [], []
        deadline = time.monotonic() + 20
        while len(got) < 3000 and time.monotonic() < deadline:
            for b in c.poll_batch(timeout_ms=100, max_records=700).values():
                got.extend(b.values())
                offsets.extend(b.offsets.tolist())
    assert offsets == list(range(3000))
    assert got == values


def test_a_topic_made_just_before_stop_is_spilled_by_the_stop(data_dir):
    """The supervisor's last spill looks for new topics first: nothing published is left only in memory."""
    from shmbus import Bus
    from shmbus.log.reader import PartitionLog
    from shmbus.client import control as client

    with Bus(data_dir) as bus:
        time.sleep(0.3)  # the spiller is idle, between rescans
        bus.create_topic("late", partitions=1)
        with bus.producer() as p:
            for i in range(10):
                p.send("late", b"r%d" % i)
        assert client.stop(data_dir, wait_s=30)
    log = PartitionLog(os.path.join(data_dir, "topics", "late", "0"))
    try:
        n, _meta, _chunk = log.read(0, 100)
    finally:
        log.close()
    assert n == 10


def test_a_reader_catching_up_holds_one_segment_file_open(bus):
    """Reading through many segment files, a consumer has at most the one it reads open (a reader far
    behind does not run into the file descriptor limit, nor keep deleted files' space)."""
    bus.create_topic("d", config={"ring.bytes": 8192, "segment.bytes": 4096})
    with bus.producer() as p:
        for i in range(3000):
            p.send("d", b"%05d" % i + b"." * 50)
    wait_spilled(bus, "d", 0, 2999)
    pdir = os.path.realpath(os.path.join(bus.data_dir, "topics", "d", "0"))
    assert len(os.listdir(pdir)) > 3 * 40  # (40 segments or more: .log, .index, .timeindex each)

    def open_segments():
        out = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                out += os.readlink(f"/proc/self/fd/{fd}").startswith(pdir + "/")
            except OSError:
                pass
        return out

    most = 0
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TP])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 3000 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100, max_records=100).values():
                got.extend(r.offset for r in recs)
            most = max(most, open_segments())
    assert got == list(range(3000))
    assert most <= 1, f"{most} segment files open at once"
