"""``shmbus groups list|describe`` and ``consume --group``, run as a person types them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.cli import one_line_error, sh

pytestmark = pytest.mark.timeout(180)


def test_groups_list_and_describe(data_dir):
    r = sh(data_dir, "groups", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = sh(data_dir, "groups", "describe", "nobody")
    assert r.returncode == 0 and "state: Dead" in r.stdout
    assert sh(data_dir, "topics", "create", "orders", "--partitions", "2").returncode == 0
    r = sh(data_dir, "produce", "orders", "--partition", "0", stdin="a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    r = sh(data_dir, "produce", "orders", "--partition", "1", stdin="d\n")
    assert r.returncode == 0, r.stderr
    # a member that reads everything and leaves (committing on close)
    r = sh(data_dir, "consume", "orders", "--group", "billing", "--from-beginning", "--max-messages", "4")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["a", "b", "c", "d"]
    r = sh(data_dir, "groups", "list")
    assert r.returncode == 0 and r.stdout.split() == ["billing"]
    r = sh(data_dir, "groups", "describe", "billing", "--json")
    d = json.loads(r.stdout)
    assert d["state"] == "Empty" and d["members"] == []
    assert [(o["partition"], o["committed"], o["end_offset"], o["lag"]) for o in d["offsets"]] == [(0, 3, 3, 0), (1, 1, 1, 0)]

    # a member that stays: it shows with its pid and partitions
    env = dict(os.environ, SHMBUS_DATA_DIR=data_dir)
    p = subprocess.Popen([sys.executable, "-m", "shmbus", "consume", "orders", "--group", "billing"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            d = json.loads(sh(data_dir, "groups", "describe", "billing", "--json").stdout)
            if d["state"] == "Stable" and d["members"] and len(d["members"][0]["assignment"]) == 2:
                break
            time.sleep(0.1)
        (m,) = d["members"]
        assert m["pid"] == p.pid and m["assignment"] == [["orders", 0], ["orders", 1]]
        r = sh(data_dir, "produce", "orders", "--partition", "0", stdin="e\n")
        assert r.returncode == 0
        r = sh(data_dir, "groups", "describe", "billing")
        assert r.returncode == 0
        lines = r.stdout.splitlines()
        assert "state: Stable" in lines[0] and "members: 1" in lines[0]
        assert lines[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER", "PID"]
        row0 = lines[2].split()
        assert row0[:3] == ["orders", "0", "3"] and row0[-1] == str(p.pid)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    assert "e" in out.split()
    # with the supervisor stopped, the checkpoint on disk answers
    assert sh(data_dir, "stop").returncode == 0
    r = sh(data_dir, "groups", "list", "--json")
    assert json.loads(r.stdout) == ["billing"]
    r = sh(data_dir, "groups", "describe", "billing", "--json")
    d = json.loads(r.stdout)
    assert d["state"] == "Empty" and [o["committed"] for o in d["offsets"]] == [4, 1]


def test_consume_with_group_and_partition_is_one_line_error(data_dir):
    assert sh(data_dir, "topics", "create", "orders").returncode == 0
    r = sh(data_dir, "consume", "orders", "--group", "g", "--partition", "0", "--timeout-ms", "100")
    assert "--partition and --group do not go together" in one_line_error(r)
