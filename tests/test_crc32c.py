"""CRC-32C kernels against the crc32c package (Intel/Mark Adler's C code)."""

from __future__ import annotations

import crc32c as ref
import numba
import numpy as np
import pytest

from shmbus.kernels import crc32c as K
from shmbus.kernels.crc32c import CRC32C_VARIANT, HAVE_SSE42, crc32c, crc32c_update

VARIANTS = [
    pytest.param(K._crc32c_sw, id="slicing-by-8"),
    pytest.param(
        K._crc32c_hw,
        id="sse4.2",
        marks=pytest.mark.skipif(not HAVE_SSE42, reason="no sse4.2 crc32 on the target CPU"),
    ),
]

RNG = np.random.default_rng(12345)
BIG = RNG.integers(0, 256, 3 * 65536 + 64, dtype=np.uint8)
BIG_BYTES = BIG.tobytes()

# Every length up to a bit past two three-stream rounds, then some larger.
LENGTHS = list(range(0, 3 * 2 * K._HW_BLOCK + 20)) + [1000, 1023, 1024, 1025, 4095, 4096, 4097, 65536, 3 * 65536 + 7]


def test_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_variant_names_the_choice():
    assert CRC32C_VARIANT == ("sse4.2" if HAVE_SSE42 else "slicing-by-8")
    assert crc32c_update is (K._crc32c_hw if HAVE_SSE42 else K._crc32c_sw)


@pytest.mark.parametrize("kernel", VARIANTS)
def test_check_value_each_variant(kernel):
    buf = np.frombuffer(b"123456789", dtype=np.uint8)
    assert kernel(0, buf, 0, 9) == 0xE3069283
    assert kernel(0, b"123456789", 0, 9) == 0xE3069283


@pytest.mark.parametrize("kernel", VARIANTS)
def test_lengths_and_start_offsets(kernel):
    for n in LENGTHS:
        for start in (0, 1, 3, 7) if n < 5000 else (0, 5):
            want = ref.crc32c(BIG_BYTES[start : start + n])
            assert kernel(0, BIG, start, start + n) == want, (n, start)


@pytest.mark.parametrize("kernel", VARIANTS)
def test_random_ranges(kernel):
    rng = np.random.default_rng(99)
    for _ in range(300):
        start = int(rng.integers(0, 8192))
        end = start + int(rng.integers(0, 6000))
        assert kernel(0, BIG, start, end) == ref.crc32c(BIG_BYTES[start:end]), (start, end)


@pytest.mark.parametrize("kernel", VARIANTS)
def test_incremental_updates(kernel):
    rng = np.random.default_rng(5)
    for _ in range(100):
        n = int(rng.integers(0, 3000))
        cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 6))))
        bounds = [0, *cuts.tolist(), n]
        crc = 0
        for a, b in zip(bounds, bounds[1:]):
            crc = kernel(crc, BIG, a, b)
        assert crc == ref.crc32c(BIG_BYTES[:n])


def test_wrapper_incremental_matches_package():
    a, b = BIG_BYTES[:777], BIG_BYTES[777:5000]
    assert crc32c(b, crc32c(a)) == ref.crc32c(a + b) == ref.crc32c(b, ref.crc32c(a))
    assert crc32c(b, np.uint32(crc32c(a))) == ref.crc32c(a + b)


@pytest.mark.parametrize("kernel", VARIANTS)
def test_range_is_clamped_to_the_buffer(kernel):
    buf = BIG[:100].copy()
    raw = buf.tobytes()
    assert kernel(0, buf, 90, 1000) == ref.crc32c(raw[90:])
    assert kernel(0, buf, -5, 10) == ref.crc32c(raw[:10])
    assert kernel(0, buf, 50, 20) == 0  # empty
    assert kernel(0, buf, -9, -1) == 0
    assert kernel(12345, buf, 50, 20) == 12345  # nothing read: crc unchanged


def test_bytes_like_inputs():
    raw = BIG_BYTES[:4321]
    want = ref.crc32c(raw)
    arr = np.frombuffer(raw, dtype=np.uint8)
    for data in (raw, bytearray(raw), memoryview(raw), arr, arr.copy(), arr[:4320].view("<u4")):
        expect = ref.crc32c(data.tobytes()) if isinstance(data, np.ndarray) else want
        assert crc32c(data) == expect, type(data)
    strided = BIG[:200:2]
    assert crc32c(strided) == ref.crc32c(strided.tobytes())
    assert crc32c(memoryview(raw)[::3]) == ref.crc32c(raw[::3])
    assert crc32c(bytearray()) == 0


def test_large_buffer_releases_the_gil_path():
    n = K._NOGIL_BYTES * 2 + 3
    assert crc32c(BIG[:n]) == ref.crc32c(BIG_BYTES[:n])


@pytest.mark.parametrize("data", ["text", None, 5])
def test_not_bytes(data):
    with pytest.raises(TypeError):
        crc32c(data)


@numba.njit
def _frame_checks(buf, starts, ends, out):
    # as frames.py does: a uint32 start value, two ranges chained
    for j in range(len(starts)):
        mid = (starts[j] + ends[j]) // 2
        c = crc32c_update(np.uint32(0), buf, starts[j], mid)
        out[j] = crc32c_update(c, buf, mid, ends[j])


def test_called_from_another_kernel():
    rng = np.random.default_rng(3)
    starts = rng.integers(0, 10000, 200)
    ends = starts + rng.integers(0, 3000, 200)
    out = np.zeros(200, dtype=np.uint32)
    _frame_checks(BIG, starts, ends, out)
    for s, e, c in zip(starts, ends, out):
        assert c == ref.crc32c(BIG_BYTES[s:e])


def test_tables():
    t = K._TABLES
    # T[k][b] is byte b followed by k zero bytes, from a zero register.
    for k in range(8):
        for b in (1, 0x37, 0xFF):
            reg = 0
            for byte in [b] + [0] * k:
                reg ^= byte
                for _ in range(8):
                    reg = (reg >> 1) ^ (K._POLY if reg & 1 else 0)
            assert t[k, b] == reg, (k, b)


def test_shift_columns_are_current():
    assert list(K._SHIFT_COLUMNS) == K._shift_matrix(K._HW_BLOCK)
