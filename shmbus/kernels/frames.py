"""Kernels over frames: the verbs of the data path.

Each verb takes the partition's shared memory as one ``uint8`` array (ring
header, then the ring; see ``layout/ring.py``) or a plain buffer of frames
(a chunk of a segment file), plus ints, and returns an int status or count.
Python turns statuses into exceptions in one place (``shmbus/ring.py``).

Writers:   append_one, append_batch
Readers:   scan (metadata of frames), scan_copy (values into one buffer)
Spiller:   spill_scan, release
Unblocker: unblock_reserved, unblock_free, fence_reserved, let_go

All positions are absolute (they only grow); ``pos & mask`` is the place in
the ring. A frame never straddles the end of the ring.
"""

from __future__ import annotations

import numpy as np

from numba import carray

from shmbus.kernels._atomics import (
    as_pointer,
    load32s,
    load64,
    memcpy,
    store32,
    store64,
    cas64,
    cas128,
    fetch_add32,
    load_acquire32,
    load_acquire64,
    store_release64,
    store_seqcst64,
)
from shmbus.kernels._jit import entry_point, jit
from shmbus.kernels.crc32c import crc32c_update
# the layout constants under the names the C twins use too (numba freezes module globals)
from shmbus.layout.constants import (  # noqa: F401  (STOP_*, ST_*, META_COLS: read as K.<name> by callers)
    F_ALIGN,
    F_CRC,
    F_HDR,
    F_HLEN,
    F_KLEN,
    F_OFFSET,
    F_TS,
    F_VLEN,
    FLAG_DELETED,
    AUX_SHIFT,
    LEN_MASK,
    META_COLS,
    M_BODY,
    M_HLEN,
    M_KLEN,
    M_LEN,
    M_OFFSET,
    M_POS,
    M_TS,
    M_VLEN,
    MS_BAD,
    MS_COUNT,
    MS_POS,
    MS_REASON,
    PID_MASK,
    R_CLAIM_OFFSET,
    R_CLAIM_POS,
    R_FLAGS,
    R_MAX_MESSAGE,
    R_RECLAIMING,
    R_RELEASED,
    R_RING_BYTES,
    R_SLEEPERS,
    RING_HDR,
    SP_INDEX,
    SP_LEN,
    SP_OFFSET,
    SP_TS,
    SP_PID,
    SP_TYPE,
    ST_DELETED,
    ST_FULL,
    ST_OVER_MAX,
    ST_STALLED,
    ST_TOO_LARGE,
    MAX_CLAIM_BYTES,
    STOP_CORRUPT,
    STOP_CRC,
    STOP_EMPTY,
    STOP_END,
    STOP_MAX,
    T_DATA,
    T_FREE,
    T_PADDING,
    T_POISON,
    T_RESERVED,
    TYPE_MASK,
    TYPE_SHIFT,
)


@jit
def _hdr(length, ftype, aux):
    return np.int64(length) | (np.int64(ftype) << TYPE_SHIFT) | (np.int64(aux & PID_MASK) << AUX_SHIFT)


@jit
def _htype(h):
    return (h >> TYPE_SHIFT) & TYPE_MASK


@jit
def _hlen(h):
    return h & LEN_MASK


@jit
def _align8(n):
    return (n + F_ALIGN - 1) & ~(F_ALIGN - 1)


@jit(inline="always")
def _put_i32(buf, i, v):
    store32(buf, i, v)


@jit(inline="always")
def _put_i64(buf, i, v):
    store64(buf, i, v)


@jit(inline="always")
def _get_i32(buf, i):
    return load32s(buf, i)


@jit(inline="always")
def _get_u32(buf, i):
    return load32s(buf, i) & 0xFFFFFFFF


@jit(inline="always")
def _get_i64(buf, i):
    return load64(buf, i)


@jit(inline="always")
def _copy(dst, di, src, si, n):
    if n > 0:
        memcpy(dst, di, src, si, n)


@jit
def _ring_bytes(buf):
    return _get_i64(buf, R_RING_BYTES)


@jit
def _claim(buf, ring, need, nrec):
    """Claim ``need`` contiguous bytes and ``nrec`` offsets in one 128-bit CAS.

    Returns (status, frame position, first offset, padding position, padding
    length, released position). A claim whose bytes would not fit before the
    end of the ring also covers a padding frame up to the end.
    """
    mask = ring - 1
    while True:
        pos = load_acquire64(buf, R_CLAIM_POS)
        off = load_acquire64(buf, R_CLAIM_OFFSET)
        idx = pos & mask
        pad = 0
        if idx + need > ring:
            pad = ring - idx
        rel = load_acquire64(buf, R_RELEASED)
        if pos + pad + need - rel > ring:
            return ST_FULL, 0, 0, 0, 0, rel
        if cas128(buf, R_CLAIM_POS, pos, off, pos + pad + need, off + nrec):
            return 0, pos + pad, off, pos, pad, rel


@jit
def _reserve(buf, mask, ppos, pad, fpos, flen, pid):
    """Turn the claim's FREE words into PADDING and RESERVED(pid) (``flen``: the whole claim after the padding).

    Fails (False) only if the supervisor unblocked this claim because the
    writer stalled between claim and reserve; the caller claims again.
    """
    if pad > 0:
        if not cas64(buf, RING_HDR + (ppos & mask), 0, _hdr(pad, T_PADDING, 0)):
            return False
    return cas64(buf, RING_HDR + (fpos & mask), 0, _hdr(flen, T_RESERVED, pid))


@jit
def _let_go(buf, i):
    """A fenced claim's writer (or the supervisor, for a dead pid) lets go of it: PADDING aux -> 0.

    The header at buffer index ``i`` is PADDING(length, pid) after a fence; afterwards the
    spiller may free (zero) the region. Returns True if this call let it go.
    """
    h = load_acquire64(buf, i)
    if _htype(h) != T_PADDING or (h >> AUX_SHIFT) & PID_MASK == 0:
        return False
    return cas64(buf, i, h, _hdr(_hlen(h), T_PADDING, 0))


@jit
def _publish(buf, i, reserved, flen):
    """Publish the frame at buffer index ``i``: CAS RESERVED -> DATA(flen) (a full barrier).

    False if the supervisor fenced the claim (the writer stalled longer than the
    unblock timeout): nothing of it is published; the writer lets go of it here.
    """
    if cas64(buf, i, reserved, _hdr(flen, T_DATA, 0)):
        return True
    _let_go(buf, i)
    return False


@jit
def _write_frame(buf, i, off, ts, key, klen, value, vlen, hdrs, hlen, flen):
    """Write a frame's body at buffer index i (header word not touched)."""
    _put_i64(buf, i + F_OFFSET, off)
    _put_i64(buf, i + F_TS, ts)
    _put_i32(buf, i + F_KLEN, klen)
    _put_i32(buf, i + F_VLEN, vlen)
    _put_i32(buf, i + F_HLEN, hlen)
    b = i + F_HDR
    if klen > 0:
        _copy(buf, b, key, 0, klen)
        b += klen
    if vlen > 0:
        _copy(buf, b, value, 0, vlen)
        b += vlen
    if hlen > 0:
        _copy(buf, b, hdrs, 0, hlen)
        b += hlen
    end = i + flen
    while b < end:
        buf[b] = 0
        b += 1
    crc = crc32c_update(np.uint32(0), buf, i + F_OFFSET, i + F_CRC)
    crc = crc32c_update(crc, buf, i + F_HDR, i + F_HDR + max(klen, 0) + max(vlen, 0) + hlen)
    _put_i32(buf, i + F_CRC, np.int64(crc))


@jit
def _after_publish(buf, ring, fpos, flen, pad, rel):
    """Bits for Python: 1 = a consumer sleeps here; 2 = the ring passed half full."""
    bits = 0
    if load_acquire32(buf, R_SLEEPERS) > 0:
        bits |= 1
    used = fpos + flen - rel
    if used * 2 > ring and (used - flen - pad) * 2 <= ring:
        bits |= 2
    return bits


@jit(inline="always")
def _ring_view(addr):
    """The mapping at ``addr`` (header + ring) as a uint8 array, without a copy."""
    hdr = carray(as_pointer(addr), RING_HDR, np.uint8)
    return carray(as_pointer(addr), RING_HDR + _get_i64(hdr, R_RING_BYTES), np.uint8)


@jit(inline="always")
def _append(buf, key, klen, value, vlen, hdrs, hlen, ts, pid):
    """Append one record (klen/vlen -1 = null). Returns ``offset << 2 | wake bits`` or a status."""
    size = max(klen, 0) + max(vlen, 0) + hlen
    flen = _align8(F_HDR + size)
    ring = _ring_bytes(buf)
    if size > _get_i64(buf, R_MAX_MESSAGE):
        return ST_OVER_MAX
    if flen * 2 > ring:
        return ST_TOO_LARGE
    if load_acquire64(buf, R_FLAGS) & FLAG_DELETED:
        return ST_DELETED
    mask = ring - 1
    while True:
        st, fpos, off, ppos, pad, rel = _claim(buf, ring, flen, 1)
        if st != 0:
            return st
        if not _reserve(buf, mask, ppos, pad, fpos, flen, pid):
            continue
        i = RING_HDR + (fpos & mask)
        _write_frame(buf, i, off, ts, key, klen, value, vlen, hdrs, hlen, flen)
        if not _publish(buf, i, _hdr(flen, T_RESERVED, pid), flen):
            return ST_STALLED
        return (off << 2) | _after_publish(buf, ring, fpos, flen, pad, rel)


# The three single-record entry points. Python calls them through their
# compiled entry points (see ``fast()``), with the ring's address, so a send
# pays for one bytes argument per part it has and nothing more.

@jit(nogil=False)
def append_v(addr, value, ts, pid):
    """A record with a value, no key, no headers."""
    return _append(_ring_view(addr), value, -1, value, len(value), value, 0, ts, pid)


@jit(nogil=False)
def append_kv(addr, key, value, ts, pid):
    """A record with a key and a value, no headers."""
    return _append(_ring_view(addr), key, len(key), value, len(value), value, 0, ts, pid)


@jit(nogil=False)
def append_any(addr, key, klen, value, vlen, hdrs, ts, pid):
    """Any record: ``klen``/``vlen`` -1 mark a null key/value (pass b"" for it)."""
    return _append(_ring_view(addr), key, klen, value, vlen, hdrs, len(hdrs), ts, pid)


@jit
def append_batch(buf, data, starts, lens, keys, kstarts, klens, ts, pid, first, out_offsets):
    """Append records ``first..`` of a batch in ONE claim (as many as fit a quarter ring).

    Record j's value is ``data[starts[j]:starts[j]+lens[j]]`` (lens -1 = null);
    its key ``keys[kstarts[j]:...+klens[j]]`` (klens -1 = null). The records get
    consecutive offsets, written to ``out_offsets[j]``; readers see the whole
    claim at once (its first frame is published last; its RESERVED header
    carries the whole claim's length, so a fence pads the whole claim).
    Returns ``count << 2 | wake bits`` or a negative status (count >= 1);
    ST_STALLED: the claim was fenced, none of its records is published.
    """
    ring = _ring_bytes(buf)
    mask = ring - 1
    n_total = len(starts)
    cap = min(ring // 4, MAX_CLAIM_BYTES)
    need = 0
    n = 0
    j = first
    while j < n_total:
        fl = _align8(F_HDR + max(lens[j], 0) + max(klens[j], 0))
        if fl * 2 > ring:
            if n == 0:
                return ST_TOO_LARGE
            break
        if n > 0 and need + fl > cap:
            break
        need += fl
        n += 1
        j += 1
    if load_acquire64(buf, R_FLAGS) & FLAG_DELETED:
        return ST_DELETED
    fl0 = _align8(F_HDR + max(lens[first], 0) + max(klens[first], 0))
    empty = np.empty(0, np.uint8)
    while True:
        st, fpos, off, ppos, pad, rel = _claim(buf, ring, need, n)
        if st != 0:
            return st
        if not _reserve(buf, mask, ppos, pad, fpos, need, pid):
            continue
        i0 = RING_HDR + (fpos & mask)
        i = i0 + fl0
        for k in range(1, n):
            j = first + k
            vl = lens[j]
            kl = klens[j]
            fl = _align8(F_HDR + max(vl, 0) + max(kl, 0))
            _write_frame(buf, i, off + k, ts, keys[kstarts[j]:], kl, data[starts[j]:], vl, empty, 0, fl)
            store_release64(buf, i, _hdr(fl, T_DATA, 0))
            out_offsets[j] = off + k
            i += fl
        vl = lens[first]
        kl = klens[first]
        _write_frame(buf, i0, off, ts, keys[kstarts[first]:], kl, data[starts[first]:], vl, empty, 0, fl0)
        if not _publish(buf, i0, _hdr(need, T_RESERVED, pid), fl0):
            return ST_STALLED
        out_offsets[first] = off
        return (np.int64(n) << 2) | _after_publish(buf, ring, fpos, need, pad, rel)


# The append protocol's steps under public names, for the kernels of other writers
# (kafka_in.py appends Kafka batches): claim, reserve, write, publish as append_batch does.
claim = _claim
reserve = _reserve
write_frame = _write_frame
publish = _publish
after_publish = _after_publish
header_word = _hdr
align8 = _align8
ring_bytes = _ring_bytes


@jit
def scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta):
    """Walk published frames from ``pos``; describe DATA frames into ``meta``.

    Ring: ``base`` = 4096, ``mask`` = ring bytes - 1, ``end`` = a huge number.
    A chunk of a segment: ``base`` = 0, ``mask`` = -1, ``end`` = bytes in it
    (a frame must lie wholly inside to count).
    ``meta[0]`` = (new pos, records, stop reason, bad frame pos);
    ``meta[1 + r]`` = (frame pos, offset, timestamp, key len, value len,
    headers len, body index, frame len). Frames below ``min_offset`` are passed.
    """
    n = 0
    reason = STOP_MAX
    bad = -1
    cap = min(max_n, meta.shape[0] - 1)
    while n < cap:
        if pos + 8 > end:
            reason = STOP_END
            break
        i = base + (pos & mask)
        h = load_acquire64(buf, i)
        t = _htype(h)
        ln = _hlen(h)
        if t == T_FREE or t == T_RESERVED:
            reason = STOP_EMPTY
            break
        if ln < 8 or (ln & 7) != 0 or t > T_POISON:
            reason = STOP_CORRUPT
            bad = pos
            break
        if pos + ln > end:
            reason = STOP_END
            break
        if mask >= 0 and (pos & mask) + ln > mask + 1:
            # a frame never straddles the ring's end: a length read from a lapped (reused)
            # region; stop before reading past the mapping
            reason = STOP_CORRUPT
            bad = pos
            break
        if t == T_DATA:
            if ln < F_HDR:
                reason = STOP_CORRUPT
                bad = pos
                break
            kl = _get_i32(buf, i + F_KLEN)
            vl = _get_i32(buf, i + F_VLEN)
            hl = _get_i32(buf, i + F_HLEN)
            if kl < -1 or vl < -1 or hl < 0 or F_HDR + max(kl, 0) + max(vl, 0) + hl > ln:
                reason = STOP_CORRUPT
                bad = pos
                break
            if verify:
                crc = crc32c_update(np.uint32(0), buf, i + F_OFFSET, i + F_CRC)
                crc = crc32c_update(crc, buf, i + F_HDR, i + F_HDR + max(kl, 0) + max(vl, 0) + hl)
                if np.int64(crc) != _get_u32(buf, i + F_CRC):
                    reason = STOP_CRC
                    bad = pos
                    break
            off = _get_i64(buf, i + F_OFFSET)
            if off >= min_offset:
                r = meta[1 + n]
                r[M_POS] = pos
                r[M_OFFSET] = off
                r[M_TS] = _get_i64(buf, i + F_TS)
                r[M_KLEN] = kl
                r[M_VLEN] = vl
                r[M_HLEN] = hl
                r[M_BODY] = i + F_HDR
                r[M_LEN] = ln
                n += 1
        pos += ln
    meta[0, MS_POS] = pos
    meta[0, MS_COUNT] = n
    meta[0, MS_REASON] = reason
    meta[0, MS_BAD] = bad
    return n


@jit
def scan_copy(buf, base, mask, pos, end, max_n, min_offset, verify, meta, values):
    """As :func:`scan`, then copy the values into ``values`` back to back.

    ``meta[1 + r, M_BODY]`` becomes the value's start in ``values``. Stops early
    (reason STOP_MAX) when ``values`` is full.
    """
    n = scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta)
    at = 0
    for r in range(n):
        row = meta[1 + r]
        vl = max(row[M_VLEN], 0)
        if at + vl > len(values):
            # keep the records that fit; resume at the first that did not
            meta[0, MS_POS] = row[M_POS]
            meta[0, MS_COUNT] = r
            meta[0, MS_REASON] = STOP_MAX
            return r
        src = row[M_BODY] + max(row[M_KLEN], 0)
        _copy(values, at, buf, src, vl)
        row[M_BODY] = at
        at += vl
    return n


@jit(nogil=False)
def scan_ring(addr, pos, max_n, min_offset, meta_addr, meta_rows):
    """:func:`scan` over the ring at ``addr``, into the meta array at ``meta_addr``."""
    buf = _ring_view(addr)
    meta = carray(as_pointer(meta_addr), (meta_rows, META_COLS), np.int64)
    ring = _ring_bytes(buf)
    # nothing can be published at or past RELEASED + ring (claims stop there); past it
    # lies the oldest frame again, when the ring is exactly full
    end = load_acquire64(buf, R_RELEASED) + ring
    return scan(buf, RING_HDR, ring - 1, pos, end, max_n, min_offset, False, meta)


@jit(nogil=False)
def scan_copy_ring(addr, pos, max_n, min_offset, meta_addr, meta_rows, values_addr, values_len):
    """:func:`scan_copy` over the ring at ``addr`` (arrays by address)."""
    buf = _ring_view(addr)
    meta = carray(as_pointer(meta_addr), (meta_rows, META_COLS), np.int64)
    values = carray(as_pointer(values_addr), values_len, np.uint8)
    ring = _ring_bytes(buf)
    end = load_acquire64(buf, R_RELEASED) + ring  # see scan_ring
    return scan_copy(buf, RING_HDR, ring - 1, pos, end, max_n, min_offset, False, meta, values)


@jit
def spill_scan(buf, pos, max_bytes, meta):
    """Frames the spiller may copy to disk, from ``pos`` (the released position).

    ``meta[0]`` = (new pos, frames described, stop reason, blocked header word);
    ``meta[1 + r]`` = (ring index, frame len, offset, timestamp, type, aux, 0, 0)
    for DATA and PADDING frames (aux: a fenced claim's pid, else 0); stops at FREE or RESERVED (the blocked word's
    header is reported so the unblocker can judge it) or after ``max_bytes``.
    """
    ring = _ring_bytes(buf)
    mask = ring - 1
    n = 0
    start = pos
    reason = STOP_MAX
    blocked = 0
    cap = meta.shape[0] - 1
    while n < cap and pos - start < max_bytes:
        i = RING_HDR + (pos & mask)
        h = load_acquire64(buf, i)
        t = _htype(h)
        ln = _hlen(h)
        if t == T_FREE or t == T_RESERVED:
            reason = STOP_EMPTY
            blocked = h
            break
        if ln < 8 or (ln & 7) != 0 or t > T_POISON or (pos & mask) + ln > ring:
            reason = STOP_CORRUPT
            blocked = h
            break
        r = meta[1 + n]
        r[:] = 0
        r[SP_INDEX] = i
        r[SP_LEN] = ln
        r[SP_TYPE] = t
        if t == T_PADDING:
            r[SP_PID] = (h >> AUX_SHIFT) & PID_MASK  # a fenced claim's writer (0: an ordinary padding)
        if t == T_DATA:
            r[SP_OFFSET] = _get_i64(buf, i + F_OFFSET)
            r[SP_TS] = _get_i64(buf, i + F_TS)
        else:
            r[SP_OFFSET] = -1
            r[SP_TS] = -1
        n += 1
        pos += ln
    meta[0, MS_POS] = pos
    meta[0, MS_COUNT] = n
    meta[0, MS_REASON] = reason
    meta[0, MS_BAD] = blocked
    return n


@jit
def release(buf, frm, to):
    """Zero ring bytes [frm, to) (they are on disk), then publish RELEASED = to.

    RECLAIMING = to is stored first, with a full barrier, so a reader that
    copied a frame below ``to`` while it was being zeroed sees, when it
    checks RECLAIMING after the copy, that its copy may be torn.
    """
    store_seqcst64(buf, R_RECLAIMING, to)
    ring = _ring_bytes(buf)
    mask = ring - 1
    p = frm
    while p < to:
        i = p & mask
        stop = min(ring - i, to - p)
        buf[RING_HDR + i: RING_HDR + i + stop] = 0
        p += stop
    store_release64(buf, R_RELEASED, to)


@jit
def unblock_reserved(buf, pos, header):
    """A dead writer's RESERVED frame at ``pos`` becomes PADDING. True if done."""
    if _htype(header) != T_RESERVED or _hlen(header) < F_HDR:
        return False
    ring = _ring_bytes(buf)
    i = RING_HDR + (pos & (ring - 1))
    return cas64(buf, i, header, _hdr(_hlen(header), T_PADDING, 0))


@jit
def fence_reserved(buf, pos, header):
    """A live but stalled writer's RESERVED claim at ``pos`` becomes PADDING(whole claim, pid).

    Readers and the spiller step over it; the writer's publish (a CAS from
    RESERVED) then fails, and it lets go (aux -> 0) when it runs again. The
    spiller must not free the region before that (or before the pid is gone):
    the writer may still be writing its body there. True if done.
    """
    if _htype(header) != T_RESERVED or _hlen(header) < F_HDR:
        return False
    ring = _ring_bytes(buf)
    i = RING_HDR + (pos & (ring - 1))
    return cas64(buf, i, header, _hdr(_hlen(header), T_PADDING, (header >> AUX_SHIFT) & PID_MASK))


@jit
def header_at(buf, pos):
    """The header word at ring position ``pos`` (an acquire load)."""
    return load_acquire64(buf, RING_HDR + (pos & (_ring_bytes(buf) - 1)))


@jit
def let_go(buf, pos):
    """The supervisor lets go of a fenced claim at ``pos`` whose writer is gone. True if done."""
    ring = _ring_bytes(buf)
    return _let_go(buf, RING_HDR + (pos & (ring - 1)))


@jit
def finish_claim(buf, pos, off, value_len, ts, pid):
    """For tests: the rest of a send over a claim from :func:`claim_and_abandon` (reserved,
    ``value_len`` as given there), as a stalled writer resumes: write the body, publish.

    ``off``: the claim's offset. Returns it, or ST_STALLED if the claim was fenced meanwhile
    (then let go).
    """
    ring = _ring_bytes(buf)
    i = RING_HDR + (pos & (ring - 1))
    flen = _align8(F_HDR + value_len)
    value = np.full(value_len, 7, np.uint8)
    empty = np.empty(0, np.uint8)
    _write_frame(buf, i, off, ts, empty, -1, value, value_len, empty, 0, flen)
    if not _publish(buf, i, _hdr(flen, T_RESERVED, pid), flen):
        return ST_STALLED
    return off


@jit
def unblock_free(buf, pos):
    """A claim at ``pos`` whose writer never reserved it becomes PADDING.

    Takes the word at ``pos`` (FREE -> POISON), then poisons the FREE words
    after it up to the first word a writer has taken, the claim tail or the
    end of the ring, and publishes PADDING over all of them. A writer that
    was merely slow finds its reserve failing and claims again, so this is
    safe to do to a live writer too. Returns the padding length (0: nothing done).
    """
    ring = _ring_bytes(buf)
    mask = ring - 1
    tail = load_acquire64(buf, R_CLAIM_POS)
    if tail <= pos:
        return 0
    poison = _hdr(8, T_POISON, 0)
    if not cas64(buf, RING_HDR + (pos & mask), 0, poison):
        return 0
    limit = min(tail, pos - (pos & mask) + ring)
    p = pos + 8
    while p < limit:
        if not cas64(buf, RING_HDR + (p & mask), 0, poison):
            break
        p += 8
    length = p - pos
    store_seqcst64(buf, RING_HDR + (pos & mask), _hdr(length, T_PADDING, 0))
    return length


@jit
def ring_low_offset(buf, pos):
    """The offset of the first DATA frame at or after ``pos``, or -1 if none yet."""
    ring = _ring_bytes(buf)
    mask = ring - 1
    end = pos + ring
    while pos < end:
        i = RING_HDR + (pos & mask)
        h = load_acquire64(buf, i)
        t = _htype(h)
        if t == T_DATA:
            return _get_i64(buf, i + F_OFFSET)
        if (t != T_PADDING and t != T_POISON) or _hlen(h) < 8:
            return -1
        pos += _hlen(h)
    return -1


@jit
def add_sleepers(buf, delta):
    """Count a consumer going to sleep on (+1) or waking from (-1) this ring.

    A full barrier: a consumer increments, then re-checks for data; a
    producer publishes with a compare-and-swap (a full barrier), then reads
    the count; so one of the two always sees the other.
    """
    return fetch_add32(buf, R_SLEEPERS, delta)


@jit
def claim_and_abandon(buf, value_len, reserve, pid):
    """For tests and tools: claim a frame and stop there, as a writer killed mid-send.

    ``reserve`` False leaves the claimed word FREE (killed between claim and
    reserve); True leaves it RESERVED(pid) (killed while writing). Returns the
    frame's position, or a negative status.
    """
    flen = _align8(F_HDR + value_len)
    ring = _ring_bytes(buf)
    st, fpos, off, ppos, pad, rel = _claim(buf, ring, flen, 1)
    if st != 0:
        return st
    if reserve:
        _reserve(buf, ring - 1, ppos, pad, fpos, flen, pid)
    return fpos


_FAST = {}


def _signatures():
    from numba import types as t

    b = t.Bytes(t.uint8, 1, "C", readonly=True)
    i = t.int64
    return {
        "append_v": (append_v, (i, b, i, i)),
        "append_kv": (append_kv, (i, b, b, i, i)),
        "append_any": (append_any, (i, b, i, b, i, b, i, i)),
        "scan_ring": (scan_ring, (i, i, i, i, i, i)),
        "scan_copy_ring": (scan_copy_ring, (i, i, i, i, i, i, i, i)),
    }


def entry(name: str):
    """The compiled entry point of one hot kernel (see ``_jit.entry_point``)."""
    return entry_point(_FAST, name, _signatures)


def fast():
    """All hot entry points, by name (see :func:`entry`)."""
    for name in _signatures():
        entry(name)
    return _FAST


def load_reader_kernels() -> None:
    """Load (from the cache) the kernels a consumer's general path calls: the ring scans by
    their entry points, ``scan``/``scan_copy`` with the types segment reads pass, and the header
    parser."""
    from shmbus.kernels import headers as H
    from shmbus.layout import ring as R

    fast()
    H.entry("parse_headers")
    ring_bytes = 4096
    buf = np.zeros(R.HEADER_BYTES + ring_bytes, np.uint8)
    meta = np.zeros((8, META_COLS), np.int64)
    values = np.zeros(64, np.uint8)
    scan(buf, 0, -1, 0, len(buf), 4, 0, True, meta)
    scan(buf, 0, -1, 0, len(buf), 4, 0, False, meta)
    scan_copy(buf, 0, -1, 0, len(buf), 4, 0, False, meta, values)


def warm() -> None:
    """Compile (or load from the cache) every kernel with the types shmbus passes.

    Run once in a parent process before starting workers, so that a cold cache
    is filled once instead of by every process at the same time.
    """
    from shmbus.layout import ring as R
    from shmbus.kernels.murmur2 import murmur2_bytes, partition_bytes

    fast()
    murmur2_bytes(b"warm-up")
    partition_bytes(b"warm-up", 2)
    ring_bytes = 4096
    buf = np.zeros(R.HEADER_BYTES + ring_bytes, np.uint8)
    hdr = buf[: R.HEADER_BYTES].view(np.int64)
    hdr[R.OFF_RING_BYTES // 8] = ring_bytes
    meta = np.zeros((8, META_COLS), np.int64)
    values = np.zeros(64, np.uint8)
    n = 2
    starts = np.zeros(n, np.int64)
    lens = np.full(n, 4, np.int64)
    klens = np.full(n, -1, np.int64)
    out = np.zeros(n, np.int64)
    # the producer passes values and keys as read-only arrays, always
    append_batch(buf, np.frombuffer(b"abcd", np.uint8), starts, lens, np.frombuffer(b"", np.uint8), starts, klens,
                 0, 1, 0, out)
    scan(buf, RING_HDR, ring_bytes - 1, 0, 1 << 62, 4, 0, False, meta)
    scan(buf, 0, -1, 0, len(buf), 4, 0, True, meta)
    scan_copy(buf, RING_HDR, ring_bytes - 1, 0, 1 << 62, 4, 0, False, meta, values)
    spill_scan(buf, 0, ring_bytes, meta)
    ring_low_offset(buf, 0)
    add_sleepers(buf, 0)
    release(buf, 0, 0)
    unblock_reserved(buf, 0, 0)
    unblock_free(buf, 0)
    fence_reserved(buf, 0, 0)
    let_go(buf, 0)
    header_at(buf, 0)
    from shmbus.kernels import groups as G

    G.warm()  # the group offsets table's kernels (commits)
    from shmbus.kernels import headers as H

    H.warm()  # the header codec's
