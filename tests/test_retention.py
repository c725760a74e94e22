"""Retention on a running bus: by size, by time, and changed live with alter_topic_config.

Real supervisor, real files, real shared memory. Conditions that depend on
the supervisor's pace are waited for with a deadline, never timed.
"""

from __future__ import annotations

import os
import time

import pytest
from helpers.bus import read_offsets

from shmbus import OffsetOutOfRangeError, TopicPartition
from shmbus.log.files import list_segments

KIB = 1024


def pdir_of(bus, topic, p=0):
    return os.path.join(bus.data_dir, "topics", topic, str(p))


def disk_bytes(pdir, suffix=".log"):
    total = 0
    for n in os.listdir(pdir):
        if n.endswith(suffix):
            try:
                total += os.path.getsize(os.path.join(pdir, n))
            except FileNotFoundError:
                pass  # deleted by retention since the listing
    return total


def wait_for(cond, timeout_s=30, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def value(i: int, size: int = 1000) -> bytes:
    head = b"%010d|" % i
    return head + bytes([i & 0xFF]) * (size - len(head))


def end_on_disk(pdir):
    from shmbus.log.recovery import log_end_offset

    return log_end_offset(pdir) or 0


@pytest.mark.timeout(120)
def test_size_retention_bounds_disk_use_moves_the_start_and_the_rest_reads_dense(bus):
    seg, keep = 64 * KIB, 256 * KIB
    bus.create_topic("r", config={"segment.bytes": seg, "retention.bytes": keep, "ring.bytes": 256 * KIB})
    pdir = pdir_of(bus, "r")
    n = 4000  # 1000-byte values: ~4 MB
    bound = keep + 2 * seg  # Kafka's (what is kept, plus the oldest kept segment), plus the active one
    with bus.producer(max_block_ms=60_000) as p:
        for i in range(0, n, 100):
            p.send_batch("r", [value(j) for j in range(i, i + 100)])
            if (i + 100) % 1000 == 0:  # after each MB, disk use comes back under the bound
                wait_for(lambda: disk_bytes(pdir) <= bound, what=f"disk use <= {bound}")
    wait_for(lambda: end_on_disk(pdir) == n, what="every record on disk")
    wait_for(lambda: disk_bytes(pdir) <= keep + seg, what="disk use <= retention.bytes + segment.bytes")
    assert disk_bytes(pdir, ".index") + disk_bytes(pdir, ".timeindex") < 8 * KIB
    start = bus.describe_topic("r").partitions[0].start_offset
    assert start > n // 2 and start == list_segments(pdir)[0]
    got = read_offsets(bus, "r", start, n, timeout_s=30)
    assert [r.offset for r in got] == list(range(start, n))
    assert all(r.value == value(r.offset) for r in got)
    # below the start: out of range, or reset
    tp = TopicPartition("r", 0)
    with bus.consumer(auto_offset_reset="none") as c:
        c.assign([tp])
        c.seek(tp, 0)
        with pytest.raises(OffsetOutOfRangeError, match="below the start"):
            c.poll(timeout_ms=1000)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(tp, 5)
        first = next(iter(c.poll(timeout_ms=2000, max_records=1).values()))[0]
        assert first.offset == start


@pytest.mark.timeout(120)
def test_time_retention_deletes_old_records_a_few_seconds_later(bus):
    bus.create_topic("t", config={"retention.ms": 1500, "segment.ms": 300, "ring.bytes": 64 * KIB})
    pdir = pdir_of(bus, "t")
    with bus.producer() as p:
        for i in range(0, 1000, 100):
            p.send_batch("t", [value(j, 100) for j in range(i, i + 100)])
    tp = TopicPartition("t", 0)
    with bus.consumer(auto_offset_reset="earliest") as c:
        assert c.beginning_offsets([tp])[tp] == 0
        # rolled after 300 ms, deleted once its newest record is 1.5 s old: the start is the log end
        wait_for(lambda: c.beginning_offsets([tp])[tp] == 1000, what="start offset at 1000")
    assert list_segments(pdir) == [1000]
    assert bus.describe_topic("t").partitions[0].start_offset == 1000
    with bus.consumer(auto_offset_reset="none") as c:
        c.assign([tp])
        c.seek(tp, 0)
        with pytest.raises(OffsetOutOfRangeError):
            c.poll(timeout_ms=1000)
    with bus.consumer(auto_offset_reset="earliest") as c, bus.producer() as p:
        c.assign([tp])
        assert c.position(tp) == 1000
        assert p.send("t", b"after").offset == 1000
        got = [r for recs in c.poll(timeout_ms=5000).values() for r in recs]
        assert [(r.offset, r.value) for r in got] == [(1000, b"after")]


@pytest.mark.timeout(120)
def test_retention_changed_live_with_alter_topic_config(bus):
    seg = 64 * KIB
    bus.create_topic("live", config={"segment.bytes": seg, "ring.bytes": 256 * KIB})
    pdir = pdir_of(bus, "live")
    n = 1500
    with bus.producer() as p:
        for i in range(0, n, 100):
            p.send_batch("live", [value(j) for j in range(i, i + 100)])
    wait_for(lambda: end_on_disk(pdir) == n, what="every record on disk")
    time.sleep(1.2)  # two retention rounds: nothing goes with the defaults
    assert list_segments(pdir)[0] == 0 and disk_bytes(pdir) > 1000 * KIB
    bus.alter_topic_config("live", {"retention.bytes": 128 * KIB})
    wait_for(lambda: disk_bytes(pdir) <= 128 * KIB + seg, what="the new retention.bytes applied")
    start = bus.describe_topic("live").partitions[0].start_offset
    got = read_offsets(bus, "live", start, n, timeout_s=30)
    assert [r.offset for r in got] == list(range(start, n))
    assert all(r.value == value(r.offset) for r in got)


@pytest.mark.timeout(120)
def test_a_reader_on_a_deleted_segment_reads_on_then_lets_go_of_it(bus):
    bus.create_topic("fd", config={"segment.bytes": 64 * KIB, "ring.bytes": 64 * KIB})
    pdir = pdir_of(bus, "fd")
    n = 1000
    with bus.producer() as p:
        for i in range(0, n, 100):
            p.send_batch("fd", [value(j) for j in range(i, i + 100)])
    wait_for(lambda: end_on_disk(pdir) == n, what="every record on disk")
    tp = TopicPartition("fd", 0)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        got = next(iter(c.poll(timeout_ms=2000, max_records=10).values()))
        assert got[0].offset == 0
        bus.alter_topic_config("fd", {"retention.bytes": 0})  # everything closed goes
        wait_for(lambda: list_segments(pdir)[0] > 0, what="the first segment deleted")
        # the reader, mid-segment, still reads what it had open, then finds the start moved
        offsets = [r.offset for r in got]
        deadline = time.monotonic() + 30
        while c.position(tp) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                offsets.extend(r.offset for r in recs)
                assert all(r.value == value(r.offset) for r in recs)
        assert offsets == sorted(set(offsets)) and offsets[-1] == n - 1
        # caught up: the next polls find the disk exhausted and read the ring; then no fd of a
        # deleted segment is held, the space is free (a reader still reading the disk lets go of
        # them within PartitionLog.CHECK_S)

        def let_go():
            c.poll(timeout_ms=10)
            return not [f for f in open_files() if f.endswith("(deleted)") and pdir in f]

        wait_for(let_go, timeout_s=5, what="the reader to let go of the deleted segments")


def open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out
