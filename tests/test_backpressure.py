"""A full ring blocks ``send`` (up to max_block_ms) and never overwrites what is not on disk."""

from __future__ import annotations

import time

import pytest

from shmbus import BufferFullError
from shmbus.client import control as client


def read_values(consumer, n, timeout_s=30):
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200, max_records=1000).values():
            out.extend(r.value for r in recs)
    return out


@pytest.mark.timeout(120)
def test_full_ring_without_supervisor_raises_then_completes_with_one(bus_nosup):
    bus = bus_nosup
    bus.create_topic("bp", config={"ring.bytes": 65536})
    sent = []
    with bus.producer(max_block_ms=300) as prod:
        with pytest.raises(BufferFullError, match="max_block_ms=300"):
            for i in range(10_000):
                prod.send("bp", b"%06d" % i + b"x" * 94)
                sent.append(i)
        t0 = time.monotonic()
        with pytest.raises(BufferFullError):
            prod.send("bp", b"one more")
        assert time.monotonic() - t0 >= 0.3  # it waited max_block_ms before giving up
    assert 300 < len(sent) < 1000  # 64 KiB holds ~450 frames of 144 B
    # nothing was overwritten or dropped: all acknowledged records read back, in order
    with bus.consumer("bp", auto_offset_reset="earliest") as c:
        vals = read_values(c, len(sent))
    assert [int(v[:6]) for v in vals] == sent
    # with a supervisor the same load (and more) goes through
    client.start(bus.data_dir)
    with bus.producer(max_block_ms=30_000) as prod:
        for i in range(len(sent), 10_000):
            prod.send("bp", b"%06d" % i + b"x" * 94)
    with bus.consumer("bp", auto_offset_reset="earliest") as c:
        vals = read_values(c, 10_000)
    assert [int(v[:6]) for v in vals] == list(range(10_000))


@pytest.mark.timeout(120)
def test_send_batch_blocks_then_raises(bus_nosup):
    bus = bus_nosup
    bus.create_topic("bpb", config={"ring.bytes": 65536})
    with bus.producer(max_block_ms=200) as prod:
        with pytest.raises(BufferFullError, match="sent="):
            prod.send_batch("bpb", [b"y" * 100] * 5000)


@pytest.mark.timeout(120)
def test_batches_through_a_small_ring_keep_flowing_with_the_supervisor(bus):
    """send_batch of 1000 records into a 64 KiB ring (each claim a quarter of it), 250 times: the
    producer waits on the spiller again and again, and must never wait for good. (A spill round
    that skipped its release step when nothing new had been published left a producer waiting
    on a release that needed one more round: stuck after ~110 batches.)"""
    import numpy as np

    from shmbus.log.recovery import log_end_offset

    bus.create_topic("t", config={"ring.bytes": 64 * 1024, "segment.bytes": 1 << 20})
    arr = np.zeros((1000, 100), np.uint8)
    with bus.producer(max_block_ms=20_000) as p:
        for i in range(250):
            arr[:, :8] = np.arange(i * 1000, (i + 1) * 1000, dtype="<u8").view(np.uint8).reshape(1000, 8)
            p.send_batch("t", arr, partition=0)
    pdir = f"{bus.data_dir}/topics/t/0"
    from helpers.waiting import wait_for

    wait_for(lambda: (log_end_offset(pdir) or 0) >= 250_000, 30, "every record on disk")
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([("t", 0)])
        seen = 0
        while seen < 250_000:
            got = c.poll_batch(timeout_ms=5000, max_records=100_000)
            assert got, f"no records after {seen}"
            for b in got.values():
                first = int.from_bytes(bytes(b.value_data[b.value_starts[0]: b.value_starts[0] + 8]), "little")
                assert first == seen and int(b.offsets[0]) == seen
                seen += len(b)
