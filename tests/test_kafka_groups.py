"""Kafka consumer groups through the listener, with real clients (confluent-kafka, kafka-python).

Membership, rebalances (the leader assigns, the broker relays), the death of
a member (its connection closes: the rest rebalance at once), committed
offsets in the same store as the Python API's (describe, lag, restarts), the
admin APIs, and a group id used by both kinds of client being refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from helpers.kafka_consumer import group_consumer, owned, read_events
from helpers.waiting import wait_for

import shmbus.kafka.handlers  # noqa: F401  (registers the handlers)
from shmbus.kafka.registry import HANDLERS

FETCH = 1


def _gid() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def _start(procs, kbus, group, topic, out, config):
    p = procs.start(group_consumer, kbus.bootstrap, group, topic, out, config)
    return p


def _share_then_kill(procs, kbus, tmp_path, topic, config):
    """Two consumers share ``topic`` (4 partitions); one is SIGKILLed; returns (survivor's events file,
    seconds from the kill to the survivor owning all 4)."""
    group = _gid()
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    pa = _start(procs, kbus, group, topic, a, config)
    wait_for(lambda: owned(a) == {0, 1, 2, 3}, 30, "the first consumer to own all 4 partitions")
    pb = _start(procs, kbus, group, topic, b, config)
    wait_for(lambda: owned(a) and owned(b) and owned(a) | owned(b) == {0, 1, 2, 3} and not owned(a) & owned(b)
             and len(owned(a)) == 2, 30, "the two consumers to share the 4 partitions 2 and 2")
    os.kill(pb.pid, signal.SIGKILL)
    t0 = time.time()
    pb.join(10)
    wait_for(lambda: owned(a) == {0, 1, 2, 3}, 10, "the survivor to own all 4 partitions")
    t1 = next(e["t"] for e in reversed(read_events(a)) if e["event"] == "assign" and len(e["owned"]) == 4)
    return a, pa, t1 - t0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky", "roundrobin"])
def test_a_killed_members_partitions_go_to_the_survivor_at_once(kbus, ktopic, procs, tmp_path, strategy):
    topic = ktopic(4)
    _, _, took = _share_then_kill(procs, kbus, tmp_path, topic, {"partition.assignment.strategy": strategy})
    assert took < 2.0, f"the survivor owned every partition {took:.2f} s after the other was killed"


@pytest.mark.timeout(120)
@pytest.mark.skipif(FETCH not in HANDLERS, reason="needs the Fetch API (api_key 1) in the listener")
def test_the_survivor_of_a_killed_member_reads_every_record(kbus, ktopic, procs, tmp_path):
    """Acceptance: two consumers share a 4-partition topic; one is SIGKILLed; the survivor owns every
    partition within 2 s and reads every record."""
    topic = ktopic(4)
    with kbus.bus.producer() as p:
        for i in range(400):
            p.send(topic, value=f"v{i}".encode(), partition=i % 4)
        p.flush()
    a, _, took = _share_then_kill(procs, kbus, tmp_path, topic, {})
    assert took < 2.0, f"the survivor owned every partition {took:.2f} s after the other was killed"

    def values():
        return {e["value"] for e in read_events(a) if e["event"] == "record"}

    wait_for(lambda: len(values()) == 400, 30, "the survivor to read all 400 records")
    assert values() == {f"v{i}" for i in range(400)}
