"""CPU used by a consumer blocked on an idle topic (should be ~0%).

Each consumer is a spawned process that calls its receive function with a
timeout in a loop, on a topic/queue nobody writes to. After all are ready and
0.5 s of settling, the parent reads each process's CPU time (psutil
``cpu_times``, user + system) and voluntary context switches, waits
``--window`` seconds (3 s; 1 s with --quick), and reads them again:
CPU% = CPU-time delta / wall delta × 100 (100% = one core). All consumers are
idle at the same time in one window (they do not disturb one another: nothing
is sent). The shmbus supervisor of the same data dir is measured in the same
window; it is a per-bus daemon, not per consumer.

Rows: shmbus ``poll(timeout_ms=10 / 100 / 1000)`` with the default
``spin_us=100``; ``shmbus.aio``'s ``AIOConsumer.getmany(timeout_ms=1000)`` in an
asyncio loop; ``mp.Queue.get(timeout=0.1)``; ``mp.Pipe`` ``poll(0.1)``; the
supervisor.

    python bench/idle_cpu.py            # full: 3 rounds × 3 s
    python bench/idle_cpu.py --quick    # 1 round × 1 s
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "idle_cpu"
STARTUP_S = 120.0

VARIANTS = [
    # key, label, kind, timeout_ms
    ("shmbus_10ms", "shmbus poll(timeout_ms=10)", "shmbus", 10),
    ("shmbus_100ms", "shmbus poll(timeout_ms=100)", "shmbus", 100),
    ("shmbus_1000ms", "shmbus poll(timeout_ms=1000)", "shmbus", 1000),
    ("shmbus_aio_1000ms", "shmbus.aio getmany(timeout_ms=1000)", "aio", 1000),
    ("mp_queue_100ms", "mp.Queue get(timeout=0.1)", "queue", 100),
    ("mp_pipe_100ms", "mp.Pipe poll(0.1)", "pipe", 100),
]
SUPERVISOR = ("supervisor", "shmbus supervisor (per bus, idle)")


def idle_consumer(kind, chan, timeout_ms, ready, stop, count):
    """Block in the receive call in a loop until ``stop``; count the calls that returned."""
    n = 0
    if kind == "shmbus":
        from shmbus import Bus

        data_dir, topic = chan
        bus = Bus(data_dir, autostart=False)
        cons = bus.consumer(topic, auto_offset_reset="latest")
        cons.poll(timeout_ms=0)
        ready.set()
        while not stop.is_set():
            if cons.poll(timeout_ms=timeout_ms):
                raise AssertionError("a record on the idle topic")
            n += 1
            count.value = n
        cons.close()
        bus.close()
    elif kind == "aio":
        import asyncio

        from shmbus.aio import AIOConsumer

        data_dir, topic = chan

        async def run():
            count_ = 0
            async with AIOConsumer(topic, data_dir=data_dir, auto_offset_reset="latest") as c:
                await c.getmany(timeout_ms=0)
                ready.set()
                while not stop.is_set():
                    if await c.getmany(timeout_ms=timeout_ms):
                        raise AssertionError("a record on the idle topic")
                    count_ += 1
                    count.value = count_

        asyncio.run(run())
    elif kind == "queue":
        import queue

        ready.set()
        while not stop.is_set():
            try:
                chan.get(timeout=timeout_ms / 1000)
                raise AssertionError("a message on the idle queue")
            except queue.Empty:
                pass
            n += 1
            count.value = n
    else:
        ready.set()
        while not stop.is_set():
            if chan.poll(timeout_ms / 1000):
                raise AssertionError("a message on the idle pipe")
            n += 1
            count.value = n


def _snap(pid):
    import psutil

    p = psutil.Process(pid)
    t = p.cpu_times()
    return time.monotonic(), t.user + t.system, p.num_ctx_switches().voluntary


def run_round(bus, window_s, tag):
    from shmbus.client import control as client

    chans = []
    procs = {}
    stop = C.CTX.Event()
    res = {}
    topics = []
    with C.Children() as ch:
        try:
            readies = {}
            counts = {}
            for key, _label, kind, tmo in VARIANTS:
                if kind in ("shmbus", "aio"):
                    topic = f"idle-{tag}-{key}"
                    bus.create_topic(topic, partitions=1)
                    topics.append(topic)
                    chan = (bus.data_dir, topic)
                elif kind == "queue":
                    chan = C.CTX.Queue()
                    chans.append(chan)
                else:
                    r, w = C.CTX.Pipe(duplex=False)
                    chans += [r, w]
                    chan = r
                readies[key] = C.CTX.Event()
                counts[key] = C.CTX.Value("q", 0, lock=False)
                procs[key] = ch.start(idle_consumer, kind, chan, tmo, readies[key], stop, counts[key], name=key)
            deadline = time.monotonic() + STARTUP_S
            for key, ev in readies.items():
                if not ev.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{key} not ready within {STARTUP_S:.0f} s")
                if not procs[key].is_alive():
                    raise RuntimeError(f"{key} exited early: {procs[key].exitcode}")
            time.sleep(0.5)
            pids = {k: p.pid for k, p in procs.items()}
            sup = client.running_pid(bus.data_dir)
            if sup and sup > 0:
                pids[SUPERVISOR[0]] = sup
            before = {k: _snap(pid) for k, pid in pids.items()}
            c0 = {k: c.value for k, c in counts.items()}
            time.sleep(window_s)
            after = {k: _snap(pid) for k, pid in pids.items()}
            c1 = {k: c.value for k, c in counts.items()}
            for k in pids:
                (w0, cpu0, v0), (w1, cpu1, v1) = before[k], after[k]
                wall = w1 - w0
                res[k] = {"cpu_pct": 100.0 * (cpu1 - cpu0) / wall, "wakeups_per_s": (v1 - v0) / wall,
                          "calls_per_s": (c1[k] - c0[k]) / wall if k in c0 else None, "window_s": wall}
            stop.set()
            ch.join(30)
        finally:
            stop.set()
            for c in chans:
                try:
                    c.close()
                except Exception:
                    pass
            for t in topics:
                C.drop_topic(bus, t)
    return res


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    ap.add_argument("--window", type=float, default=None, help="seconds measured per round (default 3, quick 1)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    window = args.window or (1.0 if args.quick else 3.0)
    env = C.environment()
    keys = [v[0] for v in VARIANTS] + [SUPERVISOR[0]]
    labels = {v[0]: v[1] for v in VARIANTS}
    labels[SUPERVISOR[0]] = SUPERVISOR[1]
    results = {k: [] for k in keys}
    errors = []
    with C.temp_bus() as (bus, _d):
        C.warm_kernels(bus)
        for rnd in range(rounds):
            try:
                res = run_round(bus, window, f"r{rnd}")
            except Exception as e:
                errors.append(f"round {rnd}: {e!r}")
                print(f"ERROR round {rnd}: {e!r}", file=sys.stderr)
                res = {}
            for k in keys:
                results[k].append(res.get(k))

    def col(key, f):
        return [r[f] if r and r.get(f) is not None else None for r in results[key]]

    header = ["blocked receiver (idle)", "CPU % of one core", "wake-ups/s (voluntary ctx switches)",
              "receive calls returned/s"]
    rows = [[labels[k], C.cell(col(k, "cpu_pct"), lambda x: f"{x:.2f}"),
             C.fmt_num(C.median(col(k, "wakeups_per_s"))), C.fmt_num(C.median(col(k, "calls_per_s")))]
            for k in keys]
    table = C.markdown_table(header, rows)
    print()
    print(f"### Idle CPU of a blocked consumer ({rounds} round(s) × {window:.0f} s window)")
    print()
    print(table)
    print()
    print("CPU% = (user + system CPU time delta) / wall × 100, from psutil, all receivers idle in the same window; "
          "median [min–max] over rounds. shmbus consumers use the default spin_us=100 before sleeping. "
          f"Resolution: CPU times tick every 10 ms, so ±{1 / window:.2f}% per round.")
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    out = C.out_path(NAME, args)
    C.write_json(out, {"benchmark": NAME, "env": env, "quick": args.quick, "rounds": rounds, "window_s": window,
                       "summary": {k: {"label": labels[k], "cpu_pct": C.summary(col(k, "cpu_pct")),
                                       "wakeups_per_s": C.summary(col(k, "wakeups_per_s")),
                                       "calls_per_s": C.summary(col(k, "calls_per_s"))} for k in keys},
                       "per_round": results, "errors": errors, "table_markdown": table})
    print(f"\nJSON: {os.path.relpath(out, os.getcwd())}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
