"""Consumer-group rebalance times: after a join, a leave (close) and a SIGKILL; and commit cost.

Three member processes (spawned, ``group_id="g"``, strategy ``range``, each
in a ``poll(timeout_ms=100)`` loop) share a 6-partition topic. Each round:

* join: a fourth member, already imported and with its Bus open, is told to
  go; t0 = just before its ``subscribe``. Done = the last
  ``on_partitions_assigned`` in any member after t0 (the new member reads).
* leave: that member is told to ``close()``; t0 = just before ``close``. Done
  = the last ``on_partitions_assigned`` in the survivors.
* SIGKILL: another fourth member joins; t0 = just before ``os.kill``. Done =
  the last ``on_partitions_assigned`` in the survivors.

Times are ``time.time()`` across processes, taken by the members in their
rebalance listeners (so they include waking a sleeping ``poll``). The
coordinator's own figure (trigger to every member having applied its
assignment) is shown beside it. Commit: ``commit()`` of 6 partitions,
synchronous, in this process, each call timed: through the group's offsets
table in shared memory (the default), then over the member's socket to the
coordinator (the path for partitions without a slot in the table,
reachable for all with ``SHMBUS_GROUP_COMMIT=socket``), interleaved in blocks.

    python bench/groups.py            # full: 5 rounds
    python bench/groups.py --quick    # 1 round
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

NAME = "groups"
TOPIC = "orders"
PARTS = 6


def member(data_dir, ctl, name):
    from shmbus import Bus

    log = open(os.path.join(ctl, f"{name}.log"), "a", buffering=1)  # noqa: SIM115 (until the process ends)

    class Listener:
        def on_partitions_assigned(self, tps):
            log.write(f"A {len(tps)} {time.time():.6f}\n")

        def on_partitions_revoked(self, tps):
            log.write(f"R {len(tps)} {time.time():.6f}\n")

    def there(what):
        return os.path.exists(os.path.join(ctl, f"{name}.{what}"))

    with Bus(data_dir, autostart=False) as bus:
        c = bus.consumer(group_id="g", enable_auto_commit=False)
        log.write("READY\n")
        while not there("go"):
            time.sleep(0.005)
        log.write(f"T0 {time.time():.6f}\n")
        c.subscribe([TOPIC], listener=Listener())
        while not there("leave"):
            c.poll(timeout_ms=100)
        log.write(f"T0 {time.time():.6f}\n")
        c.close()


def read(ctl, name):
    try:
        with open(os.path.join(ctl, f"{name}.log")) as f:
            return [ln.split() for ln in f if ln.strip()]
    except FileNotFoundError:
        return []


def touch(ctl, name, what):
    open(os.path.join(ctl, f"{name}.{what}"), "w").close()


def wait(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise TimeoutError(f"waited {timeout_s} s for {what}")


def stable(bus, n):
    d = bus.describe_group("g")
    return d.state == "Stable" and len(d.members) == n and sum(len(m.assignment) for m in d.members) == PARTS


def last_assigned_after(ctl, names, t0):
    ts = [float(r[2]) for n in names for r in read(ctl, n) if r[0] == "A" and float(r[2]) > t0]
    return max(ts) if ts else None


def coordinator_ms(bus):
    from shmbus.client.groups import describe_raw

    rb = describe_raw(bus, "g").get("rebalances") or []
    return rb[-1]["ms"] if rb else None


def start_member(kids, bus, ctl, name):
    p = kids.start(member, bus.data_dir, ctl, name, name=name)
    wait(lambda: ["READY"] in read(ctl, name), 120, f"{name} ready")
    return p


def run_round(bus, ctl, kids, base, rnd):
    out = {}
    # join
    j = f"j{rnd}"
    start_member(kids, bus, ctl, j)
    touch(ctl, j, "go")
    wait(lambda: stable(bus, len(base) + 1), 30, "stable after join")
    t0 = float(next(r[1] for r in read(ctl, j) if r[0] == "T0"))
    out["join_ms"] = (last_assigned_after(ctl, base + [j], t0) - t0) * 1000
    out["join_coord_ms"] = coordinator_ms(bus)
    # leave
    touch(ctl, j, "leave")
    wait(lambda: stable(bus, len(base)), 30, "stable after leave")
    t0 = float([r for r in read(ctl, j) if r[0] == "T0"][1][1])
    out["leave_ms"] = (last_assigned_after(ctl, base, t0) - t0) * 1000
    out["leave_coord_ms"] = coordinator_ms(bus)
    # SIGKILL
    k = f"k{rnd}"
    p = start_member(kids, bus, ctl, k)
    touch(ctl, k, "go")
    wait(lambda: stable(bus, len(base) + 1), 30, "stable after the victim joined")
    time.sleep(0.2)
    t0 = time.time()
    os.kill(p.pid, signal.SIGKILL)
    wait(lambda: stable(bus, len(base)), 30, "stable after SIGKILL")
    out["kill_ms"] = (last_assigned_after(ctl, base, t0) - t0) * 1000
    out["kill_coord_ms"] = coordinator_ms(bus)
    p.join(5)
    kids.procs.remove(p)  # killed on purpose: not a failure
    return out


def commit_cost(bus, n):
    """Per-call commit() times, µs: {"shm": [...], "socket": [...]} (blocks of 100, interleaved)."""
    c = bus.consumer(TOPIC, group_id="commit-bench", enable_auto_commit=False)
    m = c._member
    try:
        wait(lambda: (c.poll(timeout_ms=10), len(c.assignment()) == PARTS)[1], 30, "commit-bench assignment")
        for tp in c.assignment():
            c.position(tp)
        if len(m._slots) != PARTS:
            raise RuntimeError(f"the member has {len(m._slots)} table slots, not {PARTS}: no shm commits")
        out = {"shm": [], "socket": []}
        for shm in (True, False):  # a warm-up of each path (the first loads the kernel)
            m._shm_commits = shm
            c.commit()
        pc = time.perf_counter
        while len(out["shm"]) < n:
            for key, shm in (("shm", True), ("socket", False)):
                m._shm_commits = shm
                ts = out[key]
                for _ in range(100):
                    t = pc()
                    c.commit()
                    ts.append((pc() - t) * 1e6)
        return out
    finally:
        m._shm_commits = True
        c.close()


def pct(vs, q):
    if not vs:
        return None
    vs = sorted(vs)
    return vs[min(len(vs) - 1, int(q / 100 * len(vs)))]


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    env = C.environment()
    keys = ["join_ms", "leave_ms", "kill_ms", "join_coord_ms", "leave_coord_ms", "kill_coord_ms"]
    results = {k: [] for k in keys}
    errors = []
    commit_us = None
    commit = {}
    import tempfile

    with C.temp_bus() as (bus, _d), C.Children() as kids, tempfile.TemporaryDirectory() as ctl:
        C.warm_kernels(bus)
        bus.create_topic(TOPIC, PARTS)
        base = ["m0", "m1", "m2"]
        for name in base:
            start_member(kids, bus, ctl, name)
            touch(ctl, name, "go")
        wait(lambda: stable(bus, 3), 60, "3 members stable")
        for rnd in range(rounds):
            try:
                res = run_round(bus, ctl, kids, base, rnd)
            except Exception as e:  # noqa: BLE001 (report it, keep the other rounds)
                errors.append(f"round {rnd}: {e!r}")
                print(f"ERROR round {rnd}: {e!r}", file=sys.stderr)
                res = {}
            for k in keys:
                results[k].append(res.get(k))
        try:
            times = commit_cost(bus, 200 if args.quick else 2000)
            commit = {k: {"p50_us": pct(v, 50), "p99_us": pct(v, 99), "mean_us": sum(v) / len(v), "n": len(v)}
                      for k, v in times.items()}
            commit_us = commit["shm"]["mean_us"]
        except Exception as e:  # noqa: BLE001
            errors.append(f"commit: {e!r}")
        for name in base:
            touch(ctl, name, "leave")
        kids.join(30)

    rows = [
        ["a member joins (3 → 4)", C.cell(results["join_ms"]), C.cell(results["join_coord_ms"])],
        ["a member leaves (close, 4 → 3)", C.cell(results["leave_ms"]), C.cell(results["leave_coord_ms"])],
        ["a member is SIGKILLed (4 → 3)", C.cell(results["kill_ms"]), C.cell(results["kill_coord_ms"])],
    ]
    table = C.markdown_table(["event (6 partitions, range)", "until the members read, ms",
                              "coordinator: trigger → all applied, ms"], rows)
    print()
    print(f"### Consumer-group rebalance ({rounds} round(s), median [min–max])")
    print()
    print(table)
    print()
    for key, what in (("shm", "shared-memory offsets table"), ("socket", "socket round trip, SHMBUS_GROUP_COMMIT=socket")):
        r = commit.get(key) or {}
        print(f"commit() of 6 partitions ({what}): p50 {C.fmt_num(r.get('p50_us'))} µs, "
              f"p99 {C.fmt_num(r.get('p99_us'))} µs")
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    out = C.out_path(NAME, args)
    C.write_json(out, {"benchmark": NAME, "env": env, "quick": args.quick, "rounds": rounds,
                       "summary": {k: C.summary(results[k]) for k in keys}, "commit_us": commit_us,
                       "commit": commit,
                       "per_round": results, "errors": errors, "table_markdown": table})
    print(f"\nJSON: {os.path.relpath(out, os.getcwd())}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
