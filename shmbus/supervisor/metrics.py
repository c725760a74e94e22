"""The supervisor's Prometheus endpoint: ``shmbus serve --metrics HOST:PORT``, text exposition at ``/metrics``.

Every scrape reads the supervisor's state as it is then (a collector, no
background sampling): per partition its end offset, records appended, ring
size and fill, spill lag and what was spilled; per consumer group (shmbus and
Kafka clients alike) the committed offset and lag of each partition it
committed; the supervisor's own spill rounds, open files and memory; and, with
the Kafka listener open, its connections and traffic. Rates are the counters'
``rate()`` in Prometheus. The exposition and the HTTP server are
prometheus_client's (the optional extra ``metrics``).

Loopback only unless ``allow_remote``: the figures name every topic and group.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

from shmbus.errors import InvalidArgumentError

ENV_METRICS = "SHMBUS_METRICS"


class MetricsSettings(NamedTuple):
    host: str
    port: int


def metrics_settings(address: str, allow_remote: bool = False) -> MetricsSettings:
    """Check ``HOST:PORT`` (``[v6]:PORT``) before anything listens; InvalidArgumentError says what to do."""
    from shmbus.kafka.settings import is_loopback, parse_address

    host, port = parse_address(address, "a metrics address", "127.0.0.1:9464")
    if not allow_remote and not is_loopback(host):
        raise InvalidArgumentError(f"the metrics address {address} is not a loopback address: the figures name "
                                   f"every topic and group (add --metrics-allow-remote to serve it anyway)")
    if importlib.util.find_spec("prometheus_client") is None:
        raise InvalidArgumentError("--metrics needs prometheus_client: pip install 'shmbus[metrics]'")
    return MetricsSettings(host, port)


class BusCollector:
    """prometheus_client's custom collector over a running Supervisor."""

    def __init__(self, sup):
        self.sup = sup

    def describe(self):
        return []  # (the families depend on the topics and groups of the moment)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.sup.status()
        tp = ["topic", "partition"]
        fam = {
            "end": GaugeMetricFamily("shmbus_partition_end_offset", "The offset the next record will have.",
                                     labels=tp),
            "records": CounterMetricFamily("shmbus_partition_records", "Records appended to the partition "
                                           "(offsets taken; rate() is its produce rate).", labels=tp),
            "ring": GaugeMetricFamily("shmbus_partition_ring_bytes", "The size of the partition's ring.",
                                      labels=tp),
            "used": GaugeMetricFamily("shmbus_partition_ring_used_bytes", "Bytes of the ring in use.", labels=tp),
            "lag": GaugeMetricFamily("shmbus_partition_spill_lag_bytes", "Bytes in the ring not yet in a "
                                     "segment file.", labels=tp),
            "sbytes": CounterMetricFamily("shmbus_partition_spilled_bytes", "Bytes this supervisor spilled to "
                                          "segment files.", labels=tp),
            "sframes": CounterMetricFamily("shmbus_partition_spilled_frames", "Frames this supervisor spilled "
                                           "to segment files.", labels=tp),
        }
        ends = {}
        for p in st["partitions"]:
            labels = [p["topic"], str(p["partition"])]
            ends[(p["topic"], p["partition"])] = p["next_offset"]
            fam["end"].add_metric(labels, p["next_offset"])
            fam["records"].add_metric(labels, p["next_offset"])
            fam["ring"].add_metric(labels, p["ring_bytes"])
            fam["used"].add_metric(labels, p["ring_used"])
            fam["lag"].add_metric(labels, p["spill_lag_bytes"])
            fam["sbytes"].add_metric(labels, p["spilled_bytes"])
            fam["sframes"].add_metric(labels, p["spilled_frames"])
        yield from fam.values()
        yield from self._groups(ends)
        yield from self._supervisor(st)
        if st.get("kafka_listener"):
            yield from self._listener(st["kafka_listener"])

    def _groups(self, ends: dict):
        from prometheus_client.core import GaugeMetricFamily

        labels = ["group", "topic", "partition"]
        committed = GaugeMetricFamily("shmbus_group_committed_offset", "The group's committed offset.",
                                      labels=labels)
        lag = GaugeMetricFamily("shmbus_group_lag", "Records after the group's committed offset.", labels=labels)
        info = GaugeMetricFamily("shmbus_group_info", "1 for each group, with its kind and state.",
                                 labels=["group", "kind", "state"])
        co = self.sup.coordinator
        if co is not None:
            for g in co.overview():
                gid = g["group_id"]
                info.add_metric([gid, g["kind"], g["state"]], 1)
                for t, off in sorted(co.read_offsets(gid).items()):
                    lv = [gid, t.topic, str(t.partition)]
                    committed.add_metric(lv, off)
                    end = ends.get((t.topic, t.partition))
                    if end is not None:
                        lag.add_metric(lv, max(end - off, 0))
        yield from (committed, lag, info)

    @staticmethod
    def _supervisor(st: dict):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("shmbus_supervisor_spill_rounds", "Spill rounds of the supervisor.",
                                  value=st["spill_rounds"])
        yield CounterMetricFamily("shmbus_supervisor_spill_busy_seconds", "Time the supervisor spent spilling.",
                                  value=st["spill_busy_s"])
        yield GaugeMetricFamily("shmbus_supervisor_uptime_seconds", "Seconds since the supervisor started.",
                                value=st["uptime_s"])
        yield GaugeMetricFamily("shmbus_supervisor_failing_partitions", "Partitions whose spill fails.",
                                value=st["failing_partitions"])
        if st["fds"]["open"] is not None:
            yield GaugeMetricFamily("shmbus_supervisor_open_fds", "File descriptors open.", value=st["fds"]["open"])
        if st["rss_bytes"] is not None:
            yield GaugeMetricFamily("shmbus_supervisor_resident_memory_bytes", "The supervisor's resident memory.",
                                    value=st["rss_bytes"])

    @staticmethod
    def _listener(k: dict):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("shmbus_kafka_connections", "Open Kafka client connections.",
                                value=k["connections"])
        for key, name, what in (
                ("connections_total", "connections_accepted", "Kafka client connections accepted"),
                ("requests", "requests", "Kafka requests answered"),
                ("produced_records", "produced_records", "Records produced by Kafka clients"),
                ("produced_bytes", "produced_bytes", "Record bytes produced by Kafka clients"),
                ("fetched_records", "fetched_records", "Records fetched by Kafka clients"),
                ("fetched_bytes", "fetched_bytes", "Record bytes fetched by Kafka clients"),
                ("refused", "refused", "Kafka connections or requests refused")):
            yield CounterMetricFamily(f"shmbus_kafka_{name}", f"{what}.", value=k[key])


class MetricsServer:
    """The HTTP endpoint; bound by ``open`` (a port in use fails the supervisor's start), served by
    prometheus_client's threads until ``close``."""

    def __init__(self, sup, settings: MetricsSettings):
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BusCollector(sup))
        self.httpd, self.thread = start_http_server(settings.port, addr=settings.host, registry=self.registry)
        host = settings.host
        self.address = f"[{host}]:{self.httpd.server_port}" if ":" in host else f"{host}:{self.httpd.server_port}"

    def status(self) -> dict:
        return {"address": self.address, "path": "/metrics"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


__all__ = ["ENV_METRICS", "MetricsSettings", "metrics_settings", "BusCollector", "MetricsServer"]
