"""Differential tests: every compiled verb (``native._VERBS``) against its twin, on identical inputs.

Each test drives seeded random operation sequences through the C verb
(``shmbus/core/_native.c``) and its twin: the numba kernel where there is one
(``shmbus/kernels/``), else the Python code that does the same job
(the consumer's general read path, the numba ``scan_ring`` and the records
builder, for ``Reader``; ``Producer.send`` for ``Sender``, the Python records
builder ``python_records`` for ``build_records``; for ``write_frames`` the numba kernel of the
same step). Rings,
tables and segment files must come out byte-identical and every answer equal,
through ring wraps, padding, dead claims (``claim_and_abandon``, then the
supervisor's unblock), full rings, deleted topics, bad frames, checksum
mismatches, segment chunks cut mid-frame, null keys and values, and headers.

The states are made with the numba kernels that only the supervisor runs
(``spill_scan``, ``release``, ``unblock_*``), applied alike to both copies.
"""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.frames import dir_files
from helpers.rings import PID, TS, make_ring, set_word, word

from shmbus.client.consumer import fetch as consumer_fetch
from shmbus.client.consumer import partition as consumer_partition
from shmbus.core import native
from shmbus.core import partitioner as partitioner_mod
from shmbus.client import producer as producer_mod
from shmbus.core import headers as headers_mod
from shmbus.errors import ShmbusError
from shmbus.kernels import frames as K
from shmbus.kernels import groups as KG
from shmbus.kernels.crc32c import crc32c as numba_crc32c
from shmbus.kernels.murmur2 import murmur2_bytes as numba_murmur2
from shmbus.kernels.murmur2 import partition_bytes as numba_partition
from shmbus.layout import frame as F
from shmbus.layout import groups as G
from shmbus.layout import ring as R
from shmbus.records import ConsumerRecord, TopicPartition
from shmbus.log import writer as writer_mod

pytestmark = pytest.mark.skipif(not native.ENABLED, reason=f"compiled verbs not loaded: {native.REASON}")

SEEDS = range(4)
BIG = 1 << 62
# --- ring states, made alike in every copy ------------------------------------------------

def rnd_bytes(rnd, lo, hi):
    return rnd.randbytes(rnd.randint(lo, hi))


def rnd_headers(rnd):
    """Headers as a send takes them, or None."""
    k = rnd.random()
    if k < 0.5:
        return None
    keys = ["h", "", "seq", "ключ", "k" * rnd.randint(1, 40)]
    return [(rnd.choice(keys), None if rnd.random() < 0.25 else rnd_bytes(rnd, 0, 24)) for _ in range(rnd.randint(0, 4))]


def rnd_record(rnd, max_value=600):
    """(key, value, encoded headers, timestamp): nulls, empties, and timestamps that go back too."""
    k, v = rnd.random(), rnd.random()
    key = None if k < 0.3 else b"" if k < 0.4 else rnd_bytes(rnd, 0, 30)
    value = None if v < 0.15 else b"" if v < 0.25 else rnd_bytes(rnd, 0, max_value)
    h = rnd_headers(rnd)
    return key, value, headers_mod._encode_headers(h) if h else b"", TS + rnd.randint(-1000, 1000)


def spill_rows(buf, max_bytes=BIG):
    """spill_scan from RELEASED: (rows, new pos, reason, blocked word)."""
    meta = np.zeros((4097, F.META_COLS), np.int64)
    rel = word(buf, R.OFF_RELEASED)
    n = K.spill_scan(buf, rel, min(max_bytes, rel + word(buf, R.OFF_RING_BYTES) - rel), meta)
    return meta[1: n + 1].copy(), int(meta[0, F.MS_POS]), int(meta[0, F.MS_REASON]), int(meta[0, F.MS_BAD])


def release_some(buf, rnd):
    """The supervisor's release of a random prefix of the published frames."""
    rows, new, _reason, _h = spill_rows(buf)
    if not len(rows):
        return
    k = rnd.randint(1, len(rows))
    rel = word(buf, R.OFF_RELEASED)
    K.release(buf, rel, rel + int(rows[:k, F.SP_LEN].sum()))


def unblock(buf):
    """The supervisor's unblock of the first blocked word (a dead writer's claim) into padding."""
    rows, new, reason, h = spill_rows(buf)
    if reason != F.STOP_EMPTY or word(buf, R.OFF_CLAIM_POS) <= new:
        return
    if (h >> F.TYPE_SHIFT) & F.TYPE_MASK == F.RESERVED:
        K.unblock_reserved(buf, new, h)
    elif h == 0:
        K.unblock_free(buf, new)


def ring_op(rnd, rings, append_each):
    """One random operation on every ring alike; ``append_each(ring, record)`` is the verb under test."""
    k = rnd.random()
    if k < 0.10:  # a record whose frame ends exactly at the ring's end, or 8 bytes before it
        rb = word(rings[0], R.OFF_RING_BYTES)
        left = rb - (word(rings[0], R.OFF_CLAIM_POS) & (rb - 1)) - rnd.choice((0, 8))
        rec = (None, b"e" * max(left - F.HEADER_BYTES, 0), b"", TS)
        return [append_each(b, rec) for b in rings]
    if k < 0.70:
        rec = rnd_record(rnd, rnd.choice((40, 600, 3000, 9000)))
        return [append_each(b, rec) for b in rings]
    if k < 0.78:
        vlen, reserve = rnd.randint(0, 300), rnd.random() < 0.5
        return [K.claim_and_abandon(b, vlen, reserve, PID + 1) for b in rings]
    if k < 0.86:
        for b in rings:
            unblock(b)
    elif k < 0.95:
        s = rnd.random()
        for b in rings:
            release_some(b, random.Random(s))
    elif k < 0.97:
        flag = rnd.random() < 0.5
        for b in rings:
            set_word(b, R.OFF_FLAGS, R.FLAG_DELETED if flag else 0)
    else:
        m = rnd.choice((100, 1000, 1 << 30))
        for b in rings:
            set_word(b, R.OFF_MAX_MESSAGE, m)
    return None


def c_append(buf, rec):
    key, value, hdrs, ts = rec
    return native.append(buf.ctypes.data, key, value, hdrs, ts, PID)


def numba_append(buf, rec):
    key, value, hdrs, ts = rec
    return producer_mod._append_numba(buf.ctypes.data, key, value, hdrs, ts, PID)


def frame_positions(buf):
    """Positions of the published frames from RELEASED (DATA and PADDING), in order."""
    rows, new, _r, _h = spill_rows(buf)
    rel = word(buf, R.OFF_RELEASED)
    pos = rel + np.concatenate(([0], np.cumsum(rows[:, F.SP_LEN])))[:-1] if len(rows) else np.zeros(0, np.int64)
    return [int(p) for p in pos], rows, new


def populated_ring(seed, ring_bytes=1 << 14, ops=160):
    """A ring after random sends, dead claims, unblocks, releases (wraps): made with the C append."""
    rnd = random.Random(seed)
    buf = make_ring(ring_bytes, start=rnd.choice((0, ring_bytes * 3 - 200)), base_offset=rnd.choice((0, 10**6)))
    for _ in range(ops):
        ring_op(rnd, [buf], c_append)
    set_word(buf, R.OFF_FLAGS, 0)
    set_word(buf, R.OFF_MAX_MESSAGE, 1 << 30)
    for _ in range(10):  # the supervisor clears dead claims
        unblock(buf)
    for _ in range(3):  # frames to read: fill what is free (with small records) after a release
        release_some(buf, rnd)
        for _ in range(rnd.randint(5, 30)):
            c_append(buf, rnd_record(rnd, 100))
            if rnd.random() < 0.1:  # a dead claim among them, made padding
                K.claim_and_abandon(buf, rnd.randint(0, 100), rnd.random() < 0.5, PID + 1)
                unblock(buf)
    if rnd.random() < 0.5:  # a writer still at work at the end
        K.claim_and_abandon(buf, rnd.randint(0, 100), True, PID + 1)
    return buf, rnd


def corrupt(buf, i, rnd):
    """Make the DATA frame at buffer index ``i`` bad in one random way; the kind, for messages."""
    kind = rnd.choice(("type", "len_odd", "len_small", "klen", "vlen", "hlen", "crc_body", "crc_field"))
    h = struct.unpack_from("<Q", buf, i)[0]
    ln = h & F.LEN_MASK
    if kind == "type":
        struct.pack_into("<Q", buf, i, F.header_word(ln, 9))
    elif kind == "len_odd":
        struct.pack_into("<Q", buf, i, F.header_word(ln - 4, F.DATA))
    elif kind == "len_small":
        struct.pack_into("<Q", buf, i, F.header_word(16, F.DATA))
    elif kind == "klen":
        struct.pack_into("<i", buf, i + F.OFF_KEY_LEN, -5)
    elif kind == "vlen":
        struct.pack_into("<i", buf, i + F.OFF_VALUE_LEN, ln)
    elif kind == "hlen":
        struct.pack_into("<i", buf, i + F.OFF_HEADERS_LEN, 1 << 20)
    elif kind == "crc_body":
        if ln > F.HEADER_BYTES:
            buf[i + F.HEADER_BYTES + rnd.randrange(ln - F.HEADER_BYTES)] ^= 0x5A
        else:
            buf[i + F.OFF_TIMESTAMP] ^= 1
    else:
        buf[i + F.OFF_TIMESTAMP + rnd.randrange(8)] ^= 0x10
    return kind


# --- append, append_batch ----------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_append_c_and_numba_write_identical_rings(seed):
    rnd = random.Random(seed)
    ring_bytes = rnd.choice((1 << 13, 1 << 14))
    start = rnd.choice((0, 3 * ring_bytes - 96))
    a, b = make_ring(ring_bytes, start=start), make_ring(ring_bytes, start=start)
    seen = set()
    for step in range(500):
        s = rnd.random()  # the same operation on both rings, each with its own append
        r1 = ring_op(random.Random(s), [a], c_append)
        r2 = ring_op(random.Random(s), [b], numba_append)
        assert r1 == r2, f"step {step}: C {r1} numba {r2}"
        if r1 and r1[0] < 0:
            seen.add(r1[0])
        assert np.array_equal(a, b), f"rings differ after step {step}"
    for buf in (a, b):
        set_word(buf, R.OFF_FLAGS, 0)
        set_word(buf, R.OFF_MAX_MESSAGE, 1 << 30)
    for _ in range(500):  # then until the ring is full
        rec = (None, b"f" * 600, b"", TS)
        r1, r2 = c_append(a, rec), numba_append(b, rec)
        assert r1 == r2 and np.array_equal(a, b)
        if r1 < 0:
            break
    assert r1 == F.ST_FULL


def _batch(rnd, ring_bytes):
    n = rnd.randint(1, 40)
    vals = [None if rnd.random() < 0.15 else rnd_bytes(rnd, 0, rnd.choice((20, 300, 5000))) for _ in range(n)]
    keys = [None if rnd.random() < 0.4 else rnd_bytes(rnd, 0, 16) for _ in range(n)]
    if rnd.random() < 0.2:  # frames that fill one claim's cap (a quarter ring) exactly
        n = 6
        vals = [b"q" * (ring_bytes // 16 - F.HEADER_BYTES)] * n
        keys = [None] * n
    data = b"".join(v for v in vals if v)
    kdata = b"".join(k for k in keys if k)
    starts, lens, kstarts, klens = [], [], [], []
    at = kat = 0
    for v, k in zip(vals, keys):
        starts.append(at)
        lens.append(-1 if v is None else len(v))
        at += len(v) if v else 0
        kstarts.append(kat)
        klens.append(-1 if k is None else len(k))
        kat += len(k) if k else 0
    d = np.frombuffer(data, np.uint8)
    kd = np.frombuffer(kdata, np.uint8)
    arr = [np.array(x, np.int64) for x in (starts, lens, kstarts, klens)]
    return d, arr[0], arr[1], kd, arr[2], arr[3], rnd.randrange(n)


@pytest.mark.parametrize("seed", SEEDS)
def test_append_batch_c_and_numba_write_identical_rings(seed):
    rnd = random.Random(100 + seed)
    ring_bytes = 1 << 14
    a, b = make_ring(ring_bytes), make_ring(ring_bytes)
    seen = set()
    for step in range(300):
        if rnd.random() < 0.6:
            d, starts, lens, kd, kstarts, klens, first = _batch(rnd, ring_bytes)
            oa, ob = np.full(len(starts), -7, np.int64), np.full(len(starts), -7, np.int64)
            r1 = native.append_batch(a.ctypes.data, d, starts, lens, kd, kstarts, klens, TS + step, PID, first, oa)
            r2 = K.append_batch(b, d, starts, lens, kd, kstarts, klens, TS + step, PID, first, ob)
            assert r1 == r2, f"step {step}: C {r1} numba {r2}"
            assert np.array_equal(oa, ob), f"step {step}: offsets differ"
            seen.add(r1 if r1 < 0 else 0)
        else:
            s = rnd.random()
            ring_op(random.Random(s), [a], c_append)
            ring_op(random.Random(s), [b], c_append)
        assert np.array_equal(a, b), f"rings differ after step {step}"
    assert F.ST_FULL in seen and 0 in seen


# --- scan, scan_ring, build_records, Reader: readers over the same bytes -------------------

def _compare_scan(buf, base, mask, pos, end, max_n, min_offset, verify, rows, values_len):
    m1 = np.full((rows, F.META_COLS), -9, np.int64)
    m2 = m1.copy()
    if values_len is None:
        n1 = native.scan(buf, base, mask, pos, end, max_n, min_offset, verify, m1)
        n2 = K.scan(buf, base, mask, pos, end, max_n, min_offset, verify, m2)
        v1 = v2 = None
    else:
        v1, v2 = np.zeros(values_len, np.uint8), np.zeros(values_len, np.uint8)
        n1 = native.scan(buf, base, mask, pos, end, max_n, min_offset, verify, m1, v1)
        n2 = K.scan_copy(buf, base, mask, pos, end, max_n, min_offset, verify, m2, v2)
    what = f"pos={pos} end={end} max_n={max_n} min_offset={min_offset} verify={verify} values={values_len}"
    assert n1 == n2, what
    assert np.array_equal(m1, m2), what
    if v1 is not None:
        assert np.array_equal(v1, v2), what
    return n1, m1


@pytest.mark.parametrize("seed", SEEDS)
def test_scan_c_and_numba_describe_identical_rows_of_a_ring(seed):
    buf, rnd = populated_ring(seed)
    ring_bytes = word(buf, R.OFF_RING_BYTES)
    positions, rows, new = frame_positions(buf)
    assert rows is not None and len(positions) > 5
    reasons = set()
    for trial in range(120):
        if trial == 60:  # then some bad frames among them
            for p in rnd.sample(positions, min(4, len(positions))):
                i = R.HEADER_BYTES + (p & (ring_bytes - 1))
                if (word(buf, i) >> F.TYPE_SHIFT) & F.TYPE_MASK == F.DATA:
                    corrupt(buf, i, rnd)
        pos = rnd.choice(positions + [new])
        end = rnd.choice((BIG, word(buf, R.OFF_RELEASED) + ring_bytes, pos + rnd.randint(0, 2000)))
        off0 = word(buf, R.OFF_CLAIM_OFFSET)
        min_offset = rnd.choice((0, off0 - rnd.randint(0, 40)))
        n, m = _compare_scan(buf, R.HEADER_BYTES, ring_bytes - 1, pos, end, rnd.randint(1, 60), min_offset,
                             rnd.random() < 0.5, rnd.randint(1, 70), rnd.choice((None, 0, 100, 5000, 1 << 16)))
        reasons.add(int(m[0, F.MS_REASON]))
    assert {F.STOP_EMPTY, F.STOP_MAX} <= reasons and reasons & {F.STOP_CORRUPT, F.STOP_CRC}, reasons


def _segment_file(buf, rnd):
    """The DATA frames of a ring back to back, as in a segment file, with a few bad ones."""
    rows, _new, _r, _h = spill_rows(buf)
    data = [bytes(buf[int(r[F.SP_INDEX]): int(r[F.SP_INDEX] + r[F.SP_LEN])]) for r in rows if r[F.SP_TYPE] == F.DATA]
    f = np.frombuffer(b"".join(data), np.uint8).copy()
    starts = np.concatenate(([0], np.cumsum([len(x) for x in data])))[:-1]
    return f, [int(s) for s in starts]


@pytest.mark.parametrize("seed", SEEDS)
def test_scan_c_and_numba_agree_on_segment_chunks_cut_mid_frame(seed):
    buf, rnd = populated_ring(seed + 10)
    f, starts = _segment_file(buf, rnd)
    assert len(starts) > 5
    reasons = set()
    for trial in range(150):
        if trial == 75:
            for s in rnd.sample(starts, min(3, len(starts))):
                corrupt(f, s, rnd)
        s = rnd.choice(starts)
        e = rnd.randint(s, len(f))  # anywhere: mid-frame too
        chunk = f[s:e].copy()
        end = rnd.choice((len(chunk), rnd.randint(0, len(chunk))))
        n, m = _compare_scan(chunk, 0, -1, 0, end, rnd.randint(1, 80), rnd.choice((0, 10**6 + 50, 20)),
                             rnd.random() < 0.7, rnd.randint(1, 90), rnd.choice((None, 64, 4096, 1 << 16)))
        reasons.add(int(m[0, F.MS_REASON]))
    assert F.STOP_END in reasons and reasons & {F.STOP_CORRUPT, F.STOP_CRC}, reasons


@pytest.mark.parametrize("seed", SEEDS)
def test_scan_ring_c_and_numba_agree_by_address(seed):
    buf, rnd = populated_ring(seed + 20)
    positions, _rows, new = frame_positions(buf)
    fast = K.fast()
    for _ in range(80):
        pos = rnd.choice(positions + [new])
        max_n, rows = rnd.randint(1, 50), rnd.randint(2, 60)
        min_offset = rnd.choice((0, word(buf, R.OFF_CLAIM_OFFSET) - rnd.randint(0, 30)))
        m1 = np.full((rows, F.META_COLS), -9, np.int64)
        m2 = m1.copy()
        if rnd.random() < 0.5:
            n1 = native.scan_ring(buf.ctypes.data, pos, max_n, min_offset, m1.ctypes.data, rows)
            n2 = fast["scan_ring"](buf.ctypes.data, pos, max_n, min_offset, m2.ctypes.data, rows)
            v1 = v2 = None
        else:
            vl = rnd.choice((0, 50, 1000, 1 << 16))
            v1, v2 = np.zeros(vl + 1, np.uint8), np.zeros(vl + 1, np.uint8)
            n1 = native.scan_ring(buf.ctypes.data, pos, max_n, min_offset, m1.ctypes.data, rows, v1.ctypes.data, vl)
            n2 = fast["scan_copy_ring"](buf.ctypes.data, pos, max_n, min_offset, m2.ctypes.data, rows,
                                        v2.ctypes.data, vl)
        assert n1 == n2 and np.array_equal(m1, m2), (pos, max_n, rows, min_offset)
        if v1 is not None:
            assert np.array_equal(v1, v2)


@pytest.fixture
def numba_codec(monkeypatch):
    """The numba header codec (kernels/headers.py through core/headers.py) in place of the compiled one,
    for the twins' reference side."""
    monkeypatch.setattr(headers_mod, "_dec_c", None)
    monkeypatch.setattr(headers_mod, "_enc_c", None)
    headers_mod._HDR_CACHE.clear()
    headers_mod._ENC_CACHE.clear()


def _python_records(rows, buf):
    return consumer_fetch.python_records(rows, buf, "t", 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_build_records_c_and_python_build_equal_records(seed, numba_codec):
    buf, rnd = populated_ring(seed + 30)
    ring_bytes = word(buf, R.OFF_RING_BYTES)
    positions, _rows, _new = frame_positions(buf)
    f, starts = _segment_file(buf, rnd)
    total = 0
    for _ in range(40):
        meta = np.zeros((65, F.META_COLS), np.int64)
        if rnd.random() < 0.5:
            src, n = buf, K.scan(buf, R.HEADER_BYTES, ring_bytes - 1, rnd.choice(positions), BIG, 64, 0, True, meta)
        else:
            src, n = f, K.scan(f, 0, -1, rnd.choice(starts), len(f), 64, 0, True, meta)
        rows = meta[1: n + 1]
        got_c = native.build_records(src, rows, "t", 3, ConsumerRecord)
        got_py = _python_records(rows, memoryview(src))
        assert got_c == got_py
        assert all(type(r) is ConsumerRecord for r in got_c)
        total += n
    assert total > 100


class GeneralPath(consumer_fetch.FetchMixin):
    """A consumer's general read path over a bare ring, without C: the numba ``scan_ring`` entry
    point and the Python records builder (``native.build_records`` is set to None by the tests)."""

    def __init__(self):
        self._key_deserializer = self._value_deserializer = None
        self._plain = True
        self._meta = np.zeros((65, F.META_COLS), np.int64)
        self._meta_cell = memoryview(self._meta)
        self._meta_addr, self._meta_rows = self._meta.ctypes.data, len(self._meta)
        self._scan_ring = K.fast()["scan_ring"]


def _ring_object(buf):
    rb = word(buf, R.OFF_RING_BYTES)
    return SimpleNamespace(address=buf.ctypes.data, buf=buf, mask=rb - 1, ring_bytes=rb,
                           memoryview=lambda: memoryview(buf), reclaiming=lambda: word(buf, R.OFF_RECLAIMING))


def _answer(x):
    return tuple(x) if isinstance(x, ConsumerRecord) else [_answer(r) for r in x] if isinstance(x, list) else x


def _outcome(f, *args):
    """f(*args), or the class of the ValueError it raised (header bytes that cannot be decoded)."""
    try:
        return f(*args)
    except ValueError as e:
        return type(e)


def _compare_reads(rd, general, p, more, max_n, where):
    """One read by the compiled Reader (``take(more)``, or ``take_many(max_n)`` when max_n) and one by
    the general path from the same cursor and position. The Reader's answer, or "lapped"."""
    state = (p.cursor, p.position)
    reclaiming = word(p.ring.buf, R.OFF_RECLAIMING)
    lapped = reclaiming > p.cursor
    x = _outcome(rd.take, more) if max_n is None else _outcome(rd.take_many, max_n, 0)
    y = _outcome(general._read_ring, p, 1 if max_n is None else max_n, False)
    after_rd = (rd.cursor, None if rd.position_raw == F.POS_NONE else rd.position_raw)
    if lapped:
        # the Reader leaves a lapped cursor to the general path, which returns no record read from
        # released bytes (it may step over a padding frame to records after them)
        assert x is None, where
        assert not isinstance(y, list) or general._meta[1, F.M_POS] >= reclaiming, where
        return "lapped"
    if isinstance(x, list) and y is ValueError:
        # take_many answers the records before one whose headers cannot be decoded; the general path
        # raises for the whole read; read up to that record, it answers the same
        p.cursor, p.position = state
        y = general._read_ring(p, len(x), False)
    if isinstance(x, (ConsumerRecord, list)):
        assert _answer(y) == _answer(x if isinstance(x, list) else [x]), where
        assert (p.cursor, p.position) == after_rd, where
    elif x == 0:  # nothing published: padding and frames below the position stepped over alike
        assert y is None, where
        assert (p.cursor, p.position) == after_rd, where
    elif x is ValueError:
        assert y is ValueError, where
    return x


@pytest.mark.parametrize("seed", SEEDS)
def test_reader_c_and_the_general_path_take_the_same_records(seed, numba_codec, monkeypatch):
    monkeypatch.setattr(native, "build_records", None)  # the general path without C
    buf, rnd = populated_ring(seed + 40)
    ring_bytes = word(buf, R.OFF_RING_BYTES)
    positions, _rows, new = frame_positions(buf)
    rd = native.Reader(buf.ctypes.data, TopicPartition("t", 3), ConsumerRecord)
    general = GeneralPath()
    p = consumer_partition.PartitionState(TopicPartition("t", 3), _ring_object(buf), None)
    answers = set()
    for trial in range(160):
        if trial == 80:
            for pos in rnd.sample(positions, min(4, len(positions))):
                i = R.HEADER_BYTES + (pos & (ring_bytes - 1))
                if (word(buf, i) >> F.TYPE_SHIFT) & F.TYPE_MASK == F.DATA:
                    corrupt(buf, i, rnd)
        c = rnd.choice(positions + [new])
        off = word(buf, R.OFF_CLAIM_OFFSET)
        position = rnd.choice((0, off - rnd.randint(0, 60), off + 5))
        reclaiming = word(buf, R.OFF_RECLAIMING)
        if rnd.random() < 0.1:  # the spiller passed the cursor
            set_word(buf, R.OFF_RECLAIMING, c + 8 * rnd.randint(1, 64))
        rd.cursor = p.cursor = c
        rd.position_raw = p.position = position
        try:
            for step in range(rnd.randint(1, 40)):
                more = rnd.random() < 0.5
                max_n = None if rnd.random() < 0.6 else rnd.randint(1, 10)
                where = f"trial {trial} step {step} cursor {c} position {position} more {more} max_n {max_n}"
                x = _compare_reads(rd, general, p, more, max_n, where)
                answers.add(x if isinstance(x, str) else x.__name__ if isinstance(x, type) else type(x).__name__)
                if not isinstance(x, (ConsumerRecord, list)):
                    break
        finally:
            set_word(buf, R.OFF_RECLAIMING, reclaiming)
    assert {"ConsumerRecord", "list", "int", "NoneType", "lapped"} <= answers, answers


def test_reader_c_and_the_general_path_wait_at_the_tail_of_an_exactly_full_ring(numba_codec, monkeypatch):
    """The ring is exactly full (claim tail == RELEASED + ring), the oldest frame the padding before
    a wrap: both readers read every frame, and at the tail both find nothing yet."""
    monkeypatch.setattr(native, "build_records", None)
    ring = 4096
    buf = make_ring(ring)
    value = bytes(1000 - F.HEADER_BYTES)  # frames of exactly 1000 bytes
    for i in range(4):  # frames at 0, 1000, 2000, 3000
        assert c_append(buf, (None, value, b"", TS + i)) >= 0
    K.release(buf, 0, 4000)  # RELEASED at 4000, where the next claim puts its padding
    for i in range(4, 8):  # padding [4000, 4096), frames at 4096 .. 7096: the tail at 8096
        assert c_append(buf, (None, value, b"", TS + i)) >= 0
    assert c_append(buf, (None, value, b"", TS + 8)) == K.ST_FULL
    assert word(buf, R.OFF_CLAIM_POS) == 4000 + ring
    rd = native.Reader(buf.ctypes.data, TopicPartition("t", 3), ConsumerRecord)
    general = GeneralPath()
    p = consumer_partition.PartitionState(TopicPartition("t", 3), _ring_object(buf), None)
    for start, position in ((4000, 4), (4000, 6), (4096, 0), (4000 + ring, 8)):
        rd.cursor = p.cursor = start
        rd.position_raw = p.position = position
        got = []
        while True:
            x = _compare_reads(rd, general, p, False, None, f"from {start} position {position}")
            if not isinstance(x, ConsumerRecord):
                break
            got.append(x.offset)
        assert x == 0 and got == list(range(max(position, 4), 8))  # offsets 0-3 were released
        assert p.cursor == rd.cursor == 4000 + ring


# --- the header codec -------------------------------------------------------------------

HEADER_KEYS = ["", "h", "seq", "trace-id", "ключ", "😀" * 3, "\u0000", "k" * 300]


def rnd_header_list(rnd):
    """Headers of every shape the codec takes: none, null and empty values, unicode keys, long
    values and keys (up to the 65535-byte maximum), many headers."""
    shape = rnd.random()
    if shape < 0.05:
        return []
    if shape < 0.10:  # many
        n = rnd.randint(50, 300)
    else:
        n = rnd.randint(1, 6)
    out = []
    for _ in range(n):
        r = rnd.random()
        key = (rnd.choice(HEADER_KEYS) if r < 0.9 else "é" * rnd.randint(1, 32767) if r < 0.95
               else "k" * rnd.choice((65534, 65535)))
        v = rnd.random()
        value = None if v < 0.2 else b"" if v < 0.3 else rnd_bytes(rnd, 1, 70000) if v < 0.35 else rnd_bytes(rnd, 1, 40)
        out.append((key, value))
    return tuple(out) if rnd.random() < 0.3 else out


def mutate_headers(rnd, block: bytes) -> bytes:
    """Bytes that may not be headers: cut, extended, a byte changed, a key or value length field set to
    another value (past the end, negative below -1), or random bytes."""
    b = bytearray(block)
    k = rnd.random()
    if k < 0.2 and b:
        return bytes(b[: rnd.randrange(len(b))])
    if k < 0.3:
        return bytes(b + rnd_bytes(rnd, 1, 8))
    if k < 0.45 and b:
        b[rnd.randrange(len(b))] = rnd.randrange(256)
        return bytes(b)
    if k < 0.9 and b:
        # the length fields of a random header: walk the block to it
        starts, i = [], 0
        while i + 6 <= len(b):
            kl = struct.unpack_from("<H", b, i)[0]
            vl = struct.unpack_from("<i", b, i + 2 + kl)[0] if i + 2 + kl + 4 <= len(b) else 0
            starts.append((i, i + 2 + kl))
            i += 2 + kl + 4 + max(vl, 0)
        if starts:
            ki, vi = rnd.choice(starts)
            if rnd.random() < 0.4:
                struct.pack_into("<H", b, ki, rnd.choice((0, 1, 0xFFFF, rnd.randrange(0x10000))))
            elif vi + 4 <= len(b):
                struct.pack_into("<i", b, vi, rnd.choice((-1, -2, -(1 << 31), (1 << 31) - 1, 0,
                                                          rnd.randint(-5, 50), len(b) - vi - 4, len(b) - vi - 3)))
            return bytes(b)
    return rnd_bytes(rnd, 0, 40)


def _decoded(f, b):
    """f(b), or the error it raised (type and message: what a caller sees)."""
    try:
        return f(b)
    except ValueError as e:  # (UnicodeDecodeError too)
        return type(e), str(e)


@pytest.mark.parametrize("seed", SEEDS)
def test_header_codec_c_and_numba_agree(seed, numba_codec):
    """Random header lists encode to identical bytes in the C twin and the numba kernel; random and
    mutated blocks decode to equal lists in both, or both raise the same error."""
    rnd = random.Random(50 + seed)
    errors = set()
    for _ in range(400):
        h = rnd_header_list(rnd)
        enc_c = native.encode_headers(h)
        enc_numba = headers_mod._encode_headers(h)
        assert enc_c == enc_numba, h
        assert headers_mod.encode_headers(h) == enc_c  # (the public function, numba and cached)
        assert native.decode_headers(enc_c) == headers_mod._decode_headers(enc_c) == [tuple(x) for x in h]
        for _m in range(4):
            bad = mutate_headers(rnd, enc_c)
            if rnd.random() < 0.3:
                bad = mutate_headers(rnd, bad)  # (two faults: the first one in the block decides)
            want = _decoded(native.decode_headers, bad)
            assert _decoded(headers_mod._decode_headers, bad) == want, bad[:200]
            assert _decoded(headers_mod.decode_headers, bad) == want, bad[:200]  # (the public function)
            if isinstance(want, tuple):
                errors.add(want[0].__name__ if want[0] is not ValueError else "at 0" if "at=0 " in want[1] else "past 0")
    assert errors == {"at 0", "past 0", "UnicodeDecodeError"}, errors  # (the mutations reach every error)
    # a key that is not UTF-8 before a header that cannot be: both raise for the key
    two = b"\x01\x00\xff" + struct.pack("<i", -1) + b"\x03\x00ab"
    assert _decoded(headers_mod._decode_headers, two) == _decoded(native.decode_headers, two)
    assert _decoded(native.decode_headers, two)[0] is UnicodeDecodeError
    # the kinds the compiled encoder leaves to the code around it: converted, then the same bytes
    for h, same in (([("k", bytearray(b"v")), ("n", None)], [("k", b"v"), ("n", None)]),
                    ([["k", memoryview(b"v")]], [("k", b"v")]),
                    (iter([("k", b"v")]), [("k", b"v")]),
                    ([("k" * 70000, b"v")], None)):
        assert native.encode_headers(h) is None
        if same is not None:
            assert headers_mod.encode_headers(h) == native.encode_headers(same)


# --- hashes, counters, the group table ---------------------------------------------------

def test_crc32c_c_and_numba_agree():
    rnd = random.Random(60)
    for n in list(range(70)) + [255, 1000, 4093, 65536, 100_001]:
        b = rnd.randbytes(n)
        crc = rnd.choice((0, rnd.getrandbits(32)))
        assert native.crc32c(b, crc) == numba_crc32c(b, crc), n
        assert native.crc32c(b) == numba_crc32c(b), n


def test_murmur2_and_partition_c_and_numba_agree():
    rnd = random.Random(61)
    for _ in range(3000):
        k = rnd.randbytes(rnd.randint(0, 70))
        assert native.murmur2(k) == numba_murmur2(k), k
        n = rnd.choice((1, 2, 3, 7, 64, 1000))
        assert native.partition(k, n) == numba_partition(k, n), (k, n)


def test_add_sleepers_c_and_numba_agree():
    rnd = random.Random(62)
    a, b = make_ring(4096), make_ring(4096)
    for _ in range(500):
        d = rnd.choice((1, -1, 3, -(1 << 31), (1 << 31) - 1))
        assert native.add_sleepers(a.ctypes.data, d) == K.add_sleepers(b, d)
        assert np.array_equal(a, b)


def _group_table(slots):
    raw = np.zeros(G.table_bytes(slots) + 16, np.uint8)
    start = (-raw.ctypes.data) % 16
    buf = raw[start: start + G.table_bytes(slots)]
    struct.pack_into("<q", buf, G.OFF_SLOTS, slots)
    for s in range(slots):
        struct.pack_into("<q", buf, G.slot_at(s) + G.S_OFFSET, G.NO_OFFSET)
    return raw, buf


@pytest.mark.parametrize("seed", SEEDS)
def test_commit_offset_c_and_numba_agree(seed):
    rnd = random.Random(63 + seed)
    slots = 8
    ra, a = _group_table(slots)
    rb, b = _group_table(slots)
    tokens = [G.NO_OWNER] + [G.token(g, m) for g in (1, 2) for m in (1, 2, 3)]
    answers = set()
    for step in range(600):
        slot = rnd.choice(list(range(slots)) + [-1, slots, 1 << 40])
        if rnd.random() < 0.2:
            new = rnd.choice(tokens)
            assert KG.set_owner(a.ctypes.data, slot, KG.ANY, new) == KG.set_owner(b.ctypes.data, slot, KG.ANY, new)
        else:
            tok, off = rnd.choice(tokens), rnd.choice((-1, 0, rnd.getrandbits(40), (1 << 63) - 1))
            r1 = native.commit_offset(a.ctypes.data, slot, tok, off)
            r2 = KG.commit_offset(b.ctypes.data, slot, tok, off)
            assert r1 == r2, (step, slot, tok, off)
            answers.add(r1)
        assert np.array_equal(a, b), step
    assert answers == {G.COMMIT_OK, G.COMMIT_FENCED, G.COMMIT_BAD_SLOT}


# --- Sender: Producer.send in one C call, against the Python send -------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_sender_c_and_python_send_write_identical_rings(seed, bus_nosup, numba_codec, monkeypatch):
    rnd = random.Random(70 + seed)
    parts = 3
    for t in ("c", "py"):
        bus_nosup.create_topic(t, partitions=parts, config={"ring.bytes": 1 << 14})
    # the reference side: the Python send, over the numba append and the numba partitioner
    monkeypatch.setattr(producer_mod, "_append", producer_mod._append_numba)
    monkeypatch.setattr(partitioner_mod, "_part", partitioner_mod._numba_partition)
    pc = bus_nosup.producer(max_block_ms=0)
    pp = bus_nosup.producer(max_block_ms=0)
    assert type(pc.send) is native.Sender
    del pp.send  # the class's Python send
    assert type(pp.send).__name__ == "method"

    def call(send, topic, args, kw):
        try:
            md = send(topic, *args, **kw)
            return ("ok", md.partition, md.offset, md.timestamp_ms)
        except (ShmbusError, ValueError, TypeError) as e:
            return (type(e).__name__, str(e).replace(repr(topic), "T"))

    outcomes = set()
    for step in range(700):
        value = None if rnd.random() < 0.1 else rnd_bytes(rnd, 0, rnd.choice((50, 400, 9000)))
        if value is not None and rnd.random() < 0.05:
            value = bytearray(value)  # a kind the C send hands to the Python one
        kw = {"timestamp_ms": TS + rnd.randint(0, 1000)}
        if rnd.random() < 0.5:
            kw["key"] = rnd_bytes(rnd, 0, 20)
        h = rnd_headers(rnd)
        if h is not None:
            kw["headers"] = h
        if rnd.random() < 0.3:
            kw["partition"] = rnd.choice((0, 1, 2, 3, -1))
        args = (value,) if rnd.random() < 0.5 else ()
        if not args:
            kw["value"] = value
        r1 = call(pc.send, "c", args, kw)
        r2 = call(pp.send, "py", args, kw)
        assert r1 == r2, f"step {step}: {r1} != {r2}"
        outcomes.add(r1[0])
        if rnd.random() < 0.02:  # the supervisor's release, alike (room again: the rings wrap)
            s = rnd.random()
            for t in ("c", "py"):
                for part in range(parts):
                    ring = bus_nosup.ring(bus_nosup.topic_meta(t), part)
                    release_some(ring.buf, random.Random(s + part))
        if step % 50 == 0 or step == 699:
            for part in range(parts):
                ra = bus_nosup.ring(bus_nosup.topic_meta("c"), part).buf
                rb = bus_nosup.ring(bus_nosup.topic_meta("py"), part).buf
                assert np.array_equal(ra[R.HEADER_BYTES:], rb[R.HEADER_BYTES:]), (step, part)
                for off in (R.OFF_CLAIM_POS, R.OFF_CLAIM_OFFSET, R.OFF_RELEASED):
                    assert word(ra, off) == word(rb, off), (step, part, off)
    assert {"ok", "BufferFullError", "ValueError"} <= outcomes, outcomes
    pc.close()
    pp.close()


# --- write_frames: the supervisor's segment writes, against the numba twin -----------------

@pytest.mark.parametrize("seed", SEEDS)
def test_write_frames_c_and_numba_write_identical_segments(seed, tmp_path):
    rnd = random.Random(80 + seed)
    seg_bytes = rnd.choice((700, 3000, 20000))
    da, db = str(tmp_path / "c"), str(tmp_path / "numba")
    # index_interval 512: many index entries
    wa = writer_mod.SegmentWriter(da, seg_bytes, 1 << 40, 0, index_interval=512, write_frames=native.write_frames)
    wb = writer_mod.SegmentWriter(db, seg_bytes, 1 << 40, 0, index_interval=512,
                                  write_frames=writer_mod.numba_write_frames)
    ring_bytes = 1 << 14
    buf = make_ring(ring_bytes, base_offset=rnd.choice((0, 5000)))
    mv = memoryview(buf)
    frames = 0
    for step in range(400):
        ring_op(rnd, [buf], c_append)
        if rnd.random() < 0.3:
            rows, _new, _r, _h = spill_rows(buf)
            if len(rows):
                if rnd.random() < 0.3:  # again from a row before: frames on disk already are passed over
                    k = rnd.randint(0, len(rows) - 1)
                    rows = np.ascontiguousarray(rows[k:])
                ka = wa.append(mv, rows, 0)
                kb = wb.append(mv, rows, 0)
                assert ka == kb, step
                frames += ka
                state = ("size", "base", "next_offset", "last_index_pos", "max_ts")
                assert [getattr(wa, k, None) for k in state] == [getattr(wb, k, None) for k in state], step
                if rnd.random() < 0.5:
                    rel = word(buf, R.OFF_RELEASED)
                    K.release(buf, rel, _new)
    wa.close()
    wb.close()
    fa, fb = dir_files(da), dir_files(db)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    assert frames > 20 and sum(n.endswith(".log") for n in fa) >= (2 if seg_bytes < 3000 else 1)
    assert sum(len(fa[n]) for n in fa if n.endswith(".index")) > 8 * sum(n.endswith(".log") for n in fa)


def test_write_frames_c_and_numba_agree_on_bad_rows(tmp_path):
    """A row outside the buffer, or rows of too few columns: ValueError from both, nothing written."""
    buf = make_ring(1 << 12)
    mv = memoryview(buf)
    for impl, step in (("c", native.write_frames), ("numba", writer_mod.numba_write_frames)):
        w = writer_mod.SegmentWriter(str(tmp_path / impl), 1 << 20, 1 << 40, 0, write_frames=step)
        w._open(0, 0)
        rows = np.array([[0, 64, 0, 1, F.DATA], [len(buf) - 8, 64, 1, 1, F.DATA]], np.int64)
        with pytest.raises(ValueError, match="row 1 lies outside the buffer"):
            step(mv, rows, 5, 0, w.fd, w.ifd, w.tfd, 0, 1 << 20, 0, -512, -1, 512, -1)
        with pytest.raises(ValueError, match="5 columns"):
            step(mv, rows[:, :4].copy(), 4, 0, w.fd, w.ifd, w.tfd, 0, 1 << 20, 0, -512, -1, 512, -1)
        w.close()
        assert all(len(v) == 0 for v in dir_files(str(tmp_path / impl)).values()), impl


# the test that drives each compiled verb against its twin
TWIN_TESTS = {
    "append": test_append_c_and_numba_write_identical_rings,
    "append_batch": test_append_batch_c_and_numba_write_identical_rings,
    "Reader": test_reader_c_and_the_general_path_take_the_same_records,
    "crc32c": test_crc32c_c_and_numba_agree,
    "murmur2": test_murmur2_and_partition_c_and_numba_agree,
    "partition": test_murmur2_and_partition_c_and_numba_agree,
    "add_sleepers": test_add_sleepers_c_and_numba_agree,
    "Sender": test_sender_c_and_python_send_write_identical_rings,
    "commit_offset": test_commit_offset_c_and_numba_agree,
    "encode_headers": test_header_codec_c_and_numba_agree,
    "decode_headers": test_header_codec_c_and_numba_agree,
    "build_records": test_build_records_c_and_python_build_equal_records,
    "scan": test_scan_c_and_numba_describe_identical_rows_of_a_ring,
    "scan_ring": test_scan_ring_c_and_numba_agree_by_address,
    "write_frames": test_write_frames_c_and_numba_write_identical_segments,
}


def test_every_compiled_verb_has_a_differential_test():
    assert set(TWIN_TESTS) == set(native._VERBS), set(TWIN_TESTS) ^ set(native._VERBS)
