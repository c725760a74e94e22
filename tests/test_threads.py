"""Threads: a Consumer refuses a second thread; a Producer is shared by threads safely."""

from __future__ import annotations

import threading
import time

import pytest

from shmbus import TopicPartition
from shmbus.errors import ConcurrentAccessError, ShmbusError


@pytest.mark.timeout(120)
def test_two_threads_polling_one_consumer_get_a_refusal_never_wrong_records(bus):
    """Two threads poll one consumer while a third sends: what is returned is right, the other thread is refused."""
    bus.create_topic("t", partitions=1, config={"ring.bytes": 1 << 16})
    tp = TopicPartition("t", 0)
    n = 30000
    got = []  # (offset, value) of every record returned, by either thread
    batches = []  # the offsets each poll returned (the two threads append in either order)
    refused = []
    other = []
    stop = threading.Event()

    def send():
        with bus.producer() as p:
            for i in range(n):
                md = p.send("t", b"%d" % i)
                assert md.offset == i
                if i % 500 == 0:
                    time.sleep(0.001)  # records keep flowing while the readers take turns

    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])

        def read():
            while not stop.is_set():
                try:
                    out = c.poll(timeout_ms=20, max_records=300)
                except ConcurrentAccessError as e:
                    refused.append(str(e))
                    continue
                except Exception as e:  # noqa: BLE001 - any other error is a failure of the test
                    other.append(repr(e))
                    return
                for recs in out.values():
                    got.extend((r.offset, r.value) for r in recs)
                    batches.append([r.offset for r in recs])

        readers = [threading.Thread(target=read) for _ in range(2)]
        sender = threading.Thread(target=send)
        for t in readers:
            t.start()
        sender.start()
        sender.join(60)
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline and not other:
            time.sleep(0.01)
        stop.set()
        for t in readers:
            t.join(10)
    assert not other, other[:3]
    wrong = [(o, v) for o, v in got if v != b"%d" % o]
    assert not wrong, f"records carrying another offset's value: {wrong[:5]}"
    offsets = [o for o, _ in got]
    assert len(offsets) == len(set(offsets)), "duplicates"
    assert all(b == list(range(b[0], b[0] + len(b))) for b in batches if b), "a poll out of order or with a gap"
    # every poll takes up where the one before it (by either thread) ended: sorted by their first
    # offsets, the polls join up with no gap
    joined = [o for b in sorted((b for b in batches if b), key=lambda b: b[0]) for o in b]
    assert joined == list(range(n)), f"skips: got {len(offsets)} of {n}"
    assert refused, "the second thread was never refused"
    assert "one thread at a time" in refused[0] and "one consumer per thread" in refused[0]


def test_a_callers_own_lock_makes_sharing_work_and_reentry_is_allowed(bus):
    """Serialized by the caller, two threads may share a consumer; nested calls of one thread are fine."""
    bus.create_topic("t")
    tp = TopicPartition("t", 0)
    with bus.producer() as p:
        for i in range(100):
            p.send("t", b"%d" % i)
    lock = threading.Lock()
    got = []
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])

        def read():
            for _ in range(50):
                with lock:
                    for recs in c.poll(timeout_ms=5, max_records=3).values():
                        got.extend(r.offset for r in recs)

        ts = [threading.Thread(target=read) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert sorted(got) == list(range(100)) and len(set(got)) == 100
        c.seek(tp, 5)
        assert next(iter(c)).offset == 5  # __next__ calls poll: the same thread enters twice


def test_a_second_thread_is_refused_while_one_sleeps_in_poll(bus):
    bus.create_topic("t")
    tp = TopicPartition("t", 0)
    with bus.consumer(auto_offset_reset="latest") as c:
        c.assign([tp])
        c.poll()
        t = threading.Thread(target=c.poll, kwargs={"timeout_ms": 1500})
        t.start()
        time.sleep(0.3)
        try:
            for call in (lambda: c.poll(), lambda: c.seek(tp, 0), lambda: c.position(tp), lambda: c.poll_batch(),
                         lambda: c.close()):
                with pytest.raises(ConcurrentAccessError, match="one thread at a time") as ei:
                    call()
                assert isinstance(ei.value, ShmbusError)
        finally:
            t.join(10)
        assert c.position(tp) == 0  # free again once the first thread returned


@pytest.mark.timeout(120)
def test_a_producer_shared_by_8_threads_writes_every_record_once_at_its_offset(bus):
    bus.create_topic("t", partitions=3)
    per = 3000
    acked = {}  # (partition, offset) -> value
    errors = []
    lock = threading.Lock()
    with bus.producer() as p:

        def send(k):
            mine = {}
            try:
                for i in range(per):
                    v = b"%d-%d" % (k, i)
                    if i % 3 == 0:
                        md = p.send("t", v)
                    elif i % 3 == 1:
                        md = p.send("t", v, key=b"k%d" % (i % 17), headers=[("h", b"%d" % k)])
                    else:
                        md = p.send("t", v, partition=i % 3)
                    mine[(md.partition, md.offset)] = v
                    if i % 500 == 0:
                        vals = [b"%d-b%d-%d" % (k, i, j) for j in range(20)]
                        b = p.send_batch("t", vals)
                        for j, v in enumerate(vals):
                            mine[(int(b.partitions[j]), int(b.offsets[j]))] = v
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            with lock:
                assert not set(mine) & set(acked), "two sends acknowledged at one offset"
                acked.update(mine)

        ts = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
    assert not errors, errors[:3]
    assert len(acked) == 8 * (per + 20 * ((per + 499) // 500))
    ends = bus.describe_topic("t").partitions
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("t", q) for q in range(3)])
        log = {}
        total = sum(pd.end_offset for pd in ends)
        deadline = time.monotonic() + 60
        while len(log) < total and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=100, max_records=5000).items():
                for r in recs:
                    assert (tp.partition, r.offset) not in log
                    log[(tp.partition, r.offset)] = r.value
    assert total == len(acked), "the log holds records nobody was told about, or lacks some"
    assert log == acked


@pytest.mark.timeout(60)
def test_a_rebalance_listener_may_call_the_consumer_from_inside_poll(bus):
    """Listener callbacks run inside poll, on the consumer's thread: their calls are not refused."""
    bus.create_topic("t", partitions=2)
    with bus.producer() as p:
        for i in range(10):
            p.send("t", b"%d" % i, partition=0)
    seen = []

    class Listener:
        def on_partitions_assigned(self, tps):
            for tp in tps:
                try:
                    c.seek(tp, 3) if tp.partition == 0 else c.seek_to_beginning(tp)
                    seen.append((tp.partition, c.position(tp)))
                except Exception as e:  # noqa: BLE001 (the listener's errors are logged, not raised)
                    seen.append(repr(e))

        def on_partitions_revoked(self, tps):
            try:
                c.commit()
            except Exception as e:  # noqa: BLE001
                seen.append(repr(e))

    with bus.consumer(group_id="g", auto_offset_reset="earliest") as c:
        c.subscribe(["t"], listener=Listener())
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 7 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                got.extend(r.offset for r in recs)
        assert sorted(seen) == [(0, 3), (1, 0)], seen
        assert got == list(range(3, 10))
        c.unsubscribe()  # revokes: the listener commits from inside
        assert not [s for s in seen if isinstance(s, str)], seen
