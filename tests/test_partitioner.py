"""murmur2 and partition_for_key against kafka-python's pure-Python murmur2 and
the values in Kafka's own UtilsTest."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2

from shmbus.kernels.murmur2 import murmur2_span, partition_span
from shmbus.core.partitioner import murmur2, partition_for_key

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: Java's signed ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

PARTITION_COUNTS = (1, 2, 3, 7, 12, 64, 100, 1000, 2**31 - 1)


def random_keys(n=3000, max_len=200, seed=20240601):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n)
    return [rng.integers(0, 256, k, dtype=np.uint8).tobytes() for k in lengths]


KEYS = random_keys()


def test_known_values_from_kafka():
    for key, signed in JAVA_MURMUR2.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key
        assert murmur2(key) == kafka_murmur2(key)


def test_empty_key():
    assert murmur2(b"") == kafka_murmur2(b"") == 275646681


def test_every_length_0_to_64():
    data = bytes(range(256))
    for n in range(65):
        assert murmur2(data[:n]) == kafka_murmur2(data[:n]), n


def test_random_keys_match_kafka_python():
    for key in KEYS:
        h = murmur2(key)
        assert type(h) is int
        assert 0 <= h < 2**32
        assert h == kafka_murmur2(key), key


def test_partition_for_key_matches_kafka_rule():
    for key in KEYS:
        positive = kafka_murmur2(key) & 0x7FFFFFFF
        for n in PARTITION_COUNTS:
            p = partition_for_key(key, n)
            assert type(p) is int
            assert p == positive % n, (key, n)


def test_bytes_like_inputs_agree():
    key = b"some-key-\x00\xff-17-with-more-bytes"
    want = kafka_murmur2(key)
    arr = np.frombuffer(key, dtype=np.uint8)
    for k in (
        key,
        bytearray(key),
        memoryview(key),
        arr,
        arr.copy(),
        np.frombuffer(key + b"x", dtype=np.uint8)[: len(key)],
    ):
        assert murmur2(k) == want, type(k)
        assert partition_for_key(k, 7) == (want & 0x7FFFFFFF) % 7
    wide = np.zeros(40, dtype=np.uint8)
    wide[::2] = arr[:20]
    assert murmur2(wide[::2]) == kafka_murmur2(key[:20])  # non-contiguous view
    ints = np.arange(10, dtype="<i4")
    assert murmur2(ints) == kafka_murmur2(ints.tobytes())


def test_numpy_int_partition_count():
    assert partition_for_key(b"abc", np.int64(12)) == (479470107 & 0x7FFFFFFF) % 12


@pytest.mark.parametrize("n", [0, -1, -12])
def test_partition_count_below_one(n):
    with pytest.raises(ValueError, match="num_partitions"):
        partition_for_key(b"abc", n)


@pytest.mark.parametrize("n", [1.5, "3", True, None])
def test_partition_count_not_int(n):
    with pytest.raises(TypeError, match="num_partitions"):
        partition_for_key(b"abc", n)


@pytest.mark.parametrize("key", ["text", None, 12])
def test_key_not_bytes(key):
    with pytest.raises(TypeError):
        murmur2(key)
    with pytest.raises(TypeError):
        partition_for_key(key, 3)


@numba.njit
def _spans(buf, starts, ends, n, hashes, parts):
    for j in range(len(starts)):
        hashes[j] = murmur2_span(buf, starts[j], ends[j])
        parts[j] = partition_span(buf, starts[j], ends[j], n)


def test_kernels_on_ranges_inside_a_buffer():
    rng = np.random.default_rng(7)
    buf = rng.integers(0, 256, 4096, dtype=np.uint8)
    starts = rng.integers(0, 2048, 500)
    ends = starts + rng.integers(0, 200, 500)
    hashes = np.zeros(500, dtype=np.int64)
    parts = np.zeros(500, dtype=np.int64)
    _spans(buf, starts, ends, 12, hashes, parts)
    for s, e, h, p in zip(starts, ends, hashes, parts):
        want = kafka_murmur2(buf[s:e].tobytes())
        assert h == want
        assert p == (want & 0x7FFFFFFF) % 12
    # bytes straight into the kernel, no copy
    key = b"0123456789abcdef"
    assert murmur2_span(key, 3, 11) == kafka_murmur2(key[3:11])


def test_kernel_range_is_clamped_to_the_buffer():
    key = b"0123456789abcdef"
    assert murmur2_span(key, 10, 1000) == kafka_murmur2(key[10:])
    assert murmur2_span(key, -4, 6) == kafka_murmur2(key[:6])
    assert murmur2_span(key, 9, 3) == kafka_murmur2(b"")
    assert partition_span(key, 0, 16, 0) == 0  # a count below 1 is taken as 1
