"""Crashes: the supervisor SIGKILLed mid-spill, and a "reboot" (shared memory gone) with a garbage tail.

- A producer process pushes numbered records through a 64 KiB ring while
  the test SIGKILLs the supervisor (the one its own Bus autostarted) at
  random moments and starts a new one: the producer blocks on the full
  ring meanwhile and continues; every record is read back exactly once, in
  order, intact.
- Stop the bus, unlink its /dev/shm objects, append garbage (or a torn
  frame) to the newest segment, reopen: every acks="disk" record reads
  back, the garbage is cut, and the next record gets the next offset.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest
from helpers.bus import bus_shm_names, read_offsets

from shmbus import Bus
from shmbus.log.files import list_segments
from shmbus.client import control as client

TOPIC = "crash"
_V = struct.Struct("<q")


def value_for(seq: int) -> bytes:
    return _V.pack(seq) + bytes([seq & 0xFF]) * (100 + seq % 200)


def producer_main(data_dir, stop, sent):
    """Sends numbered records until ``stop``; then reports how many in ``sent``."""
    with Bus(data_dir, autostart=False) as bus, bus.producer(max_block_ms=120_000) as prod:
        seq = 0
        while not stop.is_set():
            for _ in range(100):
                prod.send(TOPIC, value_for(seq))
                seq += 1
    sent.value = seq


def wait_until(cond, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def kill_supervisor(data_dir) -> int:
    pid = client.running_pid(data_dir)
    assert pid and pid > 0, "no supervisor to kill"
    os.kill(pid, signal.SIGKILL)  # the supervisor this test's Bus autostarted
    deadline = time.monotonic() + 10
    while client.running_pid(data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.running_pid(data_dir) is None
    return pid


@pytest.mark.timeout(180)
def test_sigkill_of_the_supervisor_mid_spill_loses_nothing(bus, procs):
    from helpers.waiting import SPAWN

    bus.create_topic(TOPIC, config={"ring.bytes": 64 * 1024, "segment.bytes": 256 * 1024})
    stop, sent = SPAWN.Event(), SPAWN.Value("q", -1)
    prod = procs.start(producer_main, bus.data_dir, stop, sent)
    ring = bus.ring(bus.topic_meta(TOPIC), 0)
    rng = random.Random(7)
    wait_until(lambda: ring.next_offset() > 2000, "the producer never started")
    for _ in range(4):
        time.sleep(rng.uniform(0.2, 0.8))  # mid-spill: the producer keeps the spiller busy
        before = ring.next_offset()
        kill_supervisor(bus.data_dir)
        # no supervisor: the producer fills the ring, then waits (nothing is overwritten)
        wait_until(lambda: ring.fill() > ring.ring_bytes - 1024, "the ring never filled up")
        stalled = ring.next_offset()
        time.sleep(0.3)
        assert ring.next_offset() == stalled, "records went in with no supervisor to free the ring"
        with Bus(bus.data_dir):  # autostart: a new supervisor adopts the ring
            pass
        assert prod.is_alive()
    stop.set()
    procs.join_all(120)
    assert prod.exitcode == 0
    n = sent.value
    assert n > before > 0
    got = read_offsets(bus, TOPIC, 0, n)
    assert [r.offset for r in got] == list(range(n))
    bad = [r.offset for r in got if r.value != value_for(r.offset)]
    assert not bad, f"damaged or misplaced records at offsets {bad[:10]}"


def garbage_tail(kind: str, next_offset: int) -> bytes:
    from helpers.frames import frame

    if kind == "random":
        return random.Random(3).randbytes(333)
    if kind == "torn":
        return frame(next_offset, 1, None, b"t" * 200)[:150]
    raise ValueError(kind)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["random", "torn"])
def test_reboot_with_a_garbage_tail_keeps_every_acked_record(data_dir, kind):
    with Bus(data_dir) as bus:
        bus.create_topic("g", partitions=2, config={"segment.bytes": 16 * 1024, "ring.bytes": 64 * 1024})
        with bus.producer(acks="disk", max_block_ms=30_000) as p:
            for i in range(300):
                p.send("g", b"rec-%05d" % i + b"#" * 100, partition=0)
            p.send_batch("g", [b"b-%d" % i for i in range(50)], partition=1)
    client.stop(data_dir, wait_s=30)
    for name in bus_shm_names(data_dir):  # a reboot
        os.unlink(os.path.join("/dev/shm", name))
    pdir = os.path.join(data_dir, "topics", "g", "0")
    newest = os.path.join(pdir, f"{list_segments(pdir)[-1]:020d}.log")
    good_size = os.path.getsize(newest)
    with open(newest, "ab") as f:
        f.write(garbage_tail(kind, 300))
    with Bus(data_dir) as bus:  # autostart: recovery runs before the rings are made again
        assert os.path.getsize(newest) == good_size
        with open(os.path.join(data_dir, "supervisor.log")) as f:
            assert "cut a bad tail" in f.read()
        d = bus.describe_topic("g")
        assert [(x.start_offset, x.end_offset) for x in d.partitions] == [(0, 300), (0, 50)]
        with bus.producer(acks="disk") as p:
            assert p.send("g", b"after", partition=0).offset == 300
            assert p.send("g", b"after", partition=1).offset == 50
        got = read_offsets(bus, "g", 0, 301)
        assert [r.offset for r in got] == list(range(301))
        assert [r.value for r in got] == [b"rec-%05d" % i + b"#" * 100 for i in range(300)] + [b"after"]


@pytest.mark.timeout(60)
def test_a_supervisor_killed_while_zeroing_ring_space_is_finished_by_the_next(bus_nosup):
    """RECLAIMING past RELEASED with half the range zeroed: the next spiller completes the release."""
    from shmbus.layout import ring as R
    from shmbus.supervisor.spill import PartitionSpiller

    bus = bus_nosup
    bus.create_topic("z", config={"ring.bytes": 8192})
    meta = bus.topic_meta("z")
    ring = bus.ring(meta, 0)
    pdir = os.path.join(bus.data_dir, "topics", "z", "0")
    with bus.producer() as p:
        for i in range(30):
            p.send("z", b"%04d" % i + b"." * 60)  # 104-byte frames, ~3 KiB: under half the ring
    sp = PartitionSpiller(ring, pdir, meta.config, int(time.time() * 1000))
    sp.spill(ring.ring_bytes)  # all 40 on disk; nothing released (under half full)
    assert ring.released() == 0 and sp.writer.next_offset == 30
    to = sp.boundaries[-1]
    # the dying supervisor: RECLAIMING stored, then killed halfway through zeroing
    words = ring.memoryview().cast("q")
    words[R.OFF_RECLAIMING // 8] = to
    half = (to // 2) & ~7
    ring.buf[R.HEADER_BYTES: R.HEADER_BYTES + half] = 0
    words.release()
    sp.writer.close()
    sp.mv.release()
    sp2 = PartitionSpiller(ring, pdir, meta.config, int(time.time() * 1000))
    assert ring.released() == to == ring.reclaiming()
    with bus.producer() as p:
        for i in range(30, 200):  # wraps the ring: only possible if the release was finished
            p.send("z", b"%04d" % i + b"." * 60)
            sp2.spill(ring.ring_bytes)
    sp2.spill(ring.ring_bytes)
    sp2.writer.close()
    sp2.mv.release()
    got = read_offsets(bus, "z", 0, 200, timeout_s=20)
    assert [r.value[:4] for r in got] == [b"%04d" % i for i in range(200)]


def disk_producer_main(data_dir, who, n, barrier):
    with Bus(data_dir, autostart=False) as bus, bus.producer(acks="disk", max_block_ms=60_000) as prod:
        pdir = os.path.join(data_dir, "topics", "acks", "0")
        barrier.wait(60)
        for seq in range(n):
            value = b"<%d:%d>" % (who, seq)
            prod.send("acks", value, partition=0)
            if seq % 5 == 0:  # when send returns, the record is in a segment file already
                on_disk = b""
                for base in list_segments(pdir):
                    with open(os.path.join(pdir, f"{base:020d}.log"), "rb") as f:
                        on_disk += f.read()
                assert value in on_disk, f"acked record not in a segment: {value!r}"


@pytest.mark.timeout(120)
def test_acks_disk_from_four_producers_every_acked_record_is_in_a_segment(bus, procs):
    """Group commit: the fsyncs are shared, and each send still returns only once its record is on disk."""
    from helpers.waiting import SPAWN

    from shmbus.log.reader import PartitionLog

    bus.create_topic("acks")
    n = 60
    barrier = SPAWN.Barrier(4)
    for who in range(4):
        procs.start(disk_producer_main, bus.data_dir, who, n, barrier)
    procs.join_all(90)
    assert all(p.exitcode == 0 for p in procs.procs)
    # every send returned: read the segment files alone (not the ring), while the supervisor still runs
    log = PartitionLog(os.path.join(bus.data_dir, "topics", "acks", "0"))
    got, off = [], 0
    try:
        while True:
            k, meta, chunk = log.read(off, 1000)
            if not k:
                break
            for row in meta[1: k + 1]:
                bi, kl, vl = int(row[6]), max(int(row[3]), 0), int(row[4])
                got.append(bytes(chunk[bi + kl: bi + kl + vl]))
            off = int(meta[k, 1]) + 1
    finally:
        log.close()
    assert sorted(got) == sorted(b"<%d:%d>" % (w, s) for w in range(4) for s in range(n))
