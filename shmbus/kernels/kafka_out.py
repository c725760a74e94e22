"""Frames to a Kafka record batch (magic 2, uncompressed): what a Fetch answers with.

:func:`encode_batch` reads the rows a scan described (``meta`` rows, columns
``M_*`` of layout/frame.py) and the buffer holding their bodies (a ring's
mapping, or a segment chunk: the rows' ``M_BODY`` index into it), and writes
one RecordBatch into ``out[at:end]``::

    baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 (0) | magic i8 (2)
    | crc u32 (CRC-32C of attributes..end) | attributes i16 (0) | lastOffsetDelta i32
    | firstTimestamp i64 | maxTimestamp i64 | producerId i64 (-1) | producerEpoch i16 (-1)
    | baseSequence i32 (-1) | count i32 | records

all big-endian; each record is ``length varint | attributes i8 (0) |
timestampDelta varlong | offsetDelta varint | key (varint length, -1 = null)
| value (likewise) | header count varint | headers (varint key length, key,
varint value length (-1 = null), value)``, varints zigzag-encoded. The base
offset is the first record's offset and every record keeps its own offset
(``offsetDelta`` = offset - base), so gaps left by compaction stay gaps.
The frame's header bytes (``u16 key length | key | i32 value length (-1 =
null) | value``, little-endian) are turned into Kafka's varint form.

As many whole records as fit go into the batch, in order; a record never
goes in part. It returns the bytes written and puts the records encoded in
``res[0]``; or a status:

- ``KO_TOO_SMALL``: not even the first record fits; ``res[0]`` = the bytes a
  batch of that record alone needs (grow the output, or stop);
- ``KO_BAD_HEADERS``: the first record's header bytes do not parse (a record
  whose header bytes fail after others were encoded ends the batch before it,
  so the caller meets it first in its next call);
- ``KO_BAD_ROW``: the first row points outside ``buf`` or has impossible
  lengths, or its header bytes changed while it was encoded (a scan of a
  region being overwritten), or the offsets go down.

A batch also ends before a record whose offset is more than 2**31 - 1 past
the base (``offsetDelta`` is an int32).
"""

from __future__ import annotations

import numpy as np

from shmbus.kernels._jit import jit
from shmbus.kernels.crc32c import crc32c_update
from shmbus.layout.frame import M_BODY, M_HLEN, M_KLEN, M_OFFSET, M_TS, M_VLEN

BATCH_HEADER_BYTES = 61  # from baseOffset to the record count, inclusive
CRC_AT = 17  # the crc field's position in a batch
ATTRIBUTES_AT = 21  # the CRC covers from here to the end
INT32_MAX = (1 << 31) - 1
NO_LIMIT = 1 << 62  # (room without a bound: measuring only)

KO_TOO_SMALL = -1
KO_BAD_HEADERS = -2
KO_BAD_ROW = -3


@jit(inline="always")
def _zigzag(v):
    return (np.int64(v) << 1) ^ (np.int64(v) >> 63)


@jit(inline="always")
def _varint_size(v):
    u = np.uint64(_zigzag(v))
    n = 1
    while u >= np.uint64(0x80):
        u >>= np.uint64(7)
        n += 1
    return n


@jit(inline="always")
def _put_varint(out, i, v):
    u = np.uint64(_zigzag(v))
    while u >= np.uint64(0x80):
        out[i] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        i += 1
    out[i] = np.uint8(u)
    return i + 1


@jit(inline="always")
def _put_be(out, i, v, nbytes):
    x = np.int64(v)
    for k in range(nbytes):
        out[i + nbytes - 1 - k] = np.uint8(x & 0xFF)
        x >>= 8


@jit(inline="always")
def _copy(out, di, src, si, n):
    for k in range(n):
        out[di + k] = src[si + k]


@jit
def _walk_headers(buf, start, hlen, out, o, olim, write):
    """Walk the header block ``buf[start:start+hlen]``, each length read once and checked against the block
    and against the room ``out[o:olim]``; with ``write``, write it there in Kafka's form.

    Returns (headers, position after them, counted from ``o``); headers -1: the bytes do not parse or do not
    fit. A ring's bytes can change under a reader that the spiller laps between measuring a block and writing
    it: the second walk checks everything again, so changed bytes give -1, never a read or write outside the
    arrays.
    """
    i = start
    end = start + hlen
    count = 0
    while i < end:
        if i + 2 > end:
            return -1, o
        kl = np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)
        j = i + 2 + kl
        if j + 4 > end:
            return -1, o
        vl = np.int64(np.int32(np.uint32(buf[j]) | (np.uint32(buf[j + 1]) << 8) | (np.uint32(buf[j + 2]) << 16)
                               | (np.uint32(buf[j + 3]) << 24)))
        if vl < -1 or j + 4 + max(vl, 0) > end:
            return -1, o
        need = _varint_size(kl) + kl + _varint_size(vl) + max(vl, 0)
        if o + need > olim:
            return -1, o
        if write:
            o = _put_varint(out, o, kl)
            _copy(out, o, buf, i + 2, kl)
            o += kl
            o = _put_varint(out, o, vl)
            if vl > 0:
                _copy(out, o, buf, j + 4, vl)
                o += vl
        else:
            o += need
        count += 1
        i = j + 4 + max(vl, 0)
    return count, o


@jit
def _headers_size(buf, start, hlen):
    """(count, bytes in Kafka's form) of the header block ``buf[start:start+hlen]``; count -1: it does not parse."""
    count, size = _walk_headers(buf, start, hlen, buf, 0, NO_LIMIT, False)
    return count, (size if count >= 0 else 0)


@jit
def _put_headers(out, o, olim, buf, start, hlen):
    """Write the header block in Kafka's form at ``out[o:olim]``; returns the position after, or -1 (the bytes
    no longer parse or fit: they changed since :func:`_headers_size` measured them)."""
    count, after = _walk_headers(buf, start, hlen, out, o, olim, True)
    return after if count >= 0 else -1


@jit
def encode_batch(buf, rows, n, out, at, end, res):
    """Encode rows ``rows[0:n]`` (bodies in ``buf``) as one record batch at ``out[at:end]``.

    Returns the batch's length in bytes and sets ``res[0]`` to the records in
    it, or a ``KO_*`` status (see the module doc).
    """
    end = min(end, len(out))
    if n <= 0:
        res[0] = 0
        return 0
    base = rows[0, M_OFFSET]
    first_ts = rows[0, M_TS]
    max_ts = first_ts
    o = at + BATCH_HEADER_BYTES
    k = 0
    last_delta = 0
    blen = len(buf)
    while k < n:
        r = rows[k]
        off = r[M_OFFSET]
        ts = r[M_TS]
        kl = r[M_KLEN]
        vl = r[M_VLEN]
        hl = r[M_HLEN]
        body = r[M_BODY]
        if kl < -1 or vl < -1 or hl < 0 or body < 0 or body + max(kl, 0) + max(vl, 0) + hl > blen:
            if k == 0:
                res[0] = 0
                return KO_BAD_ROW
            break
        delta = off - base
        if delta < 0 or delta > INT32_MAX:
            if k == 0:
                res[0] = 0
                return KO_BAD_ROW
            break
        hstart = body + max(kl, 0) + max(vl, 0)
        hcount, hsize = _headers_size(buf, hstart, hl)
        if hcount < 0:
            if k == 0:
                res[0] = 0
                return KO_BAD_HEADERS
            break
        tsd = ts - first_ts
        size = (1 + _varint_size(tsd) + _varint_size(delta) + _varint_size(kl) + max(kl, 0) + _varint_size(vl)
                + max(vl, 0) + _varint_size(hcount) + hsize)
        total = _varint_size(size) + size
        if o + total > end:
            if k == 0:
                res[0] = BATCH_HEADER_BYTES + total
                return KO_TOO_SMALL
            break
        rec = o
        o = _put_varint(out, o, size)
        out[o] = 0  # attributes
        o = _put_varint(out, o + 1, tsd)
        o = _put_varint(out, o, delta)
        o = _put_varint(out, o, kl)
        if kl > 0:
            _copy(out, o, buf, body, kl)
            o += kl
        o = _put_varint(out, o, vl)
        if vl > 0:
            _copy(out, o, buf, body + max(kl, 0), vl)
            o += vl
        o = _put_varint(out, o, hcount)
        o = _put_headers(out, o, rec + total, buf, hstart, hl)
        if o != rec + total:  # the header bytes changed since they were measured (a lapped ring)
            if k == 0:
                res[0] = 0
                return KO_BAD_ROW
            o = rec
            break
        if ts > max_ts:
            max_ts = ts
        last_delta = delta
        k += 1
    length = o - at
    _put_be(out, at, base, 8)
    _put_be(out, at + 8, length - 12, 4)
    _put_be(out, at + 12, 0, 4)  # partitionLeaderEpoch
    out[at + 16] = 2  # magic
    _put_be(out, at + ATTRIBUTES_AT, 0, 2)  # attributes: no compression, create time, not transactional
    _put_be(out, at + 23, last_delta, 4)
    _put_be(out, at + 27, first_ts, 8)
    _put_be(out, at + 35, max_ts, 8)
    _put_be(out, at + 43, -1, 8)  # producerId
    _put_be(out, at + 51, -1, 2)  # producerEpoch
    _put_be(out, at + 53, -1, 4)  # baseSequence
    _put_be(out, at + 57, k, 4)
    crc = crc32c_update(np.uint32(0), out, at + ATTRIBUTES_AT, o)
    _put_be(out, at + CRC_AT, crc, 4)
    res[0] = k
    return length


__all__ = ["encode_batch", "BATCH_HEADER_BYTES", "KO_TOO_SMALL", "KO_BAD_HEADERS", "KO_BAD_ROW"]


def warm() -> None:
    """Compile (or load from the cache) the encoder with the types the listener passes."""
    from shmbus.layout import frame as F

    rows = np.zeros((1, F.META_COLS), np.int64)
    rows[0, F.M_KLEN] = -1
    rows[0, F.M_VLEN] = 1
    rows[0, F.M_BODY] = 0
    out = np.zeros(256, np.uint8)
    encode_batch(np.zeros(64, np.uint8), rows, 1, out, 0, len(out), np.zeros(1, np.int64))
