"""Checks of a ``Consumer``'s arguments: a bad one raises ``InvalidConfigError`` before anything is opened."""

from __future__ import annotations

from shmbus.errors import InvalidConfigError

RESETS = ("earliest", "latest", "none")
STRATEGIES = ("range", "roundrobin", "sticky")


def _known_assignor(name) -> bool:
    from shmbus.core import assignors

    try:
        assignors.get(name)
        return True
    except KeyError:
        return False


def check_config(auto_offset_reset, partition_assignment_strategy, max_poll_records, auto_commit_interval_ms,
                 session_timeout_ms, max_poll_interval_ms, consumer_timeout_ms, spin_us) -> list:
    """Raise InvalidConfigError for a bad argument; return the assignment strategies (a list, or the sequence given)."""
    if auto_offset_reset not in RESETS:
        raise InvalidConfigError(f"auto_offset_reset must be one of {', '.join(RESETS)}: "
                                 f"auto_offset_reset={auto_offset_reset!r}")
    strategies = partition_assignment_strategy
    if isinstance(strategies, str):
        strategies = [strategies]
    for s in strategies:
        name = s if isinstance(s, str) else getattr(s, "name", None)
        if name not in STRATEGIES and not _known_assignor(name):
            raise InvalidConfigError(f"unknown partition_assignment_strategy: {s!r} "
                                     f"(one of {', '.join(STRATEGIES)})")
    for name, v, lo in (("max_poll_records", max_poll_records, 1), ("auto_commit_interval_ms", auto_commit_interval_ms, 1),
                        ("session_timeout_ms", session_timeout_ms, 1), ("max_poll_interval_ms", max_poll_interval_ms, 1),
                        ("spin_us", spin_us, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InvalidConfigError(f"{name} must be an int >= {lo}: {name}={v!r}")
    if consumer_timeout_ms is not None and (not isinstance(consumer_timeout_ms, (int, float)) or consumer_timeout_ms < 0):
        raise InvalidConfigError(f"consumer_timeout_ms must be a number >= 0 or None: consumer_timeout_ms={consumer_timeout_ms!r}")
    return strategies
