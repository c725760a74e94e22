"""Every error shmbus raises on purpose.

All are subclasses of :class:`ShmbusError`. Messages state the fact, then the
values as ``key=value``, then what to do where that is not obvious, e.g.::

    ring.bytes must be a power of two: ring.bytes=100000 (try 131072)

``retriable`` tells whether the same call may succeed later without a change
(as kafka-python's errors do).
"""

from __future__ import annotations


class ShmbusError(Exception):
    """Base class of every shmbus error."""

    retriable = False


class InvalidTopicError(ShmbusError, ValueError):
    """A topic name breaks Kafka's rule (1-249 of [A-Za-z0-9._-], not . or ..)."""


class TopicExistsError(ShmbusError):
    """create_topic for a name that already exists."""


class UnknownTopicError(ShmbusError, KeyError):
    """The topic does not exist (or was deleted while in use)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidConfigError(ShmbusError, ValueError):
    """An unknown config key or a bad value; the message names the key."""


class RecordTooLargeError(ShmbusError, ValueError):
    """key + value + headers exceed max.message.bytes (or the ring). Nothing was written."""


class BufferFullError(ShmbusError):
    """The partition ring stayed full for max_block_ms (is the supervisor running?)."""

    retriable = True


class OffsetOutOfRangeError(ShmbusError):
    """A read below the partition's start (or past its end) with auto_offset_reset='none'."""


class CommitFailedError(ShmbusError):
    """A commit for a partition this member no longer owns (fenced by a rebalance)."""


class SupervisorNotRunningError(ShmbusError):
    """An operation needs the supervisor and none runs for this data dir."""

    retriable = True


class CorruptRecordError(ShmbusError):
    """A frame failed its checksum or framing check; names the file and position."""


class ResourceLimitError(ShmbusError):
    """An operating-system limit was reached (open files, memory mappings); the message names the
    limit, its values, and how to raise it. Nothing was made."""


__all__ = [
    "ShmbusError",
    "InvalidTopicError",
    "TopicExistsError",
    "UnknownTopicError",
    "InvalidConfigError",
    "RecordTooLargeError",
    "BufferFullError",
    "OffsetOutOfRangeError",
    "CommitFailedError",
    "SupervisorNotRunningError",
    "CorruptRecordError",
    "ResourceLimitError",
]
