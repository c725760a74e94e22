"""Kafka consumer groups (the classic protocol) as the listener runs them.

Kafka clients assign partitions themselves: the broker collects the members
and their protocol metadata (JoinGroup), picks a protocol every member
supports, makes one member the leader and hands the leader everyone's
metadata; the leader computes the assignment (range, roundrobin,
cooperative-sticky: all client-side) and sends it in its SyncGroup, and each
member's SyncGroup returns its bytes. The broker only relays; it never reads a
subscription or an assignment (except to describe a group).

States (Kafka's names)::

    Empty                no member
    PreparingRebalance   waiting for every member to (re)join, until the rebalance timeout
    CompletingRebalance  joined: a new generation, waiting for the leader's SyncGroup
    Stable               the leader's assignment is handed out

    Empty, Stable, CompletingRebalance -> PreparingRebalance: a member joins (or rejoins), leaves,
        dies (its connection closes) or misses its session timeout
    PreparingRebalance -> CompletingRebalance: every member joined (or the rebalance timeout removed
        the rest); the generation is raised by one
    CompletingRebalance -> Stable: the leader's SyncGroup
    any -> Empty: the last member goes

A member's connection closing removes it at once (a killed client's socket
closes), so its partitions move with the next rebalance, not after
``session.timeout.ms``. Static members (``group.instance.id``) are the
exception: they are kept until their session times out, and rejoining with
the same instance id takes the old member's place.

Threads: each connection has its own thread; a JoinGroup (or a follower's
SyncGroup) blocks in it until its rebalance completes or times out. All
groups share one lock and one condition variable; ``_reaper`` (a thread)
ends overdue rebalances and expires sessions. The committed offsets, and
whether a group id belongs to Kafka clients or to the Python API, are the
supervisor's group coordinator's (``supervisor/groups/server.py``), reached
through the object the listener is given (``broker.coordinator``); it is
never called with the lock held, since the coordinator's thread calls back
into :meth:`KafkaGroups.describe` and :meth:`KafkaGroups.active`, which take
it.
"""

from __future__ import annotations

import threading
import time
import uuid

from shmbus.kafka.handlers import errors as E

MIN_SESSION_TIMEOUT_MS = 1000  # Kafka's group.min.session.timeout.ms is 6000; a local bus allows less
MAX_SESSION_TIMEOUT_MS = 1_800_000  # Kafka's group.max.session.timeout.ms
MAX_MEMBERS = 1000  # Kafka's group.max.size is unbounded; this bounds a hostile client's joins
REAP_S = 0.05


class KMember:
    __slots__ = ("assignment", "client_host", "client_id", "id", "instance_id", "joined", "last_seen",
                 "protocol_type", "protocols", "rebalance_timeout_ms", "session", "session_timeout_ms", "waiting")

    def __init__(self, mid, instance_id, session, client_id, client_host):
        self.id = mid
        self.instance_id = instance_id
        self.session = session  # the connection it joined on (its closing removes a dynamic member)
        self.client_id = client_id
        self.client_host = client_host
        self.protocol_type = "consumer"
        self.protocols: list = []  # [(name, metadata bytes)] in the member's order of preference
        self.session_timeout_ms = 45000
        self.rebalance_timeout_ms = 300000
        self.assignment = b""
        self.joined = False  # joined in the current rebalance
        self.waiting = False  # its JoinGroup is waiting for the rebalance to complete
        self.last_seen = time.monotonic()


class KGroup:
    def __init__(self, gid):
        self.id = gid
        self.state = "Empty"
        self.generation = 0
        self.protocol_type = None
        self.protocol = None
        self.leader = None
        self.members: dict[str, KMember] = {}
        self.pending: dict[str, float] = {}  # member ids handed out by MEMBER_ID_REQUIRED -> expiry
        self.static: dict[str, str] = {}  # group.instance.id -> member id
        self.deadline = None  # PreparingRebalance: when members that did not rejoin are removed
        self.results: dict[str, tuple] = {}  # member id -> its JoinGroup result of the last rebalance

    def candidates(self) -> set:
        names = None
        for m in self.members.values():
            s = {n for n, _ in m.protocols}
            names = s if names is None else names & s
        return names or set()


class GroupError(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class KafkaGroups:
    """Every Kafka group of one listener (thread-safe)."""

    def __init__(self, log=print):
        self.log = log
        self.groups: dict[str, KGroup] = {}
        self.joining: dict[str, int] = {}  # group id -> JoinGroups between their claim and their member's entry
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._closed = False
        self._thread = threading.Thread(target=self._reaper, name="kafka-groups", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self.cond.notify_all()

    # --- what the coordinator asks (its thread; takes the lock) ---
    def active(self, gid) -> bool:
        with self.lock:
            g = self.groups.get(gid)
            # ids handed out and not used yet are no members; a JoinGroup on its way in is one
            return bool(g is not None and g.members or self.joining.get(gid))

    def begin_join(self, gid) -> None:
        """A JoinGroup is about to claim the group id with the coordinator: until ``end_join`` the group
        counts as active, so a Python API member cannot slip in between the claim and the join."""
        with self.lock:
            self.joining[gid] = self.joining.get(gid, 0) + 1

    def end_join(self, gid) -> None:
        with self.lock:
            n = self.joining.get(gid, 0) - 1
            if n > 0:
                self.joining[gid] = n
            else:
                self.joining.pop(gid, None)

    def describe(self, gid) -> dict | None:
        """The group as ``shmbus groups describe`` shows it: state, generation, protocol, members."""
        with self.lock:
            g = self.groups.get(gid)
            if g is None or g.state == "Dead":
                return None
            members = []
            for m in sorted(g.members.values(), key=lambda m: m.id):
                tps = decode_assignment(m.assignment) if g.state == "Stable" else []
                members.append({"member_id": m.id, "pid": 0, "client_id": m.client_id,
                                "client_host": m.client_host, "instance_id": m.instance_id,
                                "assignment": tps, "target": tps})
            return {"state": g.state, "generation": g.generation, "strategy": g.protocol or "",
                    "protocol_type": g.protocol_type or "consumer", "members": members}

    # --- JoinGroup ---
    def join(self, session, gid, member_id, instance_id, protocol_type, protocols, session_timeout_ms,
             rebalance_timeout_ms, require_known_id: bool):
        """A JoinGroup (after ``begin_join``, which this ends); blocks until the rebalance completes.
        Returns (error, generation, protocol, leader, member_id, members [(id, instance id, metadata)]
        for the leader)."""
        try:
            return self._join(session, gid, member_id, instance_id, protocol_type, protocols, session_timeout_ms,
                              rebalance_timeout_ms, require_known_id)
        finally:
            self.end_join(gid)

    def _join(self, session, gid, member_id, instance_id, protocol_type, protocols, session_timeout_ms,
              rebalance_timeout_ms, require_known_id: bool):
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            return E.INVALID_SESSION_TIMEOUT, -1, None, "", member_id, []
        if not protocols or not protocol_type:
            return E.INCONSISTENT_GROUP_PROTOCOL, -1, None, "", member_id, []
        if rebalance_timeout_ms <= 0:
            rebalance_timeout_ms = session_timeout_ms  # JoinGroup v0 has none
        with self.lock:
            g = self.groups.get(gid)
            if g is None or g.state == "Dead":
                g = self.groups[gid] = KGroup(gid)
            now = time.monotonic()
            others = [x for x in g.members.values() if x.id != member_id]
            if others:
                common = {n for n, _ in protocols}
                for x in others:
                    common &= {n for n, _ in x.protocols}
                if protocol_type != g.protocol_type or not common:
                    self.log(f"kafka group {gid!r}: JoinGroup refused (INCONSISTENT_GROUP_PROTOCOL): protocol "
                             f"type {protocol_type!r} with {[n for n, _ in protocols]}; the group's members use "
                             f"{g.protocol_type!r} with {sorted(g.candidates())}")
                    return E.INCONSISTENT_GROUP_PROTOCOL, -1, None, "", member_id, []
            m = None
            if instance_id is not None:
                old = g.static.get(instance_id)
                if member_id == "" and old is not None:
                    # the static member restarted: the new id takes the old one's place
                    m = g.members.pop(old, None)
                    if m is not None:
                        m.id = member_id = f"{instance_id}-{uuid.uuid4()}"
                        m.session = session
                        g.members[m.id] = m
                        g.static[instance_id] = m.id
                        if g.leader == old:
                            g.leader = m.id
                elif member_id and old is not None and old != member_id:
                    return E.FENCED_INSTANCE_ID, -1, None, "", member_id, []
            if m is None:
                if member_id == "":
                    if len(g.members) + len(g.pending) >= MAX_MEMBERS:
                        return E.GROUP_MAX_SIZE_REACHED, -1, None, "", member_id, []
                    member_id = f"{instance_id or session.client_id or 'member'}-{uuid.uuid4()}"
                    if require_known_id and instance_id is None:
                        g.pending[member_id] = now + session_timeout_ms / 1000.0
                        return E.MEMBER_ID_REQUIRED, -1, None, "", member_id, []
                elif member_id in g.pending:
                    del g.pending[member_id]
                elif member_id not in g.members:
                    return E.UNKNOWN_MEMBER_ID, -1, None, "", member_id, []
                m = g.members.get(member_id)
                if m is None:
                    m = KMember(member_id, instance_id, session, session.client_id or "", session.peer[0])
                    g.members[member_id] = m
                    if instance_id is not None:
                        g.static[instance_id] = member_id
            if (gid, m.id) not in session.state.get(__name__, ()):
                self._track(session, gid, m.id)  # (a member may come back on another connection)
            m.session = session
            m.protocol_type = protocol_type
            m.protocols = list(protocols)
            m.session_timeout_ms = session_timeout_ms
            m.rebalance_timeout_ms = rebalance_timeout_ms
            m.last_seen = now
            g.protocol_type = protocol_type
            if g.state != "PreparingRebalance":
                self._prepare(g, f"member joined: member_id={m.id}", now)
            m.joined = True
            g.results.pop(m.id, None)
            m.waiting = True
            try:
                self._maybe_complete(g, now)
                while True:
                    r = g.results.get(m.id)
                    if r is not None:
                        return r
                    if g.members.get(m.id) is not m:
                        return E.UNKNOWN_MEMBER_ID, -1, None, "", member_id, []
                    if self._closed:
                        return E.COORDINATOR_NOT_AVAILABLE, -1, None, "", member_id, []
                    wait = 1.0 if g.deadline is None else min(1.0, max(0.0, g.deadline - time.monotonic()) + 0.01)
                    self.cond.wait(wait)
                    self._maybe_complete(g, time.monotonic())
            finally:
                m.waiting = False

    def _prepare(self, g: KGroup, reason: str, now: float) -> None:
        """Start a rebalance: every member must rejoin before the deadline."""
        g.state = "PreparingRebalance"
        # a JoinGroup still waiting keeps the result it has not collected (its SyncGroup then answers
        # REBALANCE_IN_PROGRESS and it joins again); one waiting without a result is joined already
        g.results = {mid: r for mid, r in g.results.items() if mid in g.members and g.members[mid].waiting}
        for m in g.members.values():
            m.joined = m.waiting and m.id not in g.results
        timeout_ms = max((m.rebalance_timeout_ms for m in g.members.values()), default=0)
        g.deadline = now + timeout_ms / 1000.0
        self.log(f"kafka group {g.id!r}: rebalance (generation {g.generation}): {reason}")
        self.cond.notify_all()

    def _maybe_complete(self, g: KGroup, now: float) -> None:
        if g.state != "PreparingRebalance":
            return
        late = [m for m in g.members.values() if not m.joined]
        if late and now < g.deadline:
            return
        for m in late:
            self._drop(g, m)
            self.log(f"kafka group {g.id!r}: removed member_id={m.id}: it did not rejoin within the "
                     f"rebalance timeout ({m.rebalance_timeout_ms} ms)")
        g.deadline = None
        if not g.members:
            g.state = "Empty"
            g.generation += 1
            g.leader = None
            g.protocol = None
            self.cond.notify_all()
            return
        g.generation += 1
        cands = g.candidates()
        votes: dict[str, int] = {}
        for m in g.members.values():
            first = next(n for n, _ in m.protocols if n in cands)
            votes[first] = votes.get(first, 0) + 1
        g.protocol = max(sorted(votes), key=lambda n: votes[n])
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        everyone = [(m.id, m.instance_id, dict(m.protocols)[g.protocol]) for m in g.members.values()]
        for m in g.members.values():
            m.assignment = b""
            g.results[m.id] = (E.NONE, g.generation, g.protocol, g.leader, m.id,
                               everyone if m.id == g.leader else [])
        g.state = "CompletingRebalance"
        self.cond.notify_all()

    def _drop(self, g: KGroup, m: KMember) -> None:
        g.members.pop(m.id, None)
        g.results.pop(m.id, None)
        if m.instance_id is not None and g.static.get(m.instance_id) == m.id:
            del g.static[m.instance_id]
        if g.leader == m.id:
            g.leader = None

    def remove(self, gid, member_id, reason: str) -> bool:
        """A member leaves (LeaveGroup, its connection closed, its session expired): rebalance the rest."""
        with self.lock:
            g = self.groups.get(gid)
            m = g.members.get(member_id) if g is not None else None
            if m is None:
                return False
            self._remove(g, m, reason, time.monotonic())
            return True

    def _remove(self, g: KGroup, m: KMember, reason: str, now: float) -> None:
        self._drop(g, m)
        if g.members:
            self._prepare(g, reason, now)
            self._maybe_complete(g, now)
        else:
            self.log(f"kafka group {g.id!r}: {reason}; no member left")
            g.state = "Empty"
            g.generation += 1
            g.deadline = None
            g.leader = None
            g.protocol = None
            g.results = {}
            self.cond.notify_all()

    def _track(self, session, gid, member_id) -> None:
        """The member's connection closing removes it (dynamic members only)."""
        mine = session.state.get(__name__)
        if mine is None:
            mine = session.state[__name__] = set()  # {(group id, member id)}

            def closed():
                for g_id, mid in sorted(mine):
                    with self.lock:
                        g = self.groups.get(g_id)
                        m = g.members.get(mid) if g is not None else None
                        if m is None or m.session is not session or m.instance_id is not None:
                            continue
                        self._remove(g, m, f"member's connection closed: member_id={mid}", time.monotonic())

            session.on_close.append(closed)
        mine.add((gid, member_id))

    # --- SyncGroup, Heartbeat ---
    def _member(self, gid, member_id, instance_id, generation) -> tuple[KGroup, KMember]:
        g = self.groups.get(gid)
        m = g.members.get(member_id) if g is not None else None
        if m is None:
            if g is not None and instance_id is not None and instance_id in g.static:
                raise GroupError(E.FENCED_INSTANCE_ID)
            raise GroupError(E.UNKNOWN_MEMBER_ID)
        if instance_id is not None and m.instance_id is not None and m.instance_id != instance_id:
            raise GroupError(E.FENCED_INSTANCE_ID)
        if generation != g.generation:
            raise GroupError(E.ILLEGAL_GENERATION)
        m.last_seen = time.monotonic()
        return g, m

    def sync(self, gid, member_id, instance_id, generation, protocol_type, protocol_name, assignments):
        """A SyncGroup: the leader's hands out ``assignments`` {member id: bytes}; a follower's waits
        for it. Returns (error, protocol_type, protocol, assignment bytes)."""
        with self.lock:
            try:
                g, m = self._member(gid, member_id, instance_id, generation)
            except GroupError as e:
                return e.code, None, None, b""
            if (protocol_type is not None and protocol_type != g.protocol_type) or \
                    (protocol_name is not None and protocol_name != g.protocol):
                return E.INCONSISTENT_GROUP_PROTOCOL, None, None, b""
            if g.state == "PreparingRebalance":
                return E.REBALANCE_IN_PROGRESS, None, None, b""
            if g.state == "CompletingRebalance" and m.id == g.leader:
                for mm in g.members.values():
                    mm.assignment = bytes(assignments.get(mm.id, b""))
                g.state = "Stable"
                self.log(f"kafka group {g.id!r}: stable (generation {g.generation}, protocol {g.protocol}, "
                         f"{len(g.members)} members)")
                self.cond.notify_all()
            while g.state == "CompletingRebalance" and g.generation == generation and \
                    g.members.get(m.id) is m and not self._closed:
                self.cond.wait(1.0)
                m.last_seen = time.monotonic()
            if g.members.get(m.id) is not m:
                return E.UNKNOWN_MEMBER_ID, None, None, b""
            if g.generation != generation or g.state != "Stable":
                return E.REBALANCE_IN_PROGRESS, None, None, b""
            return E.NONE, g.protocol_type, g.protocol, m.assignment

    def heartbeat(self, gid, member_id, instance_id, generation) -> int:
        with self.lock:
            g = self.groups.get(gid)
            if g is not None and g.state == "PreparingRebalance" and member_id in g.members:
                g.members[member_id].last_seen = time.monotonic()
                return E.REBALANCE_IN_PROGRESS  # (Kafka answers this whatever the generation)
            try:
                self._member(gid, member_id, instance_id, generation)
            except GroupError as e:
                return e.code
            return E.NONE

    def leave(self, gid, members) -> tuple[int, list]:
        """LeaveGroup of [(member id, instance id)]: (error, [(member id, instance id, error)])."""
        out = []
        with self.lock:
            g = self.groups.get(gid)
            for mid, iid in members:
                if g is not None and not mid and iid is not None:
                    mid = g.static.get(iid, "")
                m = g.members.get(mid) if g is not None else None
                if m is None:
                    out.append((mid, iid, E.UNKNOWN_MEMBER_ID))
                    continue
                if iid is not None and m.instance_id != iid:
                    out.append((mid, iid, E.FENCED_INSTANCE_ID))
                    continue
                self._remove(g, m, f"member left: member_id={mid}", time.monotonic())
                out.append((mid, iid, E.NONE))
        top = E.NONE if all(e == E.NONE for _, _, e in out) or len(out) > 1 else out[0][2]
        return top, out

    def check_commit(self, gid, member_id, instance_id, generation) -> int:
        """Whether a member may commit offsets now (OffsetCommit); generation -1 with no member id: a
        commit from outside the group, allowed while it has no members."""
        with self.lock:
            g = self.groups.get(gid)
            if generation < 0 and not member_id:
                return E.NONE if g is None or not g.members else E.ILLEGAL_GENERATION
            try:
                g, m = self._member(gid, member_id, instance_id, generation)
            except GroupError as e:
                return e.code
            if g.state != "Stable":
                return E.REBALANCE_IN_PROGRESS
            return E.NONE

    def listing(self) -> dict:
        """{group id: (state, protocol type)} of the groups with members."""
        with self.lock:
            return {gid: (g.state, g.protocol_type or "consumer") for gid, g in self.groups.items() if g.members}

    def snapshot(self, gid):
        """(state, protocol type, protocol, [(id, instance id, client id, host, metadata, assignment)]),
        or None when the group has no member."""
        with self.lock:
            g = self.groups.get(gid)
            if g is None or not g.members:
                return None
            ms = [(m.id, m.instance_id, m.client_id, m.client_host,
                   dict(m.protocols).get(g.protocol, b"") if g.protocol else b"",
                   m.assignment if g.state == "Stable" else b"") for m in g.members.values()]
            return g.state, g.protocol_type or "consumer", g.protocol or "", ms

    def forget(self, gid) -> bool:
        """Drop a group without members (DeleteGroups); False if it has members."""
        with self.lock:
            g = self.groups.get(gid)
            if g is not None and (g.members or g.pending):
                return False
            self.groups.pop(gid, None)
            return True

    # --- time ---
    def _reaper(self) -> None:
        while True:
            with self.lock:
                if self._closed:
                    return
                now = time.monotonic()
                for g in list(self.groups.values()):
                    for mid, t in list(g.pending.items()):
                        if now > t:
                            del g.pending[mid]
                    for m in list(g.members.values()):
                        if g.members.get(m.id) is not m:
                            continue
                        quiet_ms = (now - m.last_seen) * 1000.0
                        if quiet_ms > m.session_timeout_ms and not (g.state == "PreparingRebalance" and m.joined):
                            self._remove(g, m, f"session timeout: member_id={m.id} quiet for {quiet_ms:.0f} ms "
                                               f"(session_timeout_ms={m.session_timeout_ms})", now)
                    self._maybe_complete(g, now)
                    if g.state == "Empty" and not g.members and not g.pending:
                        g.state = "Dead"
                        del self.groups[g.id]
            time.sleep(REAP_S)


def decode_assignment(data: bytes) -> list:
    """[[topic, partition], ...] of a consumer-protocol assignment ([] if it does not decode)."""
    if not data:
        return []
    try:
        from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment

        a = ConsumerProtocolAssignment.decode(bytes(data))
        return sorted([t, int(p)] for t, ps in a.assigned_partitions for p in ps)
    except Exception:  # noqa: BLE001 (a client's bytes: anything may be in them)
        return []


__all__ = ["KafkaGroups", "decode_assignment"]
