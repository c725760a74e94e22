"""The supervisor's pure policy functions, with the clock and liveness passed in."""

from __future__ import annotations

from shmbus.layout import frame as F
from shmbus.supervisor import unblock
from shmbus.supervisor.spill import release_to

RING = 1000


def test_release_nothing_while_at_most_half_full():
    assert release_to(0, 500, [100, 200, 300], RING) is None


def test_release_keeps_the_newest_quarter_for_readers():
    # claim 900: keep from 650; the last boundary at or below it is 600
    assert release_to(0, 900, [100, 300, 600, 700, 850], RING) == 600


def test_release_at_least_the_first_boundary_when_all_are_recent():
    assert release_to(0, 900, [700, 850], RING) == 700


def test_release_ignores_boundaries_already_released():
    # released 600, claim 1200: keep from 950; 100 and 600 are behind us
    assert release_to(600, 1200, [100, 600, 800, 950, 1100], RING) == 950


def test_release_with_nothing_spilled_yet():
    assert release_to(0, 900, [], RING) is None


def hdr(t, pid=0, length=64):
    return length | (t << 32) | (pid << 40)


def test_unblock_reserved_only_for_a_dead_pid_after_a_while():
    dead = lambda pid: False  # noqa: E731
    alive = lambda pid: True  # noqa: E731
    h = hdr(F.RESERVED, pid=1234)
    assert unblock.decide(h, True, 0, dead) == unblock.WAIT
    assert unblock.decide(h, True, unblock.DEAD_AFTER_MS, dead) == unblock.PAD_RESERVED
    assert unblock.decide(h, True, 10_000, alive, timeout_ms=15_000) == unblock.WAIT
    assert unblock.header_pid(h) == 1234


def test_unblock_fences_a_live_stalled_writer_after_the_timeout():
    alive = lambda pid: True  # noqa: E731
    dead = lambda pid: False  # noqa: E731
    h = hdr(F.RESERVED, pid=1234)
    assert unblock.decide(h, True, 999, alive, timeout_ms=1000) == unblock.WAIT
    assert unblock.decide(h, True, 1000, alive, timeout_ms=1000) == unblock.FENCE
    assert unblock.decide(h, True, 50, alive, timeout_ms=50) == unblock.FENCE
    assert unblock.decide(h, True, 1000, dead, timeout_ms=1000) == unblock.PAD_RESERVED  # dead: no fence needed
    assert unblock.decide(h, True, unblock.UNBLOCK_TIMEOUT_MS, alive) == unblock.FENCE  # the default
    # never a published frame, nor a FREE word nobody claimed
    assert unblock.decide(hdr(F.DATA), True, 10**9, alive, timeout_ms=10) == unblock.WAIT
    assert unblock.decide(hdr(F.PADDING, pid=1234), True, 10**9, alive, timeout_ms=10) == unblock.WAIT
    assert unblock.decide(0, False, 10**9, alive, timeout_ms=10) == unblock.WAIT


def test_a_fence_holds_while_its_writer_lives_and_has_not_let_go():
    fenced = hdr(F.PADDING, pid=1234)
    assert unblock.fence_held(fenced, 1234, 777, 777)
    assert unblock.fence_held(fenced, 1234, None, 777)  # start unknown: the pid alone
    assert not unblock.fence_held(hdr(F.PADDING), 1234, 777, 777)  # the writer let go
    assert not unblock.fence_held(fenced, 1234, 777, None)  # gone
    assert not unblock.fence_held(fenced, 1234, 777, 778)  # the pid now names another process
    assert not unblock.fence_held(hdr(F.DATA), 1234, 777, 777)  # (released and reused: not ours)


def test_release_never_passes_a_held_fence():
    # half full: would free up to the last boundary before the newest quarter (700)
    assert release_to(0, 1000, [100, 300, 500, 700, 900], 1024) == 700
    assert release_to(0, 1000, [100, 300, 500, 700, 900], 1024, hold=400) == 400
    assert release_to(0, 1000, [100, 300, 500, 700, 900], 1024, hold=300) == 300
    assert release_to(300, 1000, [100, 300, 500, 700, 900], 1024, hold=300) is None  # held right here
    assert release_to(0, 1000, [100, 300, 500, 700, 900], 1024, hold=950) == 700


def test_unblock_free_only_behind_the_claim_tail_after_a_while():
    h = 0
    never = lambda pid: False  # noqa: E731
    assert unblock.decide(h, True, unblock.FREE_AFTER_MS - 1, never) == unblock.WAIT
    assert unblock.decide(h, True, unblock.FREE_AFTER_MS, never) == unblock.PAD_FREE
    assert unblock.decide(h, False, 10_000, never) == unblock.WAIT  # nobody claimed it: just no data


def test_published_frames_are_never_unblocked():
    never = lambda pid: False  # noqa: E731
    for t in (F.DATA, F.PADDING):
        assert unblock.decide(hdr(t), True, 10_000, never) == unblock.WAIT


def test_spiller_sleeps_between_rounds_unless_a_ring_fills():
    from shmbus.supervisor.daemon import BLOCKED_WAIT_S, IDLE_WAIT_S, next_round_wait

    ring = 1 << 20
    assert next_round_wait([], False) == IDLE_WAIT_S  # no rings
    assert next_round_wait([(0, ring), (4096, ring)], False) == IDLE_WAIT_S  # a trickle: sleep, spill later
    assert next_round_wait([(0, ring), (ring // 4, ring)], False) == 0.0  # a quarter unspilled: go again now
    assert next_round_wait([(100, ring)], True) == BLOCKED_WAIT_S  # a stuck claim: judge it again soon
    assert next_round_wait([(ring, ring)], True) == 0.0
