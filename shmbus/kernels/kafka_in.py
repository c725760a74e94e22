"""Kafka records into ring frames: the Produce path of the Kafka listener.

A Kafka RecordBatch v2 carries its records (after decompression) as::

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint
    | key length varint (-1 = null) | key | value length varint (-1 = null) | value
    | header count varint | headers: key length varint | key utf-8 | value length varint (-1 = null) | value

every varint zigzag-encoded. Two passes, so a bad batch writes nothing:

- :func:`parse_records` reads every record into an int64 table (``K_*``
  columns) and checks it all against the buffer: each varint's width, each
  length against the bytes left, each record's length against what it holds,
  offset deltas 0, 1, 2..., the record count against the batch header's,
  header keys (not null, at most 65535 bytes, valid UTF-8), and each record's
  key + value + headers (as a frame stores them) against ``max.message.bytes``.
  It transcodes the headers into frame form (``u16 key length | key | i32
  value length | value``, layout/frame.py) into a scratch buffer on the way.
- :func:`append_records` appends the table's records to a partition ring in
  ONE claim (bytes and offsets, so the batch gets consecutive offsets, as a
  Kafka client assumes from its base offset) with the protocol of
  ``frames.append_batch``: claim, reserve, write every frame but the first
  (each published DATA), write the first, publish it last. Readers see the
  whole batch at once, or none of it.
"""

from __future__ import annotations

import numpy as np

from shmbus.kernels._atomics import load64, load_acquire64, store_release64
from shmbus.kernels._jit import jit
from shmbus.kernels.frames import (
    after_publish,
    align8,
    claim,
    header_word,
    publish,
    reserve,
    ring_bytes,
    write_frame,
)
from shmbus.layout.constants import (
    F_HDR,
    FLAG_DELETED,
    MAX_CLAIM_BYTES,
    R_FLAGS,
    R_MAX_MESSAGE,
    RING_HDR,
    ST_DELETED,
    ST_OVER_MAX,
    ST_STALLED,
    ST_TOO_LARGE,
    T_DATA,
    T_RESERVED,
)

# the table's columns (one row per record)
K_KSTART = 0  # the key's index in the records buffer
K_KLEN = 1  # -1: null
K_VSTART = 2
K_VLEN = 3  # -1: null
K_HSTART = 4  # the frame-form headers' index in the scratch buffer
K_HLEN = 5  # frame-form headers bytes
K_TSDELTA = 6
K_SIZE = 7  # key + value + headers bytes as a frame stores them (what max.message.bytes bounds)
K_FLEN = 8  # the frame's length
K_COLS = 9

# parse_records' statuses (>= 0: the number of records)
P_CORRUPT = -1  # the bytes are not records (row K_KSTART of table[0] is not meaningful)
P_OVER_MAX = -2  # a record's key + value + headers > max.message.bytes
P_COUNT = -3  # the records are fine but there are not as many as the batch header says

MAX_HEADER_KEY = 0xFFFF


@jit(inline="always")
def _varint(data, pos, end, width):
    """A zigzag varint of at most ``width`` bytes at ``pos``: (value, next pos), next pos -1 if bad."""
    u = np.uint64(0)
    shift = 0
    k = 0
    while True:
        if pos >= end or k >= width:
            return np.int64(0), -1
        b = np.uint64(data[pos])
        pos += 1
        k += 1
        u |= (b & np.uint64(0x7F)) << np.uint64(shift)
        if b < np.uint64(0x80):
            break
        shift += 7
    v = np.int64(u >> np.uint64(1)) ^ -np.int64(u & np.uint64(1))
    if width == 5 and (v > 2147483647 or v < -2147483648):
        return np.int64(0), -1
    return v, pos


@jit
def _utf8_ok(data, pos, n):
    """Whether ``data[pos:pos+n]`` is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF)."""
    i = pos
    end = pos + n
    while i < end:
        c = data[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            need = 1
        elif c < 0xF0:
            need = 2
        else:
            need = 3
        if i + need >= end:
            return False
        c1 = data[i + 1]
        lo = 0x80
        hi = 0xBF
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        elif c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if c1 < lo or c1 > hi:
            return False
        for k in range(2, need + 1):
            ck = data[i + k]
            if ck < 0x80 or ck > 0xBF:
                return False
        i += need + 1
    return True


@jit
def parse_records(data, start, end, count, max_msg, table, hbuf):
    """Parse ``count`` records from ``data[start:end]`` into ``table`` (>= count rows) and ``hbuf``.

    ``hbuf`` receives the headers in frame form; it needs at most ``3 * (end - start)``
    bytes (a Kafka header takes at least 2 bytes, its frame form 6 more than its key and
    value). Returns the number of records (== count), or P_CORRUPT, P_OVER_MAX (``table[0,
    K_KSTART]`` is then the record's index), P_COUNT. The records must fill the range exactly.
    """
    pos = start
    h = 0
    n = 0
    while pos < end:
        if n >= count or n >= table.shape[0]:
            return P_COUNT
        length, pos = _varint(data, pos, end, 5)
        if pos < 0 or length < 6 or length > end - pos:  # attributes and 5 varints: 6 bytes at least
            return P_CORRUPT
        rend = pos + length
        pos += 1  # attributes (unused by Kafka, ignored)
        tsd, pos = _varint(data, pos, rend, 10)
        if pos < 0:
            return P_CORRUPT
        od, pos = _varint(data, pos, rend, 5)
        if pos < 0 or od != n:
            return P_CORRUPT
        kl, pos = _varint(data, pos, rend, 5)
        if pos < 0 or kl < -1 or kl > rend - pos:
            return P_CORRUPT
        ks = pos
        pos += max(kl, 0)
        vl, pos = _varint(data, pos, rend, 5)
        if pos < 0 or vl < -1 or vl > rend - pos:
            return P_CORRUPT
        vs = pos
        pos += max(vl, 0)
        nh, pos = _varint(data, pos, rend, 5)
        if pos < 0 or nh < 0 or nh > rend - pos:  # each header takes 2 bytes at least
            return P_CORRUPT
        hs = h
        for _ in range(nh):
            hkl, pos = _varint(data, pos, rend, 5)
            if pos < 0 or hkl < 0 or hkl > MAX_HEADER_KEY or hkl > rend - pos:
                return P_CORRUPT
            if not _utf8_ok(data, pos, hkl):
                return P_CORRUPT
            hks = pos
            pos += hkl
            hvl, pos = _varint(data, pos, rend, 5)
            if pos < 0 or hvl < -1 or hvl > rend - pos:
                return P_CORRUPT
            if h + 6 + hkl + max(hvl, 0) > len(hbuf):
                return P_CORRUPT
            hbuf[h] = hkl & 0xFF
            hbuf[h + 1] = (hkl >> 8) & 0xFF
            h += 2
            for k in range(hkl):
                hbuf[h + k] = data[hks + k]
            h += hkl
            u = hvl & 0xFFFFFFFF
            hbuf[h] = u & 0xFF
            hbuf[h + 1] = (u >> 8) & 0xFF
            hbuf[h + 2] = (u >> 16) & 0xFF
            hbuf[h + 3] = (u >> 24) & 0xFF
            h += 4
            for k in range(max(hvl, 0)):
                hbuf[h + k] = data[pos + k]
            h += max(hvl, 0)
            pos += max(hvl, 0)
        if pos != rend:
            return P_CORRUPT
        size = max(kl, 0) + max(vl, 0) + (h - hs)
        r = table[n]
        r[K_KSTART] = ks
        r[K_KLEN] = kl
        r[K_VSTART] = vs
        r[K_VLEN] = vl
        r[K_HSTART] = hs
        r[K_HLEN] = h - hs
        r[K_TSDELTA] = tsd
        r[K_SIZE] = size
        r[K_FLEN] = align8(F_HDR + size)
        if size > max_msg:
            table[0, K_KSTART] = n
            return P_OVER_MAX
        n += 1
    if n != count:
        return P_COUNT
    return n


@jit
def append_records(buf, data, hbuf, table, n, first_ts, now_ms, pid):
    """Append records 0..n-1 of a parsed table to the ring ``buf`` in ONE claim.

    Record j's timestamp is ``first_ts + table[j, K_TSDELTA]`` (CreateTime), or ``now_ms``
    where that is negative (a client that sends no timestamps). Returns ``base offset << 2 |
    wake bits`` (as ``frames.append_batch``'s bits: 1 a consumer sleeps, 2 the ring passed
    half full), or a status: ST_FULL (no room until the supervisor spills), ST_DELETED,
    ST_TOO_LARGE (the batch's frames take more than a quarter of the ring, or a lone record
    more than half), ST_OVER_MAX (a record over the ring's max.message.bytes), ST_STALLED
    (the claim was fenced; nothing published).
    """
    ring = ring_bytes(buf)
    mask = ring - 1
    max_msg = load64(buf, R_MAX_MESSAGE)
    need = 0
    for j in range(n):
        if table[j, K_SIZE] > max_msg:
            return ST_OVER_MAX
        need += table[j, K_FLEN]
    if n == 1:
        if need * 2 > ring:
            return ST_TOO_LARGE
    elif need > min(ring // 4, MAX_CLAIM_BYTES):
        return ST_TOO_LARGE
    if load_acquire64(buf, R_FLAGS) & FLAG_DELETED:
        return ST_DELETED
    while True:
        st, fpos, off, ppos, pad, rel = claim(buf, ring, need, n)
        if st != 0:
            return st
        if not reserve(buf, mask, ppos, pad, fpos, need, pid):
            continue
        i0 = RING_HDR + (fpos & mask)
        i = i0 + table[0, K_FLEN]
        for j in range(1, n):
            fl = table[j, K_FLEN]
            _write_row(buf, i, off + j, data, hbuf, table, j, first_ts, now_ms)
            store_release64(buf, i, header_word(fl, T_DATA, 0))
            i += fl
        _write_row(buf, i0, off, data, hbuf, table, 0, first_ts, now_ms)
        if not publish(buf, i0, header_word(need, T_RESERVED, pid), table[0, K_FLEN]):
            return ST_STALLED
        return (off << 2) | after_publish(buf, ring, fpos, need, pad, rel)


@jit(inline="always")
def _write_row(buf, i, off, data, hbuf, table, j, first_ts, now_ms):
    r = table[j]
    ts = first_ts + r[K_TSDELTA]
    if ts < 0:
        ts = now_ms
    write_frame(buf, i, off, ts, data[max(r[K_KSTART], 0):], r[K_KLEN], data[max(r[K_VSTART], 0):], r[K_VLEN],
                 hbuf[r[K_HSTART]:], r[K_HLEN], r[K_FLEN])


def warm() -> None:
    """Compile (or load from the cache) both kernels with the types the listener passes."""
    from shmbus.layout import ring as R

    size = 4096
    buf = np.zeros(R.HEADER_BYTES + size, np.uint8)
    hdr = buf[: R.HEADER_BYTES].view(np.int64)
    hdr[R.OFF_RING_BYTES // 8] = size
    hdr[R.OFF_MAX_MESSAGE // 8] = 1 << 20
    data = np.frombuffer(bytes([16, 0, 0, 0, 2, ord("k"), 2, ord("v"), 0]), np.uint8)
    table = np.zeros((1, K_COLS), np.int64)
    hbuf = np.zeros(64, np.uint8)
    n = parse_records(data, 0, len(data), 1, 1 << 20, table, hbuf)
    assert n == 1, n
    append_records(buf, data, hbuf, table, 1, 0, 0, 1)
