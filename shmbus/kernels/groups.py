"""Kernels over a group's offsets table (``layout/groups.py``): commits and handovers.

Each verb takes the table's address (the mapping, or a numpy array's
``ctypes.data`` in tests; 16-byte aligned) and ints, and returns an int.

Members:      commit_offset (the hot one: called through :func:`entry`)
Coordinator:  set_owner, read_offset, read_token, snapshot

A slot's (owner token, offset) is one 128-bit word; every change to it is a
``cmpxchg16b`` of both halves, so "is the token still mine" and "write my
offset" are one atomic step.
"""

from __future__ import annotations

import numpy as np
from numba import carray

from shmbus.kernels._atomics import as_pointer, cas128, load64, load_acquire64
from shmbus.kernels._jit import entry_point, jit
from shmbus.layout import groups as _G
from shmbus.layout.constants import G_BAD_SLOT, G_FENCED, G_HDR, G_OK, G_SLOT_BYTES, G_SLOTS, S_OFFSET

# statuses
OK = G_OK
ST_FENCED = G_FENCED  # the slot's owner token is not the caller's: nothing written
ST_BAD_SLOT = G_BAD_SLOT  # no such slot in this table
ANY = -1  # set_owner's expected token: whatever it is


@jit(inline="always")
def _table(addr):
    hdr = carray(as_pointer(addr), G_HDR, np.uint8)
    return carray(as_pointer(addr), G_HDR + load64(hdr, G_SLOTS) * G_SLOT_BYTES, np.uint8)


@jit(inline="always")
def _slot_index(buf, slot):
    if slot < 0 or slot >= load64(buf, G_SLOTS):
        return -1
    return G_HDR + slot * G_SLOT_BYTES


@jit(nogil=False)
def commit_offset(addr, slot, token, offset):
    """Store ``offset`` in ``slot`` if its owner token is ``token``: OK, ST_FENCED or ST_BAD_SLOT.

    A loop of 128-bit CAS (token, old offset) -> (token, offset): it retries
    only if the offset changed under it (this member committing from another
    thread); a token that is not ``token`` ends it with nothing written.
    """
    buf = _table(addr)
    i = _slot_index(buf, slot)
    if i < 0:
        return ST_BAD_SLOT
    while True:
        tok = load_acquire64(buf, i)
        old = load_acquire64(buf, i + S_OFFSET)
        if tok != token:
            return ST_FENCED
        if cas128(buf, i, tok, old, tok, offset):
            return OK


@jit
def set_owner(addr, slot, expected, new):
    """The coordinator's handover: (``expected`` or, with ANY, any token, offset) -> (``new``, same offset).

    Returns the offset the slot held at that instant (>= -1: -1 = none
    committed), ST_FENCED if the token was not ``expected``, ST_BAD_SLOT.
    """
    buf = _table(addr)
    i = _slot_index(buf, slot)
    if i < 0:
        return ST_BAD_SLOT
    while True:
        tok = load_acquire64(buf, i)
        off = load_acquire64(buf, i + S_OFFSET)
        if expected != ANY and tok != expected:
            return ST_FENCED
        if cas128(buf, i, tok, off, new, off):
            return off


@jit
def read_offset(addr, slot):
    """The slot's committed offset (-1: none), or ST_BAD_SLOT."""
    buf = _table(addr)
    i = _slot_index(buf, slot)
    if i < 0:
        return ST_BAD_SLOT
    return load_acquire64(buf, i + S_OFFSET)


@jit
def read_token(addr, slot):
    """The slot's owner token (0: none), or ST_BAD_SLOT."""
    buf = _table(addr)
    i = _slot_index(buf, slot)
    if i < 0:
        return ST_BAD_SLOT
    return load_acquire64(buf, i)


@jit
def snapshot(addr, n, out):
    """The offsets of slots 0..n-1 into ``out`` (an int64 array); returns how many."""
    buf = _table(addr)
    n = min(n, load64(buf, G_SLOTS), len(out))
    for s in range(n):
        out[s] = load_acquire64(buf, G_HDR + s * G_SLOT_BYTES + S_OFFSET)
    return n


_FAST = {}


def _signatures():
    from numba import types as t

    i = t.int64
    return {"commit_offset": (commit_offset, (i, i, i, i))}


def entry(name: str):
    """The compiled entry point of a hot kernel (as ``frames.entry``: skips numba's dispatcher)."""
    return entry_point(_FAST, name, _signatures)


def warm() -> None:
    """Compile (or load from the cache) every kernel here with the types shmbus passes."""
    for name in _signatures():
        entry(name)
    raw = np.zeros(_G.table_bytes(4) + 16, np.uint8)
    start = (-raw.ctypes.data) % 16
    buf = raw[start: start + _G.table_bytes(4)]
    buf[:G_HDR].view(np.int64)[G_SLOTS // 8] = 4
    addr = buf.ctypes.data
    set_owner(addr, 0, ANY, 1)
    read_offset(addr, 0)
    read_token(addr, 0)
    snapshot(addr, 1, np.zeros(1, np.int64))
