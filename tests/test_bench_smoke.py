"""Smoke test of the benchmarks in bench/: each runs in --quick mode, exits 0 and prints its table.

No speed figure is asserted (the machines are shared and noisy): only that the
script ran end to end, verified its own counts (a failed verification exits 1)
and wrote its JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
TIMEOUT_S = 120

# script -> lines its stdout must contain (the Markdown table headers)
EXPECTED = {
    "latency": ["| transport | one-way p50 µs |", "mp.Queue put/get", "mp.Pipe", "shmbus poll"],
    "throughput": ["### Throughput (a)", "### Throughput (b)", "| transport | N | end-to-end rec/s |",
                   "shmbus send → poll", "shmbus send_batch(1000) → poll_batch", "mp.Queue put/get"],
    "import_time": ["| step | ms (median [min–max]) |", "first send()"],
    "idle_cpu": ["| blocked receiver (idle) | CPU % of one core |", "shmbus poll(timeout_ms=100)"],
    "disk": ["### Disk (a)", "| read, poll_batch(100000) |", "### Disk (b)", "| 4 producers |"],
    "groups": ["| event (6 partitions, range) |", "a member is SIGKILLed", "commit() of 6 partitions"],
    "kafka": ["| target | produce (records/s) | fetch (records/s) |", "| shmbus |", "| mock |", "shmbus / mock"],
}


def _run(cmd):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)  # the script cleans up (supervisor, /dev/shm, temp dirs) on SIGTERM
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        pytest.fail(f"{cmd[1]} did not finish within {TIMEOUT_S} s\nstdout:\n{out}\nstderr:\n{err[-4000:]}")
    return p.returncode, out, err


@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bench_quick(name, tmp_path):
    out_json = tmp_path / f"{name}.json"
    rc, out, err = _run([sys.executable, os.path.join(BENCH, f"{name}.py"), "--quick", "--out", str(out_json)])
    assert rc == 0, f"bench/{name}.py --quick exited {rc}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    for line in EXPECTED[name]:
        assert line in out, f"bench/{name}.py printed no {line!r}:\n{out}"
    data = json.loads(out_json.read_text())
    assert data["benchmark"] == name
    assert data["quick"] is True
    assert not data["errors"]
