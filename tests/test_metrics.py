"""``shmbus serve --metrics HOST:PORT``: Prometheus text at /metrics, read by prometheus_client's own parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers.bus import cleanup_bus
from helpers.net import busy_port, free_port
from helpers.waiting import wait_for


def _serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "shmbus", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _address(data_dir):
    from shmbus.client import control

    return control.request(data_dir, {"cmd": "status"})["metrics"]["address"]


def scrape(address) -> dict:
    """{(name, ((label, value), ...)): value} of every sample /metrics gives."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _v(samples, name, **labels):
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


@pytest.fixture
def metrics_bus(tmp_path):
    """(data dir, metrics address) of a supervisor started with --metrics 127.0.0.1:0 (a free port)."""
    d = str(tmp_path / "bus")
    try:
        r = _serve("--data-dir", d, "--metrics", "127.0.0.1:0")
        assert r.returncode == 0, r.stderr
        assert "metrics=127.0.0.1:0" in r.stdout
        yield d, _address(d)
    finally:
        cleanup_bus(d)


@pytest.mark.timeout(120)
def test_partitions_groups_and_the_supervisor_as_a_scrape_sees_them(metrics_bus):
    from shmbus import Bus, TopicPartition

    d, address = metrics_bus
    with Bus(d) as bus:
        bus.create_topic("orders", 2, {"ring.bytes": 65536})
        with bus.producer() as p:
            for i in range(300):
                p.send("orders", b"x" * 100, partition=i % 3 % 2)  # 200 to partition 0, 100 to partition 1
        with bus.consumer("orders", group_id="billing", auto_offset_reset="earliest",
                          enable_auto_commit=False) as c:
            c.poll(timeout_ms=2000)
            c.commit({TopicPartition("orders", 0): 150, TopicPartition("orders", 1): 100})
        # (a new topic's partitions join at the supervisor's next scan of the topics)
        wait_for(lambda: _v(scrape(address), "shmbus_partition_end_offset", topic="orders", partition=1) == 100,
                 30, "the topic in the metrics")
        s = scrape(address)
        assert _v(s, "shmbus_partition_end_offset", topic="orders", partition=0) == 200
        assert _v(s, "shmbus_partition_end_offset", topic="orders", partition=1) == 100
        assert _v(s, "shmbus_partition_records_total", topic="orders", partition=0) == 200
        assert _v(s, "shmbus_partition_ring_bytes", topic="orders", partition=1) == 65536
        assert _v(s, "shmbus_group_committed_offset", group="billing", topic="orders", partition=0) == 150
        assert _v(s, "shmbus_group_lag", group="billing", topic="orders", partition=0) == 50
        assert _v(s, "shmbus_group_lag", group="billing", topic="orders", partition=1) == 0
        assert _v(s, "shmbus_group_info", group="billing", kind="shmbus", state="Empty") == 1
        assert _v(s, "shmbus_supervisor_spill_rounds_total") > 0
        assert _v(s, "shmbus_supervisor_open_fds") > 0
        # the spiller catches up: nothing left to spill, every byte counted as spilled
        wait_for(lambda: _v(scrape(address), "shmbus_partition_spill_lag_bytes", topic="orders", partition=0) == 0,
                 30, "the spill lag to reach 0")
        s = scrape(address)
        assert _v(s, "shmbus_partition_spilled_bytes_total", topic="orders", partition=0) > 200 * 100
        assert _v(s, "shmbus_partition_ring_used_bytes", topic="orders", partition=0) <= 65536
        # a deleted topic is gone from the next scrape
        bus.delete_topic("orders")
        wait_for(lambda: _v(scrape(address), "shmbus_partition_end_offset", topic="orders", partition=0) is None,
                 30, "the deleted topic to leave the metrics")


@pytest.mark.timeout(120)
def test_hostile_bytes_do_not_stop_the_endpoint(metrics_bus):
    d, address = metrics_bus
    host, port = address.rsplit(":", 1)
    for junk in (b"\x00\xff" * 5000, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"POST /metrics HTTP/1.1\r\n"
                 b"Content-Length: 99999999\r\n\r\nxx", b"GARBAGE\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass  # (the server may close first)
    s = scrape(address)
    assert _v(s, "shmbus_supervisor_uptime_seconds") > 0
    from shmbus.client import control

    assert control.request(d, {"cmd": "status"})["metrics"]["address"] == address


def test_a_remote_address_needs_allow_remote(tmp_path):
    r = _serve("--data-dir", str(tmp_path / "bus"), "--metrics", "0.0.0.0:9464")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "not a loopback address" in r.stderr and "--metrics-allow-remote" in r.stderr
    assert not os.path.exists(tmp_path / "bus" / "supervisor.lock")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:70000", "host:port"])
def test_a_bad_address_is_one_line(tmp_path, address):
    r = _serve("--data-dir", str(tmp_path / "bus"), "--metrics", address)
    assert r.returncode == 1 and "HOST:PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_allow_remote_alone_is_a_user_error(tmp_path):
    r = _serve("--data-dir", str(tmp_path / "bus"), "--metrics-allow-remote")
    assert r.returncode == 1 and "--metrics HOST:PORT" in r.stderr


def test_a_port_in_use_fails_the_start(tmp_path):
    s, port = busy_port()
    d = str(tmp_path / "bus")
    try:
        r = _serve("--data-dir", d, "--metrics", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "cannot open the metrics endpoint" in r.stderr, r.stderr
    finally:
        s.close()
        cleanup_bus(d)


@pytest.mark.timeout(120)
def test_an_autostarted_supervisor_takes_the_address_from_the_environment(tmp_path, monkeypatch):
    from shmbus import Bus

    port = free_port()
    monkeypatch.setenv("SHMBUS_METRICS", f"127.0.0.1:{port}")
    d = str(tmp_path / "bus")
    try:
        with Bus(d) as bus:  # autostarts the supervisor, which inherits the environment
            bus.create_topic("env", 1)
            assert _address(d) == f"127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while _v(scrape(f"127.0.0.1:{port}"), "shmbus_partition_end_offset", topic="env", partition=0) is None:
                assert time.monotonic() < deadline, "the new topic never appeared in the metrics"
                time.sleep(0.2)
    finally:
        cleanup_bus(d)


@pytest.mark.timeout(120)
def test_the_kafka_listener_traffic(tmp_path):
    import confluent_kafka

    from helpers.kafka import listener_address

    d = str(tmp_path / "bus")
    try:
        r = _serve("--data-dir", d, "--metrics", "127.0.0.1:0", "--kafka-listener", "127.0.0.1:0")
        assert r.returncode == 0, r.stderr
        boot, address = listener_address(d), _address(d)
        p = confluent_kafka.Producer({"bootstrap.servers": boot, "log_level": 0})
        for i in range(10):
            p.produce("via-kafka", b"v%d" % i, partition=0)
        assert p.flush(30) == 0
        s = scrape(address)
        assert _v(s, "shmbus_kafka_produced_records_total") == 10
        assert _v(s, "shmbus_kafka_requests_total") > 0 and _v(s, "shmbus_kafka_connections_accepted_total") > 0
        assert _v(s, "shmbus_kafka_connections") >= 1  # (the producer's, still open)
        del p
    finally:
        cleanup_bus(d)
