"""The disk path: reading a partition from segment files vs from the ring; acks="disk" throughput.

(a) Read N 100-byte records of one partition from offset 0, in one spawned
    process (pinned to the consumer cpu), with ``poll_batch(max_records=100000)``
    and with ``poll(max_records=1000)``:
    * "ring": a topic with a 64 MiB ring on a bus with no supervisor, so
      every record is in shared memory;
    * "disk": a topic with a 64 KiB ring on a bus whose supervisor has spilled
      every record to 1 MiB segments (all but the last few dozen records are
      only on disk). The files were just written: they are in the page cache,
      so this measures the segment read path (pread + checked scan), not the
      storage device.
(b) ``acks="disk"`` ``send`` throughput into one partition with 1 and with 4
    producer processes (spawn): ``send`` returns once the record is fsynced;
    the supervisor fsyncs once for every producer waiting (group commit), so
    4 producers should get more than 1. Rate = records of all producers /
    (last producer done - barrier), producers unpinned.

Cells: median over interleaved rounds [min-max]. Every read is verified
(offsets dense from 0, N of them); a failed run reports no figure.

    python bench/disk.py            # full: 3 rounds, ~1-2 min
    python bench/disk.py --quick    # smoke run
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

NAME = "disk"
PAYLOAD = 100
STARTUP_S = 120.0


# --- children -----------------------------------------------------------------------------

def reader(data_dir, topic, n, batch, cpu, out_file):
    """Read n records from offset 0; write {"rate": records/s}."""
    try:
        C.pin(cpu)
        from shmbus import Bus, TopicPartition

        tp = TopicPartition(topic, 0)
        with Bus(data_dir, autostart=False) as bus, bus.consumer(auto_offset_reset="earliest") as c:
            c.assign([tp])
            c.seek(tp, 0)
            warm = c.poll_batch if batch else c.poll  # load the kernels before the clock starts
            while not warm(timeout_ms=100, max_records=1):
                pass
            c.seek(tp, 0)
            got = 0
            t0 = time.perf_counter()
            deadline = time.monotonic() + 120
            if batch:
                while got < n and time.monotonic() < deadline:
                    for b in c.poll_batch(timeout_ms=100, max_records=100_000).values():
                        if int(b.offsets[0]) != got or int(b.offsets[-1]) != got + len(b.offsets) - 1:
                            raise AssertionError(f"offsets not dense at {got}")
                        got += len(b.offsets)
            else:
                while got < n and time.monotonic() < deadline:
                    for recs in c.poll(timeout_ms=100, max_records=1000).values():
                        if recs[0].offset != got or recs[-1].offset != got + len(recs) - 1:
                            raise AssertionError(f"offsets not dense at {got}")
                        got += len(recs)
            t1 = time.perf_counter()
        if got != n:
            raise AssertionError(f"read {got} of {n} records")
        with open(out_file, "w") as f:
            json.dump({"rate": n / (t1 - t0)}, f)
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


def disk_producer(data_dir, topic, n, barrier, out_file):
    try:
        from shmbus import Bus

        with Bus(data_dir, autostart=False) as bus, bus.producer(acks="disk", max_block_ms=60_000) as p:
            p.send(topic, b"w" * PAYLOAD, partition=0)  # warm-up, not counted
            barrier.wait(STARTUP_S)
            msg = b"\0" * PAYLOAD
            for _ in range(n):
                p.send(topic, msg, partition=0)
            t1 = time.monotonic()
        with open(out_file, "w") as f:
            json.dump({"t_end": t1}, f)
    except BaseException as e:
        C.child_fail(out_file, e)
        raise


# --- trials -------------------------------------------------------------------------------

def _result(out_file):
    try:
        with open(out_file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RuntimeError(C.read_child_error(out_file) or "no result") from None


def read_trial(bus, topic, n, batch, cpu, workdir, tag):
    out = os.path.join(workdir, f"read-{tag}.json")
    with C.Children() as ch:
        ch.start(reader, bus.data_dir, topic, n, batch, cpu, out, name="reader")
        ch.join(180)
    return _result(out)["rate"]


def acks_disk_trial(bus, topic, producers, n_each, workdir, tag):
    barrier = C.CTX.Barrier(producers + 1)
    outs = [os.path.join(workdir, f"acks-{tag}-{i}.json") for i in range(producers)]
    with C.Children() as ch:
        for o in outs:
            ch.start(disk_producer, bus.data_dir, topic, n_each, barrier, o, name="producer")
        barrier.wait(STARTUP_S)
        t0 = time.monotonic()
        ch.join(180)
    t_end = max(_result(o)["t_end"] for o in outs)
    return producers * n_each / (t_end - t0)


def fill(bus, topic, n):
    import numpy as np

    with bus.producer(max_block_ms=60_000) as p:
        arr = np.zeros((1000, PAYLOAD), np.uint8)
        for _ in range(n // 1000):
            p.send_batch(topic, arr, partition=0)


def wait_on_disk(bus, topic, n, timeout_s=120):
    from shmbus.log.recovery import log_end_offset

    pdir = os.path.join(bus.data_dir, "topics", topic, "0")
    deadline = time.monotonic() + timeout_s
    while (log_end_offset(pdir) or 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"records not on disk after {timeout_s} s")
        time.sleep(0.05)


def fmt_rate(x) -> str:
    """C.fmt_rate, with more digits under 10k (acks="disk" rates)."""
    return f"{x:.0f}" if x is not None and x < 1e4 else C.fmt_rate(x)


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    _, cpu = C.cpus_for(args)
    n_read = 100_000 if args.quick else 1_000_000
    n_acks = 100 if args.quick else 1000  # per producer
    env = C.environment()
    keys = ["ring_batch", "disk_batch", "ring_poll", "disk_poll", "acks1", "acks4"]
    results = {k: [] for k in keys}
    errors = []
    with tempfile.TemporaryDirectory(prefix="shmbus-bench-disk-") as workdir, C.temp_bus() as (bus, _d), \
            C.temp_bus(autostart=False) as (bus_nosup, _d2):
        C.warm_kernels(bus)
        bus_nosup.create_topic("ring", config={"ring.bytes": 1 << 28})
        fill(bus_nosup, "ring", n_read)
        bus.create_topic("disk", config={"ring.bytes": 64 * 1024, "segment.bytes": 1 << 20})
        fill(bus, "disk", n_read)
        wait_on_disk(bus, "disk", n_read)
        bus.create_topic("acks", config={"segment.bytes": 1 << 30})
        for rnd in range(rounds):
            t = f"r{rnd}"
            trials = [  # (key, function, arguments): run in a rotated order each round
                ("ring_batch", read_trial, (bus_nosup, "ring", n_read, True, cpu, workdir, "rb" + t)),
                ("disk_batch", read_trial, (bus, "disk", n_read, True, cpu, workdir, "db" + t)),
                ("ring_poll", read_trial, (bus_nosup, "ring", n_read, False, cpu, workdir, "rp" + t)),
                ("disk_poll", read_trial, (bus, "disk", n_read, False, cpu, workdir, "dp" + t)),
                ("acks1", acks_disk_trial, (bus, "acks", 1, n_acks, workdir, "a1" + t)),
                ("acks4", acks_disk_trial, (bus, "acks", 4, n_acks, workdir, "a4" + t)),
            ]
            k = rnd % len(trials)
            for key, fn, fargs in trials[k:] + trials[:k]:
                try:
                    res = fn(*fargs)
                except Exception as e:  # noqa: BLE001 (reported, and the run exits 1)
                    errors.append(f"round {rnd} {key}: {e}")
                    print(f"ERROR round {rnd} {key}: {e}", file=sys.stderr)
                    res = None
                results[key].append(res)
                print(f"  round {rnd + 1} {key}: {fmt_rate(res) if res else 'FAILED'} rec/s",
                      file=sys.stderr, flush=True)

    def ratio(a, b):
        return C.cell(C.per_round_ratio(results[a], results[b]), C.fmt_ratio)

    rows = [
        ["read, poll_batch(100000)", C.cell(results["ring_batch"], C.fmt_rate),
         C.cell(results["disk_batch"], C.fmt_rate), ratio("disk_batch", "ring_batch")],
        ["read, poll(1000)", C.cell(results["ring_poll"], C.fmt_rate),
         C.cell(results["disk_poll"], C.fmt_rate), ratio("disk_poll", "ring_poll")],
    ]
    t_read = C.markdown_table(["records/s", "from the ring", "from disk segments", "disk vs ring"], rows)
    t_acks = C.markdown_table(["acks=\"disk\" send, one partition", "records/s (all producers)"], [
        ["1 producer", C.cell(results["acks1"], fmt_rate)],
        ["4 producers", C.cell(results["acks4"], fmt_rate)],
        ["4 vs 1", ratio("acks4", "acks1")],
    ])
    print()
    print(f"### Disk (a): reading {n_read} × {PAYLOAD} B records of one partition ({rounds} round(s))")
    print()
    print(t_read)
    print()
    print(f"### Disk (b): acks=\"disk\" send, {n_acks} records per producer ({rounds} round(s))")
    print()
    print(t_acks)
    print()
    print("Cells: median over rounds [min–max]. Disk reads hit the page cache (files just written). "
          + (f"Reader pinned to cpu{cpu}." if cpu is not None else "Not pinned."))
    if errors:
        print("Errors: " + "; ".join(errors))
    C.write_json(C.out_path(NAME, args), {
        "benchmark": NAME, "env": env, "quick": args.quick, "rounds": rounds, "n_read": n_read,
        "n_acks_per_producer": n_acks,
        "results": {k: {"values": v, **C.summary(v)} for k, v in results.items()}, "errors": errors,
    })
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
