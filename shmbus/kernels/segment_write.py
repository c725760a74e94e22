"""The segment writer's step: the numba twin of the compiled ``write_frames`` (``shmbus/core/_native.c``).

:func:`lay_out_frames` does the work of ``write_frames`` up to its system
calls: from the spill_scan rows (``layout/frame.py``, ``SP_*`` columns) it
picks the frames to append to the active segment and lays them out as
(buffer index, length) runs, frames lying back to back in the buffer as one
run, and makes the sparse ``.index`` and ``.timeindex`` records
(``layout/segment.py``). The caller (``shmbus/log/writer.py``) writes them
with ``os.writev`` and ``os.write``.

The rules, the C verb's:

* rows that are not DATA, or whose offset is below ``next_offset`` (on disk
  already: a supervisor restarted between writing and releasing them), are
  passed over;
* DATA frames are taken while they fit in ``segment_bytes`` (an empty segment
  takes one whatever its size); it stops at the first frame that does not
  fit, or at once without an open segment (``has_segment`` 0): the caller
  opens a new segment based at that row's offset;
* the first frame at or after each ``interval`` boundary of the file gets an
  index record (offset - base, file position) and a time index record (the
  running maximum timestamp, offset - base).
"""

from __future__ import annotations

from shmbus.kernels._jit import jit
from shmbus.layout.constants import (
    IDX_BYTES,
    IDX_OFF_POS,
    IDX_OFF_REL,
    SP_INDEX,
    SP_LEN,
    SP_OFFSET,
    SP_TS,
    SP_TYPE,
    T_DATA,
    TIDX_BYTES,
    TIDX_OFF_PAD,
    TIDX_OFF_REL,
    TIDX_OFF_TS,
)

# lay_out_frames' results (``out``), in the order write_frames returns its first six
W_NEXT_ROW = 0  # the first row not taken: len(rows), or the row that needs a (new) segment
W_FRAMES = 1  # DATA frames taken
W_SIZE = 2  # the segment's size after them
W_LAST_INDEX_POS = 3  # file position of the last frame given an index record
W_MAX_TS = 4  # the running maximum timestamp
W_NEXT_OFFSET = 5  # the offset after the last frame taken
W_RUNS = 6  # rows of ``runs`` filled
W_ENTRIES = 7  # index records made (in ``ient`` and ``tent``)
W_BAD_ROW = 8  # a row lying outside the buffer (status -1), else -1
W_COLS = 9

OK = 0
BAD_ROW = -1


@jit
def _store(dst, at, value, nbytes):
    """Store ``value`` little-endian in ``nbytes`` bytes of ``dst`` at ``at``."""
    for k in range(nbytes):
        dst[at + k] = (value >> (8 * k)) & 0xFF


@jit
def lay_out_frames(rows, first, buf_len, has_segment, size, segment_bytes, base, last_index_pos, max_ts,
                   interval, next_offset, runs, ient, tent, out):
    """Lay out one spill step (see the module docstring); the status: OK, or BAD_ROW.

    ``rows``: int64 (n, cols) spill_scan rows; ``runs``: int64 (n - first, 2),
    filled with (buffer index, length); ``ient``/``tent``: uint8 arrays of
    (n - first) index / time index records, filled from the start; ``out``:
    int64 (W_COLS,), the results. BAD_ROW: the row ``out[W_BAD_ROW]`` lies
    outside a buffer of ``buf_len`` bytes (nothing is to be written).
    """
    n = rows.shape[0]
    nruns = 0
    nent = 0
    frames = 0
    at = size
    prev_block = last_index_pos // interval  # floored, as the C verb's floordiv
    out[W_BAD_ROW] = -1
    i = first
    while i < n:
        idx = rows[i, SP_INDEX]
        ln = rows[i, SP_LEN]
        off = rows[i, SP_OFFSET]
        ts = rows[i, SP_TS]
        if rows[i, SP_TYPE] != T_DATA or off < next_offset:
            i += 1
            continue
        if not has_segment or (at > 0 and at + ln > segment_bytes):
            break  # the caller opens a (new) segment
        if idx < 0 or ln <= 0 or idx + ln > buf_len:
            out[W_BAD_ROW] = i
            return BAD_ROW
        if nruns > 0 and runs[nruns - 1, 0] + runs[nruns - 1, 1] == idx:
            runs[nruns - 1, 1] += ln
        else:
            runs[nruns, 0] = idx
            runs[nruns, 1] = ln
            nruns += 1
        if ts > max_ts:
            max_ts = ts
        block = at // interval
        if block != prev_block:
            rel = (off - base) & 0xFFFFFFFF
            e = nent * IDX_BYTES
            _store(ient, e + IDX_OFF_REL, rel, 4)
            _store(ient, e + IDX_OFF_POS, at & 0xFFFFFFFF, 4)
            t = nent * TIDX_BYTES
            _store(tent, t + TIDX_OFF_TS, max_ts, 8)
            _store(tent, t + TIDX_OFF_REL, rel, 4)
            _store(tent, t + TIDX_OFF_PAD, 0, 4)
            nent += 1
            prev_block = block
            last_index_pos = at
        at += ln
        next_offset = off + 1
        frames += 1
        i += 1
    out[W_NEXT_ROW] = i
    out[W_FRAMES] = frames
    out[W_SIZE] = at
    out[W_LAST_INDEX_POS] = last_index_pos
    out[W_MAX_TS] = max_ts
    out[W_NEXT_OFFSET] = next_offset
    out[W_RUNS] = nruns
    out[W_ENTRIES] = nent
    return OK
