"""The bridge's two copiers of direction out, held to the same result.

``NativeOutCopier`` (bridge/_rdk.c: frame rows straight into librdkafka) and
``OutCopier`` (confluent-kafka's Python API) run in this process, each to its own
target topic on a Kafka cluster (librdkafka's mock cluster, or
``SHMBUS_TEST_KAFKA``), from the same bus partitions; the records on the cluster
must be the same. Then the compiled loop alone on rows made by hand: a frame
the spiller released while it was copied, header bytes that do not parse,
lengths that leave the buffer.
"""

from __future__ import annotations

import os
import time
import uuid

import confluent_kafka as ck
import numpy as np
import pytest

from helpers.kafka import kafka_cluster
from shmbus.layout import frame as F
from shmbus.layout import ring as ring_layout

PARTS = 2


@pytest.fixture(scope="module")
def cluster():
    with kafka_cluster() as addr:
        yield addr


@pytest.fixture
def rdk():
    from shmbus.bridge import fast

    mod = fast.load()
    if mod is None:
        if os.environ.get("SHMBUS_NATIVE") == "0":
            pytest.skip("SHMBUS_NATIVE=0 selects the Python copier")
        raise AssertionError(f"the compiled copier is not available: {fast.REASON}")
    return mod


def shapes(origin_other: bytes):
    """(partition, key, value, headers, copied?) records of every shape the copiers must carry alike."""
    other = origin_other.decode()
    return [
        (0, b"k", b"v", [], True),
        (0, None, b"null key", [], True),
        (0, b"", b"empty key", [], True),
        (0, b"k", None, [], True),  # a tombstone
        (0, b"k", b"", [("h", b"")], True),
        (1, b"k", b"null header value", [("h", None)], True),
        (1, b"k", b"empty header key", [("", b"x")], True),
        (1, b"k", b"unicode", [("ключ", "значение".encode())], True),
        (1, b"k", b"many", [(f"h{i}", b"%d" % i) for i in range(50)], True),
        (1, b"big", b"x" * 200_000, [("h", b"y" * 1000)], True),
        (0, b"k", b"from the cluster", [("shmbus.bridge", f"{other} t 0 5".encode())], False),
        (0, b"k", b"provenance elsewhere", [("shmbus.bridge", b"kafka:elsewhere t 0 5")], True),
        (0, b"k", b"origin as prefix", [("shmbus.bridge", f"{other}x t 0 5".encode())], True),
        (1, b"k", b"only the origin", [("shmbus.bridge", other.encode())], False),
        (1, b"k", b"last", [("a", b"1"), ("b", b"2")], True),
    ]


def read_topic(addr, topic, n, timeout_s=60):
    """{partition: [(key, value, headers, timestamp)]} once n records arrived."""
    c = ck.Consumer({"bootstrap.servers": addr, "group.id": f"check-{uuid.uuid4().hex[:6]}", "log_level": 0,
                     "enable.auto.commit": False})
    try:
        c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in range(PARTS)])
        got = {}
        deadline = time.monotonic() + timeout_s
        while sum(map(len, got.values())) < n and time.monotonic() < deadline:
            for m in c.consume(100, 0.2):
                if m.error() is None:
                    got.setdefault(m.partition(), []).append((m.key(), m.value(), m.headers() or [],
                                                              m.timestamp()[1]))
        return got
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_both_copiers_copy_every_shape_of_record_alike(cluster, data_dir, rdk):
    """Null and empty keys and values, null header values, empty and non-ASCII header names, many
    headers, a 200 KB value, and provenance headers: from the other side (not copied) or not."""
    from shmbus import Bus
    from shmbus.bridge import config as B
    from shmbus.bridge import provenance as P
    from shmbus.bridge.runner import NativeOutCopier, OutCopier

    topic = f"shapes-{uuid.uuid4().hex[:8]}"
    with Bus(data_dir) as bus:
        bus.create_topic(topic, PARTS)
        recs = shapes(P.cluster_origin(cluster))
        offsets = {}
        with bus.producer() as p:
            for i, (part, k, v, h, _copied) in enumerate(recs):
                offsets[i] = p.send(topic, v, key=k, headers=h, partition=part, timestamp_ms=1_760_000_000_000 + i
                                    ).offset
        os.makedirs(os.path.join(data_dir, "bridges"), exist_ok=True)
        errors = []
        py = OutCopier(B.check("py", f"kafka://{cluster}", topic, "out", "py.{topic}"), bus, data_dir, errors.append)
        c = NativeOutCopier(B.check("c", f"kafka://{cluster}", topic, "out", "c.{topic}"), bus, data_dir,
                            errors.append, 0, rdk)
        want = sum(1 for r in recs if r[4])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for cp in (py, c):
                    cp.step(10)
                if all(sum(cp.copied.values()) == want and cp.unsaved() == 0 and cp.read and
                       all(cp.acked[k] == cp.read[k] for k in cp.read) for cp in (py, c)):
                    break
            for cp in (py, c):
                assert sum(cp.copied.values()) == want and sum(cp.skipped.values()) == len(recs) - want, errors
                assert cp.acked == {(topic, p): sum(1 for r in recs if r[0] == p) for p in range(PARTS)}, errors
        finally:
            py.close()
            c.close()
        got_py = read_topic(cluster, f"py.{topic}", want)
        got_c = read_topic(cluster, f"c.{topic}", want)
        expect = {}
        for i, (part, k, v, h, copied) in enumerate(recs):
            if copied:
                prov = P.value(P.bus_origin(bus.id), topic, part, offsets[i])
                expect.setdefault(part, []).append((k, v, [*h, (P.HEADER, prov)], 1_760_000_000_000 + i))
        assert got_c == expect
        assert got_py == expect


def rows_for(bodies, positions, start=ring_layout.HEADER_BYTES):
    """A buffer with the bodies (key, value, header bytes) back to back from ``start``, and their scan rows."""
    from shmbus.core.headers import encode_headers

    buf = np.zeros(start + sum(len(k) + len(v) + len(encode_headers(h)) for k, v, h in bodies) + 64, np.uint8)
    rows = np.zeros((len(bodies), F.META_COLS), np.int64)
    at = start
    for i, ((k, v, h), pos) in enumerate(zip(bodies, positions)):
        hb = encode_headers(h)
        body = k + v + hb
        buf[at: at + len(body)] = np.frombuffer(body, np.uint8)
        rows[i, F.M_POS], rows[i, F.M_OFFSET], rows[i, F.M_TS] = pos, 10 + i, 1_760_000_000_000 + i
        rows[i, F.M_KLEN], rows[i, F.M_VLEN], rows[i, F.M_HLEN], rows[i, F.M_BODY] = len(k), len(v), len(hb), at
        rows[i, F.M_LEN] = F.HEADER_BYTES + len(body)
        at += len(body)
    return buf, rows


def producer(rdk, addr, topic):
    p = rdk.Producer({"bootstrap.servers": addr, "enable.idempotence": "true", "linger.ms": "1", "log_level": "0"})
    ck.Producer({"bootstrap.servers": addr, "log_level": 0}).list_topics(topic, timeout=10)  # (auto-created)
    return p, p.topic(topic, PARTS)


@pytest.mark.timeout(120)
def test_compiled_copier_stops_at_a_frame_the_spiller_released(cluster, rdk):
    """A ring read: each frame is copied, then checked against the ring's reclaiming position; the
    first one below it stops the loop (STALE) before it reaches librdkafka. A segment chunk is not
    checked."""
    topic = f"stale-{uuid.uuid4().hex[:8]}"
    p, t = producer(rdk, cluster, topic)
    bodies = [(b"k%d" % i, b"v%d" % i, [("h", b"%d" % i)]) for i in range(4)]
    buf, rows = rows_for(bodies, [9000, 9100, 500, 9300])
    buf[ring_layout.OFF_RECLAIMING: ring_layout.OFF_RECLAIMING + 8] = np.frombuffer(np.int64(1000).tobytes(), np.uint8)
    k, sent, status = p.produce_frames(t, 0, buf, rows, b"bus:x t 0 ", b"kafka:y", buf.ctypes.data)
    assert (k, sent, status) == (2, 2, rdk.STALE)
    k, sent, status = p.produce_frames(t, 1, buf, rows, b"bus:x t 1 ", b"kafka:y", 0)  # (a private chunk)
    assert (k, sent, status) == (4, 4, rdk.DONE)
    assert p.flush(10_000) == 0
    assert p.state(t, 0) == (2, 2, 12, 0) and p.state(t, 1) == (4, 4, 14, 0)
    got = read_topic(cluster, topic, 6)
    assert [v for _k, v, _h, _ts in got[0]] == [b"v0", b"v1"]
    assert [h for _k, _v, h, _ts in got[1]][3] == [("h", b"3"), ("shmbus.bridge", b"bus:x t 1 13")]
    p.close()


@pytest.mark.timeout(120)
def test_compiled_copier_refuses_rows_that_do_not_parse(cluster, rdk):
    """Header bytes that do not parse, and lengths past the buffer, stop the loop (CORRUPT) at that row:
    the rows before it are sent, nothing is read outside the buffer. A record librdkafka refuses stops
    it too (ERROR), and errors() says why."""
    topic = f"corrupt-{uuid.uuid4().hex[:8]}"
    p, t = producer(rdk, cluster, topic)
    bodies = [(b"k%d" % i, b"v%d" % i, [("h", b"%d" % i)]) for i in range(3)]
    buf, rows = rows_for(bodies, [9000, 9100, 9200])
    bad = rows.copy()
    bad[1, F.M_HLEN] -= 1  # a header block one byte short: its value runs past it
    assert p.produce_frames(t, 0, buf, bad, b"bus:x t 0 ", b"kafka:y", 0) == (1, 1, rdk.CORRUPT)
    for col, value in ((F.M_VLEN, 1 << 40), (F.M_BODY, len(buf) - 2), (F.M_BODY, -8), (F.M_KLEN, -2),
                       (F.M_HLEN, -1)):
        bad = rows.copy()
        bad[0, col] = value
        assert p.produce_frames(t, 1, buf, bad, b"bus:x t 1 ", b"kafka:y", 0) == (0, 0, rdk.CORRUPT), (col, value)
    big, big_rows = rows_for([(b"k", b"v", []), (b"k", b"x" * 1_100_000, []), (b"k", b"w", [])], [0, 0, 0])
    assert p.produce_frames(t, 1, big, big_rows, b"bus:x t 1 ", b"kafka:y", 0) == (1, 1, rdk.ERROR)
    (code, kind, topic, part, text), = p.errors()  # (librdkafka refused it: larger than message.max.bytes)
    assert (kind, topic, part) == (rdk.E_REFUSED, t, 1) and "too large" in text.lower(), text
    with pytest.raises(ValueError):
        p.produce_frames(t, 0, buf, rows[:, :5].copy(), b"p", b"o", 0)  # (not META_COLS columns)
    with pytest.raises(IndexError):
        p.produce_frames(t, PARTS, buf, rows, b"p", b"o", 0)
    assert p.flush(10_000) == 0
    assert p.state(t, 0) == (1, 1, 11, 0) and p.state(t, 1) == (1, 1, 11, 0)
    p.close()
    with pytest.raises(RuntimeError):
        p.poll(0)
