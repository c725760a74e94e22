"""Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.

This broker is every group's coordinator. Membership and rebalances are
``kafka/groups.py``'s (the classic protocol: the leader assigns, the broker
relays); committed offsets are the supervisor's group coordinator's, the same
store as the Python API's (``broker.coordinator``: its thread-safe methods).

A group id belongs either to Kafka clients or to the Python API: a JoinGroup
or OffsetCommit for a group with Python API members (or offsets they
committed) is answered INCONSISTENT_GROUP_PROTOCOL, and the reason is logged.
Reading a group is allowed whatever its kind: ListGroups, DescribeGroups and
OffsetFetch show Python API groups too (protocol type ``shmbus``, members
without metadata), so Kafka tools can watch their lag. Without a coordinator
(the listener run outside a supervisor) every group API answers
COORDINATOR_NOT_AVAILABLE.

Offsets: a commit's metadata string is checked (at most 4096 bytes,
OFFSET_METADATA_TOO_LARGE) but not kept: OffsetFetch answers ``""``; a
negative offset is answered OFFSET_OUT_OF_RANGE; a partition that does not
exist UNKNOWN_TOPIC_OR_PARTITION.
"""

from __future__ import annotations

import os
import threading

from kafka.protocol.admin.groups import (DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
                                         DescribeGroupsResponse, ListGroupsRequest, ListGroupsResponse)
from kafka.protocol.consumer.group import (HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
                                           LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
                                           OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
                                           SyncGroupRequest, SyncGroupResponse)
from kafka.protocol.metadata import FindCoordinatorRequest, FindCoordinatorResponse

from shmbus.core import paths
from shmbus.errors import InvalidTopicError
from shmbus.kafka.groups import KafkaGroups
from shmbus.kafka.handlers import errors as E
from shmbus.kafka.registry import MalformedRequest, handles
from shmbus.records import TopicPartition

KIND = "kafka"
MAX_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes
OFFSET_METADATA_TOO_LARGE = 12
GROUP_OPERATIONS = {3, 6, 8}  # READ, DELETE, DESCRIBE: everything a group allows (no ACLs here)
GROUP_KEY, TXN_KEY = 0, 1


_create_lock = threading.Lock()


def registry(session) -> KafkaGroups | None:
    """The listener's Kafka groups, attached to the supervisor's coordinator; None without one."""
    b = session.broker
    c = b.coordinator
    if c is None:
        return None
    reg = b.kafka_groups
    if reg is None:
        with _create_lock:
            if b.kafka_groups is None:
                b.kafka_groups = KafkaGroups(b.log)
            reg = b.kafka_groups
    if c.foreign is not reg:
        c.attach_foreign(reg)
    return reg


def _call(session, fn, *args):
    """A coordinator call; (result, None) or (None, COORDINATOR_NOT_AVAILABLE) when it is stopped."""
    try:
        return fn(*args), None
    except ConnectionError as e:  # the coordinator's CoordinatorUnavailable (a higher layer's class)
        session.broker.log(f"kafka listener: group coordinator unavailable: {e}")
        return None, E.COORDINATOR_NOT_AVAILABLE


def _check_group_id(gid) -> bool:
    """A group id the bus can keep: not empty, and its checkpoint's file name (the id %-quoted) fits."""
    return isinstance(gid, str) and gid != "" and len(os.path.basename(paths.checkpoint_path("", gid))) <= 255


# --- FindCoordinator ---
@handles(FindCoordinatorRequest, FindCoordinatorResponse, 0, 4)
def find_coordinator(session, req):
    b = session.broker
    version = req.API_VERSION
    key_type = req.key_type if version >= 1 else GROUP_KEY
    keys = list(req.coordinator_keys) if version >= 4 else [req.key]

    def one(key):
        if key_type == TXN_KEY:
            return E.COORDINATOR_NOT_AVAILABLE, "transactions are not supported by this broker"
        if key_type != GROUP_KEY:
            return E.INVALID_REQUEST, f"unknown key_type={key_type}"
        if b.coordinator is None:
            return E.COORDINATOR_NOT_AVAILABLE, "no group coordinator runs (start the listener with shmbus serve)"
        if not _check_group_id(key):
            return E.INVALID_GROUP_ID, "the group id is empty"
        return E.NONE, None

    if version >= 4:
        C = FindCoordinatorResponse.Coordinator
        out = []
        for k in keys:
            err, msg = one(k)
            out.append(C(key=k, node_id=b.node_id if not err else -1, host=b.host if not err else "",
                         port=b.port if not err else -1, error_code=err, error_message=msg))
        return FindCoordinatorResponse(throttle_time_ms=0, coordinators=out)
    err, msg = one(req.key)
    return FindCoordinatorResponse(throttle_time_ms=0, error_code=err, error_message=msg,
                                   node_id=b.node_id if not err else -1, host=b.host if not err else "",
                                   port=b.port if not err else -1)


# --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup ---
@handles(JoinGroupRequest, JoinGroupResponse, 0, 9)
def join_group(session, req):
    version = req.API_VERSION

    def answer(err, gen=-1, proto=None, leader="", member_id=req.member_id, members=()):
        M = JoinGroupResponse.JoinGroupResponseMember
        return JoinGroupResponse(throttle_time_ms=0, error_code=err, generation_id=gen,
                                 protocol_type=req.protocol_type if proto is not None else None,
                                 protocol_name=proto if version >= 7 or proto is not None else "",
                                 leader=leader, skip_assignment=False, member_id=member_id,
                                 members=[M(member_id=i, group_instance_id=s, metadata=md) for i, s, md in members])

    reg = registry(session)
    if reg is None:
        return answer(E.COORDINATOR_NOT_AVAILABLE)
    if not _check_group_id(req.group_id):
        return answer(E.INVALID_GROUP_ID)
    reg.begin_join(req.group_id)
    try:
        why, err = _call(session, session.broker.coordinator.claim_group, req.group_id, KIND)
    except BaseException:
        reg.end_join(req.group_id)
        raise
    if err or why is not None:
        reg.end_join(req.group_id)
        if why is not None:
            session.broker.log(f"kafka listener: JoinGroup refused (INCONSISTENT_GROUP_PROTOCOL) for {session}: {why}")
        return answer(err or E.INCONSISTENT_GROUP_PROTOCOL)
    protocols = [(p.name, bytes(p.metadata) if p.metadata is not None else b"") for p in req.protocols]
    instance_id = req.group_instance_id if version >= 5 else None
    rebalance_ms = req.rebalance_timeout_ms if version >= 1 else req.session_timeout_ms
    err, gen, proto, leader, mid, members = reg.join(
        session, req.group_id, req.member_id or "", instance_id, req.protocol_type, protocols,
        req.session_timeout_ms, rebalance_ms, require_known_id=version >= 4)
    return answer(err, gen, proto, leader, mid, members)


@handles(SyncGroupRequest, SyncGroupResponse, 0, 5)
def sync_group(session, req):
    version = req.API_VERSION
    reg = registry(session)
    if reg is None:
        return SyncGroupResponse(throttle_time_ms=0, error_code=E.COORDINATOR_NOT_AVAILABLE, assignment=b"")
    assignments = {}
    for a in req.assignments or ():
        if a.member_id in assignments:
            raise MalformedRequest(f"SyncGroup assigns member_id={a.member_id!r} twice")
        assignments[a.member_id] = bytes(a.assignment) if a.assignment is not None else b""
    err, ptype, proto, data = reg.sync(
        req.group_id, req.member_id, req.group_instance_id if version >= 3 else None, req.generation_id,
        req.protocol_type if version >= 5 else None, req.protocol_name if version >= 5 else None, assignments)
    return SyncGroupResponse(throttle_time_ms=0, error_code=err, protocol_type=ptype, protocol_name=proto,
                             assignment=data)


@handles(HeartbeatRequest, HeartbeatResponse, 0, 4)
def heartbeat(session, req):
    reg = registry(session)
    if reg is None:
        return HeartbeatResponse(throttle_time_ms=0, error_code=E.COORDINATOR_NOT_AVAILABLE)
    err = reg.heartbeat(req.group_id, req.member_id, req.group_instance_id if req.API_VERSION >= 3 else None,
                        req.generation_id)
    return HeartbeatResponse(throttle_time_ms=0, error_code=err)


@handles(LeaveGroupRequest, LeaveGroupResponse, 0, 5)
def leave_group(session, req):
    version = req.API_VERSION
    reg = registry(session)
    if reg is None:
        return LeaveGroupResponse(throttle_time_ms=0, error_code=E.COORDINATOR_NOT_AVAILABLE, members=[])
    if version >= 3:
        who = [(m.member_id or "", m.group_instance_id) for m in req.members]
    else:
        who = [(req.member_id, None)]
    err, out = reg.leave(req.group_id, who)
    R = LeaveGroupResponse.MemberResponse
    return LeaveGroupResponse(throttle_time_ms=0, error_code=err if version < 3 else E.NONE,
                              members=[R(member_id=m, group_instance_id=i, error_code=e) for m, i, e in out])


# --- offsets ---
@handles(OffsetCommitRequest, OffsetCommitResponse, 0, 8)
def offset_commit(session, req):
    version = req.API_VERSION
    b = session.broker
    T, P = OffsetCommitResponse.OffsetCommitResponseTopic, OffsetCommitResponse.OffsetCommitResponseTopic.OffsetCommitResponsePartition

    def everyone(err):
        return OffsetCommitResponse(throttle_time_ms=0, topics=[
            T(name=t.name, partitions=[P(partition_index=p.partition_index, error_code=err) for p in t.partitions])
            for t in req.topics])

    reg = registry(session)
    if reg is None:
        return everyone(E.COORDINATOR_NOT_AVAILABLE)
    if not _check_group_id(req.group_id):
        return everyone(E.INVALID_GROUP_ID)
    generation = req.generation_id_or_member_epoch if version >= 1 else -1
    member_id = req.member_id if version >= 1 else ""
    err = reg.check_commit(req.group_id, member_id, req.group_instance_id if version >= 7 else None, generation)
    if err:
        return everyone(err)
    codes: dict = {}
    offsets = []
    for t in req.topics:
        try:
            meta = b.topic(t.name)
        except InvalidTopicError:
            meta = None
        for p in t.partitions:
            key = (t.name, p.partition_index)
            if meta is None or not 0 <= p.partition_index < meta.partitions:
                codes[key] = E.UNKNOWN_TOPIC_OR_PARTITION
            elif p.committed_metadata is not None and len(p.committed_metadata.encode()) > MAX_METADATA_BYTES:
                codes[key] = OFFSET_METADATA_TOO_LARGE
            elif p.committed_offset < 0:
                codes[key] = E.OFFSET_OUT_OF_RANGE
            else:
                codes[key] = E.NONE
                offsets.append((t.name, p.partition_index, p.committed_offset))
    if offsets:
        why, err = _call(session, b.coordinator.commit_offsets, req.group_id, KIND, offsets, max(generation, 0))
        if err or why is not None:
            if why is not None:
                b.log(f"kafka listener: OffsetCommit refused (INCONSISTENT_GROUP_PROTOCOL) for {session}: {why}")
            for t, p, _ in offsets:
                codes[(t, p)] = err or E.INCONSISTENT_GROUP_PROTOCOL
    return OffsetCommitResponse(throttle_time_ms=0, topics=[
        T(name=t.name, partitions=[P(partition_index=p.partition_index, error_code=codes[(t.name, p.partition_index)])
                                   for p in t.partitions]) for t in req.topics])


@handles(OffsetFetchRequest, OffsetFetchResponse, 0, 7)
def offset_fetch(session, req):
    version = req.API_VERSION
    b = session.broker
    T = OffsetFetchResponse.OffsetFetchResponseTopic
    P = T.OffsetFetchResponsePartition

    def part(i, off, err=E.NONE):
        return P(partition_index=i, committed_offset=off, committed_leader_epoch=-1, metadata="", error_code=err)

    def fail(err):
        if version >= 2:
            return OffsetFetchResponse(throttle_time_ms=0, error_code=err, topics=[])
        return OffsetFetchResponse(throttle_time_ms=0, error_code=err, topics=[
            T(name=t.name, partitions=[part(i, -1, err) for i in t.partition_indexes]) for t in req.topics or ()])

    if registry(session) is None:
        return fail(E.COORDINATOR_NOT_AVAILABLE)
    if not _check_group_id(req.group_id):
        return fail(E.INVALID_GROUP_ID)
    if req.topics is None:
        got, err = _call(session, b.coordinator.read_offsets, req.group_id, None)
        if err:
            return fail(err)
        by_topic: dict = {}
        for tp, off in sorted(got.items()):
            by_topic.setdefault(tp.topic, []).append(part(tp.partition, off))
        topics = [T(name=t, partitions=ps) for t, ps in by_topic.items()]
    else:
        want = [TopicPartition(t.name, i) for t in req.topics for i in t.partition_indexes]
        got, err = _call(session, b.coordinator.read_offsets, req.group_id, want)
        if err:
            return fail(err)
        topics = [T(name=t.name, partitions=[part(i, got.get(TopicPartition(t.name, i), -1))
                                             for i in t.partition_indexes]) for t in req.topics]
    return OffsetFetchResponse(throttle_time_ms=0, error_code=E.NONE, topics=topics)


# --- ListGroups, DescribeGroups, DeleteGroups ---
def _protocol_type(kind: str) -> str:
    return "consumer" if kind == KIND else "shmbus"


@handles(ListGroupsRequest, ListGroupsResponse, 0, 4)
def list_groups(session, req):
    reg = registry(session)
    if reg is None:
        return ListGroupsResponse(throttle_time_ms=0, error_code=E.COORDINATOR_NOT_AVAILABLE, groups=[])
    rows, err = _call(session, session.broker.coordinator.overview)
    if err:
        return ListGroupsResponse(throttle_time_ms=0, error_code=err, groups=[])
    live = reg.listing()
    want = {s.lower() for s in (req.states_filter or ())} if req.API_VERSION >= 4 else set()
    G = ListGroupsResponse.ListedGroup
    out = []
    for r in rows:
        gid = r["group_id"]
        if r["kind"] == KIND:
            state, ptype = live.get(gid, ("Empty", "consumer"))
        else:
            state, ptype = r["state"], _protocol_type(r["kind"])
        if want and state.lower() not in want:
            continue
        out.append(G(group_id=gid, protocol_type=ptype, group_state=state))
    return ListGroupsResponse(throttle_time_ms=0, error_code=E.NONE, groups=out)


@handles(DescribeGroupsRequest, DescribeGroupsResponse, 0, 5)
def describe_groups(session, req):
    reg = registry(session)
    NO_OPERATIONS = GROUP_OPERATIONS if req.API_VERSION >= 3 and req.include_authorized_operations else None
    D = DescribeGroupsResponse.DescribedGroup
    M = D.DescribedGroupMember
    out = []
    for gid in req.groups:
        if reg is None:
            out.append(D(error_code=E.COORDINATOR_NOT_AVAILABLE, group_id=gid, group_state="", protocol_type="",
                         protocol_data="", members=[], authorized_operations=NO_OPERATIONS))
            continue
        snap = reg.snapshot(gid)
        if snap is not None:
            state, ptype, proto, ms = snap
            members = [M(member_id=i, group_instance_id=s, client_id=c, client_host=h, member_metadata=md,
                         member_assignment=a) for i, s, c, h, md, a in ms]
            out.append(D(error_code=E.NONE, group_id=gid, group_state=state, protocol_type=ptype,
                         protocol_data=proto, members=members, authorized_operations=NO_OPERATIONS))
            continue
        d, err = _call(session, session.broker.coordinator.call, session.broker.coordinator.describe, gid)
        if err:
            out.append(D(error_code=err, group_id=gid, group_state="", protocol_type="", protocol_data="",
                         members=[], authorized_operations=NO_OPERATIONS))
            continue
        kind = d.get("kind", "shmbus")
        members = [M(member_id=m["member_id"], group_instance_id=None, client_id=f"shmbus pid {m.get('pid', 0)}",
                     client_host="", member_metadata=b"", member_assignment=b"") for m in d.get("members", ())]
        state = d.get("state", "Dead")
        if kind == KIND and state not in ("Empty", "Dead"):
            state = "Empty"  # its members are gone since the snapshot above
            members = []
        out.append(D(error_code=E.NONE, group_id=gid, group_state=state,
                     protocol_type=_protocol_type(kind) if state != "Dead" else "",
                     protocol_data=d.get("strategy", "") if members else "", members=members,
                     authorized_operations=NO_OPERATIONS))
    return DescribeGroupsResponse(throttle_time_ms=0, groups=out)


@handles(DeleteGroupsRequest, DeleteGroupsResponse, 0, 2)
def delete_groups(session, req):
    reg = registry(session)
    R = DeleteGroupsResponse.DeletableGroupResult
    out = []
    for gid in req.groups_names:
        if reg is None:
            out.append(R(group_id=gid, error_code=E.COORDINATOR_NOT_AVAILABLE))
            continue
        if not _check_group_id(gid):
            out.append(R(group_id=gid, error_code=E.INVALID_GROUP_ID))
            continue
        if not reg.forget(gid):
            out.append(R(group_id=gid, error_code=E.NON_EMPTY_GROUP))
            continue
        res, err = _call(session, session.broker.coordinator.delete_group, gid, KIND)
        code = err or {"deleted": E.NONE, "not_found": E.GROUP_ID_NOT_FOUND}.get(res, E.NON_EMPTY_GROUP)
        out.append(R(group_id=gid, error_code=code))
    return DeleteGroupsResponse(throttle_time_ms=0, results=out)
