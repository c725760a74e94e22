"""Frames and segment files made by hand, and spill_scan-style rows describing frames in a buffer."""

from __future__ import annotations

import os
import random
import struct

import crc32c as ref_crc
import numpy as np

from shmbus.layout import frame as F


def frame(offset: int, ts: int, key: bytes | None, value: bytes | None, headers: bytes = b"") -> bytes:
    """A DATA frame exactly as the layout (layout/frame.py) describes it."""
    kl = -1 if key is None else len(key)
    vl = -1 if value is None else len(value)
    body = (key or b"") + (value or b"") + headers
    ln = F.frame_length(kl, vl, len(headers))
    mid = struct.pack("<qqiii", offset, ts, kl, vl, len(headers))
    crc = ref_crc.crc32c(mid + body)
    out = struct.pack("<Q", F.header_word(ln, F.DATA)) + mid + struct.pack("<I", crc) + body
    return out + b"\0" * (ln - len(out))


def write_segment(pdir: str, base: int, frames: list[bytes], index: bool = True) -> str:
    """A segment file based at ``base`` holding ``frames``; with its indexes (rebuilt) if ``index``."""
    from shmbus.log import recovery

    os.makedirs(pdir, exist_ok=True)
    path = os.path.join(pdir, f"{base:020d}.log")
    with open(path, "wb") as f:
        f.write(b"".join(frames))
    if index:
        recovery.rebuild_indexes(pdir, base)
    return path


def frames_with_padding(seed: int, n: int, first_offset: int = 100):
    """A buffer of n frames with padding between some of them, and their spill_scan-style rows
    (buffer index, length, offset, timestamp, type, 0, 0, 0)."""
    rnd = random.Random(seed)
    parts, rows, pos, off = [], [], 0, first_offset
    for i in range(n):
        if i % 17 == 5:  # padding: the writer passes over it
            ln = 8 * rnd.randrange(1, 20)
            parts.append(F.header_word(ln, F.PADDING).to_bytes(8, "little") + b"\0" * (ln - 8))
            rows.append((pos, ln, -1, -1, F.PADDING, 0, 0, 0))
            pos += ln
            continue
        ts = 1000 + rnd.randrange(0, 50)  # not rising: the time index keeps a running maximum
        fr = frame(off, ts, None if i % 3 else b"k%d" % i, rnd.randbytes(rnd.randrange(0, 900)))
        parts.append(fr)
        rows.append((pos, len(fr), off, ts, F.DATA, 0, 0, 0))
        pos += len(fr)
        off += 1
    return np.frombuffer(b"".join(parts), np.uint8), np.array(rows, np.int64)


def dir_files(d: str) -> dict[str, bytes]:
    """Every file under ``d`` (relative path: bytes, sorted by path), the recovery point's left out."""
    out = {}
    for root, _dirs, names in sorted(os.walk(d)):
        for name in sorted(names):
            if name.startswith("recovery-point"):
                continue
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out
