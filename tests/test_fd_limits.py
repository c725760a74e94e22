"""File-descriptor limits: the writer's file pool, a supervisor under RLIMIT_NOFILE 1024 with
300 topics x 4 partitions, and a supervisor that runs out of fds altogether.

Rings are mapped without keeping an fd, the supervisor keeps a bounded pool of open
segment files (idle writers park: their files closed, their state kept), and running out
of fds is logged, retried and reported in ``status``, never fatal.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers.frames import frame

from shmbus.core import paths as _paths
from shmbus.layout import frame as F
from shmbus.log.filepool import FilePool
from shmbus.log.files import list_segments, read_recovery_point
from shmbus.log.reader import PartitionLog
from shmbus.log.writer import SegmentWriter
from shmbus.client import control as client


# --- the writer's file pool (no supervisor) ---

def _rows(frames: list[bytes], offsets: list[int], ts: int):
    buf = np.frombuffer(b"".join(frames), np.uint8)
    rows, pos = [], 0
    for fr, off in zip(frames, offsets):
        rows.append((pos, len(fr), off, ts, F.DATA, 0, 0, 0))
        pos += len(fr)
    return buf, np.array(rows, np.int64)


def _fds_under(path: str) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(path):
                n += 1
        except OSError:
            pass
    return n


def _read_all(pdir: str) -> list[tuple[int, bytes]]:
    """(offset, value) of every record on disk, in order."""
    log = PartitionLog(pdir)
    out, off = [], 0
    try:
        while True:
            n, meta, chunk = log.read(off, 4096)
            if not n:
                return out
            for r in meta[1: n + 1]:
                kl, vl, bi = max(int(r[3]), 0), int(r[4]), int(r[6])
                out.append((int(r[1]), chunk[bi + kl: bi + kl + vl].tobytes()))
            off = out[-1][0] + 1
    finally:
        log.close()


def test_the_file_pool_closes_and_reopens_segment_files_and_keeps_every_record(tmp_path):
    """40 partitions, room for 4 open segments: appends park and reopen writers, rolls by size
    happen in parked and open ones; every record is on disk once, in order, indexes rebuilt equal."""
    root = str(tmp_path)
    pool = FilePool(cap_fds=12)
    writers = [SegmentWriter(os.path.join(root, str(p)), 4096, 10**9, 0, pool=pool) for p in range(40)]
    assert _fds_under(root) == 0  # a new writer in a pool holds nothing until it appends
    sent = {p: [] for p in range(40)}
    for rnd in range(12):
        for p, w in enumerate(writers):
            if (p + rnd) % 3 == 0:
                continue  # some partitions idle in some rounds
            off0 = len(sent[p])
            vals = [b"p%d-r%d-i%d-" % (p, rnd, i) + b"x" * (50 * i) for i in range(5)]
            buf, rows = _rows([frame(off0 + i, 1000 + rnd, None, v) for i, v in enumerate(vals)],
                              list(range(off0, off0 + 5)), 1000 + rnd)
            assert w.append(memoryview(buf), rows, now_ms=rnd) == 5
            sent[p].extend(vals)
            assert pool.writers_open() <= 4
        for w in writers:
            assert w.wait_flushed(10)  # (files of rolled segments count until the flusher closed them)
        assert _fds_under(root) == pool.open_fds <= 12
    assert pool.parked > 40 and pool.reopened > 40
    for w in writers:
        w.fsync_all()
        assert w.next_offset == len(sent[int(os.path.basename(w.pdir))])
        w.close()
    assert _fds_under(root) == 0 and pool.open_fds == 0
    for p in range(40):
        pdir = os.path.join(root, str(p))
        assert _read_all(pdir) == list(enumerate(sent[p]))
        assert len(list_segments(pdir)) > 1  # rolled by size
        for base in list_segments(pdir):  # the indexes are what a rebuild makes
            from shmbus.log import recovery

            assert recovery.indexes_ok(pdir, base)
        assert read_recovery_point(pdir) == len(sent[p])


def test_a_parked_writer_still_fsyncs_for_acks_disk_and_its_roll_moves_the_recovery_point(tmp_path, monkeypatch):
    """Durability does not depend on whether the files are open: fsync() of a parked, dirty
    writer syncs its .log (by name); a roll of a parked segment is fsynced by the flusher,
    which then moves the recovery point."""
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.fstat(fd).st_ino)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    pool = FilePool(cap_fds=12)
    pdir = str(tmp_path / "0")
    w = SegmentWriter(pdir, 1 << 20, 1000, 0, pool=pool)
    buf, rows = _rows([frame(i, 5, None, b"v%d" % i) for i in range(3)], [0, 1, 2], 5)
    w.append(memoryview(buf), rows, now_ms=0)
    assert w.park() and w.parked and w.dirty and _fds_under(pdir) == 0
    log_ino = os.stat(os.path.join(pdir, _paths.segment_name(0))).st_ino
    w.fsync()  # what the spiller does for acks="disk"
    assert log_ino in synced and not w.dirty and w.parked and _fds_under(pdir) == 0
    # the segment ages past segment.ms while parked: the roll hands it to the flusher by name
    synced.clear()
    assert w.should_roll(now_ms=2000)
    w.roll()
    assert w.wait_flushed(10)
    assert log_ino in synced and read_recovery_point(pdir) == 3
    assert w.active_base() is None
    buf, rows = _rows([frame(3, 6, None, b"v3")], [3], 6)
    w.append(memoryview(buf), rows, now_ms=2001)  # a new segment at offset 3
    assert list_segments(pdir) == [0, 3]
    w.close()
    assert [v for _, v in _read_all(pdir)] == [b"v0", b"v1", b"v2", b"v3"]


def test_retention_keeps_a_last_segment_that_became_active_while_it_was_judged(tmp_path):
    """The log keeper judges segments without the state lock. A last segment seen empty and
    closed (an open that failed half-way on EMFILE left it; or it was being opened) may be the
    active one again, with records, by the time the keeper holds the lock: it stays."""
    from shmbus.log import retention

    now = 10**12
    pdir = str(tmp_path / "0")
    w = SegmentWriter(pdir, 1 << 20, 10**9, now)
    open(os.path.join(pdir, _paths.segment_name(0)), "wb").close()  # made, then the .index open failed
    buf, rows = _rows([frame(i, now, None, b"v%d" % i) for i in range(3)], [0, 1, 2], now)

    class SpillFirst:
        """The state lock, with the spill thread getting it first: it appends the records."""

        def __enter__(self):
            w.append(memoryview(buf), rows, now_ms=now)

        def __exit__(self, *exc):
            return False

    cfg = {"cleanup.policy": "delete", "retention.ms": 1000, "retention.bytes": -1}
    retention.enforce(w, cfg, now, SpillFirst())
    w.close()
    assert [v for _, v in _read_all(pdir)] == [b"v0", b"v1", b"v2"]


# --- a real supervisor under RLIMIT_NOFILE ---

def _limit(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _start_supervisor(data_dir: str, nofile: int) -> subprocess.Popen:
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    with open(_paths.log_path(data_dir), "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "shmbus.supervisor", "--data-dir", data_dir],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=_limit(nofile))
    deadline = time.monotonic() + 120
    while not client.ping(data_dir):
        assert proc.poll() is None, f"the supervisor exited at start: {_log_tail(data_dir)}"
        assert time.monotonic() < deadline, "the supervisor did not answer"
        time.sleep(0.02)
    return proc


def _log_tail(data_dir: str, n: int = 4000) -> str:
    try:
        with open(_paths.log_path(data_dir), "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _status(data_dir: str) -> dict:
    st = client.request(data_dir, {"cmd": "status"}, timeout=10)
    assert st.get("ok", True), st
    return st


def _run_limited(script: str, *args, nofile: int = 1024, timeout: float = 240) -> dict:
    """Run ``script`` in a fresh Python under RLIMIT_NOFILE ``nofile``; its last stdout line is JSON."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, preexec_fn=_limit(nofile))
    assert r.returncode == 0, f"client failed: rc={r.returncode}\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


PRODUCE = """
    import json, sys
    from shmbus import Bus, ShmbusError
    d, ntopics, nparts, per, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    big = set(tuple(map(int, x.split(":"))) for x in big.split(",") if x)
    out = {"refused": [], "raw": None, "sent": {}}
    made = []
    with Bus(d, autostart=False) as bus:
        for t in range(ntopics):
            try:
                bus.create_topic(f"t{t:03d}", nparts, {"ring.bytes": 65536, "segment.bytes": 32768})
                made.append(t)
            except ShmbusError as e:
                out["refused"].append(f"{type(e).__name__}: {e}")
            except Exception as e:
                out["raw"] = f"{type(e).__name__}: {e}"
                break
        with bus.producer(max_block_ms=60000) as p, bus.producer(acks="disk") as pd:
            for t in made:
                for part in range(nparts):
                    n = 300 if (t, part) in big else per
                    offs = []
                    for i in range(n):
                        v = b"t%d/p%d/%d/" % (t, part, i) + (b"x" * 1000 if (t, part) in big else b"")
                        prod = pd if (t * nparts + part) % 97 == 0 and i == n - 1 else p
                        offs.append(prod.send(f"t{t:03d}", v, partition=part).offset)
                    out["sent"][f"{t}:{part}"] = offs
            p.flush()
    print(json.dumps(out))
"""

CONSUME = """
    import json, sys
    from shmbus import Bus, TopicPartition
    d, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        want = json.load(f)  # "t:p" -> number of records, offsets 0..n-1
    got = {}
    bad = []
    with Bus(d, autostart=False) as bus, bus.consumer(auto_offset_reset="earliest", max_poll_records=5000) as c:
        tps = [TopicPartition(f"t{int(k.split(':')[0]):03d}", int(k.split(':')[1])) for k in want]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        import time
        deadline = time.monotonic() + 120
        left = {tp for tp in tps if want[f"{int(tp.topic[1:])}:{tp.partition}"]}
        while left and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=200).items():
                k = f"{int(tp.topic[1:])}:{tp.partition}"
                for r in recs:
                    n = got.get(k, 0)
                    if r.offset != n or not r.value.startswith(b"t%d/p%d/%d/" % (int(tp.topic[1:]), tp.partition, n)):
                        bad.append((k, r.offset, n, r.value[:40].decode(errors="replace")))
                    got[k] = n + 1
                if got.get(k, 0) >= want[k]:
                    left.discard(tp)
    print(json.dumps({"got": got, "bad": bad[:20], "missing": sorted(f"{t.topic}:{t.partition}" for t in left)[:20]}))
"""


@pytest.mark.timeout(600)
def test_a_supervisor_under_nofile_1024_serves_300_topics_of_4_partitions(data_dir, tmp_path):
    """The acceptance case: RLIMIT_NOFILE 1024 for the supervisor and every client, 1200
    partitions, records in every one (and enough in a few that they leave the 64 KiB ring
    and are read back from disk). The supervisor stays up and answers, every record sent is
    read back by a fresh consumer and is on disk once, and any refusal is a ShmbusError."""
    proc = _start_supervisor(data_dir, 1024)
    try:
        st = _status(data_dir)
        assert st["fds"]["limit_soft"] == 1024
        big = "0:0,37:1,150:2,299:3,211:0,88:3"
        out = _run_limited(PRODUCE, data_dir, 300, 4, 3, big)
        assert out["raw"] is None, f"a refusal that is no ShmbusError: {out['raw']}"
        assert proc.poll() is None, f"the supervisor died: {_log_tail(data_dir)}"
        made = {int(k.split(":")[0]) for k in out["sent"]}
        # the limits here allow all 300 topics (refusals would have to be ShmbusErrors, checked above)
        assert len(made) == 300 and not out["refused"], out["refused"][:3]
        want = {k: len(v) for k, v in out["sent"].items()}
        for k, offs in out["sent"].items():
            assert offs == list(range(len(offs))), k
        # everything spilled (the spiller opens and closes segment files to get there)
        deadline = time.monotonic() + 120
        while True:
            st = _status(data_dir)
            lag = [p for p in st["partitions"] if p["spill_lag_bytes"]]
            if len(st["partitions"]) == 1200 and not lag:
                break
            assert proc.poll() is None, f"the supervisor died: {_log_tail(data_dir)}"
            assert time.monotonic() < deadline, f"not spilled: {len(st['partitions'])} partitions, lag {lag[:3]}"
            time.sleep(0.2)
        assert st["fds"]["open"] < 1024 and st["fds"]["segment_files"] <= st["fds"]["segment_files_cap"] + 3
        assert st["fds"]["writers_parked"] > 0  # more partitions than the pool holds
        path = str(tmp_path / "want.json")
        with open(path, "w") as f:
            json.dump(want, f)
        res = _run_limited(CONSUME, data_dir, path)
        assert not res["bad"], res["bad"]
        assert not res["missing"], res["missing"]
        assert res["got"] == want
        assert proc.poll() is None and _status(data_dir)["pid"] == proc.pid
        assert client.stop(data_dir)
        proc.wait(30)
        # on disk: each record once, in order, in every partition
        for k, n in want.items():
            t, p = map(int, k.split(":"))
            recs = _read_all(_paths.partition_dir(data_dir, f"t{t:03d}", p))
            assert [o for o, _ in recs] == list(range(n)), k
            assert all(v.startswith(b"t%d/p%d/%d/" % (t, p, o)) for o, v in recs), k
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.timeout(240)
def test_a_supervisor_out_of_fds_survives_reports_it_and_spills_once_they_are_back(data_dir):
    """Idle connections to the group coordinator take every fd the supervisor has (limit 256).
    Meanwhile producers publish (into the rings) and a topic is created. The supervisor keeps
    running; once the connections are gone it answers, says in ``status`` that it ran out of
    fds, spills everything and picks up the new topic."""
    from shmbus import Bus

    proc = _start_supervisor(data_dir, 256)
    socks = []
    try:
        with Bus(data_dir, autostart=False) as bus:
            for t in range(4):
                bus.create_topic(f"a{t}", 4, {"ring.bytes": 65536})
            with bus.producer() as p:
                for t in range(4):
                    for part in range(4):
                        p.send(f"a{t}", b"before-%d-%d" % (t, part), partition=part)
            deadline = time.monotonic() + 3
            while len(socks) < 400 and time.monotonic() < deadline:  # more than the supervisor may open
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(os.path.join(data_dir, "groups.sock"))
                    socks.append(s)
                except BlockingIOError:  # the backlog is full: wait for accepts (until it runs out)
                    s.close()
                    time.sleep(0.01)
            time.sleep(1.0)  # the coordinator accepts what it can, then runs out
            bus.create_topic("late", 2, {"ring.bytes": 65536})
            with bus.producer() as p:
                for t in range(4):
                    for part in range(4):
                        p.send(f"a{t}", b"during-%d-%d" % (t, part), partition=part)
                p.send("late", b"late-0", partition=0)
            time.sleep(1.5)  # spill and rescan rounds run out of fds
            assert proc.poll() is None, f"the supervisor died: {_log_tail(data_dir)}"
            for s in socks:
                s.close()
            socks.clear()
            deadline = time.monotonic() + 60
            while True:
                try:
                    st = _status(data_dir)
                    lag = [x for x in st["partitions"] if x["spill_lag_bytes"]]
                    if len(st["partitions"]) == 18 and not lag:
                        break
                except Exception:  # noqa: BLE001 (still closing the connections)
                    pass
                assert proc.poll() is None, f"the supervisor died: {_log_tail(data_dir)}"
                assert time.monotonic() < deadline, f"not spilled after the fds came back: {_log_tail(data_dir)}"
                time.sleep(0.1)
            assert st["fds"]["exhausted"] > 0
            assert any("out of file descriptors" in x for x in st["problems"]), st["problems"]
            assert "out of file descriptors" in _log_tail(data_dir, 100000)
            r = subprocess.run([sys.executable, "-m", "shmbus", "status", "--data-dir", data_dir],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and "PROBLEM: out of file descriptors" in r.stdout, r.stdout + r.stderr
            assert client.stop(data_dir)
            proc.wait(30)
            for t in range(4):
                for part in range(4):
                    recs = _read_all(_paths.partition_dir(data_dir, f"a{t}", part))
                    assert [v for _, v in recs] == [b"before-%d-%d" % (t, part), b"during-%d-%d" % (t, part)]
            assert [v for _, v in _read_all(_paths.partition_dir(data_dir, "late", 0))] == [b"late-0"]
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.timeout(120)
def test_create_topic_past_the_open_files_limit_is_a_shmbus_error_naming_the_limit(data_dir):
    """A client whose fds are all taken: create_topic raises ResourceLimitError naming
    RLIMIT_NOFILE and `ulimit -n`, and leaves no topic and no shared memory behind."""
    script = """
        import errno, json, os, sys
        from shmbus import Bus, ResourceLimitError
        from shmbus.core.ring import Ring
        d = sys.argv[1]
        with Bus(d, autostart=False) as bus:
            bus.create_topic("ok", 2, {"ring.bytes": 65536})
            held = []
            try:
                while True:
                    held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            try:
                bus.create_topic("big", 64, {"ring.bytes": 65536})
                res = {"raised": None}
            except ResourceLimitError as e:
                res = {"raised": str(e)}
            try:  # a ring alone: posix_ipc's error, as an errno
                Ring.create("/shmbus-fdtest-%d" % os.getpid(), 65536, 0, 1, 0).close()
                res["ring_errno"] = None
                from shmbus.core.ring import unlink
                unlink("/shmbus-fdtest-%d" % os.getpid())
            except OSError as e:
                res["ring_errno"] = errno.errorcode.get(e.errno)
            for fd in held:
                try:
                    os.close(fd)
                except OSError:
                    pass
            res["topics"] = bus.list_topics()
            res["shm"] = bus.shared_memory_names()
        print(json.dumps(res))
    """
    res = _run_limited(script, data_dir, nofile=200)
    assert res["raised"] and "RLIMIT_NOFILE soft=200 hard=200" in res["raised"] and "ulimit -n" in res["raised"]
    assert res["ring_errno"] == "EMFILE"
    assert res["topics"] == ["ok"]
    assert len(res["shm"]) == 1 + 2  # the control block and the rings of "ok"
