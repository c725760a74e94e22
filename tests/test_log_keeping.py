"""The log keeper's pure parts: retention and compaction policies, index checks, recovery, swaps.

Segment files are built by hand here (frames written with struct and a
reference CRC-32C), so these tests need no supervisor and no shared memory.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from helpers.frames import frame, write_segment

from shmbus.layout import frame as F
from shmbus.log import recovery, swap
from shmbus.layout.segment import INDEX_DTYPE, TIMEINDEX_DTYPE
from shmbus.log.files import list_segments
from shmbus.log.index import INDEX_INTERVAL
from shmbus.log.reader import PartitionLog
from shmbus.log.writer import SegmentWriter
from shmbus.log import cleaner, retention
from shmbus.log.retention import SegmentInfo, segments_to_delete

CFG = {"cleanup.policy": "delete", "retention.ms": 1000, "retention.bytes": -1,
       "min.compaction.lag.ms": 0, "delete.retention.ms": 500}


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_all(pdir: str, offset: int = 0):
    log = PartitionLog(pdir)
    out = []
    try:
        while True:
            n, meta, chunk = log.read(offset, 1000)
            if not n:
                return out
            for row in meta[1: n + 1]:
                kl, vl = int(row[3]), int(row[4])
                bi = int(row[6])
                key = bytes(chunk[bi: bi + kl]) if kl >= 0 else None
                value = bytes(chunk[bi + max(kl, 0): bi + max(kl, 0) + vl]) if vl >= 0 else None
                out.append((int(row[1]), int(row[2]), key, value))
            offset = out[-1][0] + 1
    finally:
        log.close()


# --- retention policy ---

def segs(*spec):
    """(base, size, max_ts) closed segments, then an active one."""
    out = [SegmentInfo(b, s, t, False) for b, s, t in spec]
    last = out[-1].base + 100 if out else 0
    return out + [SegmentInfo(last, 10, -1, True)]


def test_retention_by_time_deletes_an_old_prefix_only():
    s = segs((0, 100, 100), (100, 100, 5000), (200, 100, 200))
    # now 3000, retention 1000: 0 (ts 100) and 200 (ts 200) are old, 100 (ts 5000) is not: a prefix only
    assert segments_to_delete(s, CFG, 3000) == [0]


def test_retention_by_time_never_the_active_segment():
    s = [SegmentInfo(0, 100, 1, True)]
    assert segments_to_delete(s, CFG, 10**12) == []


def test_retention_by_size_oldest_first_while_the_rest_still_holds_the_limit():
    cfg = dict(CFG, **{"retention.ms": -1, "retention.bytes": 250})
    s = segs((0, 100, 1), (100, 100, 2), (200, 100, 3))  # + active 10 = 310
    # without 0: 210 < 250, so 0 stays (Kafka: delete while total - size >= limit)
    assert segments_to_delete(s, cfg, 10**12) == []
    cfg["retention.bytes"] = 200
    assert segments_to_delete(s, cfg, 10**12) == [0]
    cfg["retention.bytes"] = 0
    assert segments_to_delete(s, cfg, 10**12) == [0, 100, 200]


def test_retention_minus_one_keeps_forever_and_compact_only_keeps_all():
    cfg = dict(CFG, **{"retention.ms": -1, "retention.bytes": -1})
    s = segs((0, 100, 1), (100, 100, 2))
    assert segments_to_delete(s, cfg, 10**12) == []
    assert segments_to_delete(s, dict(CFG, **{"cleanup.policy": "compact"}), 10**12) == []
    assert segments_to_delete(s, dict(CFG, **{"cleanup.policy": "compact,delete"}), 10**12) == [0, 100]


def test_segment_max_timestamp_looks_past_the_last_index_entry(tmp_path):
    pdir = str(tmp_path / "p")
    frames = [frame(i, 1000 + i, None, b"x" * 200) for i in range(100)]
    frames.append(frame(100, 50, None, b"late, older timestamp"))
    write_segment(pdir, 0, frames)
    assert retention.segment_max_timestamp(pdir, 0) == 1099
    write_segment(pdir, 200, [frame(200, 7, None, b"a")])
    assert retention.segment_max_timestamp(pdir, 200) == 7


# --- compaction policy ---

def test_drop_time_superseded_after_the_lag():
    info = cleaner.KeyInfo(5, 100)
    info.add(9, 200)
    assert cleaner.drop_time(5, 100, False, info, lag_ms=0, delete_retention_ms=10**9) == 100
    assert cleaner.drop_time(5, 100, False, info, lag_ms=50, delete_retention_ms=10**9) == 150


def test_drop_time_latest_value_never_latest_tombstone_after_delete_retention():
    info = cleaner.KeyInfo(5, 100)
    assert cleaner.drop_time(5, 100, False, info, 0, 500) == cleaner.NEVER
    assert cleaner.drop_time(5, 100, True, info, 0, 500) == 600
    assert cleaner.drop_time(5, 100, True, info, 900, 500) == 1000  # and the lag


def test_drop_time_tombstone_waits_for_its_young_earlier_versions():
    # an earlier version with a later timestamp (user timestamps), young by the lag
    info = cleaner.KeyInfo(1, 5000)
    info.add(2, 100)  # the tombstone
    assert info.earlier_max_ts == 5000
    assert cleaner.drop_time(2, 100, True, info, lag_ms=10, delete_retention_ms=0) == 5010


def test_keep_mask_keeps_keyless_and_latest(tmp_path):
    pdir = str(tmp_path / "p")
    path = write_segment(pdir, 0, [
        frame(0, 10, b"a", b"1"), frame(1, 10, None, b"keyless"), frame(2, 10, b"b", b"1"),
        frame(3, 10, b"a", b"2"), frame(4, 10, b"b", None),
    ])
    seg = cleaner.read_segment(path)
    latest = {}
    for k, off, ts in zip(seg.keys(), seg.rows[:, 1].tolist(), seg.rows[:, 2].tolist()):
        if k is not None:
            latest.setdefault(k, cleaner.KeyInfo(off, ts)).add(off, ts)
    keep, due = cleaner.keep_mask(seg, latest, now_ms=100, lag_ms=0, delete_retention_ms=1000)
    assert keep.tolist() == [False, True, False, True, True]  # the tombstone stays until 10 + 1000
    assert due == 1010
    keep, _ = cleaner.keep_mask(seg, latest, now_ms=2000, lag_ms=0, delete_retention_ms=1000)
    assert keep.tolist() == [False, True, False, True, False]


def test_clean_partition_rewrites_closed_segments_keeps_offsets_and_the_active_one(tmp_path):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(i, 10, b"k%d" % (i % 3), b"v%d" % i) for i in range(30)])
    write_segment(pdir, 30, [frame(i, 10, b"k%d" % (i % 3), b"v%d" % i) for i in range(30, 40)])
    active = [frame(i, 10, b"k0", b"v%d" % i) for i in range(40, 42)]
    write_segment(pdir, 40, active)
    cfg = dict(CFG, **{"cleanup.policy": "compact"})
    st = cleaner.clean_partition(pdir, 40, cfg, now_ms=1000)
    assert st.read == 42 and 0 in st.deleted and st.rewritten == [30]
    got = read_all(pdir)
    # k1, k2 latest in segment 30 (offsets 37, 38); k0 everywhere superseded by the active segment
    assert [(o, k, v) for o, _, k, v in got] == [(37, b"k1", b"v37"), (38, b"k2", b"v38"),
                                                 (40, b"k0", b"v40"), (41, b"k0", b"v41")]
    assert recovery.indexes_ok(pdir, 30)
    assert read_bytes(os.path.join(pdir, f"{40:020d}.log")) == b"".join(active)


def test_clean_partition_never_deletes_the_last_file(tmp_path):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(0, 10, b"a", None)])
    st = cleaner.clean_partition(pdir, None, dict(CFG, **{"cleanup.policy": "compact"}), now_ms=10**6)
    assert st.rewritten == [0] and list_segments(pdir) == [0]
    assert os.path.getsize(os.path.join(pdir, f"{0:020d}.log")) == 0


def test_cleaner_due_by_dirty_ratio_and_by_time():
    c = cleaner.Cleaner()
    st = cleaner._State(cleaned={0, 100}, due_ms=5000, config=dict(CFG))
    assert not c.due(st, {0: 100, 100: 100, 200: 50}, CFG, 1000)  # 50 dirty of 250
    assert c.due(st, {0: 100, 100: 100, 200: 200}, CFG, 1000)  # 200 of 400
    assert c.due(st, {0: 100, 100: 100}, CFG, 5000)  # a kept record may go now
    assert c.due(st, {0: 100, 100: 100}, dict(CFG, **{"delete.retention.ms": 1}), 1000)  # config changed


# --- indexes ---

def test_index_entries_match_what_the_writer_writes(tmp_path):
    pdir = str(tmp_path / "p")
    w = SegmentWriter(pdir, 1 << 20, 10**9, 0)
    raw = b"".join(frame(i, 1000 + (i * 7) % 13, None, b"v" * (i % 300)) for i in range(500))
    ring = np.frombuffer(raw, np.uint8)
    rows, pos = [], 0
    for i in range(500):
        ln = F.frame_length(-1, i % 300, 0)
        rows.append((pos, ln, i, 1000 + (i * 7) % 13, F.DATA))
        pos += ln
    w.append(memoryview(ring), np.array(rows, np.int64), 0)
    w.close()
    ent = np.fromfile(os.path.join(pdir, f"{0:020d}.index"), INDEX_DTYPE)
    tent = np.fromfile(os.path.join(pdir, f"{0:020d}.timeindex"), TIMEINDEX_DTYPE)
    sc = recovery.scan_segment(os.path.join(pdir, f"{0:020d}.log"))
    e2, t2 = recovery.index_entries(sc.pos, sc.offsets, sc.timestamps, 0)
    assert ent.tobytes() == e2.tobytes() and tent.tobytes() == t2.tobytes()
    assert recovery.index_ok(ent, tent, len(raw)) and len(ent) > 5


def test_index_ok_rejects_damage():
    pos = np.arange(0, 10 * INDEX_INTERVAL, INDEX_INTERVAL)
    ent, tent = recovery.index_entries(pos, np.arange(10) * 10, np.arange(10), 0)
    size = 10 * INDEX_INTERVAL
    assert recovery.index_ok(ent, tent, size)
    assert not recovery.index_ok(ent, tent, size - INDEX_INTERVAL)  # an entry past the end
    assert not recovery.index_ok(ent, tent[:-1], size)  # lengths differ
    bad = ent.copy()
    bad["rel"][3] = bad["rel"][2]
    assert not recovery.index_ok(bad, tent, size)  # not increasing
    bad = ent.copy()
    bad["pos"][3] += 4
    assert not recovery.index_ok(bad, tent, size)  # not aligned
    assert not recovery.index_ok(ent[:0], tent[:0], size)  # empty for a non-empty file
    assert recovery.index_ok(ent[:0], tent[:0], 0)


# --- recovery ---

@pytest.mark.parametrize("tail,why", [
    (b"\x5a" * 100, "bad frame header"),
    (b"\0" * 64, "zeros"),
    ("torn", "torn frame"),
    ("badcrc", "checksum mismatch"),
    ("old", "offset not increasing"),
])
def test_recover_cuts_a_bad_tail_of_the_newest_segment_and_rebuilds_its_index(tmp_path, tail, why):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(i, 1, None, b"a" * 100) for i in range(50)])
    good = [frame(i, 2, b"k", b"b" * 300) for i in range(50, 120)]
    path = write_segment(pdir, 50, good)
    size = os.path.getsize(path)
    if tail == "torn":
        tail = frame(120, 3, None, b"c" * 100)[:70]
    elif tail == "badcrc":
        f = bytearray(frame(120, 3, None, b"c" * 100))
        f[-9] ^= 1
        tail = bytes(f)
    elif tail == "old":
        tail = frame(60, 3, None, b"copy of an old offset")
    with open(path, "ab") as f:
        f.write(tail)
    with open(os.path.join(pdir, f"{50:020d}.index"), "ab") as f:
        f.write(struct.pack("<II", 70, size))  # an entry into the garbage
    rep = recovery.recover_partition(pdir)
    assert os.path.getsize(path) == size
    assert rep.truncated == [(path, size + len(tail), size, why)]
    assert recovery.indexes_ok(pdir, 50)
    assert recovery.log_end_offset(pdir) == 120
    assert [r[0] for r in read_all(pdir)] == list(range(120))
    assert not recovery.recover_partition(pdir)  # nothing left to do


def test_recover_rebuilds_missing_or_damaged_indexes_of_closed_segments(tmp_path):
    pdir = str(tmp_path / "p")
    for b in (0, 100, 200):
        write_segment(pdir, b, [frame(b + i, 1, None, b"x" * 500) for i in range(100)])
    os.unlink(os.path.join(pdir, f"{0:020d}.index"))
    with open(os.path.join(pdir, f"{100:020d}.index"), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<II", 3, 999999))  # points beyond the file
    rep = recovery.recover_partition(pdir)
    assert {os.path.basename(p) for p in rep.rebuilt} >= {f"{0:020d}.index", f"{100:020d}.index"}
    assert all(recovery.indexes_ok(pdir, b) for b in (0, 100, 200))
    assert not rep.truncated


def test_reader_ignores_an_index_that_does_not_match_its_log(tmp_path):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(i, 1, None, b"x" * 500) for i in range(100)])
    ent = np.fromfile(os.path.join(pdir, f"{0:020d}.index"), INDEX_DTYPE)
    ent["pos"][1:] += 8  # every entry (but the first) now points inside a frame
    ent.tofile(os.path.join(pdir, f"{0:020d}.index"))
    assert [r[0] for r in read_all(pdir, 77)][:3] == [77, 78, 79]


# --- swaps ---

def test_interrupted_swap_before_the_commit_keeps_the_old_segment(tmp_path):
    pdir = str(tmp_path / "p")
    old = write_segment(pdir, 0, [frame(i, 1, b"k", b"%d" % i) for i in range(10)])
    before = read_bytes(old)
    swap.write_cleaned(pdir, 0, [frame(9, 1, b"k", b"9")], b"", b"")
    done = swap.resolve_leftovers(pdir)
    assert len(done) == 3 and read_bytes(old) == before
    assert sorted(os.listdir(pdir)) == [f"{0:020d}{e}" for e in (".index", ".log", ".timeindex")]


def test_interrupted_swap_after_the_commit_finishes_it(tmp_path):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(i, 1, b"k", b"%d" % i) for i in range(10)])
    new = frame(9, 1, b"k", b"9")
    ent, tent = recovery.index_entries(np.array([0]), np.array([9]), np.array([1]), 0)
    swap.write_cleaned(pdir, 0, [new], ent.tobytes(), tent.tobytes())
    os.rename(os.path.join(pdir, f"{0:020d}.log.cleaned"), os.path.join(pdir, f"{0:020d}.log"))  # crash here
    swap.resolve_leftovers(pdir)
    assert recovery.indexes_ok(pdir, 0)
    assert [r[0] for r in read_all(pdir)] == [9]
    assert not [n for n in os.listdir(pdir) if n.endswith(".cleaned")]


def test_leftover_indexes_of_a_deleted_segment_go(tmp_path):
    pdir = str(tmp_path / "p")
    write_segment(pdir, 0, [frame(0, 1, None, b"a")])
    write_segment(pdir, 1, [frame(1, 1, None, b"a")])
    os.unlink(os.path.join(pdir, f"{0:020d}.log"))  # retention crashed after the commit point
    open(os.path.join(pdir, f"{5:020d}.log.swap"), "wb").close()
    swap.resolve_leftovers(pdir)
    assert sorted(os.listdir(pdir)) == [f"{1:020d}{e}" for e in (".index", ".log", ".timeindex")]


# --- start offset ---

def test_start_offset_reads_one_header_and_an_empty_first_segment_gives_its_base(tmp_path):
    pdir = str(tmp_path / "p")
    log = PartitionLog(pdir)
    assert log.start_offset() is None
    write_segment(pdir, 0, [frame(7, 1, None, b"a"), frame(8, 1, None, b"b")])  # compacted: first is 7
    assert log.start_offset() == 7
    swap.delete_segment(pdir, 0)
    write_segment(pdir, 9, [])
    assert log.start_offset() == 9
    log.close()


def _garbage_tail(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 20)


def test_rolls_are_fsynced_in_the_background_and_move_the_recovery_point(tmp_path):
    from shmbus.log.files import read_recovery_point

    pdir = str(tmp_path / "p")
    w = SegmentWriter(pdir, segment_bytes=4096, segment_ms=10**9, now_ms=0)
    ring = np.zeros(1 << 16, np.uint8)
    frames = b"".join(frame(i, 1, None, b"x" * 200) for i in range(100))
    ring[: len(frames)] = np.frombuffer(frames, np.uint8)
    ln = F.frame_length(-1, 200, 0)
    rows = np.array([(i * ln, ln, i, 1, F.DATA) for i in range(100)], np.int64)
    w.append(memoryview(ring), rows, now_ms=1)
    bases = list_segments(pdir)
    assert len(bases) > 3  # rolled by size several times
    assert w.wait_flushed(30)
    assert read_recovery_point(pdir) == bases[-1]  # every rolled segment is fsynced
    w.fsync_all()
    assert read_recovery_point(pdir) == 100  # a clean stop: everything
    w.close()


def test_recover_checks_rolled_segments_past_the_recovery_point_and_keeps_a_prefix(tmp_path):
    pdir = str(tmp_path / "p")
    for b in (0, 100, 200):
        write_segment(pdir, b, [frame(b + i, 1, None, b"x" * 100) for i in range(100)])
    with open(os.path.join(pdir, "recovery-point"), "w") as f:
        f.write("100\n")  # segment 0 is fsynced; 100 was rolled but the machine died before its fsync
    mid = os.path.join(pdir, f"{100:020d}.log")
    good = os.path.getsize(mid)
    _garbage_tail(mid)
    rep = recovery.recover_partition(pdir)
    assert os.path.getsize(mid) == good  # cut back to its last good frame
    assert list_segments(pdir) == [0, 100]  # what came after a torn segment was never durable either
    assert any("after a torn segment" in t[3] for t in rep.truncated)
    offs = [r[0] for r in read_all(pdir)]
    assert offs == list(range(200))


def test_recover_trusts_segments_below_the_recovery_point(tmp_path):
    pdir = str(tmp_path / "p")
    for b in (0, 100, 200):
        write_segment(pdir, b, [frame(b + i, 1, None, b"x" * 100) for i in range(100)])
    with open(os.path.join(pdir, "recovery-point"), "w") as f:
        f.write("200\n")
    mid = os.path.join(pdir, f"{100:020d}.log")
    _garbage_tail(mid)  # damage in a fsynced segment is not a torn write: readers report it, nothing is cut
    size = os.path.getsize(mid)
    recovery.recover_partition(pdir)
    assert os.path.getsize(mid) == size and list_segments(pdir) == [0, 100, 200]
    # no recovery point (older data dirs, or a lost file): everything is checked
    os.unlink(os.path.join(pdir, "recovery-point"))
    recovery.recover_partition(pdir)
    assert list_segments(pdir) == [0, 100]
