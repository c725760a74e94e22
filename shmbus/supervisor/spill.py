"""The spiller: copies published frames from a ring to its segments, then frees the ring.

For each ring, in order: scan the published frames after RELEASED
(``spill_scan``), append the DATA frames to the active segment (padding is
not kept on disk), fsync if an ``acks="disk"`` producer waits, zero the ring
bytes and publish the new RELEASED (``release``). Producers may reuse ring
space only after that, so nothing is overwritten before it is on disk.
"""

from __future__ import annotations

import time

import numpy as np

from shmbus.kernels import frames as K
from shmbus.ring import Ring
from shmbus.segments.log import SegmentWriter
from shmbus.supervisor import unblock


class PartitionSpiller:
    """One ring and its segment writer. Used by the supervisor's spill thread only."""

    def __init__(self, ring: Ring, pdir: str, config: dict, now_ms: int, on_unblock=None):
        self.ring = ring
        self.on_unblock = on_unblock  # called after a dead claim became padding (wake readers)
        self.mv = ring.memoryview()
        self.writer = SegmentWriter(pdir, config["segment.bytes"], config["segment.ms"], now_ms)
        self.meta = np.zeros((4097, K.META_COLS), np.int64)
        self.blocked_pos = -1
        self.blocked_since = 0.0
        self.config = config
        self.spilled_frames = 0
        self.spilled_bytes = 0
        self.unblocked = 0

    def close(self) -> None:
        self.writer.close()
        self.mv.release()

    def spill(self, max_bytes: int) -> int:
        """Move published frames to disk; returns the ring bytes released."""
        ring = self.ring
        rel = ring.released()
        n = K.spill_scan(ring.buf, rel, max_bytes, self.meta)
        new = int(self.meta[0, 0])
        if n:
            rows = self.meta[1: n + 1]
            # ring indexes -> indexes into the ring's data area of the memoryview
            now_ms = int(time.time() * 1000)
            self.writer.append(self.mv, rows, now_ms)
            self.spilled_frames += n
            self.spilled_bytes += new - rel
        want = ring.durable_want()
        if want > ring.durable():
            self.writer.fsync()
            if self.writer.next_offset >= 0:
                ring.set_durable(self.writer.next_offset)
        if new > rel:
            K.release(ring.buf, rel, new)
            self.blocked_pos = -1
        if int(self.meta[0, 2]) == K.STOP_EMPTY and ring.claim_position() > new:
            self._maybe_unblock(new, int(self.meta[0, 3]))
        return new - rel

    def _maybe_unblock(self, pos: int, header: int) -> None:
        now = time.monotonic()
        if pos != self.blocked_pos:
            self.blocked_pos = pos
            self.blocked_since = now
            return
        action = unblock.decide(header, self.ring.claim_position() > pos, (now - self.blocked_since) * 1000.0,
                                unblock.pid_alive)
        done = False
        if action == unblock.PAD_RESERVED:
            done = K.unblock_reserved(self.ring.buf, pos, header)
        elif action == unblock.PAD_FREE:
            done = K.unblock_free(self.ring.buf, pos) > 0
        if done:
            self.unblocked += 1
            if self.on_unblock is not None:
                self.on_unblock()

    def roll_if_old(self, now_ms: int) -> None:
        if self.writer.should_roll(now_ms):
            self.writer.close()
            self.writer.fd = -1
