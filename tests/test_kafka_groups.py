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

from helpers.kafka import recv_exact
from helpers.kafka_consumer import group_consumer, owned, read_events
from helpers.waiting import wait_for


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


# --- committed offsets: the same store as the Python API's ---

def _consumer(bootstrap, group, **extra):
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "heartbeat.interval.ms": 200, "session.timeout.ms": 6000,
                     **extra})


def _wait_assigned(c, n, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c.poll(0.05)
        if len(c.assignment()) == n:
            return
    raise AssertionError(f"the consumer was not assigned {n} partitions within {timeout_s} s: {c.assignment()}")


def _produce(bus, topic, per_partition, partitions):
    with bus.producer() as p:
        for part in range(partitions):
            for i in range(per_partition):
                p.send(topic, value=b"x%d" % i, partition=part)
        p.flush()


def _cli(data_dir, *args):
    r = subprocess.run([sys.executable, "-m", "shmbus", *args, "--data-dir", data_dir], capture_output=True,
                       text=True, timeout=60, env={**os.environ})
    assert r.returncode == 0, r.stderr
    return r.stdout


def _commit_and_check(bootstrap, data_dir, bus, topic, group):
    from confluent_kafka import TopicPartition

    c = _consumer(bootstrap, group)
    try:
        c.subscribe([topic])
        _wait_assigned(c, 4)
        c.commit(offsets=[TopicPartition(topic, p, 3 + p) for p in range(4)], asynchronous=False)
        got = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
        assert [(t.partition, t.offset) for t in got] == [(p, 3 + p) for p in range(4)]

        d = bus.describe_group(group)
        assert d.kind == "kafka" and d.state == "Stable" and len(d.members) == 1
        (m,) = d.members
        assert m.client_id == "rdkafka" and m.client_host == "127.0.0.1"
        assert {(tp.topic, tp.partition) for tp in m.assignment} == {(topic, p) for p in range(4)}
        assert {tp.partition: (o.committed, o.end_offset, o.lag) for tp, o in d.offsets.items()} == \
            {p: (3 + p, 10, 7 - p) for p in range(4)}

        j = json.loads(_cli(data_dir, "groups", "describe", group, "--json"))
        assert j["kind"] == "kafka" and j["members"][0]["client_id"] == "rdkafka"
        assert sorted((o["partition"], o["committed"], o["lag"]) for o in j["offsets"]) == \
            [(p, 3 + p, 7 - p) for p in range(4)]
        assert group in _cli(data_dir, "groups", "list").split()
    finally:
        c.close()


def test_commits_are_the_buses_committed_offsets_with_lag(kbus, ktopic):
    topic = ktopic(4)
    _produce(kbus.bus, topic, 10, 4)
    group = _gid()
    _commit_and_check(kbus.bootstrap, kbus.data_dir, kbus.bus, topic, group)
    d = kbus.bus.describe_group(group)  # the consumer closed (LeaveGroup): no member, the offsets stay
    assert d.state == "Empty" and d.members == []
    assert {tp.partition: o.committed for tp, o in d.offsets.items()} == {p: 3 + p for p in range(4)}
    assert group in kbus.bus.list_groups()


@pytest.mark.timeout(120)
def test_commits_survive_a_supervisor_restart(data_dir):
    from confluent_kafka import TopicPartition

    from shmbus import Bus

    from helpers.bus import cleanup_bus
    from helpers.kafka import start_listener

    group = _gid()
    try:
        bootstrap = start_listener(data_dir)
        with Bus(data_dir, autostart=False) as bus:
            bus.create_topic("t", 4)
            _produce(bus, "t", 10, 4)
            _commit_and_check(bootstrap, data_dir, bus, "t", group)
        cleanup_bus(data_dir)  # a clean stop: the checkpoint is written
        with open(os.path.join(data_dir, "groups", f"{group}.json")) as f:
            ck = json.load(f)
        assert ck["kind"] == "kafka" and ck["offsets"] == {"t": {str(p): 3 + p for p in range(4)}}
        with Bus(data_dir, autostart=False) as bus:  # no supervisor: the checkpoint answers
            d = bus.describe_group(group)
            assert d.kind == "kafka" and {tp.partition: o.committed for tp, o in d.offsets.items()} == \
                {p: 3 + p for p in range(4)}
        bootstrap = start_listener(data_dir)
        c = _consumer(bootstrap, group)
        try:
            got = c.committed([TopicPartition("t", p) for p in range(4)], timeout=10)
            assert [(t.partition, t.offset) for t in got] == [(p, 3 + p) for p in range(4)]
        finally:
            c.close()
        with Bus(data_dir, autostart=False) as bus:
            assert group in bus.list_groups()
            d = bus.describe_group(group)
            assert {tp.partition: o.committed for tp, o in d.offsets.items()} == {p: 3 + p for p in range(4)}
    finally:
        cleanup_bus(data_dir)


# --- admin clients ---

def test_kafka_python_admin_lists_describes_and_reads_offsets_of_groups(kbus, ktopic):
    from kafka import KafkaAdminClient
    from kafka.structs import TopicPartition as KTP
    from confluent_kafka import TopicPartition

    topic = ktopic(4)
    group = _gid()
    c = _consumer(kbus.bootstrap, group, **{"client.id": "lister"})
    admin = KafkaAdminClient(bootstrap_servers=kbus.bootstrap, request_timeout_ms=10000)
    try:
        c.subscribe([topic])
        _wait_assigned(c, 4)
        c.commit(offsets=[TopicPartition(topic, 1, 5)], asynchronous=False)
        listed = {row["group_id"]: row for row in admin.list_groups()}
        assert listed[group]["protocol_type"] == "consumer" and listed[group]["group_state"] == "Stable"
        desc = admin.describe_groups([group])[group]
        assert desc["error"] is None and desc["group_state"] == "Stable" and desc["protocol_type"] == "consumer"
        assert desc["protocol_data"] == "range"
        (m,) = desc["members"]
        assert m["client_id"] == "lister" and m["client_host"] == "127.0.0.1"
        assert sorted(m["member_assignment"]["assigned_partitions"][0]["partitions"]) == [0, 1, 2, 3]
        offs = admin.list_group_offsets(group)[group]
        assert {tp: o.offset for tp, o in offs.items()} == {KTP(topic, 1): 5}
        offs = admin.list_group_offsets({group: [KTP(topic, 0), KTP(topic, 1)]})[group]
        assert {tp: o.offset for tp, o in offs.items()} == {KTP(topic, 0): -1, KTP(topic, 1): 5}
        missing = admin.describe_groups(["no-such-group"])["no-such-group"]
        assert missing["group_state"] == "Dead"
    finally:
        c.close()
    try:
        ck = os.path.join(kbus.data_dir, "groups", f"{group}.json")
        wait_for(lambda: os.path.exists(ck), 5, "the group's checkpoint")
        assert dict(admin.delete_groups([group, "no-such-group"])) == \
            {group: "OK", "no-such-group": "GroupIdNotFoundError"}
        assert group not in kbus.bus.list_groups()
        wait_for(lambda: not os.path.exists(ck), 5, "the deleted group's checkpoint to be removed")
    finally:
        admin.close()


# --- one kind of member per group ---

def test_a_python_api_member_cannot_join_a_kafka_group(kbus, ktopic):
    from shmbus.errors import ShmbusError

    topic = ktopic(2)
    group = _gid()
    c = _consumer(kbus.bootstrap, group)
    try:
        c.subscribe([topic])
        _wait_assigned(c, 2)
        with pytest.raises(ShmbusError, match="Kafka client members"):
            kbus.bus.consumer(topic, group_id=group)
    finally:
        c.close()
    from confluent_kafka import TopicPartition

    # no member left, but offsets committed by Kafka clients keep the group theirs
    c = _consumer(kbus.bootstrap, group)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        c.close()
    wait_for(lambda: kbus.bus.describe_group(group).members == [], 10, "the Kafka members to be gone")
    with pytest.raises(ShmbusError, match="committed offsets of kafka consumers"):
        kbus.bus.consumer(topic, group_id=group)


def test_a_kafka_client_cannot_join_a_python_api_group(kbus, ktopic):
    topic = ktopic(2)
    group = _gid()
    with kbus.bus.consumer(topic, group_id=group) as sc:
        sc.poll(0.1)
        k = Raw(kbus.bootstrap)
        try:
            r = k.join(group, "")
            assert r.error_code == INCONSISTENT_GROUP_PROTOCOL
            r = k.commit(group, -1, "", topic, 0, 5)
            assert r.topics[0].partitions[0].error_code == INCONSISTENT_GROUP_PROTOCOL
        finally:
            k.close()
        assert f"group {group!r} has Python API (shmbus Consumer) members" in _log(kbus.data_dir)
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kbus.bootstrap, request_timeout_ms=10000)
        try:  # reading it is fine: Kafka tools see Python API groups (protocol type shmbus)
            listed = {row["group_id"]: row for row in admin.list_groups()}
            assert listed[group]["protocol_type"] == "shmbus"
            desc = admin.describe_groups([group])[group]
            assert desc["protocol_type"] == "shmbus" and len(desc["members"]) == 1
        finally:
            admin.close()


def _log(data_dir):
    from helpers.kafka import supervisor_log

    return supervisor_log(data_dir)


# --- odd and hostile requests, answered with Kafka's error codes ---

ILLEGAL_GENERATION, INCONSISTENT_GROUP_PROTOCOL, UNKNOWN_MEMBER_ID = 22, 23, 25
REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED, INVALID_SESSION_TIMEOUT, INVALID_GROUP_ID = 27, 79, 26, 24
NON_EMPTY_GROUP = 68


class Raw:
    """One connection speaking the Kafka protocol with kafka-python's schemas, a request at a time."""

    def __init__(self, bootstrap):
        import socket

        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.corr = 0

    def close(self):
        self.sock.close()

    def send(self, req, resp_cls, version):
        import struct

        self.corr += 1
        req.API_VERSION = version
        req.with_header(correlation_id=self.corr, client_id="raw-test")
        self.sock.sendall(req.encode(header=True, framed=True))
        size = struct.unpack(">i", self._recv(4))[0]
        body = self._recv(size)
        return resp_cls.decode(body, version=version, header=True)

    def _recv(self, n):
        return recv_exact(self.sock, n)

    def join(self, group, member_id, version=5, session_timeout_ms=6000, rebalance_timeout_ms=10000,
             protocols=(("range", b"meta"),), protocol_type="consumer", instance_id=None):
        from kafka.protocol.consumer.group import JoinGroupRequest, JoinGroupResponse

        P = JoinGroupRequest.JoinGroupRequestProtocol
        req = JoinGroupRequest(group_id=group, session_timeout_ms=session_timeout_ms,
                               rebalance_timeout_ms=rebalance_timeout_ms, member_id=member_id,
                               group_instance_id=instance_id, protocol_type=protocol_type,
                               protocols=[P(name=n, metadata=m) for n, m in protocols])
        return self.send(req, JoinGroupResponse, version)

    def join_fully(self, group):
        r = self.join(group, "")
        assert r.error_code == MEMBER_ID_REQUIRED and r.member_id
        r = self.join(group, r.member_id)
        assert r.error_code == 0, r
        return r

    def sync(self, group, gen, member_id, assignments=()):
        from kafka.protocol.consumer.group import SyncGroupRequest, SyncGroupResponse

        A = SyncGroupRequest.SyncGroupRequestAssignment
        req = SyncGroupRequest(group_id=group, generation_id=gen, member_id=member_id, group_instance_id=None,
                               assignments=[A(member_id=m, assignment=a) for m, a in assignments])
        return self.send(req, SyncGroupResponse, 3)

    def heartbeat(self, group, gen, member_id, instance_id=None):
        from kafka.protocol.consumer.group import HeartbeatRequest, HeartbeatResponse

        req = HeartbeatRequest(group_id=group, generation_id=gen, member_id=member_id, group_instance_id=instance_id)
        return self.send(req, HeartbeatResponse, 3)

    def commit(self, group, gen, member_id, topic, partition, offset):
        from kafka.protocol.consumer.group import OffsetCommitRequest, OffsetCommitResponse

        T = OffsetCommitRequest.OffsetCommitRequestTopic
        P = T.OffsetCommitRequestPartition
        req = OffsetCommitRequest(group_id=group, generation_id_or_member_epoch=gen, member_id=member_id,
                                  group_instance_id=None, retention_time_ms=-1, topics=[T(name=topic, partitions=[
                                      P(partition_index=partition, committed_offset=offset, committed_leader_epoch=-1,
                                        committed_metadata="")])])
        return self.send(req, OffsetCommitResponse, 7)


def test_join_with_an_unknown_member_id_is_refused(kbus):
    k = Raw(kbus.bootstrap)
    try:
        assert k.join(_gid(), "nobody-1234").error_code == UNKNOWN_MEMBER_ID
        assert k.join(_gid(), "", session_timeout_ms=5).error_code == INVALID_SESSION_TIMEOUT
        assert k.join("", "").error_code == INVALID_GROUP_ID
        assert k.join("é" * 100, "").error_code == INVALID_GROUP_ID  # its checkpoint's name would not fit
        assert k.commit("é" * 100, -1, "", "t", 0, 1).topics[0].partitions[0].error_code == INVALID_GROUP_ID
        group = _gid()
        k.join_fully(group)
        other = Raw(kbus.bootstrap)
        try:  # a protocol no member supports
            r = other.join(group, "", version=3, protocols=(("nonsense", b""),))
            assert r.error_code == INCONSISTENT_GROUP_PROTOCOL
        finally:
            other.close()
    finally:
        k.close()


def test_sync_with_a_stale_generation_and_heartbeat_during_a_rebalance(kbus):
    group = _gid()
    a = Raw(kbus.bootstrap)
    b = Raw(kbus.bootstrap)
    try:
        ra = a.join_fully(group)
        gen1 = ra.generation_id
        assert ra.leader == ra.member_id and [m.member_id for m in ra.members] == [ra.member_id]
        s = a.sync(group, gen1, ra.member_id, [(ra.member_id, b"all of it")])
        assert s.error_code == 0 and s.assignment == b"all of it"
        assert a.heartbeat(group, gen1, ra.member_id).error_code == 0
        assert a.sync(group, gen1 - 1, ra.member_id).error_code == ILLEGAL_GENERATION
        assert a.heartbeat(group, gen1 + 7, ra.member_id).error_code == ILLEGAL_GENERATION
        assert a.heartbeat(group, gen1, "who-is-this").error_code == UNKNOWN_MEMBER_ID
        assert a.commit(group, gen1 - 1, ra.member_id, "t", 0, 1).topics[0].partitions[0].error_code == \
            ILLEGAL_GENERATION

        # b joins: a rebalance; a's heartbeat says so until a joins again
        r = b.join(group, "")
        assert r.error_code == MEMBER_ID_REQUIRED
        b_id = r.member_id
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", b.join(group, b_id)))
        t.start()
        wait_for(lambda: a.heartbeat(group, gen1, ra.member_id).error_code == REBALANCE_IN_PROGRESS, 10,
                 "a's heartbeat to answer REBALANCE_IN_PROGRESS once b joins")
        assert "r" not in box  # b's JoinGroup waits for a to join again
        assert a.sync(group, gen1, ra.member_id).error_code == REBALANCE_IN_PROGRESS
        ra2 = a.join(group, ra.member_id)
        t.join(10)
        rb = box["r"]
        assert ra2.error_code == rb.error_code == 0 and ra2.generation_id == rb.generation_id == gen1 + 1
        assert ra2.leader == ra.member_id and sorted(m.member_id for m in ra2.members) == \
            sorted([ra.member_id, b_id]) and rb.members == []
        # the follower's SyncGroup waits for the leader's
        box2 = {}
        t = threading.Thread(target=lambda: box2.setdefault("r", b.sync(group, rb.generation_id, b_id)))
        t.start()
        time.sleep(0.2)
        assert "r" not in box2
        s = a.sync(group, ra2.generation_id, ra.member_id, [(ra.member_id, b"A"), (b_id, b"B")])
        t.join(10)
        assert s.assignment == b"A" and box2["r"].error_code == 0 and box2["r"].assignment == b"B"
        # the old generation is fenced
        assert a.sync(group, gen1, ra.member_id).error_code == ILLEGAL_GENERATION
    finally:
        a.close()
        b.close()
    # their connections closed: the group is empty at once
    wait_for(lambda: kbus.bus.describe_group(group).members == [], 5, "the members to be removed")


def test_a_group_with_members_cannot_be_deleted(kbus):
    from kafka.protocol.admin.groups import DeleteGroupsRequest, DeleteGroupsResponse

    group = _gid()
    a = Raw(kbus.bootstrap)
    try:
        a.join_fully(group)
        r = a.send(DeleteGroupsRequest(groups_names=[group]), DeleteGroupsResponse, 1)
        assert [(x.group_id, x.error_code) for x in r.results] == [(group, NON_EMPTY_GROUP)]
    finally:
        a.close()


def test_a_static_member_outlives_its_connection_and_its_restart_fences_the_old_id(kbus):
    FENCED_INSTANCE_ID = 82
    group = _gid()
    a = Raw(kbus.bootstrap)
    try:
        r1 = a.join(group, "", instance_id="web-1")  # static: no MEMBER_ID_REQUIRED round
        assert r1.error_code == 0 and r1.member_id.startswith("web-1-")
        assert a.sync(group, r1.generation_id, r1.member_id, [(r1.member_id, b"x")]).error_code == 0
    finally:
        a.close()
    time.sleep(0.3)  # a dynamic member would be gone by now
    (m,) = kbus.bus.describe_group(group).members
    assert m.member_id == r1.member_id
    b = Raw(kbus.bootstrap)
    try:
        r2 = b.join(group, "", instance_id="web-1")
        assert r2.error_code == 0 and r2.member_id != r1.member_id and r2.generation_id == r1.generation_id + 1
        assert b.heartbeat(group, r2.generation_id, r1.member_id, "web-1").error_code == FENCED_INSTANCE_ID
        assert [x.member_id for x in kbus.bus.describe_group(group).members] == [r2.member_id]
        from kafka.protocol.consumer.group import LeaveGroupRequest, LeaveGroupResponse

        M = LeaveGroupRequest.MemberIdentity
        r = b.send(LeaveGroupRequest(group_id=group, members=[M(member_id="", group_instance_id="web-1")]),
                   LeaveGroupResponse, 4)
        assert r.error_code == 0 and [(x.member_id, x.error_code) for x in r.members] == [(r2.member_id, 0)]
        assert kbus.bus.describe_group(group).members == []
    finally:
        b.close()


@pytest.mark.timeout(120)
def test_kafka_python_and_confluent_consumers_share_a_group(kbus, ktopic):
    from kafka import KafkaConsumer

    topic = ktopic(4)
    group = _gid()
    kp = KafkaConsumer(bootstrap_servers=kbus.bootstrap, group_id=group, enable_auto_commit=False,
                       heartbeat_interval_ms=200, session_timeout_ms=6000, request_timeout_ms=30000)
    c = None
    try:
        kp.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(kp.assignment()) != 4 and time.monotonic() < deadline:
            kp.poll(timeout_ms=50)
        assert {tp.partition for tp in kp.assignment()} == {0, 1, 2, 3}
        c = _consumer(kbus.bootstrap, group)
        c.subscribe([topic])

        def shared():
            kp.poll(timeout_ms=20)
            c.poll(0.02)
            a, b = {tp.partition for tp in kp.assignment()}, {tp.partition for tp in c.assignment()}
            return len(a) == len(b) == 2 and a | b == {0, 1, 2, 3}

        wait_for(shared, 30, "kafka-python and confluent-kafka consumers to own 2 partitions each")
        d = kbus.bus.describe_group(group)
        assert d.state == "Stable" and len(d.members) == 2
        assert sorted(len(m.assignment) for m in d.members) == [2, 2]
    finally:
        kp.close()
        if c is not None:
            c.close()


def test_find_coordinator_names_this_broker_for_groups_only(kbus):
    from kafka.protocol.metadata import FindCoordinatorRequest, FindCoordinatorResponse

    host, port = kbus.bootstrap.rsplit(":", 1)
    k = Raw(kbus.bootstrap)
    try:
        r = k.send(FindCoordinatorRequest(key="g1"), FindCoordinatorResponse, 0)
        assert (r.error_code, r.node_id, r.host, r.port) == (0, 0, host, int(port))
        r = k.send(FindCoordinatorRequest(key_type=0, coordinator_keys=["g1", "g2", ""]), FindCoordinatorResponse, 4)
        assert [(c.key, c.error_code, c.port) for c in r.coordinators] == \
            [("g1", 0, int(port)), ("g2", 0, int(port)), ("", INVALID_GROUP_ID, -1)]
        r = k.send(FindCoordinatorRequest(key_type=1, coordinator_keys=["txn"]), FindCoordinatorResponse, 4)
        assert r.coordinators[0].error_code == 15  # COORDINATOR_NOT_AVAILABLE: no transactions here
    finally:
        k.close()


def test_a_sync_that_assigns_a_member_twice_closes_the_connection(kbus):
    group = _gid()
    k = Raw(kbus.bootstrap)
    try:
        r = k.join_fully(group)
        with pytest.raises(ConnectionError, match="closed after 0 of 4 bytes"):
            k.sync(group, r.generation_id, r.member_id, [(r.member_id, b"a"), (r.member_id, b"b")])
    finally:
        k.close()
    assert "SyncGroup assigns member_id" in _log(kbus.data_dir)
    wait_for(lambda: kbus.bus.describe_group(group).members == [], 5, "the member to be removed")


def test_the_coordinator_takes_calls_from_other_threads_and_refuses_them_once_stopped(data_dir):
    """The Kafka listener's way into the coordinator: ``call`` runs in the coordinator's thread (many
    callers at once), and a stopped coordinator answers ConnectionError (COORDINATOR_NOT_AVAILABLE)."""
    from shmbus import Bus
    from shmbus.records import TopicPartition
    from shmbus.supervisor.groups import Coordinator

    with Bus(data_dir, autostart=False) as bus:
        bus.create_topic("t", 2)
        coord = Coordinator(bus.data_dir, log=lambda msg: None)
        coord.start()
        try:
            threads_seen = set()

            def work(i):
                assert coord.claim_group(f"k{i % 3}", "kafka") is None
                assert coord.commit_offsets(f"k{i % 3}", "kafka", [("t", i % 2, i)]) is None
                threads_seen.add(coord.call(lambda: threading.current_thread().name))

            ts = [threading.Thread(target=work, args=(i,)) for i in range(30)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert threads_seen == {"group-coordinator"}
            assert {r["group_id"]: r["kind"] for r in coord.overview()} == {"k0": "kafka", "k1": "kafka",
                                                                             "k2": "kafka"}
            assert set(coord.read_offsets("k0")) == {TopicPartition("t", 0), TopicPartition("t", 1)}
            with pytest.raises(ZeroDivisionError):  # the function's exception reaches the caller
                coord.call(lambda: 1 / 0)
            assert coord.delete_group("k0", "kafka") == "deleted"
            assert coord.delete_group("k0", "kafka") == "not_found"
        finally:
            coord.close()
        with pytest.raises(ConnectionError, match="stopped"):
            coord.claim_group("k1", "kafka")


def test_members_that_miss_the_rebalance_or_their_session_are_removed(kbus):
    group = _gid()
    a, b = Raw(kbus.bootstrap), Raw(kbus.bootstrap)
    try:
        ra = a.join_fully(group)
        r = b.join(group, "", rebalance_timeout_ms=1000, session_timeout_ms=1000)
        rb_box = {}
        t = threading.Thread(target=lambda: rb_box.setdefault("r", b.join(group, r.member_id, rebalance_timeout_ms=1000,
                                                                           session_timeout_ms=1000)))
        t.start()
        wait_for(lambda: a.heartbeat(group, ra.generation_id, ra.member_id).error_code == REBALANCE_IN_PROGRESS, 10,
                 "the rebalance b's join starts")
        ra2 = a.join(group, ra.member_id, rebalance_timeout_ms=1000, session_timeout_ms=1000)
        t.join(10)
        rb = rb_box["r"]
        assert ra2.generation_id == rb.generation_id
        # a commit in CompletingRebalance (before the leader's SyncGroup) waits for the next generation
        assert a.commit(group, ra2.generation_id, ra.member_id, "t", 0, 1).topics[0].partitions[0].error_code == \
            REBALANCE_IN_PROGRESS
        leader, follower = (a, b) if ra2.leader == ra.member_id else (b, a)
        lid = ra.member_id if leader is a else r.member_id
        assert leader.sync(group, ra2.generation_id, lid, []).error_code == 0
        # b goes quiet (no heartbeat, its connection open): its session (1 s) ends it; a rebalances alone
        quiet_id = r.member_id
        box = {}

        def a_rejoins_when_told():
            wait_for(lambda: a.heartbeat(group, ra2.generation_id, ra.member_id).error_code != 0, 20,
                     "a to hear of the rebalance")
            box["r"] = a.join(group, ra.member_id, rebalance_timeout_ms=1000, session_timeout_ms=1000)

        t = threading.Thread(target=a_rejoins_when_told)
        t.start()
        t.join(30)
        assert box["r"].error_code == 0 and [m.member_id for m in box["r"].members] == [ra.member_id]
        assert b.heartbeat(group, ra2.generation_id, quiet_id).error_code == UNKNOWN_MEMBER_ID
        assert "session timeout: member_id=" + quiet_id in _log(kbus.data_dir)
    finally:
        a.close()
        b.close()


def test_a_member_that_does_not_rejoin_within_the_rebalance_timeout_is_removed(kbus):
    group = _gid()
    c, d = Raw(kbus.bootstrap), Raw(kbus.bootstrap)
    try:
        r = c.join(group, "", rebalance_timeout_ms=1000)
        rc = c.join(group, r.member_id, rebalance_timeout_ms=1000)
        assert c.sync(group, rc.generation_id, rc.member_id, []).error_code == 0
        r = d.join(group, "", rebalance_timeout_ms=1000)
        rd = d.join(group, r.member_id, rebalance_timeout_ms=1000)  # waits for c, which never rejoins
        assert rd.error_code == 0 and rd.leader == rd.member_id and [m.member_id for m in rd.members] == [rd.member_id]
        assert c.heartbeat(group, rc.generation_id, rc.member_id).error_code == UNKNOWN_MEMBER_ID
        assert f"removed member_id={rc.member_id}: it did not rejoin within the rebalance timeout" in \
            _log(kbus.data_dir)
    finally:
        c.close()
        d.close()
