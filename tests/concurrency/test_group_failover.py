"""Consumer groups across real processes: SIGKILL failover and members joining one by one.

Every member process logs, one line each, flushed at once (so a killed
member's log is complete up to its death)::

    J <pid> <t>                        joined
    A <partition> <t>                  on_partitions_assigned (before it reads the partition)
    R <partition> <t>                  on_partitions_revoked (after its last read of it)
    P <partition> <first> <last> <t>   processed these offsets (then commits)
    F <t>                              a commit failed
    X <t>                              closed

Times are ``time.time()`` (one clock for all processes). From these the
tests rebuild every ownership interval and check that no two overlap, and
that every processed batch lies inside its member's interval.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from helpers.waiting import wait_for

TOPIC = "orders"
PARTS = 6


def member_main(data_dir, log_path, stop_path, strategy):
    from shmbus import Bus
    from shmbus.errors import CommitFailedError

    f = open(log_path, "a", buffering=1)  # noqa: SIM115 (open until the process ends, or is killed)

    def w(*a):
        f.write(" ".join(str(x) for x in a) + "\n")

    class Listener:
        def on_partitions_revoked(self, tps):
            t = time.time()
            for tp in tps:
                w("R", tp.partition, f"{t:.6f}")

        def on_partitions_assigned(self, tps):
            t = time.time()
            for tp in tps:
                w("A", tp.partition, f"{t:.6f}")

    with Bus(data_dir, autostart=False) as bus:
        c = bus.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False,
                         partition_assignment_strategy=strategy)
        c.subscribe([TOPIC], listener=Listener())
        w("J", os.getpid(), f"{time.time():.6f}")
        while not os.path.exists(stop_path):
            got = c.poll(timeout_ms=50, max_records=300)
            for tp, recs in got.items():
                w("P", tp.partition, recs[0].offset, recs[-1].offset, f"{time.time():.6f}")
            if got:
                try:
                    c.commit()  # after processing: at least once
                except CommitFailedError:
                    w("F", f"{time.time():.6f}")
        c.close()
        w("X", f"{time.time():.6f}")


def producer_main(data_dir, n, progress_path):
    from shmbus import Bus

    with Bus(data_dir, autostart=False) as bus, bus.producer() as p:
        for i in range(n):
            p.send(TOPIC, b"%d" % i, partition=i % PARTS)
            if i % 100 == 99:
                time.sleep(0.005)
            if i % 1000 == 999:
                with open(progress_path, "w") as f:
                    f.write(str(i + 1))


def read_log(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def intervals(logs, killed):
    """{partition: [(start, end, member)]} from A/R lines; a killed member's open ones end at its kill time."""
    out = {p: [] for p in range(PARTS)}
    for name, lines in logs.items():
        open_ = {}
        for rec in lines:
            if rec[0] == "A":
                p = int(rec[1])
                assert p not in open_, f"{name} got partition {p} twice"
                open_[p] = float(rec[2])
            elif rec[0] == "R":
                p = int(rec[1])
                out[p].append((open_.pop(p), float(rec[2]), name))
        for p, t0 in open_.items():
            out[p].append((t0, killed.get(name, float("inf")), name))
    return out


def check_one_owner(logs, killed):
    ivs = intervals(logs, killed)
    for p, lst in ivs.items():
        lst.sort()
        for (_s0, e0, m0), (s1, _e1, m1) in itertools.pairwise(lst):
            assert e0 <= s1, f"partition {p}: {m0} owned it until {e0:.6f}, {m1} from {s1:.6f}"
    # every processed batch inside the processing member's interval of that partition
    for name, lines in logs.items():
        for rec in lines:
            if rec[0] == "P":
                p, t = int(rec[1]), float(rec[4])
                assert any(m == name and s <= t <= e for s, e, m in ivs[p]), f"{name} read {p} at {t} without owning it"
    return ivs


def stable_with(bus, n):
    d = bus.describe_group("g")
    return d.state == "Stable" and len(d.members) == n and sum(len(m.assignment) for m in d.members) == PARTS


@pytest.mark.timeout(240)
def test_sigkill_a_member_while_records_flow(bus, procs, tmp_path):
    n = 30_000
    bus.create_topic(TOPIC, PARTS)
    stop = str(tmp_path / "stop")
    progress = str(tmp_path / "progress")
    logs = {f"m{i}": str(tmp_path / f"m{i}.log") for i in range(3)}
    members = {name: procs.start(member_main, bus.data_dir, path, stop, "range") for name, path in logs.items()}
    wait_for(lambda: stable_with(bus, 3), 90, "3 members, stable")
    procs.start(producer_main, bus.data_dir, n, progress)
    def produced():
        try:
            with open(progress) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    wait_for(lambda: produced() >= n // 3, 60, "a third produced")

    victim = "m1"
    victim_parts = {tp.partition for m in bus.describe_group("g").members if m.pid == members[victim].pid
                    for tp in m.assignment}
    assert victim_parts
    t_kill = time.time()
    os.kill(members[victim].pid, signal.SIGKILL)
    wait_for(lambda: stable_with(bus, 2), 30, "2 members, stable")
    members[victim].join(10)

    # reassigned: the survivors' A lines for the victim's partitions
    def reassigned_at():
        ts = [float(r[2]) for name in logs if name != victim for r in read_log(logs[name])
              if r[0] == "A" and int(r[1]) in victim_parts and float(r[2]) > t_kill]
        return max(ts) if len(ts) == len(victim_parts) else None

    wait_for(lambda: reassigned_at() is not None, 30, "the survivors logging the victim's partitions")
    took_ms = (reassigned_at() - t_kill) * 1000
    print(f"\nSIGKILL -> {len(victim_parts)} partitions reading in the survivors: {took_ms:.1f} ms")
    with open(str(tmp_path.parent / "group_failover_ms.txt"), "a") as f:
        f.write(f"{took_ms:.3f}\n")

    def caught_up():
        d = bus.describe_group("g")
        return len(d.offsets) == PARTS and all(o.end_offset == n // PARTS and o.lag == 0 for o in d.offsets.values())

    wait_for(caught_up, 90, "lag 0 on every partition")
    open(stop, "w").close()
    for name, p in members.items():
        if name != victim:
            p.join(30)
            assert p.exitcode == 0, f"{name} exit code {p.exitcode}"

    got = {name: read_log(path) for name, path in logs.items()}
    check_one_owner(got, {victim: t_kill})
    seen = {p: set() for p in range(PARTS)}
    for lines in got.values():
        for r in lines:
            if r[0] == "P":
                seen[int(r[1])].update(range(int(r[2]), int(r[3]) + 1))
    for p in range(PARTS):
        assert seen[p] == set(range(n // PARTS)), f"partition {p}: offsets never processed"
    assert not any(r[0] == "F" for lines in got.values() for r in lines)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["sticky", "range"])
def test_members_join_one_by_one_past_the_partition_count(bus, procs, tmp_path, strategy):
    bus.create_topic(TOPIC, PARTS)
    stop = str(tmp_path / "stop")
    logs = {}
    before = None
    moves = []
    try:
        for k in range(1, PARTS + 3):
            name = f"m{k}"
            logs[name] = str(tmp_path / f"{name}.log")
            procs.start(member_main, bus.data_dir, logs[name], stop, strategy)
            wait_for(lambda: stable_with(bus, k), 90, f"{k} members, stable")  # noqa: B023
            d = bus.describe_group("g")
            owners = {}
            for m in d.members:
                for tp in m.assignment:
                    assert tp not in owners, f"{tp} owned by {owners[tp]} and {m.member_id}"
                    owners[tp] = m.member_id
            assert set(owners) == {(TOPIC, p) for p in range(PARTS)}
            counts = sorted(len(m.assignment) for m in d.members)
            assert counts[-1] - counts[0] <= 1
            assert counts.count(0) == max(0, k - PARTS)  # the extra members sit idle
            if before is not None:
                moved = sum(1 for tp, m in owners.items() if before[tp] != m)
                newest = max(d.members, key=lambda m: int(m.member_id.split("-")[-2]))
                moves.append(moved)
                if strategy == "sticky":
                    assert moved == len(newest.assignment), (before, owners)
            before = owners
        print(f"\n{strategy}: partitions moved at each join: {moves}")
        # members see the same: every member's logged assignment matches the coordinator's
        d = bus.describe_group("g")
        pid_of = {m.member_id: m.pid for m in d.members}
        by_pid = {pid_of[mid]: set() for mid in pid_of}
        for tp, mid in before.items():
            by_pid[pid_of[mid]].add(tp.partition)

        def logged():
            out = {}
            for path in logs.values():
                lines = read_log(path)
                pid = next(int(r[1]) for r in lines if r[0] == "J")
                held = set()
                for r in lines:
                    if r[0] == "A":
                        held.add(int(r[1]))
                    elif r[0] == "R":
                        held.discard(int(r[1]))
                out[pid] = held
            return out

        wait_for(lambda: logged() == by_pid, 30, "members' logs to match the coordinator")
    finally:
        open(stop, "w").close()
    procs.join_all(60)
    check_one_owner({n: read_log(p) for n, p in logs.items()}, {})
