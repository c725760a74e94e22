"""The partition ring: one POSIX shared-memory object per partition.

::

    +--------------------------- 4096-byte header ---------------------------+
    | line 0 (+0)    magic u64 | version u32 | header bytes u32 | ring bytes  |
    |                u64 | base offset u64 | flags u64 | topic id u64 |        |
    |                partition u32 | max.message.bytes u64 (+56: the kernel  |
    |                refuses larger records; kept in step by alter and the    |
    |                supervisor)                                              |
    | line 1 (+64)   CLAIM: position u64 | next offset u64   (16-aligned, one  |
    |                128-bit compare-and-swap claims bytes and offsets)       |
    | line 2 (+128)  RELEASED position u64: the supervisor has spilled and     |
    |                zeroed everything below it; producers may claim up to    |
    |                RELEASED + ring bytes                                    |
    |                DURABLE offset u64 (+136): offsets below it are fsynced  |
    |                RECLAIMING position u64 (+144): the spiller may be       |
    |                zeroing bytes below it; readers check a copy against it  |
    |                (stored before the zeroing, RELEASED after)              |
    | line 3 (+192)  SLEEPERS i32: consumers asleep on this partition         |
    | line 4 (+256)  DURABLE_WANT u64: the highest offset an acks="disk"      |
    |                producer waits for; the spiller fsyncs while it is ahead |
    +--------------------------------------------------------------------------+
    | ring: ring bytes (a power of two) of frames, see layout/frame.py        |
    +--------------------------------------------------------------------------+

Positions are absolute byte counts that only grow; a position's place in the
ring is ``position & (ring bytes - 1)``. Each hot field has a cache line.

The bus control block (one per data dir) holds the wake-up words::

    +0    magic u64
    +64   DOORBELL u32: bumped by a producer that finds a sleeping consumer;
          consumers sleep on it with futex(FUTEX_WAIT)
    +128  SPILL_BELL u32: bumped by a producer whose ring passes half full;
          the supervisor's spiller sleeps on it
    +132  SPILLER_ASLEEP i32
    +192  SPILL_ERRNO u32: the errno of the supervisor's failing spills (ENOSPC: the
          disk is full), 0 while spilling works; a producer reads it when a full
          ring makes it give up, to say why
    +1024 DATA_DIR: u32 length, then the data dir's path in utf-8 (for tools
          that find objects in /dev/shm and ask whose they are)
"""

from __future__ import annotations

CACHE_LINE = 64
HEADER_BYTES = 4096
MAGIC = 0x3152_4742_4D48_5353  # b"SSHMBGR1" little-endian: "SSHMB" "GR1"
VERSION = 1

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_HEADER_BYTES = 12
OFF_RING_BYTES = 16
OFF_BASE_OFFSET = 24
OFF_FLAGS = 32
OFF_TOPIC_ID = 40
OFF_PARTITION = 48
OFF_MAX_MESSAGE = 56

OFF_CLAIM_POS = 1 * CACHE_LINE
OFF_CLAIM_OFFSET = OFF_CLAIM_POS + 8
OFF_RELEASED = 2 * CACHE_LINE
OFF_DURABLE = OFF_RELEASED + 8
OFF_RECLAIMING = OFF_RELEASED + 16
OFF_SLEEPERS = 3 * CACHE_LINE
OFF_DURABLE_WANT = 4 * CACHE_LINE

FLAG_DELETED = 1

# bus control block
CTL_BYTES = 4096
CTL_MAGIC = 0x3142_4C54_4342_5353
CTL_OFF_MAGIC = 0
CTL_OFF_DOORBELL = 1 * CACHE_LINE
CTL_OFF_SPILL_BELL = 2 * CACHE_LINE
CTL_OFF_SPILLER_ASLEEP = CTL_OFF_SPILL_BELL + 4
CTL_OFF_SPILL_ERRNO = 3 * CACHE_LINE
CTL_OFF_DATA_DIR = 1024

MIN_RING_BYTES = 4096

assert OFF_CLAIM_POS % 16 == 0
assert OFF_MAX_MESSAGE + 8 <= CACHE_LINE
assert OFF_SLEEPERS + 4 <= HEADER_BYTES
