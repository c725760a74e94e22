"""``shmbus demo`` and ``shmbus bench``: real processes exchanging records, printed.

The worker functions are module-level so ``multiprocessing`` (spawn) can run them.
"""

from __future__ import annotations

import multiprocessing as mp
import struct
import time

import click
import numpy as np

_REC = struct.Struct("<iqq")  # producer id, sequence, perf_counter_ns at send


def _load_kernels(*names) -> None:
    """Load numba kernels before the clock starts (a first load costs ~0.4 s; not what we measure).

    With the compiled verbs (shmbus/native.py) no client path needs numba, so nothing is loaded."""
    from shmbus.core import native
    from shmbus.core.partitioner import partition_for_key

    if not native.ENABLED:
        from shmbus.kernels import frames as K

        for n in names:
            K.entry(n)
    partition_for_key(b"warm-up", 2)


def _producer(data_dir, topic, pid_, n, start_evt, out_q):
    from shmbus.client.bus import Bus

    _load_kernels("append_v", "append_kv", "append_any")
    with Bus(data_dir) as bus, bus.producer() as prod:
        start_evt.wait(120)  # a barrier: every producer is loaded, then all start together
        t0 = time.perf_counter()
        for i in range(n):
            key = f"sensor-{(pid_ * 7919 + i) % 64}".encode()
            prod.send(topic, _REC.pack(pid_, i, time.perf_counter_ns()) + b"x" * 80, key=key,
                      headers=[("producer", str(pid_).encode())])
        out_q.put(("producer", pid_, n, time.perf_counter() - t0))


def _consumer(data_dir, topic, expect, ready_evt, out_q):
    from shmbus.client.bus import Bus

    lat = np.empty(expect, np.int64)
    seen = {}
    per_part = {}
    bad_order = 0
    got = 0
    _load_kernels("scan_ring")
    with Bus(data_dir) as bus, bus.consumer(topic, auto_offset_reset="earliest") as c:
        ready_evt.set()
        t_first = None
        deadline = time.monotonic() + 120
        while got < expect and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500, max_records=1024).items():
                now = time.perf_counter_ns()
                if t_first is None:
                    t_first = time.perf_counter()
                for r in recs:
                    p, seq, ts = _REC.unpack_from(r.value)
                    k = (tp.partition, p)  # order holds per producer within a partition
                    if seq <= seen.get(k, -1):
                        bad_order += 1
                    seen[k] = seq
                    lat[got] = now - ts
                    got += 1
                per_part[tp.partition] = per_part.get(tp.partition, 0) + len(recs)
        elapsed = time.perf_counter() - (t_first or time.perf_counter())
    out_q.put(("consumer", got, bad_order, per_part, lat[:got], elapsed))


def _pct(a, q):
    return float(np.percentile(a, q)) / 1000.0 if len(a) else float("nan")


def run_demo(data_dir, records: int, producers: int, partitions: int) -> None:
    from shmbus.client.bus import Bus
    from shmbus.errors import UnknownTopicError

    topic = "shmbus-demo"
    with Bus(data_dir) as bus:
        try:
            bus.delete_topic(topic)
        except UnknownTopicError:
            pass
        bus.create_topic(topic, partitions=partitions, config={"ring.bytes": 1 << 20})
        click.echo(f"data dir: {bus.data_dir}  (supervisor running: {bus.supervisor_running()})")
        click.echo(f"topic {topic!r}: {partitions} partitions, ring 1 MiB each; "
                   f"{producers} producer process(es) x {records} keyed records with headers, 1 consumer process")
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        start = ctx.Barrier(producers + 1)
        ready = ctx.Event()
        total = records * producers
        cons = ctx.Process(target=_consumer, args=(bus.data_dir, topic, total, ready, q))
        cons.start()
        prods = [ctx.Process(target=_producer, args=(bus.data_dir, topic, i, records, start, q))
                 for i in range(producers)]
        for p in prods:
            p.start()
        ready.wait(120)
        start.wait(120)  # the producers have loaded their kernels: the clock starts for all at once
        results = []
        try:
            for _ in range(producers + 1):
                results.append(q.get(timeout=180))
        finally:
            for p in prods + [cons]:
                p.join(10)
                if p.is_alive():
                    p.kill()
        desc = bus.describe_topic(topic)
    for r in sorted(x for x in results if x[0] == "producer"):
        click.echo(f"  producer {r[1]}: sent {r[2]} records in {r[3]:.3f} s ({r[2] / r[3]:,.0f} records/s)")
    c = next(x for x in results if x[0] == "consumer")
    _, got, bad, per_part, lat, elapsed = c
    click.echo(f"  consumer: received {got} of {total} records, {bad} out of per-producer order within a partition")
    click.echo("  per partition: " + ", ".join(f"p{k}={v}" for k, v in sorted(per_part.items())))
    click.echo("  end offsets:   " + ", ".join(f"p{p.partition}={p.end_offset}" for p in desc.partitions))
    if got:
        click.echo(f"  latency under full load (send -> poll, includes queueing): p50 {_pct(lat, 50):.1f} us, "
                   f"p99 {_pct(lat, 99):.1f} us")
        click.echo(f"  consumer throughput: {got / max(elapsed, 1e-9):,.0f} records/s")
    ok = got == total and bad == 0
    click.echo("OK: every record arrived exactly once, in order" if ok
               else "PROBLEM: records missing or out of order")
    click.echo("paced latency: 1 producer (this process) -> 1 consumer process, one 100 B record every 20 us")
    from shmbus.cli.bench import latency

    lat = latency(data_dir, 5000, 100)
    click.echo("  one-way latency: " + "  ".join(f"p{p} {_pct(lat, p):.2f} us" for p in (50, 90, 99, 99.9))
               + f"  ({len(lat)} records)")


__all__ = ["run_demo"]
