"""The record header codec's byte work: the numba twin of ``encode_headers``/``decode_headers`` in
``shmbus/core/_native.c``.

The header bytes (layout/frame.py) are repeated ``u16 key length | key utf-8 |
i32 value length (-1 = null) | value``, little-endian. The str and bytes objects
cannot be made in a kernel, so the codec is split: ``shmbus/core/headers.py``
checks types and encodes keys (``str.encode``) before :func:`pack_headers`, and
makes the objects from the table :func:`parse_headers` fills.

- :func:`parse_headers` ``(b, table) -> count`` reads and checks a header block
  into an int64 table of ``HDR_COLS`` columns (row 0 the state, rows 1..n one
  header each: key start and length, value start and length); a block that
  cannot be headers returns ``HDR_CORRUPT`` with the bad header's position in
  row 0, and the well-formed headers before it in the table, so the caller
  raises what the C twin raises, in the same order.
- :func:`pack_headers` ``(lens, src, out) -> bytes written`` lays out a block
  from the keys' UTF-8 and the values back to back in ``src`` and their
  lengths in ``lens``.

Neither raises (a raise costs every call an NRT incref/decref pair); both
check every length against their buffers and return a negative status.
"""

from __future__ import annotations

import numpy as np

from shmbus.kernels._jit import entry_point, jit
from shmbus.layout.frame import (
    H_KEY,
    H_KLEN,
    H_VALUE,
    H_VLEN,
    HDR_BAD_LENGTHS,
    HDR_COLS,
    HDR_CORRUPT,
    HDR_KEY_MAX,
    HDR_MIN_BYTES,
    HDR_TABLE_SHORT,
    HS_BAD,
    HS_COUNT,
    NULL_LEN,
)


@jit
def parse_headers(b, table):
    """Describe the headers in ``b`` (bytes or a uint8 array) in ``table`` (int64, HDR_COLS columns,
    at least ``1 + len(b) // HDR_MIN_BYTES`` rows, else HDR_TABLE_SHORT and nothing read).

    Returns the number of headers (rows 1..n), or HDR_CORRUPT for bytes that cannot be headers
    (a length past the end, a value length below -1): then ``table[0, HS_BAD]`` is the bad
    header's position and ``table[0, HS_COUNT]`` the number of well-formed headers before it.
    """
    n = len(b)
    if table.shape[0] < 1 + n // HDR_MIN_BYTES or table.shape[1] < HDR_COLS:
        return HDR_TABLE_SHORT
    i = 0
    k = 0
    while i < n:
        if i + 2 > n:
            break
        kl = np.int64(b[i]) | (np.int64(b[i + 1]) << 8)
        j = i + 2 + kl  # the value length's position
        if j + 4 > n:
            break
        vl = np.int64(b[j]) | (np.int64(b[j + 1]) << 8) | (np.int64(b[j + 2]) << 16) | (np.int64(b[j + 3]) << 24)
        if vl >= 1 << 31:
            vl -= 1 << 32  # i32
        if vl < NULL_LEN or j + 4 + max(vl, 0) > n:
            break
        k += 1
        table[k, H_KEY] = i + 2
        table[k, H_KLEN] = kl
        table[k, H_VALUE] = j + 4
        table[k, H_VLEN] = vl
        i = j + 4 + max(vl, 0)
    table[0, HS_COUNT] = k
    if i < n:
        table[0, HS_BAD] = i
        return HDR_CORRUPT
    table[0, HS_BAD] = -1
    return k


@jit
def pack_headers(lens, src, out):
    """Lay out a header block in ``out`` (uint8) and return its length.

    ``lens`` holds two int64 per header, the key's UTF-8 length and the value's (NULL_LEN: null);
    ``src`` the keys' UTF-8 and the values back to back in that order (``k0 v0 k1 v1 ...``). The
    block takes ``len(src) + HDR_MIN_BYTES * len(lens) // 2`` bytes. Returns HDR_BAD_LENGTHS, with
    ``out`` partly written, for an odd ``lens``, a key over HDR_KEY_MAX bytes, a value length
    below -1, or lengths that overrun ``src`` or ``out``.
    """
    if len(lens) % 2:
        return HDR_BAD_LENGTHS
    s = 0
    o = 0
    ns = len(src)
    no = len(out)
    for h in range(len(lens) // 2):
        kl = lens[2 * h]
        vl = lens[2 * h + 1]
        if kl < 0 or kl > HDR_KEY_MAX or vl < NULL_LEN or vl >= 1 << 31:
            return HDR_BAD_LENGTHS
        vn = max(vl, 0)
        if s + kl + vn > ns or o + HDR_MIN_BYTES + kl + vn > no:
            return HDR_BAD_LENGTHS
        out[o] = kl & 0xFF
        out[o + 1] = kl >> 8
        o += 2
        for x in range(kl):
            out[o + x] = src[s + x]
        o += kl
        s += kl
        u = vl & 0xFFFFFFFF  # i32, two's complement
        out[o] = u & 0xFF
        out[o + 1] = (u >> 8) & 0xFF
        out[o + 2] = (u >> 16) & 0xFF
        out[o + 3] = u >> 24
        o += 4
        for x in range(vn):
            out[o + x] = src[s + x]
        o += vn
        s += vn
    return o


_FAST = {}


def _signatures():
    from numba import types as t

    b = t.Bytes(t.uint8, 1, "C", readonly=True)
    return {
        "parse_headers": (parse_headers, (b, t.int64[:, ::1])),
        "pack_headers": (pack_headers, (t.int64[::1], b, t.uint8[::1])),
    }


def entry(name: str):
    """The compiled entry point of one kernel here (as ``frames.entry``: skips numba's dispatcher)."""
    return entry_point(_FAST, name, _signatures)


def warm() -> None:
    """Compile (or load from the cache) the kernels here with the types shmbus passes."""
    for name in _signatures():
        entry(name)
