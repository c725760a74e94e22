"""Compaction on a running bus: the latest value per key, tombstones that go, offsets that only grow."""

from __future__ import annotations

import os
import time

import pytest

from shmbus import TopicPartition
from shmbus.log.files import list_segments

KIB = 1024
KEYS, VERSIONS, TOMBSTONED = 100, 150, 10


def key(k: int) -> bytes:
    return b"key-%03d" % k


def val(k: int, v: int) -> bytes:
    return b"key-%03d=v%03d|" % (k, v) + b"." * 40


def read_all(bus, topic, timeout_s=20):
    tp = TopicPartition(topic, 0)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        end = c.end_offsets([tp])[tp]
        out = []
        deadline = time.monotonic() + timeout_s
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100, max_records=5000).values():
                out.extend(recs)
        assert c.position(tp) >= end, "could not read to the end"
    return out


def compacted(recs, filler: int) -> tuple[bool, str]:
    keyed = [r for r in recs if r.key is not None]
    seen = {}
    for r in keyed:
        seen.setdefault(r.key, []).append(r)
    live = {key(k) for k in range(TOMBSTONED, KEYS)}
    if set(seen) != live:
        return False, f"keys present: {len(seen)} (tombstoned ones left: {len(set(seen) - live)})"
    many = [k for k, rs in seen.items() if len(rs) != 1]
    if many:
        return False, f"{len(many)} keys still have older versions"
    return True, ""


@pytest.mark.timeout(120)
def test_compaction_keeps_the_latest_value_per_key_and_drops_tombstones(bus):
    bus.create_topic("c", config={"cleanup.policy": "compact", "segment.bytes": 64 * KIB,
                                  "delete.retention.ms": 1000, "ring.bytes": 256 * KIB})
    filler = 2000
    with bus.producer() as p:
        for v in range(VERSIONS):
            p.send_batch("c", [val(k, v) for k in range(KEYS)], keys=[key(k) for k in range(KEYS)])
        for k in range(TOMBSTONED):
            md = p.send("c", None, key=key(k))
        tomb_offset = md.offset
        for i in range(0, filler, 100):  # no key: pushes the tombstones out of the active segment
            p.send_batch("c", [b"filler-%05d" % j + b"_" * 80 for j in range(i, i + 100)])
    total = KEYS * VERSIONS + TOMBSTONED + filler
    deadline = time.monotonic() + 60
    why = "never read"
    while time.monotonic() < deadline:
        recs = read_all(bus, "c")
        offsets = [r.offset for r in recs]
        assert offsets == sorted(set(offsets)), "offsets must strictly increase"
        assert offsets[-1] == total - 1
        # what is read is never garbage: each record is a version of its key, or filler
        for r in recs:
            if r.key is not None and r.value is not None:
                assert r.value.startswith(r.key + b"=v")
        ok, why = compacted(recs, filler)
        if ok:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"not compacted within 60 s: {why}")
    latest = {r.key: r.value for r in recs if r.key is not None}
    assert latest == {key(k): val(k, VERSIONS - 1) for k in range(TOMBSTONED, KEYS)}
    assert [r.value for r in recs if r.key is None] == [b"filler-%05d" % j + b"_" * 80 for j in range(filler)]
    assert all(r.offset > tomb_offset for r in recs if r.key is None)
    # offsets unchanged: key k's last version was written at offset (VERSIONS - 1) * KEYS + k
    assert all(r.offset == (VERSIONS - 1) * KEYS + int(r.key[4:]) for r in recs if r.key is not None)
    # and the files shrank: far fewer segments than were written
    pdir = os.path.join(bus.data_dir, "topics", "c", "0")
    assert sum(os.path.getsize(os.path.join(pdir, f"{b:020d}.log")) for b in list_segments(pdir)) < 400 * KIB


@pytest.mark.timeout(120)
def test_min_compaction_lag_keeps_young_records_and_compaction_can_be_turned_on_live(bus):
    bus.create_topic("lag", config={"segment.bytes": 4 * KIB, "ring.bytes": 64 * KIB})
    with bus.producer() as p:
        for v in range(20):
            p.send_batch("lag", [b"v%d" % v] * 10, keys=[b"k%d" % k for k in range(10)])
        p.send_batch("lag", [b"f" * 500] * 20)
    time.sleep(1.2)  # cleanup.policy=delete: nothing is compacted
    assert len(read_all(bus, "lag")) == 220
    bus.alter_topic_config("lag", {"cleanup.policy": "compact", "min.compaction.lag.ms": 3_600_000})
    time.sleep(1.5)  # everything is younger than an hour: nothing goes
    assert len(read_all(bus, "lag")) == 220
    bus.alter_topic_config("lag", {"cleanup.policy": "compact", "min.compaction.lag.ms": 0})
    deadline = time.monotonic() + 30
    while len(recs := read_all(bus, "lag")) != 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(r.key, r.value) for r in recs[:10]] == [(b"k%d" % k, b"v19") for k in range(10)]


@pytest.mark.timeout(120)
def test_readers_during_cleaning_never_see_garbage_or_go_backwards(bus):
    """Small segments, cleaned over and over while readers read them from the start in small steps."""
    bus.create_topic("rc", config={"cleanup.policy": "compact", "segment.bytes": 4 * KIB, "ring.bytes": 64 * KIB})
    tp = TopicPartition("rc", 0)
    seq = 0
    passes = 0
    deadline = time.monotonic() + 8
    with bus.producer() as p:
        while time.monotonic() < deadline:
            vals, keys = [], []
            for _ in range(300):
                keys.append(b"k%02d" % (seq % 20))
                vals.append(keys[-1] + b":%07d:" % seq + b"x" * (seq % 64))
                seq += 1
            p.send_batch("rc", vals, keys=keys)
            with bus.consumer(auto_offset_reset="earliest") as c:
                c.assign([tp])
                end = c.end_offsets([tp])[tp]
                last_off, last_seq = -1, {}
                stop = time.monotonic() + 20
                while c.position(tp) < end and time.monotonic() < stop:
                    for recs in c.poll(timeout_ms=100, max_records=37).values():
                        for r in recs:
                            assert r.offset > last_off
                            k, s, _ = r.value.split(b":", 2)
                            assert k == r.key and int(s) == r.offset  # the record at its own offset
                            assert int(s) > last_seq.get(k, -1)
                            last_off, last_seq[k] = r.offset, int(s)
                assert c.position(tp) >= end
            passes += 1
    assert passes >= 3
    deadline = time.monotonic() + 30  # and the cleaner did run meanwhile
    while len(read_all(bus, "rc")) > seq // 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(read_all(bus, "rc")) <= seq // 2


@pytest.mark.timeout(180)
def test_compaction_beside_a_busy_writer_keeps_every_latest_record_once(bus):
    """The log keeper compacts in its own thread while the spill thread appends and rolls.

    A producer writes for ~4 s, 4,000 records/s, into 64 KiB segments (each lives ~0.2 s).
    Record i has key i // 5: every key gets 5 versions, then never another, so the newest
    versions lie all along the log, and the active segment has records to drop too. So
    passes run while the active segment grows and rolls under them. The cleaner works on a
    snapshot (segments then, the active one's size then); if it ever rewrote a segment the
    writer was still appending to, what the writer appended after would be lost, newest
    versions with it; a half-written frame read as whole would fail the pass. Checked:
    offsets strictly grow, every record read is the one sent at its offset, every key's
    newest record is there, and the log was compacted.
    """
    bus.create_topic("busy", config={"cleanup.policy": "compact", "segment.bytes": 64 * KIB,
                                     "min.compaction.lag.ms": 0, "ring.bytes": 64 * KIB})

    def record(i):
        return b"key-%06d" % (i // 5), b"v%d|" % i + b"." * 40

    t_end = time.monotonic() + 4.0
    n = 0
    with bus.producer() as p:
        while time.monotonic() < t_end:
            batch = [record(i) for i in range(n, n + 200)]
            p.send_batch("busy", [v for _, v in batch], keys=[k for k, _ in batch])
            n += 200
            time.sleep(0.05)
    pdir = os.path.join(bus.data_dir, "topics", "busy", "0")
    # offsets are dense from 0 in send order (one producer, one partition)
    latest = {record(i)[0]: i for i in range(n)}
    deadline = time.monotonic() + 60
    while True:
        recs = read_all(bus, "busy")
        if len(recs) < n // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    offs = [r.offset for r in recs]
    assert offs == sorted(set(offs)), "offsets not strictly growing (a record doubled, or out of order)"
    wrong = [r.offset for r in recs if (r.key, r.value) != record(r.offset)]
    assert not wrong, f"records that are not what was sent at their offset: {wrong[:5]}"
    have = set(offs)
    lost = sorted(off for off in latest.values() if off not in have)
    assert not lost, f"the newest record of {len(lost)} of {len(latest)} keys was lost, e.g. offsets {lost[:5]}"
    assert len(recs) < n // 2, f"not compacted: {len(recs)} of {n} records still there"
    assert len(list_segments(pdir)) > 1
