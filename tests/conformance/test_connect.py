"""``shmbus.connect``: which url gives which bus, and what a Kafka-cluster bus says about shared-memory-only things."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import shmbus
from shmbus import InvalidConfigError, UnsupportedOperationError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_paths_and_shm_urls_give_a_shared_memory_bus(data_dir, monkeypatch):
    with shmbus.connect(data_dir, autostart=False) as b:
        assert isinstance(b, shmbus.Bus) and b.data_dir == os.path.abspath(data_dir)
    with shmbus.connect("shm://" + os.path.abspath(data_dir), autostart=False) as b:
        assert b.data_dir == os.path.abspath(data_dir)
    monkeypatch.setenv("SHMBUS_URL", "shm://" + os.path.abspath(data_dir))
    with shmbus.connect(autostart=False) as b:
        assert b.data_dir == os.path.abspath(data_dir)


@pytest.mark.parametrize("url", ["http://x:1", "shm://relative/path", "kafka://", "kafka://host",
                                 "kafka://host:port", "kafka://host:0", "kafka://h:1,,h:2", "kafka://u@h:1"])
def test_bad_urls(url):
    with pytest.raises(InvalidConfigError):
        shmbus.connect(url)


def test_kafka_urls_give_a_cluster_bus(kafka_address, monkeypatch):
    from shmbus.cluster.bus import ClusterBus

    with shmbus.connect(f"kafka://{kafka_address}/") as b:
        assert isinstance(b, ClusterBus) and b.bootstrap_servers == kafka_address
    monkeypatch.setenv("SHMBUS_URL", f"kafka://{kafka_address},{kafka_address}")
    with shmbus.connect() as b:
        assert b.bootstrap_servers == f"{kafka_address},{kafka_address}"
        assert isinstance(b.list_topics(), list)


def test_shared_memory_only_things_are_said_on_a_cluster(cluster_bus):
    for name in ("shared_memory_names", "supervisor_running", "data_dir"):
        with pytest.raises(UnsupportedOperationError, match=name):
            getattr(cluster_bus, name)
    with pytest.warns(UserWarning, match="acks='disk'"):
        cluster_bus.producer(acks="disk").close()
    with pytest.warns(UserWarning, match="spin_us"):
        cluster_bus.consumer(spin_us=10).close()
    with pytest.raises(InvalidConfigError, match="group_id"):
        cluster_bus.consumer(kafka={"group.id": "g"})
    with pytest.raises(InvalidConfigError, match="acks"):
        cluster_bus.producer(kafka={"acks": "all"})
    with pytest.raises(InvalidConfigError):
        cluster_bus.producer(acks="sometimes")


def test_shared_memory_topic_keys_are_warned_of_on_a_cluster(cluster_bus):
    with pytest.warns(UserWarning, match="ring.bytes"):
        try:
            cluster_bus.create_topic("warned-topic", 1, {"ring.bytes": 1 << 20})
        except UnsupportedOperationError:
            pass  # (a cluster without CreateTopics: the warning came first)
        else:
            cluster_bus.delete_topic("warned-topic")


def test_kafka_options_pass_through(cluster_bus):
    with cluster_bus.producer(kafka={"linger.ms": 5, "compression.type": "lz4"}) as p:
        assert p.acks == "all"
    with pytest.raises(InvalidConfigError, match="no.such.property"):
        cluster_bus.producer(kafka={"no.such.property": 1})


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_shmbus_stays_cheap():
    r = _run("import sys, shmbus; shmbus.connect; print(sorted(m for m in ('confluent_kafka', 'numba') "
             "if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_kafka_url_without_the_extra_says_which_to_install():
    r = _run("import sys; sys.modules['confluent_kafka'] = None\nimport shmbus\n"
             "try:\n    shmbus.connect('kafka://localhost:9092')\nexcept ImportError as e:\n    print(e)")
    assert r.returncode == 0, r.stderr
    assert "pip install 'shmbus[kafka]'" in r.stdout


def test_kafka_options_on_shared_memory_are_warned_of_and_ignored(sbus, data_dir):
    with pytest.warns(UserWarning, match="kafka="):
        sbus.producer(kafka={"linger.ms": 5}).close()
    with pytest.warns(UserWarning, match="kafka="):
        sbus.consumer(kafka={"fetch.min.bytes": 1}).close()
    with pytest.warns(UserWarning, match="timeout_ms="):
        shmbus.connect(data_dir, autostart=False, timeout_ms=1000).close()
