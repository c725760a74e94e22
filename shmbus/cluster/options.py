"""shmbus options to librdkafka properties, and the checks of both.

A librdkafka property that has a shmbus name must be given by that name (``group_id``,
not ``kafka={"group.id": ...}``): one way to say each thing. Everything else passes
through ``kafka={...}`` as it is; librdkafka checks it (a bad one: InvalidConfigError).
"""

from __future__ import annotations

import warnings

from shmbus.errors import InvalidConfigError

# librdkafka property -> the shmbus option that sets it
BUS_NAMES = {"bootstrap.servers": "the url (kafka://host:port)"}
PRODUCER_NAMES = {**BUS_NAMES, "acks": "acks", "request.required.acks": "acks"}
CONSUMER_NAMES = {
    **BUS_NAMES, "group.id": "group_id", "auto.offset.reset": "auto_offset_reset",
    "enable.auto.commit": "enable_auto_commit", "auto.commit.interval.ms": "auto_commit_interval_ms",
    "partition.assignment.strategy": "partition_assignment_strategy", "session.timeout.ms": "session_timeout_ms",
    "max.poll.interval.ms": "max_poll_interval_ms",
}

# shmbus's strategies as librdkafka's: shmbus rebalances incrementally, as cooperative-sticky does
STRATEGIES = {"range": "range", "roundrobin": "roundrobin", "sticky": "cooperative-sticky",
              "cooperative-sticky": "cooperative-sticky"}

# topic keys that only the shared-memory backend has
SHM_TOPIC_KEYS = ("ring.bytes", "unblock.timeout.ms")


class Unset:
    """The default of an option that means something only on shared memory: given or not is known."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = Unset()


def kafka_options(kafka, names: dict, where: str) -> dict:
    """``kafka={...}`` checked: a dict of str keys, none of which has a shmbus name."""
    if kafka is None:
        return {}
    if not isinstance(kafka, dict) or not all(isinstance(k, str) for k in kafka):
        raise InvalidConfigError(f"kafka must be a dict of librdkafka properties (str keys): kafka={kafka!r}")
    for k in kafka:
        if k in names:
            raise InvalidConfigError(f"{k} has a shmbus name in {where}: kafka={{{k!r}: ...}} "
                                     f"(use {names[k]} instead)")
    return dict(kafka)


def warn_shm_only(option: str, value, what: str) -> None:
    """A shared-memory-only option given to a Kafka-cluster client: said, not silently dropped."""
    warnings.warn(f"{option}={value!r} has no meaning on a Kafka cluster and is ignored: {what} "
                  f"(docs/backends.md)", UserWarning, stacklevel=4)


def check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidConfigError(f"{name} must be an int >= {lo}: {name}={v!r}")
    return v


def strategies(value) -> str:
    """partition_assignment_strategy as librdkafka's property value."""
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for s in items:
        name = s if isinstance(s, str) else getattr(s, "name", None)
        if name not in STRATEGIES:
            raise InvalidConfigError(
                f"unknown partition_assignment_strategy on a Kafka cluster: {s!r} (librdkafka runs the "
                f"assignment: one of range, roundrobin, sticky; assignors registered with "
                f"shmbus.assignors run only on shared memory)")
        out.append(STRATEGIES[name])
    if not out:
        raise InvalidConfigError("partition_assignment_strategy is empty (one of range, roundrobin, sticky)")
    if "cooperative-sticky" in out and len(set(out)) > 1:
        raise InvalidConfigError(f"sticky (cooperative) cannot be mixed with eager strategies on a Kafka cluster: "
                                 f"partition_assignment_strategy={value!r}")
    return ",".join(dict.fromkeys(out))


__all__ = ["kafka_options", "warn_shm_only", "check_int", "strategies", "UNSET", "SHM_TOPIC_KEYS",
           "PRODUCER_NAMES", "CONSUMER_NAMES", "BUS_NAMES"]
