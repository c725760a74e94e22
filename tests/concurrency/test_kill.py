"""Writers killed at any moment must not stall readers or lose acknowledged records.

- SIGKILL producer processes at random moments while a reader follows: every
  record whose ``send`` returned (the producer reports it through a pipe
  after each send) is read back intact, and a record sent after the kills
  arrives within a second (the supervisor unblocks the dead claims).
- A writer killed on purpose between claim and reserve (FREE word) and
  between reserve and publish (RESERVED by a dead pid).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest

from helpers.waiting import SPAWN

TOPIC = "kill"
_V = struct.Struct("<iq")


def value_for(p: int, seq: int) -> bytes:
    return _V.pack(p, seq) + bytes([(p + seq) & 0xFF]) * (20 + seq % 40)


def check(v: bytes):
    p, seq = _V.unpack_from(v)
    assert v == value_for(p, seq), "damaged value"
    return p, seq


def producer_main(data_dir, pid_, conn):
    from shmbus import Bus

    with Bus(data_dir, autostart=False) as bus, bus.producer() as prod:
        seq = 0
        while True:
            prod.send(TOPIC, value_for(pid_, seq), key=b"k%d" % (seq % 13))
            if seq % 64 == 0:
                conn.send(seq)  # everything up to seq is acknowledged
            seq += 1


def abandon_main(data_dir, reserve, ready):
    from shmbus import Bus
    from shmbus.kernels import frames as K

    with Bus(data_dir, autostart=False) as bus:
        meta = bus.topic_meta(TOPIC)
        ring = bus.ring(meta, 0)
        K.claim_and_abandon(ring.buf, 64, reserve, os.getpid())
        ready.set()
        time.sleep(600)


def drain(consumer, until, timeout_s):
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=100, max_records=1000).values():
            got.extend(recs)
            if any(until(r) for r in recs):
                return got
    return got


@pytest.mark.timeout(180)
def test_sigkill_producers_at_random_moments(bus, procs, send_impl):
    bus.create_topic(TOPIC, partitions=2, config={"ring.bytes": 65536})
    rng = random.Random(1234)
    acked = {}
    pipes = {}
    with bus.consumer(TOPIC, auto_offset_reset="earliest") as c:
        got = []
        for i in range(4):
            a, b = SPAWN.Pipe(duplex=False)
            pr = procs.start(producer_main, bus.data_dir, i, b)
            b.close()
            pipes[i] = (a, pr)
        for i, (a, pr) in pipes.items():
            assert a.poll(60), f"producer {i} never started sending"
            time.sleep(rng.uniform(0.05, 0.5))  # kill at a random moment while records flow
            got.extend(drain(c, lambda r: False, 0.05))
            os.kill(pr.pid, signal.SIGKILL)
            pr.join(10)
            while True:
                try:
                    if not a.poll():
                        break
                    acked[i] = a.recv()
                except (EOFError, OSError, ValueError):
                    break  # the end of the pipe, or a message cut by the kill
        # catch up with what the dead producers left (their dead claims get unblocked)
        ends = c.end_offsets(c.assignment())
        deadline = time.monotonic() + 30
        while any(c.position(tp) < end for tp, end in ends.items()) and time.monotonic() < deadline:
            got.extend(drain(c, lambda r: False, 0.2))
        if not all(c.position(tp) >= end for tp, end in ends.items()):
            state = {tp.partition: dict(position=c.position(tp), end=end, cursor=c._parts[tp].cursor,
                                        claim=c._parts[tp].ring.claim_position(),
                                        released=c._parts[tp].ring.released())
                     for tp, end in ends.items()}
            pytest.fail(f"reader stalled behind the dead writers: {state}")
        # a record sent after the kills must arrive within a second
        with bus.producer() as prod:
            t0 = time.monotonic()
            prod.send(TOPIC, b"after-the-kills", partition=0)
            prod.send(TOPIC, b"after-the-kills", partition=1)
        marked = set()

        def second_marker(r):
            if r.value == b"after-the-kills":
                marked.add(r.partition)
            return len(marked) == 2

        got.extend(drain(c, second_marker, 10))
        waited = time.monotonic() - t0
        assert marked == {0, 1}, f"the records sent after the kills did not arrive: partitions={marked}"
        assert waited < 1.0, f"records sent after the kills took {waited:.3f} s to arrive"
    seen = {}
    for r in got:
        if r.value == b"after-the-kills":
            continue
        p, seq = check(r.value)
        assert seq not in seen.setdefault(p, set()), "duplicate"
        seen[p].add(seq)
    for p, last in acked.items():
        missing = [s for s in range(last + 1) if s not in seen.get(p, ())]
        assert not missing, f"producer {p}: acknowledged records lost: {missing[:10]} (of {len(missing)})"
    assert sum(acked.values()) > 100, "the producers did not get to send much before the kills"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reserve", [False, True], ids=["killed-before-reserve", "killed-while-writing"])
def test_writer_killed_between_claim_and_publish(bus, procs, reserve):
    bus.create_topic(TOPIC, partitions=1, config={"ring.bytes": 65536})
    with bus.producer() as prod, bus.consumer(TOPIC, auto_offset_reset="earliest") as c:
        prod.send(TOPIC, b"before")
        ready = SPAWN.Event()
        pr = procs.start(abandon_main, bus.data_dir, reserve, ready)
        assert ready.wait(60)
        prod.send(TOPIC, b"behind-the-hole")
        os.kill(pr.pid, signal.SIGKILL)
        pr.join(10)
        t0 = time.monotonic()
        got = drain(c, lambda r: r.value == b"behind-the-hole", 5)
        waited = time.monotonic() - t0
    values = [r.value for r in got]
    assert values == [b"before", b"behind-the-hole"], values
    assert waited < 1.0, f"readers were stalled {waited:.3f} s by the dead claim"
    # the hole costs one offset: 0 before, 1 the dead claim, 2 behind it
    assert [r.offset for r in got] == [0, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reserve", [False, True], ids=["killed-before-reserve", "killed-while-writing"])
def test_dead_last_claim_does_not_hold_a_caught_up_reader_below_the_end(bus, procs, reserve):
    """The dead claim is the newest: no record behind it moves the reader's position over the gap.

    A reader that has read everything must still reach ``end_offsets`` (which
    counts the lost offset), and a group's committed offset with it, or its lag
    would stay 1 for good.
    """
    bus.create_topic(TOPIC, partitions=1, config={"ring.bytes": 65536})
    tp = ("kill", 0)
    with bus.producer() as prod, bus.consumer(TOPIC, group_id="g", auto_offset_reset="earliest") as c:
        prod.send(TOPIC, b"before")
        got = drain(c, lambda r: r.value == b"before", 10)
        assert [r.value for r in got] == [b"before"]
        assert c.position(tp) == 1
        ready = SPAWN.Event()
        pr = procs.start(abandon_main, bus.data_dir, reserve, ready)
        assert ready.wait(60)
        assert c.end_offsets([tp]) == {tp: 2}  # the claim took offset 1
        os.kill(pr.pid, signal.SIGKILL)
        pr.join(10)
        t0 = time.monotonic()
        while c.position(tp) < 2 and time.monotonic() - t0 < 5:
            assert not c.poll(timeout_ms=50), "a record appeared from the dead claim"
        waited = time.monotonic() - t0
        assert c.position(tp) == 2, "a caught-up reader stayed below end_offsets behind the dead claim"
        assert waited < 1.0, f"the position passed the dead claim after {waited:.3f} s"
        c.commit()
        assert c.committed(tp) == 2
        prod.send(TOPIC, b"after")
        got = drain(c, lambda r: r.value == b"after", 5)
    assert [(r.offset, r.value) for r in got] == [(2, b"after")]
