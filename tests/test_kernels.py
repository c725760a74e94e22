"""The frame kernels against a slow pure-Python reader over hand-built bytes.

Each test lays out a ring by hand (a 4096-byte ring header, then the ring, in
a 64-byte aligned numpy array; see ``layout/ring.py``), calls one kernel, and
checks the bytes with :func:`ref_frames` / :func:`parse_frame`, which read
``layout/frame.py`` with ``struct`` and the ``crc32c`` package and share no
code with the kernels. One test per documented branch.
"""

from __future__ import annotations

import os
import random
import secrets
import struct
from typing import NamedTuple

import crc32c
import numpy as np
import pytest

from helpers.rings import BIG, HDR, PID, TS, make_ring, set_word, word

from shmbus.core import native
from shmbus.kernels import frames as K
from shmbus.layout import frame as F
from shmbus.layout import ring as R
from shmbus.core.headers import decode_headers, encode_headers



# --- a ring by hand -----------------------------------------------------------

def ring_word(buf, pos: int) -> int:
    """The unsigned 64-bit word at ring position ``pos``."""
    rb = word(buf, R.OFF_RING_BYTES)
    return struct.unpack_from("<Q", buf, HDR + (pos & (rb - 1)))[0]


def set_ring_word(buf, pos: int, v: int) -> None:
    rb = word(buf, R.OFF_RING_BYTES)
    struct.pack_into("<Q", buf, HDR + (pos & (rb - 1)), v)


def claim_pos(buf) -> int:
    return word(buf, R.OFF_CLAIM_POS)


def next_offset(buf) -> int:
    return word(buf, R.OFF_CLAIM_OFFSET)


def htype(h: int) -> int:
    return (h >> 32) & 0xFF


def hlen(h: int) -> int:
    return h & 0xFFFFFFFF


def hpid(h: int) -> int:
    return (h >> 40) & F.PID_MASK


# --- the slow reference reader -----------------------------------------------

class Frame(NamedTuple):
    pos: int  # absolute position
    ftype: int
    length: int
    offset: int = -1
    timestamp: int = -1
    key: bytes | None = None
    value: bytes | None = None
    headers: bytes = b""
    crc_ok: bool = True


def parse_frame(b: bytes, pos: int = 0) -> Frame:
    """One frame from its bytes, by layout/frame.py."""
    (h,) = struct.unpack_from("<Q", b, 0)
    t, ln = htype(h), hlen(h)
    if t != F.DATA:
        return Frame(pos, t, ln)
    off, ts, kl, vl, hl, crc = struct.unpack_from("<qqiiiI", b, 8)
    body = b[40: 40 + max(kl, 0) + max(vl, 0) + hl]
    key = body[:kl] if kl >= 0 else None
    v0 = max(kl, 0)
    value = body[v0: v0 + vl] if vl >= 0 else None
    headers = body[v0 + max(vl, 0):]
    want = crc32c.crc32c(b[8:36] + body)
    return Frame(pos, t, ln, off, ts, key, value, headers, want == crc)


def ref_frames(buf, pos: int, end: int | None = None):
    """Published frames from ``pos`` until a FREE or RESERVED word or the claim tail
    (``end``): (frames, stop position)."""
    rb = word(buf, R.OFF_RING_BYTES)
    ring = bytes(buf[HDR: HDR + rb])
    end = claim_pos(buf) if end is None else end
    out = []
    while pos < end:
        idx = pos & (rb - 1)
        (h,) = struct.unpack_from("<Q", ring, idx)
        t, ln = htype(h), hlen(h)
        if t in (F.FREE, F.RESERVED):
            break
        assert ln >= 8 and ln % 8 == 0, f"bad frame length {ln} at {pos}"
        assert idx + ln <= rb, f"frame straddles the ring end: pos={pos} idx={idx} len={ln}"
        out.append(parse_frame(ring[idx: idx + ln], pos))
        pos += ln
    return out, pos


def data_frames(buf, pos: int = 0):
    return [f for f in ref_frames(buf, pos)[0] if f.ftype == F.DATA]


def segment_bytes(frames_bytes) -> np.ndarray:
    """A segment-file chunk: frames back to back."""
    return np.frombuffer(b"".join(frames_bytes), np.uint8).copy()


def frame_bytes(buf, f: Frame) -> bytes:
    rb = word(buf, R.OFF_RING_BYTES)
    i = HDR + (f.pos & (rb - 1))
    return bytes(buf[i: i + f.length])


# --- kernel wrappers ----------------------------------------------------------

# The single-record append exists twice: the numba kernel and its compiled twin in
# shmbus/core/_native.c (shmbus/native.py). Every test_append_* test (not the batch ones)
# runs against both.
_IMPL = {"append": "numba"}


def pytest_generate_tests(metafunc):
    name = metafunc.function.__name__
    if name.startswith("test_append") and "batch" not in name:
        metafunc.parametrize("append_impl", ["numba", "native"], indirect=True)


@pytest.fixture(autouse=True)
def append_impl(request):
    impl = getattr(request, "param", "numba")
    if impl == "native" and native.append is None:
        if os.environ.get("SHMBUS_NATIVE") == "0":
            pytest.skip("SHMBUS_NATIVE=0 in this run")
        pytest.fail(f"the compiled verbs are not loaded: {native.REASON} (build them: pip install .)")
    _IMPL["append"] = impl
    yield impl
    _IMPL["append"] = "numba"


def append(buf, value=b"", key=None, headers=b"", ts=TS, pid=PID, *, null_value=False) -> int:
    """One record at ``buf``'s address: append_any (the producer's general numba entry point), or
    native.append, by the test's ``append_impl``."""
    if _IMPL["append"] == "native":
        v = None if value is None or null_value else value
        return native.append(buf.ctypes.data, key, v, headers, ts, pid)
    f = K.fast()["append_any"]
    v = b"" if value is None else value
    vlen = -1 if value is None or null_value else len(v)
    return f(buf.ctypes.data, key if key is not None else b"", -1 if key is None else len(key), v, vlen,
             headers, ts, pid)


def append_batch(buf, values, keys=None, first=0, ts=TS, pid=PID):
    n = len(values)
    lens = np.array([len(v) if v is not None else -1 for v in values], np.int64)
    data = np.frombuffer(b"".join(v for v in values if v is not None), np.uint8)
    starts = np.zeros(n, np.int64)
    np.cumsum(np.maximum(lens, 0)[:-1], out=starts[1:])
    if keys is None:
        keys = [None] * n
    klens = np.array([len(k) if k is not None else -1 for k in keys], np.int64)
    kdata = np.frombuffer(b"".join(k for k in keys if k is not None), np.uint8)
    kstarts = np.zeros(n, np.int64)
    np.cumsum(np.maximum(klens, 0)[:-1], out=kstarts[1:])
    out = np.full(n, -1, np.int64)
    r = K.append_batch(buf, data, starts, lens, kdata, kstarts, klens, ts, pid, first, out)
    return r, out


def new_meta(rows: int = 64) -> np.ndarray:
    return np.zeros((rows + 1, K.META_COLS), np.int64)


def scan_ring(buf, pos, max_n=1000, min_offset=0, verify=False, meta=None):
    meta = new_meta() if meta is None else meta
    rb = word(buf, R.OFF_RING_BYTES)
    n = K.scan(buf, HDR, rb - 1, pos, BIG, max_n, min_offset, verify, meta)
    return n, meta


def flen(klen=-1, vlen=-1, hlen_=0) -> int:
    return F.frame_length(klen, vlen, hlen_)


@pytest.fixture
def shm_ring():
    """A real ``Ring`` on a uniquely named shared-memory object, unlinked afterwards."""
    from shmbus.core.ring import Ring, unlink

    name = f"/shmbus-test-{secrets.token_hex(6)}"
    r = Ring.create(name, 8192, 1000, 7, 3)
    try:
        yield r
    finally:
        r.close()
        unlink(name)


# --- append one ---------------------------------------------------------------

def test_append_writes_the_documented_frame():
    buf = make_ring()
    hdrs = struct.pack("<H", 2) + b"h1" + struct.pack("<i", 3) + b"abc"
    r = append(buf, b"hello world", key=b"k3y", headers=hdrs)
    assert r >= 0 and r >> 2 == 0
    body_len = 3 + 11 + len(hdrs)
    ln = F.align(40 + body_len)
    b = bytes(buf[HDR: HDR + ln])
    (h,) = struct.unpack_from("<Q", b, 0)
    assert h == ln | (F.DATA << 32)  # published DATA, no pid left in aux
    assert struct.unpack_from("<qqiiiI", b, 8)[:5] == (0, TS, 3, 11, len(hdrs))
    assert b[40: 40 + body_len] == b"k3y" + b"hello world" + hdrs
    assert b[40 + body_len: ln] == bytes(ln - 40 - body_len)  # zero padding to 8
    assert struct.unpack_from("<I", b, 36)[0] == crc32c.crc32c(b[8:36] + b[40: 40 + body_len])
    assert ring_word(buf, ln) == 0  # nothing after it
    assert claim_pos(buf) == ln and next_offset(buf) == 1


def test_append_null_key_and_null_value_store_minus_one():
    buf = make_ring()
    assert append(buf, None, key=b"tomb") >> 2 == 0  # a tombstone
    assert append(buf, b"v") >> 2 == 1  # no key
    assert append(buf, b"", key=b"") >> 2 == 2  # empty, not null
    f0, f1, f2 = data_frames(buf)
    assert struct.unpack_from("<ii", frame_bytes(buf, f0), 24) == (4, -1)
    assert (f0.key, f0.value, f0.length) == (b"tomb", None, 48)
    assert struct.unpack_from("<ii", frame_bytes(buf, f1), 24) == (-1, 1)
    assert (f1.key, f1.value, f1.length) == (None, b"v", 48)
    assert struct.unpack_from("<ii", frame_bytes(buf, f2), 24) == (0, 0)
    assert (f2.key, f2.value, f2.length) == (b"", b"", 40)
    assert all(f.crc_ok for f in (f0, f1, f2))


def test_append_v_and_append_kv_entry_points():
    fast = K.fast()
    buf = make_ring(base_offset=500)
    r1 = fast["append_v"](buf.ctypes.data, b"only a value", TS, PID)
    r2 = fast["append_kv"](buf.ctypes.data, b"key", b"and value", TS + 1, PID)
    assert (r1 >> 2, r2 >> 2) == (500, 501)
    f1, f2 = data_frames(buf)
    assert f1[1:] == (F.DATA, 56, 500, TS, None, b"only a value", b"", True)
    assert f2[1:] == (F.DATA, 56, 501, TS + 1, b"key", b"and value", b"", True)


def test_append_offsets_are_consecutive_from_the_ring_base(shm_ring):
    # a real Ring: the header fields Ring.create writes are the ones the kernels read
    buf = shm_ring.buf
    offs = [append(buf, b"x" * i) >> 2 for i in range(10)]
    assert offs == list(range(1000, 1010))
    assert shm_ring.next_offset() == 1010
    assert [f.offset for f in data_frames(buf)] == offs
    assert [f.value for f in data_frames(buf)] == [b"x" * i for i in range(10)]
    assert shm_ring.claim_position() == sum(flen(-1, i) for i in range(10))


def test_append_pads_the_ring_end_when_a_frame_does_not_fit():
    rb = 4096
    buf = make_ring(rb, start=rb - 48, base_offset=9)  # 48 bytes left before the end
    r = append(buf, b"v" * 24)  # a 64-byte frame
    assert r >> 2 == 9
    pad = ring_word(buf, rb - 48)
    assert (htype(pad), hlen(pad)) == (F.PADDING, 48)
    frames, end = ref_frames(buf, rb - 48)
    assert [(f.pos, f.ftype, f.length) for f in frames] == [(rb - 48, F.PADDING, 48), (rb, F.DATA, 64)]
    assert frames[1].value == b"v" * 24 and frames[1].crc_ok
    assert claim_pos(buf) == end == rb + 64


def test_append_exactly_to_the_ring_end_needs_no_padding():
    rb = 4096
    buf = make_ring(rb, start=rb - 48)
    append(buf, b"v" * 8)  # 48 bytes: fits exactly
    frames, end = ref_frames(buf, rb - 48)
    assert [(f.ftype, f.length) for f in frames] == [(F.DATA, 48)]
    assert end == rb and ring_word(buf, 0) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frames_never_straddle_across_many_wraps(seed):
    """Random sizes through a 4 KiB ring, spilled by hand when full: every frame lies inside the ring."""
    rng = random.Random(seed)
    rb = 4096
    buf = make_ring(rb, start=rb * 3 - 200, base_offset=77)
    meta = new_meta(256)
    sent, got = [], []

    def spill():
        rel = word(buf, R.OFF_RELEASED)
        frames, _ = ref_frames(buf, rel)
        got.extend((f.offset, f.value) for f in frames if f.ftype == F.DATA)
        K.spill_scan(buf, rel, rb, meta)
        K.release(buf, rel, int(meta[0, 0]))

    for i in range(400):
        v = bytes([i & 0xFF]) * rng.randrange(0, 900)
        r = append(buf, v)
        if r == K.ST_FULL:
            spill()
            r = append(buf, v)
        assert r >= 0
        sent.append((r >> 2, v))
    spill()
    assert got == sent
    assert [o for o, _ in sent] == list(range(77, 477))


def test_append_full_when_the_claim_would_pass_released_plus_ring():
    rb = 4096
    buf = make_ring(rb)
    for i in range(3):
        assert append(buf, b"a" * 1000) >> 2 == i  # 1040-byte frames: 3120 bytes
    before = bytes(buf)
    # the 4th needs 976 bytes of padding + 1040: 5136 > released (0) + 4096
    assert append(buf, b"b" * 1000) == K.ST_FULL
    assert bytes(buf) == before  # nothing claimed, nothing written
    # released up to 1040: 5136 - 1040 == 4096 is allowed (not past)
    K.release(buf, 0, 1040)
    r = append(buf, b"b" * 1000)
    assert r >> 2 == 3
    frames, end = ref_frames(buf, 1040)
    assert [(f.pos, f.ftype, f.length) for f in frames] == [
        (1040, F.DATA, 1040), (2080, F.DATA, 1040), (3120, F.PADDING, 976), (4096, F.DATA, 1040)]
    assert end == claim_pos(buf) == 5136


def test_append_a_full_ring_exactly_then_full():
    rb = 4096
    buf = make_ring(rb, start=8192)
    for _ in range(4):
        assert append(buf, b"c" * 984) >= 0  # 1024-byte frames fill it exactly
    assert claim_pos(buf) == 8192 + rb
    assert append(buf, b"") == K.ST_FULL


def test_append_too_large_over_half_the_ring():
    rb = 4096
    buf = make_ring(rb)
    assert append(buf, b"x" * 2009) == K.ST_TOO_LARGE  # 2056 bytes > 2048
    assert append(buf, b"x" * 2000, key=b"k" * 9) == K.ST_TOO_LARGE
    assert claim_pos(buf) == 0 and next_offset(buf) == 0
    assert append(buf, b"x" * 2008) >> 2 == 0  # exactly half fits
    assert data_frames(buf)[0].length == 2048


def test_append_to_a_deleted_ring():
    buf = make_ring()
    set_word(buf, R.OFF_FLAGS, R.FLAG_DELETED)
    assert append(buf, b"late") == K.ST_DELETED
    assert claim_pos(buf) == 0 and next_offset(buf) == 0 and ring_word(buf, 0) == 0
    r, out = append_batch(buf, [b"a", b"b"])
    assert r == K.ST_DELETED and list(out) == [-1, -1]
    assert claim_pos(buf) == 0


def test_append_wake_bit_when_a_consumer_sleeps():
    buf = make_ring(65536)
    assert append(buf, b"a") & 1 == 0
    assert K.add_sleepers(buf, 1) == 0  # returns the count before
    assert struct.unpack_from("<i", buf, R.OFF_SLEEPERS)[0] == 1
    assert append(buf, b"b") & 1 == 1
    assert K.add_sleepers(buf, -1) == 1
    assert append(buf, b"c") & 1 == 0


def test_append_spill_bit_once_when_the_ring_passes_half_full():
    rb = 4096
    buf = make_ring(rb)
    bits = [append(buf, b"z" * 216) & 2 for _ in range(15)]  # 256-byte frames
    # 8 frames = 2048 (half, not past); the 9th passes half; later ones do not ring again
    assert bits == [0] * 8 + [2] + [0] * 6


# --- append a batch -----------------------------------------------------------

def test_append_batch_consecutive_offsets_all_published():
    buf = make_ring(base_offset=40)
    vals = [b"v0", None, b"value-two", b""]
    keys = [b"k0", b"k1", None, b"k3"]
    r, out = append_batch(buf, vals, keys)
    assert r >= 0 and r >> 2 == 4
    assert list(out) == [40, 41, 42, 43]
    frames, end = ref_frames(buf, 0)
    assert all(f.ftype == F.DATA for f in frames)  # the first frame was published too (last)
    assert [(f.offset, f.key, f.value, f.timestamp, f.crc_ok) for f in frames] == [
        (40, b"k0", b"v0", TS, True), (41, b"k1", None, TS, True), (42, None, b"value-two", TS, True),
        (43, b"k3", b"", TS, True)]
    assert end == claim_pos(buf) and next_offset(buf) == 44
    assert all(hpid(ring_word(buf, f.pos)) == 0 for f in frames)


def test_append_batch_claim_is_capped_at_a_quarter_ring():
    rb = 4096
    buf = make_ring(rb)
    vals = [b"%03d" % i + b"." * 97 for i in range(20)]  # 144-byte frames; 1024 // 144 = 7
    r, out = append_batch(buf, vals)
    assert r >> 2 == 7 and list(out[:7]) == list(range(7)) and (out[7:] == -1).all()
    assert claim_pos(buf) == 7 * 144
    r, out2 = append_batch(buf, vals, first=7)
    assert r >> 2 == 7 and list(out2[7:14]) == list(range(7, 14))
    assert [f.value for f in data_frames(buf)] == vals[:14]


def test_append_batch_one_record_larger_than_the_cap_goes_alone():
    rb = 4096
    buf = make_ring(rb)
    r, out = append_batch(buf, [b"L" * 1500, b"s"])  # 1544 bytes > 1024, <= 2048
    assert r >> 2 == 1 and out[0] == 0
    r, out = append_batch(buf, [b"L" * 1500, b"s"], first=1)
    assert r >> 2 == 1 and out[1] == 1


def test_append_batch_too_large_record():
    rb = 4096
    buf = make_ring(rb)
    r, _ = append_batch(buf, [b"x" * 2100])
    assert r == K.ST_TOO_LARGE and claim_pos(buf) == 0
    # records before a too-large one are sent; the call for it then fails
    r, out = append_batch(buf, [b"a", b"b", b"x" * 2100])
    assert r >> 2 == 2 and list(out[:2]) == [0, 1]
    r, _ = append_batch(buf, [b"a", b"b", b"x" * 2100], first=2)
    assert r == K.ST_TOO_LARGE and next_offset(buf) == 2


def test_append_batch_full():
    rb = 4096
    buf = make_ring(rb)
    for _ in range(3):
        append(buf, b"a" * 1000)
    before = bytes(buf)
    r, _ = append_batch(buf, [b"b" * 1000, b"c"])  # the first alone needs 976 + 1040
    assert r == K.ST_FULL and bytes(buf) == before


def test_append_batch_pads_the_ring_end_and_keeps_the_claim_contiguous():
    rb = 4096
    buf = make_ring(rb, start=rb - 100 + 4)  # 96 bytes left
    vals = [b"%d" % i * 10 for i in range(5)]
    r, out = append_batch(buf, vals)
    assert r >> 2 == 5
    frames, end = ref_frames(buf, rb - 96)
    assert (frames[0].ftype, frames[0].length) == (F.PADDING, 96)
    assert [f.pos & (rb - 1) for f in frames[1:]] == [0, 56, 112, 168, 224]
    assert [f.value for f in frames[1:]] == vals


# --- scan ---------------------------------------------------------------------

def fill(buf, n, value=lambda i: b"val%d" % i, key=lambda i: b"key%d" % i, ts=lambda i: TS + i):
    for i in range(n):
        assert append(buf, value(i), key=key(i), ts=ts(i)) >= 0


def test_scan_describes_frames_like_the_reference():
    buf = make_ring(start=4096 - 200)  # frames across the wrap, with padding
    hdrs = encode_headers([("a", b"1")])
    append(buf, b"first", key=b"k", headers=hdrs)
    append(buf, None, key=b"tomb")
    fill(buf, 6)
    n, meta = scan_ring(buf, 4096 - 200, verify=True)
    ref = data_frames(buf, 4096 - 200)
    assert n == len(ref) == 8
    assert meta[0, 2] == K.STOP_EMPTY and meta[0, 0] == claim_pos(buf)
    for row, f in zip(meta[1: n + 1], ref):
        pos, off, ts, kl, vl, hl, bi, ln = (int(x) for x in row)
        assert (pos, off, ts, ln) == (f.pos, f.offset, f.timestamp, f.length)
        assert kl == (len(f.key) if f.key is not None else -1)
        assert vl == (len(f.value) if f.value is not None else -1)
        assert hl == len(f.headers)
        assert bi == HDR + (f.pos & 4095) + 40
        assert bytes(buf[bi + max(kl, 0): bi + max(kl, 0) + max(vl, 0)]) == (f.value or b"")


def test_scan_stops_empty_on_a_free_word():
    buf = make_ring()
    n, meta = scan_ring(buf, 0)
    assert n == 0 and list(meta[0, :4]) == [0, 0, K.STOP_EMPTY, -1]
    fill(buf, 3)
    n, meta = scan_ring(buf, 0)
    assert n == 3 and meta[0, 2] == K.STOP_EMPTY and meta[0, 0] == claim_pos(buf)


def test_scan_stops_empty_on_a_reserved_word():
    buf = make_ring()
    fill(buf, 2)
    pos = K.claim_and_abandon(buf, 30, True, 99)  # a writer stopped mid-write
    h = ring_word(buf, pos)
    assert (htype(h), hlen(h), hpid(h)) == (F.RESERVED, flen(-1, 30), 99)
    fill(buf, 2)  # published after it
    n, meta = scan_ring(buf, 0)
    assert n == 2 and meta[0, 2] == K.STOP_EMPTY and meta[0, 0] == pos


def test_scan_max_records_then_resume():
    buf = make_ring()
    fill(buf, 10)
    n, meta = scan_ring(buf, 0, max_n=4)
    assert n == 4 and meta[0, 2] == K.STOP_MAX
    assert list(meta[1:5, 1]) == [0, 1, 2, 3]
    n, meta = scan_ring(buf, int(meta[0, 0]), max_n=100)
    assert list(meta[1: n + 1, 1]) == list(range(4, 10))
    # the meta array's rows also cap a scan
    small = new_meta(3)
    n, small = scan_ring(buf, 0, max_n=100, meta=small)
    assert n == 3 and small[0, 2] == K.STOP_MAX


def test_scan_min_offset_passes_earlier_frames():
    buf = make_ring(base_offset=100)
    fill(buf, 8)
    n, meta = scan_ring(buf, 0, min_offset=105)
    assert n == 3 and list(meta[1:4, 1]) == [105, 106, 107]
    assert meta[0, 0] == claim_pos(buf)
    n, meta = scan_ring(buf, 0, min_offset=1000)
    assert n == 0 and meta[0, 2] == K.STOP_EMPTY and meta[0, 0] == claim_pos(buf)


def test_scan_stop_end_of_a_segment_chunk():
    buf = make_ring()
    fill(buf, 4)
    frames = data_frames(buf)
    seg = segment_bytes(frame_bytes(buf, f) for f in frames)
    meta = new_meta()
    n = K.scan(seg, 0, -1, 0, len(seg), 100, 0, True, meta)
    assert n == 4 and meta[0, 2] == K.STOP_END and meta[0, 0] == len(seg)
    assert list(meta[1:5, 6]) == [sum(f.length for f in frames[:i]) + 40 for i in range(4)]
    # a frame cut short by the end of the chunk does not count
    n = K.scan(seg, 0, -1, 0, len(seg) - 8, 100, 0, True, meta)
    assert n == 3 and meta[0, 2] == K.STOP_END and meta[0, 0] == len(seg) - frames[3].length
    # fewer than 8 bytes left: end
    n = K.scan(seg, 0, -1, frames[0].length, frames[0].length + 4, 100, 0, True, meta)
    assert n == 0 and meta[0, 2] == K.STOP_END


def _corrupt_cases():
    return {
        "bad type": lambda b: struct.pack_into("<Q", b, 0, 48 | (9 << 32)),
        "length under 8": lambda b: struct.pack_into("<Q", b, 0, 0 | (F.PADDING << 32)),
        "length not a multiple of 8": lambda b: struct.pack_into("<Q", b, 0, 44 | (F.DATA << 32)),
        "DATA shorter than a header": lambda b: struct.pack_into("<Q", b, 0, 32 | (F.DATA << 32)),
        "key length under -1": lambda b: struct.pack_into("<i", b, 24, -2),
        "negative headers length": lambda b: struct.pack_into("<i", b, 32, -1),
        "lengths past the frame": lambda b: struct.pack_into("<i", b, 28, 100),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_scan_stop_corrupt_on_a_bad_header(case):
    buf = make_ring()
    fill(buf, 3, value=lambda i: b"12345678", key=lambda i: None)  # 48-byte frames
    seg = segment_bytes(frame_bytes(buf, f) for f in data_frames(buf))
    _corrupt_cases()[case](memoryview(seg)[48:])  # the second frame
    for verify in (False, True):
        meta = new_meta()
        n = K.scan(seg, 0, -1, 0, len(seg), 100, 0, verify, meta)
        assert n == 1 and meta[0, 2] == K.STOP_CORRUPT and meta[0, 3] == 48 and meta[0, 0] == 48


def test_scan_stop_crc_on_a_flipped_byte_only_when_verifying():
    buf = make_ring()
    fill(buf, 3)
    frames = data_frames(buf)
    p1 = frames[1].pos
    buf[HDR + p1 + 40 + 2] ^= 0x01  # a body byte of the second frame
    n, meta = scan_ring(buf, 0, verify=True)
    assert n == 1 and meta[0, 2] == K.STOP_CRC and meta[0, 3] == p1 and meta[0, 0] == p1
    n, meta = scan_ring(buf, 0, verify=False)
    assert n == 3 and meta[0, 2] == K.STOP_EMPTY
    buf[HDR + p1 + 40 + 2] ^= 0x01
    buf[HDR + p1 + 16] ^= 0x80  # the timestamp is covered too
    n, meta = scan_ring(buf, 0, verify=True)
    assert n == 1 and meta[0, 2] == K.STOP_CRC
    buf[HDR + p1 + 16] ^= 0x80
    n, meta = scan_ring(buf, 0, verify=True)
    assert n == 3


def test_scan_skips_padding_and_poison():
    buf = make_ring()
    append(buf, b"a")
    p = claim_pos(buf)
    set_ring_word(buf, p, F.header_word(8, F.POISON))  # an unblock in progress, as a reader may see it
    set_ring_word(buf, p + 8, F.header_word(16, F.PADDING))
    set_word(buf, R.OFF_CLAIM_POS, p + 24)
    append(buf, b"b")
    n, meta = scan_ring(buf, 0)
    assert n == 2 and list(meta[1:3, 1]) == [0, 1] and meta[1 + 1, 0] == p + 24


def tiled_full_ring():
    """A 4 KiB ring filled exactly (claim == released + ring) with 64 published 64-byte frames."""
    buf = make_ring(4096)
    for i in range(64):
        assert append(buf, b"%024d" % i) >> 2 == i
    assert append(buf, b"") == K.ST_FULL and claim_pos(buf) == 4096
    return buf


_FULL_RING_BUG = ("BUG: scan in ring mode has no end (scan_ring/scan_copy_ring pass end=1<<62): in a ring "
                  "filled exactly, the word at the claim tail is the oldest frame's header, so a scan runs "
                  "round the ring again: records twice, and with min_offset past them an endless loop")


def test_scan_ring_reads_an_exactly_full_ring_once():
    buf = tiled_full_ring()
    meta = new_meta(200)
    n = K.fast()["scan_ring"](buf.ctypes.data, 0, 200, 0, meta.ctypes.data, meta.shape[0])
    assert n == 64 and list(meta[1:65, 1]) == list(range(64))


def test_scan_copy_ring_reads_an_exactly_full_ring_once():
    buf = tiled_full_ring()
    meta = new_meta(200)
    values = np.zeros(1 << 16, np.uint8)
    n = K.fast()["scan_copy_ring"](buf.ctypes.data, 0, 200, 0, meta.ctypes.data, meta.shape[0],
                                   values.ctypes.data, len(values))
    assert n == 64 and bytes(values[:24]) == b"%024d" % 0


# --- scan_copy ----------------------------------------------------------------

def scan_copy(buf, pos, values, max_n=1000, min_offset=0):
    meta = new_meta()
    rb = word(buf, R.OFF_RING_BYTES)
    n = K.scan_copy(buf, HDR, rb - 1, pos, BIG, max_n, min_offset, False, meta, values)
    return n, meta


def test_scan_copy_values_back_to_back():
    buf = make_ring(start=4096 - 104)
    vals = [b"alpha", None, b"", b"delta-delta", b"e" * 300]
    for i, v in enumerate(vals):
        append(buf, v, key=b"key-%d" % i)
    values = np.zeros(4096, np.uint8)
    n, meta = scan_copy(buf, 4096 - 104, values, min_offset=0)
    assert n == 5 and meta[0, 2] == K.STOP_EMPTY
    starts = [int(x) for x in meta[1:6, 6]]
    lens = [int(x) for x in meta[1:6, 4]]
    assert lens == [5, -1, 0, 11, 300]
    assert starts == [0, 5, 5, 5, 16]
    got = [bytes(values[s: s + ln]) if ln >= 0 else None for s, ln in zip(starts, lens)]
    assert got == vals
    assert bytes(values[:316]) == b"".join(v or b"" for v in vals)


def test_scan_copy_stops_early_when_the_values_buffer_is_full():
    buf = make_ring(base_offset=10)
    fill(buf, 5, value=lambda i: bytes([65 + i]) * 100, key=lambda i: None)
    frames = data_frames(buf)
    values = np.zeros(250, np.uint8)
    n, meta = scan_copy(buf, 0, values)
    assert n == 2 and meta[0, 1] == 2 and meta[0, 2] == K.STOP_MAX
    assert meta[0, 0] == frames[2].pos  # resume at the first that did not fit
    assert bytes(values[:200]) == b"A" * 100 + b"B" * 100
    n, meta = scan_copy(buf, int(meta[0, 0]), values)
    assert n == 2 and list(meta[1:3, 1]) == [12, 13]
    # a single value larger than the buffer: nothing, resume at it
    n, meta = scan_copy(buf, frames[4].pos, np.zeros(99, np.uint8))
    assert n == 0 and meta[0, 2] == K.STOP_MAX and meta[0, 0] == frames[4].pos


def test_scan_copy_min_offset():
    buf = make_ring(base_offset=0)
    fill(buf, 6, value=lambda i: b"%d" % i)
    values = np.zeros(64, np.uint8)
    n, meta = scan_copy(buf, 0, values, min_offset=4)
    assert n == 2 and bytes(values[:2]) == b"45" and list(meta[1:3, 6]) == [0, 1]


# --- spill_scan ---------------------------------------------------------------

def test_spill_scan_describes_data_and_padding_then_reports_the_blocked_header():
    rb = 4096
    start = rb * 2 - 64
    buf = make_ring(rb, start=start, base_offset=3)
    append(buf, b"a" * 8, ts=111)  # 48 bytes, 16 left
    append(buf, b"b" * 20, ts=222)  # 64 bytes: padding 16, then at index 0
    pos = K.claim_and_abandon(buf, 0, True, 31337)  # RESERVED, blocks
    append(buf, b"c")
    meta = new_meta()
    n = K.spill_scan(buf, start, rb, meta)
    assert n == 3
    rows = [tuple(int(x) for x in r[:5]) for r in meta[1:4]]
    assert rows == [(HDR + rb - 64, 48, 3, 111, F.DATA), (HDR + rb - 16, 16, -1, -1, F.PADDING),
                    (HDR + 0, 64, 4, 222, F.DATA)]
    assert meta[0, 0] == pos and meta[0, 2] == K.STOP_EMPTY
    blocked = int(meta[0, 3]) & ((1 << 64) - 1)
    assert (htype(blocked), hlen(blocked), hpid(blocked)) == (F.RESERVED, 40, 31337)


def test_spill_scan_rows_end_in_zeros_in_a_reused_meta():
    buf = make_ring()
    fill(buf, 2)
    meta = new_meta()
    meta[:] = -7  # as left by an earlier scan
    assert K.spill_scan(buf, 0, 4096, meta) == 2
    assert (meta[1:3, 5:] == 0).all()


def test_spill_scan_free_word_reports_zero_and_max_bytes():
    buf = make_ring()
    fill(buf, 4, value=lambda i: b"x" * 8, key=lambda i: None)  # 48-byte frames
    meta = new_meta()
    assert K.spill_scan(buf, 0, 1 << 20, meta) == 4
    assert list(meta[0, :4]) == [192, 4, K.STOP_EMPTY, 0]
    assert K.spill_scan(buf, 0, 1, meta) == 1  # at least one frame, then over max_bytes
    assert meta[0, 2] == K.STOP_MAX and meta[0, 0] == 48
    assert K.spill_scan(buf, 0, 96, meta) == 2 and meta[0, 0] == 96


def test_spill_scan_corrupt_and_straddling_headers():
    rb = 4096
    buf = make_ring(rb, start=rb - 16)
    set_ring_word(buf, rb - 16, F.header_word(32, F.PADDING))  # would straddle the end
    meta = new_meta()
    assert K.spill_scan(buf, rb - 16, rb, meta) == 0
    assert meta[0, 2] == K.STOP_CORRUPT and meta[0, 0] == rb - 16
    assert int(meta[0, 3]) == F.header_word(32, F.PADDING)
    set_ring_word(buf, rb - 16, F.header_word(12, F.DATA))
    assert K.spill_scan(buf, rb - 16, rb, meta) == 0 and meta[0, 2] == K.STOP_CORRUPT


# --- release ------------------------------------------------------------------

def test_release_zeroes_and_publishes_released_and_reclaiming():
    rb = 4096
    buf = make_ring(rb, start=100)
    buf[HDR:] = 0xAA
    K.release(buf, 100, 300)
    ring = buf[HDR:]
    assert (ring[100:300] == 0).all() and (ring[:100] == 0xAA).all() and (ring[300:] == 0xAA).all()
    assert word(buf, R.OFF_RELEASED) == 300 and word(buf, R.OFF_RECLAIMING) == 300


def test_release_across_the_wrap():
    rb = 4096
    start = 5 * rb - 40
    buf = make_ring(rb, start=start)
    buf[HDR:] = 0xAA
    K.release(buf, start, start + 104)
    ring = buf[HDR:]
    assert (ring[rb - 40:] == 0).all() and (ring[:64] == 0).all() and (ring[64: rb - 40] == 0xAA).all()
    assert word(buf, R.OFF_RELEASED) == start + 104 == word(buf, R.OFF_RECLAIMING)
    # the whole ring at once
    buf[HDR:] = 0xAA
    K.release(buf, start + 104, start + 104 + rb)
    assert (buf[HDR:] == 0).all()


def test_release_lets_producers_reuse_the_space():
    rb = 4096
    buf = make_ring(rb)
    while append(buf, b"q" * 200) >= 0:
        pass
    meta = new_meta(256)
    n = K.spill_scan(buf, 0, rb, meta)
    K.release(buf, 0, int(meta[0, 0]))
    assert append(buf, b"q" * 200) >= 0
    assert n == next_offset(buf) - 1


# --- unblock_reserved ---------------------------------------------------------

def test_unblock_reserved_turns_a_reserved_frame_into_padding():
    buf = make_ring()
    append(buf, b"before")
    pos = K.claim_and_abandon(buf, 50, True, 12345)
    append(buf, b"after")
    h = ring_word(buf, pos)
    assert K.unblock_reserved(buf, pos, h)
    h2 = ring_word(buf, pos)
    assert (htype(h2), hlen(h2), hpid(h2)) == (F.PADDING, hlen(h), 0)
    assert [f.value for f in data_frames(buf)] == [b"before", b"after"]
    assert not K.unblock_reserved(buf, pos, h)  # already done: the word changed


def test_unblock_reserved_refuses_other_headers():
    buf = make_ring()
    append(buf, b"data")
    h_data = ring_word(buf, 0)
    assert not K.unblock_reserved(buf, 0, h_data)
    assert ring_word(buf, 0) == h_data
    free_pos = claim_pos(buf)
    assert not K.unblock_reserved(buf, free_pos, 0)
    assert not K.unblock_reserved(buf, free_pos, F.header_word(48, F.FREE))
    # a RESERVED header that is not (any longer) the word there: the CAS fails
    pos = K.claim_and_abandon(buf, 8, True, 7)
    stale = F.header_word(48, F.RESERVED, 8)
    assert not K.unblock_reserved(buf, pos, stale)
    assert htype(ring_word(buf, pos)) == F.RESERVED
    # RESERVED with a length below a frame header: not a frame a writer claimed
    set_ring_word(buf, pos, F.header_word(16, F.RESERVED, 7))
    assert not K.unblock_reserved(buf, pos, F.header_word(16, F.RESERVED, 7))


# --- unblock_free -------------------------------------------------------------

def test_unblock_free_pads_up_to_the_claim_tail():
    buf = make_ring()
    append(buf, b"x")
    pos = K.claim_and_abandon(buf, 100, False, 0)  # claimed, never reserved: FREE
    assert ring_word(buf, pos) == 0
    tail = claim_pos(buf)
    assert K.unblock_free(buf, pos) == tail - pos
    h = ring_word(buf, pos)
    assert (htype(h), hlen(h)) == (F.PADDING, tail - pos)
    frames, end = ref_frames(buf, 0)
    assert [f.ftype for f in frames] == [F.DATA, F.PADDING] and end == tail
    # words inside the padding stay poisoned
    assert all(htype(ring_word(buf, p)) == F.POISON for p in range(pos + 8, tail, 8))


def test_unblock_free_stops_at_the_first_taken_word():
    buf = make_ring()
    pos = K.claim_and_abandon(buf, 24, False, 0)  # a 64-byte claim left FREE
    append(buf, b"published after")
    assert K.unblock_free(buf, pos) == 64
    assert [f.value for f in data_frames(buf)] == [b"published after"]
    # ... or at a RESERVED word
    p2 = K.claim_and_abandon(buf, 24, False, 0)
    p3 = K.claim_and_abandon(buf, 24, True, 5)
    assert K.unblock_free(buf, p2) == p3 - p2 == 64
    assert htype(ring_word(buf, p3)) == F.RESERVED


def test_unblock_free_stops_at_the_ring_end():
    rb = 4096
    buf = make_ring(rb, start=rb - 64)
    pos = K.claim_and_abandon(buf, 40, False, 0)  # 80 bytes: wraps, padding (unwritten) at rb - 64
    assert pos == rb and claim_pos(buf) == rb + 80
    assert ring_word(buf, rb - 64) == 0
    assert K.unblock_free(buf, rb - 64) == 64  # the padding the writer never wrote, up to the end
    assert K.unblock_free(buf, rb) == 80  # then the frame, up to the claim tail
    frames, end = ref_frames(buf, rb - 64)
    assert [(f.ftype, f.length) for f in frames] == [(F.PADDING, 64), (F.PADDING, 80)] and end == rb + 80
    assert [f.value for f in data_frames(buf, rb - 64)] == []


def test_unblock_free_does_nothing_when_not_free_or_not_claimed():
    buf = make_ring()
    append(buf, b"x")
    assert K.unblock_free(buf, 0) == 0  # a DATA word
    assert K.unblock_free(buf, claim_pos(buf)) == 0  # at the tail: nobody claimed it
    assert K.unblock_free(buf, claim_pos(buf) + 64) == 0
    assert ring_word(buf, claim_pos(buf)) == 0


def test_a_late_reserve_over_a_poisoned_word_fails():
    """The dead claim at P and a slow writer's claim at Q are both padded; the slow writer's
    reserve (CAS from FREE) then fails, and a fresh append lands after the padding."""
    rb = 4096
    buf = make_ring(rb, base_offset=20)
    p = K.claim_and_abandon(buf, 8, False, 0)  # dead, offset 20
    q = K.claim_and_abandon(buf, 16, False, 0)  # slow, offset 21
    flq = flen(-1, 16)
    tail = claim_pos(buf)
    assert K.unblock_free(buf, p) == tail - p
    assert not K._reserve(buf, rb - 1, q, 0, q, flq, PID)
    assert htype(ring_word(buf, q)) == F.POISON  # the late reserve did not overwrite it
    r = append(buf, b"retry")
    assert r >> 2 == 22
    frames, _ = ref_frames(buf, 0)
    assert [(f.ftype, f.pos) for f in frames] == [(F.PADDING, p), (F.DATA, tail)]
    assert frames[1].value == b"retry"


def test_append_retries_when_its_claim_was_poisoned():
    """append_one's own loop: its first claim lands on a poisoned word, so it claims again."""
    buf = make_ring(base_offset=0)
    append(buf, b"a")
    p = claim_pos(buf)
    set_ring_word(buf, p, F.header_word(8, F.POISON))  # an unblocker got there first
    r = append(buf, b"b" * 8)  # a 48-byte frame
    assert r >= 0
    assert r >> 2 == 2  # offset 1 went with the abandoned claim
    assert htype(ring_word(buf, p)) == F.POISON
    f = parse_frame(bytes(buf[HDR + p + 48: HDR + p + 96]), p + 48)
    assert (f.ftype, f.offset, f.value, f.crc_ok) == (F.DATA, 2, b"b" * 8, True)
    assert claim_pos(buf) == p + 96


# --- ring_low_offset ----------------------------------------------------------

def test_ring_low_offset():
    rb = 4096
    buf = make_ring(rb, start=rb - 32, base_offset=700)
    assert K.ring_low_offset(buf, rb - 32) == -1  # empty
    append(buf, b"v" * 20)  # padding 32 at the end, the frame at 0
    assert K.ring_low_offset(buf, rb - 32) == 700
    assert K.ring_low_offset(buf, rb) == 700
    # a single poison word then padding in front of it are skipped too
    buf2 = make_ring(rb, base_offset=5)
    set_ring_word(buf2, 0, F.header_word(8, F.POISON))
    set_ring_word(buf2, 8, F.header_word(24, F.PADDING))
    set_word(buf2, R.OFF_CLAIM_POS, 32)
    assert K.ring_low_offset(buf2, 0) == -1
    append(buf2, b"x")
    assert K.ring_low_offset(buf2, 0) == 5
    # RESERVED first: unknown yet
    buf3 = make_ring(rb, base_offset=9)
    K.claim_and_abandon(buf3, 8, True, 3)
    append(buf3, b"y")
    assert K.ring_low_offset(buf3, 0) == -1


def test_claim_and_abandon_full_returns_the_status():
    rb = 4096
    buf = make_ring(rb)
    assert K.claim_and_abandon(buf, 2000, False, 0) == 0
    assert K.claim_and_abandon(buf, 2000, False, 0) == 2040
    assert K.claim_and_abandon(buf, 2000, False, 0) == K.ST_FULL


# --- headers bytes (layout/frame.py) -----------------------------------------

def test_headers_encoding_is_the_documented_layout():
    hs = [("a", b"1"), ("ключ", None), ("", b"")]
    b = encode_headers(hs)
    kb = "ключ".encode()
    assert b == (struct.pack("<H", 1) + b"a" + struct.pack("<i", 1) + b"1"
                 + struct.pack("<H", len(kb)) + kb + struct.pack("<i", -1)
                 + struct.pack("<H", 0) + struct.pack("<i", 0))
    assert decode_headers(b) == hs
    buf = make_ring()
    append(buf, b"v", headers=b)
    (f,) = data_frames(buf)
    assert f.headers == b and f.crc_ok
    # the same headers in other containers encode the same
    assert encode_headers(hs) == encode_headers(list(hs)) == encode_headers(tuple(hs)) == b
    assert encode_headers([("a", bytearray(b"1")), ("ключ", None), ("", memoryview(bytearray()))]) == b
    with pytest.raises(TypeError):
        encode_headers([("a", 1)])  # not bytes: an error every time, never a cached block
    with pytest.raises(TypeError):
        encode_headers([("a", 1)])


def test_header_kernels_describe_the_documented_layout_and_refuse_what_overruns():
    from shmbus.kernels import headers as KH

    kb = "ключ".encode()
    block = (struct.pack("<H", 1) + b"a" + struct.pack("<i", 1) + b"1"
             + struct.pack("<H", len(kb)) + kb + struct.pack("<i", -1) + struct.pack("<H", 0) + struct.pack("<i", 0))
    out = np.zeros(len(block), np.uint8)
    src = b"a1" + kb
    assert KH.pack_headers(np.array([1, 1, len(kb), -1, 0, 0], np.int64), src, out) == len(block)
    assert out.tobytes() == block
    table = np.full((1 + len(block) // F.HDR_MIN_BYTES, F.HDR_COLS), 99, np.int64)
    assert KH.parse_headers(block, table) == 3
    assert table[: 4].tolist() == [[3, -1, 99, 99], [2, 1, 7, 1], [10, len(kb), 10 + len(kb) + 4, -1],
                                   [10 + len(kb) + 6, 0, 10 + len(kb) + 10, 0]]
    # a corrupt block: the well-formed headers before it, and where it is
    assert KH.parse_headers(block[:-1], table) == F.HDR_CORRUPT
    assert table[0, F.HS_COUNT] == 2 and table[0, F.HS_BAD] == 10 + len(kb) + 4
    assert KH.parse_headers(b"\x00\x00\xfe\xff\xff\xff", table) == F.HDR_CORRUPT  # value length -2
    assert table[0, F.HS_COUNT] == 0 and table[0, F.HS_BAD] == 0
    assert KH.parse_headers(b"", table) == 0
    # a table too short for the bytes: nothing read
    assert KH.parse_headers(block, np.zeros((2, F.HDR_COLS), np.int64)) == F.HDR_TABLE_SHORT
    # lengths that disagree with the buffers, a key too long, a value length below -1: refused
    for lens, src, size in (([1, 1, 4, -1], b"a1", 20), ([1, 1], b"a1", 7), ([1], b"a", 9), ([1, -2], b"a", 9),
                            ([0x10000, 0], bytes(0x10000), 0x10006)):
        assert KH.pack_headers(np.array(lens, np.int64), src, np.zeros(size, np.uint8)) == F.HDR_BAD_LENGTHS


def test_random_frames_roundtrip_against_the_reference():
    rng = random.Random(7)
    buf = make_ring(65536, start=65536 - 1000)
    sent = []
    for i in range(200):
        key = None if rng.random() < 0.3 else os.urandom(rng.randrange(0, 20))
        val = None if rng.random() < 0.1 else os.urandom(rng.randrange(0, 200))
        hdr = b"" if rng.random() < 0.5 else encode_headers([("h%d" % i, os.urandom(rng.randrange(0, 9)))])
        ts = rng.randrange(0, 1 << 45)
        r = append(buf, val, key=key, headers=hdr, ts=ts)
        assert r >= 0
        sent.append((r >> 2, ts, key, val, hdr))
    got = [(f.offset, f.timestamp, f.key, f.value, f.headers) for f in data_frames(buf, 65536 - 1000)]
    assert got == sent
    assert all(f.crc_ok for f in data_frames(buf, 65536 - 1000))
    n, meta = scan_ring(buf, 65536 - 1000, verify=True, meta=new_meta(300))
    assert n == 200 and meta[0, 2] == K.STOP_EMPTY


# --- stalled writers: fence, publish by compare-and-swap, let go ---------------

import threading  # noqa: E402

from numba import njit  # noqa: E402

from shmbus.kernels._atomics import cas64, load_acquire64  # noqa: E402


@njit(nogil=True, cache=False)
def _fence_when_reserved(buf, i, max_spins):
    """A supervisor's fence, racing a writer: spin on the header word at buffer index ``i`` until
    it is RESERVED, then CAS it to PADDING(its length, its pid). 1 = fenced, 0 = missed it."""
    for _ in range(max_spins):
        h = load_acquire64(buf, i)
        t = (h >> 32) & 0xFF
        if t == F.RESERVED:
            pid = (h >> 40) & F.PID_MASK
            return 1 if cas64(buf, i, h, (h & 0xFFFFFFFF) | (np.int64(F.PADDING) << 32) | (pid << 40)) else 0
        if t != F.FREE:
            return 0
    return 0


def _race_a_fence(make, send, pos, attempts=20):
    """Send on fresh rings while a thread fences the claim at ``pos`` as soon as it is reserved;
    returns (buf, the send's result) of the first attempt the fence won, or fails."""
    for _ in range(attempts):
        buf = make()
        won = []
        racer = threading.Thread(target=lambda: won.append(_fence_when_reserved(buf, HDR + pos, 2_000_000_000)))
        racer.start()
        r = send(buf)
        racer.join(30)
        if won == [1]:
            return buf, r
        assert r >= 0, r  # the writer won the race: a normal send
    pytest.fail(f"the fencing thread never caught a claim between reserve and publish in {attempts} tries")


_BIG = b"".join(b"%08d" % i for i in range(1 << 20))  # 8 MiB: a few ms between reserve and publish


def _big_ring():
    return make_ring(1 << 25, base_offset=10)  # 32 MiB


def test_fence_pads_the_whole_claim_keeps_the_pid_and_readers_step_over_it():
    buf = make_ring()
    fill(buf, 2)
    pos = K.claim_and_abandon(buf, 30, True, 99)  # a live writer stopped mid-write
    fill(buf, 2)
    h = ring_word(buf, pos)
    assert K.fence_reserved(buf, pos, h)
    f = ring_word(buf, pos)
    assert (htype(f), hlen(f), hpid(f)) == (F.PADDING, flen(-1, 30), 99)
    assert not K.fence_reserved(buf, pos, h)  # once
    n, meta = scan_ring(buf, 0)
    assert n == 4 and meta[0, 2] == K.STOP_EMPTY and meta[0, 0] == claim_pos(buf)
    assert [int(x) for x in meta[1:5, 1]] == [0, 1, 3, 4]  # offset 2 is the fenced claim's gap
    # the spill scan steps over it too and reports the pid of the writer that may still write there
    m = new_meta()
    assert K.spill_scan(buf, 0, 4096, m) == 5
    assert [(int(r[4]), int(r[5])) for r in m[1:6]] == [(F.DATA, 0)] * 2 + [(F.PADDING, 99)] + [(F.DATA, 0)] * 2
    assert K.header_at(buf, pos) == ring_word(buf, pos)
    # the writer (or the supervisor, for a dead pid) lets go: aux 0, once
    assert K.let_go(buf, pos) and not K.let_go(buf, pos)
    f = ring_word(buf, pos)
    assert (htype(f), hlen(f), hpid(f)) == (F.PADDING, flen(-1, 30), 0)


def test_a_writer_resuming_after_a_fence_publishes_nothing_and_lets_go():
    buf = make_ring(base_offset=5)
    pos = K.claim_and_abandon(buf, 30, True, 77)
    assert K.fence_reserved(buf, pos, ring_word(buf, pos))
    assert K.finish_claim(buf, pos, 5, 30, TS, 77) == K.ST_STALLED
    f = ring_word(buf, pos)
    assert (htype(f), hlen(f), hpid(f)) == (F.PADDING, flen(-1, 30), 0)  # let go
    assert data_frames(buf) == []
    # without a fence the same steps publish the record
    pos = K.claim_and_abandon(buf, 30, True, 77)
    assert K.finish_claim(buf, pos, 6, 30, TS, 77) == 6
    assert [(f.offset, f.value, f.crc_ok) for f in data_frames(buf)] == [(6, b"\x07" * 30, True)]


def test_dead_writer_unblock_leaves_no_pid():
    buf = make_ring()
    pos = K.claim_and_abandon(buf, 30, True, 99)
    assert K.unblock_reserved(buf, pos, ring_word(buf, pos))
    f = ring_word(buf, pos)
    assert (htype(f), hlen(f), hpid(f)) == (F.PADDING, flen(-1, 30), 0)


def test_append_fenced_between_reserve_and_publish_fails_and_publishes_nothing():
    # a thread fences the claim while the writer copies 8 MiB into it (both twins: append_impl)
    buf, r = _race_a_fence(_big_ring, lambda b: append(b, _BIG, key=b"k"), 0)
    assert r == K.ST_STALLED
    h = ring_word(buf, 0)
    assert (htype(h), hlen(h), hpid(h)) == (F.PADDING, flen(1, len(_BIG)), 0)  # fenced, then let go
    assert data_frames(buf) == []
    assert next_offset(buf) == 11  # the offset is a gap
    # the ring goes on
    assert append(buf, b"after") >> 2 == 11
    assert [(f.offset, f.value) for f in data_frames(buf)] == [(11, b"after")]


def _batch_args(values):
    n = len(values)
    lens = np.array([len(v) for v in values], np.int64)
    data = np.frombuffer(b"".join(values), np.uint8)
    starts = np.zeros(n, np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return data, starts, lens, np.frombuffer(b"", np.uint8), np.zeros(n, np.int64), np.full(n, -1, np.int64)


@pytest.mark.parametrize("impl", ["numba", "native"])
def test_append_batch_fenced_pads_the_whole_claim_and_publishes_nothing(impl):
    if impl == "native" and native.append_batch is None:
        pytest.skip(f"compiled verbs not loaded: {native.REASON}")
    values = [b"first", _BIG[: 3 << 20], _BIG[: 3 << 20], b"last"]  # ~6 MiB: one claim (cap: 8 MiB)
    args = _batch_args(values)
    need = sum(flen(-1, len(v)) for v in values)

    def send(buf):
        out = np.full(len(values), -1, np.int64)
        if impl == "native":
            return native.append_batch(buf.ctypes.data, *args, TS, PID, 0, out)
        return K.append_batch(buf, *args, TS, PID, 0, out)

    buf, r = _race_a_fence(_big_ring, send, 0)
    assert r == K.ST_STALLED
    h = ring_word(buf, 0)
    # the first frame's RESERVED word carried the whole claim, so the fence padded all of it
    assert (htype(h), hlen(h), hpid(h)) == (F.PADDING, need, 0)  # (and the writer let go)
    # frames 2..4 were published inside it before the failed publish: no reader may see them
    assert data_frames(buf) == []
    n, meta = scan_ring(buf, 0)
    assert n == 0 and meta[0, 0] == claim_pos(buf) == need
    m = new_meta()
    assert K.spill_scan(buf, 0, 1 << 25, m) == 1 and int(m[1, 1]) == need
    assert next_offset(buf) == 14  # four offsets, a gap
    r2 = send(buf)
    assert r2 >> 2 == 4
    assert [f.offset for f in data_frames(buf)] == [14, 15, 16, 17]
