"""A soak with random SIGKILLs: producers, group members and the supervisor die and come back.

Three producer processes send keyed records with headers as fast as they can
into a 4-partition topic with small rings and segments (records move from
ring to disk all the time), logging every ``send`` that returned. Two members
of one consumer group (auto-commit every 200 ms) log every record they
receive. Every 0.5-2 s one process of the three kinds is SIGKILLed and
replaced (the supervisor is started again). Then:

- the log holds every acknowledged record exactly once, intact, at the
  offset ``send`` returned;
- the group received every acknowledged record at least once.

``SHMBUS_SOAK_S`` sets the duration of the killing phase (default 20 s),
``SHMBUS_SOAK_KILL`` the kinds of process killed (default
``producer,member,supervisor``), ``SHMBUS_SOAK_GAP_S`` the range of the
pauses between kills (default ``0.5,2.0``), ``SHMBUS_SOAK_SEED`` the seed.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from helpers.waiting import SPAWN, wait_for

TOPIC = "soak"
PARTS = 4
CONFIG = {"ring.bytes": 65536, "segment.bytes": 131072}


def producer_main(data_dir, log_path, stop_path, seed):
    """Send until told to stop; one line per acknowledged record: ``partition offset key``."""
    from shmbus import Bus
    from shmbus.errors import BufferFullError, SupervisorNotRunningError

    rnd = random.Random(seed)
    me = f"{os.getpid()}"
    f = open(log_path, "a", buffering=1 << 16)  # noqa: SIM115 (flushed below, per batch of sends)
    with Bus(data_dir, autostart=False) as bus, bus.producer(max_block_ms=1000) as p:
        seq = 0
        while not os.path.exists(stop_path):
            lines = []
            for _ in range(50):
                key = f"{me}-{seq}".encode()
                value = key * rnd.randrange(1, 8)
                try:
                    md = p.send(TOPIC, value, key=key, headers=[("k", key), ("n", b"%d" % len(value))])
                except (BufferFullError, SupervisorNotRunningError):
                    break  # the supervisor is down and the ring full: try again shortly
                lines.append(f"{md.partition} {md.offset} {key.decode()}\n")
                seq += 1
            f.write("".join(lines))
            f.flush()  # what is logged was acknowledged; a kill loses at most unlogged acks
    f.close()


def member_main(data_dir, log_path, stop_path):
    """Poll until told to stop; one line per poll and partition: ``P partition offset:key ...``."""
    from shmbus import Bus

    from shmbus.errors import SupervisorNotRunningError

    f = open(log_path, "a", buffering=1)  # noqa: SIM115
    with Bus(data_dir, autostart=False) as bus:
        while True:
            try:  # (a member cannot join while the supervisor is down: wait for the next one)
                c = bus.consumer(group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=200,
                                 enable_auto_commit=True)
            except SupervisorNotRunningError:
                time.sleep(0.1)
                continue
            try:
                c.subscribe([TOPIC])
                break
            except SupervisorNotRunningError:
                c.close()
                time.sleep(0.1)
        while not os.path.exists(stop_path):
            got = c.poll(timeout_ms=100)
            for tp, recs in got.items():
                for r in recs:
                    if r.headers != [("k", r.key), ("n", b"%d" % len(r.value))] or r.value[: len(r.key)] != r.key:
                        f.write(f"BAD {tp.partition} {r.offset} {r.key!r}\n")
                f.write(f"P {tp.partition} " + " ".join(f"{r.offset}:{r.key.decode()}" for r in recs) + "\n")
        c.close()


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def acknowledged(paths):
    out = {}
    for path in paths:
        for line in _lines(path):
            parts = line.split()
            if len(parts) == 3:  # (a killed producer's last line may be cut short)
                out[(int(parts[0]), int(parts[1]))] = parts[2]
    return out


def delivered(paths):
    got = {}
    bad = []
    for path in paths:
        for line in _lines(path):
            if line.startswith("BAD"):
                bad.append(line)
            elif line.startswith("P "):
                parts = line.split()
                p = int(parts[1])
                for item in parts[2:]:
                    off, _, key = item.partition(":")
                    if off.isdigit() and key:
                        got[(p, int(off))] = key
    return got, bad


def replace_one(workers, start, rnd, what=None) -> None:
    """SIGKILL one of ``workers`` (processes this test started), at random, and start another;
    with ``what``, that worker must still be running (not exited by itself)."""
    i = rnd.randrange(len(workers))
    if what is not None:
        assert workers[i].is_alive(), f"{what} exited by itself: exit code {workers[i].exitcode}"
    workers[i].kill()
    workers[i].join(10)
    workers[i] = start()


def kill_and_restart_supervisor(data_dir, pause_s: float) -> None:
    """SIGKILL the supervisor of ``data_dir`` (the one the test's Bus started), wait ``pause_s``,
    and start a new one."""
    from shmbus.client import control

    pid = control.running_pid(data_dir)
    if pid:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: control.running_pid(data_dir) is None, 10, "the supervisor to die")
    time.sleep(pause_s)
    control.start(data_dir)


def missing_runs(missing):
    runs = []
    for p, off in sorted(missing):
        if runs and runs[-1][0] == p and runs[-1][2] == off - 1:
            runs[-1][2] = off
        else:
            runs.append([p, off, off])
    return [tuple(r) for r in runs]


@pytest.mark.timeout(600)
def test_every_acknowledged_record_reaches_the_group_through_random_sigkills(data_dir, tmp_path):
    from shmbus import Bus, TopicPartition
    from shmbus.client import control as client

    duration = float(os.environ.get("SHMBUS_SOAK_S", "20"))
    kinds = os.environ.get("SHMBUS_SOAK_KILL", "producer,member,supervisor").split(",")
    gap_s = tuple(float(x) for x in os.environ.get("SHMBUS_SOAK_GAP_S", "0.5,2.0").split(","))
    rnd = random.Random(int(os.environ.get("SHMBUS_SOAK_SEED", str(int(time.time())))))
    stop_p, stop_m = str(tmp_path / "stop-producers"), str(tmp_path / "stop-members")
    procs = []  # every process this test started (killed and reaped at the end, whatever happened)
    plogs, mlogs = [], []
    kills = {"producer": 0, "member": 0, "supervisor": 0}

    def start_producer():
        path = str(tmp_path / f"producer-{len(plogs)}.log")
        plogs.append(path)
        p = SPAWN.Process(target=producer_main, args=(data_dir, path, stop_p, rnd.random()), daemon=True)
        p.start()
        procs.append(p)
        return p

    def start_member():
        path = str(tmp_path / f"member-{len(mlogs)}.log")
        mlogs.append(path)
        p = SPAWN.Process(target=member_main, args=(data_dir, path, stop_m), daemon=True)
        p.start()
        procs.append(p)
        return p

    bus = Bus(data_dir)
    try:
        bus.create_topic(TOPIC, PARTS, config=CONFIG)
        producers = [start_producer() for _ in range(3)]
        members = [start_member() for _ in range(2)]
        wait_for(lambda: sum(len(_lines(x)) for x in plogs) > 1000, 60, "the producers to start")
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(rnd.uniform(*gap_s))
            kind = rnd.choice(kinds)
            kills[kind] += 1
            if kind == "producer":
                replace_one(producers, start_producer, rnd)
            elif kind == "member":
                replace_one(members, start_member, rnd, what="a member")
            else:
                kill_and_restart_supervisor(data_dir, rnd.uniform(0.0, 0.5))
        open(stop_p, "w").close()
        for p in producers:
            p.join(30)
            assert p.exitcode == 0, f"a producer exited with {p.exitcode}"
        acked = acknowledged(plogs)
        assert len(acked) > 1000, f"only {len(acked)} records acknowledged"

        # the log: every acknowledged record once, intact, at its offset
        ends = {}
        with bus.consumer(auto_offset_reset="earliest") as c:
            tps = [TopicPartition(TOPIC, p) for p in range(PARTS)]
            c.assign(tps)
            ends = c.end_offsets(tps)
            in_log = {}
            keys_seen = {}
            deadline = time.monotonic() + 120
            while any(c.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
                for tp, recs in c.poll(timeout_ms=200, max_records=5000).items():
                    for r in recs:
                        in_log[(tp.partition, r.offset)] = r.key.decode()
                        assert r.headers == [("k", r.key), ("n", b"%d" % len(r.value))], r
                        keys_seen[r.key] = keys_seen.get(r.key, 0) + 1
        twice = [k for k, n in keys_seen.items() if n > 1]
        assert not twice, f"records in the log more than once: {twice[:10]}"
        wrong = [(po, k, in_log.get(po)) for po, k in acked.items() if in_log.get(po) != k]
        assert not wrong, f"{len(wrong)} acknowledged records not in the log at their offset: {wrong[:10]}"

        # the group: every acknowledged record delivered at least once
        def caught_up():
            got, _ = delivered(mlogs)
            return all(po in got for po in acked)

        try:
            wait_for(caught_up, 120, "the group to receive every acknowledged record")
        except AssertionError:
            pass  # reported below with the missing runs
        open(stop_m, "w").close()
        for p in members:
            p.join(30)
        got, bad = delivered(mlogs)
        assert not bad, f"records delivered with wrong headers or values: {bad[:5]}"
        missing = [po for po in acked if po not in got]
        assert not missing, (f"{len(missing)} acknowledged records never reached the group (runs: "
                             f"{missing_runs(missing)[:20]}); kills: {kills}")
        print(f"\nsoak: {len(acked)} acknowledged records, {len(got)} delivered, kills {kills}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        pid = client.running_pid(data_dir)
        if pid:
            os.kill(pid, signal.SIGKILL)
        bus.close()


def seeking_reader_main(data_dir, partition, log_path, stop_path, seed):
    """Read one partition, seeking back now and then (so the reader moves from the ring to the disk
    and back again and again); one line per offset gap it sees: ``G expected got``."""
    from shmbus import Bus, TopicPartition

    rnd = random.Random(seed)
    tp = TopicPartition(TOPIC, partition)
    f = open(log_path, "a", buffering=1)  # noqa: SIM115
    with Bus(data_dir, autostart=False) as bus, bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(tp, 0)
        expect = 0
        next_seek = time.monotonic() + rnd.uniform(0.2, 1.0)
        while not os.path.exists(stop_path):
            for r in c.poll(timeout_ms=50, max_records=rnd.choice([50, 300, 500])).get(tp, []):
                if r.offset != expect:
                    f.write(f"G {expect} {r.offset}\n")
                expect = r.offset + 1
            if time.monotonic() >= next_seek:
                expect = max(0, expect - rnd.randrange(0, 3000))
                c.seek(tp, expect)
                next_seek = time.monotonic() + rnd.uniform(0.2, 1.0)
        f.write(f"E {expect}\n")


@pytest.mark.timeout(600)
def test_readers_that_move_between_disk_and_ring_pass_no_acknowledged_record(data_dir, tmp_path):
    """Readers seek back at random while producers and the supervisor are SIGKILLed: a gap in the
    offsets a reader sees may only hold offsets no ``send`` acknowledged (a killed writer's claims)."""
    from shmbus import Bus

    duration = float(os.environ.get("SHMBUS_SOAK_S", "20"))
    rnd = random.Random(int(os.environ.get("SHMBUS_SOAK_SEED", str(int(time.time())))))
    stop = str(tmp_path / "stop")
    procs, plogs = [], []
    rlogs = [str(tmp_path / f"reader-{k}.log") for k in range(2)]

    def start(target, *args):
        p = SPAWN.Process(target=target, args=args, daemon=True)
        p.start()
        procs.append(p)
        return p

    def start_producer():
        plogs.append(str(tmp_path / f"producer-{len(plogs)}.log"))
        return start(producer_main, data_dir, plogs[-1], stop, rnd.random())

    bus = Bus(data_dir)
    try:
        bus.create_topic(TOPIC, 2, config=CONFIG)
        producers = [start_producer() for _ in range(2)]
        readers = [start(seeking_reader_main, data_dir, k, rlogs[k], stop, rnd.random()) for k in range(2)]
        wait_for(lambda: sum(len(_lines(x)) for x in plogs) > 1000, 60, "the producers to start")
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(rnd.uniform(0.2, 1.0))
            if rnd.random() < 0.5:
                replace_one(producers, start_producer, rnd)
            else:
                kill_and_restart_supervisor(data_dir, rnd.uniform(0.0, 0.3))
        open(stop, "w").close()
        for p in producers + readers:
            p.join(30)
            assert p.exitcode == 0, f"a worker exited with {p.exitcode}"
        acked = acknowledged(plogs)
        assert len(acked) > 1000, f"only {len(acked)} records acknowledged"
        passed = []
        for k, path in enumerate(rlogs):
            lines = _lines(path)
            assert lines and lines[-1].startswith("E "), f"reader {k} did not finish"
            for line in lines:
                if line.startswith("G "):
                    a, b = map(int, line.split()[1:])
                    lost = [o for o in range(a, b) if (k, o) in acked]
                    if lost:
                        passed.append((k, a, b, len(lost)))
        assert not passed, f"readers passed over acknowledged records (partition, expected, got, lost): {passed}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        bus.close()
