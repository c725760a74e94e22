"""`shmbus stop` removes the bus's rings from /dev/shm once they are spilled and nobody maps them;
`--keep-rings` leaves them; a process that still has the bus open keeps them."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from shmbus import Bus, TopicPartition
from shmbus.core import shm

from helpers.bus import read_offsets

from helpers.waiting import wait_for


def _stop(d, *extra):
    r = subprocess.run([sys.executable, "-m", "shmbus", "stop", "--data-dir", d, *extra], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _fill(d, n=1000):
    with Bus(d) as bus:
        bus.create_topic("t", partitions=2)
        with bus.producer() as p:
            for i in range(n):
                p.send("t", b"%d" % i, partition=i % 2)
    gc.collect()  # (no mapping of ours left behind)


def _log(d):
    with open(os.path.join(d, "supervisor.log")) as f:
        return f.read()


@pytest.mark.timeout(120)
def test_stop_removes_the_rings_and_a_restart_reads_everything(data_dir):
    _fill(data_dir)
    assert len(shm.bus_names(data_dir)) >= 3  # the control block and two rings
    _stop(data_dir)
    assert shm.bus_names(data_dir) == [], "objects of the bus left in /dev/shm"
    assert "removed" in _log(data_dir)
    with Bus(data_dir) as bus:
        for q in (0, 1):
            got = read_offsets(bus, "t", 0, 500, partition=q, timeout_s=30)
            assert [r.value for r in got] == [b"%d" % i for i in range(q, 1000, 2)]
        with bus.producer() as p:
            assert p.send("t", b"next", partition=0).offset == 500  # the ring made anew at the log end
        assert [r.value for r in read_offsets(bus, "t", 499, 501, timeout_s=30)] == [b"998", b"next"]


@pytest.mark.timeout(120)
def test_stop_keep_rings_leaves_them(data_dir):
    _fill(data_dir)
    before = shm.bus_names(data_dir)
    _stop(data_dir, "--keep-rings")
    assert shm.bus_names(data_dir) == before
    with Bus(data_dir) as bus:
        assert len(read_offsets(bus, "t", 0, 500, timeout_s=30)) == 500


def _hold_bus(d, ready):
    from shmbus import Bus as B

    bus = B(d, autostart=False)
    c = bus.consumer(auto_offset_reset="earliest")
    c.assign([TopicPartition("t", 0)])
    n = 0
    while True:
        for recs in c.poll(timeout_ms=100).values():
            n += len(recs)
        if n >= 500:
            open(ready, "w").close()


@pytest.mark.timeout(120)
def test_stop_leaves_the_rings_of_a_bus_another_process_has_open(data_dir, procs, tmp_path):
    _fill(data_dir)
    ready = str(tmp_path / "ready")
    procs.start(_hold_bus, data_dir, ready)
    wait_for(lambda: os.path.exists(ready), 60, "the consumer process to read")
    before = shm.bus_names(data_dir)
    _stop(data_dir)
    assert shm.bus_names(data_dir) == before
    assert "rings kept in /dev/shm: mapped by pids=" in _log(data_dir)
    procs.kill_all()
    with Bus(data_dir) as bus:  # and the bus goes on from them
        with bus.producer() as p:
            assert p.send("t", b"next", partition=0).offset == 500
