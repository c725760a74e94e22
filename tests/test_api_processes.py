"""The public API across buses and processes: shared-memory names and modes, topics seen from another process.

Most tests share one bus (and its supervisor) per module (the ``sbus``
fixture, tests/conftest.py), each on topics of its own (``make_topic``),
because starting a supervisor costs ~2 s; tests that stop the supervisor,
count the bus's shared-memory objects or need a second bus take the per-test
``bus`` fixture instead.
"""

from __future__ import annotations

import os
import stat

import pytest

from helpers.api import read_all, read_n
from helpers.bus import cleanup_bus

from shmbus import Bus


# --- shared memory ---------------------------------------------------------------------

def test_shared_memory_names_and_modes(bus):
    bus.create_topic("a", 3)
    bus.create_topic("b", 1, {"ring.bytes": 4096})
    names = bus.shared_memory_names()
    assert len(names) == 1 + 4  # the control block and one ring per partition
    mine = [n for n in os.listdir("/dev/shm") if bus.id in n]
    assert sorted("/" + n for n in mine) == names
    for n in mine:
        assert n.startswith("shmbus"), n
        st = os.stat(os.path.join("/dev/shm", n))
        assert stat.S_IMODE(st.st_mode) == 0o600, (n, oct(st.st_mode))
        assert st.st_uid == os.getuid()


def test_two_buses_have_disjoint_shared_memory(bus, tmp_path):
    d2 = str(tmp_path / "other")
    try:
        with Bus(d2, autostart=False) as bus2:
            assert bus2.id != bus.id
            for b in (bus, bus2):
                b.create_topic("same-name", 2)
            n1, n2 = set(bus.shared_memory_names()), set(bus2.shared_memory_names())
            assert len(n1) == len(n2) == 3 and not n1 & n2
            with bus.producer() as p1, bus2.producer() as p2:
                p1.send("same-name", b"one", partition=0)
                p2.send("same-name", b"two", partition=0)
                p2.send("same-name", b"three", partition=0)
            assert [r.value for r in read_all(bus, "same-name", 1)] == [b"one"]
            assert [r.value for r in read_all(bus2, "same-name", 2)] == [b"two", b"three"]
    finally:
        cleanup_bus(d2)


# --- across processes ----------------------------------------------------------------

def child_create_and_send(data_dir, topic, q):
    try:
        with Bus(data_dir, autostart=False) as bus:
            bus.create_topic(topic, 2)
            with bus.producer() as p:
                md = p.send(topic, b"from the child", key=b"k", headers=[("pid", str(os.getpid()).encode())])
        q.put(("ok", md.partition, md.offset))
    except BaseException as e:  # report it to the test
        q.put(("error", repr(e), None))


def child_read(data_dir, topic, n, q):
    try:
        with Bus(data_dir, autostart=False) as bus:
            topics = bus.list_topics()
            with bus.consumer(topic, auto_offset_reset="earliest") as c:
                recs = read_n(c, n)
        q.put(("ok", topics, [(r.partition, r.offset, r.key, r.value) for r in recs]))
    except BaseException as e:
        q.put(("error", repr(e), None))


@pytest.mark.timeout(60)
def test_topic_created_in_one_process_is_visible_in_another(bus, procs):
    from helpers.waiting import SPAWN

    q = SPAWN.Queue()
    procs.start(child_create_and_send, bus.data_dir, "made-by-child", q)
    status, part, off = q.get(timeout=50)
    assert status == "ok", part
    procs.join_all(30)
    assert "made-by-child" in bus.list_topics()
    assert len(bus.describe_topic("made-by-child").partitions) == 2
    (r,) = read_all(bus, "made-by-child", 1)
    assert (r.partition, r.offset, r.key, r.value) == (part, off, b"k", b"from the child")
    # and the other way round
    bus.create_topic("made-by-parent", 3)
    sent = set()
    with bus.producer() as p:
        for i in range(9):
            md = p.send("made-by-parent", b"v%d" % i, key=b"k%d" % i)
            sent.add((md.partition, md.offset, b"k%d" % i, b"v%d" % i))
    procs.start(child_read, bus.data_dir, "made-by-parent", 9, q)
    status, topics, recs = q.get(timeout=50)
    assert status == "ok", topics
    assert {"made-by-child", "made-by-parent"} <= set(topics)
    assert set(map(tuple, recs)) == sent
