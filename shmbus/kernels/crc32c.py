"""CRC-32C (Castagnoli), the checksum of Kafka record batches and iSCSI.

Reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF, so
``crc32c(b"123456789") == 0xE3069283``. The running value passed in and
returned is the *finished* CRC, as in the ``crc32c`` package and zlib:
``crc32c(b, crc32c(a)) == crc32c(a + b)``, and 0 starts a new checksum.

For kernels: :func:`crc32c_update` ``(crc, buf, start, end) -> uint32`` sums
``buf[start:end]`` in place (``buf`` a C-contiguous ``uint8`` array or
``bytes``, e.g. a view of a shared-memory ring), so a kernel checksums a frame
body without a copy. It never reads outside ``buf``: ``end`` is clamped to
``[0, len(buf)]`` and ``start`` to ``[0, end]`` (so a corrupt length yields
a CRC that does not match, not a crash); it does not raise, because a raise
in a kernel costs every caller an NRT incref/decref pair (measured: 31 ns
instead of 16 ns for 100 B).
Callers check their framing themselves.

Two implementations; :data:`CRC32C_VARIANT` says which one
:func:`crc32c_update` is, chosen once at import:

- ``"sse4.2"``: the x86-64 ``crc32`` instruction (LLVM
  ``llvm.x86.sse42.crc32.64.64``, 8 bytes a step). Buffers of
  ``3 * _HW_BLOCK`` bytes or more run three independent streams interleaved,
  which hides the instruction's 3-cycle latency, then join the three CRCs
  with :data:`_SHIFT_TABLES` (a CRC of a block followed by ``_HW_BLOCK``
  zero bytes is a linear map of 32 bits, tabulated byte by byte).
- ``"slicing-by-8"``: table driven, 8 bytes a step, any CPU.

The instruction is used when numba's target CPU features (what it will
compile for: ``NUMBA_CPU_FEATURES`` if set, else the host's, as LLVM reports
them) include ``sse4.2`` and ``crc32`` on x86-64 (``NUMBA_CPU_NAME=generic``
alone means no features, so slicing-by-8). numba's cache index is keyed by
the target CPU and its features, so a cache built on one machine is not
reused on a machine without the instruction.

Both kernels are ``inline="always"``: numba inlines them into the calling
kernel, where LLVM did not (measured: a call plus an NRT incref/decref pair,
~15 ns). Measured in a kernel loop, AMD EPYC (Zen 3) VM at 2.45 GHz:

============  ===========  ============
bytes         sse4.2       slicing-by-8
============  ===========  ============
16            3.4 ns       11 ns
100           14 ns        70 ns
4096          270 ns       2.5 us
64 KiB        4.1 us       39 us
============  ===========  ============

From Python, :func:`crc32c` costs numba's dispatch on top (~0.3-0.5 us).
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import errors as _nberrors
from numba.extending import intrinsic

from shmbus.kernels._jit import jit

_POLY = 0x82F63B78  # x^32 + x^28 + ... reflected (Castagnoli)

# Bytes per stream in the three-stream loop of the sse4.2 variant. Buffers of
# 3 * _HW_BLOCK bytes or more use it; 3 * 128 B = 384 B.
_HW_BLOCK = 128


# -- tables -------------------------------------------------------------------


def _make_tables() -> np.ndarray:
    """Slicing-by-8 tables: ``T[k][b]`` is the CRC of byte ``b`` followed by
    ``k`` zero bytes (no pre/post inversion)."""
    c = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        c = (c >> np.uint32(1)) ^ (np.uint32(_POLY) * (c & np.uint32(1)))
    t = np.empty((8, 256), dtype=np.uint32)
    t[0] = c
    for k in range(1, 8):
        prev = t[k - 1]
        t[k] = (prev >> np.uint32(8)) ^ t[0][prev & np.uint32(0xFF)]
    return t


def _shift_matrix(nbytes: int) -> list:
    """Column ``i`` of the 32x32 GF(2) matrix that advances a raw CRC register
    over ``nbytes`` zero bytes: the image of the register value ``1 << i``.

    Built from the one-zero-bit operator by repeated squaring, as zlib's
    ``crc32_combine`` does: log2(8 * nbytes) squarings of 32 columns.
    """

    def apply(mat, vec):
        out = 0
        i = 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec >>= 1
            i += 1
        return out

    def square(mat):
        return [apply(mat, mat[i]) for i in range(32)]

    # One zero bit: reg -> (reg >> 1) ^ (POLY if reg & 1).
    op = [_POLY] + [1 << (i - 1) for i in range(1, 32)]
    result = [1 << i for i in range(32)]  # identity
    n = 8 * nbytes
    while n:
        if n & 1:
            result = [apply(op, result[i]) for i in range(32)]
        n >>= 1
        if n:
            op = square(op)
    return result


# _shift_matrix(_HW_BLOCK), written out: computing it takes ~1 ms, too much
# for an import (tests/test_crc32c.py checks the two agree).
_SHIFT_COLUMNS = (
    0x6992CEA2, 0xD3259D44, 0xA3A74C79, 0x42A2EE03,
    0x8545DC06, 0x0F67CEFD, 0x1ECF9DFA, 0x3D9F3BF4,
    0x7B3E77E8, 0xF67CEFD0, 0xE915A951, 0xD7C72453,
    0xAA623E57, 0x51280A5F, 0xA25014BE, 0x414C5F8D,
    0x8298BF1A, 0x00DD08C5, 0x01BA118A, 0x03742314,
    0x06E84628, 0x0DD08C50, 0x1BA118A0, 0x37423140,
    0x6E846280, 0xDD08C500, 0xBFFDFCF1, 0x7A178F13,
    0xF42F1E26, 0xEDB24ABD, 0xDE88E38B, 0xB8FDB1E7,
)


def _make_shift_tables(columns) -> np.ndarray:
    """``S[k][b]``: the raw register ``b << 8k`` advanced over ``_HW_BLOCK``
    zero bytes, from the matrix columns; XOR the lookups of a register's four
    bytes to advance it. Built by linearity: S[k][b | 2**j] = S[k][b] ^ col."""
    cols = np.array(columns, dtype=np.uint32).reshape(4, 8)
    s = np.zeros((4, 256), dtype=np.uint32)
    for j in range(8):
        s[:, 1 << j : 2 << j] = s[:, : 1 << j] ^ cols[:, j : j + 1]
    return s


_TABLES = _make_tables()
_SHIFT_TABLES = _make_shift_tables(_SHIFT_COLUMNS)
_TABLES.flags.writeable = False
_SHIFT_TABLES.flags.writeable = False


# -- choice of variant ---------------------------------------------------------


def _target_has_sse42_crc32() -> bool:
    """True when numba compiles for x86-64 with the sse4.2 crc32 instruction."""
    try:
        import llvmlite.binding as ll
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features

        if not ll.get_process_triple().startswith(("x86_64", "amd64")):
            return False
        feats = config.CPU_FEATURES
        if feats is None:
            feats = get_host_cpu_features()
        flags = {f[1:]: f[0] == "+" for f in feats.split(",") if f[:1] in "+-" and len(f) > 1}
        # LLVM >= 14 splits crc32 out of sse4.2 (sse4.2 implies it); older
        # LLVMs do not know the name, so a missing "crc32" means "yes".
        return flags.get("sse4.2", False) and flags.get("crc32", True)
    except Exception:  # any doubt: the portable variant
        return False


HAVE_SSE42 = _target_has_sse42_crc32()
CRC32C_VARIANT = "sse4.2" if HAVE_SSE42 else "slicing-by-8"


# -- intrinsics ----------------------------------------------------------------

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _check_buffer(buf, what, idx=None):
    if idx is not None and not isinstance(idx, types.Integer):
        raise _nberrors.TypingError(f"{what} needs an integer index, got {idx}")
    if not (isinstance(buf, types.Buffer) and buf.dtype == types.uint8 and buf.ndim == 1):
        raise _nberrors.TypingError(f"{what} needs a 1-D uint8 array or bytes, got {buf}")
    if buf.layout != "C":
        raise _nberrors.TypingError(
            f"{what} needs a C-contiguous buffer, got {buf} (pass the whole array and a range)"
        )


def _load(context, builder, bufty, buf, idx, idxty, width):
    """Unaligned little-endian load of ``width`` bits at byte ``idx``."""
    ary = context.make_array(bufty)(context, builder, buf)
    i = context.cast(builder, idx, idxty, types.intp)
    base = builder.bitcast(ary.data, _I8.as_pointer())
    ity = ir.IntType(width)
    p = builder.bitcast(builder.gep(base, [i]), ity.as_pointer())
    v = builder.load(p, align=1, typ=ity)
    if sys.byteorder == "big" and width > 8:
        bswap = builder.module.declare_intrinsic("llvm.bswap", [ity])
        v = builder.call(bswap, [v])
    return v


@intrinsic
def _load_u64(typingctx, buf, idx):
    """``int64`` holding the 8 bytes at ``buf[idx:idx+8]``, little-endian."""
    _check_buffer(buf, "_load_u64", idx)
    sig = types.int64(buf, idx)

    def codegen(context, builder, signature, args):
        return _load(context, builder, signature.args[0], args[0], args[1], signature.args[1], 64)

    return sig, codegen


def _sse42(builder, name, retty, argtys, args):
    fnty = ir.FunctionType(retty, argtys)
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, fnty, name=name)
    return builder.call(fn, args)


@intrinsic
def _hw_crc_u64(typingctx, crc, buf, idx):
    """Raw register ``crc`` (int64, < 2**32) over ``buf[idx:idx+8]``: one ``crc32q``."""
    _check_buffer(buf, "_hw_crc_u64", idx)
    sig = types.int64(crc, buf, idx)

    def codegen(context, builder, signature, args):
        c = context.cast(builder, args[0], signature.args[0], types.int64)
        v = _load(context, builder, signature.args[1], args[1], args[2], signature.args[2], 64)
        return _sse42(builder, "llvm.x86.sse42.crc32.64.64", _I64, [_I64, _I64], [c, v])

    return sig, codegen


@intrinsic
def _hw_crc_u32(typingctx, crc, buf, idx):
    """Raw register over ``buf[idx:idx+4]``: one ``crc32l``."""
    _check_buffer(buf, "_hw_crc_u32", idx)
    sig = types.int64(crc, buf, idx)

    def codegen(context, builder, signature, args):
        c = context.cast(builder, args[0], signature.args[0], types.int64)
        c32 = builder.trunc(c, _I32)
        v = _load(context, builder, signature.args[1], args[1], args[2], signature.args[2], 32)
        r = _sse42(builder, "llvm.x86.sse42.crc32.32.32", _I32, [_I32, _I32], [c32, v])
        return builder.zext(r, _I64)

    return sig, codegen


@intrinsic
def _hw_crc_u8(typingctx, crc, buf, idx):
    """Raw register over the byte ``buf[idx]``: one ``crc32b``."""
    _check_buffer(buf, "_hw_crc_u8", idx)
    sig = types.int64(crc, buf, idx)

    def codegen(context, builder, signature, args):
        c = context.cast(builder, args[0], signature.args[0], types.int64)
        c32 = builder.trunc(c, _I32)
        v = _load(context, builder, signature.args[1], args[1], args[2], signature.args[2], 8)
        r = _sse42(builder, "llvm.x86.sse42.crc32.32.8", _I32, [_I32, _I8], [c32, v])
        return builder.zext(r, _I64)

    return sig, codegen


# -- kernels -------------------------------------------------------------------


@jit(inline="always")
def _crc32c_sw(crc, buf, start, end):
    """Slicing-by-8 CRC-32C of ``buf[start:end]`` continuing the finished CRC ``crc``."""
    # Clamp, never raise: a raise in a kernel keeps an NRT incref/decref
    # pair around every call site (measured: 16 ns instead of 31 ns for 100 B).
    e = min(max(np.int64(end), np.int64(0)), np.int64(len(buf)))
    i = min(max(np.int64(start), np.int64(0)), e)
    t = _TABLES
    c = (np.int64(crc) & 0xFFFFFFFF) ^ 0xFFFFFFFF
    while i + 8 <= e:
        v = _load_u64(buf, i)
        lo = (v & 0xFFFFFFFF) ^ c
        hi = (v >> 32) & 0xFFFFFFFF
        c = np.int64(
            t[7, lo & 0xFF]
            ^ t[6, (lo >> 8) & 0xFF]
            ^ t[5, (lo >> 16) & 0xFF]
            ^ t[4, lo >> 24]
            ^ t[3, hi & 0xFF]
            ^ t[2, (hi >> 8) & 0xFF]
            ^ t[1, (hi >> 16) & 0xFF]
            ^ t[0, hi >> 24]
        )
        i += 8
    while i < e:
        c = np.int64(t[0, (c ^ buf[i]) & 0xFF]) ^ (c >> 8)
        i += 1
    return np.uint32(c ^ 0xFFFFFFFF)


@jit
def _shift_block(c):
    """Raw register ``c`` advanced over ``_HW_BLOCK`` zero bytes."""
    s = _SHIFT_TABLES
    return np.int64(s[0, c & 0xFF] ^ s[1, (c >> 8) & 0xFF] ^ s[2, (c >> 16) & 0xFF] ^ s[3, c >> 24])


@jit(inline="always")
def _crc32c_hw(crc, buf, start, end):
    """SSE4.2 CRC-32C of ``buf[start:end]`` continuing the finished CRC ``crc``."""
    # Clamp, never raise: a raise in a kernel keeps an NRT incref/decref
    # pair around every call site (measured: 16 ns instead of 31 ns for 100 B).
    e = min(max(np.int64(end), np.int64(0)), np.int64(len(buf)))
    i = min(max(np.int64(start), np.int64(0)), e)
    c = (np.int64(crc) & 0xFFFFFFFF) ^ 0xFFFFFFFF
    # Three streams of _HW_BLOCK bytes at a time: crc(A B C) =
    # shift(shift(crc(A)) ^ crc0(B)) ^ crc0(C), crc0 starting from 0.
    while e - i >= 3 * _HW_BLOCK:
        c1 = np.int64(0)
        c2 = np.int64(0)
        j = i
        stop = i + _HW_BLOCK
        while j < stop:
            c = _hw_crc_u64(c, buf, j)
            c1 = _hw_crc_u64(c1, buf, j + _HW_BLOCK)
            c2 = _hw_crc_u64(c2, buf, j + 2 * _HW_BLOCK)
            j += 8
        c = _shift_block(_shift_block(c) ^ c1) ^ c2
        i += 3 * _HW_BLOCK
    while i + 8 <= e:
        c = _hw_crc_u64(c, buf, i)
        i += 8
    if i + 4 <= e:
        c = _hw_crc_u32(c, buf, i)
        i += 4
    while i < e:
        c = _hw_crc_u8(c, buf, i)
        i += 1
    return np.uint32(c ^ 0xFFFFFFFF)


#: ``crc32c_update(crc, buf, start, end) -> uint32`` for kernels: the finished
#: CRC-32C of ``buf[start:end]`` continuing ``crc`` (0 to start). The variant
#: named by :data:`CRC32C_VARIANT`.
crc32c_update = _crc32c_hw if HAVE_SSE42 else _crc32c_sw


# Entry points for Python. Below _NOGIL_BYTES the GIL is kept: releasing and
# retaking it costs ~70 ns, more than the sum of a small buffer.
_NOGIL_BYTES = 16384


@jit(nogil=False)
def _crc32c_whole(crc, buf):
    return crc32c_update(crc, buf, 0, len(buf))


@jit
def _crc32c_whole_nogil(crc, buf):
    return crc32c_update(crc, buf, 0, len(buf))


# -- Python --------------------------------------------------------------------


_U8 = np.dtype(np.uint8)


def as_uint8(data) -> "bytes | np.ndarray":
    """``data`` as something a kernel takes without a copy where possible:
    ``bytes`` as is; a 1-D C-contiguous ``uint8`` array as is; any other
    array as its bytes (a copy if not contiguous); ``bytearray`` and
    ``memoryview`` as a ``uint8`` view (a copy if not contiguous).
    ``TypeError`` for ``str`` and non-buffers."""
    if type(data) is bytes:
        return data
    if isinstance(data, np.ndarray):
        if data.dtype is _U8 and data.ndim == 1 and data.flags.c_contiguous:
            return data
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, str):
        raise TypeError("expected a bytes-like object, got str (encode it first)")
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (BufferError, ValueError):  # a non-contiguous memoryview
        return np.frombuffer(memoryview(data).tobytes(), dtype=np.uint8)
    except TypeError:
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}") from None


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of ``data`` (bytes-like), continuing the finished CRC ``crc``.

    ``crc32c(b"123456789") == 0xE3069283``;
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    if type(data) is not bytes:
        data = as_uint8(data)
    if len(data) < _NOGIL_BYTES:
        return _crc32c_whole(crc, data)
    return _crc32c_whole_nogil(crc, data)


__all__ = ["crc32c", "crc32c_update", "CRC32C_VARIANT", "HAVE_SSE42"]
