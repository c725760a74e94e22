"""``shmbus bridge``: records copied between a bus and a Kafka cluster by a process the supervisor runs.

Clusters: librdkafka's in-process mock cluster (``SHMBUS_TEST_KAFKA=host:port``
puts a real broker in its place; no CreateTopics there: topics are auto-created
with 4 partitions, at most 5 MiB kept per partition, so volumes stay modest),
and a second bus serving the Kafka protocol (CreateTopics; it can be stopped and
started again on the same port). Every check compares the records on both sides
partition by partition: key, value, headers (plus the provenance header),
timestamp and order.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid

import confluent_kafka as ck
import pytest

from helpers.bus import cleanup_bus
from helpers.cli import one_line_error, sh
from helpers.kafka import kafka_cluster, start_listener
from helpers.waiting import wait_for

PARTS = 4
HDR = "shmbus.bridge"


# --- clusters ---

@pytest.fixture(scope="module")
def mock_cluster():
    """host:port of a Kafka cluster: $SHMBUS_TEST_KAFKA, else librdkafka's mock cluster (kept by this process)."""
    with kafka_cluster() as addr:
        yield addr


@pytest.fixture
def kafka_bus(tmp_path):
    """A second bus serving the Kafka protocol: (data dir, host:port)."""
    d = str(tmp_path / "cluster-bus")
    try:
        yield d, start_listener(d)
    finally:
        cleanup_bus(d)


@pytest.fixture(params=["mock", "shmbus"])
def cluster(request, mock_cluster, tmp_path):
    """(kind, host:port): the mock (or $SHMBUS_TEST_KAFKA) cluster, or a bus with a Kafka listener."""
    if request.param == "mock":
        yield "mock", mock_cluster
        return
    d = str(tmp_path / "cluster-bus")
    try:
        yield "shmbus", start_listener(d)
    finally:
        cleanup_bus(d)


@pytest.fixture(params=["compiled", "python"])
def copier(request, monkeypatch):
    """Which copier the bridge processes of the test's supervisor use for direction out: the compiled
    one (bridge/_rdk.c), or, with SHMBUS_NATIVE=0 in the supervisor's environment, confluent-kafka's
    Python API."""
    if request.param == "python":
        monkeypatch.setenv("SHMBUS_NATIVE", "0")
    return request.param


def default_copier():
    """The copier a bridge uses here: compiled, unless this run selects the numba kernels."""
    return "python" if os.environ.get("SHMBUS_NATIVE") == "0" else "compiled"


def copiers(data_dir, bname):
    return {w["copier"] for b in status(data_dir) if b["name"] == bname for w in b["workers"]}


# --- helpers ---

def name(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def records(n, seed=0):
    """n keyed records with headers and explicit timestamps: (key, value, headers, timestamp)."""
    base = 1_700_000_000_000 + seed * 10_000_000
    out = []
    for i in range(n):
        hs = [("seq", b"%d" % i)] if i % 3 else [("seq", b"%d" % i), ("kind", b"x" * (i % 7))]
        out.append((b"k%d" % (i % 97), b"v%d-%d" % (seed, i), hs, base + i))
    return out


def send_bus(bus, topic, recs):
    """Sends to the bus; returns {partition: [(key, value, headers, ts, offset)]} in offset order."""
    per = {}
    with bus.producer() as p:
        for k, v, h, ts in recs:
            md = p.send(topic, v, key=k, headers=h, timestamp_ms=ts)
            per.setdefault(md.partition, []).append((k, v, h, ts, md.offset))
    return per


def send_cluster(addr, topic, recs, partitions=PARTS):
    """Sends to the cluster (partition = the key's murmur2, as the bus does); returns the same map."""
    from shmbus.core.partitioner import partition_for_key

    p = ck.Producer({"bootstrap.servers": addr, "enable.idempotence": True, "linger.ms": 5, "log_level": 0})
    per = {}
    acked = {}
    errors = []

    def dr(i):
        def done(err, msg):
            if err is not None:
                errors.append(err)
            else:
                acked[i] = msg.offset()
        return done

    for i, (k, v, h, ts) in enumerate(recs):
        part = partition_for_key(k, partitions)
        while True:
            try:
                p.produce(topic, v, k, part, headers=h, timestamp=ts, on_delivery=dr(i))
                break
            except BufferError:
                p.poll(0.01)
        per.setdefault(part, []).append((k, v, h, ts, i))
    assert p.flush(60) == 0
    assert not errors, errors[:3]
    return {part: [(k, v, h, ts, acked[i]) for k, v, h, ts, i in rs] for part, rs in per.items()}


def read_cluster(addr, topic, n, timeout_s=90, partitions=PARTS):
    """{partition: [confluent Message]} until n records arrived (or the timeout)."""
    c = ck.Consumer({"bootstrap.servers": addr, "group.id": name("check"), "enable.auto.commit": False,
                     "log_level": 0, "fetch.wait.max.ms": 50})
    try:
        c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in range(partitions)])
        out = {}
        got = 0
        deadline = time.monotonic() + timeout_s
        while got < n and time.monotonic() < deadline:
            for m in c.consume(10000, 0.2):
                if m.error() is None:
                    out.setdefault(m.partition(), []).append(m)
                    got += 1
        return out
    finally:
        c.close()


def read_bus(bus, topic, n, timeout_s=90, partitions=PARTS):
    """{partition: [ConsumerRecord]} until n records arrived (or the timeout)."""
    from shmbus import TopicPartition

    out = {}
    got = 0
    with bus.consumer(auto_offset_reset="earliest", enable_auto_commit=False) as c:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while got < n and time.monotonic() < deadline:
            for tp, rs in c.poll(timeout_ms=100, max_records=10000).items():
                out.setdefault(tp.partition, []).extend(rs)
                got += len(rs)
    return out


def provenance(headers):
    vals = [v for k, v in headers if k == HDR]
    assert len(vals) == 1, headers
    origin, topic, p, off = vals[0].split(b" ")
    return origin.decode(), topic.decode(), int(p), int(off)


def check_copied(sent, got, src_topic, dups_ok=False):
    """Every sent record is on the other side, same partition, key, value, headers, timestamp, in order;
    returns the number of duplicates (records copied more than once; none unless ``dups_ok``)."""
    dups = 0
    for part, rs in sent.items():
        seen = {}
        copies = []
        for m in got.get(part, []):
            if hasattr(m, "headers") and callable(m.headers):
                k, v, hs, ts = m.key(), m.value(), m.headers() or [], m.timestamp()[1]
            else:
                k, v, hs, ts = m.key, m.value, m.headers, m.timestamp
            origin, topic, p, off = provenance(hs)
            assert (topic, p) == (src_topic, part), (topic, p, part)
            if off in seen:
                dups += 1
                assert seen[off] == (k, v, ts), off
                continue
            seen[off] = (k, v, ts)
            assert hs[-1][0] == HDR
            copies.append((k, v, [tuple(h) for h in hs[:-1]], ts, off))
        want = [(k, v, [tuple(h) for h in hs], ts, off) for k, v, hs, ts, off in rs]
        assert len(copies) == len(want), f"partition {part}: {len(copies)} copied of {len(want)}"
        assert copies == want, f"partition {part}: records differ"
        # in order: the first copies of each offset come in offset order
        assert [c[4] for c in copies] == sorted(c[4] for c in copies)
    if not dups_ok:
        assert dups == 0
    return dups


def status(data_dir):
    r = sh(data_dir, "bridge", "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def add_bridge(data_dir, bname, addr, topics, *extra):
    r = sh(data_dir, "bridge", "add", bname, "--to", f"kafka://{addr}", "--topics", topics, *extra)
    assert r.returncode == 0, r.stderr


def total_copied(data_dir, bname, direction=None):
    for b in status(data_dir):
        if b["name"] == bname:
            return sum(t["copied"] for t in b["topics"] if direction in (None, t["direction"]))
    return 0


def bridge_log(data_dir, bname):
    try:
        with open(os.path.join(data_dir, "bridges", f"{bname}.log")) as f:
            return f.read()[-4000:]
    except FileNotFoundError:
        return ""


# --- the command line ---

def test_cli_add_list_remove_and_user_errors(data_dir):
    r = sh(data_dir, "bridge", "add", "b1", "--to", "kafka://127.0.0.1:9", "--topics", "orders,prices.*",
           "--rename", "host1.{topic}")
    assert r.returncode == 0, r.stderr
    path = os.path.join(data_dir, "bridges", "b1.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    r = sh(data_dir, "bridge", "list", "--json")
    assert json.loads(r.stdout) == [{"name": "b1", "servers": "127.0.0.1:9", "topics": ["orders", "prices.*"],
                                     "direction": "out", "rename": "host1.{topic}", "workers": 1}]
    assert "b1" in sh(data_dir, "bridge", "list").stdout
    for args, word in [
        (("add", "b1", "--to", "kafka://127.0.0.1:9", "--topics", "x"), "exists already"),
        (("add", "b2", "--to", "http://x:1", "--topics", "x"), "kafka://"),
        (("add", "b2", "--to", "kafka://nohost", "--topics", "x"), "kafka://host:port"),
        (("add", "b.2", "--to", "kafka://h:1", "--topics", "x"), "bridge name"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", " , "), "--topics"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", "a b"), "pattern"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", "x", "--rename", "x"), "--rename"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", "x", "--direction", "both", "--rename", "a.{topic}"),
         "--rename"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", "x", "--workers", "0"), "--workers"),
        (("add", "b2", "--to", "kafka://h:1", "--topics", "x", "--workers", "2", "--direction", "in"), "--workers"),
        (("remove", "nope"), "no bridge named"),
    ]:
        line = one_line_error(sh(data_dir, "bridge", *args))
        assert word in line, line
    assert sh(data_dir, "bridge", "remove", "b1").returncode == 0
    assert json.loads(sh(data_dir, "bridge", "list", "--json").stdout) == []
    assert "no bridges" in sh(data_dir, "bridge", "status").stdout


# --- copying ---

@pytest.mark.timeout(240)
def test_out_copies_every_record_to_the_cluster(cluster, data_dir):
    """bus -> cluster, 4 partitions: all records (from rings and segment files), unchanged, in order;
    records sent while the bridge runs too; the status shows no lag at the end. On the second cluster,
    with two worker processes (partitions 0, 2 and 1, 3)."""
    from shmbus import Bus

    kind, addr = cluster
    n = 200_000 if kind == "shmbus" else 40_000  # (the mock keeps at most 5 MiB per partition)
    topic = name("orders")
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        recs = records(n)
        half = n // 2
        sent = send_bus(bus, topic, recs[:half])
        add_bridge(data_dir, "out1", addr, f"{topic},nothing.*", *(("--workers", "2") if kind == "shmbus" else ()))
        t0 = time.monotonic()
        for part, rs in send_bus(bus, topic, recs[half:]).items():
            sent.setdefault(part, []).extend(rs)
        got = read_cluster(addr, topic, n)
        dt = time.monotonic() - t0
        print(f"{kind}: {n} records copied in {dt:.1f}s ({n / dt:,.0f}/s)")
        assert sum(map(len, got.values())) == n, bridge_log(data_dir, "out1")
        check_copied(sent, got, topic)
        wait_for(lambda: any(t["lag_records"] == 0 and t["copied"] == n
                             for b in status(data_dir) for t in b["topics"]), 20, "the status to show no lag")
        st = status(data_dir)[0]
        assert {w["copier"] for w in st["workers"]} == {default_copier()}
        assert st["running"] and st["topics"][0]["duplicates"] == 0 and st["topics"][0]["target"] == topic
        assert len(st["workers"]) == (2 if kind == "shmbus" else 1) and st["topics"][0]["partitions"] == PARTS
        text = sh(data_dir, "bridge", "status").stdout
        assert "out1" in text and topic in text
        assert sh(data_dir, "bridge", "remove", "out1").returncode == 0
        for w in st["workers"]:
            pid = w["pid"]
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 20, "the removed bridge to stop")
        assert not os.listdir(os.path.join(data_dir, "bridges")) or \
            all(f.endswith(".log") for f in os.listdir(os.path.join(data_dir, "bridges")))


@pytest.mark.timeout(180)
def test_out_reads_a_small_ring_lapped_by_its_producer(mock_cluster, data_dir):
    """A 64 KiB ring that the producer laps many times while the bridge copies: the bridge reads on from
    the segment files whenever the spiller released what it was reading, and the cluster gets every record
    once, in order."""
    from shmbus import Bus

    topic = name("lap")
    n = 6000  # 1 KiB values: 6 MB through four 64 KiB rings (the mock keeps 5 MiB per partition)
    now = int(time.time() * 1000)  # (timestamps of today: small segments of older ones go by retention)
    recs = [(k, v + b"." * 1000, h, now + i) for i, (k, v, h, _ts) in enumerate(records(n, seed=12))]
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS, config={"ring.bytes": 65536, "segment.bytes": 200_000})
        add_bridge(data_dir, "lap", mock_cluster, topic)
        wait_for(lambda: _running_pid(data_dir, "lap"), 30, "the bridge running")
        sent = {}
        for i in range(0, n, 200):
            for part, rs in send_bus(bus, topic, recs[i:i + 200]).items():
                sent.setdefault(part, []).extend(rs)
        got = read_cluster(mock_cluster, topic, n)
        assert sum(map(len, got.values())) == n, bridge_log(data_dir, "lap")
        check_copied(sent, got, topic)
        assert copiers(data_dir, "lap") == {default_copier()}


@pytest.mark.timeout(120)
def test_a_record_the_cluster_client_refuses_stops_the_bridge_there_and_says_why(mock_cluster, data_dir, copier):
    """A record the bus takes (under its 1 MiB) but librdkafka refuses (over its 1,000,000 bytes): the
    records before it are copied, the bridge copies nothing after it (at least once: nothing skipped),
    and its status says which record and why. Both copiers."""
    from shmbus import Bus

    topic = name("big")
    with Bus(data_dir) as bus:
        bus.create_topic(topic, 1)
        with bus.producer() as p:
            for v in (b"before", b"x" * 1_040_000, b"after"):
                p.send(topic, v, key=b"k")
        add_bridge(data_dir, "big", mock_cluster, topic)
        wait_for(lambda: "offset 1:" in (status(data_dir)[0]["last_error"] or ""), 60, "the refusal in the status")
        err = status(data_dir)[0]["last_error"]
        assert f"{topic}/0" in err and "too large" in err.lower(), err
        got = read_cluster(mock_cluster, topic, 3, 3, partitions=1)
        assert [m.value() for m in got.get(0, [])] == [b"before"]
        assert status(data_dir)[0]["running"] and copiers(data_dir, "big") == {copier}


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


def make_cluster_topic(addr, topic, partitions=PARTS):
    """The topic on the cluster with ``partitions`` partitions (the mock makes it on first use, with 4)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": addr, "log_level": 0})
    try:
        a.create_topics([NewTopic(topic, partitions, replication_factor=-1)], operation_timeout=3)[topic].result(5)
    except Exception:  # noqa: BLE001 (no CreateTopics: auto-created)
        pass
    wait_for(lambda: len(a.list_topics(topic, timeout=5).topics[topic].partitions) == partitions, 20,
             f"topic {topic} with {partitions} partitions on the cluster")


@pytest.mark.timeout(240)
def test_in_copies_every_record_to_the_bus(cluster, data_dir):
    """cluster -> bus, 4 partitions, renamed: every record on the bus, unchanged, in order; the Kafka offsets
    are committed, so a second bridge process (after remove and add) starts where the first stopped."""
    from shmbus import Bus

    kind, addr = cluster
    n = 200_000 if kind == "shmbus" else 40_000  # (the mock keeps at most 5 MiB per partition)
    topic = name("prices")
    make_cluster_topic(addr, topic)
    recs = records(n, seed=1)
    sent = send_cluster(addr, topic, recs[: n // 2])
    with Bus(data_dir) as bus:
        add_bridge(data_dir, "in1", addr, "prices-*", "--direction", "in", "--rename", "host1.{topic}")
        for part, rs in send_cluster(addr, topic, recs[n // 2:]).items():
            sent.setdefault(part, []).extend(rs)
        target = f"host1.{topic}"
        wait_for(lambda: target in bus.list_topics(), 30, "the bridge to make the topic on the bus")
        assert len(bus.describe_topic(target).partitions) == PARTS
        got = read_bus(bus, target, n)
        assert sum(map(len, got.values())) == n, bridge_log(data_dir, "in1")
        check_copied(sent, got, topic)
        assert all(provenance(r.headers)[0] == f"kafka:{addr}" for rs in got.values() for r in rs)
        wait_for(lambda: any(t["lag_records"] == 0 and t["copied"] == n and t["direction"] == "in"
                             for b in status(data_dir) for t in b["topics"]), 20, "the status to show no lag")
        # the offsets were committed: the same bridge made anew copies only what is new
        assert sh(data_dir, "bridge", "remove", "in1").returncode == 0
        wait_for(lambda: status(data_dir) == [], 10, "the bridge removed")
        time.sleep(1.5)  # (the supervisor's next check stops the process; its stop commits)
        more = send_cluster(addr, topic, records(1000, seed=2))
        add_bridge(data_dir, "in1", addr, "prices-*", "--direction", "in", "--rename", "host1.{topic}")
        got = read_bus(bus, target, n + 1000)
        assert sum(map(len, got.values())) == n + 1000
        for part, rs in more.items():
            sent[part].extend(rs)
        check_copied(sent, got, topic)


@pytest.mark.timeout(240)
def test_two_way_bridge_copies_no_record_twice(cluster, data_dir):
    """--direction both on one topic name: records from either side reach the other once, none comes back."""
    from shmbus import Bus

    kind, addr = cluster
    n = 10_000
    topic = name("both")
    make_cluster_topic(addr, topic)
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        add_bridge(data_dir, "two", addr, topic, "--direction", "both")
        from_bus = send_bus(bus, topic, records(n, seed=3))
        from_cluster = send_cluster(addr, topic, records(n, seed=4))
        wait_for(lambda: sum(map(len, read_cluster(addr, topic, 2 * n, 5).values())) >= 2 * n, 90,
                 "the bus's records on the cluster")
        wait_for(lambda: sum(map(len, read_bus(bus, topic, 2 * n, 5).values())) >= 2 * n, 90,
                 "the cluster's records on the bus")
        time.sleep(3)  # a record that went back would have done so by now
        on_cluster = read_cluster(addr, topic, 2 * n + 1, 5)
        on_bus = read_bus(bus, topic, 2 * n + 1, 5)
        assert sum(map(len, on_cluster.values())) == 2 * n
        assert sum(map(len, on_bus.values())) == 2 * n
        # the cluster: its own records (no provenance) and the bus's (provenance bus:...)
        copied = {p: [m for m in ms if m.headers() and any(k == HDR for k, _ in m.headers())]
                  for p, ms in on_cluster.items()}
        check_copied(from_bus, copied, topic)
        copied = {p: [r for r in rs if any(k == HDR for k, _ in r.headers)] for p, rs in on_bus.items()}
        check_copied(from_cluster, copied, topic)
        st = status(data_dir)[0]
        dirs = {t["direction"]: t for t in st["topics"]}
        assert dirs["out"]["copied"] == n and dirs["in"]["copied"] == n
        assert dirs["out"]["skipped"] == n and dirs["in"]["skipped"] == n  # the records that came from there


@pytest.mark.timeout(300)
def test_bridge_killed_five_times_loses_nothing(kafka_bus, data_dir, copier):
    """SIGKILL at random moments (5 times) while records stream in; the supervisor restarts the bridge:
    nothing lost, and the duplicates counted are the records on the cluster twice, each run's under one
    in-flight window. Both copiers."""
    from shmbus import Bus
    from shmbus.bridge.runner import WINDOW

    _, addr = kafka_bus
    n = 300_000
    topic = name("kill")
    recs = records(n, seed=5)
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        add_bridge(data_dir, "k", addr, topic)
        # records keep coming while the bridge is killed: 60 chunks, 0.3 s apart
        st = Stream(lambda rs: send_bus(bus, topic, rs), recs, 60, 0.3)
        kills = 5
        kill_bridge(data_dir, "k", kills, st, seed=7)
        st.join(60)
        sent = st.sent
        got = read_cluster(addr, topic, n, 120)
        wait_for(lambda: sum(map(len, read_cluster(addr, topic, 10 ** 9, 2).values())) >= n, 120, "all records")
        time.sleep(2)
        got = read_cluster(addr, topic, 10 ** 9, 3)
        dups = check_copied(sent, got, topic, dups_ok=True)
        assert dups <= kills * WINDOW
        wait_for(lambda: any(t["lag_records"] == 0 for b in status(data_dir) for t in b["topics"]), 30, "no lag")
        counted = status(data_dir)[0]["topics"][0]["duplicates"]
        print(f"duplicates: {dups} on the cluster, {counted} counted, after {kills} kills")
        assert counted == dups
        sup = [b for b in status(data_dir) if b["name"] == "k"][0]
        assert sup["restarts"] == kills
        assert copiers(data_dir, "k") == {copier}


@pytest.mark.timeout(300)
def test_in_bridge_killed_five_times_loses_nothing(kafka_bus, data_dir):
    """Direction in, SIGKILLed at random moments (5 times) while records stream into the cluster: nothing
    lost, and the duplicates counted are the records on the bus twice, each run's under one window."""
    from shmbus import Bus
    from shmbus.bridge.runner import WINDOW

    _, addr = kafka_bus
    n = 120_000
    topic = name("kin")
    make_cluster_topic(addr, topic)
    recs = records(n, seed=9)
    with Bus(data_dir) as bus:
        add_bridge(data_dir, "ki", addr, topic, "--direction", "in")
        # 60 chunks, back to back: the bridge always has records it has not committed yet
        st = Stream(lambda rs: send_cluster(addr, topic, rs), recs, 60, 0.05)
        kills = 5
        kill_bridge(data_dir, "ki", kills, st, seed=8)
        st.join(90)
        sent = st.sent
        wait_for(lambda: sum(map(len, read_bus(bus, topic, 10 ** 9, 1).values())) >= n, 120, "all records")
        wait_for(lambda: any(t["lag_records"] == 0 and t["in_flight"] == 0
                             for b in status(data_dir) for t in b["topics"]), 30, "no lag")
        got = read_bus(bus, topic, 10 ** 9, 2)
        dups = check_copied(sent, got, topic, dups_ok=True)
        assert dups <= kills * WINDOW
        counted = status(data_dir)[0]["topics"][0]["duplicates"]
        print(f"duplicates: {dups} on the bus, {counted} counted, after {kills} kills")
        assert counted == dups


@pytest.mark.timeout(300)
def test_supervisor_killed_twice_the_bridge_loses_nothing(kafka_bus, data_dir):
    """The supervisor SIGKILLed twice while records stream onto the bus: its bridge process stops with it,
    the restarted supervisor starts a new one (after the old one let go of its lock), and the cluster gets
    every record; the duplicates counted are the records there twice."""
    from shmbus import Bus
    from shmbus.bridge.runner import WINDOW
    from shmbus.client import control
    from shmbus.core.supervisor_lock import running_pid

    _, addr = kafka_bus
    n = 120_000
    topic = name("skill")
    recs = records(n, seed=11)
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        add_bridge(data_dir, "sk", addr, topic)
        st = Stream(lambda rs: send_bus(bus, topic, rs), recs, 40, 0.1)
        for _ in range(2):
            wait_for(lambda: _running_pid(data_dir, "sk"), 60, "the bridge running")
            bridge_pid = _running_pid(data_dir, "sk")
            base = total_copied(data_dir, "sk")
            wait_for(lambda: total_copied(data_dir, "sk") > base or st.done.is_set(), 30, "copying")
            sup = running_pid(data_dir)
            assert sup and sup > 0
            os.kill(sup, signal.SIGKILL)  # (the supervisor this test's Bus started)
            wait_for(lambda: not os.path.exists(f"/proc/{bridge_pid}") or _zombie(bridge_pid), 20,
                     "the bridge process to stop with its supervisor")
            control.start(data_dir)
        st.join(120)
        sent = st.sent
        wait_for(lambda: sum(map(len, read_cluster(addr, topic, 10 ** 9, 2).values())) >= n, 120, "all records")
        wait_for(lambda: any(t["lag_records"] == 0 for b in status(data_dir) for t in b["topics"]), 30, "no lag")
        got = read_cluster(addr, topic, 10 ** 9, 3)
        dups = check_copied(sent, got, topic, dups_ok=True)
        assert dups <= 2 * WINDOW
        counted = status(data_dir)[0]["topics"][0]["duplicates"]
        print(f"duplicates: {dups} on the cluster, {counted} counted, after 2 supervisor kills")
        assert counted == dups


class Stream:
    """Sends ``recs`` in ``chunks`` chunks, ``pause_s`` apart, from a thread, with ``send(recs)`` (send_bus or
    send_cluster bound to a topic), gathering what it sent as {partition: [...]} in ``sent``."""

    def __init__(self, send, recs, chunks, pause_s):
        self.sent = {}
        self.failed = []
        self.done = threading.Event()

        def run():
            try:
                size = len(recs) // chunks
                for i in range(chunks):
                    for part, rs in send(recs[i * size:(i + 1) * size]).items():
                        self.sent.setdefault(part, []).extend(rs)
                    time.sleep(pause_s)
            except BaseException as e:  # noqa: BLE001
                self.failed.append(e)
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout_s):
        self.thread.join(timeout_s)
        assert self.done.is_set() and not self.failed, self.failed


def kill_bridge(data_dir, bname, times, stream, seed):
    """SIGKILL the bridge's process ``times`` times, each at a random moment once it copies again, and wait
    for the supervisor's restart each time."""
    rng = random.Random(seed)
    for _ in range(times):
        wait_for(lambda: _running_pid(data_dir, bname), 60, "the bridge running again")
        pid = _running_pid(data_dir, bname)
        base = total_copied(data_dir, bname)
        wait_for(lambda: total_copied(data_dir, bname) > base or stream.done.is_set(), 30, "copying")
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(pid, signal.SIGKILL)  # (the bridge process of this test's own supervisor)
        print(f"killed pid {pid} (streaming: {not stream.done.is_set()})")
        wait_for(lambda: _running_pid(data_dir, bname) not in (None, pid), 60, "the supervisor's restart")


def _running_pid(data_dir, bname):
    """The bridge's pid when the supervisor's child and the status file agree it runs, else None."""
    for b in status(data_dir):
        if b["name"] == bname and b["running"]:
            return b["pid"]
    return None


@pytest.mark.timeout(300)
def test_cluster_down_for_5s_the_bus_goes_on_and_the_bridge_catches_up(kafka_bus, data_dir):
    """The cluster (a bus's Kafka listener) stops for 5 s mid-stream: the bus's producer sends on without
    waiting (it finishes its records while the cluster is down); the bridge then copies everything."""
    from shmbus import Bus
    from shmbus.client import control

    cdir, addr = kafka_bus
    port = addr.rsplit(":", 1)[1]
    n = 60_000
    topic = name("down")
    recs = records(n, seed=6)
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        add_bridge(data_dir, "d", addr, topic)
        sent = send_bus(bus, topic, recs[: n // 3])
        wait_for(lambda: total_copied(data_dir, "d") >= n // 3, 60, "the first third copied")
        cleanup_bus(cdir)  # the cluster stops
        t_down = time.monotonic()
        for part, rs in send_bus(bus, topic, recs[n // 3:]).items():
            sent.setdefault(part, []).extend(rs)
        sent_while_down = time.monotonic() - t_down
        time.sleep(max(0.0, 5.0 - sent_while_down))
        assert status(data_dir)[0]["running"]
        control.start(cdir, args=("--kafka-listener", f"127.0.0.1:{port}"))
        got = read_cluster(addr, topic, n, 120)
        print(f"the producer sent {n - n // 3} records in {sent_while_down:.2f}s while the cluster was down")
        assert sum(map(len, got.values())) >= n, bridge_log(data_dir, "d")
        check_copied(sent, got, topic, dups_ok=True)
        assert "cluster" in (status(data_dir)[0]["last_error"] or "")


@pytest.mark.timeout(180)
def test_topic_deleted_from_the_bus_the_bridge_goes_on(mock_cluster, data_dir):
    """A bridged topic deleted from the bus is dropped; the bridge keeps copying the others, and picks
    up a topic made later that matches its pattern."""
    from shmbus import Bus

    addr = mock_cluster
    pre = name("del")
    a, b, c = f"{pre}-a", f"{pre}-b", f"{pre}-c"
    with Bus(data_dir) as bus:
        bus.create_topic(a, PARTS)
        bus.create_topic(b, PARTS)
        add_bridge(data_dir, "del", addr, f"{pre}-*")
        send_bus(bus, a, records(100, seed=7))
        sent_b = send_bus(bus, b, records(100, seed=8))
        wait_for(lambda: total_copied(data_dir, "del") >= 200, 60, "both topics copied")
        bus.delete_topic(a)
        for part, rs in send_bus(bus, b, records(100, seed=9)).items():
            for k, v, h, ts, off in rs:
                sent_b.setdefault(part, []).append((k, v, h, ts, off))
        bus.create_topic(c, PARTS)
        sent_c = send_bus(bus, c, records(100, seed=10))
        got_b = read_cluster(addr, b, 200)
        check_copied(sent_b, got_b, b)
        check_copied(sent_c, read_cluster(addr, c, 100), c)
        wait_for(lambda: {t["topic"] for t in status(data_dir)[0]["topics"]} == {b, c}, 30,
                 "the status without the deleted topic")
        assert status(data_dir)[0]["running"]


def test_supervisor_status_names_the_bridge_processes(mock_cluster, data_dir):
    """`shmbus status` lists each bridge process; `shmbus stop` stops them with the supervisor."""
    from shmbus import Bus

    with Bus(data_dir):
        add_bridge(data_dir, "st", mock_cluster, "nothing-yet")
        wait_for(lambda: _running_pid(data_dir, "st"), 30, "the bridge running")
        pid = _running_pid(data_dir, "st")
        r = sh(data_dir, "status")
        assert f"bridge st: pid={pid}" in r.stdout, r.stdout
        assert sh(data_dir, "stop").returncode == 0
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
        assert status(data_dir)[0]["running"] is False
