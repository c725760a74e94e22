"""A corrupt record in the middle of a segment: the records before it are read, the error names its
offset, a seek past it reads on, the supervisor warns at start, `shmbus doctor --verify` reports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from shmbus import Bus, CorruptRecordError, TopicPartition

from helpers.bus import read_n, wait_spilled

TP = TopicPartition("d", 0)
N = 300
BAD = 150


def _seg(data_dir):
    """The segment file that holds offset BAD."""
    pdir = os.path.join(data_dir, "topics", "d", "0")
    bases = sorted(int(n[:20]) for n in os.listdir(pdir) if n.endswith(".log"))
    return os.path.join(pdir, "%020d.log" % max(b for b in bases if b <= BAD))


def _fill(bus, config=None):
    bus.create_topic("d", config={"ring.bytes": 8192, **(config or {})})
    with bus.producer() as p:
        for i in range(N):
            p.send("d", b"value-%05d" % i)
    wait_spilled(bus, "d", 0, N - 1)


def _frame_pos(data, offset):
    """File position of the frame holding ``offset`` (walking the frames)."""
    i = 0
    while i < len(data):
        ln = int.from_bytes(data[i: i + 4], "little")
        if int.from_bytes(data[i + 8: i + 16], "little") == offset:
            return i
        i += ln
    raise AssertionError(offset)


def _corrupt(data_dir, how):
    seg = _seg(data_dir)
    with open(seg, "r+b") as f:
        data = f.read()
        at = _frame_pos(data, BAD)
        if how == "value":  # the checksum no longer matches
            f.seek(data.index(b"value-%05d" % BAD))
            f.write(b"VALUE")
        elif how == "length":  # a header that cannot be: the scan cannot step over the frame by its length
            f.seek(at)
            f.write((3).to_bytes(4, "little"))
        else:  # a bad type, the length intact: the scan steps over it by its length
            f.seek(at + 4)
            f.write(bytes([9]))
    return seg, at


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["value", "length", "type"])
def test_good_records_before_a_corrupt_one_are_read_and_seek_past_it_works(bus, how):
    _fill(bus)
    seg, at = _corrupt(bus.data_dir, how)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([TP])
        first = c.poll(timeout_ms=2000, max_records=1000)[TP]
        assert [r.offset for r in first] == list(range(BAD))  # what precedes it, in one poll
        assert all(r.value == b"value-%05d" % r.offset for r in first)
        for _ in range(2):  # the next poll, and every one after it while the position is there
            with pytest.raises(CorruptRecordError) as e:
                c.poll(timeout_ms=100, max_records=1000)
            msg = str(e.value)
            assert f"offset={BAD} " in msg and f"file={seg} " in msg and f"position={at} " in msg, msg
            assert f"seek to offset {BAD + 1}" in msg
        assert c.position(TP) == BAD
        for target in (BAD + 1, BAD + 7, BAD + 40):  # past it: the same index interval and beyond
            c.seek(TP, target)
            got = read_n(c, N - target)
            assert [r.offset for r in got] == list(range(target, N)), target
            assert all(r.value == b"value-%05d" % r.offset for r in got)
        c.seek(TP, BAD)
        with pytest.raises(CorruptRecordError, match=f"offset={BAD} "):
            c.poll(timeout_ms=100, max_records=1000)
        c.seek(TP, 3)
        batches = c.poll_batch(timeout_ms=2000, max_records=1000)[TP]
        assert batches.offsets.tolist() == list(range(3, BAD))  # the batch path too
        with pytest.raises(CorruptRecordError, match=f"offset={BAD} "):
            c.poll_batch(timeout_ms=100, max_records=1000)


def _verify(data_dir, *extra):
    return subprocess.run([sys.executable, "-m", "shmbus", "doctor", "--verify", "--data-dir", data_dir, *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_doctor_verify_reports_the_corrupt_record_and_the_supervisor_warns_at_start(bus):
    _fill(bus, {"segment.bytes": 4096})  # several segments: BAD is in one of the middle
    bus.create_topic("ok", partitions=2)
    with bus.producer() as p:
        for i in range(50):
            p.send("ok", b"x%d" % i)
    wait_spilled(bus, "ok", 0, 24)
    wait_spilled(bus, "ok", 1, 24)
    r = _verify(bus.data_dir, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert {(x["topic"], x["partition"]) for x in rep["partitions"]} == {("d", 0), ("ok", 0), ("ok", 1)}
    assert all(x["bad"] is None for x in rep["partitions"])
    assert sum(x["records"] for x in rep["partitions"] if x["topic"] == "d") == N
    seg, at = _corrupt(bus.data_dir, "value")
    # an older segment, below the recovery point: recovery keeps it (cutting it would cut every
    # good record after it) and warns
    subprocess.run([sys.executable, "-m", "shmbus", "stop", "--data-dir", bus.data_dir], check=True, timeout=60)
    with Bus(bus.data_dir):
        pass
    log = open(os.path.join(bus.data_dir, "supervisor.log")).read()
    deadline = time.monotonic() + 20
    while "corrupt record" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log = open(os.path.join(bus.data_dir, "supervisor.log")).read()
    line = [ln for ln in log.splitlines() if "corrupt record" in ln]
    assert line and f"offset={BAD}" in line[0] and seg in line[0] and f"position={at}" in line[0], log[-2000:]
    r = _verify(bus.data_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"offset={BAD}" in r.stdout and seg in r.stdout and f"position={at}" in r.stdout, r.stdout
    assert "checksum mismatch" in r.stdout
    r = _verify(bus.data_dir, "--json")
    rep = json.loads(r.stdout)
    bad = [x for x in rep["partitions"] if x["bad"]]
    assert len(bad) == 1 and bad[0]["topic"] == "d" and bad[0]["bad"]["offset"] == BAD
    assert bad[0]["bad"]["file"] == seg and bad[0]["bad"]["position"] == at
    segs = sorted(n for n in os.listdir(os.path.dirname(seg)) if n.endswith(".log"))
    assert os.path.basename(seg) not in (segs[0], segs[-1])
    with Bus(bus.data_dir) as b2, b2.consumer(auto_offset_reset="earliest") as c:  # nothing was cut
        c.assign([TP])
        c.seek(TP, BAD + 1)
        assert [r.offset for r in read_n(c, N - BAD - 1)] == list(range(BAD + 1, N))
