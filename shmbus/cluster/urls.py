"""``connect(url)``: one application, two backends.

- ``None``: ``$SHMBUS_URL`` if set, else the default data dir (as ``Bus()``)
- a path, or ``shm:///path``: ``Bus(path)``, shared memory on this machine
- ``kafka://host:port[,host:port...]``: a ``ClusterBus`` on a Kafka cluster (the ``kafka`` extra)
"""

from __future__ import annotations

import os
import warnings

from shmbus.errors import InvalidConfigError


def kafka_servers(url: str) -> str:
    """``kafka://h1:p1,h2:p2[/]`` -> ``h1:p1,h2:p2``; InvalidConfigError for anything else."""
    rest = url[len("kafka://"):].rstrip("/")
    servers = []
    for part in rest.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        ok = bool(sep and host and port.isdigit() and 0 < int(port) < 65536 and "/" not in host and "@" not in host)
        if ok and host.startswith("["):
            ok = host.endswith("]") and len(host) > 2
        if not ok:
            raise InvalidConfigError(f"a kafka url is kafka://host:port[,host:port...]: url={url!r} "
                                     f"bad part={part!r} (e.g. kafka://localhost:9092)")
        servers.append(f"{host}:{int(port)}")
    return ",".join(servers)


def connect(url: str | os.PathLike | None = None, **options):
    """A bus for ``url``: a ``Bus`` on shared memory, or a ``ClusterBus`` on a Kafka cluster.

    ``options`` go to the bus: ``autostart`` for shared memory; ``kafka`` (librdkafka
    properties for every client of the bus) and ``timeout_ms`` (admin requests) for a cluster.
    """
    if url is None:
        url = os.environ.get("SHMBUS_URL") or None
    if url is not None and not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"url must be a str, a path or None: url={url!r}")
    url = os.fspath(url) if url is not None else None
    if url is not None and url.startswith("kafka://"):
        from shmbus.cluster.bus import ClusterBus

        return ClusterBus(kafka_servers(url), **options)
    from shmbus.client.bus import Bus

    for name in ("kafka", "timeout_ms"):
        if name in options:
            warnings.warn(f"{name}= is for a Kafka cluster (a kafka:// url) and is ignored on shared memory: "
                          f"url={url!r} (docs/backends.md)", UserWarning, stacklevel=2)
            del options[name]
    if url is None:
        return Bus(**options)
    if url.startswith("shm://"):
        path = url[len("shm://"):]
        if path and not path.startswith("/"):
            raise InvalidConfigError(f"a shm url names an absolute path: url={url!r} (e.g. shm:///tmp/bus, "
                                     f"or the path alone)")
        return Bus(path or None, **options)
    if "://" in url:
        raise InvalidConfigError(f"unknown url scheme: url={url!r} (use a data dir path, shm:///path, "
                                 f"or kafka://host:port)")
    return Bus(url, **options)


__all__ = ["connect", "kafka_servers"]
