"""The Kafka listener: starting it, its settings, and what every client asks first (ApiVersions, Metadata)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.kafka import listener_status


def test_kafka_python_lists_topics_and_the_one_broker(kbus, ktopic):
    from kafka import KafkaAdminClient

    name = ktopic(3)
    admin = KafkaAdminClient(bootstrap_servers=kbus.bootstrap, request_timeout_ms=10000)
    try:
        assert name in admin.list_topics()
        cluster = admin.describe_cluster()
        host, port = kbus.bootstrap.split(":")
        assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [(host, int(port))]
        (desc,) = admin.describe_topics([name])
        assert desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2]
    finally:
        admin.close()
    st = listener_status(kbus.data_dir)
    assert st["address"] == kbus.bootstrap and st["requests"] > 0


def test_cluster_id_is_stable_across_restarts(tmp_path):
    from kafka import KafkaAdminClient

    from helpers.bus import cleanup_bus
    from helpers.kafka import start_listener

    d = str(tmp_path / "bus")
    ids = []
    try:
        for _ in range(2):
            boot = start_listener(d)
            admin = KafkaAdminClient(bootstrap_servers=boot, request_timeout_ms=10000)
            try:
                ids.append(admin.describe_cluster()["cluster_id"])
            finally:
                admin.close()
            cleanup_bus(d)
    finally:
        cleanup_bus(d)
    assert ids[0] == ids[1] and len(ids[0]) == 22


def _serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "shmbus", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_a_remote_address_needs_allow_remote(tmp_path):
    r = _serve("--data-dir", str(tmp_path / "bus"), "--kafka-listener", "0.0.0.0:9092")
    assert r.returncode == 1
    assert "not a loopback address" in r.stderr and "--kafka-listener-allow-remote" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "bus" / "supervisor.lock")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:99999", "nohost:", ":9092"])
def test_a_bad_address_is_one_line(tmp_path, address):
    r = _serve("--data-dir", str(tmp_path / "bus"), "--kafka-listener", address)
    assert r.returncode == 1 and "HOST:PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_sasl_users_file_must_be_private(tmp_path):
    f = tmp_path / "users"
    f.write_text("alice:secret\n")
    os.chmod(f, 0o644)
    r = _serve("--data-dir", str(tmp_path / "bus"), "--kafka-listener", "127.0.0.1:0", "--kafka-sasl-users", str(f))
    assert r.returncode == 1 and "chmod 600" in r.stderr


def test_a_port_in_use_fails_the_start(tmp_path):
    from helpers.bus import cleanup_bus
    from helpers.net import busy_port

    s, port = busy_port()
    d = str(tmp_path / "bus")
    try:
        r = _serve("--data-dir", d, "--kafka-listener", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "cannot open the Kafka listener" in r.stderr
    finally:
        s.close()
        cleanup_bus(d)


def test_an_autostarted_supervisor_takes_the_listener_from_the_environment(tmp_path, monkeypatch):
    from kafka import KafkaAdminClient

    from shmbus import Bus

    from helpers.bus import cleanup_bus
    from helpers.kafka import listener_address
    from helpers.net import free_port

    port = free_port()
    monkeypatch.setenv("SHMBUS_KAFKA_LISTENER", f"127.0.0.1:{port}")
    d = str(tmp_path / "bus")
    try:
        with Bus(d) as bus:  # autostarts the supervisor, which inherits the environment
            bus.create_topic("from-env", 2)
            assert listener_address(d) == f"127.0.0.1:{port}"
            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=10000)
            try:
                assert "from-env" in admin.list_topics()
            finally:
                admin.close()
    finally:
        cleanup_bus(d)


def test_status_names_the_listener(kbus):
    import json

    r = subprocess.run([sys.executable, "-m", "shmbus", "status", "--json", "--data-dir", kbus.data_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kafka_listener"]["address"] == kbus.bootstrap


def test_the_docs_list_the_versions_offered():
    import re

    from kafka.protocol.api_key import ApiKey

    from shmbus.kafka.registry import HANDLERS
    from shmbus.kafka import server  # noqa: F401  (registers the handlers)

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "kafka.md")) as f:
        doc = f.read()
    listed = {int(k): (int(lo), int(hi)) for _name, k, lo, hi in re.findall(r"(\w+) \((\d+)\) \| (\d+)–(\d+)", doc)}
    offered = {h.api_key: (h.min_version, h.max_version) for h in HANDLERS.values()}
    assert listed == offered, {ApiKey(k).name: (listed.get(k), offered.get(k)) for k in set(listed) | set(offered)
                               if listed.get(k) != offered.get(k)}
