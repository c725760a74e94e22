"""``shmbus bridge``: copying records between a bus and a Kafka cluster.

A bridge is a configuration in the data dir (``config.py``: ``bridges/<name>.json``)
and a process the supervisor runs for it (``python -m shmbus.bridge``; ``runner.py``),
restarted when it dies. Directions:

- ``out`` (bus -> cluster): the shmbus Consumer reads the bus (rings and segment
  files), an idempotent librdkafka producer writes the cluster; the read position
  per partition is saved only once the cluster acknowledged every record below it.
- ``in`` (cluster -> bus): a librdkafka consumer (its own group, no auto commit)
  reads the cluster, the shmbus Producer writes the bus; the Kafka offsets are
  committed once the bus took the records.

Every copied record keeps its partition, key, value, headers and timestamp, and
gets one more header, ``shmbus.bridge`` (``provenance.py``), naming where it came
from; a bridge never copies back a record that came from its other side.
"""

from shmbus.bridge.config import BridgeConfig, list_bridges, read_bridge, remove_bridge, write_bridge

__all__ = ["BridgeConfig", "list_bridges", "read_bridge", "remove_bridge", "write_bridge"]
