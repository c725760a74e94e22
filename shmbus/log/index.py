"""A segment's sparse indexes (``.index``, ``.timeindex``; records in layout/segment.py): reading them.

The first frame at or after each ``INDEX_INTERVAL`` boundary of a ``.log``
file gets one record in each (written by log/writer.py). A reader may see the
last record half written: :func:`read_entries` returns whole records only.
"""

from __future__ import annotations

import numpy as np

INDEX_INTERVAL = 4096  # bytes of .log file between index records (at most one record per interval)


def read_entries(path: str, dtype) -> np.ndarray:
    """Whole entries of an index file (a reader may see the last one half written)."""
    with open(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype)
