"""The bounded pool of open segment files of the supervisor's segment writers."""

from __future__ import annotations

import threading
from collections import OrderedDict

SEGMENT_FDS = 3  # a writer's open segment: .log, .index, .timeindex


class FilePool:
    """Bounds the segment files the :class:`~shmbus.log.writer.SegmentWriter` s of a pool hold open (the supervisor's).

    A writer with an active segment holds three fds until it is *parked*: its fds are
    closed, everything else about the segment stays (base, size, index position, newest
    timestamp, age, whether it is fsynced), and its next append reopens the files
    (``O_APPEND``). Writers are parked when idle (:meth:`park_idle`) and, least recently
    used first (a CLOCK: a writer used since it was last looked at gets another turn),
    when opening a segment would take the pool past ``cap_fds`` (:meth:`make_room`).
    Fds of rolled segments count until the flusher has closed them.

    A writer is parked only under its lock (its partition's state lock), taken without
    waiting: a writer busy in another thread is passed over. Appends to an open writer
    cost two attribute stores: no syscall, no lock.
    """

    def __init__(self, cap_fds: int):
        self.base_cap = max(cap_fds, 4 * SEGMENT_FDS)
        self.cap_fds = self.base_cap
        self.lock = threading.Lock()
        self.open_fds = 0
        self._writers: OrderedDict = OrderedDict()  # writers with open files, CLOCK order
        self.parked = 0  # how many times a writer was parked, and reopened
        self.reopened = 0

    def writers_open(self) -> int:
        return len(self._writers)

    def opened(self, w) -> None:
        with self.lock:
            self.open_fds += SEGMENT_FDS
            self._writers[w] = None
            self._writers.move_to_end(w)

    def dropped(self, w) -> None:
        """``w`` holds no files any more (parked, closed, or handed to the flusher)."""
        with self.lock:
            self._writers.pop(w, None)

    def closed_fds(self, n: int) -> None:
        with self.lock:
            self.open_fds -= n

    def make_room(self, w=None) -> None:
        """Park writers, least recently used first, until a segment more fits under the cap."""
        turns = 2 * len(self._writers) + 2
        while self.open_fds + SEGMENT_FDS > self.cap_fds and turns > 0:
            turns -= 1
            with self.lock:
                if not self._writers:
                    return
                v = next(iter(self._writers))
                self._writers.move_to_end(v)
            if v is w:
                continue
            if v.used:
                v.used = False
                continue
            self._try_park(v)

    def park_idle(self, now_ms: int, idle_ms: int) -> int:
        """Park the writers that appended nothing for ``idle_ms``; let the cap grow back. Returns how many."""
        self.cap_fds = min(self.base_cap, self.cap_fds + max(self.base_cap // 8, SEGMENT_FDS))
        with self.lock:
            idle = [v for v in self._writers if now_ms - v.last_used_ms >= idle_ms]
        return sum(self._try_park(v) for v in idle)

    def pressure(self) -> None:
        """Out of fds: something else holds more than the cap left for it. Shrink the pool by an eighth."""
        self.cap_fds = max(4 * SEGMENT_FDS, min(self.cap_fds, self.open_fds) * 7 // 8)
        self.make_room()

    @staticmethod
    def _try_park(v) -> bool:
        if not v.lock.acquire(blocking=False):
            return False
        try:
            return v.park()
        finally:
            v.lock.release()
