"""Atomic loads, stores and compare-and-swaps on shared memory, for kernels.

numba has no public CPU atomics on arrays, so these are LLVM instructions
emitted through ``numba.extending.intrinsic``. Each takes a ``uint8`` array
(a view of an mmap) and a *byte* index; the word there must be naturally
aligned (8 bytes for 64-bit words, 16 for :func:`cas128`). Names say the
memory ordering, as Aeron's do:

================  ====================================  ========================
name              LLVM                                  x86-64
================  ====================================  ========================
load_acquire64    load atomic i64 acquire               mov
load_acquire32    load atomic i32 acquire               mov
store_release64   store atomic i64 release              mov
store_seqcst64    store atomic i64 seq_cst              xchg (a full barrier)
cas64             cmpxchg i64 seq_cst                   lock cmpxchg
cas128            cmpxchg i128 seq_cst                  lock cmpxchg16b
fetch_add64       atomicrmw add i64 seq_cst             lock xadd
fetch_add32       atomicrmw add i32 seq_cst             lock xadd
================  ====================================  ========================

Any word another process writes must be read with an acquire load inside a
loop: LLVM folds repeated plain loads into one (measured, see the notes).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_I128 = ir.IntType(128)


def _ptr(context, builder, arrty, arr, idx, width):
    ary = context.make_array(arrty)(context, builder, arr)
    base = builder.bitcast(ary.data, _I8.as_pointer())
    p = builder.gep(base, [idx])
    return builder.bitcast(p, ir.IntType(width).as_pointer())


@intrinsic
def load_acquire64(typingctx, arr, idx):
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        return builder.load_atomic(p, "acquire", 8)

    return sig, codegen


@intrinsic
def load_acquire32(typingctx, arr, idx):
    sig = types.int32(arr, idx)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 32)
        return builder.load_atomic(p, "acquire", 4)

    return sig, codegen


@intrinsic
def store_release64(typingctx, arr, idx, val):
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(v, p, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_seqcst64(typingctx, arr, idx, val):
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(v, p, "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cas64(typingctx, arr, idx, expected, new):
    """Compare-and-swap; returns True when the word held ``expected``."""
    sig = types.boolean(arr, idx, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        e = context.cast(builder, args[2], signature.args[2], types.int64)
        n = context.cast(builder, args[3], signature.args[3], types.int64)
        res = builder.cmpxchg(p, e, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)

    return sig, codegen


@intrinsic
def cas128(typingctx, arr, idx, exp_lo, exp_hi, new_lo, new_hi):
    """128-bit compare-and-swap of (lo, hi) at a 16-byte aligned index."""
    sig = types.boolean(arr, idx, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 128)
        vals = [context.cast(builder, a, t, types.int64) for a, t in zip(args[2:], signature.args[2:])]

        def pack(lo, hi):
            lo128 = builder.zext(lo, _I128)
            hi128 = builder.shl(builder.zext(hi, _I128), ir.Constant(_I128, 64))
            return builder.or_(lo128, hi128)

        e = pack(vals[0], vals[1])
        n = pack(vals[2], vals[3])
        res = builder.cmpxchg(p, e, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)

    return sig, codegen


@intrinsic
def fetch_add64(typingctx, arr, idx, val):
    sig = types.int64(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", p, v, "seq_cst")

    return sig, codegen


@intrinsic
def fetch_add32(typingctx, arr, idx, val):
    sig = types.int32(arr, idx, types.int32)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 32)
        v = context.cast(builder, args[2], signature.args[2], types.int32)
        return builder.atomic_rmw("add", p, v, "seq_cst")

    return sig, codegen


@intrinsic
def fence_seqcst(typingctx):
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def as_pointer(typingctx, addr):
    """An int address as a ``void*`` (for ``numba.carray``): kernels on the hot
    path take addresses, which cost a few ns to pass from Python where an array
    argument costs a few hundred."""
    sig = types.voidptr(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return sig, codegen


# --- plain (non-atomic) memory access, for bodies of frames ---

@intrinsic
def store64(typingctx, arr, idx, val):
    """A plain 8-byte store at any byte index (x86 allows unaligned)."""
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store(v, p, align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store32(typingctx, arr, idx, val):
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 32)
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store(builder.trunc(v, _I32), p, align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load64(typingctx, arr, idx):
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 64)
        return builder.load(p, align=1)

    return sig, codegen


@intrinsic
def load32s(typingctx, arr, idx):
    """A signed 4-byte load, widened to int64."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1], 32)
        return builder.sext(builder.load(p, align=1), _I64)

    return sig, codegen


@intrinsic
def memcpy(typingctx, dst, di, src, si, n):
    """Copy ``n`` bytes from ``src[si:]`` to ``dst[di:]`` (regions must not overlap)."""
    sig = types.void(dst, di, src, si, n)

    def codegen(context, builder, signature, args):
        d = _ptr(context, builder, signature.args[0], args[0], args[1], 8)
        s = _ptr(context, builder, signature.args[2], args[2], args[3], 8)
        count = context.cast(builder, args[4], signature.args[4], types.int64)
        fn = builder.module.declare_intrinsic("llvm.memcpy", [d.type, s.type, _I64])
        builder.call(fn, [d, s, count, ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()

    return sig, codegen
