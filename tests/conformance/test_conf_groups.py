"""Consumer groups on both backends: commits, committed offsets, a restart from them, two members sharing partitions."""

from __future__ import annotations

import time
import uuid

import pytest

import shmbus
from shmbus import CommitFailedError, TopicPartition

pytestmark = pytest.mark.timeout(240)


def _group():
    return f"g-{uuid.uuid4().hex[:10]}"


def test_commit_committed_and_restart_from_the_commit(backend, drain):
    t = backend.topic(1)
    tp = TopicPartition(t, 0)
    g = _group()
    with backend.bus.producer() as p:
        for i in range(6):
            p.send(t, f"v{i}".encode(), partition=0)
        with backend.bus.consumer(t, group_id=g, auto_offset_reset="earliest", enable_auto_commit=False) as c:
            recs = [r for r in drain(c, 6) if r.partition == 0]
            assert [r.offset for r in recs] == list(range(6))
            assert c.committed(tp) is None
            c.commit({tp: 4})
            assert c.committed(tp) == 4
            c.commit()
            assert c.committed(tp) == 6
        p.send(t, b"after", partition=0)
    with backend.bus.consumer(t, group_id=g, auto_offset_reset="earliest") as c:
        recs = drain(c, 1)
        assert [(r.offset, r.value) for r in recs] == [(6, b"after")]
        assert c.committed(tp) == 6


def test_commit_without_a_group_and_of_a_partition_not_owned(backend):
    t = backend.topic(1)
    with backend.bus.consumer(t) as c:
        with pytest.raises(CommitFailedError):
            c.commit()
        assert c.committed(TopicPartition(t, 0)) is None


def _assignments(consumers, n, timeout_s=120.0):
    """Poll every member until their assignments are disjoint and cover the n partitions."""
    deadline = time.monotonic() + timeout_s
    records = []
    while time.monotonic() < deadline:
        for c in consumers:
            for recs in c.poll(timeout_ms=200).values():
                records.extend(recs)
        sets = [c.assignment() for c in consumers]
        if all(sets) and sum(len(s) for s in sets) == n and len(set().union(*sets)) == n:
            return sets, records
    raise AssertionError(f"the group did not settle in {timeout_s}s: {[c.assignment() for c in consumers]}")


def test_two_members_share_the_partitions(backend):
    t = backend.topic(4)
    n = t.partitions
    g = _group()
    events = []

    class Listener:
        def on_partitions_assigned(self, tps):
            events.append(("assigned", tps))

        def on_partitions_revoked(self, tps):
            events.append(("revoked", tps))

    c1 = backend.bus.consumer(group_id=g, auto_offset_reset="earliest")
    c2 = backend.bus.consumer(group_id=g, auto_offset_reset="earliest")
    try:
        c1.subscribe([t], listener=Listener())
        c2.subscribe([t])
        (a1, a2), early = _assignments([c1, c2], n)
        assert a1 | a2 == {TopicPartition(t, p) for p in range(n)} and not a1 & a2
        assert any(kind == "assigned" for kind, _ in events)
        with backend.bus.producer() as p:
            for q in range(n):
                p.send(t, f"p{q}".encode(), partition=q)
        got = list(early)
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for c in (c1, c2):
                for recs in c.poll(timeout_ms=200).values():
                    got.extend(recs)
        assert sorted(r.value for r in got) == sorted(f"p{q}".encode() for q in range(n))
        owner = {tp: i for i, s in enumerate((c1.assignment(), c2.assignment())) for tp in s}
        assert all(TopicPartition(r.topic, r.partition) in owner for r in got)
    finally:
        c1.close()
        c2.close()
    assert ("revoked" in [kind for kind, _ in events])


def test_list_and_describe_groups(backend, drain):
    for api in ("ListGroups", "DescribeGroups"):
        if backend.name == "kafka" and backend.bus.supports(api) is False:
            with pytest.raises(shmbus.UnsupportedOperationError, match=api):
                backend.bus.list_groups() if api == "ListGroups" else backend.bus.describe_group("g")
            pytest.skip(f"the cluster serves no {api} request (bus.supports({api!r}) is False): {backend.bus.url}")
    t = backend.topic(1)
    tp = TopicPartition(t, 0)
    g = _group()
    assert backend.bus.describe_group(g).state == "Dead"
    with backend.bus.producer() as p:
        for i in range(3):
            p.send(t, b"x", partition=0)
    with backend.bus.consumer(t, group_id=g, auto_offset_reset="earliest", enable_auto_commit=False) as c:
        drain(c, 3)
        c.commit({tp: 2})
        assert g in backend.bus.list_groups()
        d = backend.bus.describe_group(g)
        assert d.group_id == g and len(d.members) == 1 and tp in d.members[0].assignment
        assert d.offsets[tp].committed == 2 and d.offsets[tp].end_offset == 3 and d.offsets[tp].lag == 1


def test_a_pattern_subscription_follows_matching_topics(backend):
    a = backend.topic(1)
    b = backend.topic(1)
    with backend.bus.producer() as p:
        p.send(a, b"in-a", partition=0)
        p.send(b, b"in-b", partition=0)
    with backend.bus.consumer(group_id=_group(), auto_offset_reset="earliest") as c:
        c.subscribe(pattern=f"^({a}|{b})$")
        got = []
        deadline = time.monotonic() + 120
        while len(got) < 2 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                got.extend(recs)
        assert sorted(r.value for r in got) == [b"in-a", b"in-b"]
        assert {tp.topic for tp in c.assignment()} == {a, b}
