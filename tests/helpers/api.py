"""Reading records back through the public API, and waiting for what the supervisor does in the background."""

from __future__ import annotations

import os
import time


def wait_until(cond, what: str, timeout_s: float = 30.0) -> None:
    """Poll ``cond()`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s} s")
        time.sleep(0.01)


def read_n(consumer, n: int, timeout_s: float = 30.0, **poll_kw) -> list:
    """Poll until ``n`` records came (or the timeout); records of each partition in order."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=100, **poll_kw).values():
            out.extend(recs)
    return out


def read_all(bus, topic, n, **kw) -> list:
    """Exactly ``n`` records of ``topic`` from the earliest, sorted by (partition, offset)."""
    with bus.consumer(topic, auto_offset_reset="earliest", **kw) as c:
        recs = read_n(c, n)
        assert c.poll(timeout_ms=0) == {}  # nothing more than expected
    return sorted(recs, key=lambda r: (r.partition, r.offset))


def end_offsets(bus, topic) -> list:
    """The end offset of each partition of ``topic``."""
    return [p.end_offset for p in bus.describe_topic(topic).partitions]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ring_of(bus, topic, partition=0):
    """The shared-memory ring of ``topic``/``partition``."""
    return bus.ring(bus.topic_meta(topic), partition)


def wait_all_spilled(bus, topic, partition=0):
    """Until the segment files hold everything published (the ring keeps recent records too)."""
    from shmbus.log.files import list_segments
    from shmbus.log.reader import PartitionLog

    ring = ring_of(bus, topic, partition)
    pdir = os.path.join(bus.data_dir, "topics", topic, str(partition))

    def on_disk():
        segs = list_segments(pdir)
        if not segs:
            return False
        log = PartitionLog(pdir)
        try:
            return log.end_of_segment(segs[-1]) >= ring.next_offset()
        finally:
            log.close()

    wait_until(on_disk, f"{topic}/{partition} to spill")
