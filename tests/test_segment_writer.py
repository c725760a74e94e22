"""The supervisor's segment writer: the compiled step (``native.write_frames``) against its numba twin
(``numba_write_frames``: the kernel ``lay_out_frames``, then os.writev), and what a failed write (a full
disk) leaves behind.

Both write the same bytes: log, offset index and time index, across rolls by
size, passing over padding and frames already on disk. A write that fails
leaves the files as they were before that step, so that the spiller's retry
writes every frame once (a partial write left behind would put the writer's
idea of the file size behind the file, and the retry would write the frames a
second time).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.frames import dir_files, frames_with_padding

from shmbus.core import native
from shmbus.layout import frame as F
from shmbus.log import writer as W
from shmbus.log.reader import PartitionLog

needs_native = pytest.mark.skipif(native.write_frames is None, reason=f"no compiled verbs: {native.REASON}")


def _write(pdir, buf, rows, steps, segment_bytes, write_frames, next_offset=None):
    w = W.SegmentWriter(pdir, segment_bytes, 10**9, 0, write_frames=write_frames)
    if next_offset is not None:
        w.next_offset = next_offset
    for a, b in steps:
        w.append(memoryview(buf), rows[a:b], now_ms=1)
    state = (w.next_offset, w.size, w.max_ts, w.last_index_pos, w.base)
    w.close()
    return state


@needs_native
@pytest.mark.parametrize("segment_bytes", [3000, 1 << 20])
def test_the_compiled_writer_writes_what_the_numba_writer_writes(tmp_path, segment_bytes):
    buf, rows = frames_with_padding(1, 3000)
    steps = [(0, 1), (1, 700), (700, 701), (701, 2500), (2500, 3000)]
    got = {}
    for impl, step in (("c", native.write_frames), ("numba", W.numba_write_frames)):
        pdir = str(tmp_path / impl)
        # a restart: the first 40 offsets are on disk already (passed over)
        got[impl] = (_write(pdir, buf, rows, steps, segment_bytes, step, next_offset=140), dir_files(pdir))
    assert got["c"][0] == got["numba"][0]
    assert got["c"][1].keys() == got["numba"][1].keys()
    for name, data in got["c"][1].items():
        assert data == got["numba"][1][name], name
    logs = [n for n in got["c"][1] if n.endswith(".log")]
    assert (len(logs) > 20) == (segment_bytes == 3000)  # rolled by size, or not
    assert logs[0] == f"{140:020d}.log"


_FULL_DISK = r"""
import os, resource, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers.frames import frames_with_padding
from shmbus.log import writer as W
if sys.argv[3] == "numba":
    assert W.WRITE_FRAMES is W.numba_write_frames  # SHMBUS_NATIVE=0: the numba twin
else:
    assert W.WRITE_FRAMES is not W.numba_write_frames  # the compiled verb
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
buf, rows = frames_with_padding(2, 600)
w = W.SegmentWriter(sys.argv[2], 1 << 30, 10**9, 0)
w.append(memoryview(buf), rows[:100], now_ms=1)
before = {n: os.path.getsize(os.path.join(sys.argv[2], n)) for n in os.listdir(sys.argv[2])}
resource.setrlimit(resource.RLIMIT_FSIZE, (w.size + 20000, resource.RLIM_INFINITY))
try:
    w.append(memoryview(buf), rows[100:], now_ms=1)
except OSError as e:
    failed = e.errno
else:
    failed = None
after = {n: os.path.getsize(os.path.join(sys.argv[2], n)) for n in os.listdir(sys.argv[2])}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
w.append(memoryview(buf), rows[100:], now_ms=1)  # the spiller's retry
w.close()
print(failed, before == after)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("impl", ["native", "numba"])
def test_a_failed_write_leaves_the_files_as_they_were_and_the_retry_writes_once(tmp_path, impl):
    if impl == "native" and native.write_frames is None:
        if os.environ.get("SHMBUS_NATIVE") == "0":
            pytest.skip("SHMBUS_NATIVE=0 in this run")
        pytest.fail(f"the compiled verbs are not loaded: {native.REASON}")
    pdir = str(tmp_path / "p")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, here, pdir, impl], capture_output=True, text=True,
                         timeout=50, env=dict(os.environ, SHMBUS_NATIVE="1" if impl == "native" else "0"))
    assert out.returncode == 0, out.stderr
    errno_, unchanged = out.stdout.split()
    import errno

    assert errno_ == str(errno.EFBIG), out.stdout  # the write did fail
    assert unchanged == "True", "a failed write left part of its frames (or index entries) behind"
    # the retry wrote every frame once: the segment reads back as the 600 frames' records, in order
    buf, rows = frames_with_padding(2, 600)
    want = [int(r[2]) for r in rows if r[4] == F.DATA]
    log = PartitionLog(pdir)
    try:
        n, meta, _chunk = log.read(want[0], 10_000)
        got = [int(m[1]) for m in meta[1: n + 1]]
        while n:
            n, meta, _chunk = log.read(got[-1] + 1, 10_000)
            got += [int(m[1]) for m in meta[1: n + 1]]
    finally:
        log.close()
    assert got == want
    seg = [n for n in os.listdir(pdir) if n.endswith(".log")]
    data = open(os.path.join(pdir, seg[0]), "rb").read()
    assert len(data) == sum(int(r[1]) for r in rows if r[4] == F.DATA)
