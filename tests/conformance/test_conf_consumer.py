"""Consumer behaviour on both backends: max_records, assignment, auto_offset_reset, seeks past the end."""

from __future__ import annotations

import threading
import time

import pytest

from shmbus import ConcurrentAccessError, OffsetOutOfRangeError, TopicPartition, UnknownTopicError

TP = TopicPartition
pytestmark = pytest.mark.timeout(180)


def test_poll_max_records(backend, drain):
    t = backend.topic(1)
    with backend.bus.producer() as p:
        p.send_batch(t, [b"%d" % i for i in range(30)], partition=0)
    with backend.bus.consumer(auto_offset_reset="earliest", max_poll_records=4) as c:
        c.assign([TP(t, 0)])
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 30 and time.monotonic() < deadline:
            got = c.poll(timeout_ms=500)
            n = sum(len(v) for v in got.values())
            assert n <= 4
            seen += [r.offset for v in got.values() for r in v]
            got = c.poll(timeout_ms=500, max_records=2)
            assert sum(len(v) for v in got.values()) <= 2
            seen += [r.offset for v in got.values() for r in v]
        assert seen == list(range(30))


def test_assign_subscribe_unsubscribe_assignment(backend, drain):
    a = backend.topic(2)
    b = backend.topic(3)
    with backend.bus.producer() as p:
        p.send(a, b"a1", partition=1)
        p.send(b, b"b2", partition=2)
    all_a = {TP(a, q) for q in range(a.partitions)}
    all_b = {TP(b, q) for q in range(b.partitions)}
    with backend.bus.consumer(auto_offset_reset="earliest") as c:
        assert c.assignment() == set()
        assert c.poll(timeout_ms=0) == {}
        c.assign([TP(a, 1), TP(b, 2)])
        assert c.assignment() == {TP(a, 1), TP(b, 2)}
        assert sorted(r.value for r in drain(c, 2)) == [b"a1", b"b2"]
        c.subscribe([a, b])
        assert c.assignment() == all_a | all_b
        assert c.subscription() == {a, b}
        c.unsubscribe()
        assert c.assignment() == set() and c.poll(timeout_ms=0) == {}
        c.subscribe(a)
        assert c.assignment() == all_a
        assert c.partitions_for_topic(b) == set(range(b.partitions))
        assert {a, b} <= c.topics()
    with backend.bus.consumer() as c:
        with pytest.raises(UnknownTopicError):
            c.assign([TP(a, a.partitions)])
        with pytest.raises(TypeError):
            c.assign(["not a partition"])


def test_auto_offset_reset_none_without_a_position_raises(backend, drain):
    t = backend.topic(1)
    tp = TP(t, 0)
    with backend.bus.producer() as p:
        p.send(t, b"v", partition=0)
    with backend.bus.consumer(auto_offset_reset="none") as c:
        c.assign([tp])
        with pytest.raises(OffsetOutOfRangeError):
            c.position(tp)
        c.seek(tp, 0)  # with a position it reads
        assert [r.value for r in drain(c, 1)] == [b"v"]


def test_auto_offset_reset_none_raises_from_poll(backend):
    t = backend.topic(1)
    with backend.bus.producer() as p:
        p.send(t, b"v", partition=0)
    with backend.bus.consumer(auto_offset_reset="none") as c:
        c.assign([TP(t, 0)])
        with pytest.raises(OffsetOutOfRangeError):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                c.poll(timeout_ms=500)


@pytest.mark.parametrize("reset, expect", [("earliest", [0, 1, 2]), ("latest", []), ("none", OffsetOutOfRangeError)])
def test_seek_past_the_end(backend, reset, expect, drain):
    t = backend.topic(1)
    tp = TP(t, 0)
    with backend.bus.producer() as p:
        p.send_batch(t, [b"a", b"b", b"c"], partition=0)
    with backend.bus.consumer(auto_offset_reset=reset) as c:
        c.assign([tp])
        c.seek(tp, 3)  # the end itself is in range
        assert c.poll(timeout_ms=500) == {} and c.position(tp) == 3
        c.seek(tp, 50)
        if expect is OffsetOutOfRangeError:
            with pytest.raises(OffsetOutOfRangeError):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    c.poll(timeout_ms=500)
        elif expect:
            assert [r.offset for r in drain(c, len(expect))] == expect
        else:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert c.poll(timeout_ms=200) == {}
            assert c.position(tp) == 3


def test_a_second_thread_is_refused(backend):
    t = backend.topic(1)
    errors = []
    with backend.bus.consumer(t) as c:
        inside = threading.Event()

        def blocker():
            inside.set()
            c.poll(timeout_ms=3000)

        th = threading.Thread(target=blocker)
        th.start()
        inside.wait(10)
        time.sleep(0.3)
        try:
            c.poll(timeout_ms=0)
        except ConcurrentAccessError as e:
            errors.append(e)
        th.join(30)
    assert errors, "a poll from a second thread while another polled was not refused"
