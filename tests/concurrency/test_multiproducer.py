"""4 producer processes x 20,000 keyed records with headers into 4 partitions of a
64 KiB ring (it wraps hundreds of times, the spiller is on the path), read by a
live reader and by a reader that starts after the producers finish.

Each value encodes (producer, sequence) and a digest of itself, so a lost,
doubled, reordered or damaged record is caught at once (Agrona's test idea).
"""

from __future__ import annotations

import hashlib
import struct
import time

import pytest

from helpers.waiting import SPAWN
from shmbus.core.partitioner import partition_for_key

PRODUCERS = 4
PER_PRODUCER = 20_000
PARTITIONS = 4
TOPIC = "mp"
_HDR = struct.Struct("<ii")


def make_value(p: int, seq: int) -> bytes:
    body = _HDR.pack(p, seq) + bytes((p * 31 + seq + i) & 0xFF for i in range(seq % 50))
    return body + hashlib.blake2b(body, digest_size=8).digest()


def make_key(p: int, seq: int) -> bytes:
    return f"k{p}-{seq % 97}".encode()


def check_value(v: bytes):
    body, dig = v[:-8], v[-8:]
    assert hashlib.blake2b(body, digest_size=8).digest() == dig, "damaged value"
    return _HDR.unpack_from(body)


def producer_main(data_dir, pid_, n, go):
    from shmbus import Bus

    with Bus(data_dir) as bus, bus.producer() as prod:
        go.wait(60)
        for seq in range(n):
            md = prod.send(TOPIC, make_value(pid_, seq), key=make_key(pid_, seq),
                           headers=[("p", str(pid_).encode()), ("seq", str(seq).encode())])
            assert md.partition == partition_for_key(make_key(pid_, seq), PARTITIONS)


def read_all(consumer, expect, timeout_s):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expect and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200, max_records=1000).values():
            got.extend(recs)
    return got


def verify(records, who=""):
    ids = {check_value(r.value) for r in records}
    missing = [(p, s) for p in range(PRODUCERS) for s in range(PER_PRODUCER) if (p, s) not in ids]
    assert not missing, f"{who}: {len(missing)} records missing, e.g. {missing[:5]} (of {len(records)} read)"
    last = {}  # (partition, producer) -> seq
    seen = set()
    offsets = {}
    for r in records:
        p, seq = check_value(r.value)
        assert r.key == make_key(p, seq)
        assert r.headers == [("p", str(p).encode()), ("seq", str(seq).encode())]
        assert r.partition == partition_for_key(r.key, PARTITIONS), "not Kafka's partition for the key"
        assert (p, seq) not in seen, f"duplicate record producer={p} seq={seq}"
        seen.add((p, seq))
        assert seq > last.get((r.partition, p), -1), "producer order broken within a partition"
        last[(r.partition, p)] = seq
        assert r.offset > offsets.get(r.partition, -1), "offsets not increasing"
        offsets[r.partition] = r.offset
    assert len(seen) == PRODUCERS * PER_PRODUCER


@pytest.mark.timeout(240)
def test_four_producers_live_and_late_reader(bus, procs, send_impl):
    bus.create_topic(TOPIC, partitions=PARTITIONS, config={"ring.bytes": 65536})
    go = SPAWN.Event()
    with bus.consumer(TOPIC, auto_offset_reset="earliest") as live:
        for i in range(PRODUCERS):
            procs.start(producer_main, bus.data_dir, i, PER_PRODUCER, go)
        go.set()
        got = read_all(live, PRODUCERS * PER_PRODUCER, 180)
        procs.join_all(60)
        assert all(p.exitcode == 0 for p in procs.procs), [p.exitcode for p in procs.procs]
    verify(got, "live reader")
    # most of it has left the 64 KiB rings by now: the late reader reads disk, then ring
    with bus.consumer(TOPIC, auto_offset_reset="earliest") as late:
        got2 = read_all(late, PRODUCERS * PER_PRODUCER, 120)
    verify(got2, "late reader")
