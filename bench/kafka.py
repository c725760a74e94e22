"""Kafka clients through shmbus's Kafka listener vs librdkafka's own mock cluster, same run.

The same confluent-kafka (librdkafka) clients, 100-byte records, 4 partitions,
against two one-broker "clusters" on loopback:

* **shmbus**: a supervisor serving the Kafka protocol (``shmbus serve
  --kafka-listener``): produced batches become ring frames (numba kernels) and
  are spilled to segment files; fetches read the ring or the segments;
* **mock**: librdkafka's in-process mock cluster (``test.mock.num.brokers=1``),
  which keeps record batches as opaque blobs in memory (at most 5 MiB per
  partition, so the record count stays under that).

Per round and target: a producer sends N records as fast as librdkafka takes
them (``linger.ms=5``; the time is until ``flush()`` returns: every record
acknowledged), then a consumer reads them all from the beginning (``consume``
in batches); then produce-to-fetch latency: one record every millisecond,
timestamped at ``produce()``, received by a consumer polling in another thread
(p50/p99 over the samples). Rounds alternate the order of the two targets; a
cell is the median over rounds with [min-max].

Then, per round, ``shmbus bridge`` (direction out; one worker process, two, and
one with the Python copier) copying 300,000 such records from a bus to the mock
cluster, beside a plain confluent-kafka producer sending as many to the mock
(``bridge_vs_producer``).

    python bench/kafka.py [--quick] [--rounds N] [--records N] [--bridge-records N]
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "kafka"
PARTITIONS = 4
SIZE = 100


@contextlib.contextmanager
def mock_cluster():
    import confluent_kafka as ck

    anchor = ck.Producer({"test.mock.num.brokers": 1, "log_level": 0})
    md = anchor.list_topics(timeout=10)
    b = next(iter(md.brokers.values()))
    try:
        yield f"{b.host}:{b.port}", None
    finally:
        del anchor


@contextlib.contextmanager
def shmbus_listener():
    from shmbus.client import control

    with C.temp_bus(autostart=False) as (bus, d):
        control.start(d, args=("--kafka-listener", "127.0.0.1:0"))
        st = control.request(d, {"cmd": "status"})
        C.warm_kernels(bus)
        yield st["kafka_listener"]["address"], bus


def make_topic(boot: str, bus, name: str) -> None:
    """shmbus: create it; the mock cluster (no CreateTopics) creates a topic on first use, with 4 partitions."""
    if bus is not None:
        bus.create_topic(name, PARTITIONS)
        return
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": boot, "log_level": 0})
    p.list_topics(name, timeout=10)
    p.flush(10)


def produce(boot: str, topic: str, n: int) -> float:
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": boot, "linger.ms": 5, "acks": "all", "log_level": 0})
    value = b"v" * SIZE
    p.list_topics(topic, timeout=10)
    t = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, key=b"%d" % (i % 1000))
                break
            except BufferError:
                p.poll(0.001)
    left = p.flush(60)
    dt = time.perf_counter() - t
    if left:
        raise RuntimeError(f"{left} records not acknowledged within 60 s")
    return n / dt


def fetch(boot: str, topic: str, n: int) -> float:
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": boot, "group.id": "bench", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 100, "log_level": 0})
    try:
        c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in range(PARTITIONS)])
        got = first = 0
        t = last = time.perf_counter()
        while got < n:
            msgs = c.consume(10000, 0.5)
            ok = sum(1 for m in msgs if m.error() is None)
            now = time.perf_counter()
            if ok and not got:
                t, first = now, ok  # the rate counts from the first batch (not the connection's setup)
            got += ok
            if ok:
                last = now
            elif now - last > 10:
                raise RuntimeError(f"fetch stalled at {got} of {n} records")
        return (n - first) / (time.perf_counter() - t)
    finally:
        c.close()


def latency(boot: str, topic: str, seconds: float) -> list:
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": boot, "group.id": "bench-lat", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 100, "fetch.error.backoff.ms": 1, "log_level": 0})
    c.assign([ck.TopicPartition(topic, 0, ck.OFFSET_END)])
    p = ck.Producer({"bootstrap.servers": boot, "linger.ms": 0, "acks": 1, "log_level": 0})
    samples: list = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                (sent,) = struct.unpack_from("<q", m.value())
                samples.append((time.monotonic_ns() - sent) / 1000.0)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    time.sleep(1.0)  # the consumer's first fetch is under way
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p.produce(topic, struct.pack("<q", time.monotonic_ns()) + b"l" * (SIZE - 8), partition=0)
        p.poll(0)
        time.sleep(0.001)
    p.flush(10)
    time.sleep(0.5)
    stop.set()
    th.join(5)
    c.close()
    return samples


BRIDGES = {"bridge": (1, "compiled"), "bridge_2_workers": (2, "compiled"), "bridge_python": (1, "python")}


def bridge_vs_producer(boot: str, n: int, rnd: int) -> dict:
    """Records/s to the cluster at ``boot``: ``shmbus bridge`` copying n records (``SIZE`` B values,
    keys, 4 partitions) from a bus's segment files and rings (``BRIDGES``: one worker process, two,
    and one with the Python copier), and a plain confluent-kafka producer sending n records of the
    same shape (``producer``), same run.

    The bridge's rate counts from the first record on the cluster to the last (the partitions' high
    watermarks, polled every 10 ms), so the process's start is not in it.
    """
    out = {}
    for key, (workers, copier) in BRIDGES.items():
        out[key] = _bridge_rate(boot, n, f"bench-{key}-{rnd}", workers, copier)
    out["producer"] = produce(boot, f"bench-plain-{rnd}", n)
    return out


def _bridge_rate(boot: str, n: int, topic: str, workers: int, copier: str) -> float:
    import numpy as np

    from shmbus.bridge import config as B

    with supervisor_env(copier), C.temp_bus() as (bus, d):
        bus.create_topic(topic, PARTITIONS)
        make_topic(boot, None, topic)  # (exists on the cluster: the bridge only checks it)
        vals = np.full((n, SIZE), ord("v"), np.uint8)
        keys = [b"%d" % (i % 1000) for i in range(n)]
        with bus.producer() as p:
            for i in range(0, n, 10000):
                p.send_batch(topic, vals[i:i + 10000], keys=keys[i:i + 10000])
        import confluent_kafka as ck

        watch = ck.Consumer({"bootstrap.servers": boot, "group.id": "bench-watch", "log_level": 0})
        tps = [ck.TopicPartition(topic, p) for p in range(PARTITIONS)]
        B.write_bridge(d, B.check("bench", f"kafka://{boot}", topic, "out", "{topic}", workers))
        first = t_first = None
        deadline = time.monotonic() + 120
        try:
            while True:
                done = sum(watch.get_watermark_offsets(tp, timeout=5)[1] for tp in tps)
                now = time.perf_counter()
                if done and first is None:
                    first, t_first = done, now
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the bridge copied {done} of {n} records in 120 s")
                time.sleep(0.01)
        finally:
            watch.close()
        rate = (n - first) / (now - t_first)
        for _ in range(50):  # (the status file is rewritten every half second)
            used = (B.read_json(B.status_path(d, "bench", 0)) or {}).get("copier")
            if used is not None:
                break
            time.sleep(0.1)
        if used != copier:
            raise RuntimeError(f"the bridge used the {used} copier, not the {copier} one")
        return rate


@contextlib.contextmanager
def supervisor_env(copier: str):
    """SHMBUS_NATIVE=0 for the Python copier, while the bus (its supervisor, and so its bridge processes)
    is started; this process has loaded its own verbs already."""
    saved = os.environ.get("SHMBUS_NATIVE")
    if copier == "python":
        os.environ["SHMBUS_NATIVE"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SHMBUS_NATIVE", None)
        else:
            os.environ["SHMBUS_NATIVE"] = saved


def pct(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    ap.add_argument("--records", type=int, default=None, help="records per produce and fetch run")
    ap.add_argument("--bridge-records", type=int, default=None,
                    help="records per bridge run and its plain producer's (the mock keeps the newest 5 MiB "
                         "per partition; the high watermarks count them all)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    n = args.records or (20_000 if args.quick else 100_000)
    bridge_n = args.bridge_records or (50_000 if args.quick else 300_000)
    lat_s = 1.0 if args.quick else 3.0
    env = C.environment()
    res = {t: {"produce": [], "fetch": [], "p50_us": [], "p99_us": []} for t in ("shmbus", "mock")}
    errors = []
    bridge = {k: [] for k in (*BRIDGES, "producer")}  # records/s to the mock
    with shmbus_listener() as (sboot, bus), mock_cluster() as (mboot, _):
        targets = {"shmbus": (sboot, bus), "mock": (mboot, None)}
        for rnd in range(rounds):
            order = ["shmbus", "mock"] if rnd % 2 == 0 else ["mock", "shmbus"]
            for t in order:
                boot, b = targets[t]
                topic = f"bench-{rnd}"
                lat_topic = f"bench-lat-{rnd}"
                vals = {"produce": None, "fetch": None, "p50_us": None, "p99_us": None}
                try:
                    make_topic(boot, b, topic)
                    make_topic(boot, b, lat_topic)
                    vals["produce"] = produce(boot, topic, n)
                    vals["fetch"] = fetch(boot, topic, n)
                    s = latency(boot, lat_topic, lat_s)
                    vals["p50_us"], vals["p99_us"] = pct(s, 50), pct(s, 99)
                    print(f"round {rnd} {t}: produce {vals['produce']:,.0f}/s fetch {vals['fetch']:,.0f}/s "
                          f"latency p50 {vals['p50_us']:.0f} µs p99 {vals['p99_us']:.0f} µs ({len(s)} samples)",
                          file=sys.stderr, flush=True)
                except Exception as e:  # noqa: BLE001 (report it, keep the other rounds)
                    errors.append(f"round {rnd} {t}: {e!r}")
                    print(f"ERROR round {rnd} {t}: {e!r}", file=sys.stderr, flush=True)
                for k, v in vals.items():
                    res[t][k].append(v)
            try:
                br = bridge_vs_producer(mboot, bridge_n, rnd)
                print(f"round {rnd} bridge: bus -> mock {br['bridge']:,.0f}/s (2 workers: "
                      f"{br['bridge_2_workers']:,.0f}/s; Python copier: {br['bridge_python']:,.0f}/s), "
                      f"plain producer -> mock {br['producer']:,.0f}/s", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001
                br = {}
                errors.append(f"round {rnd} bridge: {e!r}")
                print(f"ERROR round {rnd} bridge: {e!r}", file=sys.stderr, flush=True)
            for k in bridge:
                bridge[k].append(br.get(k))
    rows = []
    for t in ("shmbus", "mock"):
        r = res[t]
        rows.append([t, C.cell(r["produce"], C.fmt_rate), C.cell(r["fetch"], C.fmt_rate),
                     C.cell(r["p50_us"], lambda x: C.fmt_num(x, " µs")),
                     C.cell(r["p99_us"], lambda x: C.fmt_num(x, " µs"))])
    ratio = {k: C.per_round_ratio(res["shmbus"][k], res["mock"][k]) for k in ("produce", "fetch")}
    rows.append(["shmbus / mock", C.cell(ratio["produce"], C.fmt_ratio), C.cell(ratio["fetch"], C.fmt_ratio), "", ""])
    names = {"bridge": "`shmbus bridge`", "bridge_2_workers": "`shmbus bridge --workers 2`",
             "bridge_python": "`shmbus bridge`, Python copier"}
    for k, label in names.items():
        ratio[k] = C.per_round_ratio(bridge[k], bridge["producer"])
        rows.append([f"{label} bus → mock", C.cell(bridge[k], C.fmt_rate), "", "", ""])
    rows.append(["plain producer → mock", C.cell(bridge["producer"], C.fmt_rate), "", "", ""])
    for k, label in names.items():
        rows.append([f"{label} / plain producer", C.cell(ratio[k], C.fmt_ratio), "", "", ""])
    print(f"confluent-kafka {_ck_version()}, {n:,} records of {SIZE} B, {PARTITIONS} partitions, {rounds} rounds; "
          f"bridge runs {bridge_n:,} records\n")
    print(C.markdown_table(["target", "produce (records/s)", "fetch (records/s)", "produce→fetch p50",
                            "produce→fetch p99"], rows))
    if errors:
        print("\nerrors: " + "; ".join(errors))
    C.write_json(C.out_path(NAME, args), {"benchmark": NAME, "quick": args.quick, "env": env, "records": n,
                                         "rounds": rounds, "results": res, "bridge": bridge,
                                         "ratios": ratio, "errors": errors})
    return 1 if errors else 0


def _ck_version() -> str:
    import confluent_kafka as ck

    v = ck.version()  # (a str in confluent-kafka 2.x, a (str, int) pair before)
    return f"{v if isinstance(v, str) else v[0]} (librdkafka {ck.libversion()[0]})"


if __name__ == "__main__":
    sys.exit(main())
