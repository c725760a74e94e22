"""The record header codec: ``[(str, bytes | None), ...]`` to and from a frame's header bytes.

The bytes (layout/frame.py) are repeated ``u16 key length | key utf-8 | i32
value length (-1 = null) | value``. The compiled codec (``_native.c``) does
the common cases; the code here does the rest, and everything without the C
build.
"""

from __future__ import annotations

import struct

import numpy as np

from shmbus.core import native
from shmbus.errors import InvalidRecordError


def as_bytes(x, what: str) -> bytes:
    if type(x) is bytes:
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and x.flags.c_contiguous:
            return x.tobytes()
        raise TypeError(f"{what} as a numpy array must be contiguous uint8: dtype={x.dtype} "
                        f"contiguous={x.flags.c_contiguous} (use np.ascontiguousarray(a).view(np.uint8))")
    raise TypeError(f"{what} must be bytes-like or None: type={type(x).__name__} "
                    f"(pass {what.split()[0]}_serializer= to the producer to send other types)")


_ENC_CACHE: dict = {}
_enc_c = native.encode_headers  # the compiled codec (shmbus/core/_native.c), when built
_dec_c = native.decode_headers


def encode_headers(headers) -> bytes:
    """[(str, bytes | None), ...] -> the frame's header bytes (layout/frame.py).

    The compiled encoder does lists and tuples of (str, bytes | None); other
    bytes-likes, and bad input, come here. Records of one stream usually carry
    the same headers: here, encoded blocks are remembered by the headers'
    value (up to 4096 distinct ones).
    """
    if not headers:
        return b""
    if _enc_c is not None:
        out = _enc_c(headers)  # compiled; None: a kind of header it leaves to the code below
        if out is not None:
            return out
    if not isinstance(headers, (list, tuple)):
        try:
            headers = tuple(headers)  # any iterable of pairs, read once (a generator too)
        except TypeError:
            raise TypeError(f"headers must be a list of (str, bytes) pairs: got {type(headers).__name__}") from None
    try:
        key = tuple(headers)
        hit = _ENC_CACHE.get(key)
    except (TypeError, ValueError):  # unhashable items (lists, bytearrays, writable views): not remembered
        key = hit = None
    if hit is not None:
        return hit
    out = _encode_headers(headers)
    if key is not None and len(_ENC_CACHE) < 4096:
        _ENC_CACHE[key] = out
    return out


def _encode_headers(headers) -> bytes:
    out = []
    for item in headers:
        try:
            k, v = item
        except (TypeError, ValueError):
            raise TypeError(f"headers must be (str, bytes) pairs: got {item!r}") from None
        if not isinstance(k, str):
            raise TypeError(f"a header key must be str: key={k!r}")
        try:
            kb = k.encode()
        except UnicodeEncodeError as e:
            raise InvalidRecordError(f"a header key must be valid Unicode (it is stored as UTF-8): key={k!r} "
                                     f"({e.reason} at index {e.start}; a lone surrogate, from bytes decoded "
                                     f"with errors='surrogateescape'?)") from None
        if len(kb) > 0xFFFF:
            raise InvalidRecordError(f"a header key is at most 65535 bytes: len={len(kb)}")
        if v is None:
            out.append(struct.pack("<H", len(kb)) + kb + struct.pack("<i", -1))
        else:
            vb = as_bytes(v, "header value")
            out.append(struct.pack("<H", len(kb)) + kb + struct.pack("<i", len(vb)) + vb)
    return b"".join(out)


_HDR_CACHE: dict = {}
_unpack_h = struct.Struct("<H").unpack_from
_unpack_i = struct.Struct("<i").unpack_from


def _corrupt_headers(n: int, at: int):
    raise ValueError(f"corrupt record headers: bytes={n} at={at} (see layout/frame.py)")


def decode_headers(b) -> list:
    """The frame's header bytes -> [(str, bytes | None), ...] (a new list each call).

    Compiled when built (ValueError for bytes that cannot be headers);
    otherwise decoded here, and since records of one stream usually carry the
    same headers, decoded blocks are remembered (up to 4096 distinct ones).
    """
    b = bytes(b)
    if _dec_c is not None:
        return _dec_c(b)  # compiled: ~0.2 µs for a few headers, cached or not
    hit = _HDR_CACHE.get(b)
    if hit is not None:
        return list(hit)
    out = []
    i = 0
    n = len(b)
    while i < n:
        if i + 2 > n:
            _corrupt_headers(n, i)
        (kl,) = _unpack_h(b, i)
        if i + 2 + kl + 4 > n:
            _corrupt_headers(n, i)
        (vl,) = _unpack_i(b, i + 2 + kl)
        if vl < -1 or i + 2 + kl + 4 + max(vl, 0) > n:
            _corrupt_headers(n, i)
        k = b[i + 2: i + 2 + kl].decode()
        i += 2 + kl + 4
        if vl < 0:
            out.append((k, None))
        else:
            out.append((k, b[i: i + vl]))
            i += vl
    if len(_HDR_CACHE) < 4096:
        _HDR_CACHE[b] = tuple(out)
    return out


__all__ = ["as_bytes", "decode_headers", "encode_headers"]
