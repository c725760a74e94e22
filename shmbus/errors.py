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


class InvalidArgumentError(ShmbusError, ValueError):
    """An argument out of its range (an offset, a timestamp); nothing was done."""


class InvalidRecordError(InvalidArgumentError):
    """A record field with a bad value (a timestamp, a header name); nothing was written."""


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
    """The partition ring stayed full for max_block_ms (no supervisor, or its spills fail: the message says which)."""

    retriable = True


class StalledWriteError(ShmbusError):
    """A send whose writer stalled (stopped, swapped out, in a debugger) between claiming ring
    space and publishing, for longer than the topic's ``unblock.timeout.ms``: the supervisor
    gave the space up so that readers could go on. The record (for ``send_batch``: the
    records of that claim and after) was NOT written; it can be sent again."""

    retriable = True


class OffsetOutOfRangeError(ShmbusError):
    """A read below the partition's start (or past its end) with auto_offset_reset='none'."""


class CommitFailedError(ShmbusError):
    """A commit for a partition this member no longer owns (fenced by a rebalance)."""


class SupervisorNotRunningError(ShmbusError):
    """An operation needs the supervisor and none runs for this data dir."""

    retriable = True


class ConcurrentAccessError(ShmbusError):
    """A second thread called a Consumer while another thread was inside one of its methods."""


class CorruptRecordError(ShmbusError):
    """A frame failed its checksum or framing check; names the file and position."""


class ForeignObjectError(ShmbusError):
    """A shared-memory object under one of the bus's names is not the bus user's alone.

    Owned by another uid, open to group or others, or not a regular file:
    nothing was read from or written to it; the message names the object, its
    owner and mode, and how to remove it.
    """
class ConsumerStoppedError(ShmbusError):
    """An asyncio client (``shmbus.aio``) was used before ``start()`` or after ``stop()``."""


class UnsupportedOperationError(ShmbusError):
    """The backend cannot do this: a shared-memory-only method on a Kafka cluster, or an admin
    request the cluster does not serve (docs/backends.md); the message names what and says what to use."""


class ClusterUnavailableError(ShmbusError):
    """The Kafka cluster did not answer in time (brokers down or unreachable, or no leader)."""

    retriable = True


class ResourceLimitError(ShmbusError):
    """An operating-system limit was reached (open files, memory mappings); the message names the
    limit, its values, and how to raise it. Nothing was made."""


__all__ = [
    "ShmbusError",
    "ConsumerStoppedError",
    "InvalidTopicError",
    "InvalidArgumentError",
    "InvalidRecordError",
    "TopicExistsError",
    "UnknownTopicError",
    "InvalidConfigError",
    "RecordTooLargeError",
    "BufferFullError",
    "StalledWriteError",
    "OffsetOutOfRangeError",
    "CommitFailedError",
    "SupervisorNotRunningError",
    "CorruptRecordError",
    "ForeignObjectError",
    "ConcurrentAccessError",
    "ResourceLimitError",
    "UnsupportedOperationError",
    "ClusterUnavailableError",
]
