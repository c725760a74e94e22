"""A test bus: its shared-memory objects, their cleanup, and reading records back."""

from __future__ import annotations

import os
import time


def bus_shm_names(data_dir: str) -> list[str]:
    from shmbus.core import shm

    return shm.bus_names(data_dir)


def cleanup_bus(data_dir: str) -> None:
    from shmbus.core import shm

    shm.remove_bus(data_dir)


def read_offsets(bus, topic, start, end, timeout_s=60, partition=0):
    """Records of ``topic``/``partition`` from ``start`` until the position reaches ``end`` (or the timeout)."""
    from shmbus import TopicPartition

    tp = TopicPartition(topic, partition)
    out = []
    with bus.consumer(auto_offset_reset="none") as c:
        c.assign([tp])
        c.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100, max_records=5000).values():
                out.extend(recs)
    return out


def read_n(c, n, timeout_s=20):
    """Up to ``n`` records polled from consumer ``c`` (fewer after ``timeout_s``)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=100, max_records=1000).values():
            out.extend(recs)
    return out


def wait_spilled(bus, topic, partition, offset, timeout_s=20):
    """Until the segment files hold ``offset`` (the supervisor spills in the background)."""
    from shmbus.log.files import list_segments
    from shmbus.log.reader import PartitionLog

    pdir = os.path.join(bus.data_dir, "topics", topic, str(partition))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = PartitionLog(pdir)
        try:
            segs = list_segments(pdir)
            if segs and log.end_of_segment(segs[-1]) > offset:
                return
        finally:
            log.close()
        time.sleep(0.02)
    raise AssertionError(f"offset {offset} never reached the segment files")
