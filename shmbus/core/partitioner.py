"""Which partition a keyed record goes to: the one the Java Kafka client picks.

``partition_for_key(key, n) == (murmur2(key) & 0x7fffffff) % n``, Kafka's
``Utils.toPositive(Utils.murmur2(key)) % numPartitions``, so a key lands on
the same partition number as it would in Kafka with the same partition count.

:func:`murmur2` returns kafka-python's convention (an int in ``[0, 2**32)``,
the Java ``int``'s bits read unsigned), so it compares directly with
``kafka.partitioner.default.murmur2``. Kernels call
:func:`shmbus.kernels.murmur2.murmur2_span` / ``partition_span`` instead.

A key is any bytes-like: ``bytes`` (the fast path, handed to the compiled
hash as is), ``bytearray``, ``memoryview``, or a numpy array (its bytes). Safe to
call from any thread or process; nothing is shared.
"""

from __future__ import annotations

import numpy as np

from shmbus.core import native


def _as_bytes(key) -> bytes:
    if isinstance(key, str):
        raise TypeError("expected a bytes-like object, got str (encode it first)")
    if isinstance(key, np.ndarray):
        return np.ascontiguousarray(key).tobytes()
    try:
        return memoryview(key).tobytes()
    except TypeError:
        raise TypeError(f"expected a bytes-like object, got {type(key).__name__}") from None


def _numba_murmur2(key: bytes) -> int:
    from shmbus.kernels.murmur2 import murmur2_bytes

    return murmur2_bytes(key)


def _numba_partition(key: bytes, n: int) -> int:
    from shmbus.kernels.murmur2 import partition_bytes

    return partition_bytes(key, n)


# the compiled twins when built (shmbus/native.py): a keyed send then needs no numba
_m2 = native.murmur2 or _numba_murmur2
_part = native.partition or _numba_partition


def murmur2(key) -> int:
    """Kafka's murmur2 of ``key`` as an int in ``[0, 2**32)`` (kafka-python's convention).

    ``murmur2(b"") == 275646681``; Java's signed value is ``h - 2**32`` when
    ``h >= 2**31``.
    """
    if type(key) is not bytes:
        key = _as_bytes(key)
    return _m2(key)


def _count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_partitions must be an int, got {type(n).__name__}")
    return int(n)


def partition_for_key(key, num_partitions: int) -> int:
    """The partition in ``range(num_partitions)`` Kafka's default partitioner
    picks for ``key``: ``(murmur2(key) & 0x7fffffff) % num_partitions``."""
    if type(num_partitions) is not int:
        num_partitions = _count(num_partitions)
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1: num_partitions={num_partitions}")
    if type(key) is not bytes:
        key = _as_bytes(key)
    return _part(key, num_partitions)


__all__ = ["murmur2", "partition_for_key"]
