"""The assignors as pure functions: coverage, one owner, balance, stickiness, idle extras."""

from __future__ import annotations

import doctest
import random

import pytest

from shmbus.core import assignors
from shmbus.core.assignors import ASSIGNORS, moved
from shmbus.records import TopicPartition as TP

NAMES = ["range", "roundrobin", "sticky"]


def check_valid(subs, parts, out):
    assert set(out) == set(subs)
    owners = {}
    for m, tps in out.items():
        for tp in tps:
            assert tp not in owners, f"{tp} has two owners: {owners[tp]} and {m}"
            assert tp.topic in subs[m], f"{m} got {tp} it did not subscribe to"
            owners[tp] = m
    want = {TP(t, p) for t in set().union(*subs.values()) if t in parts for p in range(parts[t])}
    assert set(owners) == want


def counts(out):
    return sorted(len(v) for v in out.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 7, 10])
def test_one_topic_every_partition_one_owner_balanced(name, k):
    subs = {f"m{i}": {"t"} for i in range(k)}
    out = ASSIGNORS[name](subs, {"t": 6}, {})
    check_valid(subs, {"t": 6}, out)
    c = counts(out)
    assert c[-1] - c[0] <= 1
    if k > 6:
        assert c.count(0) == k - 6  # extra members idle


def test_range_and_roundrobin_shapes():
    subs = {"a": {"t", "u"}, "b": {"t", "u"}}
    r = ASSIGNORS["range"](subs, {"t": 3, "u": 3}, {})
    assert r["a"] == {TP("t", 0), TP("t", 1), TP("u", 0), TP("u", 1)}  # range: per topic, first member +1
    rr = ASSIGNORS["roundrobin"](subs, {"t": 3, "u": 3}, {})
    assert counts(rr) == [3, 3]
    assert rr["a"] == {TP("t", 0), TP("t", 2), TP("u", 1)}


@pytest.mark.parametrize("name", NAMES)
def test_heterogeneous_subscriptions_and_missing_topics(name):
    subs = {"a": {"t"}, "b": {"t", "u"}, "c": {"u", "gone"}}
    parts = {"t": 4, "u": 5}
    out = ASSIGNORS[name](subs, parts, {})
    check_valid(subs, parts, out)


@pytest.mark.parametrize("name", NAMES)
def test_no_members_no_partitions(name):
    assert ASSIGNORS[name]({}, {"t": 3}, {}) == {}
    assert ASSIGNORS[name]({"a": {"t"}}, {}, {}) == {"a": set()}


def test_sticky_join_moves_only_what_the_newcomer_takes():
    parts = {"t": 6}
    prev = {}
    for k in range(1, 9):
        subs = {f"m{i}": {"t"} for i in range(k)}
        out = ASSIGNORS["sticky"](subs, parts, prev)
        check_valid(subs, parts, out)
        assert counts(out)[-1] - counts(out)[0] <= 1
        if prev:
            new = f"m{k - 1}"
            assert moved(prev, out) == len(out[new]), (prev, out)
            for m, had in prev.items():
                assert out[m] <= had  # the others only give
        prev = out


def test_sticky_leave_moves_only_the_leavers_partitions():
    parts = {"t": 7, "u": 3}
    subs = {f"m{i}": {"t", "u"} for i in range(4)}
    prev = ASSIGNORS["sticky"](subs, parts, {})
    del subs["m1"]
    out = ASSIGNORS["sticky"](subs, parts, prev)
    check_valid(subs, parts, out)
    for m in subs:
        assert prev[m] <= out[m]
    assert counts(out)[-1] - counts(out)[0] <= 1


def test_sticky_moves_fewer_than_range_and_roundrobin():
    parts = {"t": 12}
    total = {}
    for name in NAMES:
        prev, n = {}, 0
        for k in [1, 2, 3, 4, 5, 4, 3, 5, 2]:
            subs = {f"m{i}": {"t"} for i in range(k)}
            out = ASSIGNORS[name](subs, parts, prev)
            n += moved(prev, out)
            prev = out
        total[name] = n
    assert total["sticky"] < total["range"] and total["sticky"] < total["roundrobin"], total


def test_sticky_random_histories_stay_valid_and_balanced():
    rng = random.Random(7)
    prev = {}
    parts = {"a": 5, "b": 9}
    for _ in range(200):
        k = rng.randint(1, 12)
        subs = {f"m{i:02d}": {"a", "b"} for i in rng.sample(range(20), k)}
        out = ASSIGNORS["sticky"](subs, parts, prev)
        check_valid(subs, parts, out)
        c = counts(out)
        assert c[-1] - c[0] <= 1
        prev = out


def test_registry_choose_and_plugins(monkeypatch):
    assert assignors.choose([["sticky", "range"], ["range", "sticky"]]) == "sticky"
    assert assignors.choose([["sticky"], ["roundrobin"]]) == "range"  # nothing shared
    with pytest.raises(KeyError, match="unknown assignor.*range"):
        assignors.get("nope")

    @assignors.register("everything-to-first")
    def first(subs, parts, prev):
        out = {m: set() for m in subs}
        if subs:
            out[min(subs)] = {TP(t, p) for t in parts for p in range(parts[t])}
        return out

    try:
        assert assignors.get("everything-to-first")({"b": {"t"}, "a": {"t"}}, {"t": 2}, {})["a"] == {TP("t", 0), TP("t", 1)}
    finally:
        del ASSIGNORS["everything-to-first"]


def test_docstring_example():
    failures, _ = doctest.testmod(assignors)
    assert failures == 0
