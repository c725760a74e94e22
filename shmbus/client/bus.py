"""``Bus``: one bus per data directory; topic admin and the factory of clients.

A ``Bus`` object belongs to one process (after ``fork``, make a new one);
guard it with a lock to share it between threads. Any number of processes may
hold a ``Bus`` for the same data dir at once.
"""

from __future__ import annotations

import os
import threading

import posix_ipc

from shmbus.core import paths as _paths, ownership as _private
from shmbus.log import metadata
from shmbus.core.limits import limit_error
from shmbus.core.config import validate_topic_config, validate_topic_name
from shmbus.errors import InvalidConfigError, SupervisorNotRunningError, UnknownTopicError
from shmbus.records import PartitionDescription, TopicDescription
from shmbus.core.ring import ControlBlock, Ring, unlink
from shmbus.client import control as client


class Bus:
    """A handle on the bus kept in ``data_dir`` (default: ``$SHMBUS_DATA_DIR``, else ``$XDG_DATA_HOME/shmbus``).

    ``autostart=True`` starts the supervisor (``shmbus serve``) in the
    background if none runs for this data dir and returns once it answers.
    """

    def __init__(self, data_dir=None, *, autostart: bool = True):
        self.data_dir = _paths.resolve_data_dir(data_dir)
        _private.makedirs(self.data_dir)
        self.id = _paths.bus_id(self.data_dir)
        self.ctl = ControlBlock.open_or_create(self.id, self.data_dir)
        self._rings: dict[tuple[str, int], Ring] = {}
        self._retired: list[Ring] = []
        self._lock = threading.Lock()
        self._closed = False
        if autostart:
            client.start(self.data_dir)

    # --- context manager ---
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for r in list(self._rings.values()) + self._retired:
            r.close()
        self._rings.clear()
        self._retired.clear()
        self.ctl.close()

    def __repr__(self) -> str:
        return f"Bus(data_dir={self.data_dir!r})"

    # --- supervisor ---
    def supervisor_running(self) -> bool:
        return client.running_pid(self.data_dir) is not None

    def require_supervisor(self) -> None:
        if not self.supervisor_running():
            raise SupervisorNotRunningError(
                f"no supervisor is running: data_dir={self.data_dir} (start it with `shmbus serve "
                f"--data-dir {self.data_dir}`, or use Bus(autostart=True))"
            )

    # --- topics ---
    def topic_meta(self, name: str) -> metadata.TopicMeta:
        return metadata.read_topic(self.data_dir, name)

    def ring(self, meta: metadata.TopicMeta, partition: int) -> Ring:
        """The ring of (topic incarnation, partition), opened once per Bus.

        If its shared memory is gone (a reboot), it is made again, empty, at the
        partition's log end offset on disk.
        """
        key = (meta.id, partition)
        r = self._rings.get(key)
        if r is not None:
            return r
        with self._lock:
            r = self._rings.get(key)
            if r is None:
                try:
                    r = open_or_recreate_ring(self.data_dir, self.id, meta, partition)
                except OSError as e:
                    err = limit_error(e, f"opening the ring of topic={meta.name!r} partition={partition}")
                    if err is None:
                        raise
                    raise err from None
                self._rings[key] = r
        return r

    def forget_topic(self, meta: metadata.TopicMeta) -> None:
        """Stop handing out this incarnation's rings (its topic was deleted).

        The mappings stay until ``close()``: producers and consumers of this Bus
        may still hold them, and unmapping under them would crash the process.
        """
        with self._lock:
            for key in [k for k in self._rings if k[0] == meta.id]:
                self._retired.append(self._rings.pop(key))

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

    def list_topics(self) -> list[str]:
        return metadata.list_topics(self.data_dir)

    def describe_topic(self, name: str) -> TopicDescription:
        from shmbus.log.segments import PartitionLog

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
    def producer(self, **config):
        from shmbus.client.producer import Producer

        return Producer(self.data_dir, _bus=self, **config)

    def consumer(self, *topics, **config):
        from shmbus.client.consumer import Consumer

        return Consumer(*topics, data_dir=self.data_dir, _bus=self, **config)

    # --- for tests and tools ---
    def shared_memory_names(self) -> list[str]:
        """Names of this bus's objects in /dev/shm (with the leading /)."""
        prefix = f"shmbus-{self.id}-"
        try:
            return sorted("/" + n for n in os.listdir("/dev/shm") if n.startswith(prefix))
        except FileNotFoundError:
            return []


def open_or_recreate_ring(data_dir: str, bid: str, meta: metadata.TopicMeta, partition: int) -> Ring:
    """The partition's ring; if its shared memory is gone (a reboot), a new empty one at the log end.

    The log end is the offset after the last record on disk whose checksum
    holds: where the supervisor's recovery cuts a torn tail, whoever gets
    here first.
    """
    name = _paths.ring_name(bid, meta.id, partition)
    try:
        return Ring.open(name)
    except posix_ipc.ExistentialError:
        pass
    from shmbus.log.recovery import log_end_offset  # (numba: only when a ring must be remade)

    pdir = _paths.partition_dir(data_dir, meta.name, partition)
    if not os.path.isdir(pdir):
        raise UnknownTopicError(f"topic does not exist: topic={meta.name!r} partition={partition}")
    end = log_end_offset(pdir)
    base = 0 if end is None else end
    try:
        return Ring.create(name, meta.config["ring.bytes"], base, meta.id_int, partition,
                           meta.config["max.message.bytes"])
    except posix_ipc.ExistentialError:
        return Ring.open(name)


def partition_start_offset(ring: Ring, log) -> int:
    """The first offset still readable: the first on disk, else the ring's base offset.

    Every offset from the ring's base (the log end when the ring was made) on
    is on disk or in the ring, so with an empty disk the base is the start,
    whatever the spiller is doing meanwhile. (The first frame found in the
    ring would not do: that races the spiller moving frames to disk.)
    """
    s = log.start_offset()
    return s if s is not None else ring.base_offset()
