"""What the listener's handlers share: the bus, its topics and rings, the cluster's identity.

One :class:`Broker` per listener. The listener is a one-broker cluster:
broker id :data:`NODE_ID`, and a cluster id derived from the bus id, so both
stay the same across restarts of the same data dir. Every partition's leader
is this broker; its replicas and in-sync replicas are this broker alone.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time

from shmbus.client.bus import Bus
from shmbus.core.config import validate_topic_name
from shmbus.errors import ShmbusError, TopicExistsError, UnknownTopicError
from shmbus.log import metadata

NODE_ID = 0
META_TTL_S = 0.5  # topic metadata is re-read from topic.json at most this often per topic


class Counters:
    """The listener's figures for ``status`` and ``stats`` (plain ints; written under the GIL)."""

    __slots__ = ("connections", "connections_total", "requests", "produced_records", "produced_bytes",
                 "fetched_records", "fetched_bytes", "refused")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class Broker:
    """The bus as the handlers see it (thread-safe).

    ``auto_create``: a Metadata or Produce request naming a topic that does not
    exist creates it with ``num_partitions`` partitions (Kafka's
    ``auto.create.topics.enable``, ``num.partitions``).
    """

    def __init__(self, data_dir: str, host: str, port: int, *, log=print, coordinator=None,
                 auto_create: bool = True, num_partitions: int = 1):
        self.bus = Bus(data_dir, autostart=False)
        self.data_dir = self.bus.data_dir
        self.host = host
        self.port = port
        self.log = log
        self.coordinator = coordinator  # the supervisor's group coordinator (groups/server.py), or None
        self.kafka_groups = None  # the Kafka clients' groups (kafka/groups.py), made on first use
        self.auto_create = auto_create
        self.num_partitions = num_partitions
        self.node_id = NODE_ID
        self.cluster_id = cluster_id(self.bus.id)
        self.counters = Counters()
        self.closing = threading.Event()
        self._meta: dict[str, tuple[float, metadata.TopicMeta]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.closing.set()
        if self.kafka_groups is not None:
            self.kafka_groups.close()
        self.bus.close()

    # --- topics ---
    def topic(self, name: str, *, create: bool = False) -> metadata.TopicMeta | None:
        """The topic's metadata (re-read at most every META_TTL_S), None if it does not exist.

        ``create`` and auto-creation on: a missing topic is created first (a
        failure is logged, and the topic does not exist). A name that cannot be a
        topic raises InvalidTopicError: names from the network never become paths
        outside the topics dir.
        """
        now = time.monotonic()
        hit = self._meta.get(name)
        if hit is not None and now - hit[0] < META_TTL_S:
            return hit[1]
        validate_topic_name(name)
        try:
            meta = self.bus.topic_meta(name)
        except UnknownTopicError:
            meta = None
            if create and self.auto_create:
                try:
                    meta = self.create_topic(name, self.num_partitions, None)
                except ShmbusError as e:
                    self.log(f"kafka listener: auto-creating topic={name!r} failed: {e}")
        with self._lock:
            if meta is None:
                self._meta.pop(name, None)
            else:
                self._meta[name] = (now, meta)
        return meta

    def create_topic(self, name: str, partitions: int, config: dict | None) -> metadata.TopicMeta:
        """Create a topic (another creating it meanwhile is fine); raises the Bus's errors for bad input."""
        try:
            self.bus.create_topic(name, partitions, config)
        except TopicExistsError:
            pass
        self.forget(name)
        return self.bus.topic_meta(name)

    def forget(self, name: str) -> None:
        with self._lock:
            self._meta.pop(name, None)

    def topics(self) -> list[str]:
        return self.bus.list_topics()

    def ring(self, meta: metadata.TopicMeta, partition: int):
        return self.bus.ring(meta, partition)

    def address(self) -> str:
        return f"{self.host}:{self.port}"


def cluster_id(bus_id: str) -> str:
    """A Kafka-style cluster id (22 characters of url-safe base64) that is a function of the bus id."""
    raw = hashlib.sha256(b"shmbus cluster " + bus_id.encode()).digest()[:16]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
