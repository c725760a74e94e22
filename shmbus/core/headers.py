"""The record header codec: ``[(str, bytes | None), ...]`` to and from a frame's header bytes.

The bytes (layout/frame.py) are repeated ``u16 key length | key utf-8 | i32
value length (-1 = null) | value``. The byte work exists twice, as every verb:
the compiled codec (``encode_headers``/``decode_headers`` of ``_native.c``) and
the numba kernels of ``shmbus/kernels/headers.py`` (``SHMBUS_NATIVE=0``, or no
C build). What stays here is what no kernel can do: checking and converting
the Python objects on the way in (types, ``str.encode``, other bytes-likes,
the errors that explain bad headers), and making the str and bytes objects
from the table the parse kernel fills on the way out.
"""

from __future__ import annotations

import numpy as np

from shmbus.core import native
from shmbus.errors import InvalidRecordError
from shmbus.layout import frame as F

_KH = native.LazyModule("shmbus.kernels.headers")  # numba, imported when first used


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
_I32_MAX = (1 << 31) - 1
_KEY_MAX = F.HDR_KEY_MAX
_NULL = F.NULL_LEN
_MIN_BYTES = F.HDR_MIN_BYTES


def encode_headers(headers) -> bytes:
    """[(str, bytes | None), ...] -> the frame's header bytes (layout/frame.py).

    The compiled encoder takes lists and tuples of (str, bytes | None); any
    other iterable of pairs, values of other bytes-likes, and bad input, are
    checked and converted here, then encoded by the compiled encoder, or by
    the numba kernel without it. Records of one stream usually carry the same
    headers: here, encoded blocks are remembered by the headers' value (up to
    4096 distinct ones).
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
    pairs, parts, lens = _checked(headers)
    out = _enc_c(pairs) if _enc_c is not None else None  # (None only for keys of a subclass of str)
    if out is None:
        out = _pack(parts, lens)
    if key is not None and len(_ENC_CACHE) < 4096:
        _ENC_CACHE[key] = out
    return out


def _checked(headers) -> tuple:
    """Headers checked and converted, or the error that says what is wrong: (pairs of (str,
    bytes | None); the keys' UTF-8 and the values back to back, [k0, v0, k1, ...] without the
    nulls; two lengths per header, the key's and the value's (NULL_LEN: null))."""
    pairs = []
    parts = []
    lens = []
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
        if len(kb) > _KEY_MAX:
            raise InvalidRecordError(f"a header key is at most {_KEY_MAX} bytes: len={len(kb)}")
        parts.append(kb)
        if v is None:
            lens += (len(kb), _NULL)
        else:
            if type(v) is not bytes:
                v = as_bytes(v, "header value")
            if len(v) > _I32_MAX:
                raise InvalidRecordError(f"a header value is at most {_I32_MAX} bytes: len={len(v)} "
                                         f"(send large data as the record's value)")
            parts.append(v)
            lens += (len(kb), len(v))
        pairs.append((k, v))
    return pairs, parts, lens


def _encode_headers(headers) -> bytes:
    """The numba encoder: the checks of :func:`_checked`, then the ``pack_headers`` kernel."""
    _pairs, parts, lens = _checked(headers)
    return _pack(parts, lens)


def _pack(parts: list, lens: list) -> bytes:
    """The block of checked headers (:func:`_checked`), laid out by the ``pack_headers`` kernel."""
    src = b"".join(parts)
    out = np.empty(len(src) + _MIN_BYTES * (len(lens) >> 1), np.uint8)
    n = _KH.entry("pack_headers")(np.array(lens, np.int64), src, out)
    if n != len(out):
        raise AssertionError(f"pack_headers returned {n} for a block of {len(out)} bytes "
                             f"(shmbus/kernels/headers.py and core/headers.py disagree)")
    return out.tobytes()


_HDR_CACHE: dict = {}


def _corrupt_headers(n: int, at: int):
    raise ValueError(f"corrupt record headers: bytes={n} at={at} (see layout/frame.py)")


def decode_headers(b) -> list:
    """The frame's header bytes -> [(str, bytes | None), ...] (a new list each call).

    Compiled when built; otherwise parsed by the numba kernel and, since records
    of one stream usually carry the same headers, decoded blocks are remembered
    (up to 4096 distinct ones). Bytes that cannot be headers raise ValueError
    (the position of the bad header in its message), a key that is not UTF-8
    UnicodeDecodeError, as the compiled decoder does and in the same order.
    """
    b = bytes(b)
    if _dec_c is not None:
        return _dec_c(b)  # compiled: ~0.2 µs for a few headers, cached or not
    hit = _HDR_CACHE.get(b)
    if hit is not None:
        return list(hit)
    out = _decode_headers(b)
    if len(_HDR_CACHE) < 4096:
        _HDR_CACHE[b] = tuple(out)
    return out


def _decode_headers(b: bytes) -> list:
    """The numba decoder: the ``parse_headers`` kernel's table, then the objects."""
    table = np.empty((1 + len(b) // F.HDR_MIN_BYTES, F.HDR_COLS), np.int64)
    st = _KH.entry("parse_headers")(b, table)
    count = st if st >= 0 else int(table[0, F.HS_COUNT])
    out = []
    for ks, kl, vs, vl in table[1: count + 1].tolist():
        out.append((b[ks: ks + kl].decode(), b[vs: vs + vl] if vl >= 0 else None))
    if st < 0:
        if st != F.HDR_CORRUPT:
            raise AssertionError(f"parse_headers returned {st} (shmbus/kernels/headers.py and core/headers.py "
                                 f"disagree on the table)")
        _corrupt_headers(len(b), int(table[0, F.HS_BAD]))
    return out


__all__ = ["as_bytes", "decode_headers", "encode_headers"]
