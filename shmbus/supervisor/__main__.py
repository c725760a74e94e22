"""``python -m shmbus.supervisor --data-dir DIR [--kafka-listener HOST:PORT ...] [--metrics HOST:PORT ...]``: what ``shmbus serve`` runs.

``$SHMBUS_KAFKA_LISTENER`` (HOST:PORT) opens the Kafka listener when no
``--kafka-listener`` is given, and ``$SHMBUS_METRICS`` (HOST:PORT) the metrics
endpoint when no ``--metrics`` is: so a supervisor that a ``Bus`` autostarts has
them too.
"""

import argparse
import os
import sys

from shmbus.errors import ShmbusError
from shmbus.kafka.settings import ENV_LISTENER, listener_settings
from shmbus.supervisor.daemon import serve
from shmbus.supervisor.metrics import ENV_METRICS, metrics_settings


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m shmbus.supervisor")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--kafka-listener", default=None)
    ap.add_argument("--kafka-listener-allow-remote", action="store_true")
    ap.add_argument("--kafka-sasl-users", default=None)
    ap.add_argument("--metrics", default=None)
    ap.add_argument("--metrics-allow-remote", action="store_true")
    args = ap.parse_args()
    from shmbus.core.paths import resolve_data_dir

    address = args.kafka_listener or os.environ.get(ENV_LISTENER) or None
    kafka = None
    if address:
        try:
            kafka = listener_settings(address, args.kafka_listener_allow_remote, args.kafka_sasl_users)
        except ShmbusError as e:
            print(f"shmbus: {e}", file=sys.stderr)
            return 1
    metrics_address = args.metrics or os.environ.get(ENV_METRICS) or None
    metrics = None
    if metrics_address:
        try:
            metrics = metrics_settings(metrics_address, args.metrics_allow_remote)
        except ShmbusError as e:
            print(f"shmbus: {e}", file=sys.stderr)
            return 1
    return serve(resolve_data_dir(args.data_dir), kafka, metrics)


if __name__ == "__main__":
    sys.exit(main())
