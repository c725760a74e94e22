"""The consumer-group coordinator: ``server.py`` (the socket and its requests), ``state.py`` (the
rebalance state machine, pure), ``tables.py`` (the offsets tables in shared memory). The
checkpoints on disk are ``log/group_offsets.py``'s."""

from shmbus.supervisor.groups.server import Coordinator

__all__ = ["Coordinator"]
