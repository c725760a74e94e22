"""Unblocking: a writer that died between claim and publish must not stall readers.

The spiller stops at the first frame that is not published. If the same
position stays blocked, :func:`decide` says what to do (a pure function; the
clock and the liveness check are passed in):

- RESERVED by a pid that is dead (or a zombie): turn it into PADDING.
- RESERVED by a live pid: wait; that writer is between two stores.
- FREE while the claim tail is past it, for ``free_after_ms``: the writer
  claimed and stalled (or died) before reserving; pad it. This is safe even
  if the writer lives: its reserve (a compare-and-swap from FREE) then fails
  and it claims again, so nothing it wrote is lost or doubled.
"""

from __future__ import annotations

import os

from shmbus.layout import frame as F

WAIT = "wait"
PAD_RESERVED = "pad_reserved"
PAD_FREE = "pad_free"

DEAD_AFTER_MS = 20  # a RESERVED frame of a dead pid, seen blocked this long
FREE_AFTER_MS = 100  # a FREE word behind the claim tail, seen blocked this long


def header_type(header: int) -> int:
    return (header >> F.TYPE_SHIFT) & F.TYPE_MASK


def header_pid(header: int) -> int:
    return (header >> F.AUX_SHIFT) & F.PID_MASK


def decide(header: int, tail_past: bool, blocked_ms: float, pid_alive) -> str:
    t = header_type(header)
    if t == F.RESERVED:
        if blocked_ms >= DEAD_AFTER_MS and not pid_alive(header_pid(header)):
            return PAD_RESERVED
        return WAIT
    if t == F.FREE and tail_past and blocked_ms >= FREE_AFTER_MS:
        return PAD_FREE
    return WAIT


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead: it will never write again)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True
