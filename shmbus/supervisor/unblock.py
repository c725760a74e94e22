"""Unblocking: a writer that died, or stalled, between claim and publish must not stall readers.

The spiller stops at the first frame that is not published. If the same
position stays blocked, :func:`decide` says what to do (a pure function; the
clock, the liveness check and the topic's ``unblock.timeout.ms`` are passed in):

- RESERVED by a pid that is dead (or a zombie): turn it into PADDING.
- RESERVED by a live pid, blocked for ``unblock.timeout.ms``: *fence* it: turn
  it into PADDING that carries the pid (a stopped, swapped-out or debugged
  writer). The RESERVED word carries the whole claim's length (all frames of
  a batch), so the padding covers the claim and no record of it is ever read.
  The writer publishes with a compare-and-swap from RESERVED, so when it runs
  again its publish fails and its send raises ``StalledWriteError``: nothing
  it was told is written is lost, and nothing of the failed send is read.
- RESERVED by a live pid, for less: wait; that writer is between two stores.
- FREE while the claim tail is past it, for ``free_after_ms``: the writer
  claimed and stalled (or died) before reserving; pad it. This is safe even
  if the writer lives: its reserve (a compare-and-swap from FREE) then fails
  and it claims again, so nothing it wrote is lost or doubled.

A fenced writer that runs again still writes the rest of its body into the
claim before its publish fails, so the spiller must not free (zero, hand to
other writers) that region until the writer has let go of it: on its failed
publish the writer sets the padding's pid to 0. :func:`fence_held` says
whether a fence still holds (a pure function): yes while the padding carries
the pid and that same process lives (its start time, read when the fence was
found, tells a reused pid apart). Until then RELEASED stops before the fenced
claim: producers of that partition may block on a full ring behind a stalled
writer, but readers never wait for it longer than the timeout.
"""

from __future__ import annotations

import os

from shmbus.layout import frame as frame_layout

WAIT = "wait"
PAD_RESERVED = "pad_reserved"
PAD_FREE = "pad_free"
FENCE = "fence"

DEAD_AFTER_MS = 20  # a RESERVED frame of a dead pid, seen blocked this long
FREE_AFTER_MS = 100  # a FREE word behind the claim tail, seen blocked this long
UNBLOCK_TIMEOUT_MS = 1000  # a RESERVED frame of a live pid: the topic's unblock.timeout.ms, by default


def header_type(header: int) -> int:
    return (header >> frame_layout.TYPE_SHIFT) & frame_layout.TYPE_MASK


def header_pid(header: int) -> int:
    return (header >> frame_layout.AUX_SHIFT) & frame_layout.PID_MASK


def decide(header: int, tail_past: bool, blocked_ms: float, pid_alive, timeout_ms: float = UNBLOCK_TIMEOUT_MS) -> str:
    t = header_type(header)
    if t == frame_layout.RESERVED:
        if blocked_ms >= DEAD_AFTER_MS and not pid_alive(header_pid(header)):
            return PAD_RESERVED
        if blocked_ms >= timeout_ms:
            return FENCE
        return WAIT
    if t == frame_layout.FREE and tail_past and blocked_ms >= FREE_AFTER_MS:
        return PAD_FREE
    return WAIT


def fence_held(header: int, pid: int, start, start_now) -> bool:
    """Whether a fenced claim may still be written by its writer (so it must not be freed).

    ``header``: the claim's header word now; ``pid``: the fenced writer's pid;
    ``start``: its process start time when the fence was found (None: unknown);
    ``start_now``: that pid's start time now, None if no such process runs.
    """
    if header_type(header) != frame_layout.PADDING or header_pid(header) != pid:
        return False  # the writer let go (aux 0)
    if start_now is None:
        return False  # gone
    return start is None or start_now == start  # a new process under the same pid is not the writer


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


def process_start(pid: int):
    """The start time of process ``pid`` (clock ticks since boot), or None if it does not run
    (a zombie counts as gone)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return 0  # unreadable: treat as running, and as the same process
