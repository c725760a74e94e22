"""Produce through the Kafka listener: real Kafka clients write, the Python API reads.

Records written by confluent-kafka (librdkafka), kafka-python and kcat come
back through ``Bus.consumer`` with the offsets the clients were told and the
same keys, values, headers and timestamps; the kernel that turns Kafka
records into frames is checked against batches built by kafka-python's own
record builder, including hostile bytes.
"""

from __future__ import annotations

import socket
import struct
import subprocess

import numpy as np
import pytest

from helpers.kafka import recv_exact

from shmbus.core.partitioner import partition_for_key
from shmbus.records import TopicPartition

TS0 = 1_700_000_000_000


def read_all(kbus, topic, partitions, expect, timeout_polls=200):
    """Every record of the topic via the Python API (assign + seek_to_beginning + poll)."""
    got = []
    with kbus.bus.consumer() as c:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        c.seek_to_beginning()
        for _ in range(timeout_polls):
            for recs in c.poll(timeout_ms=100, max_records=100_000).values():
                got.extend(recs)
            if len(got) >= expect:
                break
        for recs in c.poll(timeout_ms=200).values():  # nothing more may come
            got.extend(recs)
    return got


def confluent(kbus, **conf):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": kbus.bootstrap, "linger.ms": 5, "message.timeout.ms": 30000, **conf})


# --- confluent-kafka ---

@pytest.mark.timeout(300)
def test_confluent_idempotent_lz4_100k_keyed_records_round_trip(kbus, ktopic):
    topic = ktopic(4)
    n = 100_000
    p = confluent(kbus, **{"enable.idempotence": True, "acks": "all", "compression.type": "lz4",
                           "partitioner": "murmur2_random"})
    reports = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            reports[int(msg.key()[1:])] = (msg.partition(), msg.offset())

    for i in range(n):
        key = b"k%d" % i
        hdrs = [("i", str(i).encode()), ("null", None)] if i % 3 else []
        p.produce(topic, key=key, value=b"value-%d" % i if i % 11 else None, headers=hdrs, timestamp=TS0 + i,
                  on_delivery=on_delivery)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    assert errors == [] and len(reports) == n

    got = read_all(kbus, topic, 4, n)
    assert len(got) == n
    seen = set()
    for r in got:
        i = int(r.key[1:])
        assert i not in seen  # exactly once
        seen.add(i)
        assert r.value == (b"value-%d" % i if i % 11 else None)
        assert r.headers == ([("i", str(i).encode()), ("null", None)] if i % 3 else [])
        assert r.timestamp == TS0 + i
        assert r.partition == partition_for_key(r.key, 4)  # the Java client's partition (murmur2)
        assert reports[i] == (r.partition, r.offset)  # what the client was told is where the record is
    for part in range(4):  # offsets 0..n-1 in each partition, in the order the client sent
        mine = sorted((r.offset, int(r.key[1:])) for r in got if r.partition == part)
        assert [o for o, _ in mine] == list(range(len(mine)))
        assert [i for _, i in mine] == sorted(i for _, i in mine)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_every_codec(kbus, ktopic, codec):
    topic = ktopic(1)
    p = confluent(kbus, **{"compression.type": codec, "acks": 1})
    for i in range(500):
        p.produce(topic, key=None if i % 2 else b"k%d" % i, value=(b"%d " % i) * (i % 50), timestamp=TS0 + i)
    assert p.flush(60) == 0
    got = read_all(kbus, topic, 1, 500)
    assert [r.value for r in got] == [(b"%d " % i) * (i % 50) for i in range(500)]
    assert [r.key for r in got] == [None if i % 2 else b"k%d" % i for i in range(500)]
    assert [r.timestamp for r in got] == [TS0 + i for i in range(500)]


# --- kafka-python ---

@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_every_codec(kbus, ktopic, codec):
    from kafka import KafkaProducer

    topic = ktopic(2)
    p = KafkaProducer(bootstrap_servers=kbus.bootstrap, compression_type=codec, acks="all", linger_ms=5)
    try:
        futs = [p.send(topic, key=b"key-%d" % (i % 7), value=b"v%d" % i, headers=[("h", b"%d" % i)],
                       timestamp_ms=TS0 + i) for i in range(300)]
        p.flush(60)
        metas = [f.get(timeout=30) for f in futs]
    finally:
        p.close(10)
    got = {(r.partition, r.offset): r for r in read_all(kbus, topic, 2, 300)}
    assert len(got) == 300
    for i, m in enumerate(metas):
        r = got[(m.partition, m.offset)]
        assert (r.key, r.value, r.headers, r.timestamp) == (b"key-%d" % (i % 7), b"v%d" % i, [("h", b"%d" % i)],
                                                            TS0 + i)
        assert m.partition == partition_for_key(b"key-%d" % (i % 7), 2)


# --- kcat ---

@pytest.mark.timeout(60)
def test_kcat_produces_keys_and_headers(kbus, ktopic):
    from helpers.kafka import listener_status

    topic = ktopic(1)
    before = listener_status(kbus.data_dir)
    lines = "".join(f"key{i}:value {i}\n" for i in range(20))
    r = subprocess.run(["kcat", "-b", kbus.bootstrap, "-P", "-t", topic, "-K", ":", "-H", "source=kcat",
                        "-H", "empty="], input=lines, capture_output=True, text=True, timeout=45)
    assert r.returncode == 0, r.stderr
    got = read_all(kbus, topic, 1, 20)
    assert [(x.key, x.value) for x in got] == [(b"key%d" % i, b"value %d" % i) for i in range(20)]
    assert all(x.headers == [("source", b"kcat"), ("empty", b"")] for x in got)
    after = listener_status(kbus.data_dir)
    assert after["produced_records"] - before["produced_records"] >= 20
    assert after["produced_bytes"] - before["produced_bytes"] >= sum(len(f"key{i}value {i}") for i in range(20))


# --- refusals, auto-creation, acks=0 ---

@pytest.mark.timeout(60)
def test_a_record_over_max_message_bytes_is_refused_and_nothing_written(kbus, ktopic):
    from confluent_kafka import KafkaError
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    topic = ktopic(1, {"max.message.bytes": 1000})
    errs = []
    p = confluent(kbus, **{"linger.ms": 0})
    p.produce(topic, value=b"x" * 2000, on_delivery=lambda e, m: errs.append(e))
    p.flush(30)
    assert len(errs) == 1 and errs[0].code() == KafkaError.MSG_SIZE_TOO_LARGE

    kp = KafkaProducer(bootstrap_servers=kbus.bootstrap, max_request_size=10_000_000, retries=0)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            kp.send(topic, value=b"y" * 1500, headers=[("h", b"z")]).get(timeout=30)
    finally:
        kp.close(10)
    assert read_all(kbus, topic, 1, 1, timeout_polls=3) == []
    assert kbus.bus.describe_topic(topic).partitions[0].end_offset == 0


@pytest.mark.timeout(60)
def test_an_unknown_topic_is_created_and_acks_0_writes(kbus):
    import uuid

    topic = f"auto-{uuid.uuid4().hex[:10]}"
    p = confluent(kbus, **{"acks": 0})
    for i in range(50):
        p.produce(topic, value=b"%d" % i)
    assert p.flush(30) == 0
    assert topic in kbus.bus.list_topics()
    got = read_all(kbus, topic, kbus.bus.describe_topic(topic).partitions.__len__(), 50)
    assert sorted(int(r.value) for r in got) == list(range(50))


# --- idempotence over a raw socket (requests built with kafka-python's protocol classes) ---

class RawClient:
    def __init__(self, bootstrap):
        host, port = bootstrap.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.cid = 0

    def call(self, req, resp_cls):
        self.cid += 1
        req.with_header(correlation_id=self.cid, client_id="raw")
        self.sock.sendall(req.encode(header=True, framed=True))
        head = self._recv(4)
        body = self._recv(struct.unpack(">i", head)[0])
        return resp_cls.decode(body, version=req.API_VERSION, header=True)

    def _recv(self, n):
        return recv_exact(self.sock, n)

    def close(self):
        self.sock.close()


def build_batch(values, producer_id=-1, epoch=-1, base_sequence=-1, codec=0, ts=TS0, headers=()):
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=producer_id,
                                  producer_epoch=epoch, base_sequence=base_sequence, batch_size=1 << 30)
    for i, v in enumerate(values):
        b.append(i, timestamp=ts + i, key=None, value=v, headers=list(headers))
    return bytes(b.build())


def produce_req(topic, records, acks=-1, version=9):
    from kafka.protocol.producer import ProduceRequest

    R = ProduceRequest[version]
    TD = R.TopicProduceData
    return R(transactional_id=None, acks=acks, timeout_ms=10000,
             topic_data=[TD(name=topic, partition_data=[TD.PartitionProduceData(index=0, records=records)])])


def partition_result(resp):
    (t,) = resp.responses
    (p,) = t.partition_responses
    return p.error_code, p.base_offset


@pytest.mark.timeout(60)
def test_idempotence_a_retried_batch_is_written_once_and_a_gap_is_refused(kbus, ktopic):
    from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse, ProduceResponse

    topic = ktopic(1)
    c = RawClient(kbus.bootstrap)
    try:
        init = c.call(InitProducerIdRequest[2](transactional_id=None, transaction_timeout_ms=60000), InitProducerIdResponse)
        assert init.error_code == 0 and init.producer_id >= 0 and init.producer_epoch == 0
        again = c.call(InitProducerIdRequest[2](transactional_id=None, transaction_timeout_ms=60000),
                       InitProducerIdResponse)
        assert again.producer_id != init.producer_id
        pid = init.producer_id
        b0 = build_batch([b"a", b"b", b"c"], pid, 0, 0)
        assert partition_result(c.call(produce_req(topic, b0), ProduceResponse)) == (0, 0)
        # the same batch again (a client's retry): the original offset, nothing written
        assert partition_result(c.call(produce_req(topic, b0), ProduceResponse)) == (0, 0)
        b1 = build_batch([b"d"], pid, 0, 3)
        assert partition_result(c.call(produce_req(topic, b1), ProduceResponse)) == (0, 3)
        assert partition_result(c.call(produce_req(topic, b0), ProduceResponse)) == (0, 0)  # still known
        # a gap: sequence 10 where 4 comes next
        gap = build_batch([b"x"], pid, 0, 10)
        assert partition_result(c.call(produce_req(topic, gap), ProduceResponse))[0] == 45  # OUT_OF_ORDER_SEQUENCE
        # a producer id this partition has not seen must start at 0
        stranger = build_batch([b"y"], pid + 1000, 0, 5)
        assert partition_result(c.call(produce_req(topic, stranger), ProduceResponse))[0] == 59  # UNKNOWN_PRODUCER_ID
        # a transactional id: no transactions here
        txn = c.call(InitProducerIdRequest[2](transactional_id="tx", transaction_timeout_ms=60000),
                     InitProducerIdResponse)
        assert txn.error_code == 42
    finally:
        c.close()
    got = read_all(kbus, topic, 1, 4)
    assert [(r.offset, r.value) for r in got] == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]


@pytest.mark.timeout(60)
def test_bad_batches_are_answered_with_kafka_error_codes(kbus, ktopic):
    from kafka.protocol.producer import ProduceResponse

    topic = ktopic(1)
    good = build_batch([b"v"])
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    old = bytearray(good)
    old[16] = 1  # magic 1
    txn = bytearray(build_batch([b"v"]))
    c = RawClient(kbus.bootstrap)
    try:
        assert partition_result(c.call(produce_req(topic, bytes(bad_crc)), ProduceResponse))[0] == 2  # CORRUPT
        assert partition_result(c.call(produce_req(topic, bytes(old)), ProduceResponse))[0] == 43
        assert partition_result(c.call(produce_req(topic, good[:40]), ProduceResponse))[0] == 2
        from kafka.record.default_records import DefaultRecordBatchBuilder

        tb = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=1,
                                       producer_epoch=0, base_sequence=0, batch_size=1 << 20)
        tb.append(0, timestamp=TS0, key=None, value=b"t", headers=[])
        txn = bytes(tb.build())
        assert partition_result(c.call(produce_req(topic, txn), ProduceResponse))[0] == 42  # INVALID_REQUEST
        assert partition_result(c.call(produce_req(topic, good, acks=2), ProduceResponse))[0] == 21
        # a partition that does not exist
        from kafka.protocol.producer import ProduceRequest

        R = ProduceRequest[9]
        req = R(transactional_id=None, acks=1, timeout_ms=1000, topic_data=[R.TopicProduceData(
            name=topic, partition_data=[R.TopicProduceData.PartitionProduceData(index=5, records=good)])])
        assert partition_result(c.call(req, ProduceResponse))[0] == 3
        # a good one still goes through on the same connection
        assert partition_result(c.call(produce_req(topic, good), ProduceResponse)) == (0, 0)
    finally:
        c.close()


# --- the kernel against kafka-python's record builder ---

def _parse(raw, max_msg=1 << 20):
    from shmbus.kafka.batches import parse_batches

    return parse_batches(raw, max_msg, 100 << 20)


def _ring(ring_bytes=1 << 16, max_msg=1 << 20):
    from shmbus.layout import ring as R

    buf = np.zeros(R.HEADER_BYTES + ring_bytes, np.uint8)
    hdr = buf[: R.HEADER_BYTES].view(np.int64)
    hdr[R.OFF_RING_BYTES // 8] = ring_bytes
    hdr[R.OFF_MAX_MESSAGE // 8] = max_msg
    return buf


def _frames(buf):
    """Every DATA frame of a test ring as (offset, ts, key, value, headers)."""
    from shmbus.core.headers import decode_headers
    from shmbus.kernels import frames as KF
    from shmbus.layout import frame as F
    from shmbus.layout import ring as R

    meta = np.zeros((10_000, F.META_COLS), np.int64)
    ring = int(buf[: R.HEADER_BYTES].view(np.int64)[R.OFF_RING_BYTES // 8])
    n = KF.scan(buf, R.HEADER_BYTES, ring - 1, 0, 1 << 62, 9_999, 0, True, meta)
    assert meta[0, F.MS_REASON] in (F.STOP_EMPTY, F.STOP_MAX), meta[0]
    out = []
    for row in meta[1: n + 1]:
        b = int(row[F.M_BODY])
        kl, vl, hl = int(row[F.M_KLEN]), int(row[F.M_VLEN]), int(row[F.M_HLEN])
        key = None if kl < 0 else bytes(buf[b: b + kl])
        b += max(kl, 0)
        value = None if vl < 0 else bytes(buf[b: b + vl])
        b += max(vl, 0)
        out.append((int(row[F.M_OFFSET]), int(row[F.M_TS]), key, value, decode_headers(bytes(buf[b: b + hl]))))
    return out


def _append(buf, batch):
    from shmbus.kernels import kafka_in as K

    return K.append_records(buf, batch.data, batch.hbuf, batch.table, batch.count, batch.first_timestamp, 0, 1)


def test_kernel_matches_kafka_pythons_builder():
    from kafka.record.default_records import DefaultRecordBatchBuilder

    records = [
        (None, None, []),
        (b"", b"", []),
        (b"k", None, [("n", None)]),
        (None, b"v" * 300, [("a", b""), ("b", b"x" * 200), ("c", None)]),
        (b"key" * 100, b"val", [(f"h{i}", b"%d" % i) for i in range(100)]),
        (b"\x00\xff", b"\x80" * 129, [("ünïcødé ✓", b"\x00")]),
    ]
    for codec in range(5):
        b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                      producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
        for i, (k, v, h) in enumerate(records):
            b.append(i, timestamp=TS0 + 1000 * i, key=k, value=v, headers=h)
        (batch,) = _parse(bytes(b.build()))
        buf = _ring()
        assert _append(buf, batch) >> 2 == 0
        assert _frames(buf) == [(i, TS0 + 1000 * i, k, v, h) for i, (k, v, h) in enumerate(records)]


def test_kernel_refuses_hostile_records_and_writes_nothing():
    from shmbus.kafka.batches import BatchError
    from shmbus.kernels import kafka_in as K

    good = build_batch([b"abc", b"defg"], headers=[("h", b"v")])
    (batch,) = _parse(good)
    data = bytes(batch.data)
    table = np.zeros((4, K.K_COLS), np.int64)
    hbuf = np.zeros(3 * len(data) + 8, np.uint8)
    assert K.parse_records(np.frombuffer(data, np.uint8), 0, len(data), 2, 1 << 20, table, hbuf) == 2
    rng = np.random.default_rng(7)
    hostile = [data[:k] for k in range(len(data))]  # every truncation
    hostile += [b"\xff" * 20, b"\x80" * 11 + b"\x01", b"\x01", b"\x02\x00\x00"]  # varints too long, too short
    for _ in range(2000):  # random bytes flipped
        m = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            m[rng.integers(0, len(m))] = rng.integers(0, 256)
        hostile.append(bytes(m))
    bad = 0
    for h in hostile:
        arr = np.frombuffer(h, np.uint8)
        n = K.parse_records(arr, 0, len(arr), 2, 1 << 20, table, hbuf)
        if n < 0:
            bad += 1
            continue
        assert n == 2  # parsed: every length then lies inside the buffer
        for j in range(n):
            for s, ln in ((K.K_KSTART, K.K_KLEN), (K.K_VSTART, K.K_VLEN)):
                assert table[j, ln] < 0 or 0 <= table[j, s] and table[j, s] + table[j, ln] <= len(h)
    assert bad > len(data)  # every truncation at least
    # a hostile batch as a whole (CRC fixed up) writes nothing
    from shmbus.kernels.crc32c import crc32c

    for h in hostile[:200]:
        raw = bytearray(good[:61]) + h
        struct.pack_into(">i", raw, 8, len(raw) - 12)
        struct.pack_into(">I", raw, 17, crc32c(bytes(raw[21:])))
        try:
            (b,) = _parse(bytes(raw))
        except BatchError:
            continue
        buf = _ring()
        _append(buf, b)
    # a bad record count in the header, a record over max.message.bytes
    raw = bytearray(good)
    struct.pack_into(">i", raw, 57, 3)
    struct.pack_into(">i", raw, 23, 2)
    struct.pack_into(">I", raw, 17, crc32c(bytes(raw[21:])))
    with pytest.raises(BatchError) as e:
        _parse(bytes(raw))
    assert e.value.code == 2
    with pytest.raises(BatchError) as e:
        _parse(good, max_msg=5)
    assert e.value.code == 10


def test_a_decompression_bomb_is_refused():
    from shmbus.kafka.batches import BatchError, decompress

    for codec, enc in _encoders().items():
        bomb = enc(b"\0" * (4 << 20))
        with pytest.raises(BatchError) as e:
            decompress(codec, bomb, 1 << 20)
        assert e.value.code == 10
        assert decompress(codec, enc(b"hello"), 100) == b"hello"


def _encoders():
    from kafka import codec as C

    return {1: C.gzip_encode, 2: C.snappy_encode, 3: C.lz4_encode, 4: C.zstd_encode}


def test_a_batch_larger_than_a_quarter_ring_is_refused_whole():
    from shmbus.layout import frame as F

    (batch,) = _parse(build_batch([b"x" * 3000] * 8))  # 8 frames of ~3 KiB > 16 KiB / 4
    buf = _ring(1 << 14)
    assert _append(buf, batch) == F.ST_TOO_LARGE
    assert _frames(buf) == []


def test_batch_error_codes_are_kafkas():
    from shmbus.kafka import batches
    from shmbus.kafka.handlers import errors

    for name in ("CORRUPT_MESSAGE", "MESSAGE_TOO_LARGE", "INVALID_REQUEST", "UNSUPPORTED_FOR_MESSAGE_FORMAT",
                 "UNSUPPORTED_COMPRESSION_TYPE"):
        assert getattr(batches.E, name) == getattr(errors, name)


@pytest.mark.timeout(180)
def test_a_small_ring_fills_and_the_listener_waits_for_the_spiller(kbus, ktopic):
    """20 MB through a 64 KiB ring: Produce waits (sleeping) for room while the supervisor spills."""
    topic = ktopic(1, {"ring.bytes": 65536})
    p = confluent(kbus, **{"batch.size": 12000, "acks": "all", "enable.idempotence": True})
    offsets = []
    for i in range(20_000):
        p.produce(topic, key=b"%d" % i, value=bytes([i % 251]) * 1000,
                  on_delivery=lambda e, m: offsets.append(-1 if e else m.offset()))
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(150) == 0
    assert sorted(offsets) == list(range(20_000))
    got = read_all(kbus, topic, 1, 20_000)
    assert [(r.offset, r.key) for r in got] == [(i, b"%d" % i) for i in range(20_000)]
    assert all(r.value == bytes([i % 251]) * 1000 for i, r in enumerate(got))


@pytest.mark.timeout(60)
def test_a_deleted_topic_is_never_written_and_comes_back_by_auto_creation(kbus, ktopic):
    import time

    from kafka.protocol.producer import ProduceResponse

    topic = ktopic(1)
    c = RawClient(kbus.bootstrap)
    try:
        assert partition_result(c.call(produce_req(topic, build_batch([b"old"])), ProduceResponse)) == (0, 0)
        kbus.bus.delete_topic(topic)
        # at once: the listener may still hold the deleted incarnation: it finds its ring deleted
        code, base = partition_result(c.call(produce_req(topic, build_batch([b"new1"])), ProduceResponse))
        assert (code, base) in ((3, -1), (0, 0))  # UNKNOWN_TOPIC_OR_PARTITION, or into a new incarnation
        time.sleep(0.6)  # past the listener's metadata cache: the topic is created again
        code2, base2 = partition_result(c.call(produce_req(topic, build_batch([b"new2"])), ProduceResponse))
        assert code2 == 0 and base2 == (1 if code == 0 else 0)
    finally:
        c.close()
    got = read_all(kbus, topic, 1, 1 + (code == 0))
    assert [r.value for r in got] == ([b"new1"] if code == 0 else []) + [b"new2"]
