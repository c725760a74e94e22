"""The command line, run as a subprocess the way a person types it, on a real bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.cli import one_line_error, sh

pytestmark = pytest.mark.timeout(120)


def test_serve_status_stop_and_second_serve(data_dir):
    r = sh(data_dir, "status")
    assert r.returncode == 1 and "not running" in r.stdout
    r = sh(data_dir, "serve")
    assert r.returncode == 0, r.stderr
    assert "supervisor running" in r.stdout
    r = sh(data_dir, "serve")  # a second one says so and exits 1
    assert "already running" in one_line_error(r)
    r = sh(data_dir, "serve", "--foreground")
    assert "already running" in one_line_error(r)
    r = sh(data_dir, "status", "--json")
    st = json.loads(r.stdout)
    assert r.returncode == 0 and st["running"] and st["pid"] > 0
    r = sh(data_dir, "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    r = sh(data_dir, "stop")
    assert "no supervisor" in one_line_error(r)


def test_topics_produce_consume_roundtrip(data_dir):
    r = sh(data_dir, "topics", "create", "prices", "--partitions", "3", "--config", "retention.ms=60000")
    assert r.returncode == 0, r.stderr
    r = sh(data_dir, "topics", "list", "--json")
    assert json.loads(r.stdout) == ["prices"]
    r = sh(data_dir, "produce", "prices", "--key-separator", ":", "--header", "src=cli",
           stdin="AAPL:189.5\nMSFT:410.2\nAAPL:190.0\n")
    assert r.returncode == 0, r.stderr
    assert "sent 3" in r.stderr
    r = sh(data_dir, "consume", "prices", "--from-beginning", "--max-messages", "3",
           "--format", "{key}={value} {headers}")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["AAPL=189.5 src=cli", "AAPL=190.0 src=cli", "MSFT=410.2 src=cli"]
    r = sh(data_dir, "topics", "describe", "prices", "--json")
    d = json.loads(r.stdout)
    assert d["config"]["retention.ms"] == 60000
    assert sum(p["end_offset"] for p in d["partitions"]) == 3
    r = sh(data_dir, "topics", "alter", "prices", "--config", "retention.ms=1000")
    assert r.returncode == 0, r.stderr
    r = sh(data_dir, "topics", "describe", "prices")
    assert "retention.ms=1000" in r.stdout
    r = sh(data_dir, "consume", "prices", "--partition", "0", "--offset", "0", "--timeout-ms", "300",
           "--format", "{partition}:{offset}")
    assert r.returncode == 0
    assert all(line.startswith("0:") for line in r.stdout.splitlines())
    r = sh(data_dir, "topics", "delete", "prices")
    assert r.returncode == 0
    r = sh(data_dir, "topics", "list")
    assert r.stdout.strip() == ""


@pytest.mark.parametrize("args,stdin,needle", [
    (("topics", "create", "bad/name"), None, "topic"),
    (("topics", "create", "t", "--config", "ring.bytes=1000"), None, "ring.bytes"),
    (("topics", "create", "t", "--config", "nonsense=1"), None, "nonsense"),
    (("topics", "create", "t", "--config", "retention.ms"), None, "retention.ms"),
    (("topics", "describe", "missing"), None, "missing"),
    (("topics", "delete", "missing"), None, "missing"),
    (("produce", "missing"), "x\n", "missing"),
    (("consume", "missing", "--max-messages", "1"), None, "missing"),
    (("consume", "t", "--format", "{nope}"), None, "--format"),
    (("consume", "t", "--format", "{value"), None, "--format"),
])
def test_user_errors_are_one_line_exit_1(data_dir, args, stdin, needle):
    line = one_line_error(sh(data_dir, *args, stdin=stdin))
    assert needle in line


def test_produce_with_missing_separator_is_a_user_error(data_dir):
    sh(data_dir, "topics", "create", "t")
    line = one_line_error(sh(data_dir, "produce", "t", "--key-separator", ":", stdin="no separator here\n"))
    assert "separator" in line


def test_click_usage_error_is_exit_2(data_dir):
    r = sh(data_dir, "topics", "create")
    assert r.returncode == 2


def test_every_command_has_help_with_an_example(data_dir):
    for args in (["serve"], ["stop"], ["status"], ["topics", "create"], ["topics", "list"], ["topics", "describe"],
                 ["topics", "delete"], ["topics", "alter"], ["produce"], ["consume"], ["groups", "list"],
                 ["groups", "describe"], ["bench"], ["demo"], ["doctor"], ["stats"]):
        r = sh(data_dir, *args, "--help")
        assert r.returncode == 0, (args, r.stderr)
        assert "Example" in r.stdout, args


@pytest.mark.timeout(240)
def test_demo_runs_and_reports(data_dir):
    r = sh(data_dir, "demo", "--records", "3000", "--producers", "2", timeout=200)
    assert r.returncode == 0, r.stderr
    assert "OK: every record arrived exactly once, in order" in r.stdout, r.stdout
    assert "latency" in r.stdout


@pytest.mark.timeout(240)
def test_bench_runs_and_prints_percentiles(data_dir):
    r = sh(data_dir, "bench", "--records", "500", "--throughput-records", "5000", timeout=200)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert out[0] == "one-way latency, 500 records of 100 B (HDR histogram, 3 digits):", r.stdout
    assert all(f" {k} " in out[1] for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max")), r.stdout
    assert out[2].startswith("throughput send -> poll: ") and "5,000 records in" in out[2], r.stdout
    assert out[3].startswith("throughput send_batch -> poll_batch: "), r.stdout
    assert "latency: 500 x 100 B" in r.stderr  # the progress bars go to stderr


def test_produce_with_no_stdin_at_all_is_a_user_error(data_dir):
    sh(data_dir, "topics", "create", "t")
    env = dict(os.environ, SHMBUS_DATA_DIR=data_dir)
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m shmbus produce t <&-"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert "no stdin" in one_line_error(r)
    r = sh(data_dir, "produce", "t", stdin="")  # an empty stdin is no error: nothing to send, as Kafka's tool
    assert r.returncode == 0 and "sent 0 record(s)" in r.stderr
