"""The public API: the admin calls of the Bus (topics, their configuration and names, groups).

Most tests share one bus (and its supervisor) per module (the ``sbus``
fixture, tests/conftest.py), each on topics of its own (``make_topic``),
because starting a supervisor costs ~2 s; tests that stop the supervisor,
count the bus's shared-memory objects or need a second bus take the per-test
``bus`` fixture instead.
"""

from __future__ import annotations

import os
import uuid

import pytest

from helpers.api import end_offsets, read_all, read_n

from shmbus import (
    Bus,
    InvalidConfigError,
    InvalidTopicError,
    RecordTooLargeError,
    TopicExistsError,
    TopicPartition,
    UnknownTopicError,
)

TP = TopicPartition


# --- admin -------------------------------------------------------------------------------

def test_unknown_topic(sbus, producer):
    with pytest.raises(UnknownTopicError):
        producer.send("no-such-topic", b"v")
    with pytest.raises(UnknownTopicError):
        producer.send_batch("no-such-topic", [b"v"])
    with pytest.raises(UnknownTopicError):
        sbus.consumer("no-such-topic")
    with sbus.consumer() as c:
        with pytest.raises(UnknownTopicError):
            c.subscribe(["no-such-topic"])
        with pytest.raises(UnknownTopicError):
            c.assign([TP("no-such-topic", 0)])
        with pytest.raises(UnknownTopicError):
            c.end_offsets([TP("no-such-topic", 0)])
    with pytest.raises(UnknownTopicError):
        sbus.describe_topic("no-such-topic")
    with pytest.raises(UnknownTopicError):
        sbus.delete_topic("no-such-topic")
    with pytest.raises(UnknownTopicError):
        sbus.alter_topic_config("no-such-topic", {"retention.ms": 1})
    assert "no-such-topic" not in sbus.list_topics()


@pytest.mark.parametrize("partitions, config, key", [
    (1, {"retention.ms": "soon"}, "retention.ms"),
    (1, {"ring.bytes": 100000}, "ring.bytes"),
    (1, {"ring.bytes": 1024}, "ring.bytes"),
    (1, {"no.such.key": 1}, "no.such.key"),
    (1, {"cleanup.policy": "forever"}, "cleanup.policy"),
    (1, {"max.message.bytes": 0}, "max.message.bytes"),
    (1, {"segment.bytes": True}, "segment.bytes"),
    (0, None, "partitions"),
    (2, {"ring.bytes": 4096, "retention.bytes": -2}, "retention.bytes"),
])
def test_bad_config_names_the_key_and_creates_nothing(sbus, partitions, config, key):
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    shm_before = sbus.shared_memory_names()
    topics_before = sbus.list_topics()
    files_before = sorted(os.listdir(os.path.join(sbus.data_dir, "topics")))
    with pytest.raises(InvalidConfigError, match=key.replace(".", r"\.")):
        sbus.create_topic(name, partitions, config)
    assert sbus.list_topics() == topics_before
    assert sbus.shared_memory_names() == shm_before
    assert sorted(os.listdir(os.path.join(sbus.data_dir, "topics"))) == files_before
    sbus.create_topic(name, 1)  # the name is free
    sbus.delete_topic(name)


def test_create_topic_twice(sbus, make_topic, producer):
    t = make_topic(2, {"retention.ms": 1234})
    producer.send(t, b"keep")
    with pytest.raises(TopicExistsError):
        sbus.create_topic(t)
    with pytest.raises(TopicExistsError):
        sbus.create_topic(t, 5, {"ring.bytes": 4096})
    d = sbus.describe_topic(t)
    assert len(d.partitions) == 2 and d.config["retention.ms"] == 1234
    assert sum(end_offsets(sbus, t)) == 1


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "sp ace", "x" * 250, "tab\t", "ümlaut", "a:b", None, 5])
def test_invalid_topic_names(sbus, name):
    with pytest.raises(InvalidTopicError):
        sbus.create_topic(name)
    with pytest.raises(InvalidTopicError):
        sbus.describe_topic(name)
    with pytest.raises(InvalidTopicError):
        sbus.delete_topic(name)
    with sbus.consumer() as c:
        with pytest.raises(InvalidTopicError):
            c.subscribe([name])


def test_valid_unusual_topic_names(sbus):
    names = ["x" * 249, "a.b-c_D9", "-", "..."]
    try:
        for n in names:
            sbus.create_topic(n)
        assert set(names) <= set(sbus.list_topics())
    finally:
        for n in names:
            try:
                sbus.delete_topic(n)
            except UnknownTopicError:
                pass


def test_list_describe_alter_delete_topics(bus):
    assert bus.list_topics() == []
    d = bus.create_topic("one", 3, {"retention.ms": "60000", "ring.bytes": 65536})
    bus.create_topic("two")
    assert bus.list_topics() == ["one", "two"]
    assert d.name == "one" and [p.partition for p in d.partitions] == [0, 1, 2]
    assert all((p.start_offset, p.end_offset) == (0, 0) for p in d.partitions)
    cfg = bus.describe_topic("one").config
    assert cfg == {"cleanup.policy": "delete", "retention.ms": 60000, "retention.bytes": -1,
                   "segment.bytes": 67108864, "segment.ms": 604800000, "max.message.bytes": 1048576,
                   "delete.retention.ms": 86400000, "min.compaction.lag.ms": 0, "ring.bytes": 65536,
                   "unblock.timeout.ms": 1000}
    with bus.producer() as p:
        p.send_batch("one", [b"x"] * 4, partition=1)
    d = bus.describe_topic("one")
    assert [(p.start_offset, p.end_offset) for p in d.partitions] == [(0, 0), (0, 4), (0, 0)]
    bus.alter_topic_config("one", {"max.message.bytes": 10, "cleanup.policy": "compact"})
    cfg2 = bus.describe_topic("one").config
    assert cfg2 == {**cfg, "max.message.bytes": 10, "cleanup.policy": "compact"}
    with pytest.raises(InvalidConfigError, match="ring.bytes"):
        bus.alter_topic_config("one", {"ring.bytes": 131072})
    with pytest.raises(InvalidConfigError, match="bogus"):
        bus.alter_topic_config("one", {"bogus": 1})
    assert bus.describe_topic("one").config == cfg2
    with bus.producer() as p:  # a new producer sees the new limit
        with pytest.raises(RecordTooLargeError):
            p.send("one", b"x" * 11)
    bus.delete_topic("one")
    assert bus.list_topics() == ["two"]
    with pytest.raises(UnknownTopicError):
        bus.describe_topic("one")
    assert not os.path.exists(os.path.join(bus.data_dir, "topics", "one"))


def test_delete_topic_then_send(bus):
    bus.create_topic("gone", 2)
    with bus.producer() as live:
        live.send("gone", b"before", partition=1)
        names = bus.shared_memory_names()
        with Bus(bus.data_dir, autostart=False) as admin:  # see the same-Bus tests below
            admin.delete_topic("gone")
        assert len(bus.shared_memory_names()) == len(names) - 2  # both rings unlinked
        with pytest.raises(UnknownTopicError):
            live.send("gone", b"after", partition=1)  # a producer that had the topic open
        with pytest.raises(UnknownTopicError):
            live.send_batch("gone", [b"after"], partition=1)
        with bus.producer() as fresh:
            with pytest.raises(UnknownTopicError):
                fresh.send("gone", b"after")
        # the same name again is a new, empty topic; the old producer follows it
        bus.create_topic("gone", 2)
        assert live.send("gone", b"new", partition=1).offset == 0
    assert [r.value for r in read_all(bus, "gone", 1)] == [b"new"]


def child_delete_under_clients(data_dir, scenario, q):
    """Delete a topic while clients of one Bus object use it; report what each saw.

    "bus": the clients' own Bus deletes it, then two producers send.
    "elsewhere": another Bus deletes it; producer 1 notices first, then producer 2 sends.
    "consumer": the consumer's own Bus deletes it, then the consumer polls.
    """
    from shmbus import Bus, UnknownTopicError

    seen = []

    def send(name, p):
        try:
            p.send("gone", b"late")
            seen.append(f"{name} sent")
        except UnknownTopicError:
            seen.append(f"{name} UnknownTopicError")

    with Bus(data_dir, autostart=False) as bus:
        bus.create_topic("gone")
        if scenario == "consumer":
            with bus.producer() as p:
                p.send("gone", b"one")
            c = bus.consumer("gone", auto_offset_reset="earliest")
            seen.append(len(read_n(c, 1)))
            bus.delete_topic("gone")
            try:
                seen.append(f"poll {len(c.poll(timeout_ms=100))}")
            except UnknownTopicError:
                seen.append("poll UnknownTopicError")
            except Exception as e:  # noqa: BLE001 (reported to the test)
                seen.append(f"poll {type(e).__name__}: {e}")
            c.close()
        else:
            p1, p2 = bus.producer(), bus.producer()
            p1.send("gone", b"one")
            p2.send("gone", b"two")
            if scenario == "bus":
                bus.delete_topic("gone")
            else:
                with Bus(data_dir, autostart=False) as admin:
                    admin.delete_topic("gone")
            send("p1", p1)
            send("p2", p2)
    q.put(seen)


def run_delete_scenario(data_dir, procs, scenario):
    from helpers.waiting import SPAWN

    q = SPAWN.Queue()
    p = procs.start(child_delete_under_clients, data_dir, scenario, q)
    procs.join_all(50)
    assert p.exitcode == 0, f"the process died: exitcode={p.exitcode}"
    return q.get(timeout=10)


@pytest.mark.timeout(60)
def test_delete_topic_through_the_bus_its_producers_use(data_dir, procs):
    assert run_delete_scenario(data_dir, procs, "bus") == ["p1 UnknownTopicError", "p2 UnknownTopicError"]


@pytest.mark.timeout(60)
def test_topic_deleted_elsewhere_under_two_producers_of_one_bus(data_dir, procs):
    assert run_delete_scenario(data_dir, procs, "elsewhere") == ["p1 UnknownTopicError", "p2 UnknownTopicError"]


@pytest.mark.timeout(60)
def test_delete_topic_through_the_bus_its_consumer_uses(data_dir, procs):
    seen = run_delete_scenario(data_dir, procs, "consumer")
    assert seen[0] == 1 and seen[1] in ("poll 0", "poll UnknownTopicError"), seen


def test_describe_group_that_does_not_exist_is_dead(sbus):
    g = sbus.describe_group("nobody")
    assert (g.group_id, g.state, g.members, g.offsets) == ("nobody", "Dead", [], {})
