"""Partition assignors: which member of a consumer group reads which partition.

An assignor is a pure function, registered under a name (the value of the
consumer's ``partition_assignment_strategy``)::

    assign(subscriptions, partitions, previous) -> {member_id: set[TopicPartition]}

- ``subscriptions``: ``{member_id: set of topic names}``, what each member subscribed to;
- ``partitions``: ``{topic: partition count}`` of the subscribed topics that exist;
- ``previous``: ``{member_id: set[TopicPartition]}``, the assignment before this
  rebalance (``sticky`` keeps what it can of it; the others ignore it).

The result has an entry (maybe empty) for every member, and gives every
partition of every subscribed topic to exactly one member subscribed to that
topic. Members beyond the partition count get an empty set and sit idle.
The coordinator (in the supervisor) runs the assignor, never the clients.

Worked example::

    >>> from shmbus.core.assignors import ASSIGNORS
    >>> subs = {"m1": {"t"}, "m2": {"t"}}
    >>> sorted(p for _, p in ASSIGNORS["range"](subs, {"t": 5}, {})["m1"])
    [0, 1, 2]
    >>> sorted(p for _, p in ASSIGNORS["roundrobin"](subs, {"t": 5}, {})["m1"])
    [0, 2, 4]

A third member joins; ``sticky`` moves only what the newcomer needs::

    >>> prev = ASSIGNORS["range"](subs, {"t": 5}, {})
    >>> new = ASSIGNORS["sticky"]({**subs, "m3": {"t"}}, {"t": 5}, prev)
    >>> sum(1 for m in prev for tp in prev[m] if tp not in new[m])
    1

Your own assignor: decorate a function with ``@register("name")`` in a module
the supervisor imports: list such modules in ``$SHMBUS_ASSIGNORS``
(comma-separated) in the environment of the supervisor and of the consumers.
Safe across threads and processes (pure functions, a registry filled at import).
"""

from __future__ import annotations

import importlib
import os

from shmbus.records import TopicPartition

ASSIGNORS: dict = {}


def register(name: str):
    """Decorator: make ``fn`` the assignor called ``name``."""

    def deco(fn):
        ASSIGNORS[name] = fn
        return fn

    return deco


def load_plugins() -> None:
    """Import the modules named in ``$SHMBUS_ASSIGNORS`` (they call ``register``)."""
    for mod in filter(None, (m.strip() for m in os.environ.get("SHMBUS_ASSIGNORS", "").split(","))):
        importlib.import_module(mod)


def get(name: str):
    """The assignor called ``name``; KeyError listing the known names if none."""
    if name not in ASSIGNORS:
        load_plugins()
    try:
        return ASSIGNORS[name]
    except KeyError:
        raise KeyError(f"unknown assignor: name={name!r} (one of {', '.join(sorted(ASSIGNORS))})") from None


def choose(preferences: list) -> str:
    """The strategy every member supports, in the order of the first member's preference.

    ``preferences``: one list of names per member. Falls back to ``range``
    when the members share none (as a mixed group in Kafka would fail to
    form; here the group keeps working and describe shows the strategy).
    """
    if not preferences:
        return "range"
    common = set(preferences[0]).intersection(*map(set, preferences[1:]))
    for name in preferences[0]:
        if name in common and name in ASSIGNORS:
            return name
    return "range"


def _empty(subscriptions) -> dict:
    return {m: set() for m in subscriptions}


def _all_partitions(subscriptions, partitions) -> list:
    topics = set().union(*subscriptions.values()) if subscriptions else set()
    return [TopicPartition(t, p) for t in sorted(topics) if t in partitions for p in range(partitions[t])]


@register("range")
def range_assign(subscriptions: dict, partitions: dict, previous: dict | None = None) -> dict:
    """Per topic: the members subscribed to it, sorted by id, get contiguous runs of its
    partitions; the first ``n % k`` members one more than the others (Kafka's RangeAssignor)."""
    out = _empty(subscriptions)
    for topic in sorted(set().union(*subscriptions.values()) if subscriptions else ()):
        n = partitions.get(topic)
        if not n:
            continue
        members = sorted(m for m, ts in subscriptions.items() if topic in ts)
        base, extra = divmod(n, len(members))
        start = 0
        for i, m in enumerate(members):
            count = base + (1 if i < extra else 0)
            out[m].update(TopicPartition(topic, p) for p in range(start, start + count))
            start += count
    return out


@register("roundrobin")
def roundrobin_assign(subscriptions: dict, partitions: dict, previous: dict | None = None) -> dict:
    """All partitions sorted by (topic, partition) dealt in turn to the members, sorted
    by id, skipping a member not subscribed to the partition's topic."""
    out = _empty(subscriptions)
    members = sorted(subscriptions)
    i = 0
    for tp in _all_partitions(subscriptions, partitions):
        for _ in range(len(members)):
            m = members[i % len(members)]
            i += 1
            if tp.topic in subscriptions[m]:
                out[m].add(tp)
                break
    return out


@register("sticky")
def sticky_assign(subscriptions: dict, partitions: dict, previous: dict | None = None) -> dict:
    """Balanced (counts differ by at most one among members that could take the same
    partitions), moving as few partitions as possible from ``previous``.

    1. every member keeps its previous partitions that still exist and that it
       still subscribes to (a partition claimed twice goes to the first member by id);
    2. each partition left goes to the eligible member holding fewest;
    3. while some member holds two or more above an eligible member, one
       partition moves from the fullest member to the emptiest. Each move is
       needed for balance, so a join moves exactly what the newcomer takes.
    """
    previous = previous or {}
    out = _empty(subscriptions)
    members = sorted(subscriptions)
    tps = _all_partitions(subscriptions, partitions)
    eligible = {tp: [m for m in members if tp.topic in subscriptions[m]] for tp in tps}
    owner = {}
    for m in members:
        for tp in sorted(previous.get(m, ())):
            if tp in eligible and m in eligible[tp] and tp not in owner:
                owner[tp] = m
                out[m].add(tp)
    for tp in tps:
        if tp not in owner:
            m = min(eligible[tp], key=lambda x: (len(out[x]), x))
            owner[tp] = m
            out[m].add(tp)
    while True:
        best = None  # (gap, tp, from, to)
        for src in sorted(members, key=lambda x: (-len(out[x]), x)):
            for tp in sorted(out[src], reverse=True):
                dst = min(eligible[tp], key=lambda x: (len(out[x]), x))
                gap = len(out[src]) - len(out[dst])
                if gap > 1 and (best is None or gap > best[0]):
                    best = (gap, tp, src, dst)
            if best is not None:
                break
        if best is None:
            return out
        _, tp, src, dst = best
        out[src].discard(tp)
        out[dst].add(tp)


def moved(before: dict, after: dict) -> int:
    """How many partitions changed owner from ``before`` to ``after`` (new ones not counted)."""
    owner = {tp: m for m, tps in before.items() for tp in tps}
    return sum(1 for m, tps in after.items() for tp in tps if tp in owner and owner[tp] != m)


__all__ = [
    "ASSIGNORS",
    "choose",
    "get",
    "load_plugins",
    "moved",
    "range_assign",
    "register",
    "roundrobin_assign",
    "sticky_assign",
]
