r"""A consumer group's offsets table: one POSIX shared-memory object per group.

Named ``/shmbus-<bus id>-g-<first 12 hex digits of sha1(group id)>`` (see
``_paths.group_table_name``), mode 0600, made only by the group coordinator
(``supervisor/groups/``); members open it and commit into it.

::

    +--------------------------- 4096-byte header ---------------------------+
    | +0   magic u64                                                          |
    | +8   version u32 | header bytes u32                                     |
    | +16  slot count u64 (N)                                                 |
    | +24  slot bytes u64 (32)                                                |
    | +32  USED u64: slots 0..USED-1 name a partition (the coordinator hands  |
    |      slots out in order and never takes one back)                       |
    | +40  incarnation u64: random, new for every table made; an ``assign``   |
    |      carries it, so a member never commits into a table it mapped      |
    |      before the coordinator made a new one                              |
    | +64  group id length u32, then the group id in utf-8 (+68; cut at       |
    |      4028 bytes: the object's name is the key, this is for tools)      |
    +--------------------------------------------------------------------------+
    | slot 0 (+4096), slot 1 (+4128), ... slot N-1: 32 bytes each              |
    +--------------------------------------------------------------------------+

One slot, 16-byte aligned::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +---------------------------------------------------------------+
    |  owner token (u64): generation << 32 | member number;          | +0  \  ONE 128-bit word:
    |                     0 = no owner                               |      |  every change is one
    +---------------------------------------------------------------+      |  cmpxchg16b of both
    |  committed offset (i64): the next offset to read; -1 = none    | +8  /  halves
    |                                                                |
    +---------------------------------------------------------------+
    |  topic key (u64): the first 8 bytes of sha1(topic name), LE    | +16
    |                                                                |
    +---------------------------------------------------------------+
    |  partition (u32)                                               | +24
    +---------------------------------------------------------------+
    |  flags (u32): 1 = the slot names a partition                   | +28
    +---------------------------------------------------------------+

Who writes what:

- the coordinator writes a slot's topic key, partition and flags before it
  publishes the slot (USED, then the slot index in an ``assign``);
- the coordinator alone changes owner tokens, each with a 128-bit CAS
  (old token, offset) -> (new token, same offset): the offset it reads in
  that CAS is the partition's committed offset at the moment of the handover;
- a member changes only offsets, with a 128-bit CAS
  (its token, offset) -> (its token, new offset), so a commit lands only
  while the member owns the partition: once the coordinator has moved the
  token (to 0 or to the next owner), the old owner's CAS fails ("fenced") and
  its offset is never written over its successor's.

The coordinator reads the offsets every checkpoint tick (and before it
answers ``committed`` or ``describe``) into its checkpoint file.
"""

from __future__ import annotations

import hashlib

HEADER_BYTES = 4096
MAGIC = 0x3154_4f47_424d_5353  # b"SSMBGOT1" little-endian: "SSMB" "GOT1" (group offsets table)
VERSION = 1
SLOTS = 8192  # 4096 + 8192 * 32 = 266,240 bytes per group
SLOT_BYTES = 32

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_SLOTS = 16
OFF_SLOT_BYTES = 24
OFF_USED = 32
OFF_INCARNATION = 40
OFF_GROUP_LEN = 64
OFF_GROUP = 68
MAX_GROUP_BYTES = HEADER_BYTES - OFF_GROUP

# within a slot
S_TOKEN = 0
S_OFFSET = 8
S_TOPIC = 16
S_PARTITION = 24
S_FLAGS = 28

FLAG_USED = 1
# commit_offset's answers (kernels/groups.py and shmbus/core/_native.c)
COMMIT_OK = 0
COMMIT_FENCED = -2  # the slot's owner token is not the caller's: nothing written
COMMIT_BAD_SLOT = -3  # no such slot in this table

NO_OFFSET = -1
NO_OWNER = 0


def table_bytes(slots: int = SLOTS) -> int:
    return HEADER_BYTES + slots * SLOT_BYTES


def slot_at(slot: int) -> int:
    """The byte index of a slot in the table."""
    return HEADER_BYTES + slot * SLOT_BYTES


def token(generation: int, member_number: int) -> int:
    """An owner token (never 0 for a real member: member numbers start at 1)."""
    return ((generation & 0x7FFF_FFFF) << 32) | (member_number & 0xFFFF_FFFF)


def token_generation(tok: int) -> int:
    return (tok >> 32) & 0x7FFF_FFFF


def topic_key(topic: str) -> int:
    """The slot's topic key: 8 bytes of sha1(topic name) as a signed int64 (how kernels and numpy see it)."""
    v = int.from_bytes(hashlib.sha1(topic.encode()).digest()[:8], "little")
    return v - (1 << 64) if v >= 1 << 63 else v


assert slot_at(0) % 16 == 0 and SLOT_BYTES % 16 == 0
assert OFF_GROUP + 4 <= HEADER_BYTES
