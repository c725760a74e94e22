"""Operations commands on real buses: ``shmbus doctor`` and ``shmbus stats``, run as a person types them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.waiting import SPAWN
from helpers.bus import cleanup_bus

from shmbus.core import shm

pytestmark = pytest.mark.timeout(180)


def sh(data_dir, *args, stdin=None, timeout=90):
    env = dict(os.environ, SHMBUS_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, "-m", "shmbus", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _produce_then_wait(data_dir, n, ready):
    """A bus user that writes ``n`` records (acks=memory) and then waits to be killed."""
    from shmbus import Bus

    bus = Bus(data_dir)
    bus.create_topic("t", partitions=2, config={"ring.bytes": 1 << 20})
    p = bus.producer()
    for i in range(n):
        p.send("t", b"v%d" % i, key=b"k%d" % (i % 7))
    ready.set()
    time.sleep(600)


def test_doctor_cleans_a_killed_bus_and_spares_a_live_one(tmp_path, procs):
    dead_dir, live_dir = str(tmp_path / "dead"), str(tmp_path / "live")
    try:
        # the dead bus: a producer process and its supervisor, both SIGKILLed
        ready = SPAWN.Event()
        worker = procs.start(_produce_then_wait, dead_dir, 5000, ready)
        assert ready.wait(120), "producer did not start"
        from shmbus.client import control as client

        sup = client.running_pid(dead_dir)
        assert sup and sup > 0
        os.kill(sup, signal.SIGKILL)  # the supervisor this test's worker autostarted
        worker.kill()
        worker.join(10)
        deadline = time.monotonic() + 10
        while client.running_pid(dead_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        dead_names = shm.bus_names(dead_dir)
        assert len(dead_names) == 3  # ctl + 2 rings

        # the live bus: a supervisor and a topic, mapped by that supervisor
        assert sh(live_dir, "topics", "create", "x").returncode == 0
        assert sh(live_dir, "serve").returncode == 0
        live_names = shm.bus_names(live_dir)
        assert len(live_names) == 2

        r = sh(dead_dir, "doctor", "--json")  # a report; removes nothing without --yes
        assert r.returncode == 0, r.stderr
        rep = {b["bus_id"]: b for b in json.loads(r.stdout)["buses"]}
        dead_id = dead_names[0].split("-")[1]
        live_id = live_names[0].split("-")[1]
        assert rep[dead_id]["action"] == "spill+remove"
        assert rep[live_id]["action"] == "keep"
        assert shm.bus_names(dead_dir) == dead_names

        r = sh(dead_dir, "doctor")  # no --yes and nothing on stdin: one line, exit 1, nothing removed
        assert r.returncode == 1 and "Traceback" not in r.stderr and "nothing removed" in r.stderr
        assert shm.bus_names(dead_dir) == dead_names

        r = sh(dead_dir, "doctor", "--yes")
        assert r.returncode == 0, r.stderr
        assert shm.bus_names(dead_dir) == []
        assert shm.bus_names(live_dir) == live_names  # untouched
        assert sh(live_dir, "status").returncode == 0

        # the killed bus's records were spilled before its rings went: all 5000 read back from disk
        r = sh(dead_dir, "consume", "t", "--from-beginning", "--max-messages", "5000", "--timeout-ms", "20000")
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == sorted("v%d" % i for i in range(5000))
    finally:
        cleanup_bus(dead_dir)
        cleanup_bus(live_dir)


def test_doctor_explains_a_small_dev_shm(data_dir):
    from shmbus.cli import doctor as D

    r = sh(data_dir, "doctor", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["shm"][0].startswith("/dev/shm: size=")
    size, _free = shm.shm_space()
    # the advice warns exactly when /dev/shm is Docker-small
    assert any("--shm-size" in line for line in D.shm_advice(data_dir)) == (size <= D.DOCKER_DEFAULT)


def _produce_for(data_dir, seconds):
    from shmbus import Bus

    with Bus(data_dir) as bus, bus.producer() as p:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            p.send("s", b"x" * 100, key=b"k%d" % (i % 5))
            i += 1
            if i % 100 == 0:
                time.sleep(0.001)


def test_stats_once_json_rates_fill_disk_and_group_lag(data_dir, bus, procs):
    bus.create_topic("s", partitions=2)
    with bus.producer() as p:
        for i in range(1000):
            p.send("s", b"y" * 100, partition=i % 2)
    with bus.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
        c.subscribe(["s"])
        got = 0
        deadline = time.monotonic() + 30
        while got < 300 and time.monotonic() < deadline:
            got += sum(len(v) for v in c.poll(timeout_ms=200, max_records=300 - got).values())
        c.commit()
    procs.start(_produce_for, data_dir, 6.0)
    time.sleep(1.0)
    r = sh(data_dir, "stats", "--once", "--json", "--interval", "1")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    parts = {(x["topic"], x["partition"]): x for x in snap["partitions"]}
    assert set(parts) == {("s", 0), ("s", 1)}
    assert sum(x["produce_rate"] for x in parts.values()) > 0
    assert all(x["end_offset"] >= 500 and 0 <= x["ring_used"] <= x["ring_bytes"] for x in parts.values())
    assert snap["supervisor"]["pid"] > 0 and snap["supervisor"]["rss_bytes"] > 0
    assert all(x["spill_lag_bytes"] is not None for x in parts.values())
    (g,) = snap["groups"]
    assert g["group"] == "g" and g["committed_total"] == 300
    assert g["lag"] == sum(x["end_offset"] for x in parts.values()) - 300 or g["lag"] > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # spilled to disk within the spiller's rounds
        snap = json.loads(sh(data_dir, "stats", "--once", "--json", "--interval", "0.2").stdout)
        if all(x["disk_bytes"] > 0 for x in snap["partitions"]):
            break
    assert all(x["disk_bytes"] > 0 for x in snap["partitions"])
    r = sh(data_dir, "stats", "--once", "--interval", "0.2")  # the table for people
    assert r.returncode == 0 and "produce/s" in r.stdout and "supervisor pid=" in r.stdout and "\ng " in r.stdout


def test_stats_says_when_no_supervisor_runs_and_rejects_a_bad_interval(data_dir, bus_nosup):
    bus_nosup.create_topic("s")
    r = sh(data_dir, "stats", "--once", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    assert "NOT RUNNING" in r.stdout and "s " in r.stdout
    r = sh(data_dir, "stats", "--interval", "0")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_bench_command_percentiles_throughput_and_svg(data_dir, tmp_path):
    pic = str(tmp_path / "lat.svg")
    r = sh(data_dir, "bench", "--records", "400", "--throughput-records", "4000", "--json", "--histogram", pic,
           timeout=170)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    lat = res["latency_us"]
    assert res["records"] == 400
    assert list(lat) == ["p50", "p90", "p99", "p99.9", "p99.99", "max"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["p99.99"] <= lat["max"] < 60e6
    for key in ("send_poll", "send_batch_poll_batch"):
        assert res[key]["records"] == 4000 and res[key]["records_per_s"] > 0
    with open(pic) as f:
        svg = f.read()
    assert svg.startswith("<svg") and "<polyline" in svg and svg.rstrip().endswith("</svg>")
    r = sh(data_dir, "bench", "--records", "10", "--histogram", str(tmp_path / "x.gif"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and ".svg or .png" in r.stderr
