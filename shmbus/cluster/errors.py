"""librdkafka's errors as shmbus's (shmbus.errors), so that an application catches the same names on both backends."""

from __future__ import annotations

from shmbus.errors import (
    BufferFullError,
    ClusterUnavailableError,
    CommitFailedError,
    InvalidConfigError,
    InvalidTopicError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    ShmbusError,
    TopicExistsError,
    UnknownTopicError,
    UnsupportedOperationError,
)


def _codes(ck, *names) -> set:
    return {getattr(ck.KafkaError, n) for n in names if hasattr(ck.KafkaError, n)}


_TABLE: list | None = None


def _table(ck) -> list:
    global _TABLE
    if _TABLE is None:
        _TABLE = [
            (_codes(ck, "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"), UnknownTopicError),
            (_codes(ck, "TOPIC_ALREADY_EXISTS"), TopicExistsError),
            (_codes(ck, "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"), RecordTooLargeError),
            (_codes(ck, "INVALID_CONFIG", "INVALID_PARTITIONS", "INVALID_REPLICATION_FACTOR", "POLICY_VIOLATION",
                    "_INVALID_ARG", "INVALID_REQUIRED_ACKS", "INVALID_REPLICA_ASSIGNMENT"), InvalidConfigError),
            (_codes(ck, "TOPIC_EXCEPTION"), InvalidTopicError),
            (_codes(ck, "_QUEUE_FULL"), BufferFullError),
            (_codes(ck, "OFFSET_OUT_OF_RANGE", "_AUTO_OFFSET_RESET"), OffsetOutOfRangeError),
            (_codes(ck, "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS", "FENCED_INSTANCE_ID",
                    "_ASSIGNMENT_LOST", "STALE_MEMBER_EPOCH"), CommitFailedError),
            (_codes(ck, "UNSUPPORTED_VERSION", "_UNSUPPORTED_FEATURE", "INVALID_REQUEST"), UnsupportedOperationError),
            (_codes(ck, "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "BROKER_NOT_AVAILABLE", "REQUEST_TIMED_OUT",
                    "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "COORDINATOR_NOT_AVAILABLE",
                    "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "_WAIT_COORD", "_RESOLVE",
                    "NOT_CONTROLLER", "_NODE_UPDATE", "_MSG_TIMED_OUT"), ClusterUnavailableError),
        ]
    return _TABLE


def kafka_error(err, what: str) -> ShmbusError:
    """The shmbus error for a librdkafka ``KafkaError`` (or ``KafkaException``); ``what`` says what was tried."""
    import confluent_kafka as ck

    if isinstance(err, ck.KafkaException) and err.args:
        err = err.args[0]
    if not isinstance(err, ck.KafkaError):
        return ShmbusError(f"{what}: {err}")
    code = err.code()
    cls = next((c for codes, c in _table(ck) if code in codes), ShmbusError)
    hint = ""
    if cls is ClusterUnavailableError:
        hint = " (is the cluster up and its address right? the bus's kafka= options set timeouts and security)"
    elif cls is RecordTooLargeError:
        hint = (" (raise the topic's max.message.bytes with alter_topic_config, and the producer's "
                "kafka={'message.max.bytes': ...}, or split the record)")
    return cls(f"{what}: {err.name()}: {err.str()}{hint}")


__all__ = ["kafka_error"]
