"""A consumer group's offsets table in shared memory (bytes: ``layout/groups.py``).

Only the coordinator creates one (:meth:`GroupTable.create`); members
:meth:`~GroupTable.open` it, by name, when an ``assign`` tells them a slot.
Python reads words through a memoryview cast to int64 (an aligned 8-byte
load, as ``ring.py`` does); every change to a slot's (owner token, offset)
word goes through the kernels in ``kernels/groups.py``. No numba here: the
coordinator and the describe path import this without loading kernels.
"""

from __future__ import annotations

import secrets

import numpy as np

from shmbus.errors import ShmbusError
from shmbus.layout import groups as G
from shmbus.core.ring import create_shm, Mapped, open_shm, unlink

_Q = 8


class GroupTable(Mapped):
    def __init__(self, name: str, mm: np.ndarray):
        super().__init__(name, mm, len(mm))
        w = self.words
        if w[G.OFF_MAGIC // _Q] != G.MAGIC or (w[G.OFF_VERSION // _Q] & 0xFFFF_FFFF) != G.VERSION:
            size = len(mm)
            self.close()
            raise ShmbusError(f"not a group offsets table (bad magic or version): name={name} bytes={size} "
                              f"(`shmbus doctor` lists and removes leftovers)")
        self.slots = w[G.OFF_SLOTS // _Q]
        self.incarnation = w[G.OFF_INCARNATION // _Q]
        if len(mm) < G.table_bytes(self.slots):
            self.close()
            raise ShmbusError(f"group offsets table too short for its slot count: name={name} (remove it)")

    @classmethod
    def create(cls, name: str, group_id: str, slots: int = G.SLOTS) -> GroupTable:
        """Make the table (exclusively, mode 0600, pages reserved); raises posix_ipc.ExistentialError if it exists."""
        mm = create_shm(name, G.table_bytes(slots))
        w = memoryview(mm)[: G.HEADER_BYTES].cast("q")
        w[G.OFF_VERSION // _Q] = G.VERSION | (G.HEADER_BYTES << 32)
        w[G.OFF_SLOTS // _Q] = slots
        w[G.OFF_SLOT_BYTES // _Q] = G.SLOT_BYTES
        w[G.OFF_USED // _Q] = 0
        w[G.OFF_INCARNATION // _Q] = secrets.randbits(62) + 1
        gid = group_id.encode()[: G.MAX_GROUP_BYTES]
        mv = memoryview(mm)
        mv[G.OFF_GROUP_LEN: G.OFF_GROUP_LEN + 4] = len(gid).to_bytes(4, "little")
        mv[G.OFF_GROUP: G.OFF_GROUP + len(gid)] = gid
        mv.release()
        w[G.OFF_MAGIC // _Q] = G.MAGIC  # last: the table is ready
        w.release()
        return cls(name, mm)

    @classmethod
    def open(cls, name: str) -> GroupTable:
        """Map an existing table; raises posix_ipc.ExistentialError if there is none, ShmbusError if it is not one."""
        return cls(name, open_shm(name))

    def unlink(self) -> bool:
        return unlink(self.name)

    # --- reads (any process) ---
    def group_id(self) -> str:
        n = int.from_bytes(bytes(self._mm[G.OFF_GROUP_LEN: G.OFF_GROUP_LEN + 4]), "little")
        return bytes(self._mm[G.OFF_GROUP: G.OFF_GROUP + min(n, G.MAX_GROUP_BYTES)]).decode("utf-8", "replace")

    def used(self) -> int:
        return self.words[G.OFF_USED // _Q]

    def offset(self, slot: int) -> int:
        return self.words[(G.slot_at(slot) + G.S_OFFSET) // _Q]

    def token(self, slot: int) -> int:
        return self.words[(G.slot_at(slot) + G.S_TOKEN) // _Q]

    def slot_meta(self, slot: int) -> tuple[int, int, int]:
        """(topic key, partition, flags) of a slot."""
        i = G.slot_at(slot) // _Q
        tail = self.words[i + 3]
        return self.words[i + 2], tail & 0xFFFF_FFFF, (tail >> 32) & 0xFFFF_FFFF

    # --- the coordinator's ---
    def publish_slot(self, topic: str, partition: int, offset: int) -> int:
        """Give the next free slot to (topic, partition), no owner, ``offset``; returns it, or -1 if the table is full."""
        s = self.used()
        if s >= self.slots:
            return -1
        i = G.slot_at(s) // _Q
        w = self.words
        w[i] = G.NO_OWNER
        w[i + 1] = offset
        w[i + 2] = G.topic_key(topic)
        w[i + 3] = (partition & 0xFFFF_FFFF) | (G.FLAG_USED << 32)
        w[G.OFF_USED // _Q] = s + 1  # a member learns the slot later, from a socket message
        return s


__all__ = ["GroupTable"]
