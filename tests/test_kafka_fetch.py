"""Reading the bus with Kafka clients: Fetch, ListOffsets, and the kernel that turns frames into record batches.

The kernel tests decode the batches with kafka-python's own record-batch
reader (``DefaultRecordBatch``, CRC checked); the listener tests read with
confluent-kafka (librdkafka), kafka-python and kcat what the Python API wrote.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

from helpers.frames import frame

pytestmark = pytest.mark.timeout(180)


# --- the kernel: frames -> one RecordBatch v2 ---------------------------------------------------------------

def _hdr_bytes(headers) -> bytes:
    out = b""
    for k, v in headers:
        kb = k.encode()
        out += struct.pack("<H", len(kb)) + kb
        out += struct.pack("<i", -1) if v is None else struct.pack("<i", len(v)) + v
    return out


def _chunk(records):
    """A segment-like chunk of frames for (offset, ts, key, value, headers) and its scan rows."""
    from shmbus.core import native
    from shmbus.layout import frame as F

    data = b"".join(frame(o, ts, k, v, _hdr_bytes(h)) for o, ts, k, v, h in records)
    buf = np.frombuffer(data + b"\0" * 8, np.uint8).copy()
    meta = np.zeros((len(records) + 1, F.META_COLS), np.int64)
    n = native.scan_frames(buf, 0, -1, 0, len(data), len(records), 0, True, meta)
    assert n == len(records)
    return buf, meta[1: n + 1].copy()


def _encode(buf, rows, cap=1 << 20, at=0):
    from shmbus.kernels.kafka_out import encode_batch

    out = np.zeros(cap, np.uint8)
    res = np.zeros(1, np.int64)
    got = encode_batch(buf, rows, len(rows), out, at, cap, res)
    return got, int(res[0]), out


def _decode(data: bytes):
    from kafka.record.default_records import DefaultRecordBatch

    b = DefaultRecordBatch(bytes(data))
    assert b.validate_crc()
    assert b.magic == 2 and b.attributes == 0 and b.producer_id == -1 and b.base_sequence == -1
    return b, [(r.offset, r.timestamp, r.key, r.value, [(k, v) for k, v in r.headers]) for r in b]


def test_kernel_batch_decodes_with_kafka_python_offsets_gaps_nulls_headers():
    rng = random.Random(7)
    recs = []
    off = 1000
    ts = 1_700_000_000_000
    for i in range(300):
        off += rng.choice([1, 1, 1, 2, 17, 1 << 20])  # gaps, as compaction leaves them
        ts += rng.randint(-5000, 5000)  # timestamps need not grow
        key = None if i % 7 == 0 else rng.randbytes(rng.randint(0, 40))
        value = None if i % 11 == 0 else rng.randbytes(rng.choice([0, 1, 100, 3000]))
        headers = [(f"h{j}-é", None if (i + j) % 5 == 0 else rng.randbytes(rng.randint(0, 300)))
                   for j in range(rng.choice([0, 1, 3, 70]))]
        recs.append((off, ts, key, value, headers))
    buf, rows = _chunk(recs)
    got, n, out = _encode(buf, rows)
    assert got > 0 and n == len(recs)
    batch, decoded = _decode(out[:got].tobytes())
    assert batch.base_offset == recs[0][0] and batch.last_offset == recs[-1][0]
    assert batch.first_timestamp == recs[0][1] and batch.max_timestamp == max(r[1] for r in recs)
    assert decoded == [(o, t, k, v, h) for o, t, k, v, h in recs]


def test_kernel_fills_what_fits_and_reports_a_record_larger_than_the_output():
    recs = [(i, 5 + i, b"k%d" % i, b"v" * 1000, [("a", b"b")]) for i in range(50)]
    buf, rows = _chunk(recs)
    got, n, out = _encode(buf, rows, cap=10_000)
    assert 0 < n < 50 and got <= 10_000
    _, decoded = _decode(out[:got].tobytes())
    assert [d[0] for d in decoded] == list(range(n))
    # the rest goes into the next batch, written after the first one
    got2, n2, out2 = _encode(buf, rows[n:], cap=1 << 20)
    _, decoded2 = _decode(out2[:got2].tobytes())
    assert [d[0] for d in decoded2] == list(range(n, 50))

    from shmbus.kernels.kafka_out import BATCH_HEADER_BYTES, KO_TOO_SMALL

    big = [(9, 1, None, b"x" * 100_000, [])]
    buf, rows = _chunk(big)
    got, need, _ = _encode(buf, rows, cap=4096)
    assert got == KO_TOO_SMALL and BATCH_HEADER_BYTES + 100_000 < need <= BATCH_HEADER_BYTES + 100_011
    got, n, out = _encode(buf, rows, cap=need)
    assert got == need and n == 1
    assert _decode(out[:got].tobytes())[1] == [(9, 1, None, b"x" * 100_000, [])]


def test_kernel_writes_at_an_offset_into_the_output():
    recs = [(3, 10, b"k", b"v", [])]
    buf, rows = _chunk(recs)
    got, n, out = _encode(buf, rows, at=100)
    assert n == 1 and not out[:100].any()
    assert _decode(out[100: 100 + got].tobytes())[1] == [(3, 10, b"k", b"v", [])]


def test_kernel_answers_bad_header_bytes_with_a_status():
    from shmbus.kernels.kafka_out import KO_BAD_HEADERS

    good = (1, 1, b"k", b"v", [("x", b"y")])
    data = b"".join([frame(0, 1, b"k", b"v", _hdr_bytes([("x", b"y")])),
                     frame(1, 1, b"k", b"v", b"\x05\x00ab")])  # key length 5, 2 bytes left
    from shmbus.core import native
    from shmbus.layout import frame as F

    buf = np.frombuffer(data, np.uint8).copy()
    meta = np.zeros((3, F.META_COLS), np.int64)
    assert native.scan_frames(buf, 0, -1, 0, len(data), 2, 0, True, meta) == 2
    rows = meta[1:3].copy()
    got, n, out = _encode(buf, rows)
    assert n == 1  # the batch ends before the bad record
    assert _decode(out[:got].tobytes())[1] == [(0, 1, b"k", b"v", [("x", b"y")])]
    got, _, _ = _encode(buf, rows[1:])
    assert got == KO_BAD_HEADERS
    del good


def test_kernel_refuses_rows_outside_the_buffer():
    from shmbus.kernels.kafka_out import KO_BAD_ROW
    from shmbus.layout import frame as F

    buf, rows = _chunk([(0, 1, b"k", b"v" * 10, [])])
    rows[0, F.M_VLEN] = 1 << 20
    assert _encode(buf, rows)[0] == KO_BAD_ROW


def test_kernel_header_bytes_that_change_after_measuring_give_a_status_and_stay_in_bounds():
    """A lapped ring's bytes change between the kernel's measuring pass and its writing pass: the writing
    pass checks every length again, so it stops inside both arrays instead of following the new bytes."""
    from shmbus.kernels.kafka_out import _headers_size, _put_headers

    block = np.frombuffer(_hdr_bytes([("ab", b"xyz"), ("c", None)]), np.uint8).copy()
    count, size = _headers_size(block, 0, len(block))
    assert count == 2
    out = np.full(size + 64, 0xEE, np.uint8)
    assert _put_headers(out, 0, size, block, 0, len(block)) == size  # unchanged: fits exactly
    changed = block.copy()
    changed[0:2] = (0xFF, 0xFF)  # now a key of 65535 bytes, past the block
    out[:] = 0xEE
    assert _put_headers(out, 0, size, changed, 0, len(changed)) == -1
    assert (out[size:] == 0xEE).all()
    grown = np.frombuffer(_hdr_bytes([("ab", b"xyz" * 20), ("c", None)]), np.uint8).copy()
    out[:] = 0xEE  # a longer (valid) block than was measured: its bytes would overrun the room
    assert _put_headers(out, 0, size, grown, 0, len(grown)) == -1
    assert (out[size:] == 0xEE).all()


# --- real clients through the listener ----------------------------------------------------------------------

def _produce(bus, topic, n, partitions, seed=1, value_bytes=(0, 200)):
    """Write ``n`` records with the Python API; returns {partition: [(offset, ts, key, value, headers)]}."""
    rng = random.Random(seed)
    want = {p: [] for p in range(partitions)}
    base_ts = int(time.time() * 1000) - 3_600_000  # recent: retention (7 days by time) keeps them
    with bus.producer() as prod:
        for i in range(n):
            p = i % partitions
            key = None if i % 9 == 0 else b"key-%d" % i
            value = None if i % 13 == 0 else rng.randbytes(rng.randint(*value_bytes))
            headers = [] if i % 3 else [("h", b"v%d" % i), ("null", None), ("empty", b"")]
            ts = base_ts + i * 7 + rng.randint(0, 5)
            md = prod.send(topic, value=value, key=key, headers=headers, partition=p, timestamp_ms=ts)
            want[p].append((md.offset, ts, key, value, headers))
        prod.flush()
    return want


def _confluent_read(bootstrap, topic, partitions, total, offset=0, **conf):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-no-commits", "enable.auto.commit": False,
                  "enable.auto.offset.store": False, "auto.offset.reset": "error", **conf})
    got = {p: [] for p in range(partitions)}
    try:
        c.assign([TopicPartition(topic, p, offset) for p in range(partitions)])
        deadline = time.monotonic() + 120
        n = 0
        while n < total and time.monotonic() < deadline:
            for m in c.consume(num_messages=10000, timeout=1.0):
                assert m.error() is None, m.error()
                got[m.partition()].append((m.offset(), m.timestamp()[1], m.key(), m.value(),
                                           [(k, v) for k, v in (m.headers() or [])]))
                n += 1
    finally:
        c.close()
    return got


@pytest.mark.timeout(300)
def test_confluent_kafka_reads_what_the_python_api_wrote(kbus, ktopic):
    topic = ktopic(4)
    want = _produce(kbus.bus, topic, 50_000, 4)
    got = _confluent_read(kbus.bootstrap, topic, 4, 50_000)
    for p in range(4):
        assert len(got[p]) == len(want[p])
        assert got[p] == want[p]


def _kafka_python_consumer(bootstrap, **kw):
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         request_timeout_ms=40000, **kw)


def _kafka_python_read(bootstrap, topic, partitions, total, offset=0):
    from kafka import TopicPartition

    c = _kafka_python_consumer(bootstrap, auto_offset_reset="none")
    got = {p: [] for p in range(partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, offset)
        deadline = time.monotonic() + 120
        n = 0
        while n < total and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=1000, max_records=5000).items():
                for m in msgs:
                    got[tp.partition].append((m.offset, m.timestamp, m.key, m.value, list(m.headers)))
                    n += 1
    finally:
        c.close()
    return got


@pytest.mark.timeout(300)
def test_kafka_python_reads_with_assign_and_seek(kbus, ktopic):
    topic = ktopic(2)
    want = _produce(kbus.bus, topic, 4000, 2, seed=2)
    got = _kafka_python_read(kbus.bootstrap, topic, 2, 4000)
    assert got == want
    # from the middle: a seek lands on that offset exactly
    got = _kafka_python_read(kbus.bootstrap, topic, 2, 2 * 1500, offset=500)
    assert got == {p: want[p][500:] for p in range(2)}


def _reader(name):
    return {"confluent": _confluent_read, "kafka-python": _kafka_python_read}[name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_reads_records_that_are_only_on_disk_then_goes_on_in_the_ring(kbus, ktopic, client):
    from helpers.bus import wait_spilled

    topic = ktopic(1, {"ring.bytes": 65536, "segment.bytes": 100_000})
    first = _produce(kbus.bus, topic, 6000, 1, seed=3, value_bytes=(50, 300))[0]
    wait_spilled(kbus.bus, topic, 0, len(first) - 1)
    pdir = f"{kbus.data_dir}/topics/{topic}/0"
    import os

    assert len([f for f in os.listdir(pdir) if f.endswith(".log")]) > 5  # spread over many segments
    # the ring holds 64 KiB: offset 0 and most of what follows are on disk only
    got = _reader(client)(kbus.bootstrap, topic, 1, len(first))[0]
    assert got == first
    # a reader that reached the end of the disk reads on from the ring: more records, read from offset 0 again
    # by a new reader (it crosses from the segments into the ring within one fetch or a few)
    more = _produce(kbus.bus, topic, 200, 1, seed=4)[0]
    got = _reader(client)(kbus.bootstrap, topic, 1, len(first) + len(more))[0]
    assert [r[0] for r in got] == list(range(len(first) + len(more)))
    assert got[len(first):] == more


def test_kafka_python_offsets_for_times_beginning_and_end(kbus, ktopic):
    from kafka import TopicPartition

    topic = ktopic(2)
    with kbus.bus.producer() as prod:
        for i in range(100):
            prod.send(topic, value=b"x", partition=i % 2, timestamp_ms=10_000 + 100 * i)
        prod.flush()
    c = _kafka_python_consumer(kbus.bootstrap)
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        assert c.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
        assert c.end_offsets(tps) == {tps[0]: 50, tps[1]: 50}
        # partition 0 has timestamps 10000, 10200, ...; partition 1 10100, 10300, ...
        got = c.offsets_for_times({tps[0]: 10_250, tps[1]: 10_100})
        assert (got[tps[0]].offset, got[tps[0]].timestamp) == (2, 10_400)
        assert (got[tps[1]].offset, got[tps[1]].timestamp) == (0, 10_100)
        got = c.offsets_for_times({tps[0]: 10**12, tps[1]: 0})
        assert got[tps[0]] is None  # no record that late
        assert (got[tps[1]].offset, got[tps[1]].timestamp) == (0, 10_100)
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_offsets_for_times_finds_records_on_disk(kbus, ktopic):
    from kafka import TopicPartition

    from helpers.bus import wait_spilled

    topic = ktopic(1, {"ring.bytes": 65536, "segment.bytes": 50_000})
    t0 = int(time.time() * 1000) - 3_600_000  # recent: retention (7 days by time) keeps them
    with kbus.bus.producer() as prod:
        for i in range(3000):
            prod.send(topic, value=b"v" * 100, partition=0, timestamp_ms=t0 + i)
        prod.flush()
    wait_spilled(kbus.bus, topic, 0, 2999)
    c = _kafka_python_consumer(kbus.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        for want in (0, 7, 1234, 2999):
            got = c.offsets_for_times({tp: t0 + want})[tp]
            assert (got.offset, got.timestamp) == (want, t0 + want)
    finally:
        c.close()


def test_kcat_shows_key_partition_offset_timestamp_headers_value(kbus, ktopic):
    topic = ktopic(2)
    with kbus.bus.producer() as prod:
        prod.send(topic, value=b"hello", key=b"k1", partition=1, timestamp_ms=1_234_567, headers=[("a", b"b")])
        prod.send(topic, value=b"world", key=b"k2", partition=1, timestamp_ms=1_234_568,
                  headers=[("x", b"1"), ("y", b"2")])
        prod.flush()
    r = subprocess.run(["kcat", "-b", kbus.bootstrap, "-C", "-t", topic, "-p", "1", "-o", "beginning", "-e",
                        "-f", "%k %p %o %T %h %s\n"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["k1 1 0 1234567 a=b hello", "k2 1 1 1234568 x=1,y=2 world"]


@pytest.mark.timeout(120)
def test_a_waiting_consumer_is_woken_by_a_new_record_and_idles_without_requests(kbus, ktopic):
    from kafka import TopicPartition

    from helpers.kafka import listener_status

    topic = ktopic(1)
    with kbus.bus.producer() as prod:
        prod.send(topic, value=b"first", partition=0)
        prod.flush()
    # the broker may hold each Fetch up to 30 s; a record produced while it waits must come at once
    c = _kafka_python_consumer(kbus.bootstrap, fetch_max_wait_ms=30000, auto_offset_reset="none")
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 1)
        assert c.poll(timeout_ms=500) == {}
        before = listener_status(kbus.data_dir)["requests"]
        assert c.poll(timeout_ms=3000) == {}  # waiting at the end: one long-polling Fetch, not a busy loop
        idle_requests = listener_status(kbus.data_dir)["requests"] - before
        assert idle_requests <= 3

        def later():
            time.sleep(1)
            with kbus.bus.producer() as prod:
                prod.send(topic, value=b"later", key=b"k", partition=0)
                prod.flush()

        t = threading.Thread(target=later)
        t.start()
        got = []
        deadline = time.monotonic() + 20  # < the 30 s the broker may wait: only the record's arrival ends the wait
        while not got and time.monotonic() < deadline:
            got = [m for msgs in c.poll(timeout_ms=1000).values() for m in msgs]
        t.join()
        assert [(m.offset, m.key, m.value) for m in got] == [(1, b"k", b"later")]
    finally:
        c.close()


# --- errors, seen by clients and on the wire ----------------------------------------------------------------

def _request(bootstrap, req) -> bytes:
    """Send one request on a new connection; the response's bytes (its header included)."""
    host, port = bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        req.with_header(correlation_id=7, client_id="test")
        s.sendall(req.encode(header=True, framed=True))
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        (n,) = struct.unpack(">i", head)
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            assert chunk, "the listener closed the connection"
            body += chunk
    return body


def _fetch(bootstrap, topic, partition, offset, version=12, max_wait_ms=0):
    from kafka.protocol.consumer import FetchRequest, FetchResponse

    R = FetchRequest
    req = R[version](replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                     session_id=0, session_epoch=-1,
                     topics=[R.FetchTopic(topic=topic, partitions=[R.FetchTopic.FetchPartition(
                         partition=partition, current_leader_epoch=-1, fetch_offset=offset, last_fetched_epoch=-1,
                         log_start_offset=-1, partition_max_bytes=1 << 20)])],
                     forgotten_topics_data=[], rack_id="")
    resp = FetchResponse.decode(_request(bootstrap, req), version=version, header=True)
    (t,) = resp.responses
    (p,) = t.partitions
    return p


@pytest.mark.parametrize("version", [4, 7, 11, 12])
def test_fetch_errors_on_the_wire(kbus, ktopic, version):
    from kafka.record.memory_records import MemoryRecords

    topic = ktopic(1)
    with kbus.bus.producer() as prod:
        for i in range(5):
            prod.send(topic, value=b"v%d" % i, partition=0, timestamp_ms=100 + i)
        prod.flush()
    p = _fetch(kbus.bootstrap, topic, 0, 2, version)
    assert p.error_code == 0 and p.high_watermark == 5
    recs = [r for b in MemoryRecords(p.records) for r in b]
    assert [(r.offset, r.value) for r in recs] == [(2, b"v2"), (3, b"v3"), (4, b"v4")]
    assert _fetch(kbus.bootstrap, topic, 0, 5, version).records in (b"", None)  # at the end: nothing, no error
    assert _fetch(kbus.bootstrap, topic, 0, 6, version).error_code == 1  # OFFSET_OUT_OF_RANGE
    assert _fetch(kbus.bootstrap, topic, 0, -5, version).error_code == 1
    assert _fetch(kbus.bootstrap, topic, 1, 0, version).error_code == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert _fetch(kbus.bootstrap, "no-such-topic", 0, 0, version).error_code == 3
    for bad in ("..", "../" + topic, "", "a" * 300):  # not topic names: never looked up as paths
        assert _fetch(kbus.bootstrap, bad, 0, 0, version).error_code == 3


def test_confluent_kafka_applies_auto_offset_reset_on_out_of_range(kbus, ktopic):
    topic = ktopic(1)
    want = _produce(kbus.bus, topic, 10, 1)[0]
    got = _confluent_read(kbus.bootstrap, topic, 1, 10, offset=1_000_000, **{"auto.offset.reset": "earliest"})[0]
    assert got == want


def test_kafka_python_applies_auto_offset_reset_on_out_of_range(kbus, ktopic):
    from kafka import TopicPartition

    topic = ktopic(1)
    want = _produce(kbus.bus, topic, 10, 1)[0]
    c = _kafka_python_consumer(kbus.bootstrap, auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 1_000_000)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                got.extend((m.offset, m.timestamp, m.key, m.value, list(m.headers)) for m in msgs)
        assert got == want
    finally:
        c.close()


def test_partition_max_bytes_limits_and_a_larger_first_record_still_comes_whole(kbus, ktopic):
    from kafka.protocol.consumer import FetchRequest, FetchResponse
    from kafka.record.memory_records import MemoryRecords

    topic = ktopic(2)
    with kbus.bus.producer() as prod:
        for i in range(100):
            prod.send(topic, value=b"s" * 1000, partition=0)
        prod.send(topic, value=b"L" * 200_000, partition=1)
        prod.send(topic, value=b"after", partition=1)
        prod.flush()

    def fetch(parts, max_bytes=1 << 20):
        R = FetchRequest
        req = R[12](replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=max_bytes, isolation_level=0, session_id=0,
                    session_epoch=-1, forgotten_topics_data=[], rack_id="",
                    topics=[R.FetchTopic(topic=topic, partitions=[R.FetchTopic.FetchPartition(
                        partition=p, current_leader_epoch=-1, fetch_offset=o, last_fetched_epoch=-1,
                        log_start_offset=-1, partition_max_bytes=pmax) for p, o, pmax in parts])])
        resp = FetchResponse.decode(_request(kbus.bootstrap, req), version=12, header=True)
        return {p.partition_index: [(r.offset, len(r.value)) for b in MemoryRecords(p.records) for r in b]
                for t in resp.responses for p in t.partitions}

    got = fetch([(0, 0, 10_000)])[0]
    assert 5 <= len(got) < 10 and [o for o, _ in got] == list(range(len(got)))
    # the first partition's first record is larger than its limit: it comes whole, and alone
    assert fetch([(1, 0, 1000)])[1] == [(0, 200_000)]
    # ... but not when another partition's records came first in the response
    got = fetch([(0, 0, 5000), (1, 0, 1000)])
    assert len(got[0]) >= 1 and got[1] == []
    # the response's max_bytes ends it across partitions
    got = fetch([(0, 0, 1 << 20), (1, 1, 1 << 20)], max_bytes=20_000)
    assert 10 <= len(got[0]) <= 20 and sum(n for part in got.values() for _, n in part) <= 20_000
    got = fetch([(0, 0, 1 << 20), (1, 0, 1 << 20)], max_bytes=20_000)
    assert 10 <= len(got[0]) <= 20 and got[1] == []


def test_kafka_python_reads_a_record_larger_than_its_fetch_limits(kbus, ktopic):
    from kafka import TopicPartition

    topic = ktopic(1)
    with kbus.bus.producer() as prod:
        prod.send(topic, value=b"x" * 300_000, key=b"big", partition=0)
        prod.send(topic, value=b"small", partition=0)
        prod.flush()
    c = _kafka_python_consumer(kbus.bootstrap, max_partition_fetch_bytes=4096, fetch_max_bytes=8192,
                               auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                got.extend((m.offset, m.key, len(m.value)) for m in msgs)
        assert got == [(0, b"big", 300_000), (1, None, 5)]
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_a_record_whose_header_bytes_do_not_parse_is_answered_corrupt_message(tmp_path):
    import crc32c as ref_crc
    from shmbus import Bus

    from helpers.bus import cleanup_bus, wait_spilled
    from helpers.kafka import start_listener, supervisor_log
    from shmbus.layout import frame as F

    d = str(tmp_path / "bus")
    try:
        start_listener(d)
        with Bus(d, autostart=False) as bus:
            bus.create_topic("c", 1)
            with bus.producer() as prod:
                for i in range(3):
                    prod.send("c", value=b"v%d" % i, key=b"k", headers=[("h", b"x")], partition=0)
                prod.flush()
            wait_spilled(bus, "c", 0, 2)
        cleanup_bus(d)  # stops the supervisor
        # record 1's header block claims a key of 65535 bytes; its checksum is made to match
        path = f"{d}/topics/c/0/{0:020d}.log"
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            pos = struct.unpack_from("<Q", data, 0)[0] & F.LEN_MASK
            kl, vl, hl = struct.unpack_from("<iii", data, pos + F.OFF_KEY_LEN)
            h = pos + F.OFF_BODY + kl + vl
            data[h: h + 2] = b"\xff\xff"
            crc = ref_crc.crc32c(bytes(data[pos + F.OFF_OFFSET: pos + F.OFF_CRC])
                                 + bytes(data[pos + F.OFF_BODY: pos + F.OFF_BODY + kl + vl + hl]))
            struct.pack_into("<I", data, pos + F.OFF_CRC, crc)
            f.seek(0)
            f.write(data)
        boot = start_listener(d)
        p = _fetch(boot, "c", 0, 0)
        from kafka.record.memory_records import MemoryRecords

        assert p.error_code == 0
        assert [(r.offset, r.value) for b in MemoryRecords(p.records) for r in b] == [(0, b"v0")]
        assert _fetch(boot, "c", 0, 1).error_code == 2  # CORRUPT_MESSAGE
        assert "topic='c' partition=0 offset=1: CORRUPT_MESSAGE" in supervisor_log(d)
        p = _fetch(boot, "c", 0, 2)  # past it, reading goes on
        assert [(r.offset, r.value) for b in MemoryRecords(p.records) for r in b] == [(2, b"v2")]
    finally:
        cleanup_bus(d)


def test_confluent_kafka_watermarks_and_offsets_for_times(kbus, ktopic):
    from confluent_kafka import Consumer, TopicPartition

    topic = ktopic(1)
    t0 = int(time.time() * 1000) - 60_000
    with kbus.bus.producer() as prod:
        for i in range(20):
            prod.send(topic, value=b"x", partition=0, timestamp_ms=t0 + 10 * i)
        prod.flush()
    c = Consumer({"bootstrap.servers": kbus.bootstrap, "group.id": "unused-no-commits"})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 20)
        (got,) = c.offsets_for_times([TopicPartition(topic, 0, t0 + 55)], timeout=10)
        assert got.error is None and got.offset == 6
    finally:
        c.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_reads_while_a_producer_laps_a_small_ring(kbus, ktopic, client):
    """The spiller releases ring bytes under a reader that falls behind: what it read there is read again
    from disk, so every record arrives once, intact, in order."""
    topic = ktopic(1, {"ring.bytes": 65536, "segment.bytes": 200_000})
    want = {}
    done = threading.Event()

    def produce():
        try:
            want.update(_produce(kbus.bus, topic, 20_000, 1, seed=9, value_bytes=(100, 400)))
        finally:
            done.set()

    t = threading.Thread(target=produce)
    t.start()
    try:
        got = _reader(client)(kbus.bootstrap, topic, 1, 20_000)[0]
    finally:
        t.join()
    assert done.is_set() and got == want[0]


@pytest.mark.timeout(120)
def test_confluent_kafka_waiting_at_the_end_gets_a_later_record(kbus, ktopic):
    from confluent_kafka import Consumer, TopicPartition

    topic = ktopic(1)
    c = Consumer({"bootstrap.servers": kbus.bootstrap, "group.id": "unused-no-commits", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 30000})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        assert c.poll(2.0) is None

        def later():
            time.sleep(1)
            with kbus.bus.producer() as prod:
                prod.send(topic, value=b"later", partition=0)
                prod.flush()

        t = threading.Thread(target=later)
        t.start()
        m = c.poll(20.0)  # < the 30 s the broker may hold the Fetch: the record's arrival ends the wait
        t.join()
        assert m is not None and m.error() is None and (m.offset(), m.value()) == (0, b"later")
    finally:
        c.close()
