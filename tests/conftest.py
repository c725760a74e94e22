"""Fixtures: a fresh data dir per test, and cleanup that runs even when a test fails.

Cleanup stops the supervisor of the test's own data dir (a process the test
started), kills worker processes the test started, and unlinks every
shared-memory object whose name carries the test bus's id.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

SPAWN = mp.get_context("spawn")


def bus_shm_names(data_dir: str) -> list[str]:
    from shmbus.core import shm

    return shm.bus_names(data_dir)


def cleanup_bus(data_dir: str) -> None:
    from shmbus.core import shm

    shm.remove_bus(data_dir)


def read_offsets(bus, topic, start, end, timeout_s=60, partition=0):
    """Records of ``topic``/``partition`` from ``start`` until the position reaches ``end`` (or the timeout)."""
    from shmbus import TopicPartition

    tp = TopicPartition(topic, partition)
    out = []
    with bus.consumer(auto_offset_reset="none") as c:
        c.assign([tp])
        c.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100, max_records=5000).values():
                out.extend(recs)
    return out


@pytest.fixture(scope="session", autouse=True)
def warm_kernels():
    """Fill a cold numba cache once, here, before tests start worker processes."""
    from shmbus.kernels import frames

    frames.warm()


def wait_for(cond, timeout_s, what):
    """Poll ``cond()`` every 10 ms until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def data_dir(tmp_path):
    d = str(tmp_path / "bus")
    try:
        yield d
    finally:
        cleanup_bus(d)


@pytest.fixture
def bus(data_dir):
    from shmbus import Bus

    b = Bus(data_dir)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def bus_nosup(data_dir):
    """A bus with no supervisor (nothing spills)."""
    from shmbus import Bus

    b = Bus(data_dir, autostart=False)
    try:
        yield b
    finally:
        b.close()


class Procs:
    """Worker processes (spawn) that are killed and reaped at teardown, whatever happened."""

    def __init__(self):
        self.procs = []

    def start(self, target, *args):
        p = SPAWN.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def join_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in self.procs if p.is_alive()]
        assert not alive, f"worker processes still running after {timeout} s: {[p.pid for p in alive]}"

    def kill_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)


@pytest.fixture(params=["native", "numba"])
def send_impl(request, monkeypatch):
    """Worker processes started in the test send with the compiled verbs or with the numba
    kernels (SHMBUS_NATIVE=0, inherited by spawned children): the data path is tested both ways."""
    from shmbus.core import native

    if request.param == "native":
        if not native.ENABLED and os.environ.get("SHMBUS_NATIVE") != "0":
            pytest.fail(f"the compiled verbs are not loaded: {native.REASON} (build them: pip install .)")
        if os.environ.get("SHMBUS_NATIVE") == "0":
            pytest.skip("SHMBUS_NATIVE=0 in this run")
        monkeypatch.setenv("SHMBUS_NATIVE", "1")
    else:
        monkeypatch.setenv("SHMBUS_NATIVE", "0")
    return request.param


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.kill_all()
