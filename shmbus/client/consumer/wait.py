"""Waiting for a record: a spin on the header words at the cursors, then a sleep.

``poll(timeout_ms)`` spins on the header word at each cursor for a short
window (``spin_us``), then counts itself as a sleeper on its rings and sleeps
on the bus doorbell (a futex) until a producer rings it or the timeout ends:
an idle consumer uses no CPU.
"""

from __future__ import annotations

import time

from shmbus.client.consumer.partition import RING_WORD0, TYPE_BITS, WORD_RECLAIMING, WORD_RELEASED, PartitionState
from shmbus.core import native
from shmbus.core.native import LazyModule
from shmbus.layout import frame

# the numba kernels, imported only without the compiled verbs
kernels = LazyModule("shmbus.kernels.frames")


class WaitMixin:
    def _idle(self, p: PartitionState) -> bool:
        """Nothing published at a known cursor (checked in Python: an empty partition costs no kernel call)."""
        c = p.cursor
        if c < 0:
            return False
        q = p.words
        t = (q[RING_WORD0 + ((c & p.mask) >> 3)] >> frame.TYPE_SHIFT) & frame.TYPE_MASK
        return (t == frame.FREE or t == frame.RESERVED) and q[WORD_RECLAIMING] <= c

    def _ready(self, p: PartitionState) -> bool:
        """Something for the read path to do: a published word at the cursor, a lapped or unknown cursor."""
        c = p.cursor
        if c < 0:
            return True
        ring = p.ring
        if ring.reclaiming() > c:
            return True  # lapped: the locate path has work
        # a published word at the cursor, and the cursor not a whole ring ahead of
        # RELEASED (there the word is the oldest frame of an exactly full ring)
        return p.words[RING_WORD0 + ((c & ring.mask) >> 3)] & TYPE_BITS != 0 and c < ring.released() + ring.ring_bytes

    def _wait(self, deadline: float, spun_s: float = 0.0) -> None:
        """Spin for what is left of spin_us (``spun_s`` of it was spun already, in C), then sleep."""
        active = [p for p in self._assigned if not p.paused]
        now = time.monotonic()
        spin_end = min(deadline, now + self._spin_s - spun_s)
        single = self._single
        if single is not None and single.cursor >= 0 and not single.paused:
            # one partition: spin on its header word alone (a few loads per turn)
            q = single.words
            c = single.cursor
            i = RING_WORD0 + ((c & single.mask) >> 3)
            ring_bytes = single.ring_bytes
            while now < spin_end:
                for _ in range(16):
                    w = q[i]
                    # published (DATA, or padding), and not the oldest frame of an exactly full ring
                    if w and (w >> frame.TYPE_SHIFT) & frame.TYPE_MASK != frame.RESERVED \
                            and c < q[WORD_RELEASED] + ring_bytes:
                        return
                if q[WORD_RECLAIMING] > c:
                    return  # lapped: the general path reads the disk
                now = time.monotonic()
        while now < spin_end:
            for p in active:
                if self._ready(p):
                    return
            now = time.monotonic()
        if now >= deadline:
            return
        ctl = self._bus.ctl
        seen = ctl.doorbell()
        add = native.add_sleepers
        for p in active:
            add(p.addr, 1) if add is not None else kernels.add_sleepers(p.ring.buf, 1)
        try:
            if not any(self._ready(p) for p in active):
                ctl.sleep(seen, min(deadline - now, 0.25))
        finally:
            for p in active:
                add(p.addr, -1) if add is not None else kernels.add_sleepers(p.ring.buf, -1)
