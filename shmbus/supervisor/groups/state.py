"""The rebalance state machine of consumer groups: members, generations, revoke before assign.

Pure: no socket, no file, no clock. The caller (``server.py``) passes the
time into every call that needs it, and gives the machine three things to act
through: ``send(member, message)`` delivers a message to a member (it may
remove that member at once, re-entering ``remove``, when its socket is full or
closed), an owner table (``grant``/``release``/``incarnation``: who may commit
a partition's offset, see ``tables.py``), and ``log(text)``.
"""

from __future__ import annotations

import re

from shmbus.core import assignors
from shmbus.layout import groups as group_layout
from shmbus.records import TopicPartition

KEEP_REBALANCES = 20  # the newest rebalances (reason, ms) that describe shows


def topic_partition(x) -> TopicPartition:
    """A TopicPartition from its wire form [topic, partition, ...]."""
    return TopicPartition(str(x[0]), int(x[1]))


class Member:
    """One member of a group: its subscription, its timeouts, what it owns and what it is revoking."""

    __slots__ = (
        "conn",
        "group",
        "id",
        "last_hb",
        "max_poll_interval_ms",
        "num",
        "owned",
        "pattern",
        "pid",
        "removed_reason",
        "revoking",
        "sent_gen",
        "session_timeout_ms",
        "since_poll_ms",
        "strategies",
        "topics",
        "unapplied",
    )

    def __init__(self, mid, num, group, conn, msg, now):
        self.id = mid
        self.num = num  # the member number in its owner tokens
        self.group = group
        self.conn = conn  # the transport's handle of this member (opaque here)
        self.pid = int(msg.get("pid", 0))
        self.topics = list(msg.get("topics") or [])
        self.pattern = msg.get("pattern")
        self.strategies = list(msg.get("strategies") or ["range"])
        self.session_timeout_ms = int(msg.get("session_timeout_ms", 10000))
        self.max_poll_interval_ms = int(msg.get("max_poll_interval_ms", 300000))
        self.last_hb = now
        self.since_poll_ms = 0
        self.owned: set = set()
        self.revoking: set = set()
        self.unapplied = 0  # assign messages sent and not yet answered by "applied"
        self.sent_gen = -1
        self.removed_reason = None  # why it is no longer a member (None while it is one)

    def subscribed(self, topics) -> set:
        s = {t for t in self.topics}
        if self.pattern:
            rx = re.compile(self.pattern)
            s.update(t for t in topics if rx.fullmatch(t))
        return s


class Group:
    """One group's data: members, the target assignment, owners, generations, committed offsets."""

    def __init__(self, gid):
        self.id = gid
        self.generation = 0
        self.members: dict[str, Member] = {}
        self.target: dict[TopicPartition, str] = {}
        self.owner: dict[TopicPartition, str] = {}
        self.grant_gen: dict[TopicPartition, int] = {}
        self.offsets: dict[TopicPartition, int] = {}
        self.strategy = "range"
        self.kind = None  # "shmbus" (Python API members), "kafka" (Kafka clients through the listener), None: not yet
        self.sig = ()  # ((topic, topic id, partitions), ...) the last assignment was made for
        self.excluded: set = set()  # topics recreated under a new id: revoked before re-granted
        self.dirty = False  # offsets or members changed since the last checkpoint
        self.rebalance_t0 = None
        self.rebalance_reason = ""
        self.rebalances: list = []  # [(reason, ms), ...] newest last
        self.hold_until = None  # after a restart: grant nothing until the old members are back or gone
        self.hold_pids: set = set()

    def state(self) -> str:
        if not self.members:
            return "Empty" if self.offsets else "Dead"
        if any(m.revoking for m in self.members.values()):
            return "PreparingRebalance"
        if self.rebalance_t0 is not None:
            return "CompletingRebalance"
        return "Stable"

    def take_offset(self, tp: TopicPartition, off: int) -> None:
        """A committed offset read from the offsets table (negative: none); marks the group dirty if new."""
        if off >= 0 and self.offsets.get(tp) != off:
            self.offsets[tp] = off
            self.dirty = True

    def describe(self) -> dict:
        return {
            "group_id": self.id, "state": self.state(), "generation": self.generation, "strategy": self.strategy,
            "members": [{"member_id": m.id, "pid": m.pid, "assignment": sorted(m.owned),
                         "target": sorted(tp for tp, mid in self.target.items() if mid == m.id)}
                        for m in sorted(self.members.values(), key=lambda m: m.id)],
            "offsets": sorted([tp.topic, tp.partition, off] for tp, off in self.offsets.items()),
            "rebalances": [{"reason": r, "ms": ms} for r, ms in self.rebalances],
        }


class GroupStates:
    """The groups of one coordinator and the transitions between their states.

    A group is in one of these states (Kafka's names; ``Group.state()``)::

        Dead                 no member and no committed offset
        Empty                no member; committed offsets kept
        PreparingRebalance   a member was told to revoke a partition and has not answered yet
        CompletingRebalance  nothing is being revoked; an ``assign`` is unanswered, a partition
                             waits for its new owner, or grants are held after a restart
        Stable               every member owns its target and applied its last ``assign``

    Allowed transitions and the events that make them::

        Dead, Empty          -> CompletingRebalance  join (nobody owns anything: nothing to revoke)
        Stable               -> PreparingRebalance   join, subscribe, leave, member death, timeout,
                                                     topic change: a partition moves off its owner
        Stable               -> CompletingRebalance  the same events when no owned partition moves
        PreparingRebalance   -> CompletingRebalance  every revoke answered (``revoked``), or the
                                                     revoking member removed
        CompletingRebalance  -> PreparingRebalance   a new rebalance moves an owned partition
        CompletingRebalance  -> Stable               every ``assign`` applied, every target owned, no hold
        any state            -> Empty, Dead          the last member removed (Dead without offsets)

    Every rebalance raises the generation by one, as does the last member going. The order
    within a rebalance: revokes go out first; a partition is granted (``assign``) only once it
    has no owner, i.e. its old owner answered ``revoked``, left, or was removed. So no partition
    ever has two owners, and partitions that do not move are read throughout.

    Generation fencing: a partition granted in generation G takes owner token
    ``token(G, member number)``; a commit over the socket is refused unless the member owns the
    partition and names a generation >= the one it was granted in.

    Methods belong to one thread; ``now`` is ``time.monotonic()`` seconds, passed in.
    """

    def __init__(self, send, owners, log):
        self.send = send  # send(member, message): may remove the member (re-entering remove)
        self.owners = owners  # grant(group, tp, token) -> slot; release(group, tp); incarnation(group)
        self.log = log
        self.groups: dict[str, Group] = {}
        self.topics: dict[str, tuple[str, int]] = {}  # name -> (id, partitions)
        self._seq = 0

    def group(self, gid) -> Group:
        """The group ``gid``, made now if new (ValueError for a bad id)."""
        if not isinstance(gid, str) or not gid:
            raise ValueError(f"group_id must be a non-empty str: group_id={gid!r}")
        g = self.groups.get(gid)
        if g is None:
            g = self.groups[gid] = Group(gid)
        return g

    # --- members ---
    def join(self, gid, conn, msg: dict, now: float) -> Member:
        """A new member of ``gid`` from a ``join`` message. The caller answers it, then calls ``rebalance``."""
        g = self.group(gid)
        self._seq += 1
        m = Member(f"{g.id}-{self._seq}-{int(msg.get('pid', 0))}", self._seq, g, conn, msg, now)
        g.members[m.id] = m
        g.dirty = True
        return m

    def subscribe(self, m: Member, msg: dict) -> None:
        """A new subscription (the caller rebalances after answering)."""
        m.topics = list(msg.get("topics") or [])
        m.pattern = msg.get("pattern")

    def revoked(self, m: Member, partitions, now: float) -> None:
        """The member stopped reading ``partitions``: they have no owner now and may be granted."""
        g = m.group
        for tp in partitions:
            if g.owner.get(tp) == m.id:
                del g.owner[tp]
                self.owners.release(g, tp)
            m.owned.discard(tp)
            m.revoking.discard(tp)
        self.push(g, now)

    def applied(self, m: Member, now: float) -> None:
        m.unapplied = max(0, m.unapplied - 1)
        self.check_stable(m.group, now)

    def remove(self, m: Member, reason: str, now: float, notify: bool = False) -> None:
        """``m`` is no longer a member: what it owned has no owner (its commits are fenced)."""
        g = m.group
        if g.members.get(m.id) is not m:
            return
        del g.members[m.id]
        for tp in m.owned:
            if g.owner.get(tp) == m.id:
                del g.owner[tp]
                self.owners.release(g, tp)  # fenced: its commits fail from now on
        m.owned.clear()
        m.revoking.clear()
        m.removed_reason = reason
        if notify:
            self.send(m, {"op": "removed", "reason": reason})
        g.dirty = True
        if g.members:
            self.rebalance(g, reason, now)
        else:
            g.target = {}
            g.generation += 1
            g.rebalance_t0 = None

    def commit_refusal(self, m: Member, gen: int, offsets) -> str | None:
        """Why a socket commit of [(tp, offset)] by ``m`` in generation ``gen`` is refused, or None."""
        g = m.group
        for tp, off in offsets:
            if g.owner.get(tp) != m.id or gen < g.grant_gen.get(tp, 0):
                owner = g.owner.get(tp) or g.target.get(tp)
                return (f"commit refused: the partition is not owned by this member: group={g.id!r} "
                        f"member_id={m.id} topic={tp.topic!r} partition={tp.partition} generation={gen} "
                        f"group_generation={g.generation} owner={owner} (it moved in a rebalance; poll() and "
                        f"commit only what you read after it)")
            if off < 0:
                raise ValueError(f"offset must be >= 0: offset={off}")
        return None

    # --- rebalancing ---
    def rebalance(self, g: Group, reason: str, now: float) -> None:
        """A new target assignment and generation; then the revokes and grants it needs."""
        members = sorted(g.members.values(), key=lambda m: m.id)
        subs = {m.id: m.subscribed(self.topics) - g.excluded for m in members}
        names = set().union(*subs.values()) if subs else set()
        parts = {t: self.topics[t][1] for t in names if t in self.topics}
        g.sig = tuple(sorted((t, self.topics[t][0], parts[t]) for t in parts))
        strategy = assignors.choose([m.strategies for m in members])
        prev = {mid: set() for mid in subs}
        for tp, mid in g.target.items():
            if mid in prev:
                prev[mid].add(tp)
        try:
            new = assignors.get(strategy)(subs, parts, prev)
        except Exception as e:  # noqa: BLE001 (a plugin's bug must not stop the group)
            self.log(f"assignor {strategy!r} failed ({type(e).__name__}: {e}); using range: group={g.id!r}")
            strategy = "range"
            new = assignors.range_assign(subs, parts, prev)
        g.strategy = strategy
        g.target = {tp: mid for mid, tps in new.items() if mid in g.members for tp in tps}
        g.generation += 1
        if g.rebalance_t0 is None:
            g.rebalance_t0 = now
            g.rebalance_reason = reason
        self.push(g, now)

    def push(self, g: Group, now: float) -> None:
        """Send the revokes and grants the target needs now; grant only free partitions."""
        gen = g.generation
        members = sorted(g.members.values(), key=lambda m: m.id)
        for m in members:
            rev = {tp for tp in m.owned if g.target.get(tp) != m.id} - m.revoking
            if rev:
                m.revoking |= rev
                self.send(m, {"op": "revoke", "gen": gen, "partitions": sorted(rev)})
        held = g.hold_until is not None
        for m in members:
            if g.members.get(m.id) is not m:
                continue  # dropped while sending
            add = [] if held else sorted(tp for tp, mid in g.target.items() if mid == m.id and tp not in g.owner)
            if add or m.sent_gen != gen:
                token = group_layout.token(gen, m.num)
                slots = []
                for tp in add:
                    g.owner[tp] = m.id
                    g.grant_gen[tp] = gen
                    m.owned.add(tp)
                    slots.append(self.owners.grant(g, tp, token))
                m.sent_gen = gen
                m.unapplied += 1
                self.send(m, {"op": "assign", "gen": gen, "add": add,
                              "committed": [g.offsets.get(tp) for tp in add],
                              "slots": slots, "token": token, "table": self.owners.incarnation(g)})
        if g.excluded and not any(tp.topic in g.excluded for tp in g.owner):
            g.excluded = set()
            self.rebalance(g, "topic recreated", now)
            return
        self.check_stable(g, now)

    def check_stable(self, g: Group, now: float) -> None:
        """Close the rebalance (record its reason and duration) once every member has its target."""
        if g.rebalance_t0 is None or not g.members:
            return
        for m in g.members.values():
            if m.revoking or m.unapplied:
                return
        if g.hold_until is not None or any(g.owner.get(tp) != mid for tp, mid in g.target.items()):
            return
        ms = (now - g.rebalance_t0) * 1000.0
        g.rebalances.append((g.rebalance_reason, round(ms, 3)))
        del g.rebalances[:-KEEP_REBALANCES]
        g.rebalance_t0 = None

    # --- time and topics ---
    def expire(self, now: float, alive) -> None:
        """Remove members past their session timeout or max poll interval; end holds whose old
        members rejoined or died (``alive(pid)``) or whose time passed."""
        for g in list(self.groups.values()):
            for m in list(g.members.values()):
                quiet_ms = (now - m.last_hb) * 1000.0
                if quiet_ms > m.session_timeout_ms:
                    self.remove(m, f"session timeout: no heartbeat for {quiet_ms:.0f} ms "
                                   f"(session_timeout_ms={m.session_timeout_ms})", now, notify=True)
                elif m.since_poll_ms + quiet_ms > m.max_poll_interval_ms:
                    self.remove(m, f"no poll() for {m.since_poll_ms + quiet_ms:.0f} ms "
                                   f"(max_poll_interval_ms={m.max_poll_interval_ms})", now, notify=True)
            if g.hold_until is not None:
                joined = {m.pid for m in g.members.values()}
                if now >= g.hold_until or all(p in joined or not alive(p) for p in g.hold_pids):
                    g.hold_until = None
                    g.hold_pids = set()
                    if g.members:
                        self.push(g, now)

    def set_topics(self, topics: dict, now: float) -> None:
        """The bus's topics changed (name -> (id, partitions)): rebalance the groups they concern."""
        self.topics = topics
        for g in list(self.groups.values()):
            if g.members:
                self.topics_changed(g, now)

    def topics_changed(self, g: Group, now: float) -> None:
        names = set().union(*(m.subscribed(self.topics) for m in g.members.values()))
        sig = tuple(sorted((t, self.topics[t][0], self.topics[t][1]) for t in names if t in self.topics))
        if sig == g.sig:
            return
        old = {t: tid for t, tid, _ in g.sig}
        recreated = {t for t, tid, _ in sig if t in old and old[t] != tid}
        g.excluded |= recreated
        gone = sorted(set(old) - {t for t, _, _ in sig})
        new = sorted({t for t, _, _ in sig} - set(old))
        self.rebalance(g, f"topics changed: new={new} deleted={gone} recreated={sorted(recreated)}", now)

    def describe(self, gid) -> dict:
        g = self.groups.get(gid)
        if g is None:
            return {"group_id": gid, "state": "Dead", "generation": 0, "members": [], "offsets": []}
        return g.describe()


__all__ = ["Group", "GroupStates", "KEEP_REBALANCES", "Member", "topic_partition"]
