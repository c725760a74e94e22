"""Fixtures: a fresh data dir per test, and cleanup that runs even when a test fails (helpers: tests/helpers/).

Cleanup stops the supervisor of the test's own data dir (a process the test
started), kills worker processes the test started, and unlinks every
shared-memory object whose name carries the test bus's id.
"""

from __future__ import annotations

import os
import uuid

import pytest

from helpers.bus import cleanup_bus
from helpers.waiting import Procs


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


# --- one bus with a supervisor per test module (tests/test_api_*.py) ---

@pytest.fixture(scope="module")
def sbus(tmp_path_factory):
    """One bus with a supervisor for the module's tests (each makes its own topics)."""
    from shmbus import Bus

    d = str(tmp_path_factory.mktemp("api") / "bus")
    try:
        b = Bus(d)
        try:
            yield b
        finally:
            b.close()
    finally:
        cleanup_bus(d)


@pytest.fixture
def make_topic(sbus):
    """make_topic(partitions=1, config=None) -> a new topic's name on the shared bus; deleted afterwards."""
    from shmbus import UnknownTopicError

    made = []

    def make(partitions=1, config=None):
        name = f"t-{uuid.uuid4().hex[:12]}"
        sbus.create_topic(name, partitions, config)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            try:
                sbus.delete_topic(name)
            except UnknownTopicError:
                pass


@pytest.fixture
def producer(sbus):
    with sbus.producer() as p:
        yield p


# --- a bus whose supervisor serves the Kafka protocol (tests/test_kafka_*.py) ---

class KafkaBus:
    """A bus with a Kafka listener: ``bus`` (a shmbus.Bus), ``bootstrap`` (host:port), ``data_dir``."""

    def __init__(self, bus, bootstrap):
        self.bus = bus
        self.bootstrap = bootstrap
        self.data_dir = bus.data_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on a Kafka bus shows the end of that bus's supervisor log (a crash's stacks are there)."""
    outcome = yield
    rep = outcome.get_result()
    kb = getattr(item, "funcargs", {}).get("kbus")
    if rep.failed and isinstance(kb, KafkaBus):
        try:
            with open(os.path.join(kb.data_dir, "supervisor.log"), errors="replace") as f:
                tail = f.read()[-6000:]
        except OSError as e:
            tail = f"(no log: {e})"
        rep.sections.append(("supervisor.log (end)", tail))


@pytest.fixture(scope="module")
def kbus(tmp_path_factory):
    """One bus with a supervisor serving the Kafka protocol on a free loopback port, for a module's tests."""
    from shmbus import Bus

    from helpers.kafka import start_listener

    d = str(tmp_path_factory.mktemp("kafka") / "bus")
    try:
        bootstrap = start_listener(d)
        b = Bus(d, autostart=False)
        try:
            yield KafkaBus(b, bootstrap)
        finally:
            b.close()
    finally:
        cleanup_bus(d)


@pytest.fixture
def ktopic(kbus):
    """ktopic(partitions=1, config=None) -> a new topic's name on the Kafka bus."""

    def make(partitions=1, config=None):
        name = f"k-{uuid.uuid4().hex[:12]}"
        kbus.bus.create_topic(name, partitions, config)
        return name

    return make
