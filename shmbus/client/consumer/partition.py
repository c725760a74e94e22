"""The read state of one assigned partition: its ring, its files, its position and cursor.

Each assigned partition has a *position* (the next offset to return) and a
*cursor*: a ring position from which scanning, skipping offsets below the
position, yields exactly the records due; -1 when unknown (then the consumer
locates, see fetch.py). With the compiled verbs a ``native.Reader`` holds both
(``CompiledPartitionState``), so that its single-record reads need no Python.
"""

from __future__ import annotations

from shmbus.core import native
from shmbus.layout import frame
from shmbus.layout import ring as ring_layout
from shmbus.records import ConsumerRecord

# indexes into a ring's int64 view, which starts with its header
RING_WORD0 = ring_layout.HEADER_BYTES // 8  # the word of ring position 0
WORD_RELEASED = ring_layout.OFF_RELEASED // 8
WORD_RECLAIMING = ring_layout.OFF_RECLAIMING // 8
WORD_CLAIM_POS = ring_layout.OFF_CLAIM_POS // 8
WORD_CLAIM_OFFSET = ring_layout.OFF_CLAIM_OFFSET // 8
TYPE_BITS = frame.TYPE_MASK << frame.TYPE_SHIFT  # a header word's type: 0 (FREE) = nothing published there


class PartitionState:
    """Read state of one assigned partition, read with the general path (scan kernels)."""

    __slots__ = ("tp", "ring", "log", "position", "cursor", "paused", "words", "mv", "mask", "ring_bytes",
                 "addr", "reader")

    def __init__(self, tp, ring, log, reader=None):
        self.reader = reader  # a native.Reader (in CompiledPartitionState), set first: it holds cursor and position
        self.tp = tp
        self.ring = ring
        self.log = log
        self.position = None
        self.cursor = -1
        self.paused = False
        self.mv = ring.memoryview()
        self.words = self.mv.cast("q")
        self.mask = ring.mask
        self.ring_bytes = ring.ring_bytes
        self.addr = ring.address

    def word_at(self, c: int) -> int:
        """The index in ``words`` of the header word at ring position ``c``."""
        return RING_WORD0 + ((c & self.mask) >> 3)

    def settled_position(self):
        """The position, moved past offsets that no record will ever have.

        A writer that died between claim and publish took offsets that the
        supervisor turned into padding: a gap. Behind it the next record's
        offset moves the position on; but when the dead claim was the last
        one, nothing would, and a caught-up reader would stay below
        ``end_offsets`` (and its lag above 0) for good. When the cursor stands
        at the claim tail, every offset below the tail's next offset has been
        read, skipped or lost, so the position is at least that. The two words
        are read as a seqlock: the claim position grows with every claim and is
        written together with the offset (one 16-byte compare-and-swap).
        """
        pos = self.position
        c = self.cursor
        if pos is None or c < 0:
            return pos
        q = self.words
        if q[WORD_CLAIM_POS] != c:
            return pos
        nxt = q[WORD_CLAIM_OFFSET]
        if q[WORD_CLAIM_POS] == c and nxt > pos:
            self.position = nxt
            return nxt
        return pos

    def release(self) -> None:
        """Let go of the ring's views and the partition's files."""
        self.words.release()
        self.mv.release()
        self.log.close()


class CompiledPartitionState(PartitionState):
    """A partition read through a compiled ``native.Reader``, which owns the cursor and position."""

    __slots__ = ()

    def __init__(self, tp, ring, log):
        super().__init__(tp, ring, log, native.Reader(ring.address, tp, ConsumerRecord))

    @property
    def cursor(self):
        return self.reader.cursor

    @cursor.setter
    def cursor(self, c):
        self.reader.cursor = c

    @property
    def position(self):
        v = self.reader.position_raw
        return None if v == frame.POS_NONE else v

    @position.setter
    def position(self, v):
        self.reader.position_raw = frame.POS_NONE if v is None else v


def partition_state(tp, ring, log) -> PartitionState:
    """The read state of a newly assigned partition: compiled when the C ``Reader`` is loaded."""
    if native.Reader is not None:
        return CompiledPartitionState(tp, ring, log)
    return PartitionState(tp, ring, log)
