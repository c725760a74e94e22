"""The conformance suite: the API's behaviour, run against both backends.

``backend`` is parametrized over ``"shm"`` (a ``Bus`` on a temporary data dir, with its
supervisor: tests/conftest.py's ``sbus``), ``"kafka"`` (``shmbus.connect("kafka://...")``) and
``"listener"``: the Kafka backend on a bus's own Kafka protocol listener (tests/conftest.py's
``kbus``), a Kafka-protocol broker that serves every admin request, so that both the
Kafka backend and the listener meet a client that no test here wrote for them.
The Kafka address is ``$SHMBUS_TEST_KAFKA`` (``host:port`` of a real cluster) if set, else
librdkafka's in-process mock cluster, owned by a producer kept alive for the session.

The mock cluster serves no CreateTopics (nor DeleteTopics, DescribeConfigs, the group admin
requests): asked at run time (``bus.supports``), a topic is then made by the brokers'
auto-creation, with the partition count the cluster picks (``Topic.partitions`` says it), and
the admin tests that need the request skip, saying so. The mock keeps at most 5 MiB per
partition: the volumes here are small.
"""

from __future__ import annotations

import time
import uuid

import pytest

import shmbus


@pytest.fixture(scope="session")
def kafka_address():
    from helpers.kafka import kafka_cluster

    with kafka_cluster() as addr:
        yield addr


@pytest.fixture(scope="session")
def cluster_bus(kafka_address):
    with shmbus.connect("kafka://" + kafka_address, kafka={"log_level": 3}) as b:
        yield b


class Topic(str):
    """A topic's name, with ``partitions``: the count it has (the cluster's, where it chose)."""

    partitions: int


class Backend:
    def __init__(self, name, bus, address=None):
        self.name = name
        self.bus = bus
        self.address = address
        self.made: list[str] = []

    @property
    def can_create_topics(self) -> bool:
        return self.name == "shm" or self.bus.supports("CreateTopics") is not False

    def topic(self, partitions=1, config=None) -> Topic:
        """A new topic: made with ``create_topic``, or, on a cluster without CreateTopics, by auto-creation."""
        name = f"c-{uuid.uuid4().hex[:12]}"
        if self.can_create_topics:
            self.bus.create_topic(name, partitions, config)
        else:
            import confluent_kafka

            p = confluent_kafka.Producer({"bootstrap.servers": self.address, "log_level": 3})
            p.list_topics(name, timeout=30)  # the brokers' auto-creation makes it
            del p
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.bus.describe_topic(name)
                    break
                except shmbus.UnknownTopicError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.made.append(name)
        t = Topic(name)
        t.partitions = len(self.bus.describe_topic(name).partitions)
        return t

    def cleanup(self):
        if not self.can_create_topics:
            return
        for name in self.made:
            try:
                self.bus.delete_topic(name)
            except (shmbus.UnknownTopicError, shmbus.UnsupportedOperationError):
                pass


@pytest.fixture(scope="module")
def listener_bus(kbus):
    with shmbus.connect("kafka://" + kbus.bootstrap, kafka={"log_level": 3}) as b:
        yield b


@pytest.fixture(params=["shm", "kafka", "listener"])
def backend(request):
    import warnings

    if request.param == "shm":
        be = Backend("shm", request.getfixturevalue("sbus"))
    elif request.param == "listener":
        be = Backend("listener", request.getfixturevalue("listener_bus"), request.getfixturevalue("kbus").bootstrap)
    else:
        be = Backend("kafka", request.getfixturevalue("cluster_bus"), request.getfixturevalue("kafka_address"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the cluster does not serve DescribeConfigs")
        try:
            yield be
        finally:
            be.cleanup()


def read(consumer, n, timeout_s=60.0, batch=False) -> list:
    """At least ``n`` records (ConsumerRecords, or RecordBatches' records with ``batch``), polling up to ``timeout_s``."""
    out = []
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < n and time.monotonic() < deadline:
        res = (consumer.poll_batch if batch else consumer.poll)(timeout_ms=500)
        for _tp, recs in sorted(res.items()):
            out.append(recs) if batch else out.extend(recs)
            got += len(recs)
    assert got >= n, f"read {got} records of {n} in {timeout_s}s"
    return out


@pytest.fixture
def drain():
    """``drain(consumer, n, timeout_s=60, batch=False)``: at least n records, or the test fails saying how many came."""
    return read
