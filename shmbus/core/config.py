"""Topic configuration: Kafka's key names, defaults, and their checks.

:data:`TOPIC_DEFAULTS` is the one table of topic config keys and defaults;
:data:`TOPIC_CONFIG_DOCS` says what each key means. Both are read-only by
convention: copy before changing.

Every key, with the values it takes:

cleanup.policy (str): ``delete``, ``compact``, or ``compact,delete`` (also
    given as ``delete,compact`` or a list of the two words; stored as
    ``compact,delete``). Default: ``delete``.
retention.ms (int): delete a segment once its newest record is older than
    this; -1 keeps forever. >= -1. Default: 604800000 (7 days).
retention.bytes (int): per partition; the oldest segments go first while the
    partition is over this; -1 means no limit. >= -1. Default: -1.
segment.bytes (int): roll the active segment at this size. 1024 to
    2147483647. Default: 67108864 (64 MiB).
segment.ms (int): roll the active segment at this age. >= 1.
    Default: 604800000 (7 days).
max.message.bytes (int): largest record (key + value + headers). 1 to
    1073741824. Default: 1048576 (1 MiB).
delete.retention.ms (int): how long a compacted tombstone stays readable.
    >= 0. Default: 86400000 (1 day).
min.compaction.lag.ms (int): records younger than this are never compacted.
    >= 0. Default: 0.
ring.bytes (int): the shared-memory ring of each partition; a power of two,
    4096 to 2**40. Default: 16777216 (16 MiB).
unblock.timeout.ms (int): a writer that holds a claim unpublished this long
    (a producer stopped, swapped out or in a debugger mid-send) loses it: the
    supervisor turns the claim into padding so that readers go on, and that
    send raises :class:`~shmbus.errors.StalledWriteError` when the writer
    runs again (nothing of it is written). 10 to 2147483647. Default: 1000.

Values may be ints or decimal strings (from the command line: ``"65536"``,
``"-1"``); ``bool`` and ``float`` are refused. Errors are
:class:`~shmbus.errors.InvalidConfigError` (a ``ValueError``) naming the key,
the value, and what is allowed::

    ring.bytes must be a power of two: ring.bytes=100000 (try 131072)

Topic names: :func:`validate_topic_name`, Kafka's rule, raising
:class:`~shmbus.errors.InvalidTopicError`.

Pure functions, no state: safe from any thread or process.
"""

from __future__ import annotations

import re
from numbers import Integral

from shmbus.errors import InvalidConfigError, InvalidTopicError

# -- the table -----------------------------------------------------------------

#: key -> default, in the order ``describe`` shows them.
TOPIC_DEFAULTS: dict = {
    "cleanup.policy": "delete",
    "retention.ms": 604800000,
    "retention.bytes": -1,
    "segment.bytes": 67108864,
    "segment.ms": 604800000,
    "max.message.bytes": 1048576,
    "delete.retention.ms": 86400000,
    "min.compaction.lag.ms": 0,
    "ring.bytes": 16777216,
    "unblock.timeout.ms": 1000,
}

#: key -> one line on what it means and what it takes.
TOPIC_CONFIG_DOCS: dict = {
    "cleanup.policy": "delete, compact, or compact,delete",
    "retention.ms": "delete segments older than this; -1 keeps forever (>= -1)",
    "retention.bytes": "per partition; oldest segments go first; -1 means no limit (>= -1)",
    "segment.bytes": "roll the active segment at this size (1024 to 2147483647)",
    "segment.ms": "roll the active segment at this age (>= 1)",
    "max.message.bytes": "largest record: key + value + headers (1 to 1073741824)",
    "delete.retention.ms": "how long a compacted tombstone stays readable (>= 0)",
    "min.compaction.lag.ms": "records younger than this are never compacted (>= 0)",
    "ring.bytes": "shared-memory ring per partition, a power of two (4096 to 2**40)",
    "unblock.timeout.ms": "a send stalled this long mid-write loses its claim and raises (10 to 2147483647)",
}

# Integer keys: (lowest, highest); None is unbounded.
_INT_RANGES = {
    "retention.ms": (-1, None),
    "retention.bytes": (-1, None),
    "segment.bytes": (1024, 2**31 - 1),
    "segment.ms": (1, None),
    "max.message.bytes": (1, 2**30),
    "delete.retention.ms": (0, None),
    "min.compaction.lag.ms": (0, None),
    "ring.bytes": (4096, 2**40),
    "unblock.timeout.ms": (10, 2**31 - 1),
}

# Kafka stores these as Java longs/ints; nothing above a long makes sense.
_INT64_MAX = 2**63 - 1

_CLEANUP_WORDS = ("compact", "delete")

assert list(TOPIC_DEFAULTS) == list(TOPIC_CONFIG_DOCS)
assert set(_INT_RANGES) == set(TOPIC_DEFAULTS) - {"cleanup.policy"}

_DECIMAL = re.compile(r"[+-]?[0-9]+", re.ASCII)


# -- values --------------------------------------------------------------------


def _show(value) -> str:
    """A value as an error message shows it after ``key=``."""
    if isinstance(value, str) and value and value.strip() == value and value.isprintable():
        return value
    return repr(value)


def _valid_keys() -> str:
    return ", ".join(TOPIC_DEFAULTS)


def _as_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, str)):
        raise InvalidConfigError(
            f"{key} must be an integer: {key}={_show(value)} "
            f"(got {type(value).__name__}; give an int or a decimal string)"
        )
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise InvalidConfigError(
                f"{key} must be an integer: {key}={_show(value)} (give decimal digits, e.g. {key}={TOPIC_DEFAULTS[key]})"
            )
        return int(text)
    return int(value)


def _check_int(key: str, value) -> int:
    n = _as_int(key, value)
    lo, hi = _INT_RANGES[key]
    if hi is None:
        hi = _INT64_MAX
    if key == "ring.bytes" and lo <= n <= hi and n & (n - 1):
        raise InvalidConfigError(
            f"ring.bytes must be a power of two: ring.bytes={_show(value)} (try {1 << n.bit_length()})"
        )
    if n < lo or n > hi:
        if key == "ring.bytes":
            allowed = f"a power of two from {lo} to {hi} (2**40)"
        elif hi == _INT64_MAX:
            allowed = f">= {lo}" if n < lo else f"from {lo} to {hi} (a 64-bit integer)"
        else:
            allowed = f"from {lo} to {hi}"
        hint = ""
        if key == "retention.ms":
            hint = " (-1 keeps forever)"
        elif key == "retention.bytes":
            hint = " (-1 means no limit)"
        elif key == "ring.bytes":
            hint = f" (try {lo if n < lo else hi})"
        raise InvalidConfigError(f"{key} must be {allowed}: {key}={_show(value)}{hint}")
    return n


def _check_cleanup_policy(value) -> str:
    key = "cleanup.policy"
    allowed = "delete, compact, or compact,delete"
    if isinstance(value, str):
        words = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise InvalidConfigError(
            f"{key} must be a string, {allowed}: {key}={_show(value)} (got {type(value).__name__})"
        )
    words = [w.strip() for w in words]
    if not words or any(w not in _CLEANUP_WORDS for w in words):
        raise InvalidConfigError(f"{key} must be {allowed}: {key}={_show(value)}")
    return ",".join(w for w in _CLEANUP_WORDS if w in words)


def _check(key, value):
    if key == "cleanup.policy":
        return _check_cleanup_policy(value)
    return _check_int(key, value)


# -- public --------------------------------------------------------------------


def validate_topic_config(config=None, base=None) -> dict:
    """Check a topic config and fill it in: a NEW dict with every key.

    ``config`` (dict or None): the keys being set; values int or str.
    ``base`` (dict or None): values for keys ``config`` leaves out (e.g. the
    topic's current config, for alter); keys neither gives take
    :data:`TOPIC_DEFAULTS`. ``base`` is checked as ``config`` is.

    Returns the keys in :data:`TOPIC_DEFAULTS` order, ints as ``int`` and
    ``cleanup.policy`` normalised (``delete,compact`` -> ``compact,delete``).
    Raises :class:`~shmbus.errors.InvalidConfigError` naming the key for an
    unknown key (listing the valid ones), a wrong type or a value out of range.

    >>> validate_topic_config({"ring.bytes": "65536"})["ring.bytes"]
    65536
    """
    merged = {}
    for what, given in (("base", base), ("config", config)):
        if given is None:
            continue
        if not hasattr(given, "items"):
            raise InvalidConfigError(
                f"topic {what} must be a dict of key -> value: got {type(given).__name__}"
            )
        for key, value in given.items():
            if key not in TOPIC_DEFAULTS:
                raise InvalidConfigError(
                    f"unknown topic config key: {_show(key)}={_show(value)} (valid keys: {_valid_keys()})"
                )
            merged[key] = value
    out = {}
    for key, default in TOPIC_DEFAULTS.items():
        out[key] = _check(key, merged[key]) if key in merged else default
    return out


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}", re.ASCII)
_NAME_RULE = '1 to 249 characters of A-Z a-z 0-9 . _ -, and not "." or ".."'


def validate_topic_name(name) -> str:
    """Return ``name`` if it is a legal topic name (Kafka's rule), else raise
    :class:`~shmbus.errors.InvalidTopicError` saying what is allowed:
    1 to 249 characters of ``[A-Za-z0-9._-]``, and not ``.`` or ``..``."""
    if not isinstance(name, str):
        raise InvalidTopicError(
            f"topic name must be a str: name={name!r} (got {type(name).__name__}; use {_NAME_RULE})"
        )
    if _TOPIC_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    if not name:
        why = "topic name is empty"
    elif len(name) > 249:
        why = f"topic name is too long ({len(name)} characters)"
    elif name in (".", ".."):
        why = f"topic name cannot be {name!r}"
    else:
        bad = next(c for c in name if not _TOPIC_NAME.fullmatch(c))
        why = f"topic name has an illegal character {bad!r}"
    shown = name if len(name) <= 60 else name[:57] + "..."
    raise InvalidTopicError(f"{why}: name={shown!r} (use {_NAME_RULE})")


def parse_config_pairs(pairs) -> dict:
    """``["KEY=VALUE", ...]`` (the CLI's ``--config``) -> ``{KEY: "VALUE"}``.

    Splits at the first ``=``; the key is stripped, the value kept as given
    (:func:`validate_topic_config` checks and converts it). A later pair
    for the same key wins, as with Kafka's tools. An item without ``=`` or
    with an empty key raises :class:`~shmbus.errors.InvalidConfigError`.
    """
    if isinstance(pairs, str):
        pairs = [pairs]
    out = {}
    for item in pairs or ():
        if not isinstance(item, str) or "=" not in item:
            raise InvalidConfigError(
                f"config must be KEY=VALUE: {_show(item)} (e.g. retention.ms=86400000)"
            )
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise InvalidConfigError(
                f"config must be KEY=VALUE, the key is empty: {_show(item)} (e.g. retention.ms=86400000)"
            )
        out[key] = value
    return out


__all__ = [
    "TOPIC_DEFAULTS",
    "TOPIC_CONFIG_DOCS",
    "validate_topic_config",
    "validate_topic_name",
    "parse_config_pairs",
]
