"""``Bus``: one bus per data directory; topic admin and the factory of clients.

A ``Bus`` object belongs to one process (after ``fork``, make a new one);
guard it with a lock to share it between threads. Any number of processes may
hold a ``Bus`` for the same data dir at once.
"""

from __future__ import annotations

import os

import posix_ipc

from shmbus.core import paths as _paths
from shmbus.log import metadata
from shmbus.core.limits import limit_error
from shmbus.core.config import validate_topic_config, validate_topic_name
from shmbus.errors import InvalidConfigError
from shmbus.records import PartitionDescription, TopicDescription
from shmbus.core.ring import Ring, unlink
from shmbus.client.handle import BusHandle
from shmbus.log.partition import partition_start_offset


class Bus(BusHandle):
    """One bus per data directory (default: ``$SHMBUS_DATA_DIR``, else ``$XDG_DATA_HOME/shmbus``):
    topic and group admin, and the factory of producers and consumers.

    ``autostart=True`` starts the supervisor (``shmbus serve``) in the
    background if none runs for this data dir and returns once it answers.
    """

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None) -> TopicDescription:
        validate_topic_name(name)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= 10000:
            raise InvalidConfigError(f"partitions must be an int from 1 to 10000: partitions={partitions!r}")
        cfg = validate_topic_config(config)

        made: list[str] = []

        def make_rings(meta):
            for p in range(partitions):
                name_p = _paths.ring_name(self.id, meta.id, p)
                Ring.create(name_p, cfg["ring.bytes"], 0, meta.id_int, p, cfg["max.message.bytes"]).close()
                made.append(name_p)

        try:
            metadata.create_topic(self.data_dir, name, partitions, cfg, make_rings)
        except BaseException as e:
            for n in made:
                unlink(n)
            err = limit_error(e, f"creating topic={name!r} partitions={partitions}") if isinstance(e, OSError) else None
            if err is not None:
                raise err from None  # (nothing of the topic is left)
            raise
        return self.describe_topic(name)

    def delete_topic(self, name: str) -> None:
        validate_topic_name(name)
        meta = self.topic_meta(name)
        for p in range(meta.partitions):
            n = _paths.ring_name(self.id, meta.id, p)
            try:
                r = Ring.open(n)
            except posix_ipc.ExistentialError:
                continue
            r.mark_deleted()
            r.close()
            unlink(n)
        self.forget_topic(meta)
        metadata.remove_topic_dir(self.data_dir, meta)
        self.ctl.ring_doorbell()  # sleeping consumers notice the topic went away

    def describe_topic(self, name: str) -> TopicDescription:
        from shmbus.log.reader import PartitionLog

        validate_topic_name(name)
        meta = self.topic_meta(name)
        parts = []
        for p in range(meta.partitions):
            r = self.ring(meta, p)
            log = PartitionLog(_paths.partition_dir(self.data_dir, name, p))
            try:
                start = partition_start_offset(r, log)
            finally:
                log.close()
            parts.append(PartitionDescription(p, start, r.next_offset()))
        return TopicDescription(meta.name, dict(meta.config), parts)

    def alter_topic_config(self, name: str, config: dict) -> None:
        validate_topic_name(name)
        meta = self.topic_meta(name)
        cfg = validate_topic_config(config, base=meta.config)
        meta = metadata.alter_topic(self.data_dir, name, cfg)
        for p in range(meta.partitions):  # producers read this limit from the ring
            self.ring(meta, p).set_max_message_bytes(cfg["max.message.bytes"])

    # --- groups (the coordinator lives in the supervisor) ---
    def list_groups(self) -> list[str]:
        from shmbus.client.groups import list_groups

        return list_groups(self)

    def describe_group(self, group_id: str):
        from shmbus.client.groups import describe_group

        return describe_group(self, group_id)

    # --- clients ---
    @staticmethod
    def _without_kafka(config: dict) -> dict:
        """``kafka={...}`` (librdkafka properties, for a bus on a Kafka cluster: ``shmbus.connect``)
        means nothing here: warned of and left out, so that one application runs on both backends."""
        if "kafka" in config:
            import warnings

            warnings.warn("kafka= (librdkafka properties) is for a Kafka cluster and is ignored on shared "
                          "memory (docs/backends.md)", UserWarning, stacklevel=3)
            config = {k: v for k, v in config.items() if k != "kafka"}
        return config

    def producer(self, **config):
        from shmbus.client.producer import Producer

        return Producer(self.data_dir, _bus=self, **self._without_kafka(config))

    def consumer(self, *topics, **config):
        from shmbus.client.consumer import Consumer

        return Consumer(*topics, data_dir=self.data_dir, _bus=self, **self._without_kafka(config))

    # --- for tests and tools ---
    def shared_memory_names(self) -> list[str]:
        """Names of this bus's objects in /dev/shm (with the leading /)."""
        prefix = f"shmbus-{self.id}-"
        try:
            return sorted("/" + n for n in os.listdir("/dev/shm") if n.startswith(prefix))
        except FileNotFoundError:
            return []


__all__ = ["Bus"]
