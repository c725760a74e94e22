"""A confluent-kafka consumer in a group, run in a worker process, that reports what it owns.

``group_consumer(bootstrap, group, topic, out_path, config)`` appends one JSON
line to ``out_path`` per event: ``{"event": "assign" | "revoke", "owned":
[partitions], "t": time.time()}`` after each rebalance callback (for the
cooperative protocol the callbacks carry the change only; ``owned`` is the
set it owns after it), and ``{"event": "record", "partition", "offset",
"value"}`` per record read. It polls until killed.
"""

from __future__ import annotations

import json
import os
import time


def read_events(path: str) -> list:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def owned(path: str):
    """The partitions the consumer of ``path`` owns by its last event (None before its first)."""
    last = None
    for e in read_events(path):
        if e["event"] in ("assign", "revoke"):
            last = e
    return None if last is None else set(last["owned"])


def group_consumer(bootstrap: str, group: str, topic: str, out_path: str, config: dict) -> None:
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "heartbeat.interval.ms": 200, "session.timeout.ms": 6000,
            "topic.metadata.refresh.interval.ms": 1000, **config}
    cooperative = conf.get("partition.assignment.strategy") == "cooperative-sticky"
    mine: set = set()
    out = open(out_path, "a", buffering=1)

    def emit(event, **kw):
        out.write(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **kw}) + "\n")

    def on_assign(c, parts):
        nonlocal mine
        got = {p.partition for p in parts}
        mine = mine | got if cooperative else got
        emit("assign", owned=sorted(mine))

    def on_revoke(c, parts):
        nonlocal mine
        mine = mine - {p.partition for p in parts} if cooperative else set()
        emit("revoke", owned=sorted(mine))

    c = Consumer(conf)
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    while True:
        m = c.poll(0.05)
        if m is not None and m.error() is None:
            emit("record", partition=m.partition(), offset=m.offset(), value=m.value().decode())
