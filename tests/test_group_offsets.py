"""Group offsets in shared memory: the table's kernels, shm commits, fencing, and surviving restarts.

The kernels are tested on a numpy-backed table; everything else against a
real supervisor (or, for the table-full fallback, a coordinator run in this
process), real shared memory and real processes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import numpy as np
import posix_ipc
import pytest
from helpers.waiting import SPAWN, wait_for
from helpers.bus import bus_shm_names

from shmbus import Bus, TopicPartition
from shmbus.core import paths as _paths, native
from shmbus.errors import CommitFailedError
from shmbus.core.offsets_table import GroupTable
from shmbus.kernels import groups as KG
from shmbus.layout import groups as GL
from shmbus.client import control as client
from shmbus.core.paths import checkpoint_path
from shmbus.log.group_offsets import read_checkpoint
from shmbus.supervisor.groups import Coordinator

pytestmark = pytest.mark.timeout(120)
TP = TopicPartition


# --- kernels, on a numpy table ------------------------------------------------------------

def np_table(slots=8):
    raw = np.zeros(GL.table_bytes(slots) + 16, np.uint8)
    start = (-raw.ctypes.data) % 16
    buf = raw[start: start + GL.table_bytes(slots)]
    buf[: GL.HEADER_BYTES].view(np.int64)[GL.OFF_SLOTS // 8] = slots
    slot_words = buf[GL.HEADER_BYTES:].view(np.int64).reshape(slots, 4)
    slot_words[:, 1] = GL.NO_OFFSET
    return raw, buf, slot_words


def test_kernel_commit_needs_the_owner_token():
    _raw, buf, w = np_table()
    addr = buf.ctypes.data
    me, other = GL.token(3, 1), GL.token(4, 2)
    assert KG.set_owner(addr, 2, KG.ANY, me) == -1  # no offset committed yet
    assert KG.commit_offset(addr, 2, me, 10) == KG.OK
    assert (w[2, 0], w[2, 1]) == (me, 10)
    assert KG.read_offset(addr, 2) == 10 and KG.read_token(addr, 2) == me
    # the coordinator hands the partition over: the offset moves with it, the old token is fenced
    assert KG.set_owner(addr, 2, me, other) == 10
    assert KG.commit_offset(addr, 2, me, 99) == KG.ST_FENCED
    assert (w[2, 0], w[2, 1]) == (other, 10)  # nothing written
    assert KG.commit_offset(addr, 2, other, 11) == KG.OK
    assert KG.commit_offset(addr, 2, GL.NO_OWNER, 5) == KG.ST_FENCED
    # no owner: nobody commits
    assert KG.set_owner(addr, 2, other, GL.NO_OWNER) == 11
    assert KG.commit_offset(addr, 2, other, 12) == KG.ST_FENCED
    assert w[2, 1] == 11
    # the other slots are untouched
    assert list(w[[0, 1, 3], 1]) == [-1, -1, -1] and list(w[[0, 1, 3], 0]) == [0, 0, 0]


def test_kernel_set_owner_expected_token_bad_slots_and_snapshot():
    _raw, buf, w = np_table(4)
    addr = buf.ctypes.data
    t1, t2 = GL.token(1, 1), GL.token(2, 7)
    assert KG.set_owner(addr, 0, KG.ANY, t1) == -1
    assert KG.set_owner(addr, 0, t2, t2) == KG.ST_FENCED  # not the expected token: no change
    assert w[0, 0] == t1
    for bad in (-1, 4, 1 << 40):
        assert KG.commit_offset(addr, bad, t1, 1) == KG.ST_BAD_SLOT
        assert KG.set_owner(addr, bad, KG.ANY, t1) == KG.ST_BAD_SLOT
        assert KG.read_offset(addr, bad) == KG.ST_BAD_SLOT
    f = KG.entry("commit_offset")  # the member's compiled entry point: the same answers
    assert f(addr, 0, t1, 1 << 39) == KG.OK and f(addr, 0, t2, 1) == KG.ST_FENCED and f(addr, 9, t1, 1) == KG.ST_BAD_SLOT
    if native.commit_offset is not None:  # and its C twin (shmbus/core/_native.c), which members use when built
        g = native.commit_offset
        assert g(addr, 0, t1, 1 << 40) == KG.OK and g(addr, 0, t2, 1) == KG.ST_FENCED
        for bad in (-1, 4, 9, 1 << 40):
            assert g(addr, bad, t1, 1) == KG.ST_BAD_SLOT
        assert w[0, 0] == t1 and w[0, 1] == 1 << 40
    else:
        assert f(addr, 0, t1, 1 << 40) == KG.OK
    for s in (1, 2, 3):
        KG.set_owner(addr, s, KG.ANY, t2)
        KG.commit_offset(addr, s, t2, 100 + s)
    out = np.full(8, -7, np.int64)
    assert KG.snapshot(addr, 8, out) == 4  # capped at the slot count
    assert list(out[:5]) == [1 << 40, 101, 102, 103, -7]
    assert GL.token_generation(t2) == 2 and t2 & 0xFFFF_FFFF == 7


def test_table_object_name_mode_and_slots(data_dir):
    bid = _paths.bus_id(data_dir)
    name = _paths.group_table_name(bid, "orders-app")
    assert name.startswith(f"/shmbus-{bid}-g-") and len(name.rsplit("-", 1)[1]) == 12
    t = GroupTable.create(name, "orders-app", slots=3)
    try:
        st = os.stat(f"/dev/shm{name}")
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == GL.table_bytes(3)
        with pytest.raises(posix_ipc.ExistentialError):
            GroupTable.create(name, "orders-app")
        assert [t.publish_slot("t", p, 5 * p - 1) for p in range(4)] == [0, 1, 2, -1]  # full
        t2 = GroupTable.open(name)
        assert (t2.incarnation, t2.group_id(), t2.used(), t2.slots) == (t.incarnation, "orders-app", 3, 3)
        assert t2.slot_meta(1) == (GL.topic_key("t"), 1, GL.FLAG_USED)
        assert [t2.offset(s) for s in range(3)] == [-1, 4, 9] and t2.token(0) == 0
        t2.close()
    finally:
        t.unlink()
        t.close()
    with pytest.raises(posix_ipc.ExistentialError):
        GroupTable.open(name)


# --- against a supervisor ------------------------------------------------------------------

def settle(consumers, cond, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(timeout_ms=5)
        if cond():
            return
    raise AssertionError(f"not settled within {timeout_s} s: {[sorted(c.assignment()) for c in consumers]}")


def no_socket_commits(c):
    """Make the member's socket commit path fail loudly: a commit must not use it."""
    m = c._member
    real = m._call

    def call(obj, *a, **kw):
        assert obj.get("op") != "commit", "a commit went over the socket"
        return real(obj, *a, **kw)

    m._call = call


def table_name(bus, group):
    return _paths.group_table_name(bus.id, group)


def committed_elsewhere(data_dir, group, tps, q):
    from shmbus import Bus

    with Bus(data_dir, autostart=False) as b, b.consumer(group_id=group) as c:
        q.put([c.committed(tp) for tp in tps])


def test_shm_commit_is_seen_by_other_processes_and_describe(bus):
    bus.create_topic("t", 3)
    with bus.consumer("t", group_id="g", enable_auto_commit=False) as c:
        settle([c], lambda: len(c.assignment()) == 3)
        assert os.path.exists(f"/dev/shm{table_name(bus, 'g')}")
        no_socket_commits(c)
        c.commit({TP("t", 0): 11, TP("t", 1): 12, TP("t", 2): 13})
        assert [c.committed(TP("t", p)) for p in range(3)] == [11, 12, 13]
        d = bus.describe_group("g")  # at once: the coordinator reads the table before answering
        assert {tp: o.committed for tp, o in d.offsets.items()} == {TP("t", 0): 11, TP("t", 1): 12, TP("t", 2): 13}
        q = SPAWN.Queue()
        p = SPAWN.Process(target=committed_elsewhere, args=(bus.data_dir, "g", [TP("t", p) for p in range(3)], q))
        p.start()
        try:
            assert q.get(timeout=60) == [11, 12, 13]
        finally:
            p.join(30)
        c.commit({TP("t", 1): 20})
        assert bus.describe_group("g").offsets[TP("t", 1)].committed == 20
    # the checkpoint gets them within a tick (or at stop)
    assert client.stop(bus.data_dir)
    with open(checkpoint_path(bus.data_dir, "g")) as f:
        assert json.load(f)["offsets"] == {"t": {"0": 11, "1": 20, "2": 13}}
    assert not os.path.exists(f"/dev/shm{table_name(bus, 'g')}")  # a clean stop removes the table


def racing_member_main(data_dir, ctl, q):
    """Own both partitions, then commit in a tight loop without polling (so the member is removed and
    its partitions move); report successes before the first failure and any success after it."""
    from shmbus import Bus, TopicPartition
    from shmbus.errors import CommitFailedError

    with Bus(data_dir, autostart=False) as bus:
        c = bus.consumer("t", group_id="g", enable_auto_commit=False, max_poll_interval_ms=400)
        while len(c.assignment()) < 2:
            c.poll(timeout_ms=20)
        q.put("owns")
        tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
        ok = fails = ok_after_fail = 0
        i = 0
        while not os.path.exists(ctl):
            i += 1
            try:
                c.commit({tp: 1_000_000 + i for tp in tps})
                ok += 1
                if fails:
                    ok_after_fail += 1
            except CommitFailedError:
                fails += 1
        q.put((ok, fails, ok_after_fail, i))
        c.close(autocommit=False)


@pytest.mark.timeout(180)
def test_a_fenced_member_committing_in_a_loop_never_overwrites_its_successor(bus, procs, tmp_path):
    bus.create_topic("t", 2)
    stop = str(tmp_path / "stop")
    q = SPAWN.Queue()
    procs.start(racing_member_main, bus.data_dir, stop, q)
    assert q.get(timeout=90) == "owns"
    with bus.consumer("t", group_id="g", enable_auto_commit=False) as b:
        # the racer never polls: it is removed after max_poll_interval_ms and b gets both partitions
        settle([b], lambda: len(b.assignment()) == 2, timeout_s=60)
        tps = sorted(b.assignment())
        no_socket_commits(b)
        for k in range(1, 301):  # b commits while the racer keeps trying
            b.commit({tp: k for tp in tps})
            assert [b.committed(tp) for tp in tps] == [k, k]
            if k % 50 == 0:
                assert {bus.describe_group("g").offsets[tp].committed for tp in tps} == {k}
        open(stop, "w").close()
        ok, fails, ok_after_fail, _ = q.get(timeout=60)
        assert ok > 0 and fails > 0, (ok, fails)  # it committed, then was fenced
        assert ok_after_fail == 0
        assert [b.committed(tp) for tp in tps] == [300, 300]
        assert {bus.describe_group("g").offsets[tp].committed for tp in tps} == {300}
    procs.join_all(30)


def checkpoint_offsets(data_dir, group):
    ck = read_checkpoint(checkpoint_path(data_dir, group)) or {}
    return ck.get("offsets") or {}


def test_offsets_committed_while_the_supervisor_dies_are_adopted_from_shm(bus):
    bus.create_topic("t", 2)
    tp0, tp1 = TP("t", 0), TP("t", 1)
    c = bus.consumer("t", group_id="g", enable_auto_commit=False)
    try:
        settle([c], lambda: len(c.assignment()) == 2)
        c.commit({tp0: 5, tp1: 6})
        wait_for(lambda: checkpoint_offsets(bus.data_dir, "g") == {"t": {"0": 5, "1": 6}}, 10, "the checkpoint")
        pid = client.running_pid(bus.data_dir)
        os.kill(pid, signal.SIGSTOP)  # the coordinator cannot checkpoint what comes next...
        try:
            c.commit({tp0: 50, tp1: 60})  # ...shared memory needs no coordinator
            assert c.committed(tp0) == 50
        finally:
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: client.running_pid(bus.data_dir) is None, 10, "the supervisor to die")
        assert checkpoint_offsets(bus.data_dir, "g") == {"t": {"0": 5, "1": 6}}  # on disk: the older offsets
        assert os.path.exists(f"/dev/shm{table_name(bus, 'g')}")
        d = bus.describe_group("g")  # no supervisor: the checkpoint, overlaid with the table left in /dev/shm
        assert d.members == [] and {tp: o.committed for tp, o in d.offsets.items()} == {tp0: 50, tp1: 60}
        client.start(bus.data_dir)
        d = bus.describe_group("g")
        assert {tp: o.committed for tp, o in d.offsets.items()} == {tp0: 50, tp1: 60}  # adopted from the table
        # the member of the killed coordinator is fenced until it has rejoined
        with pytest.raises(CommitFailedError, match="commit refused"):
            c.commit({tp0: 1})
        assert bus.describe_group("g").offsets[tp0].committed == 50
        settle([c], lambda: len(c.assignment()) == 2 and bus.describe_group("g").state == "Stable")
        assert c.committed(tp0) == 50
        no_socket_commits(c)
        c.commit({tp0: 51})
        assert bus.describe_group("g").offsets[tp0].committed == 51
        wait_for(lambda: checkpoint_offsets(bus.data_dir, "g") == {"t": {"0": 51, "1": 60}}, 10, "the checkpoint")
    finally:
        c.close()


def test_offsets_survive_a_stop_and_a_wiped_dev_shm(data_dir):
    with Bus(data_dir) as bus:
        bus.create_topic("t", 2)
        with bus.producer(acks="disk") as p:  # on disk: the wipe below must not take them
            for i in range(20):
                p.send("t", b"%d" % i, partition=i % 2)
        with bus.consumer("t", group_id="g", enable_auto_commit=False) as c:
            settle([c], lambda: len(c.assignment()) == 2)
            no_socket_commits(c)
            c.commit({TP("t", 0): 7, TP("t", 1): 8})
        assert client.stop(data_dir)
    # a reboot: every object of the bus is gone, the data dir stays
    for n in bus_shm_names(data_dir):
        os.unlink(os.path.join("/dev/shm", n))
    with Bus(data_dir) as bus:
        d = bus.describe_group("g")
        assert {tp: o.committed for tp, o in d.offsets.items()} == {TP("t", 0): 7, TP("t", 1): 8}
        with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 5 and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=20).values():
                    got.extend(recs)
            assert sorted((r.partition, r.offset) for r in got) == [(0, 7), (0, 8), (0, 9), (1, 8), (1, 9)]
            assert c.committed(TP("t", 1)) == 8


def test_a_full_table_falls_back_to_socket_commits(data_dir, monkeypatch):
    """A coordinator in this process with a 2-slot table: partitions past it commit over the socket."""
    monkeypatch.setattr(GL, "SLOTS", 2)
    with Bus(data_dir, autostart=False) as bus:
        bus.create_topic("t", 4)
        coord = Coordinator(bus.data_dir, log=lambda msg: None)
        coord.start()
        try:
            with bus.consumer("t", group_id="g", enable_auto_commit=False) as c:
                settle([c], lambda: len(c.assignment()) == 4)
                assert len(c._member._slots) == 2
                c.commit({TP("t", p): 10 + p for p in range(4)})
                assert [c.committed(TP("t", p)) for p in range(4)] == [10, 11, 12, 13]
                assert {tp.partition: o.committed for tp, o in bus.describe_group("g").offsets.items()} == \
                    {0: 10, 1: 11, 2: 12, 3: 13}
                # the socket path refuses what it must: the member is not the owner of a partition it never had
                with pytest.raises(CommitFailedError, match="not owned"):
                    c.commit({TP("t", 9): 1})
        finally:
            coord.close()
        assert checkpoint_offsets(data_dir, "g") == {"t": {"0": 10, "1": 11, "2": 12, "3": 13}}
        assert not os.path.exists(f"/dev/shm{table_name(bus, 'g')}")
