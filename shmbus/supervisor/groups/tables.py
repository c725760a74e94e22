"""The groups' offsets tables in shared memory, as the coordinator keeps them.

One table per group (``core/offsets_table.py``, bytes in ``layout/groups.py``),
made on the group's first grant: one slot per (topic, partition) the group was
ever granted, holding (owner token, committed offset) as one 128-bit word.
Granting a partition moves the slot's token to the new owner's with a 128-bit
CAS that also reads the committed offset; a release moves it to 0 the same
way. Members commit into their slots themselves (``kernels/groups.py``).

This is the owner table the state machine (``state.py``) grants and releases
through; the offsets it reads land in the group's ``offsets`` (``Group.take_offset``).
"""

from __future__ import annotations

import os

import numpy as np
import posix_ipc

from shmbus.core import ownership, paths
from shmbus.core.offsets_table import GroupTable
from shmbus.errors import ForeignObjectError, ShmbusError
from shmbus.kernels import groups as group_kernels
from shmbus.layout import groups as group_layout
from shmbus.records import TopicPartition


class _GroupTableState:
    """One group's table and what the coordinator knows of its slots."""

    __slots__ = ("seen", "slot_tp", "slots", "table", "table_error", "tokens")

    def __init__(self):
        self.table: GroupTable | None = None  # made on the first grant
        self.table_error = None  # why there is none (then commits go over the socket)
        self.slots: dict[TopicPartition, int] = {}
        self.slot_tp: list = []  # slot -> TopicPartition (None: a slot of a topic we cannot name)
        self.tokens: dict[TopicPartition, int] = {}  # owner tokens now in the table
        self.seen = np.zeros(0, np.int64)  # the slots' offsets at the last read


class OffsetsTables:
    """The offsets tables of one bus's groups, keyed by group id."""

    def __init__(self, bus_id: str, log):
        self.bus_id = bus_id
        self.log = log
        self._by_group: dict[str, _GroupTableState] = {}

    def _state(self, g) -> _GroupTableState:
        s = self._by_group.get(g.id)
        if s is None:
            s = self._by_group[g.id] = _GroupTableState()
        return s

    def table(self, g) -> GroupTable | None:
        """The group's table, made now if it has none (None if it cannot be made: socket commits then)."""
        s = self._state(g)
        if s.table is None and s.table_error is None:
            name = paths.group_table_name(self.bus_id, g.id)
            try:
                try:
                    s.table = GroupTable.create(name, g.id, group_layout.SLOTS)
                except posix_ipc.ExistentialError:  # a leftover nobody adopted (a group id cut in its header?)
                    ownership.check_path(name)  # never another user's: that one stays as it is
                    unlink_shm(name)
                    s.table = GroupTable.create(name, g.id, group_layout.SLOTS)
            except (ShmbusError, OSError, posix_ipc.Error) as e:
                s.table_error = str(e)
                self.log(f"no offsets table for the group, its commits go over the socket: group={g.id!r}: {e}")
        return s.table

    def incarnation(self, g) -> int | None:
        """The table's incarnation (members check they opened this one), or None without a table."""
        s = self._by_group.get(g.id)
        return s.table.incarnation if s is not None and s.table is not None else None

    def grant(self, g, tp: TopicPartition, token: int) -> int:
        """Make ``token`` the owner of tp's slot (a slot is given on first use); returns the slot, or -1."""
        t = self.table(g)
        if t is None:
            return -1
        s = self._state(g)
        slot = s.slots.get(tp)
        if slot is None:
            slot = t.publish_slot(tp.topic, tp.partition, g.offsets.get(tp, group_layout.NO_OFFSET))
            if slot < 0:
                if s.table_error is None:
                    s.table_error = f"the offsets table is full: slots={t.slots}"
                    self.log(f"the group's offsets table is full, commits of partitions without a slot go over "
                             f"the socket: group={g.id!r} slots={t.slots}")
                return -1
            s.slots[tp] = slot
            s.slot_tp.append(tp)
        off = group_kernels.set_owner(t.address, slot, group_kernels.ANY, token)
        g.take_offset(tp, off)
        s.tokens[tp] = token
        return slot

    def release(self, g, tp: TopicPartition) -> None:
        """tp has no owner now: its slot's token goes to 0 (the offset it held is kept)."""
        s = self._by_group.get(g.id)
        if s is None:
            return
        token = s.tokens.pop(tp, None)
        if token is None or s.table is None:
            return
        g.take_offset(tp, group_kernels.set_owner(s.table.address, s.slots[tp], group_kernels.ANY,
                                                  group_layout.NO_OWNER))

    def release_all(self, g) -> None:
        """Every token to 0: no commit lands in the table after this."""
        s = self._by_group.get(g.id)
        if s is not None and s.table is not None:
            for tp in list(s.tokens):
                self.release(g, tp)

    def commit(self, g, tp: TopicPartition, off: int) -> None:
        """A commit that came over the socket lands in tp's slot too, if it has one (the table is the
        truth for its slots)."""
        s = self._by_group.get(g.id)
        if s is None or tp not in s.tokens:
            return
        status = group_kernels.commit_offset(s.table.address, s.slots[tp], s.tokens[tp], off)
        if status != group_kernels.OK:
            self.log(f"commit into the offsets table failed: status={status} group={g.id!r} "
                     f"topic={tp.topic!r} partition={tp.partition}")

    def refresh(self, g) -> None:
        """Bring the offsets committed into the table into ``g.offsets`` (marks the group dirty if any changed)."""
        s = self._by_group.get(g.id)
        if s is None or s.table is None or not s.slot_tp:
            return
        n = len(s.slot_tp)
        now = np.empty(n, np.int64)
        group_kernels.snapshot(s.table.address, n, now)
        old = s.seen
        if len(old) == n:
            changed = np.flatnonzero(now != old)
        else:
            changed = range(n)
        for slot in changed:
            tp = s.slot_tp[slot]
            if tp is not None:
                g.take_offset(tp, int(now[slot]))
        s.seen = now

    def close(self, g, unlink: bool) -> None:
        """Close the group's table; ``unlink`` also removes it (every offset is in the checkpoint)."""
        s = self._by_group.get(g.id)
        if s is not None and s.table is not None:
            if unlink:
                s.table.unlink()
            s.table.close()
            s.table = None

    def forget(self, g) -> None:
        """A deleted group: its table is unlinked and what is known of its slots dropped."""
        self.release_all(g)
        self.close(g, unlink=True)
        self._by_group.pop(g.id, None)

    def adopt(self, group, topics) -> None:
        """Tables left by a coordinator that was killed: adopt their offsets, fence their members.

        ``group(gid)`` gives the group of an id; ``topics`` the names of the bus's topics."""
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
                unlink_shm(name)
                continue
            gid = t.group_id()
            if not gid or paths.group_table_name(self.bus_id, gid) != name:
                self.log(f"removing an offsets table whose group id is cut or wrong: name={name}")
                t.close()
                unlink_shm(name)
                continue
            g = group(gid)
            s = self._state(g)
            keys = {group_layout.topic_key(x): x for x in set(topics) | {tp.topic for tp in g.offsets}}
            top_gen = 0
            lost = 0
            for slot in range(min(t.used(), t.slots)):
                key, part, flags = t.slot_meta(slot)
                top_gen = max(top_gen, group_layout.token_generation(t.token(slot)))
                # the old members are fenced
                off = group_kernels.set_owner(t.address, slot, group_kernels.ANY, group_layout.NO_OWNER)
                topic = keys.get(key) if flags & group_layout.FLAG_USED else None
                if topic is None:
                    s.slot_tp.append(None)
                    lost += off >= 0
                    continue
                tp = TopicPartition(topic, int(part))
                s.slots[tp] = slot
                s.slot_tp.append(tp)
                g.take_offset(tp, off)  # newer than the checkpoint
            s.table = t
            g.generation = max(g.generation, top_gen) + 1  # no new token equals an old one
            g.dirty = True
            self.log(f"adopted the offsets table of a previous coordinator: group={gid!r} slots={len(s.slot_tp)}"
                     + (f" (offsets of {lost} partitions of topics that no longer exist dropped)" if lost else ""))


def unlink_shm(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


__all__ = ["OffsetsTables", "unlink_shm"]
