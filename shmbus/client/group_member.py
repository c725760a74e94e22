"""A consumer's membership in a group: the client side of ``supervisor/groups/server.py``.

One ``GroupMember`` per ``Consumer(group_id=...)``. Two threads touch it:

- the consumer's thread (``poll``, ``commit``, ``close``): applies rebalances,
  commits, joins and leaves;
- one background thread per member: reads the coordinator connection and
  sends heartbeats (every ``session_timeout_ms / 4``, at most every second).
  Messages that change the assignment (``assign``, ``revoke``, ``removed``,
  the connection lost) go to an inbox and set ``pending``; the thread then
  rings the bus doorbell a few times over ~30 ms so a consumer asleep in
  ``poll`` wakes up and applies them at once.

Never two owners. The consumer's thread applies the inbox at the top of each
round of ``poll`` (``before_poll``), before it reads anything: a revoked
partition is dropped (after an auto-commit of its position and
``on_partitions_revoked``) and only then acknowledged, so the coordinator
hands it to another member only after this one stopped reading it; records
of a newly assigned partition are read only after ``assign`` was applied
(from the committed offset, else ``auto_offset_reset``). Records returned by a
poll are the caller's to process until its next poll, which is when revokes
are acknowledged: the same contract as Kafka's.

The hook costs, per round of ``poll``, one clock read and two attribute tests
when nothing is pending: no socket round trip. Heartbeats carry the time since
the last poll, so a process whose heartbeat thread runs but whose consumer
thread is stuck is removed after ``max_poll_interval_ms``; a process that is
stuck as a whole (no heartbeats) after ``session_timeout_ms``; a process that
died, as soon as the kernel closes its socket.

Commits go through the group's offsets table in shared memory
(``group_table.py``, ``layout/groups.py``): each ``assign`` names, per
partition, a slot of the table and this member's owner token there; a commit
is one kernel call per partition (``kernels/groups.py`` ``commit_offset``: a
128-bit CAS that writes the offset only while the slot's token is still
ours), a few µs for several partitions, no socket round trip. A fenced member
(the coordinator moved the token on: a rebalance, a timeout) gets
``CommitFailedError`` and writes nothing for that partition. ``committed()``
of an owned partition reads its slot; of any other, asks the coordinator.
Partitions without a slot (the coordinator's table full or missing) are
committed over the connection, as are all commits with
``SHMBUS_GROUP_COMMIT=socket`` (for comparison: a round trip costs tenths of a ms).

Safe for the consumer's one thread plus the member's own background thread.
If the process forks, the child must not use the parent's consumer.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import socket
import threading
import time

from shmbus.core import paths
from shmbus.errors import (
    CommitFailedError,
    InvalidConfigError,
    ShmbusError,
    SupervisorNotRunningError,
)
from shmbus.records import TopicPartition

log = logging.getLogger("shmbus.client.groups")

CALL_TIMEOUT_S = 10.0
RECONNECT_S = 0.5  # while the coordinator is away, poll() retries joining this often
RING_DELAYS_S = (0.0, 0.001, 0.003, 0.01, 0.03)  # doorbell rings after an inbox message


def not_running_error(data_dir: str) -> SupervisorNotRunningError:
    return SupervisorNotRunningError(
        f"consumer groups need the supervisor and none is running: data_dir={data_dir} (start it with "
        f"`shmbus serve --data-dir {data_dir}`, or use Bus(data_dir, autostart=True))")


def connect(data_dir: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(paths.groups_socket_path(data_dir))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise not_running_error(data_dir) from None
    return s


def request(data_dir: str, msg: dict, timeout: float = CALL_TIMEOUT_S) -> dict:
    """One request on a connection of its own (admin: list, describe, committed)."""
    s = connect(data_dir)
    try:
        s.settimeout(timeout)
        s.sendall(json.dumps({**msg, "id": 1}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            part = s.recv(65536)
            if not part:
                raise SupervisorNotRunningError(f"the supervisor closed the connection: data_dir={data_dir}")
            buf += part
    finally:
        s.close()
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise ShmbusError(f"the group coordinator refused: {resp.get('error')}")
    return resp


class GroupMember:
    def __init__(self, consumer, group_id, strategies, session_timeout_ms, max_poll_interval_ms,
                 enable_auto_commit, auto_commit_interval_ms):
        if not isinstance(group_id, str) or not group_id:
            raise InvalidConfigError(f"group_id must be a non-empty str: group_id={group_id!r}")
        self.group_id = group_id
        self.data_dir = consumer._bus.data_dir
        self.ctl = consumer._bus.ctl
        self.strategies = [s if isinstance(s, str) else s.name for s in strategies]
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.auto_commit = bool(enable_auto_commit)
        self.auto_commit_s = auto_commit_interval_ms / 1000.0
        self.pending = False  # set by the reader thread: the inbox has something for poll
        self.last_poll = time.monotonic()
        self.member_id = None
        self.generation = -1
        self.listener = None
        self.topics: list | None = None
        self.pattern = None
        self._next_auto = time.monotonic() + self.auto_commit_s
        self._inbox: collections.deque = collections.deque()
        self._calls: dict = {}
        self._call_seq = 0
        self._send_lock = threading.Lock()
        self._sock = None
        self._thread = None
        self._retry_at = 0.0
        self._want_join = False
        self._closed = False
        self._slots: dict = {}  # TopicPartition -> (slot, owner token) in the offsets table, while we own it
        self._table = None  # the group's offsets table, mapped (group_table.GroupTable)
        self._commit_fn = None  # kernels/groups.py commit_offset's compiled entry point (loaded on first commit)
        self._bus_id = consumer._bus.id
        self._shm_commits = os.environ.get("SHMBUS_GROUP_COMMIT", "shm") != "socket"
        # fail early, with the how-to, when no supervisor runs
        self._connect()

    # --- connection ---
    def _connect(self) -> None:
        s = connect(self.data_dir)
        self._sock = s
        self._thread = threading.Thread(target=self._reader, args=(s,), name=f"shmbus-group-{self.group_id}",
                                        daemon=True)
        self._thread.start()

    def _send(self, obj) -> None:
        s = self._sock
        if s is None:
            raise ConnectionError("not connected")
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            s.sendall(data)

    def _call(self, obj, timeout: float = CALL_TIMEOUT_S) -> dict:
        ev = threading.Event()
        with self._send_lock:
            self._call_seq += 1
            rid = self._call_seq
        slot = [ev, None]
        self._calls[rid] = slot
        try:
            if self._thread is None or not self._thread.is_alive():
                raise ConnectionError("the connection to the group coordinator closed")
            try:
                self._send({**obj, "id": rid})
            except OSError as e:
                raise ConnectionError(f"the group coordinator is not reachable: {e}") from None
            if not ev.wait(timeout):
                raise ConnectionError(f"the group coordinator did not answer within {timeout:.0f} s")
            if slot[1] is None:
                raise ConnectionError("the connection to the group coordinator closed")
            return slot[1]
        finally:
            self._calls.pop(rid, None)

    def _reader(self, s: socket.socket) -> None:
        """Background thread: coordinator messages in, heartbeats out."""
        hb_every = max(0.005, min(self.session_timeout_ms / 4000.0, 1.0))
        next_hb = time.monotonic() + hb_every
        rings: list = []
        buf = b""
        p = select.poll()
        p.register(s, select.POLLIN)
        lost = "the connection to the group coordinator closed (the supervisor stopped?)"
        try:
            while not self._closed:
                now = time.monotonic()
                wake = min([next_hb] + rings)
                if p.poll(max(0.0, wake - now) * 1000.0):
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        msg = json.loads(line)
                        if msg.get("op") == "reply":
                            slot = self._calls.get(msg.get("id"))
                            if slot is not None:
                                slot[1] = msg
                                slot[0].set()
                        else:
                            self._inbox.append(msg)
                            self.pending = True
                            t = time.monotonic()
                            rings = [t + d for d in RING_DELAYS_S]
                now = time.monotonic()
                if rings and now >= rings[0]:
                    while rings and now >= rings[0]:
                        rings.pop(0)
                    if self.pending:
                        self.ctl.ring_doorbell()
                    else:
                        rings = []
                if now >= next_hb:
                    next_hb = now + hb_every
                    try:
                        self._send({"op": "hb", "since_poll_ms": int((now - self.last_poll) * 1000)})
                    except OSError:
                        break
        except Exception as e:  # noqa: BLE001 (never die silently: the consumer sees the connection as lost)
            lost = f"the group connection failed: {type(e).__name__}: {e}"
        finally:
            for slot in list(self._calls.values()):
                slot[0].set()
            if not self._closed and self._sock is s:
                self._inbox.append({"op": "lost", "reason": lost})
                self.pending = True
                try:
                    self.ctl.ring_doorbell()
                except (OSError, ValueError, TypeError):  # the bus was closed under us
                    log.debug("no doorbell to ring (the bus is closed)")

    # --- subscription ---
    def subscribe(self, consumer, topics, pattern, listener) -> None:
        self.topics = list(topics)
        self.pattern = pattern
        self.listener = listener
        consumer._subscription = list(topics)
        if self.member_id is None:
            self._join(consumer)
        else:
            self._call_ok({"op": "subscribe", "topics": self.topics, "pattern": pattern})

    def unsubscribe(self, consumer) -> None:
        self._leave(consumer, autocommit=self.auto_commit)
        self.topics = None
        self.pattern = None
        consumer._subscription = None

    def _join(self, consumer) -> None:
        if self._sock is None:
            self._connect()
        resp = self._call_ok({
            "op": "join", "group": self.group_id, "pid": os.getpid(), "topics": self.topics,
            "pattern": self.pattern, "strategies": self.strategies,
            "session_timeout_ms": self.session_timeout_ms, "max_poll_interval_ms": self.max_poll_interval_ms})
        self.member_id = resp["member_id"]
        self._want_join = False

    def _call_ok(self, obj) -> dict:
        try:
            resp = self._call(obj)
        except ConnectionError as e:
            raise SupervisorNotRunningError(f"{e}: group={self.group_id!r} data_dir={self.data_dir} (is the supervisor "
                                            f"running? `shmbus status --data-dir {self.data_dir}`)") from None
        if not resp.get("ok"):
            raise ShmbusError(f"the group coordinator refused: {resp.get('error')} (group={self.group_id!r})")
        return resp

    # --- the poll hook ---
    def before_poll(self, consumer) -> None:
        """Called at the top of every round of poll: apply rebalances, auto-commit."""
        now = time.monotonic()
        self.last_poll = now
        if self.pending:
            self._apply(consumer)
        if self.auto_commit and now >= self._next_auto:
            self._next_auto = now + self.auto_commit_s
            self._commit_quietly(consumer, None)

    def _apply(self, consumer) -> None:
        self.pending = False
        while self._inbox:
            msg = self._inbox.popleft()
            op = msg.get("op")
            if op == "revoke":
                gone = [tp for tp in map(topic_partition, msg["partitions"]) if tp in consumer._parts]
                if gone and self.auto_commit:
                    self._commit_quietly(consumer, gone)
                if gone:
                    self._callback("on_partitions_revoked", set(gone))
                _assign(consumer, [tp for tp in consumer._parts if tp not in set(gone)])
                for tp in map(topic_partition, msg["partitions"]):
                    self._slots.pop(tp, None)
                self._try_send({"op": "revoked", "gen": msg["gen"], "partitions": msg["partitions"]})
            elif op == "assign":
                add = [topic_partition(x) for x in msg["add"]]
                if add:
                    _assign(consumer, list(consumer._parts) + add)
                    for tp, off in zip(add, msg["committed"]):
                        p = consumer._parts[tp]
                        p.position = off
                        p.cursor = -1
                    self._take_slots(add, msg)
                self.generation = msg["gen"]
                if add:
                    self._callback("on_partitions_assigned", set(add))
                self._try_send({"op": "applied", "gen": msg["gen"]})
            elif op in ("removed", "lost"):
                self._drop_all(consumer, msg.get("reason", op), lost=True)
                self._slots.clear()
                self.member_id = None
                if op == "lost":
                    self._close_socket()
                self._want_join = self.topics is not None
        if self._want_join and not self._closed:
            now = time.monotonic()
            if now < self._retry_at:
                self.pending = True  # come back on a later poll
                return
            try:
                self._join(consumer)
            except (SupervisorNotRunningError, ShmbusError) as e:
                self._close_socket()
                self._retry_at = now + RECONNECT_S
                self.pending = True
                log.debug("rejoin failed, retrying: %s", e)

    def _drop_all(self, consumer, reason, lost=False) -> None:
        tps = set(consumer._parts)
        if tps:
            log.warning("group %s: lost partitions %s: %s", self.group_id, sorted(tps), reason)
            name = "on_partitions_lost" if lost and hasattr(self.listener, "on_partitions_lost") else "on_partitions_revoked"
            self._callback(name, tps)
        _assign(consumer, [])

    def _callback(self, name, tps) -> None:
        fn = getattr(self.listener, name, None)
        if fn is None:
            return
        try:
            fn(tps)
        except Exception:
            log.exception("rebalance listener %s failed (group %s)", name, self.group_id)

    def _try_send(self, obj) -> None:
        try:
            self._send(obj)
        except (OSError, ConnectionError):
            pass  # the reader thread reports the lost connection

    def _close_socket(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(2)

    # --- offsets ---
    def _take_slots(self, add, msg) -> None:
        """Remember the table slots and token of newly assigned partitions (mapping the table if new)."""
        slots = msg.get("slots") or ()
        if not any(s >= 0 for s in slots):
            return
        inc = msg.get("table")
        if self._table is None or self._table.incarnation != inc:
            self._close_table()
            from shmbus.core.offsets_table import GroupTable

            try:
                t = GroupTable.open(paths.group_table_name(self._bus_id, self.group_id))
            except Exception as e:  # noqa: BLE001 (commits of these partitions go over the socket)
                log.warning("group %s: cannot map the offsets table, committing over the socket: %s", self.group_id, e)
                return
            if t.incarnation != inc:  # made again since this assign was sent: the next assign names it
                t.close()
                return
            self._table = t
        tok = int(msg["token"])
        for tp, s in zip(add, slots):
            if s >= 0:
                self._slots[tp] = (int(s), tok)

    def _close_table(self) -> None:
        t, self._table = self._table, None
        self._slots.clear()
        if t is not None:
            t.close()

    def _positions(self, consumer, tps=None) -> dict:
        parts = consumer._parts
        return {tp: parts[tp].settled_position() for tp in (tps if tps is not None else parts)
                if tp in parts and parts[tp].position is not None}

    def commit(self, consumer, offsets=None) -> None:
        if offsets is None:
            offsets = self._positions(consumer)
        else:
            clean = {}
            for tp, off in dict(offsets).items():
                off = getattr(off, "offset", off)  # kafka-python's OffsetAndMetadata
                if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                    raise ValueError(f"offset must be an int >= 0: offset={off!r}")
                clean[TopicPartition(*tp)] = off
            offsets = clean
        if not offsets:
            return
        if self.member_id is None or self._sock is None:
            raise CommitFailedError(
                f"commit refused: this consumer is not a member of its group right now: group={self.group_id!r} "
                f"(it was removed or lost the coordinator; poll() rejoins; commit what you read after that)")
        slots = self._slots
        if slots and self._shm_commits:
            fn = self._commit_fn
            if fn is None:
                from shmbus.core import native

                if native.commit_offset is not None:
                    fn = native.commit_offset  # compiled: a commit needs no numba (its load takes ~0.5 s)
                else:
                    from shmbus.kernels import groups as group_kernels

                    fn = group_kernels.entry("commit_offset")
                self._commit_fn = fn
            addr = self._table.address
            rest = {}
            fenced = None
            for tp, off in offsets.items():
                s = slots.get(tp)
                if s is None:
                    rest[tp] = off
                elif fn(addr, s[0], s[1], off) != 0 and fenced is None:
                    fenced = tp
            if fenced is not None:
                s = slots[fenced]
                raise CommitFailedError(
                    f"commit refused: the partition is no longer owned by this member: group={self.group_id!r} "
                    f"member_id={self.member_id} topic={fenced.topic!r} partition={fenced.partition} "
                    f"generation={s[1] >> 32} (the coordinator moved it in a rebalance or removed this member; "
                    f"nothing was written for it; poll() applies the change, and commit only what you read after it)")
            if not rest:
                return
            offsets = rest
        try:
            resp = self._call({"op": "commit", "gen": self.generation,
                               "offsets": [[tp.topic, tp.partition, off] for tp, off in offsets.items()]})
        except ConnectionError as e:
            raise CommitFailedError(f"commit failed: {e}: group={self.group_id!r} (the supervisor stopped? "
                                    f"the partitions count as lost; poll() rejoins)") from None
        if not resp.get("ok"):
            raise CommitFailedError(f"{resp.get('error')} (group={self.group_id!r})")

    def _commit_quietly(self, consumer, tps) -> None:
        try:
            self.commit(consumer, self._positions(consumer, tps))
        except (CommitFailedError, ShmbusError) as e:
            log.info("group %s: auto-commit failed: %s", self.group_id, e)

    def committed(self, tp):
        tp = TopicPartition(*tp)
        s = self._slots.get(tp)
        if s is not None and self._shm_commits:
            off = self._table.offset(s[0])
            return None if off < 0 else off
        msg = {"op": "committed", "group": self.group_id, "partitions": [list(tp)]}
        if self._sock is not None:
            try:
                resp = self._call(msg)
                if resp.get("ok"):
                    return resp["offsets"][0]
            except ConnectionError:
                pass
        return request(self.data_dir, msg)["offsets"][0]

    # --- leaving ---
    def _leave(self, consumer, autocommit: bool) -> None:
        if autocommit and self.member_id is not None:
            self._commit_quietly(consumer, None)
        if consumer._parts:
            self._callback("on_partitions_revoked", set(consumer._parts))
        _assign(consumer, [])
        self._slots.clear()
        if self.member_id is not None and self._sock is not None:
            try:
                self._call({"op": "leave"}, timeout=5.0)
            except ConnectionError:
                pass
        self.member_id = None
        self._inbox.clear()
        self.pending = False

    def close(self, consumer, autocommit: bool) -> None:
        if self._closed:
            return
        try:
            self._leave(consumer, autocommit and self.auto_commit)
        finally:
            self._closed = True
            self._close_socket()
            self._close_table()


def topic_partition(x) -> TopicPartition:
    """A TopicPartition from its wire form [topic, partition, ...]."""
    return TopicPartition(str(x[0]), int(x[1]))


def _assign(consumer, tps) -> None:
    """Set the consumer's partitions; keep its one-partition short path off, so that every
    poll goes through the round where ``before_poll`` runs."""
    consumer._set_assignment(tps)
    consumer._single = None


__all__ = ["GroupMember", "connect", "not_running_error", "request"]
