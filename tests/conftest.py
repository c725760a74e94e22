"""Fixtures: a fresh data dir per test, and cleanup that runs even when a test fails.

Cleanup stops the supervisor of the test's own data dir (a process the test
started), kills worker processes the test started, and unlinks every
shared-memory object whose name carries the test bus's id.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

SPAWN = mp.get_context("spawn")


def bus_shm_names(data_dir: str) -> list[str]:
    try:
        with open(os.path.join(data_dir, "bus.json")) as f:
            bid = json.load(f)["id"]
    except (FileNotFoundError, ValueError):
        return []
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"shmbus-{bid}-")]


def cleanup_bus(data_dir: str) -> None:
    from shmbus.supervisor import client

    pid = client.running_pid(data_dir)
    if pid:
        try:
            client.stop(data_dir, wait_s=15)
        except Exception:
            if pid > 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while client.running_pid(data_dir) and time.monotonic() < deadline:
                time.sleep(0.01)
    for n in bus_shm_names(data_dir):
        try:
            os.unlink(os.path.join("/dev/shm", n))
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session", autouse=True)
def warm_kernels():
    """Fill a cold numba cache once, here, before tests start worker processes."""
    from shmbus.kernels import frames

    frames.warm()


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


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.kill_all()
