"""The compiled per-record verbs (shmbus/core/_native.c) against their numba twins and the references.

``tests/test_kernels.py`` runs every single-record append test against both
implementations; here: the build itself, the hashes against the reference
packages, byte-identical frames from both appends, identical records from both
single-record readers, and the start-up promise (a producer needs no numba).
"""

from __future__ import annotations

import json
import os
import platform
import random
import struct
import subprocess
import sys

import crc32c
import numpy as np
import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2
from helpers.rings import HDR, PID, TS, make_ring

from shmbus.core import native
from shmbus.kernels import frames as K
from shmbus.layout import frame as F
from shmbus.layout import ring as R
from shmbus.core.headers import encode_headers

ON_X86_LINUX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def test_the_compiled_verbs_are_built_and_agree_with_the_layout():
    if not ON_X86_LINUX:
        pytest.skip(f"the C verbs are built on x86-64 Linux only (here: {platform.machine()})")
    if os.environ.get("SHMBUS_NATIVE") == "0":
        assert native.REASON == "SHMBUS_NATIVE=0" and not native.ENABLED
        return
    # `pip install .` builds them; a missing build would silently cost start-up and speed
    assert native.ENABLED, native.REASON
    assert native.REASON == ""


needs_native = pytest.mark.skipif(not native.ENABLED, reason=f"compiled verbs not loaded: {native.REASON}")


@needs_native
def test_crc32c_matches_the_reference_package():
    rnd = random.Random(7)
    for n in list(range(40)) + [100, 1000, 4093, 65536]:
        b = rnd.randbytes(n)
        assert native.crc32c(b) == crc32c.crc32c(b), n
    assert native.crc32c(b"123456789") == 0xE3069283
    a, b = b"hello ", b"world"
    assert native.crc32c(b, native.crc32c(a)) == crc32c.crc32c(a + b)


@needs_native
def test_murmur2_and_partition_match_kafka_python():
    rnd = random.Random(11)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", b"\xff" * 7] + [rnd.randbytes(rnd.randrange(0, 80)) for _ in range(3000)]
    for k in keys:
        h = kafka_murmur2(k)
        assert native.murmur2(k) == h & 0xFFFFFFFF, k
        for n in (1, 3, 4, 7, 64):
            assert native.partition(k, n) == (h & 0x7FFFFFFF) % n
    with pytest.raises(ValueError):
        native.partition(b"k", 0)
    with pytest.raises(TypeError):
        native.murmur2("str")


@needs_native
def test_both_appends_write_byte_identical_rings():
    rnd = random.Random(3)
    a, b = make_ring(1 << 16), make_ring(1 << 16)
    numba_any = K.fast()["append_any"]
    for i in range(3000):  # until the 64 KiB ring is full (the same record fails on both), then compare
        key = None if i % 5 == 0 else rnd.randbytes(rnd.randrange(0, 20))
        value = None if i % 7 == 0 else rnd.randbytes(rnd.randrange(0, 300))
        hdrs = encode_headers([("h", rnd.randbytes(3)), ("n", None)]) if i % 3 == 0 else b""
        ra = native.append(a.ctypes.data, key, value, hdrs, TS + i, PID)
        rb = numba_any(b.ctypes.data, key if key is not None else b"", -1 if key is None else len(key),
                       value if value is not None else b"", -1 if value is None else len(value), hdrs, TS + i, PID)
        assert ra == rb, i
        if ra < 0:
            assert ra == K.ST_FULL and i > 100
            break
    else:
        raise AssertionError("the ring never filled")
    assert np.array_equal(a, b)


def _produce_mixed(bus, topic, n):
    rnd = random.Random(5)
    sent = []
    with bus.producer() as p:
        for i in range(n):
            key = None if i % 4 == 0 else f"k{i}".encode()
            value = None if i % 9 == 0 else rnd.randbytes(rnd.randrange(0, 200))
            headers = [("seq", str(i).encode()), ("z", None)] if i % 2 else None
            p.send(topic, value, key=key, headers=headers, partition=0)
            sent.append((key, value, headers or []))
    return sent


def _read_one_by_one(bus, topic, n, monkeypatch, impl):
    if impl == "general":
        monkeypatch.setattr(native, "Reader", None)  # as without the C build: the general path reads
    out = []
    with bus.consumer(topic, auto_offset_reset="earliest") as c:
        while len(out) < n:
            got = c.poll(timeout_ms=2000, max_records=1)
            assert got, f"no record after {len(out)}"
            for recs in got.values():
                out.extend((r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs)
    return out


@needs_native
def test_the_compiled_reader_and_the_general_path_return_the_same_records(bus_nosup, monkeypatch):
    bus_nosup.create_topic("t", partitions=1, config={"ring.bytes": 1 << 20})
    sent = _produce_mixed(bus_nosup, "t", 500)
    got_c = _read_one_by_one(bus_nosup, "t", len(sent), monkeypatch, "native")
    got_general = _read_one_by_one(bus_nosup, "t", len(sent), monkeypatch, "general")
    assert got_c == got_general
    assert [(k, v, h) for _, _, k, v, h in got_c] == sent
    assert [o for o, *_ in got_c] == list(range(len(sent)))


_STARTUP = r"""
import json, sys, time
t0 = time.perf_counter()
from shmbus import Bus
from shmbus.core import native
bus = Bus(sys.argv[1], autostart=False)
with bus.producer() as p:
    p.send("t", b"x" * 100)
    p.send("t", b"y", key=b"k", headers=[("h", b"1")])
t1 = time.perf_counter()
numba_at_send = "numba" in sys.modules
# a consumer that reads the ring (no supervisor: nothing on disk), from the start and from the end
with bus.consumer("t", auto_offset_reset="earliest", load_kernels=False) as c:
    got = []
    while len(got) < 2:
        got += [r.value for rs in c.poll(timeout_ms=2000).values() for r in rs]
with bus.consumer("t", auto_offset_reset="latest", load_kernels=False) as c:
    assert c.poll(timeout_ms=0) == {}
print(json.dumps({"numba": numba_at_send, "native": native.ENABLED, "reason": native.REASON,
                  "seconds": t1 - t0, "read": sorted(v.decode() for v in got),
                  "numba_after_poll": "numba" in sys.modules}))
bus.close()
"""


def _startup(data_dir, env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", _STARTUP, data_dir], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_native
def test_a_producer_and_a_ring_reader_run_without_importing_numba(bus_nosup, data_dir):
    bus_nosup.create_topic("t", partitions=2)
    r = _startup(data_dir, {"SHMBUS_NATIVE": "1"})
    assert r["native"] and not r["numba"], r
    # and a consumer that follows the ring needs none either (with load_kernels=False)
    assert r["read"] == ["x" * 100, "y"] and not r["numba_after_poll"], r
    # and the records are there: the keyed one on Kafka's partition for b"k"
    from shmbus.core.partitioner import partition_for_key

    with bus_nosup.consumer() as c:
        ends = c.end_offsets(_tps("t", 2))
        c.assign(_tps("t", 2))
        c.seek_to_beginning()
        got = [rec for recs in c.poll(timeout_ms=2000).values() for rec in recs]
        while len(got) < 2:
            more = c.poll(timeout_ms=2000)
            assert more, got
            got += [rec for recs in more.values() for rec in recs]
    assert sum(ends.values()) == 2
    keyed = [g for g in got if g.key == b"k"]
    assert len(keyed) == 1 and keyed[0].partition == partition_for_key(b"k", 2)
    assert keyed[0].headers == [("h", b"1")]


def _tps(topic, n):
    from shmbus import TopicPartition

    return [TopicPartition(topic, i) for i in range(n)]


def test_shmbus_native_0_selects_the_numba_kernels(bus_nosup, data_dir):
    bus_nosup.create_topic("t", partitions=1)
    r = _startup(data_dir, {"SHMBUS_NATIVE": "0"})
    assert not r["native"] and r["reason"] == "SHMBUS_NATIVE=0" and r["numba"], r
    with bus_nosup.consumer("t", auto_offset_reset="earliest") as c:
        got = [rec for recs in c.poll(timeout_ms=2000).values() for rec in recs]
    assert [(g.key, g.value, g.headers) for g in got] == [(None, b"x" * 100, []), (b"k", b"y", [("h", b"1")])]


@needs_native
def test_the_compiled_send_answers_as_the_python_send(bus_nosup):
    from shmbus import RecordMetadata, TopicPartition
    from shmbus.errors import ShmbusError, UnknownTopicError
    from shmbus.core.partitioner import partition_for_key
    from shmbus.client.producer import Producer

    bus_nosup.create_topic("t", partitions=3)
    p = bus_nosup.producer()
    assert isinstance(p.send, native.Sender)  # no serializers, acks="memory"
    py_send = Producer.send.__get__(p)
    md = [p.send("t", b"a"), py_send("t", b"b"), p.send("t", b"c")]  # round robin shared by both paths
    assert [m.partition for m in md] == [0, 1, 2] and all(type(m) is RecordMetadata for m in md)
    assert p.send("t", b"v", key=b"user-7").partition == partition_for_key(b"user-7", 3)
    m = p.send("t", value=b"v", key=b"user-7", partition=0, timestamp_ms=1234)
    assert (m.topic, m.partition, m.offset, m.timestamp_ms) == ("t", 0, 1, 1234)
    p.send("t", None, b"tomb", [("h", b"1"), ("n", None)], 2)
    # headers as a tuple (compiled), and as a generator or with a bytearray (the Python send)
    for hs in ((("g", b"1"),), (x for x in [("g", b"1")]), [("g", bytearray(b"1"))]):
        m = p.send("t", b"h", headers=hs, partition=1)
        with bus_nosup.consumer() as c:
            c.assign([TopicPartition("t", 1)])
            c.seek(TopicPartition("t", 1), m.offset)
            (rec,) = c.poll(timeout_ms=2000)[TopicPartition("t", 1)]
        assert rec.headers == [("g", b"1")], hs
    def ends():
        with bus_nosup.consumer() as c:
            return c.end_offsets([TopicPartition("t", i) for i in range(3)])

    before = ends()
    # bad input: the Python send's errors, and nothing written
    with pytest.raises(ValueError, match="partition out of range"):
        p.send("t", b"v", partition=3)
    with pytest.raises(TypeError, match="value must be bytes-like"):
        p.send("t", "a str")
    with pytest.raises(TypeError):
        p.send("t", b"v", colour="red")
    with pytest.raises(TypeError):
        p.send("t", b"v", None, None, None, None, "extra")
    with pytest.raises(TypeError, match="headers must be"):
        p.send("t", b"v", headers=[("only-a-key",)])
    with pytest.raises(UnknownTopicError):
        p.send("nope", b"v")
    assert ends() == before
    with bus_nosup.consumer(auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("t", 2)])
        c.seek_to_beginning()
        recs = [r for rs in c.poll(timeout_ms=2000).values() for r in rs]
    assert (recs[-1].key, recs[-1].value, recs[-1].headers) == (b"tomb", None, [("h", b"1"), ("n", None)])
    p.close()
    with pytest.raises(ShmbusError, match="closed producer"):
        p.send("t", b"v")


def test_a_producer_with_serializers_or_acks_disk_uses_the_python_send(bus_nosup):
    bus_nosup.create_topic("t", partitions=1)
    with bus_nosup.producer(value_serializer=str.encode) as p:
        assert "send" not in vars(p)
        assert p.send("t", "text").offset == 0
    with bus_nosup.producer(acks="disk", max_block_ms=0) as p:
        assert "send" not in vars(p)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("impl", ["native", "general"])
def test_a_following_reader_crosses_ring_ends_and_takes_what_is_ready(bus, monkeypatch, impl):
    """A 4 KiB ring wraps every few records (a padding frame at each end); poll() with the
    default max_records returns everything ready at once, in order, on both readers."""
    if impl == "general":
        monkeypatch.setattr(native, "Reader", None)
    elif not native.ENABLED:
        pytest.skip(native.REASON)
    bus.create_topic("t", partitions=1, config={"ring.bytes": 4096})
    rnd = random.Random(9)
    sent = []
    with bus.producer() as p, bus.consumer("t", auto_offset_reset="earliest") as c:
        assert c.poll(timeout_ms=0) == {}
        assert (c._single.reader is not None) == (impl == "native")
        got = []
        for round_ in range(150):
            k = rnd.randrange(1, 6)
            for _ in range(k):
                v = rnd.randbytes(rnd.randrange(50, 400))
                key = None if rnd.random() < 0.3 else rnd.randbytes(4)
                p.send("t", v, key=key, headers=[("r", str(round_).encode())] if round_ % 2 else None)
                sent.append((key, v))
            calls = 0
            while len(got) < len(sent):
                out = c.poll(timeout_ms=2000)
                assert out, f"nothing after {len(got)} of {len(sent)}"
                calls += 1
                got.extend(r for rs in out.values() for r in rs)
        assert [(r.key, r.value) for r in got] == sent
        assert [r.offset for r in got] == list(range(len(sent)))
        # ~450 frames of ~270 bytes through a 4 KiB ring: it wrapped (a padding frame each time) ~30 times
        assert sum(40 + len(v) + (len(k) if k else 0) for k, v in sent) > 20 * 4096


@needs_native
def test_the_compiled_header_codec_agrees_with_the_numba_one(monkeypatch):
    from shmbus.core import headers as P

    rnd = random.Random(21)
    keys = ["", "a", "trace-id", "ключ", "😀" * 3, "k" * 300]
    for _ in range(2000):
        hs = [(rnd.choice(keys), None if rnd.random() < 0.2 else rnd.randbytes(rnd.randrange(0, 40)))
              for _ in range(rnd.randrange(1, 5))]
        b = native.encode_headers(hs)
        assert b == P._encode_headers(hs) == native.encode_headers(tuple(hs))
        assert native.decode_headers(b) == hs
        monkeypatch.setattr(P, "_dec_c", None)
        assert P.decode_headers(b) == hs  # the numba decoder
        monkeypatch.undo()
    # kinds the compiled encoder leaves to core/headers.py (which converts or explains them)
    assert native.encode_headers([("a", bytearray(b"1"))]) is None
    assert native.encode_headers([("a", 1)]) is None
    assert native.encode_headers([["a", b"1"]]) is None
    assert native.encode_headers([("k" * 70000, b"")]) is None
    with pytest.raises(ValueError, match="at most 65535"):
        P.encode_headers([("k" * 70000, b"")])
    # bytes that cannot be headers
    good = native.encode_headers([("key", b"value")])
    for bad in (good[:-1], good[:1], good + b"\x00", b"\x03\x00ab"):
        with pytest.raises(ValueError, match="corrupt record headers"):
            native.decode_headers(bad)
    with pytest.raises(UnicodeDecodeError):
        native.decode_headers(b"\x01\x00\xff\x00\x00\x00\x00")


# --- the scans: C twins of the scan / scan_copy / scan_ring / scan_copy_ring kernels ---

def _written_ring(seed, start, ring_bytes=1 << 16):
    """A ring filled by appends from ``start`` (near its end: the claims wrap, leaving padding)."""
    rnd = random.Random(seed)
    buf = make_ring(ring_bytes, start=start, base_offset=1000)
    for i in range(2000):
        key = None if i % 5 == 0 else rnd.randbytes(rnd.randrange(0, 20))
        value = None if i % 7 == 0 else rnd.randbytes(rnd.randrange(0, 300))
        hdrs = encode_headers([("h", rnd.randbytes(3))]) if i % 3 == 0 else b""
        if native.append(buf.ctypes.data, key, value, hdrs, TS + i, PID) < 0:
            break
    return buf


def _scan_both(buf, args, values_len=None, rows=65):
    """(n, meta[, values]) from the numba kernel and from the C twin, same arguments."""
    out = []
    for impl in ("numba", "c"):
        meta = np.full((rows, 8), -7, np.int64)
        if values_len is None:
            f = K.scan if impl == "numba" else native.scan
            out.append((f(buf, *args, meta), meta))
        else:
            values = np.zeros(values_len, np.uint8)
            f = K.scan_copy if impl == "numba" else native.scan
            out.append((f(buf, *args, meta, values), meta, values))
    return out


def _assert_same(pair):
    a, b = pair
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        assert np.array_equal(x, y)
    return a


@needs_native
@pytest.mark.parametrize("max_n", [1, 7, 64])
@pytest.mark.parametrize("verify", [False, True])
def test_the_compiled_ring_scan_walks_as_the_kernel(max_n, verify):
    ring = 1 << 16
    buf = _written_ring(1, start=ring - 3000)
    for min_offset in (0, 1010):
        pos, n_total, reasons = ring - 3000, 0, set()
        while True:
            n, meta = _assert_same(_scan_both(buf, (HDR, ring - 1, pos, 1 << 62, max_n, min_offset, verify)))
            n_total += n
            reasons.add(int(meta[0, 2]))
            if meta[0, 2] == native_stop("EMPTY") or meta[0, 0] == pos:
                break
            pos = int(meta[0, 0])
        assert n_total > 200 and native_stop("EMPTY") in reasons
    # the entry points by address: the plain walk and the copying one
    rows = 65
    for copy in (False, True):
        metas = [np.full((rows, 8), -7, np.int64) for _ in range(2)]
        vals = [np.zeros(4000, np.uint8) for _ in range(2)]
        if copy:
            n1 = K.entry("scan_copy_ring")(buf.ctypes.data, ring - 3000, max_n, 0, metas[0].ctypes.data, rows,
                                           vals[0].ctypes.data, len(vals[0]))
            n2 = native.scan_ring(buf.ctypes.data, ring - 3000, max_n, 0, metas[1].ctypes.data, rows,
                                  vals[1].ctypes.data, len(vals[1]))
        else:
            n1 = K.entry("scan_ring")(buf.ctypes.data, ring - 3000, max_n, 0, metas[0].ctypes.data, rows)
            n2 = native.scan_ring(buf.ctypes.data, ring - 3000, max_n, 0, metas[1].ctypes.data, rows)
        assert n1 == n2 >= 1
        assert np.array_equal(metas[0], metas[1]) and np.array_equal(vals[0], vals[1])


def native_stop(name):
    from shmbus.layout import frame as F

    return getattr(F, "STOP_" + name)


@needs_native
def test_the_compiled_scan_stops_where_the_kernel_stops():
    ring = 1 << 16
    clean = _written_ring(2, start=0)
    args = (HDR, ring - 1, 0, 1 << 62, 64, 0, True)
    n, meta = _assert_same(_scan_both(clean, args))
    assert n == 64
    fifth, third = int(meta[5, 6]), int(meta[3, 0])
    # a flipped body byte: a checksum mismatch with verify, unnoticed without
    bad = clean.copy()
    bad[fifth] ^= 0x40
    fifth_pos = int(meta[5, 0])
    n, meta = _assert_same(_scan_both(bad, args))
    assert (n, int(meta[0, 2]), int(meta[0, 3])) == (4, native_stop("CRC"), fifth_pos)
    n, meta = _assert_same(_scan_both(bad, args[:-1] + (False,)))
    assert n == 64
    # a header length that cannot be
    bad = clean.copy()
    bad[HDR + third: HDR + third + 4] = np.frombuffer((12).to_bytes(4, "little"), np.uint8)
    n, meta = _assert_same(_scan_both(bad, args))
    assert (n, int(meta[0, 2]), int(meta[0, 3])) == (2, native_stop("CORRUPT"), third)
    # a segment chunk (frames back to back, base 0, mask -1), cut inside its last frame
    n, meta = _assert_same(_scan_both(clean, args))
    chunk = np.concatenate([clean[HDR + int(r[0]): HDR + int(r[0] + r[7])] for r in meta[1: n + 1]])
    cut = len(chunk) - 5
    n2, meta2 = _assert_same(_scan_both(chunk, (0, -1, 0, cut, 4096, 0, True), rows=4097))
    assert n2 == n - 1 and meta2[0, 2] == native_stop("END")
    assert [int(r[1]) for r in meta2[1: n2 + 1]] == [int(r[1]) for r in meta[1: n]]


@needs_native
def test_the_compiled_scan_copy_gathers_the_values_as_the_kernel():
    ring = 1 << 16
    buf = _written_ring(3, start=ring - 5000)
    for values_len in (0, 300, 1 << 16):
        n, meta, values = _assert_same(_scan_both(buf, (HDR, ring - 1, ring - 5000, 1 << 62, 64, 0, False),
                                                  values_len=values_len))
        total = int(np.maximum(meta[1: n + 1, 4], 0).sum())
        assert total <= values_len
        if values_len == 1 << 16:
            assert n == 64
        elif n < 64:
            assert meta[0, 2] == native_stop("MAX")


@needs_native
def test_the_compiled_scan_refuses_a_frame_past_the_buffer():
    """Where the kernel trusts the header (numba does not check bounds), the C scan stops as corrupt."""
    ring = 1 << 16
    buf = _written_ring(4, start=0)
    meta = np.zeros((65, 8), np.int64)
    first_len = int.from_bytes(bytes(buf[HDR: HDR + 4]), "little")
    # the second frame claims to run past the end of the mapping
    buf[HDR + first_len: HDR + first_len + 4] = np.frombuffer((ring - 8).to_bytes(4, "little"), np.uint8)
    n = native.scan(buf, HDR, ring - 1, 0, 1 << 62, 64, 0, False, meta)
    assert n == 1 and meta[0, 2] == native_stop("CORRUPT") and meta[0, 3] == first_len


_GENERAL_READS = r"""
import json, sys, time
from shmbus import Bus, TopicPartition
from shmbus.core import native
bus = Bus(sys.argv[1], autostart=False)
tp = TopicPartition("t", 0)
t0 = time.perf_counter()
c = bus.consumer(auto_offset_reset="earliest")  # the default (load_kernels=True)
made = time.perf_counter() - t0
c.assign([tp])
first = None
n = 0
while n < 5000:  # from the segment files, then the ring
    for recs in c.poll(timeout_ms=2000, max_records=700).values():
        first = recs[0].offset if first is None else first
        n += len(recs)
c.seek_to_beginning()
batch = c.poll_batch(timeout_ms=2000, max_records=3000)[tp]
c.seek(tp, 4000)
at = c.poll(timeout_ms=2000, max_records=1)[tp][0].offset
hit = c.offsets_for_times({tp: 0})[tp].offset
c.close()
print(json.dumps({"numba": "numba" in sys.modules, "made_s": made, "first": first, "n": n,
                  "batch": [int(batch.offsets[0]), len(batch)], "at": at, "hit": hit}))
bus.close()
"""


@needs_native
@pytest.mark.timeout(120)
def test_a_consumer_reads_disk_batches_and_seeks_without_importing_numba(bus, data_dir):
    """With the compiled scans, no client path imports numba: reads from the segment files,
    poll_batch, seek and offsets_for_times included, and a default consumer starts fast."""
    bus.create_topic("t", partitions=1, config={"ring.bytes": 65536})
    with bus.producer() as p:
        for i in range(5000):
            p.send("t", b"%06d" % i + b"." * 94, partition=0)
    ring = bus.ring(bus.topic_meta("t"), 0)
    from helpers.waiting import wait_for

    wait_for(lambda: ring.released() > 65536, 30, "the supervisor to spill and release the ring")
    out = subprocess.run([sys.executable, "-c", _GENERAL_READS, data_dir], capture_output=True, text=True,
                         timeout=100, env=dict(os.environ, SHMBUS_NATIVE="1"))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["numba"], r
    assert (r["first"], r["n"], r["batch"], r["at"], r["hit"]) == (0, 5000, [0, 3000], 4000, 0), r
    print(f"default consumer made in {r['made_s'] * 1000:.1f} ms")


@needs_native
def test_a_stale_build_without_a_verb_falls_back_to_the_numba_kernels():
    """A build older than the Python code (an editable install not rebuilt) lacks a verb: no
    AttributeError at the first use, but the numba kernels for everything, and REASON says why."""
    code = r"""
import importlib, sys, types
from shmbus.core import _native as real, native
stub = types.ModuleType("shmbus.core._native")
stub.LAYOUT = real.LAYOUT
stub.append = real.append  # an old build: some verbs, not all
sys.modules["shmbus.core._native"] = stub
sys.modules["shmbus.core"]._native = stub
importlib.reload(native)  # its load, again, finding the stub
print(native.ENABLED, native.append is None, native.scan_frames is not None, native.REASON)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, SHMBUS_NATIVE="1"))
    assert out.returncode == 0, out.stderr
    enabled, append_none, scan_ok, reason = out.stdout.strip().split(" ", 3)
    assert (enabled, append_none, scan_ok) == ("False", "True", "True"), out.stdout
    assert reason.startswith("stale build:") and "reinstall shmbus" in reason, reason


@needs_native
@pytest.mark.timeout(60, method="thread")  # a reader that walks a full ring forever holds the GIL
def test_a_caught_up_reader_of_an_exactly_full_ring_waits_even_when_the_oldest_frame_is_padding():
    """The ring is exactly full (claim tail == RELEASED + ring) and the oldest frame, at RELEASED,
    is the padding before a wrap. A reader caught up at the tail sees that padding word at its
    cursor: it is the oldest frame, not a new one, so there is nothing to take yet."""
    from shmbus.records import ConsumerRecord, TopicPartition

    ring = 4096
    buf = make_ring(ring)
    addr = buf.ctypes.data
    value = bytes(1000 - F.HEADER_BYTES)  # frames of exactly 1000 bytes

    def put(i):
        return native.append(addr, None, value, b"", TS + i, PID)

    for i in range(4):  # lap 0: frames at 0, 1000, 2000, 3000
        assert put(i) >= 0
    assert put(4) == K.ST_FULL
    K.release(buf, 0, 4000)  # RELEASED at 4000, where the next claim puts its padding
    for i in range(4, 8):  # padding [4000, 4096), then frames at 4096 .. 7096: the tail at 8096
        assert put(i) >= 0
    assert put(8) == K.ST_FULL
    claim = struct.unpack_from("<q", buf, R.OFF_CLAIM_POS)[0]
    assert claim == 4000 + ring  # exactly full
    assert (struct.unpack_from("<q", buf, HDR + 4000)[0] >> 32) & 0xFF == F.PADDING
    rd = native.Reader(addr, TopicPartition("t", 0), ConsumerRecord)
    rd.cursor = claim
    rd.position_raw = 8
    assert rd.take(False) == 0
    assert rd.take_many(10, 0) == 0
    assert rd.cursor == claim and rd.position_raw == 8
    # the numba ring scan stops there too
    meta = np.zeros((9, F.META_COLS), np.int64)
    assert K.fast()["scan_ring"](addr, claim, 8, 8, meta.ctypes.data, 9) == 0
    assert meta[0, 0] == claim


@needs_native
def test_a_lapped_cursor_on_a_word_that_claims_a_frame_past_the_ring_end_reads_nothing_past_the_mapping():
    """A reader whose cursor the spiller lapped reads, at its cursor, bytes of a newer frame: a word
    that may look like a DATA header with any length. A frame never straddles the ring's end, so
    such a length sends every reader to the general path (the scans stop there as corrupt), and
    nothing is read past the mapping."""

    from shmbus.records import ConsumerRecord, TopicPartition

    ring = 4096
    buf = make_ring(ring, start=1000)
    addr = buf.ctypes.data
    cur = 4096 - 64
    # a "DATA" word 64 bytes before the ring's end claiming 128 bytes, with lengths inside it
    # that pass every other check
    struct.pack_into("<Q", buf, HDR + cur, F.header_word(128, F.DATA))
    struct.pack_into("<qqiii", buf, HDR + cur + F.OFF_OFFSET, 5, TS, -1, 128 - F.HEADER_BYTES, 0)
    struct.pack_into("<q", buf, R.OFF_CLAIM_POS, 5000)
    rd = native.Reader(addr, TopicPartition("t", 0), ConsumerRecord)
    rd.cursor = cur
    rd.position_raw = 0
    assert rd.take(False) is None and rd.take_many(10, 0) is None and rd.poll(10, 0) is None
    assert rd.cursor == cur
    for scan in (native.scan_ring, K.fast()["scan_ring"]):
        meta = np.zeros((9, F.META_COLS), np.int64)
        assert scan(addr, cur, 8, 0, meta.ctypes.data, 9) == 0
        assert meta[0, F.MS_REASON] == F.STOP_CORRUPT and meta[0, F.MS_BAD] == cur
