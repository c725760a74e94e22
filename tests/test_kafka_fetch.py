"""Reading the bus with Kafka clients: Fetch, ListOffsets, and the kernel that turns frames into record batches.

The kernel tests decode the batches with kafka-python's own record-batch
reader (``DefaultRecordBatch``, CRC checked); the listener tests read with
confluent-kafka (librdkafka), kafka-python and kcat what the Python API wrote.
"""

from __future__ import annotations

import os
import random
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


# --- real clients through the listener ----------------------------------------------------------------------

def _offers_produce() -> bool:
    from shmbus.kafka import handlers  # noqa: F401  (registers them)
    from shmbus.kafka.registry import HANDLERS

    h = HANDLERS.get(0)
    return h is not None and h.max_version >= 3


# librdkafka fetches with message format v2 only from a broker whose ApiVersions offer Produce v3+ and Fetch v4+
# (its MSGVER2 feature); without Produce it fails every Fetch locally as "not supported by broker"
librdkafka = pytest.mark.skipif(not _offers_produce(), reason="librdkafka (confluent-kafka, kcat) fetches only from "
                                "a broker that offers Produce v3+, which this build of the listener does not")


def _produce(bus, topic, n, partitions, seed=1, value_bytes=(0, 200)):
    """Write ``n`` records with the Python API; returns {partition: [(offset, ts, key, value, headers)]}."""
    rng = random.Random(seed)
    want = {p: [] for p in range(partitions)}
    base_ts = 1_600_000_000_000
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


@librdkafka
@pytest.mark.timeout(300)
def test_confluent_kafka_reads_what_the_python_api_wrote(kbus, ktopic):
    topic = ktopic(4)
    want = _produce(kbus.bus, topic, 50_000, 4)
    got = _confluent_read(kbus.bootstrap, topic, 4, 50_000)
    for p in range(4):
        assert len(got[p]) == len(want[p])
        assert got[p] == want[p]
