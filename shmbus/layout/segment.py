r"""A segment's index files: the sparse records beside each ``.log`` file.

A partition's directory holds, per segment based at offset B (its first
offset), ``<B:020d>.log`` (frames back to back, as in the ring: see
``layout/frame.py``), ``<B:020d>.index`` and ``<B:020d>.timeindex``. The first
frame at or after each ``INDEX_INTERVAL`` boundary of the ``.log`` file gets one
record in each index (little-endian)::

    .index record (8 bytes)                 .timeindex record (16 bytes)
    +0  relative offset u32 (offset - B)    +0   max timestamp i64: the largest
    +4  file position u32 of the frame           timestamp up to this frame
                                            +8   relative offset u32
                                            +12  zero u32

Written by the steps of ``SegmentWriter`` (``log/writer.py``): the compiled
``write_frames`` (``shmbus/core/_native.c``, C structs of the same layout) or
its numba twin ``lay_out_frames`` (``kernels/segment_write.py``).
"""

from __future__ import annotations

import numpy as np

IDX_BYTES = 8
IDX_OFF_REL = 0
IDX_OFF_POS = 4

TIDX_BYTES = 16
TIDX_OFF_TS = 0
TIDX_OFF_REL = 8
TIDX_OFF_PAD = 12

# the records as numpy dtypes (field names: rel, pos; ts, rel, pad)
INDEX_DTYPE = np.dtype({"names": ["rel", "pos"], "formats": ["<u4", "<u4"],
                        "offsets": [IDX_OFF_REL, IDX_OFF_POS], "itemsize": IDX_BYTES})
TIMEINDEX_DTYPE = np.dtype({"names": ["ts", "rel", "pad"], "formats": ["<i8", "<u4", "<u4"],
                            "offsets": [TIDX_OFF_TS, TIDX_OFF_REL, TIDX_OFF_PAD], "itemsize": TIDX_BYTES})

assert INDEX_DTYPE == np.dtype([("rel", "<u4"), ("pos", "<u4")])
assert TIMEINDEX_DTYPE == np.dtype([("ts", "<i8"), ("rel", "<u4"), ("pad", "<u4")])
