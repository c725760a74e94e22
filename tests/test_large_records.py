"""Records of a few KiB to ~1 MiB read back from disk after they left the ring.

A segment read fills a 1 MiB buffer; frames larger than what is left of it,
or than the whole buffer, must be read whole, by the compiled scan and by the
numba one (each reader runs in a subprocess with ``SHMBUS_NATIVE`` set).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from helpers.waiting import wait_for

_READ_ALL = r"""
import hashlib, json, sys
from shmbus import Bus, TopicPartition
from shmbus.core import native
data_dir, topic, n, max_poll, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
tp = TopicPartition(topic, 0)
got = []
with Bus(data_dir, autostart=False) as bus, bus.consumer(auto_offset_reset="earliest", max_poll_records=max_poll) as c:
    c.assign([tp])
    c.seek(tp, 0)
    while len(got) < n:
        if batch:
            for b in c.poll_batch(timeout_ms=2000, max_records=max_poll).values():
                for i in range(len(b.offsets)):
                    v = b.value_data[b.value_starts[i]: b.value_starts[i] + b.value_lengths[i]].tobytes()
                    got.append((int(b.offsets[i]), hashlib.sha1(v).hexdigest()))
        else:
            recs = [r for lst in c.poll(timeout_ms=2000).values() for r in lst]
            if not recs:
                break
            got.extend((r.offset, hashlib.sha1(r.value).hexdigest()) for r in recs)
print(json.dumps({"native": native.ENABLED, "got": got}))
"""


def _value(i: int, size: int) -> bytes:
    return (b"%08d" % i) * (size // 8)


def _read_all(data_dir, topic, n, max_poll, native_on: bool, batch=False):
    env = dict(os.environ, SHMBUS_NATIVE="1" if native_on else "0")
    out = subprocess.run([sys.executable, "-c", _READ_ALL, data_dir, topic, str(n), str(max_poll), "1" if batch else "0"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["native"] is native_on
    return res["got"]


def _fill_past_the_ring(bus, topic, size):
    """Send records of ``size`` bytes until the first ones left the ring; returns how many were sent."""
    meta = bus.topic_meta(topic)
    ring = bus.ring(meta, 0)
    n = max(64, (3 * ring.ring_bytes) // (2 * size))
    with bus.producer() as p:
        for i in range(n):
            p.send(topic, _value(i, size), partition=0)
    wait_for(lambda: ring.released() > 0, 60, "the supervisor to release the oldest records from the ring")
    return n


@pytest.mark.timeout(600)
@pytest.mark.parametrize("size", [1024, 4096, 100 * 1024, 900 * 1024])
def test_records_that_left_the_ring_read_back_from_disk_through_both_scans(bus, data_dir, size):
    bus.create_topic("big", partitions=1)  # the default config: a 16 MiB ring, 1 MiB records at most
    n = _fill_past_the_ring(bus, "big", size)
    want = [(i, hashlib.sha1(_value(i, size)).hexdigest()) for i in range(n)]
    for native_on in (True, False):
        if native_on and os.environ.get("SHMBUS_NATIVE") == "0":
            continue
        for max_poll in (500, 2000):
            got = [tuple(x) for x in _read_all(data_dir, "big", n, max_poll, native_on)]
            assert got == want, (f"native={native_on} max_poll_records={max_poll}: {len(got)} of {n} records, "
                                 f"first difference at {next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), len(got))}")
        got = [tuple(x) for x in _read_all(data_dir, "big", n, 4096, native_on, batch=True)]
        assert got == want, f"poll_batch native={native_on}: {len(got)} of {n} records"


@pytest.mark.timeout(600)
def test_a_supervisor_restarts_over_segments_of_2_mib_records(data_dir):
    from shmbus import Bus

    size = 2 << 20
    with Bus(data_dir) as bus:
        bus.create_topic("huge", partitions=1, config={"max.message.bytes": 4 << 20})
        n = _fill_past_the_ring(bus, "huge", size)
    subprocess.run([sys.executable, "-m", "shmbus", "stop", "--data-dir", data_dir], check=True, timeout=60,
                   capture_output=True)
    # a new supervisor recovers the partition over the large frames, then spills more
    with Bus(data_dir) as bus:
        with bus.producer() as p:
            for i in range(n, n + 4):
                p.send("huge", _value(i, size), partition=0)
        time.sleep(1.0)  # a spill round or more over the recovered partition
        assert bus.supervisor_running(), "the supervisor did not stay up over 2 MiB records"
        want = [(i, hashlib.sha1(_value(i, size)).hexdigest()) for i in range(n + 4)]
        for native_on in (True, False):
            if native_on and os.environ.get("SHMBUS_NATIVE") == "0":
                continue
            got = [tuple(x) for x in _read_all(data_dir, "huge", n + 4, 500, native_on)]
            assert got == want, f"native={native_on}: {len(got)} of {n + 4} records"
            # (values larger than poll_batch's 1 MiB values buffer: read from disk without the copying scan)
            got = [tuple(x) for x in _read_all(data_dir, "huge", n + 4, 4096, native_on, batch=True)]
            assert got == want, f"poll_batch native={native_on}: {len(got)} of {n + 4} records"
