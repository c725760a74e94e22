"""The consumer-group coordinator: membership, assignment, revocation, committed offsets.

It runs inside the supervisor, in one thread of its own (a ``selectors`` loop),
so group state is touched by that thread only and needs no lock. Members and
admin clients reach it on ``data_dir/groups.sock`` (mode 0600) with JSON
lines. A member keeps its connection open for as long as it is a member: the
connection closing (the process exited or was killed) removes it at once.

Why a socket of its own rather than the control socket: the control socket is
request/response with one short-lived thread per connection and a 10 s idle
timeout; a member's connection is long-lived and the coordinator pushes to it
(revoke, assign) without being asked, and all groups must be changed by one
thread. Keeping the two apart also keeps the supervisor's other jobs (spill,
retention) free of group code.

Protocol (one JSON object per line; ``id`` marks a request that gets a
``{"op": "reply", "id": ..., "ok": ...}``)::

    member -> coordinator
      join       {group, pid, topics, pattern, strategies, session_timeout_ms, max_poll_interval_ms}
      subscribe  {topics, pattern}          a new subscription (rebalance)
      leave      {}                         (reply) the member stopped reading everything
      hb         {since_poll_ms}            heartbeat, every session_timeout_ms / 4 at most
      revoked    {gen, partitions}          the member stopped reading these
      applied    {gen}                      the member applied an ``assign``
      commit     {gen, offsets}             (reply) refused unless the member owns each partition
                                            (partitions without a slot; see "Committed offsets")
    coordinator -> member
      assign     {gen, add, committed, slots, token, table}
                                            start reading ``add`` at ``committed`` (or the reset);
                                            commit them into table slots ``slots`` with ``token``
      revoke     {gen, partitions}          stop reading these, then answer ``revoked``
      removed    {reason}                   no longer a member (timeouts); poll() rejoins
    admin (any connection)
      committed  {group, partitions}, list {}, describe {group}

A rebalance, in a group's life (states as Kafka names them)::

    Dead/Empty --join--> PreparingRebalance --all revoked--> CompletingRebalance --all applied--> Stable
       ^                        ^                                                                   |
       +--last member gone--    +-------------- join, leave, death, timeout, topic change ----------+

It is incremental: the assignor computes the target; only members that hold
a partition the target gives to someone else are told to revoke it; a
partition is granted to its new owner only when its old owner answered
``revoked``, left, or its connection closed. So a partition never has two
owners, and partitions that do not move are read throughout.

Committed offsets. Each group has an offsets table in shared memory
(``group_table.py``, bytes in ``layout/groups.py``), made here on the group's
first grant: one slot per (topic, partition) the group was ever granted,
holding (owner token, committed offset) as one 128-bit word. Granting a
partition moves the slot's token to the new owner's (generation << 32 |
member number) with a 128-bit CAS that also reads the committed offset;
a revoke acknowledged, a member removed or its death moves it to 0 the same
way. Members commit into their slots with a CAS that requires their token
(``kernels/groups.py``): no socket round trip, and a fenced member's commit
fails without writing. Partitions without a slot (the table is full, or it
could not be made) are committed over the socket (``commit``), as are
commits of members told to (``SHMBUS_GROUP_COMMIT=socket``); those also land
in the slot, if any, so the table stays the truth for every slot.

The offsets are read from the table every ``CHECKPOINT_S`` and before any
answer that shows them (``committed``, ``describe``, ``list``), and
checkpointed to ``data_dir/groups/<group, %-quoted>.json`` (written to a
temporary file, fsynced, renamed) when they changed, and at stop. A clean
stop first moves every token to 0 (so no commit lands after the last
checkpoint), writes the checkpoints, then unlinks the tables. A coordinator
that finds a table at start (its predecessor was killed; the machine did not
reboot) adopts its offsets, which are newer than the checkpoint, and moves
every token to 0 at once, fencing the old members; its generations start
above every generation in the table, so no new token equals an old one.
After a reboot the tables are gone and the checkpoints answer.
The checkpoint also lists the members' pids: a restarted coordinator grants
nothing in a group until those processes rejoined or died (or a session
timeout passed), so a member of the old coordinator cannot still be reading
what the new one hands out.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import re
import selectors
import sys
import threading
import time
import urllib.parse

import numpy as np
import posix_ipc
import psutil

from shmbus.core.paths import checkpoint_path, groups_dir, groups_socket_path as socket_path
from shmbus.log.group_offsets import flat_offsets, nested_offsets, read_checkpoint
from shmbus.core import paths as _paths, ownership as _private, assignors
from shmbus.log import metadata
from shmbus.errors import ForeignObjectError, ShmbusError, UnknownTopicError
from shmbus.core.offsets_table import GroupTable
from shmbus.layout import groups as GL
from shmbus.records import TopicPartition
from shmbus.supervisor.sockets import listen_unix

TICK_S = 0.05  # timeouts and topic changes are checked this often
TOPIC_CHECK_S = 0.2
CHECKPOINT_S = 0.25  # a commit is on disk within this (plus an fsync)
SEND_TIMEOUT_S = 0.5  # a member whose socket stays full this long is dropped
FD_BACKOFF_S = 0.05  # out of fds, accept waits this long before the next try
KEEP_REBALANCES = 20


def _tp(x) -> TopicPartition:
    return TopicPartition(str(x[0]), int(x[1]))


class _Conn:
    __slots__ = ("buf", "member", "removed_reason", "sock")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.member = None
        self.removed_reason = None


class _Member:
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
        self.conn = conn
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

    def subscribed(self, topics) -> set:
        s = {t for t in self.topics}
        if self.pattern:
            rx = re.compile(self.pattern)
            s.update(t for t in topics if rx.fullmatch(t))
        return s


class _Group:
    def __init__(self, gid):
        self.id = gid
        self.generation = 0
        self.members: dict[str, _Member] = {}
        self.target: dict[TopicPartition, str] = {}
        self.owner: dict[TopicPartition, str] = {}
        self.grant_gen: dict[TopicPartition, int] = {}
        self.offsets: dict[TopicPartition, int] = {}
        self.strategy = "range"
        self.sig = ()  # ((topic, topic id, partitions), ...) the last assignment was made for
        self.excluded: set = set()  # topics recreated under a new id: revoked before re-granted
        self.dirty = False
        self.rebalance_t0 = None
        self.rebalance_reason = ""
        self.rebalances: list = []  # [(reason, ms), ...] newest last
        self.hold_until = None  # after a restart: grant nothing until the old members are back or gone
        self.hold_pids: set = set()
        self.table: GroupTable | None = None  # the offsets table (made on the first grant)
        self.table_error = None  # why there is none (then commits go over the socket)
        self.slots: dict[TopicPartition, int] = {}
        self.slot_tp: list = []  # slot -> TopicPartition (None: a slot of a topic we cannot name)
        self.tokens: dict[TopicPartition, int] = {}  # owner tokens now in the table
        self.seen = np.zeros(0, np.int64)  # the slots' offsets at the last read

    def state(self) -> str:
        if not self.members:
            return "Empty" if self.offsets else "Dead"
        if any(m.revoking for m in self.members.values()):
            return "PreparingRebalance"
        if self.rebalance_t0 is not None:
            return "CompletingRebalance"
        return "Stable"


class Coordinator:
    """The group coordinator of one data dir. ``start()`` runs it in a thread; ``close()`` stops it
    and writes every checkpoint. Methods other than start/close belong to the loop's thread."""

    def __init__(self, data_dir: str, log=None, out_of_fds=None):
        self.data_dir = data_dir
        self.bus_id = _paths.bus_id(data_dir)
        self.log = log or (lambda msg: print(f"shmbus coordinator: {msg}", file=sys.stderr, flush=True))
        # called with (error, where) when accept runs out of fds (the supervisor logs and reports it)
        self.out_of_fds = out_of_fds or (lambda e, where: None)
        self.groups: dict[str, _Group] = {}
        self.topics: dict[str, tuple[str, int]] = {}  # name -> (id, partitions)
        self._topics_stamp = None
        self._next_topic_check = 0.0
        self._next_checkpoint = 0.0
        self._seq = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._lsock = None
        self._thread = None
        self._writes: queue.Queue = queue.Queue()
        self._writer = None
        self._write_failed = False
        assignors.load_plugins()

    # --- life ---
    def start(self) -> None:
        _private.makedirs(groups_dir(self.data_dir))
        self._refresh_topics()
        self._load()
        self._adopt_tables()
        path = socket_path(self.data_dir)
        s = listen_unix(path, 128)
        s.setblocking(False)
        self._lsock = s
        self._sel.register(s, selectors.EVENT_READ, None)
        self._writer = threading.Thread(target=self._write_loop, name="group-checkpoints", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._loop, name="group-coordinator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            try:
                key.fileobj.close()
            except OSError:
                pass
        self._sel.close()
        try:
            os.unlink(socket_path(self.data_dir))
        except FileNotFoundError:
            pass
        for g in self.groups.values():
            if g.table is not None:
                for tp in list(g.tokens):  # no commit lands after the last checkpoint
                    self._release(g, tp)
                self._refresh(g)
        for g in self.groups.values():  # members are gone with the socket: keep their pids for the hold
            self._write(g)
        self._writes.put(None)
        if self._writer is not None:
            self._writer.join(10)
        for g in self.groups.values():
            if g.table is not None:
                if not self._write_failed and (self._writer is None or not self._writer.is_alive()):
                    g.table.unlink()  # every offset is in the checkpoint now
                g.table.close()
                g.table = None

    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                events = self._sel.select(TICK_S)
            except OSError:
                return
            for key, _mask in events:
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                try:
                    self._tick(now)
                except Exception as e:  # noqa: BLE001 (keep coordinating)
                    self.log(f"tick failed: {type(e).__name__}: {e}")

    # --- connections ---
    def _accept(self) -> None:
        while True:
            try:
                s, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    # the member waits in the backlog; back off, or the loop would spin on a readable socket
                    self.out_of_fds(e, "group coordinator socket")
                    time.sleep(FD_BACKOFF_S)
                return
            s.settimeout(SEND_TIMEOUT_S)
            c = _Conn(s)
            self._sel.register(s, selectors.EVENT_READ, c)

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c, "connection closed (the process exited or was killed)")
            return
        c.buf += data
        while True:
            i = c.buf.find(b"\n")
            if i < 0:
                return
            line, c.buf = c.buf[:i], c.buf[i + 1:]
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            try:
                self._handle(c, msg)
            except Exception as e:  # noqa: BLE001 (a bad request gets an answer, never kills the loop)
                if "id" in msg:
                    self._send(c, {"op": "reply", "id": msg["id"], "ok": False, "error": f"{type(e).__name__}: {e}"})
                else:
                    self.log(f"bad message {msg.get('op')!r}: {type(e).__name__}: {e}")
            if c.sock is None:
                return

    def _drop(self, c: _Conn, reason: str) -> None:
        if c.sock is None:
            return
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        try:
            c.sock.close()
        except OSError:
            pass
        c.sock = None
        if c.member is not None:
            self._remove(c.member, reason)

    def _send(self, c: _Conn, obj) -> None:
        if c.sock is None:
            return
        try:
            c.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        except OSError:
            self._drop(c, "cannot send to the member (its socket is full or closed)")

    def _reply(self, c: _Conn, msg: dict, ok: bool = True, **kw) -> None:
        self._send(c, {"op": "reply", "id": msg.get("id"), "ok": ok, **kw})

    # --- requests ---
    def _group(self, gid) -> _Group:
        if not isinstance(gid, str) or not gid:
            raise ValueError(f"group_id must be a non-empty str: group_id={gid!r}")
        g = self.groups.get(gid)
        if g is None:
            g = self.groups[gid] = _Group(gid)
        return g

    def _handle(self, c: _Conn, msg: dict) -> None:
        op = msg.get("op")
        m = c.member
        now = time.monotonic()
        if m is not None:
            m.last_hb = now
        if op == "hb":
            if m is not None:
                m.since_poll_ms = int(msg.get("since_poll_ms", 0))
        elif op == "revoked":
            if m is not None:
                g = m.group
                for tp in map(_tp, msg.get("partitions", ())):
                    if g.owner.get(tp) == m.id:
                        del g.owner[tp]
                        self._release(g, tp)
                    m.owned.discard(tp)
                    m.revoking.discard(tp)
                self._push(g)
        elif op == "applied":
            if m is not None:
                m.unapplied = max(0, m.unapplied - 1)
                self._check_stable(m.group)
        elif op == "commit":
            self._commit(c, msg)
        elif op == "join":
            if m is not None:
                self._remove(m, f"member rejoined: member_id={m.id}")
            g = self._group(msg.get("group"))
            self._check_topics()  # a topic made just before the join is in the first assignment
            self._seq += 1
            m = _Member(f"{g.id}-{self._seq}-{int(msg.get('pid', 0))}", self._seq, g, c, msg, now)
            g.members[m.id] = m
            c.member = m
            c.removed_reason = None
            g.dirty = True
            self._reply(c, msg, member_id=m.id, generation=g.generation)
            self._rebalance(g, f"member joined: member_id={m.id}")
        elif op == "subscribe":
            if m is None:
                raise ValueError("subscribe before join")
            m.topics = list(msg.get("topics") or [])
            m.pattern = msg.get("pattern")
            self._check_topics()
            self._reply(c, msg)
            self._rebalance(m.group, f"subscription changed: member_id={m.id}")
        elif op == "leave":
            if m is not None:
                self._remove(m, f"member left: member_id={m.id}")
            self._reply(c, msg)
        elif op == "committed":
            g = self.groups.get(msg.get("group"))
            tps = [_tp(x) for x in msg.get("partitions", ())]
            if g is not None:
                self._refresh(g)
            self._reply(c, msg, offsets=[g.offsets.get(tp) if g else None for tp in tps])
        elif op == "list":
            for g in self.groups.values():
                self._refresh(g)
            self._reply(c, msg, groups=sorted(gid for gid, g in self.groups.items() if g.members or g.offsets))
        elif op == "describe":
            self._reply(c, msg, **self.describe(msg.get("group")))
        elif op == "ping":
            self._reply(c, msg)
        else:
            raise ValueError(f"unknown op: op={op!r}")

    def _commit(self, c: _Conn, msg: dict) -> None:
        m = c.member
        offsets = [(_tp(x), int(x[2])) for x in msg.get("offsets", ())]
        if m is None:
            why = c.removed_reason or "it never joined"
            self._reply(c, msg, ok=False, error=(
                f"commit refused: this consumer is no longer a member of its group ({why}); "
                f"its partitions may belong to another member now (poll() rejoins; commit what you read after that)"))
            return
        g = m.group
        gen = int(msg.get("gen", -1))
        for tp, off in offsets:
            if g.owner.get(tp) != m.id or gen < g.grant_gen.get(tp, 0):
                owner = g.owner.get(tp) or g.target.get(tp)
                self._reply(c, msg, ok=False, error=(
                    f"commit refused: the partition is not owned by this member: group={g.id!r} "
                    f"member_id={m.id} topic={tp.topic!r} partition={tp.partition} generation={gen} "
                    f"group_generation={g.generation} owner={owner} (it moved in a rebalance; poll() and "
                    f"commit only what you read after it)"))
                return
            if off < 0:
                raise ValueError(f"offset must be >= 0: offset={off}")
        for tp, off in offsets:
            g.offsets[tp] = off
            if tp in g.tokens:  # the table is the truth for its slots: write there too
                from shmbus.kernels import groups as KG

                st = KG.commit_offset(g.table.address, g.slots[tp], g.tokens[tp], off)
                if st != KG.OK:
                    self.log(f"commit into the offsets table failed: status={st} group={g.id!r} "
                             f"topic={tp.topic!r} partition={tp.partition}")
        g.dirty = True
        self._reply(c, msg)

    # --- membership ---
    def _remove(self, m: _Member, reason: str, notify: bool = False) -> None:
        g = m.group
        if g.members.get(m.id) is not m:
            return
        del g.members[m.id]
        for tp in m.owned:
            if g.owner.get(tp) == m.id:
                del g.owner[tp]
                self._release(g, tp)  # fenced: its commits fail from now on
        m.owned.clear()
        m.revoking.clear()
        c = m.conn
        if c.member is m:
            c.member = None
            c.removed_reason = reason
            if notify:
                self._send(c, {"op": "removed", "reason": reason})
        g.dirty = True
        if g.members:
            self._rebalance(g, reason)
        else:
            g.target = {}
            g.generation += 1
            g.rebalance_t0 = None

    def _rebalance(self, g: _Group, reason: str) -> None:
        now = time.monotonic()
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
        self._push(g)

    def _push(self, g: _Group) -> None:
        """Send the revokes and grants the target needs now; grant only free partitions."""
        gen = g.generation
        members = sorted(g.members.values(), key=lambda m: m.id)
        for m in members:
            rev = {tp for tp in m.owned if g.target.get(tp) != m.id} - m.revoking
            if rev:
                m.revoking |= rev
                self._send(m.conn, {"op": "revoke", "gen": gen, "partitions": sorted(rev)})
        held = g.hold_until is not None
        for m in members:
            if g.members.get(m.id) is not m:
                continue  # dropped while sending
            add = [] if held else sorted(tp for tp, mid in g.target.items() if mid == m.id and tp not in g.owner)
            if add or m.sent_gen != gen:
                slots = []
                for tp in add:
                    g.owner[tp] = m.id
                    g.grant_gen[tp] = gen
                    m.owned.add(tp)
                    slots.append(self._grant(g, tp, GL.token(gen, m.num)))
                m.sent_gen = gen
                m.unapplied += 1
                self._send(m.conn, {"op": "assign", "gen": gen, "add": add,
                                    "committed": [g.offsets.get(tp) for tp in add],
                                    "slots": slots, "token": GL.token(gen, m.num),
                                    "table": g.table.incarnation if g.table is not None else None})
        if g.excluded and not any(tp.topic in g.excluded for tp in g.owner):
            g.excluded = set()
            self._rebalance(g, "topic recreated")
            return
        self._check_stable(g)

    def _check_stable(self, g: _Group) -> None:
        if g.rebalance_t0 is None or not g.members:
            return
        for m in g.members.values():
            if m.revoking or m.unapplied:
                return
        if g.hold_until is not None or any(g.owner.get(tp) != mid for tp, mid in g.target.items()):
            return
        ms = (time.monotonic() - g.rebalance_t0) * 1000.0
        g.rebalances.append((g.rebalance_reason, round(ms, 3)))
        del g.rebalances[:-KEEP_REBALANCES]
        g.rebalance_t0 = None

    # --- periodic work ---
    def _tick(self, now: float) -> None:
        for g in list(self.groups.values()):
            for m in list(g.members.values()):
                quiet_ms = (now - m.last_hb) * 1000.0
                if quiet_ms > m.session_timeout_ms:
                    self._remove(m, f"session timeout: no heartbeat for {quiet_ms:.0f} ms "
                                    f"(session_timeout_ms={m.session_timeout_ms})", notify=True)
                elif m.since_poll_ms + quiet_ms > m.max_poll_interval_ms:
                    self._remove(m, f"no poll() for {m.since_poll_ms + quiet_ms:.0f} ms "
                                    f"(max_poll_interval_ms={m.max_poll_interval_ms})", notify=True)
            if g.hold_until is not None:
                joined = {m.pid for m in g.members.values()}
                if now >= g.hold_until or all(p in joined or not _alive(p) for p in g.hold_pids):
                    g.hold_until = None
                    g.hold_pids = set()
                    if g.members:
                        self._push(g)
        if now >= self._next_topic_check:
            self._next_topic_check = now + TOPIC_CHECK_S
            if any(g.members for g in self.groups.values()):
                self._check_topics()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_S
            for g in self.groups.values():
                self._refresh(g)
                if g.dirty:
                    self._write(g)

    def _check_topics(self) -> None:
        if self._refresh_topics():
            for g in list(self.groups.values()):
                if g.members:
                    self._topics_changed(g)

    def _refresh_topics(self) -> bool:
        """Re-read the topic list if the topics dir changed; True if it did."""
        tdir = _paths.topics_dir(self.data_dir)
        try:
            stamp = [os.stat(tdir).st_mtime_ns]
            with os.scandir(tdir) as it:
                stamp.extend((e.name, e.stat().st_mtime_ns) for e in it)
        except FileNotFoundError:
            stamp = None
        stamp = None if stamp is None else tuple(sorted(stamp, key=str))
        if stamp == self._topics_stamp:
            return False
        self._topics_stamp = stamp
        topics = {}
        for name in metadata.list_topics(self.data_dir):
            try:
                meta = metadata.read_topic(self.data_dir, name)
            except (UnknownTopicError, OSError, ValueError, KeyError):
                continue  # deleted (or half made) while we looked
            topics[name] = (meta.id, meta.partitions)
        self.topics = topics
        return True

    def _topics_changed(self, g: _Group) -> None:
        names = set().union(*(m.subscribed(self.topics) for m in g.members.values()))
        sig = tuple(sorted((t, self.topics[t][0], self.topics[t][1]) for t in names if t in self.topics))
        if sig == g.sig:
            return
        old = {t: tid for t, tid, _ in g.sig}
        recreated = {t for t, tid, _ in sig if t in old and old[t] != tid}
        g.excluded |= recreated
        gone = sorted(set(old) - {t for t, _, _ in sig})
        new = sorted({t for t, _, _ in sig} - set(old))
        self._rebalance(g, f"topics changed: new={new} deleted={gone} recreated={sorted(recreated)}")

    # --- the offsets table ---
    def _table(self, g: _Group) -> GroupTable | None:
        """The group's table, made now if it has none (None if it cannot be made: socket commits then)."""
        if g.table is None and g.table_error is None:
            name = _paths.group_table_name(self.bus_id, g.id)
            try:
                try:
                    g.table = GroupTable.create(name, g.id, GL.SLOTS)
                except posix_ipc.ExistentialError:  # a leftover nobody adopted (a group id cut in its header?)
                    _private.check_path(name)  # never another user's: that one stays as it is
                    _unlink_shm(name)
                    g.table = GroupTable.create(name, g.id, GL.SLOTS)
            except (ShmbusError, OSError, posix_ipc.Error) as e:
                g.table_error = str(e)
                self.log(f"no offsets table for the group, its commits go over the socket: group={g.id!r}: {e}")
        return g.table

    def _grant(self, g: _Group, tp: TopicPartition, tok: int) -> int:
        """Make ``tok`` the owner of tp's slot (a slot is given on first use); returns the slot, or -1."""
        t = self._table(g)
        if t is None:
            return -1
        from shmbus.kernels import groups as KG

        slot = g.slots.get(tp)
        if slot is None:
            slot = t.publish_slot(tp.topic, tp.partition, g.offsets.get(tp, GL.NO_OFFSET))
            if slot < 0:
                if g.table_error is None:
                    g.table_error = f"the offsets table is full: slots={t.slots}"
                    self.log(f"the group's offsets table is full, commits of partitions without a slot go over "
                             f"the socket: group={g.id!r} slots={t.slots}")
                return -1
            g.slots[tp] = slot
            g.slot_tp.append(tp)
        off = KG.set_owner(t.address, slot, KG.ANY, tok)
        self._take_offset(g, tp, off)
        g.tokens[tp] = tok
        return slot

    def _release(self, g: _Group, tp: TopicPartition) -> None:
        """tp has no owner now: its slot's token goes to 0 (the offset it held is kept)."""
        tok = g.tokens.pop(tp, None)
        if tok is None or g.table is None:
            return
        from shmbus.kernels import groups as KG

        self._take_offset(g, tp, KG.set_owner(g.table.address, g.slots[tp], KG.ANY, GL.NO_OWNER))

    def _take_offset(self, g: _Group, tp: TopicPartition, off: int) -> None:
        if off >= 0 and g.offsets.get(tp) != off:
            g.offsets[tp] = off
            g.dirty = True

    def _refresh(self, g: _Group) -> None:
        """Bring the offsets committed into the table into ``g.offsets`` (marks the group dirty if any changed)."""
        if g.table is None or not g.slot_tp:
            return
        from shmbus.kernels import groups as KG

        n = len(g.slot_tp)
        now = np.empty(n, np.int64)
        KG.snapshot(g.table.address, n, now)
        old = g.seen
        if len(old) == n:
            changed = np.flatnonzero(now != old)
        else:
            changed = range(n)
        for s in changed:
            tp = g.slot_tp[s]
            if tp is not None:
                self._take_offset(g, tp, int(now[s]))
        g.seen = now

    def _adopt_tables(self) -> None:
        """Tables left by a coordinator that was killed: adopt their offsets, fence their members."""
        from shmbus.kernels import groups as KG

        prefix = f"shmbus-{self.bus_id}-g-"
        try:
            names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
        except OSError:
            names = []
        for n in names:
            name = "/" + n
            try:
                t = GroupTable.open(name)
            except ForeignObjectError as e:
                self.log(f"leaving alone an offsets table that is not this user's: {e}")
                continue
            except (posix_ipc.Error, ShmbusError, OSError, ValueError) as e:
                self.log(f"removing an offsets table that cannot be read: name={name}: {e}")
                _unlink_shm(name)
                continue
            gid = t.group_id()
            if not gid or _paths.group_table_name(self.bus_id, gid) != name:
                self.log(f"removing an offsets table whose group id is cut or wrong: name={name}")
                t.close()
                _unlink_shm(name)
                continue
            g = self._group(gid)
            keys = {GL.topic_key(x): x for x in set(self.topics) | {tp.topic for tp in g.offsets}}
            top_gen = 0
            lost = 0
            for s in range(min(t.used(), t.slots)):
                key, part, flags = t.slot_meta(s)
                top_gen = max(top_gen, GL.token_generation(t.token(s)))
                off = KG.set_owner(t.address, s, KG.ANY, GL.NO_OWNER)  # the old members are fenced
                topic = keys.get(key) if flags & GL.FLAG_USED else None
                if topic is None:
                    g.slot_tp.append(None)
                    lost += off >= 0
                    continue
                tp = TopicPartition(topic, int(part))
                g.slots[tp] = s
                g.slot_tp.append(tp)
                self._take_offset(g, tp, off)  # newer than the checkpoint
            g.table = t
            g.generation = max(g.generation, top_gen) + 1  # no new token equals an old one
            g.dirty = True
            self.log(f"adopted the offsets table of a previous coordinator: group={gid!r} slots={len(g.slot_tp)}"
                     + (f" (offsets of {lost} partitions of topics that no longer exist dropped)" if lost else ""))

    # --- checkpoints ---
    def _snapshot(self, g: _Group) -> dict:
        return {
            "group_id": g.id, "generation": g.generation, "strategy": g.strategy,
            "offsets": nested_offsets(g.offsets),
            "members": [{"member_id": m.id, "pid": m.pid, "session_timeout_ms": m.session_timeout_ms}
                        for m in g.members.values()],
            "written_ms": int(time.time() * 1000),
        }

    def _write(self, g: _Group) -> None:
        g.dirty = False
        self._writes.put((checkpoint_path(self.data_dir, g.id), json.dumps(self._snapshot(g), indent=1).encode()))

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            batch = {}
            while item is not None:
                batch[item[0]] = item[1]  # the newest snapshot per group wins
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
            for path, data in batch.items():
                try:
                    _private.write_file(path, data)
                except OSError as e:
                    self._write_failed = True
                    self.log(f"cannot write the group checkpoint: path={path}: {e}")
            if item is None:
                return

    def _load(self) -> None:
        d = groups_dir(self.data_dir)
        now = time.monotonic()
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            ck = read_checkpoint(os.path.join(d, name))
            if not ck or "group_id" not in ck:
                continue
            g = self._group(ck["group_id"])
            g.generation = int(ck.get("generation", 0))
            g.strategy = ck.get("strategy", "range")
            g.offsets = {TopicPartition(t, int(p)): int(o) for t, ps in (ck.get("offsets") or {}).items()
                         for p, o in ps.items()}
            pids = {int(m["pid"]) for m in ck.get("members", ()) if int(m.get("pid", 0)) not in (0, os.getpid())}
            pids = {p for p in pids if _alive(p)}
            if pids:
                g.hold_pids = pids
                g.hold_until = now + max(int(m.get("session_timeout_ms", 10000)) for m in ck["members"]) / 1000.0

    # --- describe ---
    def describe(self, gid) -> dict:
        g = self.groups.get(gid)
        if g is None:
            return {"group_id": gid, "state": "Dead", "generation": 0, "members": [], "offsets": []}
        self._refresh(g)
        return {
            "group_id": g.id, "state": g.state(), "generation": g.generation, "strategy": g.strategy,
            "members": [{"member_id": m.id, "pid": m.pid, "assignment": sorted(m.owned),
                         "target": sorted(tp for tp, mid in g.target.items() if mid == m.id)}
                        for m in sorted(g.members.values(), key=lambda m: m.id)],
            "offsets": sorted([tp.topic, tp.partition, off] for tp, off in g.offsets.items()),
            "rebalances": [{"reason": r, "ms": ms} for r, ms in g.rebalances],
        }


def _unlink_shm(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def _alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


__all__ = ["Coordinator", "checkpoint_path", "groups_dir", "read_checkpoint", "socket_path"]
