"""A partition's shared memory (ring header, then the ring) made by hand in a numpy array."""

from __future__ import annotations

import struct

import numpy as np

from shmbus.layout import ring as R

HDR = R.HEADER_BYTES
TS = 1_700_000_000_123
PID = 4242
BIG = 1 << 62


def word(buf, i: int) -> int:
    return struct.unpack_from("<q", buf, i)[0]


def set_word(buf, i: int, v: int) -> None:
    struct.pack_into("<q", buf, i, v)


def make_ring(ring_bytes: int = 4096, start: int = 0, base_offset: int = 0) -> np.ndarray:
    """Header + ring, zeroed, claim/released/reclaiming at ``start``, next offset ``base_offset``."""
    raw = np.zeros(HDR + ring_bytes + 64, np.uint8)
    skip = (-raw.ctypes.data) % 64  # cas128 needs the claim words 16-aligned
    buf = raw[skip: skip + HDR + ring_bytes]
    set_word(buf, R.OFF_MAGIC, R.MAGIC)
    set_word(buf, R.OFF_RING_BYTES, ring_bytes)
    set_word(buf, R.OFF_BASE_OFFSET, base_offset)
    set_word(buf, R.OFF_CLAIM_POS, start)
    set_word(buf, R.OFF_CLAIM_OFFSET, base_offset)
    set_word(buf, R.OFF_RELEASED, start)
    set_word(buf, R.OFF_RECLAIMING, start)
    set_word(buf, R.OFF_MAX_MESSAGE, 1 << 30)
    return buf
