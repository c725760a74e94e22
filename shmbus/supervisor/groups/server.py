"""The consumer-group coordinator's server: the socket, its connections, and the requests.

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
``{"op": "reply", "id": ..., "ok": ...}``; ``client/group_member.py`` is its client)::

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

The rebalances themselves, states and transitions, are ``state.py``'s
(``GroupStates``): it is incremental, revokes before it assigns, and a
partition never has two owners.

Committed offsets. Each group has an offsets table in shared memory
(``tables.py``), made on the group's first grant: granting a partition moves
the slot's owner token to the new owner's (generation << 32 | member number);
a revoke acknowledged, a member removed or its death moves it to 0. Members
commit into their slots with a CAS that requires their token: no socket round
trip, and a fenced member's commit fails without writing. Partitions without
a slot (the table is full, or it could not be made) are committed over the
socket (``commit``), as are commits of members told to
(``SHMBUS_GROUP_COMMIT=socket``); those also land in the slot, if any, so the
table stays the truth for every slot.

The offsets are read from the table every ``CHECKPOINT_S`` and before any
answer that shows them (``committed``, ``describe``, ``list``), and
checkpointed to ``data_dir/groups/<group, %-quoted>.json``
(``log/group_offsets.py``) when they changed, and at stop. A clean stop first
moves every token to 0 (so no commit lands after the last checkpoint), writes
the checkpoints, then unlinks the tables. A coordinator that finds a table at
start (its predecessor was killed; the machine did not reboot) adopts its
offsets, which are newer than the checkpoint, and moves every token to 0 at
once, fencing the old members; its generations start above every generation
in the table, so no new token equals an old one. After a reboot the tables are
gone and the checkpoints answer. The checkpoint also lists the members' pids:
a restarted coordinator grants nothing in a group until those processes
rejoined or died (or a session timeout passed), so a member of the old
coordinator cannot still be reading what the new one hands out.

Kafka groups. The Kafka listener (``kafka/groups.py``) runs the classic
Kafka group protocol for Kafka clients itself (members, generations, the
leader's assignment relayed: none of it goes through ``state.py``); their
committed offsets live here, with the Python API's, so ``describe``,
``list``, the checkpoints and restarts treat both alike. The listener calls the
thread-safe methods below (``claim_group``, ``commit_offsets``,
``read_offsets``, ``overview``, ``delete_group``), each of which runs a
function in this thread through ``call`` (a queue and a wake-up socket in the
selector), so the one-thread rule holds. The listener registers itself with
``attach_foreign(registry)``; this thread asks it, for ``describe`` and
``list``, about the members it has (``registry.describe(gid)``,
``registry.active(gid)``), which take the listener's lock: the listener never
holds that lock while it waits in ``call``, so neither waits for the other.

A group has members of one kind (``Group.kind``): ``shmbus`` (the Python
API) or ``kafka``. The kind of a group is that of its members, or with none,
that of whoever committed its offsets (kept in the checkpoint); a group with
neither has no kind yet. A join of the other kind is refused, with the reason
(the two protocols cannot share an assignment: Kafka's leader assigns
client-side, the Python API's coordinator assigns here).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import selectors
import socket
import sys
import threading
import time

import psutil

from shmbus.core import assignors, ownership, paths
from shmbus.errors import UnknownTopicError
from shmbus.log import metadata
from shmbus.log.group_offsets import CheckpointWriter, checkpoint_document, read_checkpoints
from shmbus.records import TopicPartition
from shmbus.supervisor.groups.state import GroupStates, topic_partition
from shmbus.supervisor.groups.tables import OffsetsTables
from shmbus.supervisor.sockets import listen_unix

TICK_S = 0.05  # timeouts and topic changes are checked this often
TOPIC_CHECK_S = 0.2
CHECKPOINT_S = 0.25  # a commit is on disk within this (plus an fsync)
SEND_TIMEOUT_S = 0.5  # a member whose socket stays full this long is dropped
FD_BACKOFF_S = 0.05  # out of fds, accept waits this long before the next try
CALL_TIMEOUT_S = 10.0  # call() waits this long for the coordinator's thread
_WAKE = object()  # the selector key data of the wake-up socket
KINDS = ("shmbus", "kafka")


class CoordinatorUnavailable(ConnectionError):
    """The coordinator is not running (stopped, or its thread did not answer in time). A
    ConnectionError, so callers in lower layers (the Kafka listener) catch it without importing it."""


class _Conn:
    """One client connection; ``member`` is the member it joined as last (removed or not)."""

    __slots__ = ("buf", "member", "sock")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.member = None

    def current_member(self):
        """The member this connection is, or None (it never joined, or was removed since)."""
        m = self.member
        return m if m is not None and m.removed_reason is None else None


class Coordinator:
    """The group coordinator of one data dir. ``start()`` runs it in a thread; ``close()`` stops it
    and writes every checkpoint. Methods other than start/close belong to the loop's thread."""

    def __init__(self, data_dir: str, log=None, out_of_fds=None):
        self.data_dir = data_dir
        self.bus_id = paths.bus_id(data_dir)
        self.log = log or (lambda msg: print(f"shmbus coordinator: {msg}", file=sys.stderr, flush=True))
        # called with (error, where) when accept runs out of fds (the supervisor logs and reports it)
        self.out_of_fds = out_of_fds or (lambda e, where: None)
        self.tables = OffsetsTables(self.bus_id, self.log)
        self.states = GroupStates(self._send_to_member, self.tables, self.log)
        self._topics_stamp = None
        self._next_topic_check = 0.0
        self._next_checkpoint = 0.0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._lsock = None
        self._thread = None
        self._checkpoints = CheckpointWriter(self.log)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r = self._wake_w = None
        self.foreign = None  # the Kafka listener's group registry (attach_foreign), or None
        assignors.load_plugins()

    @property
    def groups(self) -> dict:
        return self.states.groups

    @property
    def topics(self) -> dict:
        return self.states.topics

    # --- life ---
    def start(self) -> None:
        ownership.makedirs(paths.groups_dir(self.data_dir))
        topics = self._read_topics()
        if topics is not None:
            self.states.topics = topics
        self._load()
        self.tables.adopt(self.states.group, self.states.topics)
        path = paths.groups_socket_path(self.data_dir)
        s = listen_unix(path, 128)
        s.setblocking(False)
        self._lsock = s
        self._sel.register(s, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._checkpoints.start()
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
        if self._wake_w is not None:
            self._wake_w.close()
        self._run_calls(refuse=True)  # calls queued while stopping
        try:
            os.unlink(paths.groups_socket_path(self.data_dir))
        except FileNotFoundError:
            pass
        for g in self.groups.values():
            self.tables.release_all(g)  # no commit lands after the last checkpoint
            self.tables.refresh(g)
        for g in self.groups.values():  # members are gone with the socket: keep their pids for the hold
            self._write(g)
        written = self._checkpoints.close(10)
        for g in self.groups.values():
            self.tables.close(g, unlink=written)  # every offset is in the checkpoint now

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
                elif key.data is _WAKE:
                    self._run_calls()
                else:
                    self._read(key.data)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                try:
                    self._tick(now)
                except Exception as e:  # noqa: BLE001 (keep coordinating)
                    self.log(f"tick failed: {type(e).__name__}: {e}")

    # --- calls from other threads (the Kafka listener) ---
    def call(self, fn, *args, timeout: float = CALL_TIMEOUT_S):
        """Run ``fn(*args)`` in the coordinator's thread and return its result (or raise its exception).

        Thread-safe; raises CoordinatorUnavailable when the coordinator is stopped or does not answer
        within ``timeout``. Never call it holding a lock that the coordinator's thread may take."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        if self._stop.is_set() or self._wake_w is None:
            raise CoordinatorUnavailable("the group coordinator is stopped")
        box = [threading.Event(), None, None]
        self._calls.put((fn, args, box))
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full of wake-ups already: the loop wakes anyway
        except OSError:
            raise CoordinatorUnavailable("the group coordinator is stopped") from None
        if not box[0].wait(timeout):
            raise CoordinatorUnavailable(f"the group coordinator did not answer within {timeout:.0f} s")
        if box[2] is not None:
            raise box[2]
        return box[1]

    def _run_calls(self, refuse: bool = False) -> None:
        """Run the queued calls (``refuse``: answer them CoordinatorUnavailable: stopping)."""
        if self._wake_r is not None and not refuse:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:  # BlockingIOError: drained
                pass
        while True:
            try:
                fn, args, box = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                if refuse:
                    raise CoordinatorUnavailable("the group coordinator is stopped")
                box[1] = fn(*args)
            except BaseException as e:  # noqa: BLE001 (handed to the caller)
                box[2] = e
            box[0].set()

    # --- groups of other kinds (the Kafka listener's; thread-safe) ---
    def attach_foreign(self, registry) -> None:
        """The Kafka listener's group registry: ``describe(gid)`` -> dict or None (its members, state,
        generation, protocol) and ``active(gid)`` -> bool (it has members); called in this thread."""
        self.foreign = registry

    def _kind(self, g) -> str | None:
        """Whose group ``g`` is: its members', else its committed offsets' (None: nobody's yet)."""
        if g.members:
            return "shmbus"
        if g.kind == "kafka" and self.foreign is not None and self.foreign.active(g.id):
            return "kafka"
        if g.offsets:
            return g.kind or "shmbus"
        return None

    def _refusal(self, g, kind: str) -> str | None:
        have = self._kind(g)
        if have is None or have == kind:
            return None
        if g.members:
            what = "Python API (shmbus Consumer) members"
        elif have == "kafka" and self.foreign is not None and self.foreign.active(g.id):
            what = "Kafka client members"
        else:
            what = f"committed offsets of {have} consumers"
        return (f"group {g.id!r} has {what}: a group's members are all Kafka clients or all shmbus Python API "
                f"consumers (use another group id, or delete this group's offsets first once it has no members)")

    def claim_group(self, gid: str, kind: str) -> str | None:
        """Make ``gid`` a group of ``kind`` (``kafka``); returns why not (it is the other kind's), or None."""
        def run():
            g = self.states.group(gid)
            why = self._refusal(g, kind)
            if why is None:
                g.kind = kind
            return why
        return self.call(run)

    def commit_offsets(self, gid: str, kind: str, offsets, generation: int = 0) -> str | None:
        """Commit [(topic, partition, offset)] for a group of ``kind``; returns why not, or None.

        The caller (the Kafka listener) checked the member and generation; this keeps the offsets
        (checkpointed within CHECKPOINT_S) and refuses a group of the other kind."""
        def run():
            g = self.states.group(gid)
            self.tables.refresh(g)
            why = self._refusal(g, kind)
            if why is not None:
                return why
            g.kind = kind
            g.generation = max(g.generation, int(generation))
            for topic, partition, off in offsets:
                tp = TopicPartition(topic, int(partition))
                g.offsets[tp] = int(off)
                self.tables.commit(g, tp, int(off))
            g.dirty = True
            return None
        return self.call(run)

    def read_offsets(self, gid: str, partitions=None) -> dict:
        """{TopicPartition: offset} committed by ``gid`` (any kind), of ``partitions`` or all."""
        def run():
            g = self.groups.get(gid)
            if g is None:
                return {}
            self.tables.refresh(g)
            if partitions is None:
                return dict(g.offsets)
            return {tp: g.offsets[tp] for tp in partitions if tp in g.offsets}
        return self.call(run)

    def overview(self) -> list:
        """[{group_id, kind, state, generation, strategy}] of the groups with members or offsets (any kind)."""
        def run():
            out = []
            for gid, g in sorted(self.groups.items()):
                self.tables.refresh(g)
                kind = self._kind(g)
                if kind is None:
                    continue
                out.append({"group_id": gid, "kind": kind, "state": g.state(), "generation": g.generation,
                            "strategy": g.strategy})
            return out
        return self.call(run)

    def delete_group(self, gid: str, kind: str) -> str:
        """Delete a group without members (of any kind), its committed offsets and its checkpoint.

        ``kind``: who asks (for the log). Returns ``deleted``, ``not_found`` or ``non_empty``."""
        def run():
            g = self.groups.get(gid)
            if g is not None:
                self.tables.refresh(g)
            have = None if g is None else self._kind(g)
            if have is None:
                return "not_found"
            if g.members or (self.foreign is not None and self.foreign.active(gid)):
                return "non_empty"
            self.tables.forget(g)
            del self.groups[gid]
            self._checkpoints.remove(paths.checkpoint_path(self.data_dir, gid))
            self.log(f"group deleted: group={gid!r} kind={have} (asked by a {kind} client)")
            return "deleted"
        return self.call(run)

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
        m = c.current_member()
        if m is not None:
            self.states.remove(m, reason, time.monotonic())

    def _send(self, c: _Conn, obj) -> None:
        if c.sock is None:
            return
        try:
            c.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        except OSError:
            self._drop(c, "cannot send to the member (its socket is full or closed)")

    def _send_to_member(self, m, obj) -> None:
        if m.conn.member is m:  # not if the connection joined again since
            self._send(m.conn, obj)

    def _reply(self, c: _Conn, msg: dict, ok: bool = True, **kw) -> None:
        self._send(c, {"op": "reply", "id": msg.get("id"), "ok": ok, **kw})

    # --- requests ---
    def _handle(self, c: _Conn, msg: dict) -> None:
        op = msg.get("op")
        m = c.current_member()
        now = time.monotonic()
        if m is not None:
            m.last_hb = now
        if op == "hb":
            if m is not None:
                m.since_poll_ms = int(msg.get("since_poll_ms", 0))
        elif op == "revoked":
            if m is not None:
                self.states.revoked(m, [topic_partition(x) for x in msg.get("partitions", ())], now)
        elif op == "applied":
            if m is not None:
                self.states.applied(m, now)
        elif op == "commit":
            self._commit(c, msg)
        elif op == "join":
            if m is not None:
                self.states.remove(m, f"member rejoined: member_id={m.id}", now)
            gid = msg.get("group")
            g = self.states.group(gid)  # a bad group id is refused before anything changes
            self.tables.refresh(g)
            why = self._refusal(g, "shmbus")
            if why is not None:
                self.log(f"join refused: {why}")
                raise ValueError(why)
            g.kind = "shmbus"
            self._check_topics(now)  # a topic made just before the join is in the first assignment
            m = self.states.join(gid, c, msg, now)
            c.member = m
            self._reply(c, msg, member_id=m.id, generation=m.group.generation)
            self.states.rebalance(m.group, f"member joined: member_id={m.id}", now)
        elif op == "subscribe":
            if m is None:
                raise ValueError("subscribe before join")
            self.states.subscribe(m, msg)
            self._check_topics(now)
            self._reply(c, msg)
            self.states.rebalance(m.group, f"subscription changed: member_id={m.id}", now)
        elif op == "leave":
            if m is not None:
                self.states.remove(m, f"member left: member_id={m.id}", now)
            self._reply(c, msg)
        elif op == "committed":
            g = self.groups.get(msg.get("group"))
            tps = [topic_partition(x) for x in msg.get("partitions", ())]
            if g is not None:
                self.tables.refresh(g)
            self._reply(c, msg, offsets=[g.offsets.get(tp) if g else None for tp in tps])
        elif op == "list":
            for g in self.groups.values():
                self.tables.refresh(g)
            self._reply(c, msg, groups=sorted(gid for gid, g in self.groups.items() if self._kind(g) is not None))
        elif op == "describe":
            self._reply(c, msg, **self.describe(msg.get("group")))
        elif op == "ping":
            self._reply(c, msg)
        else:
            raise ValueError(f"unknown op: op={op!r}")

    def _commit(self, c: _Conn, msg: dict) -> None:
        m = c.current_member()
        offsets = [(topic_partition(x), int(x[2])) for x in msg.get("offsets", ())]
        if m is None:
            why = c.member.removed_reason if c.member is not None else "it never joined"
            self._reply(c, msg, ok=False, error=(
                f"commit refused: this consumer is no longer a member of its group ({why}); "
                f"its partitions may belong to another member now (poll() rejoins; commit what you read after that)"))
            return
        refusal = self.states.commit_refusal(m, int(msg.get("gen", -1)), offsets)
        if refusal is not None:
            self._reply(c, msg, ok=False, error=refusal)
            return
        g = m.group
        for tp, off in offsets:
            g.offsets[tp] = off
            self.tables.commit(g, tp, off)
        g.dirty = True
        self._reply(c, msg)

    # --- periodic work ---
    def _tick(self, now: float) -> None:
        self.states.expire(now, _alive)
        if now >= self._next_topic_check:
            self._next_topic_check = now + TOPIC_CHECK_S
            if any(g.members for g in self.groups.values()):
                self._check_topics(now)
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_S
            for g in self.groups.values():
                self.tables.refresh(g)
                if g.dirty:
                    self._write(g)

    def _check_topics(self, now: float) -> None:
        topics = self._read_topics()
        if topics is not None:
            self.states.set_topics(topics, now)

    def _read_topics(self) -> dict | None:
        """The bus's topics, name -> (id, partitions), if the topics dir changed since the last call; else None."""
        tdir = paths.topics_dir(self.data_dir)
        try:
            stamp = [os.stat(tdir).st_mtime_ns]
            with os.scandir(tdir) as it:
                stamp.extend((e.name, e.stat().st_mtime_ns) for e in it)
        except FileNotFoundError:
            stamp = None
        stamp = None if stamp is None else tuple(sorted(stamp, key=str))
        if stamp == self._topics_stamp:
            return None
        self._topics_stamp = stamp
        topics = {}
        for name in metadata.list_topics(self.data_dir):
            try:
                meta = metadata.read_topic(self.data_dir, name)
            except (UnknownTopicError, OSError, ValueError, KeyError):
                continue  # deleted (or half made) while we looked
            topics[name] = (meta.id, meta.partitions)
        return topics

    # --- checkpoints ---
    def _write(self, g) -> None:
        g.dirty = False
        members = [(m.id, m.pid, m.session_timeout_ms) for m in g.members.values()]
        self._checkpoints.put(paths.checkpoint_path(self.data_dir, g.id),
                              checkpoint_document(g.id, g.generation, g.strategy, g.offsets, members,
                                                  g.kind or "shmbus"))

    def _load(self) -> None:
        now = time.monotonic()
        for ck in read_checkpoints(paths.groups_dir(self.data_dir)):
            g = self.states.group(ck["group_id"])
            g.generation = int(ck.get("generation", 0))
            g.strategy = ck.get("strategy", "range")
            g.kind = ck.get("kind") if ck.get("kind") in KINDS else None
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
        if g is not None:
            self.tables.refresh(g)
        d = self.states.describe(gid)
        if g is not None and g.kind == "kafka" and self.foreign is not None:
            f = self.foreign.describe(gid)  # members, state, generation and protocol are the listener's
            if f is not None:
                d.update(f)
            elif not g.offsets:
                d["state"] = "Dead"
        if g is not None:
            d["kind"] = self._kind(g) or g.kind or "shmbus"
        return d


def _alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


__all__ = ["CHECKPOINT_S", "Coordinator", "CoordinatorUnavailable"]
