"""``ClusterBus``: the ``Bus`` API on a Kafka cluster: topic and group admin, the factory of clients.

Admin requests go through librdkafka's AdminClient and wait up to ``timeout_ms``; start and end
offsets come from a consumer of the bus's own that never joins a group. A bus belongs to one
process (librdkafka's handles do not survive ``fork``); guard it with a lock to share it
between threads.
"""

from __future__ import annotations

import time
import uuid
import warnings

from shmbus.cluster import probe
from shmbus.cluster.errors import kafka_error
from shmbus.cluster.librdkafka import load_confluent
from shmbus.cluster.options import BUS_NAMES, SHM_TOPIC_KEYS, UNSET, kafka_options, warn_shm_only
from shmbus.errors import (
    ClusterUnavailableError,
    InvalidConfigError,
    UnknownTopicError,
    UnsupportedOperationError,
)
from shmbus.records import PartitionDescription, TopicDescription, TopicPartition

# Bus methods and attributes that only shared memory has, and what to use instead
SHM_ONLY = {
    "data_dir": "a Kafka cluster has no data dir (bus.bootstrap_servers names the cluster)",
    "id": "a Kafka cluster bus has no shared-memory id (bus.bootstrap_servers names the cluster)",
    "supervisor_running": "a Kafka cluster has no supervisor",
    "require_supervisor": "a Kafka cluster has no supervisor",
    "shared_memory_names": "a Kafka cluster bus makes no shared-memory objects",
}

_STATES = {"STABLE": "Stable", "EMPTY": "Empty", "DEAD": "Dead", "PREPARING_REBALANCING": "PreparingRebalance",
           "PREPARING_REBALANCE": "PreparingRebalance", "COMPLETING_REBALANCING": "CompletingRebalance",
           "COMPLETING_REBALANCE": "CompletingRebalance", "UNKNOWN": "Unknown"}


def config_value(v):
    """A topic config value from DescribeConfigs: an int where it is one (as shared memory's), else the string."""
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return v


class ClusterBus:
    """A bus on a Kafka cluster (``shmbus.connect("kafka://host:port")``): the ``Bus`` API.

    ``kafka``: librdkafka properties for every client of the bus (security, timeouts, ...).
    ``timeout_ms``: how long an admin request or an offsets lookup waits for the cluster.
    """

    def __init__(self, bootstrap_servers: str, *, kafka=None, timeout_ms: int = 30000, autostart=UNSET):
        self._ck = load_confluent()
        if autostart is not UNSET:
            warn_shm_only("autostart", autostart, "a Kafka cluster's brokers run on their own")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1:
            raise InvalidConfigError(f"timeout_ms must be an int >= 1: timeout_ms={timeout_ms!r}")
        self.bootstrap_servers = bootstrap_servers
        self.url = "kafka://" + bootstrap_servers
        self.kafka = kafka_options(kafka, BUS_NAMES, "connect()")
        self.timeout_ms = timeout_ms
        self._timeout = timeout_ms / 1000.0
        self._apis: dict | None = None
        self._probed = False
        self._warned: set[str] = set()
        self._closed = False
        from confluent_kafka.admin import AdminClient

        try:
            self._admin = AdminClient(self.client_config())
            self._offsets = self._ck.Consumer(self.client_config({
                "group.id": f"shmbus-offsets-{uuid.uuid4().hex}", "enable.auto.commit": False}))
        except self._ck.KafkaException as e:
            raise kafka_error(e, "bad kafka options") from None

    def client_config(self, extra: dict | None = None) -> dict:
        """librdkafka properties for a client of this bus: the address, the bus's kafka options, then ``extra``."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka, **(extra or {})}

    def __getattr__(self, name):
        if name in SHM_ONLY:
            raise UnsupportedOperationError(f"{name} is shared memory only: {SHM_ONLY[name]} (docs/backends.md)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"ClusterBus({self.url!r})"

    # --- what the cluster serves ---
    def supports(self, api: str) -> bool | None:
        """Whether the cluster serves Kafka API ``api`` (e.g. ``"CreateTopics"``); None if unknown (TLS, SASL)."""
        if not self._probed:
            self._probed = True
            if str(self.kafka.get("security.protocol", "plaintext")).lower() == "plaintext":
                for address in self.bootstrap_servers.split(","):
                    try:
                        self._apis = probe.api_versions(address, min(self._timeout, 10.0))
                        break
                    except (OSError, ValueError):
                        continue
        if self._apis is None:
            return None
        return probe.API_KEYS[api] in self._apis

    def _require(self, api: str, what: str, instead: str) -> None:
        if self.supports(api) is False:
            raise UnsupportedOperationError(
                f"the cluster does not serve the {api} request, which {what} needs: cluster={self.url} ({instead})")

    def _result(self, future, what: str):
        try:
            return future.result(timeout=self._timeout + 5)
        except self._ck.KafkaException as e:
            raise kafka_error(e, what) from None
        except TimeoutError:
            raise ClusterUnavailableError(f"{what}: no answer from the cluster in timeout_ms={self.timeout_ms}: "
                                          f"cluster={self.url}") from None

    def _metadata(self, what: str):
        try:
            return self._admin.list_topics(timeout=self._timeout)  # every topic: asks for none by name (no auto-creation)
        except self._ck.KafkaException as e:
            raise kafka_error(e, what) from None

    def _topic_metadata(self, name: str, what: str):
        tm = self._metadata(what).topics.get(name)
        if tm is None or (tm.error is not None and tm.error.code() == self._ck.KafkaError.UNKNOWN_TOPIC_OR_PART):
            raise UnknownTopicError(f"unknown topic: topic={name!r} cluster={self.url} (list_topics() shows them)")
        if tm.error is not None:
            raise kafka_error(tm.error, f"{what}: topic={name!r}")
        return tm

    def partition_count(self, name: str) -> int:
        return len(self._topic_metadata(name, "reading the topic's partitions").partitions)

    def watermarks(self, tp) -> tuple[int, int]:
        """(start offset, end offset) of a partition, asked of its leader."""
        try:
            return self._offsets.get_watermark_offsets(self._ck.TopicPartition(tp[0], tp[1]), timeout=self._timeout,
                                                       cached=False)
        except self._ck.KafkaException as e:
            raise kafka_error(e, f"reading offsets: topic={tp[0]!r} partition={tp[1]}") from None

    # --- topics ---
    @staticmethod
    def validate_name(name) -> None:
        from shmbus.core.config import validate_topic_name

        validate_topic_name(name)

    def _topic_config(self, config, what: str) -> dict:
        """Topic keys for Kafka as strings: the keys shared memory knows checked as there, shared-memory-only
        keys warned of and left out, other keys passed to the cluster (which checks them)."""
        from shmbus.core.config import validate_topic_config

        if config is None:
            return {}
        if not isinstance(config, dict):
            raise InvalidConfigError(f"config must be a dict of topic keys: config={config!r}")
        known = validate_topic_config(None)
        out = {}
        for k, v in config.items():
            if k in SHM_TOPIC_KEYS:
                warn_shm_only(k, v, f"{what}: a Kafka topic has no shared-memory ring")
                continue
            if k in known:
                v = validate_topic_config({k: v})[k]
            if isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
        return out

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None) -> TopicDescription:
        from confluent_kafka.admin import NewTopic

        self.validate_name(name)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise InvalidConfigError(f"partitions must be an int >= 1: partitions={partitions!r}")
        cfg = self._topic_config(config, "create_topic")
        self._require("CreateTopics", "create_topic",
                      "create topics with the cluster's own tools, or let the brokers create them on first use")
        what = f"create_topic: topic={name!r}"
        fs = self._admin.create_topics([NewTopic(str(name), partitions, config=cfg)], request_timeout=self._timeout,
                                       operation_timeout=self._timeout)
        self._result(fs[name], what)
        self._wait_metadata(name, partitions, what)
        return self.describe_topic(name)

    def _wait_metadata(self, name: str, partitions: int | None, what: str) -> None:
        """Until the brokers' metadata shows the topic with leaders (partitions given) or without it (None)."""
        deadline = time.monotonic() + self._timeout
        while True:
            tm = self._metadata(what).topics.get(name)
            if partitions is None:
                if tm is None or tm.error is not None:
                    return
            elif tm is not None and tm.error is None and len(tm.partitions) >= partitions and \
                    all(p.leader >= 0 for p in tm.partitions.values()):
                return
            if time.monotonic() >= deadline:
                raise ClusterUnavailableError(f"{what}: the cluster's metadata did not follow in "
                                              f"timeout_ms={self.timeout_ms}: cluster={self.url}")
            time.sleep(0.05)

    def delete_topic(self, name: str) -> None:
        self.validate_name(name)
        self._require("DeleteTopics", "delete_topic", "delete topics with the cluster's own tools")
        what = f"delete_topic: topic={name!r}"
        fs = self._admin.delete_topics([name], request_timeout=self._timeout, operation_timeout=self._timeout)
        self._result(fs[name], what)
        self._wait_metadata(name, None, what)

    def list_topics(self) -> list[str]:
        """Topic names, sorted; Kafka's internal topics (``__consumer_offsets``, ...) left out."""
        return sorted(t for t in self._metadata("list_topics").topics if not t.startswith("__"))

    def describe_topic(self, name: str) -> TopicDescription:
        self.validate_name(name)
        tm = self._topic_metadata(name, "describe_topic")
        parts = []
        for p in sorted(tm.partitions):
            lo, hi = self.watermarks((name, p))
            parts.append(PartitionDescription(p, lo, hi))
        return TopicDescription(name, self._describe_config(name), parts)

    def _describe_config(self, name: str) -> dict:
        from confluent_kafka.admin import ConfigResource

        if self.supports("DescribeConfigs") is False:
            if "DescribeConfigs" not in self._warned:
                self._warned.add("DescribeConfigs")
                warnings.warn(f"the cluster does not serve DescribeConfigs: describe_topic gives config={{}}: "
                              f"cluster={self.url}", UserWarning, stacklevel=3)
            return {}
        fs = self._admin.describe_configs([ConfigResource("topic", str(name))], request_timeout=self._timeout)
        entries = self._result(next(iter(fs.values())), f"describe_topic: topic={name!r}")
        return {k: config_value(e.value) for k, e in sorted(entries.items())}

    def alter_topic_config(self, name: str, config: dict) -> None:
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

        self.validate_name(name)
        cfg = self._topic_config(config, "alter_topic_config")
        if not cfg:
            if not config:
                raise InvalidConfigError("alter_topic_config needs at least one key: config={}")
            self._topic_metadata(name, "alter_topic_config")
            return
        self._require("IncrementalAlterConfigs", "alter_topic_config", "alter topics with the cluster's own tools")
        self._topic_metadata(name, "alter_topic_config")  # UnknownTopicError before the request
        res = ConfigResource("topic", str(name), incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in cfg.items()])
        fs = self._admin.incremental_alter_configs([res], request_timeout=self._timeout)
        self._result(next(iter(fs.values())), f"alter_topic_config: topic={name!r}")

    # --- groups ---
    def list_groups(self) -> list[str]:
        self._require("ListGroups", "list_groups", "the cluster's own tools list its groups")
        res = self._result(self._admin.list_consumer_groups(request_timeout=self._timeout), "list_groups")
        return sorted(g.group_id for g in res.valid)

    def describe_group(self, group_id: str):
        """``GroupDescription`` as shared memory gives it; ``generation`` is -1 and a member's ``pid`` None
        (the Kafka API tells neither)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        from shmbus.client.groups import GroupDescription, MemberDescription, OffsetInfo

        if not isinstance(group_id, str) or not group_id:
            raise ValueError(f"group_id must be a non-empty str: group_id={group_id!r}")
        self._require("DescribeGroups", "describe_group", "the cluster's own tools describe its groups")
        what = f"describe_group: group_id={group_id!r}"
        fs = self._admin.describe_consumer_groups([group_id], request_timeout=self._timeout)
        try:
            d = fs[group_id].result(timeout=self._timeout + 5)
        except self._ck.KafkaException as e:
            if e.args and getattr(e.args[0], "code", lambda: None)() == getattr(self._ck.KafkaError,
                                                                                 "GROUP_ID_NOT_FOUND", None):
                return GroupDescription(group_id, "Dead", -1, [], {})
            raise kafka_error(e, what) from None
        state = _STATES.get(getattr(d.state, "name", str(d.state)), str(d.state))
        members = [MemberDescription(m.member_id, None,
                                     {TopicPartition(tp.topic, tp.partition)
                                      for tp in (m.assignment.topic_partitions if m.assignment else [])})
                   for m in d.members]
        fs = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)],
                                                     request_timeout=self._timeout)
        got = self._result(fs[group_id], what)
        offsets = {}
        for tp in got.topic_partitions or []:
            if tp.offset < 0:
                continue
            end = self.watermarks((tp.topic, tp.partition))[1]
            offsets[TopicPartition(tp.topic, tp.partition)] = OffsetInfo(tp.offset, end, max(0, end - tp.offset))
        return GroupDescription(group_id, state, -1, members, dict(sorted(offsets.items())))

    # --- clients ---
    def producer(self, **options):
        from shmbus.cluster.producer import ClusterProducer

        return ClusterProducer(self, **options)

    def consumer(self, *topics, **options):
        from shmbus.cluster.consumer import ClusterConsumer

        return ClusterConsumer(self, *topics, **options)

    # --- lifecycle ---
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._offsets.close()
        except (RuntimeError, self._ck.KafkaException):
            pass
        self._admin = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ClusterBus"]
