"""Throughput, 100-byte records, one producer process -> one consumer process.

(a) one record per call:
* shmbus ``Producer.send`` -> ``Consumer.poll(max_records=1024)``;
* ``multiprocessing.Queue`` put/get of ``bytes``; ``multiprocessing.Pipe`` send_bytes/recv_bytes.
(b) batches of 1000 records:
* shmbus ``send_batch`` of a (1000, 100) uint8 array -> ``poll_batch(max_records=100000)``;
* ``mp.Queue`` put of a list of 1000 distinct 100-byte ``bytes`` (pickled) / get;
* ``mp.Pipe`` send_bytes of the same (1000, 100) array as one 100 kB blob, received
  as a numpy view (no object per record: the closest thing to ``poll_batch``).

Rates are end-to-end: N / (consumer's clock after the last record - producer's
clock before the first send), CLOCK_MONOTONIC in both processes. The
producer-side rate is N / time spent in the producer's send loop. Each side
sends/reads one warm-up record (or batch) before a barrier; it is not counted.
Every run is verified: shmbus offsets must be exactly 1..N (dense, in order,
checked for every record: the per-record check is part of the consumer's
loop, ~5% of its time), the mp transports must deliver exactly N records with
the last one carrying the end marker. A run that fails verification reports
no figure.

The shmbus topics use ``ring.bytes`` = 64 MiB; the supervisor spills every
record to segment files on disk and frees ring space only after that, so a
producer that outruns the spiller waits for it. The supervisor is not pinned
and competes for the 2 vCPUs; its CPU time per trial is reported. The spiller
frees ring space as soon as it has written it, so a consumer that is behind at
that moment continues from the segment files (a slower path): with N = 10M
(1.4 GB of frames through a 64 MiB ring) that is what the batch row measures.
The extra row "no supervisor, N fits the ring" (400k records on a bus with no
supervisor: nothing is spilled or freed) shows the shared-memory path alone.

    python bench/throughput.py            # full: 3 rounds, ~3 min
    python bench/throughput.py --quick    # smoke run
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "throughput"
PAYLOAD = 100
BATCH = 1000
STARTUP_S = 120.0
STALL_S = 30.0  # the consumer gives up after this long without a record
RING_BYTES = 64 << 20

# key, label, kind, batched, N (full), N (quick). N is sized for >= 2 s per trial on a 2-vCPU VM (>= 1M where
# that fits the ~3 min budget: mp.Queue moves ~60-200k records/s here, so it gets 500k).
SINGLE = [
    ("shmbus", "shmbus send → poll", "shmbus", False, 1_000_000, 20_000),
    ("mp_queue", "mp.Queue put/get", "queue", False, 500_000, 20_000),
    ("mp_pipe", "mp.Pipe send_bytes/recv_bytes", "pipe", False, 1_000_000, 20_000),
]
BATCHED = [
    ("shmbus_batch", "shmbus send_batch(1000) → poll_batch", "shmbus", True, 10_000_000, 200_000),
    # diagnostic: a bus with no supervisor (nothing spilled: the consumer reads shared memory only), N small enough
    # to fit the 64 MiB ring (400k frames of ~144 B = 58 MB)
    ("shmbus_batch_ring", "shmbus send_batch(1000) → poll_batch, no supervisor, N fits the ring", "shmbus-nosup",
     True, 400_000, 100_000),
    ("mp_queue_batch", "mp.Queue put/get of list[1000 bytes]", "queue", True, 5_000_000, 100_000),
    ("mp_pipe_batch", "mp.Pipe send_bytes/recv_bytes of 1000×100 B blobs", "pipe", True, 12_000_000, 200_000),
]
REFERENCE = "mp_queue"
REFERENCE_BATCH = "mp_queue_batch"


# --- children -----------------------------------------------------------------------------

def producer(kind, batched, chan, n, cpu, barrier, out_file):
    try:
        import numpy as np

        C.pin(cpu)
        closer = None
        if batched:
            arr = np.zeros((BATCH, PAYLOAD), np.uint8)
            last = arr.copy()
            last[-1, 0] = 0xFF  # end marker on the very last record
            if kind == "queue":
                # distinct objects: pickle would write one shared object once
                items = [bytes([i % 251]) + b"\0" * (PAYLOAD - 1) for i in range(BATCH)]
                msg, last_msg = items, items[:-1] + [b"\xff" + b"\0" * (PAYLOAD - 1)]
            else:
                # 1-D views: send_bytes takes len() of a memoryview, i.e. the first dimension
                msg, last_msg = (arr.reshape(-1), last.reshape(-1)) if kind == "pipe" else (arr, last)
        else:
            msg = b"\0" * PAYLOAD
            last_msg = b"\xff" + b"\0" * (PAYLOAD - 1)
        if kind == "shmbus":
            from shmbus import Bus

            data_dir, topic = chan
            bus = Bus(data_dir, autostart=False)
            prod = bus.producer()
            send = functools.partial(prod.send_batch if batched else prod.send, topic)

            def closer():
                prod.close()
                bus.close()
        elif kind == "queue":
            send = chan.put
        else:
            send = chan.send_bytes
        calls = n // BATCH if batched else n
        barrier.wait(STARTUP_S)  # A: the consumer is positioned (see consumer())
        send(msg)  # warm-up, not counted
        barrier.wait(STARTUP_S)  # B: the consumer has read it
        gc.disable()
        t0 = time.perf_counter_ns()
        for _ in range(calls - 1):
            send(msg)
        send(last_msg)
        t1 = time.perf_counter_ns()
        gc.enable()
        with open(out_file, "w") as f:
            json.dump({"t_first_send": t0, "t_loop_end": t1}, f)
        if closer is not None:
            closer()
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


def consumer(kind, batched, chan, n, cpu, barrier, out_file):
    try:
        import numpy as np

        C.pin(cpu)
        warm = BATCH if batched else 1
        got = 0
        calls = 0
        pc = time.perf_counter_ns
        last_value_first_byte = None
        if kind == "shmbus":
            from shmbus import Bus

            data_dir, topic = chan
            bus = Bus(data_dir, autostart=False)
            cons = bus.consumer(topic, auto_offset_reset="earliest")
            if batched:
                poll = functools.partial(cons.poll_batch, timeout_ms=1000, max_records=100_000)
            else:
                poll = functools.partial(cons.poll, timeout_ms=1000, max_records=1024)
            # Resolve the position (offset 0) on the still-empty topic before the producer starts, as a
            # subscriber that is up before its producer does (this also keeps the first poll clear of a
            # start-offset race in shmbus while the supervisor spills; see the bench README notes).
            if poll(timeout_ms=0):
                raise AssertionError("topic not empty at start")
            barrier.wait(STARTUP_S)  # A
            seen = 0
            t_limit = time.monotonic() + STARTUP_S
            while seen < warm:
                for b in poll().values():
                    seen += len(b)
                if time.monotonic() > t_limit:
                    raise TimeoutError("warm-up record(s) not received")
            if seen != warm:
                raise AssertionError(f"warm-up: {seen} records, expected {warm}")
            barrier.wait(STARTUP_S)  # B
            gc.disable()
            nxt = warm  # next expected offset
            end = warm + n
            last_progress = time.monotonic()
            while nxt < end:
                res = poll()
                if not res:
                    if time.monotonic() - last_progress > STALL_S:
                        raise TimeoutError(f"stalled: {nxt - warm} of {n} records")
                    continue
                calls += 1
                for b in res.values():
                    k = len(b)
                    if batched:
                        offs = b.offsets
                        if (offs[0] != nxt or offs[-1] != nxt + k - 1 or k > 1 and not (np.diff(offs) == 1).all()
                                or not (b.value_lengths == PAYLOAD).all()):
                            raise AssertionError(f"offsets not dense from {nxt}: {offs[:5]}...{offs[-5:]}")
                    else:
                        if [r.offset for r in b] != list(range(nxt, nxt + k)):
                            raise AssertionError(f"offsets not dense from {nxt}: {[r.offset for r in b][:10]}")
                    nxt += k
                last_progress = time.monotonic()
            t_end = pc()
            gc.enable()
            if nxt != end:
                raise AssertionError(f"read past the end: next offset {nxt}, expected {end}")
            if batched:
                last_value_first_byte = int(b.value_data[b.value_starts[-1]])
            else:
                last_value_first_byte = b[-1].value[0]
            got = nxt - warm
            cons.close()
            bus.close()
        else:
            if kind == "queue":
                get = chan.get  # blocking, no timeout (a timeout adds a poll() per get); the parent kills on a hang
            else:
                get = chan.recv_bytes
            barrier.wait(STARTUP_S)  # A
            first = get()
            nfirst = (len(first) if kind == "queue" else len(first) // PAYLOAD) if batched else 1
            if nfirst != warm:
                raise AssertionError(f"bad warm-up message: {nfirst} records, expected {warm}")
            barrier.wait(STARTUP_S)  # B
            gc.disable()
            if batched and kind == "pipe":
                frombuffer = np.frombuffer
                while got < n:
                    a = frombuffer(get(), np.uint8).reshape(-1, PAYLOAD)
                    got += len(a)
                    calls += 1
                t_end = pc()
                last_value_first_byte = int(a[-1, 0])
            elif batched:
                while got < n:
                    lst = get()
                    got += len(lst)
                    calls += 1
                t_end = pc()
                last_value_first_byte = lst[-1][0]
            else:
                while got < n:
                    v = get()
                    got += 1
                t_end = pc()
                calls = got
                last_value_first_byte = v[0]
            gc.enable()
        if got != n:
            raise AssertionError(f"received {got} records, expected {n}")
        if last_value_first_byte != 0xFF:
            raise AssertionError("the last record is not the marked last record")
        with open(out_file, "w") as f:
            json.dump({"received": got, "t_last_recv": t_end, "receive_calls": calls}, f)
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


# --- orchestration ------------------------------------------------------------------------

def _cpu_s(pid):
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return None


def run_trial(tr, buses, quick, cpus, workdir, tag):
    key, _label, kind, batched, n_full, n_quick = tr
    bus = buses[1] if kind == "shmbus-nosup" else buses[0]
    kind = "shmbus" if kind == "shmbus-nosup" else kind
    n = n_quick if quick else n_full
    pfile = os.path.join(workdir, f"{tag}-{key}-prod.json")
    cfile = os.path.join(workdir, f"{tag}-{key}-cons.json")
    topic = None
    chans = []
    sup_pid = None
    try:
        if kind == "shmbus":
            from shmbus.client import control as client

            topic = f"tput-{tag}-{key}"
            bus.create_topic(topic, partitions=1, config={"ring.bytes": RING_BYTES})
            pchan = cchan = (bus.data_dir, topic)
            sup_pid = client.running_pid(bus.data_dir)
        elif kind == "queue":
            q = C.CTX.Queue()
            chans.append(q)
            pchan = cchan = q
        else:
            r, w = C.CTX.Pipe(duplex=False)
            chans += [r, w]
            pchan, cchan = w, r
        barrier = C.CTX.Barrier(2)
        sup0 = _cpu_s(sup_pid) if sup_pid else None
        with C.Children() as ch:
            ch.start(consumer, kind, batched, cchan, n, cpus[1], barrier, cfile, name=f"{key}-consumer")
            ch.start(producer, kind, batched, pchan, n, cpus[0], barrier, pfile, name=f"{key}-producer")
            try:
                ch.join(STARTUP_S + 60 + n / 100_000)
            except Exception as e:
                err = C.read_child_error(cfile) or C.read_child_error(pfile)
                raise RuntimeError(f"{e}\n{err}") from None
        sup1 = _cpu_s(sup_pid) if sup_pid else None
        with open(pfile) as f:
            pres = json.load(f)
        with open(cfile) as f:
            cres = json.load(f)
        if cres["received"] != n:
            raise RuntimeError(f"received {cres['received']} of {n}")
        e2e_s = (cres["t_last_recv"] - pres["t_first_send"]) / 1e9
        send_s = (pres["t_loop_end"] - pres["t_first_send"]) / 1e9
        return {"n": n, "rate": n / e2e_s, "send_rate": n / send_s, "seconds": e2e_s,
                "mb_per_s": n * PAYLOAD / e2e_s / 1e6, "records_per_receive": n / max(cres["receive_calls"], 1),
                "supervisor_cpu_s": (sup1 - sup0) if sup0 is not None and sup1 is not None else None}
    finally:
        for c in chans:
            try:
                c.close()
            except Exception:
                pass
        if topic is not None:
            C.drop_topic(bus, topic)


def _table(trs, results, ref_keys):
    def col(key, field):
        return [r[field] if r else None for r in results[key]]

    header = ["transport", "N", "end-to-end rec/s", "MB/s"] + [f"× {lab}" for _k, lab in ref_keys] + [
        "producer-side rec/s", "rec per receive call", "supervisor CPU s"]
    rows = []
    for key, label, _kind, _b, *_n in trs:
        ratios = [C.cell(C.per_round_ratio(col(key, "rate"), col(rk, "rate")), C.fmt_ratio) for rk, _l in ref_keys]
        ns = [x for x in col(key, "n") if x]
        rows.append([label, f"{ns[0]:,}" if ns else "–", C.cell(col(key, "rate"), C.fmt_rate),
                     C.fmt_num(C.median(col(key, "mb_per_s")))] + ratios +
                    [C.cell(col(key, "send_rate"), C.fmt_rate), C.fmt_num(C.median(col(key, "records_per_receive"))),
                     C.fmt_num(C.median(col(key, "supervisor_cpu_s")))])
    return C.markdown_table(header, rows)


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    ap.add_argument("--max-quiet-wait", type=float, default=30.0,
                    help="seconds in all to wait for other processes to go quiet before rounds (0: never wait)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    cpus = C.cpus_for(args)
    env = C.environment()
    allt = SINGLE + BATCHED

    def progress(rnd, tr, res, elapsed_s):
        print(f"  round {rnd + 1} {tr[0]}: {C.fmt_rate(res['rate']) if res else 'FAILED'} rec/s "
              f"({elapsed_s:.0f} s)", file=sys.stderr, flush=True)

    measured = C.interleaved_rounds(
        allt, rounds, lambda tr, buses, workdir, tag: run_trial(tr, buses, args.quick, cpus, workdir, tag),
        quick=args.quick, cpus=cpus, max_quiet_wait=args.max_quiet_wait, prefix="shmbus-bench-tput-",
        on_result=progress)
    results, errors = measured.results, measured.errors
    probes, loads, waits = measured.probes, measured.loads, measured.waits

    t_single = _table(SINGLE, results, [(REFERENCE, "mp.Queue")])
    t_batch = _table(BATCHED, results, [(REFERENCE, "mp.Queue (single)"), (REFERENCE_BATCH, "mp.Queue batched")])
    print()
    print(f"### Throughput (a): one 100 B record per call ({rounds} interleaved round(s))")
    print()
    print(t_single)
    print()
    print(f"### Throughput (b): batches of {BATCH} × 100 B records ({rounds} interleaved round(s))")
    print()
    print(t_batch)
    print()
    print("Cells: median over rounds [min–max]; ratios are same-round ratios of end-to-end rates. "
          "End-to-end = N / (last record received − first send); producer-side = N / time in the send loop. "
          + (f"Pinning: producer cpu{cpus[0]}, consumer cpu{cpus[1]}; the shmbus supervisor (spilling every record "
             f"to disk) unpinned." if cpus[0] is not None else "Not pinned."))
    print("Noise probe (% wall time lost per vCPU, both spinning; max gap): " +
          "; ".join(C.fmt_probe(i, p) for i, p in enumerate(probes)))
    if waits:
        print(f"Before each round the script waited (≤ 20 s, ≤ {args.max_quiet_wait:.0f} s in all) for other "
              "processes to use < 0.25 cores: waited " + ", ".join(f"{w['waited_s']:.0f} s" for w in waits) + ".")
    print("CPU used by other processes during each round (cores, of "
          f"{os.cpu_count()}; this machine is shared): " + "; ".join(C.fmt_load(i, m) for i, m in enumerate(loads)))
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    summary = {}
    for key, label, *_r in allt:
        rs = results[key]
        summary[key] = {"label": label, **{f: C.summary([r[f] if r else None for r in rs])
                                           for f in ("rate", "send_rate", "mb_per_s", "seconds",
                                                     "records_per_receive", "supervisor_cpu_s")}}
    out = C.out_path(NAME, args)
    C.write_json(out, {"benchmark": NAME, "env": env, "quick": args.quick, "rounds": rounds,
                       "payload_bytes": PAYLOAD, "batch": BATCH, "ring_bytes": RING_BYTES, "cpus": list(cpus),
                       "noise_probe": probes, "other_load": loads, "quiet_waits": waits, "summary": summary,
                       "per_round": results, "errors": errors,
                       "table_markdown": {"single": t_single, "batch": t_batch}})
    print(f"\nJSON: {os.path.relpath(out, os.getcwd())}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
