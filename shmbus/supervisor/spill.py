"""The spiller: copies published frames from a ring to its segments, then frees the ring.

For each ring, in order: scan the published frames after the spilled
position (``spill_scan``), append the DATA frames to the active segment
(padding is not kept on disk), fsync if an ``acks="disk"`` producer waits;
then, when the ring passes half full, zero the oldest spilled bytes and
publish the new RELEASED (``release``, policy in :func:`release_to`).
Producers may reuse ring space only after that, so nothing is overwritten
before it is on disk; and records stay readable in the ring for a while
after they are on disk.

A claim the unblocker fenced (a live writer stalled mid-send past the
topic's ``unblock.timeout.ms``; see ``unblock.py``) is padding that readers
and the spill step over at once, but RELEASED does not pass it while its
writer may still write there: until that writer lets go (its failed publish
clears the padding's pid) or is gone. So producers may block on a full ring
behind a stalled writer; readers do not.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from shmbus.kernels import frames as frame_kernels
from shmbus.layout import frame as frame_layout
from shmbus.core.ring import Ring
from shmbus.log.writer import SegmentWriter
from shmbus.supervisor import unblock


def release_to(released: int, claim: int, boundaries, ring_bytes: int, hold: int | None = None) -> int | None:
    """Where RELEASED should move now, or None (a pure policy).

    Freeing ring space is needed only for producers, and it pushes readers
    that are a little behind onto the disk path, so: nothing while at most
    half the ring is in use; past that, free up to the last spilled frame
    boundary that still leaves the newest quarter of the ring for readers
    (or, failing one, the first boundary there is). ``hold``: a spilled frame
    boundary (a held fenced claim's start) never to pass; it counts as a boundary.
    """
    if claim - released <= ring_bytes // 2:
        return None
    if hold is not None:
        boundaries = [b for b in boundaries if b < hold] + [hold]
    keep_from = claim - ring_bytes // 4
    best = None
    for b in boundaries:
        if b <= released:
            continue
        if b <= keep_from:
            best = b
        elif best is None:
            return b
        else:
            break
    return best


class PartitionSpiller:
    """One ring and its segment writer. Used by the supervisor's spill thread only."""

    def __init__(self, ring: Ring, pdir: str, config: dict, now_ms: int, on_unblock=None, pool=None):
        # the log-keeper thread (daemon.py keep_logs) works beside the spill thread
        self.state_lock = threading.Lock()  # the writer's state: held while spilling
        self.keep_lock = threading.Lock()  # held by the keeper while it keeps this partition
        self.ring = ring
        self.on_unblock = on_unblock  # called after a dead claim became padding (wake readers)
        self.mv = ring.memoryview()
        # pool: the supervisor's bound on open segment files (log.py FilePool)
        self.writer = SegmentWriter(pdir, config["segment.bytes"], config["segment.ms"], now_ms,
                                    pool=pool, lock=self.state_lock)
        self.meta = np.zeros((4097, frame_kernels.META_COLS), np.int64)
        self.blocked_pos = -1
        self.blocked_since = 0.0
        self.stuck = False
        # frames below spilled_pos are on disk; RELEASED (<= spilled_pos) lags on purpose so
        # that readers a little behind still find recent records in the ring
        if ring.reclaiming() > ring.released():
            # a supervisor died while zeroing: what it was freeing is on disk; finish the job
            frame_kernels.release(ring.buf, ring.released(), ring.reclaiming())
        self.spilled_pos = ring.released()
        self.boundaries: deque[int] = deque()  # frame boundaries RELEASED may move to
        self.config = config
        self.spilled_frames = 0
        self.spilled_bytes = 0
        self.unblocked = 0
        self.fenced = 0  # claims of live stalled writers turned into padding
        self.fences: dict[int, tuple[int, object]] = {}  # fenced claim pos -> (pid, process start)
        self.held_by = None  # the pid of the stalled writer RELEASED waits for (status)
        self.closed = False

    def close(self) -> None:
        self.writer.close()
        self.mv.release()

    def spill(self, max_bytes: int) -> int:
        """Copy newly published frames to disk; free ring space when the ring passes half full.

        Returns the bytes spilled (work done).
        """
        ring = self.ring
        frm = self.spilled_pos
        # never past RELEASED + ring: in an exactly full ring the next word is the oldest frame
        max_bytes = min(max_bytes, ring.released() + ring.ring_bytes - frm)
        n = frame_kernels.spill_scan(ring.buf, frm, max_bytes, self.meta)
        new = int(self.meta[0, frame_layout.MS_POS])
        if n:
            rows = self.meta[1: n + 1]
            now_ms = int(time.time() * 1000)
            self.writer.append(self.mv, rows, now_ms)  # skips what is on disk already (a restart)
            if rows[:, frame_layout.SP_PID].any():  # fenced claims (padding with a pid): hold RELEASED before them
                self._note_fences(frm, rows)
            self.spilled_frames += n
            self.spilled_bytes += new - frm
        if new > frm:
            self.spilled_pos = new
            self.boundaries.append(new)
            self.blocked_pos = -1
            self.stuck = False
        want = ring.durable_want()
        if want > ring.durable():
            self.writer.fsync()
            if self.writer.next_offset >= 0:
                ring.set_durable(self.writer.next_offset)
        # (every round, also one that found nothing new: a release may take two rounds, and a
        # producer waiting for ring space publishes nothing until it is done)
        rel = ring.released()
        to = release_to(rel, ring.claim_position(), self.boundaries, ring.ring_bytes, self._hold())
        if to is not None:
            frame_kernels.release(ring.buf, rel, to)
            while self.boundaries and self.boundaries[0] <= to:
                self.boundaries.popleft()
        if int(self.meta[0, frame_layout.MS_REASON]) == frame_kernels.STOP_EMPTY and ring.claim_position() > new:
            self._maybe_unblock(new, int(self.meta[0, frame_layout.MS_BAD]))  # the blocked header word
        return new - frm

    def _note_fences(self, frm: int, rows) -> None:
        ends = frm + np.cumsum(rows[:, frame_layout.SP_LEN])
        for k in np.nonzero(rows[:, frame_layout.SP_PID])[0]:
            pos = int(ends[k] - rows[k, frame_layout.SP_LEN])
            if pos not in self.fences:
                pid = int(rows[k, frame_layout.SP_PID])
                self.fences[pos] = (pid, unblock.process_start(pid))

    def _hold(self) -> int | None:
        """The first fenced claim whose writer may still write into it (RELEASED stops there)."""
        hold = held_by = None
        buf = self.ring.buf
        for pos in sorted(self.fences):
            pid, start = self.fences[pos]
            header = int(frame_kernels.header_at(buf, pos))
            if unblock.fence_held(header, pid, start, unblock.process_start(pid)):
                hold, held_by = pos, pid
                break
            frame_kernels.let_go(buf, pos)  # gone (a no-op if it let go itself)
            del self.fences[pos]
        self.held_by = held_by
        return hold

    def _maybe_unblock(self, pos: int, header: int) -> None:
        now = time.monotonic()
        if pos != self.blocked_pos:
            self.blocked_pos = pos
            self.blocked_since = now
            return
        self.stuck = True  # the same claim blocks the ring a second round: judge it soon again
        timeout = self.config.get("unblock.timeout.ms", unblock.UNBLOCK_TIMEOUT_MS)
        action = unblock.decide(header, self.ring.claim_position() > pos, (now - self.blocked_since) * 1000.0,
                                unblock.pid_alive, timeout)
        done = False
        if action == unblock.PAD_RESERVED:
            done = frame_kernels.unblock_reserved(self.ring.buf, pos, header)
        elif action == unblock.FENCE:
            done = frame_kernels.fence_reserved(self.ring.buf, pos, header)
            self.fenced += int(done)
        elif action == unblock.PAD_FREE:
            done = frame_kernels.unblock_free(self.ring.buf, pos) > 0
        if done:
            self.unblocked += 1
            if self.on_unblock is not None:
                self.on_unblock()

    def roll_if_old(self, now_ms: int) -> None:
        if self.writer.should_roll(now_ms):
            self.writer.roll()  # fsynced in the background (log.py _Flusher)
