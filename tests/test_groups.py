"""Consumer groups against a real supervisor: join, rebalance, commits, fencing, restarts, topics.

Members here live in the test process (each with its own connection and
background thread); the multi-process failover tests are in
tests/concurrency/test_group_failover.py.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from helpers.waiting import SPAWN

from shmbus import Bus, TopicPartition
from shmbus.errors import (
    CommitFailedError,
    InvalidConfigError,
    ShmbusError,
    SupervisorNotRunningError,
)
from shmbus.client import control as client

pytestmark = pytest.mark.timeout(120)
TP = TopicPartition


def settle(consumers, cond, timeout_s=10.0, sink=None):
    """Poll every consumer in turn until ``cond()``; records go to ``sink`` (a list) if given."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in consumers:
            for recs in c.poll(timeout_ms=5).values():
                if sink is not None:
                    sink.extend(recs)
        if cond():
            return
    raise AssertionError(f"not settled within {timeout_s} s: {[sorted(c.assignment()) for c in consumers]}")


def produce(bus, topic, n, parts):
    with bus.producer() as p:
        for i in range(n):
            p.send(topic, b"%d" % i, partition=i % parts)


def all_tps(topic, n):
    return {TP(topic, p) for p in range(n)}


def test_join_read_commit_describe_and_list(bus):
    bus.create_topic("t", 4)
    produce(bus, "t", 100, 4)
    assert bus.list_groups() == []
    with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
        got = []
        settle([c], lambda: len(got) == 100, sink=got)
        assert c.assignment() == all_tps("t", 4)
        assert sorted(int(r.value) for r in got) == list(range(100))
        assert c.committed(TP("t", 0)) is None
        c.commit()
        assert [c.committed(TP("t", p)) for p in range(4)] == [25] * 4
        c.commit({TP("t", 1): 20})
        assert c.committed(TP("t", 1)) == 20
        d = bus.describe_group("g")
        assert d.state == "Stable" and d.generation >= 1
        (m,) = d.members
        assert m.pid == os.getpid() and m.assignment == all_tps("t", 4)
        assert d.offsets[TP("t", 1)] == (20, 25, 5)
        assert d.offsets[TP("t", 0)] == (25, 25, 0)
        assert bus.list_groups() == ["g"]
    d = bus.describe_group("g")
    assert d.state == "Empty" and d.members == [] and d.offsets[TP("t", 0)].committed == 25


def test_members_share_partitions_and_rebalance_on_join_and_leave(bus):
    bus.create_topic("t", 6)
    events = []

    class Listener:
        def __init__(self, name):
            self.name = name

        def on_partitions_revoked(self, tps):
            events.append((self.name, "revoked", frozenset(tps)))

        def on_partitions_assigned(self, tps):
            events.append((self.name, "assigned", frozenset(tps)))

    c1 = bus.consumer(group_id="g", partition_assignment_strategy="sticky")
    c1.subscribe(["t"], listener=Listener("c1"))
    settle([c1], lambda: c1.assignment() == all_tps("t", 6))
    c2 = bus.consumer(group_id="g", partition_assignment_strategy="sticky")
    c2.subscribe(["t"], listener=Listener("c2"))
    try:
        settle([c1, c2], lambda: len(c1.assignment()) == 3 and len(c2.assignment()) == 3)
        assert c1.assignment() | c2.assignment() == all_tps("t", 6)
        # c1 gave up three partitions before c2 got them
        i_rev = next(i for i, e in enumerate(events) if e[:2] == ("c1", "revoked"))
        i_asg = next(i for i, e in enumerate(events) if e[:2] == ("c2", "assigned"))
        assert i_rev < i_asg and events[i_rev][2] == events[i_asg][2]
        d = bus.describe_group("g")
        assert d.state == "Stable" and len(d.members) == 2
        c1.close()
        settle([c2], lambda: c2.assignment() == all_tps("t", 6))
    finally:
        c1.close()
        c2.close()


def test_a_new_member_resumes_from_the_committed_offset(bus):
    bus.create_topic("t", 2)
    produce(bus, "t", 40, 2)
    with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
        got = []
        settle([c], lambda: len(got) == 40, sink=got)
        c.commit({TP("t", 0): 15, TP("t", 1): 20})
    produce(bus, "t", 10, 2)
    with bus.consumer("t", group_id="g", auto_offset_reset="earliest") as c:
        got = []
        settle([c], lambda: len(got) == 5 + 5 + 5, sink=got)
        time.sleep(0.1)
        for recs in c.poll(timeout_ms=100).values():
            got.extend(recs)
        assert sorted((r.partition, r.offset) for r in got) == \
            [(0, o) for o in range(15, 25)] + [(1, o) for o in range(20, 25)]
    # no committed offset: auto_offset_reset decides ("latest": nothing old)
    with bus.consumer("t", group_id="other", auto_offset_reset="latest") as c:
        settle([c], lambda: len(c.assignment()) == 2)
        assert c.poll(timeout_ms=50) == {}
        assert {c.position(tp) for tp in c.assignment()} == {25}


def test_auto_commit_at_poll_time_and_on_close(bus):
    bus.create_topic("t", 1)
    produce(bus, "t", 10, 1)
    c = bus.consumer("t", group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=50)
    got = []
    settle([c], lambda: len(got) == 10, sink=got)
    time.sleep(0.08)
    c.poll(timeout_ms=0)  # the interval passed: this poll commits what the last one returned
    assert c.committed(TP("t", 0)) == 10
    produce(bus, "t", 5, 1)
    settle([c], lambda: len(got) == 15, sink=got)
    c.close()
    with Bus(bus.data_dir) as b2, b2.consumer(group_id="g") as c2:
        assert c2.committed(TP("t", 0)) == 15


def test_fenced_member_cannot_commit_and_leaves_the_offset_alone(bus):
    bus.create_topic("t", 2)
    produce(bus, "t", 20, 2)
    tp = TP("t", 0)
    a = bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False,
                     max_poll_interval_ms=300)
    b = None
    try:
        settle([a], lambda: a.assignment() == all_tps("t", 2))
        a.commit({tp: 3})
        # a stops polling (stuck in processing); b joins; a is removed after max_poll_interval_ms
        b = bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
        deadline = time.monotonic() + 10
        while b.assignment() != all_tps("t", 2) and time.monotonic() < deadline:
            b.poll(timeout_ms=20)
        assert b.assignment() == all_tps("t", 2)
        b.commit({tp: 7})
        with pytest.raises(CommitFailedError, match="commit refused"):
            a.commit({tp: 5})
        assert b.committed(tp) == 7
        # a's next poll learns it was removed, drops everything and joins again
        settle([a, b], lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1)
        mine = next(iter(b.assignment()))
        with pytest.raises(CommitFailedError):
            a.commit({mine: 1})  # owned by b
        assert b.committed(mine) == (7 if mine == tp else None)
    finally:
        a.close()
        if b is not None:
            b.close()


def test_committed_offsets_survive_a_supervisor_restart(bus):
    bus.create_topic("t", 3)
    produce(bus, "t", 30, 3)
    live = bus.consumer("t", group_id="live", auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
            got = []
            settle([c], lambda: len(got) == 30, sink=got)
            c.commit({TP("t", 0): 4, TP("t", 1): 5, TP("t", 2): 6})
        settle([live], lambda: len(live.assignment()) == 3)
        live.commit({TP("t", 0): 1})
        assert client.stop(bus.data_dir)
        path = os.path.join(bus.data_dir, "groups", "g.json")
        with open(path) as f:
            assert json.load(f)["offsets"] == {"t": {"0": 4, "1": 5, "2": 6}}
        d = bus.describe_group("g")  # no supervisor: read from the checkpoint
        assert d.state == "Empty" and d.offsets[TP("t", 2)].committed == 6
        assert "g" in bus.list_groups()
        client.start(bus.data_dir)
        d = bus.describe_group("g")
        assert {tp: o.committed for tp, o in d.offsets.items()} == {TP("t", 0): 4, TP("t", 1): 5, TP("t", 2): 6}
        with bus.consumer("t", group_id="g", auto_offset_reset="earliest") as c:
            got = []
            settle([c], lambda: len(got) == 30 - 15, sink=got)
            assert min(r.offset for r in got if r.partition == 2) == 6
        # the member that lived through the restart lost its partitions, joined again and got them back
        settle([live], lambda: len(live.assignment()) == 3 and bus.describe_group("live").state == "Stable")
        assert live.committed(TP("t", 0)) == 1
        live.commit({TP("t", 0): 2})
        assert live.committed(TP("t", 0)) == 2
    finally:
        live.close()


def test_topics_created_and_deleted_rebalance_the_group(bus):
    bus.create_topic("a", 2)
    with bus.consumer("a", "b", group_id="g") as c, bus.consumer(group_id="p") as cp:
        cp.subscribe(pattern=r"p-.*")
        settle([c], lambda: c.assignment() == all_tps("a", 2))
        bus.create_topic("b", 3)
        bus.create_topic("p-1", 1)
        settle([c, cp], lambda: c.assignment() == all_tps("a", 2) | all_tps("b", 3)
               and cp.assignment() == all_tps("p-1", 1))
        bus.delete_topic("b")
        settle([c], lambda: c.assignment() == all_tps("a", 2))


def test_no_supervisor_and_no_autostart_says_how_to_start_it(data_dir):
    with Bus(data_dir, autostart=False) as b:
        b.create_topic("t", 1)
        with pytest.raises(SupervisorNotRunningError, match=r"shmbus serve --data-dir"):
            b.consumer("t", group_id="g")
        assert b.describe_group("g").state == "Dead"
        assert b.list_groups() == []


def test_bad_arguments(bus):
    bus.create_topic("t", 1)
    with pytest.raises(InvalidConfigError, match="group_id"):
        bus.consumer("t", group_id="")
    with pytest.raises(InvalidConfigError, match="partition_assignment_strategy"):
        bus.consumer("t", group_id="g", partition_assignment_strategy="nope")
    with bus.consumer(group_id="g") as c:
        with pytest.raises(ShmbusError, match="assign"):
            c.assign([TP("t", 0)])
        with pytest.raises(ValueError, match="offset"):
            c.commit({TP("t", 0): -1})
    with bus.consumer() as c, pytest.raises(CommitFailedError, match="group_id"):
        c.commit()


def stopped_member_main(data_dir, q):
    from shmbus import Bus
    from shmbus.errors import CommitFailedError

    with Bus(data_dir, autostart=False) as bus:
        c = bus.consumer("t", group_id="g", session_timeout_ms=400, enable_auto_commit=False,
                         auto_offset_reset="earliest")
        while len(c.assignment()) < 2:
            c.poll(timeout_ms=20)
        q.put("owns")
        q.get()  # the test SIGSTOPs us here, later SIGCONTs us and puts "commit"
        try:
            c.commit({TopicPartition("t", 0): 9})
            q.put("committed")
        except CommitFailedError as e:
            q.put(f"CommitFailedError: {e}")
        c.close()


def test_a_hung_process_is_removed_after_session_timeout_and_fenced(bus, procs):
    """SIGSTOP stops every thread, heartbeats too: session_timeout_ms removes the member."""
    bus.create_topic("t", 2)
    q_to, q_from = SPAWN.Queue(), SPAWN.Queue()

    p = procs.start(stopped_member_main_wrapper, bus.data_dir, q_from, q_to)
    assert q_from.get(timeout=60) == "owns"
    os.kill(p.pid, signal.SIGSTOP)
    try:
        with bus.consumer("t", group_id="g", enable_auto_commit=False) as c:
            settle([c], lambda: c.assignment() == all_tps("t", 2), timeout_s=20)
            c.commit({TP("t", 0): 5})
            os.kill(p.pid, signal.SIGCONT)
            q_to.put("commit")
            answer = q_from.get(timeout=30)
            assert answer.startswith("CommitFailedError"), answer
            assert c.committed(TP("t", 0)) == 5
    finally:
        os.kill(p.pid, signal.SIGCONT)
    procs.join_all(30)


def stopped_member_main_wrapper(data_dir, q_out, q_in):
    class Q:
        def put(self, x):
            q_out.put(x)

        def get(self):
            return q_in.get()

    stopped_member_main(data_dir, Q())
