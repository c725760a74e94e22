"""A full disk: producers blocked by failing spills are told why, status and stats show it, the
supervisor logs it until it clears; once there is room again everything acknowledged is readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shmbus import Bus, BufferFullError

from helpers.bus import cleanup_bus, read_offsets
from helpers.waiting import wait_for


@pytest.fixture
def tiny_disk(tmp_path):
    """A data dir on a 2 MiB tmpfs (root only); the supervisor is stopped before it is unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = str(tmp_path / "bus")
    os.makedirs(d)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", d], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        try:
            cleanup_bus(d)
        finally:
            if subprocess.run(["umount", d], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", d], capture_output=True)


def _cli(d, *args):
    return subprocess.run([sys.executable, "-m", "shmbus", *args, "--data-dir", d], capture_output=True, text=True,
                          timeout=60)


def _log(d):
    with open(os.path.join(d, "supervisor.log")) as f:
        return f.read()


@pytest.mark.timeout(120)
def test_producers_blocked_by_a_full_disk_are_told_so_and_status_shows_it(tiny_disk):
    d = tiny_disk
    want = f"spilling is failing: no space left on device at {d}"
    with Bus(d) as bus:
        bus.create_topic("t", config={"ring.bytes": 1 << 16})
        acked = []
        with bus.producer(max_block_ms=1000) as p:
            with pytest.raises(BufferFullError) as ei:
                for i in range(100000):
                    acked.append(p.send("t", b"%06d" % i + b"v" * 1018).offset)
            assert want in str(ei.value), str(ei.value)
            assert "is the supervisor running" not in str(ei.value)
            with pytest.raises(BufferFullError, match=want):
                p.send_batch("t", [b"x" * 1000] * 10)
        assert acked == list(range(len(acked))) and len(acked) > 1000
        st = _cli(d, "status")
        assert st.returncode == 0 and want in st.stdout, st.stdout + st.stderr
        js = json.loads(_cli(d, "status", "--json").stdout)
        assert js["spill_error"].startswith(want) and js["partitions"][0]["spill_error"].startswith(want)
        stats = _cli(d, "stats", "--once", "--interval", "0.1", "--json")
        sj = json.loads(stats.stdout)
        assert sj["supervisor"]["spill_error"].startswith(want), stats.stdout + stats.stderr
        assert sj["partitions"][0]["spill_error"].startswith(want)
        assert want in _cli(d, "stats", "--once", "--interval", "0.1").stdout
        # logged again while it lasts (rate-limited), not once
        wait_for(lambda: _log(d).count("spill failed, retrying: " + want) >= 2, 30, "a second log line")
        # room again: spilling resumes, the error clears, every acknowledged record is readable
        subprocess.run(["mount", "-o", "remount,size=64m", d], check=True)
        wait_for(lambda: "spilling works again" in _log(d), 30, "the supervisor to say spilling works again")
        assert json.loads(_cli(d, "status", "--json").stdout)["spill_error"] is None
        assert want not in _cli(d, "status").stdout
        with bus.producer(max_block_ms=5000) as p:
            last = p.send("t", b"after").offset
        got = read_offsets(bus, "t", 0, last + 1, timeout_s=30)
        assert [r.offset for r in got] == list(range(last + 1))
        assert all(r.value.startswith(b"%06d" % r.offset) for r in got[: len(acked)])
