"""The low-level handle on a bus that producers and consumers hold (``Bus`` builds on it).

A handle belongs to one process (after ``fork``, make a new one); the ring
cache is guarded by a lock. Any number of processes may hold one for the same
data dir at once.
"""

from __future__ import annotations

import threading

from shmbus.client import control as client
from shmbus.core import ownership as _private
from shmbus.core import paths as _paths
from shmbus.core.limits import limit_error
from shmbus.core.ring import ControlBlock, Ring
from shmbus.errors import SupervisorNotRunningError
from shmbus.log import metadata
from shmbus.log.partition import open_or_recreate_ring


class BusHandle:
    """What producers and consumers need of a bus: its data dir, control block and rings.

    ``data_dir`` defaults to ``$SHMBUS_DATA_DIR``, else ``$XDG_DATA_HOME/shmbus``.
    ``autostart=True`` starts the supervisor (``shmbus serve``) in the
    background if none runs for this data dir and returns once it answers.
    :class:`shmbus.Bus` adds topic and group admin and the client factories.
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
        return f"{type(self).__name__}(data_dir={self.data_dir!r})"

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

    def list_topics(self) -> list[str]:
        return metadata.list_topics(self.data_dir)


__all__ = ["BusHandle"]
