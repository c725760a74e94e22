"""The rebalance state machine alone (supervisor/groups/state.py): no socket, no supervisor, time passed in."""

from __future__ import annotations

import pytest

from shmbus.layout import groups as group_layout
from shmbus.records import TopicPartition as TP
from shmbus.supervisor.groups.state import GroupStates


class Owners:
    """The owner table the machine grants through, as a dict: tp -> token."""

    def __init__(self):
        self.token = {}
        self.events = []

    def grant(self, g, tp, token):
        assert tp not in self.token, f"granted while owned: {tp}"
        self.token[tp] = token
        self.events.append(("grant", tp))
        return len(self.events)

    def release(self, g, tp):
        self.token.pop(tp, None)
        self.events.append(("release", tp))

    def incarnation(self, g):
        return 7


class Bus:
    """A GroupStates with its outbox: (member id, message) in the order sent."""

    def __init__(self, topics=None):
        self.owners = Owners()
        self.sent = []
        self.logged = []
        self.states = GroupStates(lambda m, msg: self.sent.append((m.id, msg)), self.owners, self.logged.append)
        self.states.topics = topics or {"t": ("id-t", 4)}
        self.now = 100.0

    def join(self, gid="g", topics=("t",), session_timeout_ms=10000):
        m = self.states.join(gid, conn=None, msg={"pid": 1, "topics": list(topics),
                                                   "session_timeout_ms": session_timeout_ms}, now=self.now)
        self.states.rebalance(m.group, f"member joined: member_id={m.id}", self.now)
        return m

    def take(self):
        out, self.sent = self.sent, []
        return out

    def apply_all(self):
        """Each member answers what it was sent: revoked for a revoke, applied for an assign."""
        while self.sent:
            mid, msg = self.sent.pop(0)
            g = self.states.groups["g"]
            m = g.members.get(mid)
            if m is None:
                continue
            if msg["op"] == "revoke":
                self.states.revoked(m, [TP(t, p) for t, p in msg["partitions"]], self.now)
            elif msg["op"] == "assign":
                self.states.applied(m, self.now)


def tps(*ps):
    return [TP("t", p) for p in ps]


def test_join_assigns_everything_and_settles_stable():
    bus = Bus()
    g = bus.states.group("g")
    assert g.state() == "Dead"
    m = bus.join()
    assert g.generation == 1
    [(mid, msg)] = bus.sent
    assert mid == m.id and msg["op"] == "assign" and msg["gen"] == 1
    assert msg["add"] == tps(0, 1, 2, 3)
    assert msg["token"] == group_layout.token(1, m.num) and msg["table"] == 7
    assert g.state() == "CompletingRebalance"
    bus.apply_all()
    assert g.state() == "Stable"
    assert [r for r, _ in g.rebalances] == [f"member joined: member_id={m.id}"]


def test_revoke_before_assign_a_moving_partition_waits_for_its_old_owner():
    bus = Bus()
    g = bus.states.group("g")
    a = bus.join()
    bus.apply_all()
    b = bus.join()
    sent = bus.take()
    # a is told to revoke what b gets; b's assign grants nothing yet: the partitions still have an owner
    revokes = [msg for mid, msg in sent if msg["op"] == "revoke"]
    assert len(revokes) == 1 and sent[0][0] == a.id
    moving = [TP(t, p) for t, p in revokes[0]["partitions"]]
    assert moving and all(g.target[tp] == b.id for tp in moving)
    [b_assign] = [msg for mid, msg in sent if mid == b.id]
    assert b_assign["add"] == []
    assert g.state() == "PreparingRebalance"
    assert all(g.owner[tp] == a.id for tp in moving)
    # a answers: only now are they granted to b, released first
    bus.states.revoked(a, moving, bus.now)
    [(mid, grant)] = bus.take()
    assert mid == b.id and grant["op"] == "assign" and grant["add"] == sorted(moving)
    for tp in moving:
        ev = bus.owners.events
        assert ev.index(("release", tp)) < len(ev) - 1 - ev[::-1].index(("grant", tp))
        assert g.owner[tp] == b.id
    assert g.state() == "CompletingRebalance"
    bus.sent = [(mid, msg) for mid, msg in sent if msg["op"] == "assign"] + [(b.id, grant)]
    bus.apply_all()  # every assign answered
    assert g.state() == "Stable"
    assert set(a.owned) | set(b.owned) == set(tps(0, 1, 2, 3)) and not set(a.owned) & set(b.owned)


def test_no_partition_ever_has_two_owners_through_joins_and_leaves():
    bus = Bus({"t": ("id-t", 8)})
    g = bus.states.group("g")
    members = []
    for _ in range(4):
        members.append(bus.join())
        bus.apply_all()
        owned = [tp for m in g.members.values() for tp in m.owned]
        assert len(owned) == len(set(owned)) == 8
    bus.states.remove(members[1], "member left", bus.now)
    bus.apply_all()
    owned = [tp for m in g.members.values() for tp in m.owned]
    assert len(owned) == len(set(owned)) == 8 and g.state() == "Stable"


def test_leave_releases_and_regrants_to_the_others():
    bus = Bus()
    g = bus.states.group("g")
    a = bus.join()
    bus.apply_all()
    b = bus.join()
    bus.apply_all()
    gen = g.generation
    had = set(b.owned)
    bus.states.remove(b, f"member left: member_id={b.id}", bus.now)
    assert g.generation == gen + 1
    assert all(("release", tp) in bus.owners.events for tp in had)
    [(mid, msg)] = bus.take()
    assert mid == a.id and set(msg["add"]) == had  # no revoke needed: b's partitions have no owner
    bus.states.applied(a, bus.now)
    assert set(a.owned) == set(tps(0, 1, 2, 3)) and g.state() == "Stable"
    bus.states.remove(a, "member left", bus.now)
    assert g.state() == "Dead" and g.target == {} and not bus.owners.token


def test_member_death_by_session_timeout_is_removed_and_told():
    bus = Bus()
    g = bus.states.group("g")
    a = bus.join(session_timeout_ms=1000)
    bus.apply_all()
    b = bus.join(session_timeout_ms=1000)
    bus.apply_all()
    a.last_hb = bus.now + 5  # a keeps its heartbeats; b is quiet
    bus.states.expire(bus.now + 2, alive=lambda pid: True)
    assert b.id not in g.members and b.removed_reason.startswith("session timeout")
    sent = bus.take()
    assert sent[0] == (b.id, {"op": "removed", "reason": b.removed_reason})
    bus.sent = sent[1:]
    bus.apply_all()
    assert set(a.owned) == set(tps(0, 1, 2, 3)) and g.state() == "Stable"


def test_generation_fencing_of_socket_commits():
    bus = Bus()
    a = bus.join()
    bus.apply_all()
    granted = bus.states.group("g").generation
    assert bus.states.commit_refusal(a, granted, [(TP("t", 0), 5)]) is None
    assert "not owned" in bus.states.commit_refusal(a, granted - 1, [(TP("t", 0), 5)])  # an older generation
    b = bus.join()
    bus.apply_all()
    lost = next(tp for tp in tps(0, 1, 2, 3) if tp in b.owned)
    assert "not owned" in bus.states.commit_refusal(a, bus.states.group("g").generation, [(lost, 5)])
    with pytest.raises(ValueError, match="offset must be >= 0"):
        bus.states.commit_refusal(b, bus.states.group("g").generation, [(lost, -1)])


def test_tokens_carry_the_generation_of_the_grant():
    bus = Bus()
    a = bus.join()
    bus.apply_all()
    b = bus.join()
    bus.apply_all()
    g = bus.states.group("g")
    for tp, token in bus.owners.token.items():
        assert group_layout.token_generation(token) == g.grant_gen[tp]
        m = a if g.owner[tp] == a.id else b
        assert token == group_layout.token(g.grant_gen[tp], m.num)


def test_a_hold_grants_nothing_until_the_old_members_are_gone():
    bus = Bus()
    g = bus.states.group("g")
    g.hold_until = bus.now + 10
    g.hold_pids = {4242}
    a = bus.join()
    [(_, msg)] = bus.take()
    assert msg["add"] == [] and g.state() == "CompletingRebalance"
    bus.states.expire(bus.now + 1, alive=lambda pid: True)
    assert bus.take() == [] and g.hold_until is not None
    a.last_hb = bus.now + 2
    bus.states.expire(bus.now + 2, alive=lambda pid: pid != 4242)
    [(_, msg)] = bus.take()
    assert msg["add"] == tps(0, 1, 2, 3)
