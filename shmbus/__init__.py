"""shmbus: a Kafka-shaped message bus for one machine, over POSIX shared memory.

::

    from shmbus import Bus
    with Bus() as bus:
        bus.create_topic("prices", partitions=4)
        with bus.producer() as p:
            p.send("prices", b"42.0", key=b"AAPL")
        with bus.consumer("prices", auto_offset_reset="earliest") as c:
            for tp, records in c.poll(timeout_ms=1000).items():
                ...
"""

from shmbus.errors import (
    BufferFullError,
    CommitFailedError,
    ConcurrentAccessError,
    ConsumerStoppedError,
    CorruptRecordError,
    ForeignObjectError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidRecordError,
    InvalidTopicError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    ResourceLimitError,
    ShmbusError,
    StalledWriteError,
    SupervisorNotRunningError,
    TopicExistsError,
    UnknownTopicError,
    UnsupportedOperationError,
    ClusterUnavailableError,
)
from shmbus.records import (
    BatchMetadata,
    ConsumerRecord,
    OffsetAndTimestamp,
    PartitionDescription,
    RecordBatch,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__version__ = "0.1.0"


def __getattr__(name):
    # connect, Bus, Producer and Consumer pull in numba (or confluent_kafka): import them on first use so that
    # `import shmbus` stays cheap for tools that only need the types.
    if name == "Bus":
        from shmbus.client.bus import Bus

        return Bus
    if name == "Producer":
        from shmbus.client.producer import Producer

        return Producer
    if name == "Consumer":
        from shmbus.client.consumer import Consumer

        return Consumer
    if name == "connect":
        from shmbus.cluster.urls import connect

        return connect
    raise AttributeError(f"module 'shmbus' has no attribute {name!r}")


__all__ = [
    "connect", "Bus", "Producer", "Consumer", "TopicPartition", "RecordMetadata", "ConsumerRecord", "RecordBatch",
    "BatchMetadata", "OffsetAndTimestamp", "PartitionDescription", "TopicDescription",
    "ShmbusError", "InvalidTopicError", "TopicExistsError", "UnknownTopicError", "InvalidConfigError",
    "RecordTooLargeError", "BufferFullError", "OffsetOutOfRangeError", "CommitFailedError",
    "SupervisorNotRunningError", "CorruptRecordError", "ForeignObjectError", "StalledWriteError",
    "ConcurrentAccessError", "ConsumerStoppedError", "InvalidArgumentError", "InvalidRecordError", "ResourceLimitError",
    "UnsupportedOperationError", "ClusterUnavailableError", "__version__",
]
