"""Topic admin and errors for bad input, the same on both backends.

Creating, deleting and altering topics need the cluster's CreateTopics, DeleteTopics and
IncrementalAlterConfigs requests; where the cluster serves none (librdkafka's mock cluster,
asked at run time), those tests skip saying so, and the error the bus raises there is tested.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from shmbus import (
    CommitFailedError,
    InvalidConfigError,
    InvalidRecordError,
    InvalidTopicError,
    RecordTooLargeError,
    ShmbusError,
    TopicExistsError,
    TopicPartition,
    UnknownTopicError,
    UnsupportedOperationError,
)

pytestmark = pytest.mark.timeout(180)


def _need_admin(backend):
    if not backend.can_create_topics:
        pytest.skip(f"the cluster serves no CreateTopics request (bus.supports('CreateTopics') is False): "
                    f"{backend.bus.url}")


def test_create_list_describe_alter_delete(backend):
    _need_admin(backend)
    bus = backend.bus
    name = f"adm-{uuid.uuid4().hex[:10]}"
    d = bus.create_topic(name, 3, {"retention.ms": 3600000})
    try:
        assert d.name == name and [p.partition for p in d.partitions] == [0, 1, 2]
        assert all(p.start_offset == 0 and p.end_offset == 0 for p in d.partitions)
        assert d.config["retention.ms"] == 3600000
        assert name in bus.list_topics() and bus.list_topics() == sorted(bus.list_topics())
        with pytest.raises(TopicExistsError):
            bus.create_topic(name, 1)
        bus.alter_topic_config(name, {"retention.ms": 7200000})
        assert bus.describe_topic(name).config["retention.ms"] == 7200000
        with pytest.raises(InvalidConfigError):
            bus.alter_topic_config(name, {"retention.ms": "soon"})
    finally:
        bus.delete_topic(name)
    assert name not in bus.list_topics()
    with pytest.raises(UnknownTopicError):
        bus.describe_topic(name)
    with pytest.raises(UnknownTopicError):
        bus.delete_topic(name)
    with pytest.raises(UnknownTopicError):
        bus.alter_topic_config(name, {"retention.ms": 1000})


def test_a_cluster_without_create_topics_says_so(cluster_bus):
    if cluster_bus.supports("CreateTopics") is not False:
        pytest.skip(f"the cluster serves CreateTopics (test_create_list_describe_alter_delete runs): "
                    f"{cluster_bus.url}")
    with pytest.raises(UnsupportedOperationError, match="CreateTopics"):
        cluster_bus.create_topic(f"adm-{uuid.uuid4().hex[:10]}", 1)
    with pytest.raises(UnsupportedOperationError, match="DeleteTopics"):
        cluster_bus.delete_topic(f"adm-{uuid.uuid4().hex[:10]}")


def test_bad_topic_input(backend):
    bus = backend.bus
    for bad in ("", ".", "..", "a/b", "x" * 250, "sp ace"):
        with pytest.raises(InvalidTopicError):
            bus.create_topic(bad, 1)
    with pytest.raises(InvalidConfigError):
        bus.create_topic(f"adm-{uuid.uuid4().hex[:10]}", 0)
    with pytest.raises(InvalidConfigError):
        bus.create_topic(f"adm-{uuid.uuid4().hex[:10]}", 1, {"retention.ms": "soon"})
    with pytest.raises(UnknownTopicError):
        bus.describe_topic(f"missing-{uuid.uuid4().hex[:10]}")


def test_bad_record_input(backend):
    t = backend.topic(1)
    with backend.bus.producer() as p:
        with pytest.raises(UnknownTopicError):
            p.send(f"missing-{uuid.uuid4().hex[:10]}", b"x")
        with pytest.raises(InvalidTopicError):
            p.send("bad name", b"x")
        with pytest.raises(TypeError):
            p.send(t, "not bytes")
        with pytest.raises(TypeError):
            p.send(t, b"x", headers=[(b"not str", b"x")])
        with pytest.raises(ValueError):
            p.send(t, b"x", partition=t.partitions)
        with pytest.raises(InvalidRecordError):
            p.send(t, b"x", timestamp_ms=-1)
        with pytest.raises(RecordTooLargeError):
            p.send(t, b"x" * (2 << 20))
        with pytest.raises(RecordTooLargeError):
            p.send_batch(t, [b"ok", b"x" * (2 << 20)])
        with pytest.raises(TypeError):
            p.send_batch(t, np.zeros((2, 2), np.int32))
    with pytest.raises(ShmbusError):
        p.send(t, b"x")  # closed
    with backend.bus.consumer() as c:
        assert c.end_offsets([TopicPartition(t, 0)]) == {TopicPartition(t, 0): 0}  # nothing of the above was written
        with pytest.raises(CommitFailedError):
            c.commit()


def test_bad_client_options(backend):
    with pytest.raises(InvalidConfigError):
        backend.bus.consumer(auto_offset_reset="sometimes")
    with pytest.raises(InvalidConfigError):
        backend.bus.consumer(max_poll_records=0)
    with pytest.raises(InvalidConfigError):
        backend.bus.consumer(partition_assignment_strategy="no-such-assignor")
    with pytest.raises(InvalidConfigError):
        backend.bus.producer(max_block_ms=-1)
    with pytest.raises(InvalidConfigError):
        backend.bus.producer(value_serializer="not callable")


def test_closed_consumer_and_context_manager(backend):
    t = backend.topic(1)
    with backend.bus.consumer(t) as c:
        pass
    with pytest.raises(ShmbusError):
        c.poll()
