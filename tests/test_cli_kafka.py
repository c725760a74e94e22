"""``shmbus status`` and ``shmbus stats`` show the Kafka listener: address, SASL, connections and rates."""

from __future__ import annotations

import json
import os
import threading

import pytest
from helpers.cli import sh

pytestmark = pytest.mark.timeout(120)


def _busy(bootstrap, stop: threading.Event):
    """Keep a kafka-python admin client asking Metadata until ``stop``; the connection stays open meanwhile."""
    from kafka import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        while not stop.is_set():
            a.list_topics()
            stop.wait(0.02)
    finally:
        a.close()


@pytest.fixture
def busy(kbus):
    stop = threading.Event()
    t = threading.Thread(target=_busy, args=(kbus.bootstrap, stop), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(30)


def test_status_shows_the_listener(kbus, busy):
    from helpers.waiting import wait_for
    from helpers.kafka import listener_status

    wait_for(lambda: (listener_status(kbus.data_dir)["rates"].get("requests_per_s") or 0) > 0, 20,
             "the listener's request rate to show the client")
    r = sh(kbus.data_dir, "status", "--json")
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)["kafka_listener"]
    assert k["address"] == kbus.bootstrap and k["sasl"] is False and k["connections"] >= 1
    assert k["requests"] > 0 and k["rates"]["requests_per_s"] > 0 and k["rates"]["window_s"] > 0
    for key in ("produced_records", "produced_bytes", "fetched_records", "fetched_bytes"):
        assert isinstance(k[key], int) and k["rates"][f"{key}_per_s"] is not None
    r = sh(kbus.data_dir, "status")
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("kafka listener")]
    assert f"kafka listener {kbus.bootstrap}" in line and "SASL/PLAIN=off" in line
    assert "requests/s=" in line and "produce=" in line and "fetch=" in line and "rec/s" in line


def test_stats_shows_the_listener_and_its_rates(kbus, busy):
    r = sh(kbus.data_dir, "stats", "--once", "--json", "--interval", "1")
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)["kafka_listener"]
    assert k["address"] == kbus.bootstrap and k["sasl"] is False
    assert k["requests_per_s"] > 0  # the client asks all the time
    assert k["produced_records_per_s"] == 0 and k["fetched_bytes_per_s"] == 0  # nobody produces or fetches
    r = sh(kbus.data_dir, "stats", "--once", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith(f"kafka listener {kbus.bootstrap}  SASL/PLAIN=off") for ln in r.stdout.splitlines())


def test_stats_rates_from_two_snapshots():
    from shmbus.cli.stats import kafka_line, with_rates

    def snap(t, produced, fetched_bytes, address="127.0.0.1:9092"):
        return {"t": t, "partitions": [], "groups": [], "supervisor": None,
                "kafka_listener": {"address": address, "sasl": True, "connections": 2, "max_connections": 256,
                                   "connections_total": 5, "refused": 1, "requests": 10 * t,
                                   "produced_records": produced, "produced_bytes": produced * 100,
                                   "fetched_records": 0, "fetched_bytes": fetched_bytes}}

    cur = with_rates(snap(10.0, 1000, 0), snap(12.0, 3000, 4 * 2**20))
    k = cur["kafka_listener"]
    assert k["produced_records_per_s"] == 1000 and k["produced_bytes_per_s"] == 100000
    assert k["fetched_bytes_per_s"] == 2 * 2**20 and k["requests_per_s"] == 10
    line = kafka_line(k, k)
    assert "SASL/PLAIN=on" in line and "refused 1" in line and "produce=1.0k rec/s" in line
    assert "fetch=0 rec/s 2.0 MiB/s" in line
    # a listener restarted on another address between the snapshots: no rates rather than wrong ones
    k = with_rates(snap(10.0, 1000, 0, "127.0.0.1:1"), snap(12.0, 5, 0))["kafka_listener"]
    assert k["produced_records_per_s"] is None


def test_status_with_sasl_says_so(tmp_path):
    from helpers.bus import cleanup_bus
    from helpers.kafka import start_listener

    users = tmp_path / "users"
    users.write_text("alice:pw\n")
    os.chmod(users, 0o600)
    d = str(tmp_path / "bus")
    try:
        boot = start_listener(d, "--kafka-sasl-users", str(users))
        r = sh(d, "status")
        assert r.returncode == 0, r.stderr
        assert f"kafka listener {boot}  SASL/PLAIN=on" in r.stdout
        assert json.loads(sh(d, "status", "--json").stdout)["kafka_listener"]["sasl"] is True
    finally:
        cleanup_bus(d)
