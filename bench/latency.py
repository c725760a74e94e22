"""One-way latency, 100-byte records, producer process -> consumer process.

The producer stamps ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock
in every process on Linux) into the value just before building it and sends one
record every 20 µs: a paced busy-wait that calls ``os.sched_yield()`` in its
wait loop. If the pacer falls more than one period
behind it restarts from "now" (no catch-up bursts) and counts it in ``behind``.
The consumer stamps ``perf_counter_ns()`` when its receive call returns; all
records returned by one ``poll`` get that stamp. 2,000 warm-up + 20,000
measured records per trial; the consumer checks every sequence number.

Transports, same run, interleaved rounds:
* shmbus ``Consumer.poll(timeout_ms=...)`` with the default ``spin_us=100``
  (the main figure: at 20 µs pacing the consumer is inside its spin window);
* shmbus with ``spin_us=0`` (the consumer sleeps on the doorbell futex at once:
  the cost of a wake-up);
* shmbus on a bus with no supervisor (a diagnostic row: nothing is spilled, so
  the consumer is never lapped by the spiller and reads shared memory only);
* ``multiprocessing.Queue`` put/get of ``bytes``;
* ``multiprocessing.Pipe(duplex=False)`` send_bytes/recv_bytes.

    python bench/latency.py            # full: 7 rounds, ~1-2 min
    python bench/latency.py --quick    # smoke run
"""

from __future__ import annotations

import functools
import gc
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "latency"
PAYLOAD = 100
PERIOD_NS = 20_000
STARTUP_S = 120.0  # a child may compile the kernels on a cold numba cache
POLL_TIMEOUT_MS = 1000
HDR = struct.Struct("<qq")  # seq, send stamp (ns)

TRANSPORTS = [
    # key, label, kind, options
    ("shmbus", "shmbus poll (spin_us=100, default)", "shmbus", {"spin_us": 100}),
    ("shmbus_spin0", "shmbus poll (spin_us=0: sleeps at once)", "shmbus", {"spin_us": 0}),
    # diagnostic: a bus with no supervisor, so nothing is spilled and the consumer is never lapped
    ("shmbus_nosup", "shmbus poll (spin_us=100), bus without supervisor", "shmbus", {"spin_us": 100, "nosup": True}),
    ("mp_queue", "mp.Queue put/get", "queue", {}),
    ("mp_pipe", "mp.Pipe send_bytes/recv_bytes", "pipe", {}),
]
REFERENCE = "mp_queue"


# --- children -----------------------------------------------------------------------------

def producer(kind, chan, n, period_ns, cpu, barrier, out_file):
    try:
        C.pin(cpu)
        closer = None
        if kind == "shmbus":
            from shmbus import Bus

            data_dir, topic = chan
            bus = Bus(data_dir, autostart=False)
            prod = bus.producer()
            send = functools.partial(prod.send, topic)

            def closer():
                prod.close()
                bus.close()
        elif kind == "queue":
            send = chan.put
        else:
            send = chan.send_bytes
        pack = HDR.pack
        pad = b"\0" * (PAYLOAD - HDR.size)
        pc = time.perf_counter_ns
        yld = os.sched_yield
        barrier.wait(STARTUP_S)  # A: the consumer is positioned (see consumer())
        send(pack(-1, pc()) + pad)  # one record outside the count: first-call costs, consumer warm-up
        barrier.wait(STARTUP_S)  # B: the consumer has read it
        gc.disable()
        behind = 0
        t_next = pc() + 2_000_000
        for i in range(n):
            now = pc()
            while now < t_next:
                yld()
                now = pc()
            if now - t_next > period_ns:
                behind += 1
                t_next = now
            t = pc()
            send(pack(i, t) + pad)
            t_next += period_ns
        gc.enable()
        with open(out_file, "w") as f:
            json.dump({"behind": behind}, f)
        if closer is not None:
            closer()
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


def consumer(kind, chan, n, spin_us, cpu, barrier, out_file):
    try:
        import numpy as np

        C.pin(cpu)
        lat = np.zeros(n, np.int64)
        unpack = HDR.unpack_from
        pc = time.perf_counter_ns
        i = 0
        calls = multi = 0
        deadline = time.monotonic() + STARTUP_S + n * PERIOD_NS / 1e9 * 5 + 30
        if kind == "shmbus":
            from shmbus import Bus

            data_dir, topic = chan
            bus = Bus(data_dir, autostart=False)
            cons = bus.consumer(topic, auto_offset_reset="earliest", spin_us=spin_us)
            poll = cons.poll
            # Resolve the position (offset 0) on the still-empty topic before the producer starts, as a
            # subscriber that is up before its producer does (this also keeps the first poll clear of a
            # start-offset race in shmbus while the supervisor spills; see the bench README notes).
            if poll(timeout_ms=0):
                raise AssertionError("topic not empty at start")
            barrier.wait(STARTUP_S)  # A
            # the producer's record -1: read it before the barrier
            while not poll(timeout_ms=POLL_TIMEOUT_MS):
                if time.monotonic() > deadline:
                    raise TimeoutError("no warm-up record")
            barrier.wait(STARTUP_S)
            gc.disable()
            while i < n:
                recs = poll(timeout_ms=POLL_TIMEOUT_MS)
                t = pc()
                if not recs:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"received {i} of {n}")
                    continue
                calls += 1
                for lst in recs.values():
                    if len(lst) > 1:
                        multi += 1
                    for r in lst:
                        seq, ts = unpack(r.value)
                        if seq != i or len(r.value) != PAYLOAD:
                            raise AssertionError(f"sequence error: got seq {seq} (offset {r.offset}) expected {i}")
                        lat[i] = t - ts
                        i += 1
            gc.enable()
            cons.close()
            bus.close()
        else:
            if kind == "queue":
                get = chan.get  # blocking, no timeout (a timeout adds a poll() per get); the parent kills on a hang
            else:
                get = chan.recv_bytes
            barrier.wait(STARTUP_S)  # A
            get()  # record -1
            barrier.wait(STARTUP_S)  # B
            gc.disable()
            while i < n:
                v = get()
                t = pc()
                seq, ts = unpack(v)
                if seq != i or len(v) != PAYLOAD:
                    raise AssertionError(f"sequence error: got seq {seq} expected {i}")
                lat[i] = t - ts
                i += 1
            calls = n
            gc.enable()
        np.save(out_file + ".npy", lat)
        with open(out_file, "w") as f:
            json.dump({"received": i, "receive_calls": calls, "calls_with_several": multi}, f)
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


# --- orchestration ------------------------------------------------------------------------

def run_trial(tr, buses, n_warm, n_meas, cpus, workdir, tag):
    import numpy as np

    key, _label, kind, opts = tr
    bus = buses[1] if opts.get("nosup") else buses[0]
    n = n_warm + n_meas
    pfile = os.path.join(workdir, f"{tag}-{key}-prod.json")
    cfile = os.path.join(workdir, f"{tag}-{key}-cons.json")
    topic = None
    chans = []
    try:
        if kind == "shmbus":
            topic = f"lat-{tag}-{key}"
            bus.create_topic(topic, partitions=1, config={"ring.bytes": 1 << 24})
            pchan = cchan = (bus.data_dir, topic)
        elif kind == "queue":
            q = C.CTX.Queue()
            chans.append(q)
            pchan = cchan = q
        else:
            r, w = C.CTX.Pipe(duplex=False)
            chans += [r, w]
            pchan, cchan = w, r
        barrier = C.CTX.Barrier(2)
        with C.Children() as ch:
            ch.start(consumer, kind, cchan, n, opts.get("spin_us", 0), cpus[1], barrier, cfile, name=f"{key}-consumer")
            ch.start(producer, kind, pchan, n, PERIOD_NS, cpus[0], barrier, pfile, name=f"{key}-producer")
            try:
                ch.join(STARTUP_S + n * PERIOD_NS / 1e9 * 10 + 60)
            except Exception as e:
                err = C.read_child_error(cfile) or C.read_child_error(pfile)
                raise RuntimeError(f"{e}\n{err}") from None
        with open(pfile) as f:
            pres = json.load(f)
        with open(cfile) as f:
            cres = json.load(f)
        if cres["received"] != n:
            raise RuntimeError(f"received {cres['received']} of {n}")
        lat = np.load(cfile + ".npy")[n_warm:] / 1e3  # µs
        pct = np.percentile(lat, [50, 90, 99, 99.9])
        return {"p50": float(pct[0]), "p90": float(pct[1]), "p99": float(pct[2]), "p99.9": float(pct[3]),
                "max": float(lat.max()), "mean": float(lat.mean()), "behind": pres["behind"],
                "receive_calls": cres["receive_calls"], "calls_with_several": cres["calls_with_several"]}
    finally:
        for c in chans:
            try:
                c.close()
            except Exception:
                pass
        if topic is not None:
            C.drop_topic(bus, topic)


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    ap.add_argument("--max-quiet-wait", type=float, default=60.0,
                    help="seconds in all to wait for other processes to go quiet before rounds (0: never wait)")
    ap.add_argument("--only", action="append", choices=[k for k, *_ in TRANSPORTS],
                    help="run only this transport (repeatable; for quick experiments)")
    args = ap.parse_args(argv)
    transports = [t for t in TRANSPORTS if not args.only or t[0] in args.only]
    rounds = args.rounds or (1 if args.quick else 7)
    n_warm, n_meas = (200, 2000) if args.quick else (2000, 20000)
    cpus = C.cpus_for(args)
    env = C.environment()

    def progress(rnd, tr, res, elapsed_s):
        print(f"  round {rnd + 1}/{rounds} {tr[0]}: p50 {C.fmt_num(res['p50']) if res else 'FAILED'} µs "
              f"({elapsed_s:.0f} s)", file=sys.stderr, flush=True)

    measured = C.interleaved_rounds(
        transports, rounds, lambda tr, buses, workdir, tag: run_trial(tr, buses, n_warm, n_meas, cpus, workdir, tag),
        quick=args.quick, cpus=cpus, max_quiet_wait=args.max_quiet_wait, prefix="shmbus-bench-lat-",
        on_result=progress)
    results, errors = measured.results, measured.errors
    probes, loads, waits = measured.probes, measured.loads, measured.waits

    def col(key, field):
        return [r[field] if r else None for r in results[key]]

    header = ["transport", "one-way p50 µs", "p90", "p99", "p99.9", "max", "p50 speed-up vs mp.Queue",
              "pacer behind"]
    rows = []
    summary = {}
    for key, label, _kind, _o in transports:
        ratio = C.per_round_ratio(col(key, "p50"), col(REFERENCE, "p50"), invert=True)
        rows.append([label, C.cell(col(key, "p50"))] +
                    [C.fmt_num(C.median(col(key, f))) for f in ("p90", "p99", "p99.9", "max")] +
                    [C.cell(ratio, C.fmt_ratio), C.fmt_num(C.median(col(key, "behind")))])
        summary[key] = {"label": label, **{f: C.summary(col(key, f)) for f in ("p50", "p90", "p99", "p99.9", "max",
                                                                                "mean", "behind")},
                        "p50_speedup_vs_mp_queue": C.summary(ratio)}
    table = C.markdown_table(header, rows)
    print()
    print(f"### One-way latency, 100 B, one record every {PERIOD_NS // 1000} µs "
          f"({n_warm:,} warm-up + {n_meas:,} measured per trial, {rounds} interleaved round(s))")
    print()
    print(table)
    print()
    print("Cells: median over rounds [min–max] for p50 and the speed-up (same-round mp.Queue p50 / p50); "
          "p90…max are medians of the per-round percentiles. "
          f"Pinning: producer cpu{cpus[0]}, consumer cpu{cpus[1]}; supervisor unpinned."
          if cpus[0] is not None else "Cells: median over rounds [min–max]; not pinned.")
    print("Noise probe (% wall time lost per vCPU, both spinning; max gap): " +
          "; ".join(C.fmt_probe(i, p) for i, p in enumerate(probes)))
    if waits:
        print(f"Before each round the script waited (≤ 20 s, ≤ {args.max_quiet_wait:.0f} s in all) for other "
              "processes to use < 0.25 cores: waited " + ", ".join(f"{w['waited_s']:.0f} s" for w in waits) + ".")
    print("CPU used by other processes during each round (cores, of "
          f"{os.cpu_count()}; this machine is shared): " + "; ".join(C.fmt_load(i, m) for i, m in enumerate(loads)))
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    out = C.out_path(NAME, args)
    C.write_json(out, {"benchmark": NAME, "env": env, "quick": args.quick, "rounds": rounds,
                       "payload_bytes": PAYLOAD, "period_us": PERIOD_NS / 1e3, "warmup": n_warm,
                       "measured": n_meas, "cpus": list(cpus), "noise_probe": probes, "other_load": loads,
                       "quiet_waits": waits,
                       "summary": summary, "per_round": results, "errors": errors, "table_markdown": table})
    print(f"\nJSON: {os.path.relpath(out, os.getcwd())}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
