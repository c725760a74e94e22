"""The listener's request parser under hostile bytes: random frames and mutated valid requests over raw sockets.

Valid requests are built with kafka-python's protocol classes (Metadata that
would auto-create a topic, CreateTopics, Produce with a small batch,
JoinGroup, ApiVersions), then mutated: bit flips, truncation, length
prefixes that lie, huge array counts, a 2 GB length prefix, zero-length and
negative frames, frames just over the size limit, garbage after a valid
request, random API keys and versions, random frames. Each goes on its own
connection, from several threads at once.

Afterwards the supervisor is alive and answers, a real client still works,
no connection is left open, the supervisor's log says why connections
closed, and the bus changed only as the requests that decode intact say it
may: each connection's bytes are split into frames and decoded here exactly
as the listener does (``decode_request``, the registry's versions), stopping
at the first frame the listener would refuse; only topics named by a
Metadata (auto-creating) or a CreateTopics (not validate_only) among those
may appear, and records only through a Produce among those.

Seeded: ``SHMBUS_FUZZ_SEED`` replays a run (the seed is in the failure
message); bounded by ``SHMBUS_FUZZ_SECONDS`` (default 8) and a count.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest

from helpers.kafka import listener_status, recv_exact, supervisor_log
from helpers.waiting import wait_for

SEED = int(os.environ.get("SHMBUS_FUZZ_SEED", "20261207"))
SECONDS = float(os.environ.get("SHMBUS_FUZZ_SECONDS", "8"))
MAX_CASES = 1500
THREADS = 6
BASE_TOPIC = "fz-base"


@pytest.fixture(scope="module")
def fbus(tmp_path_factory):
    """A supervisor with a Kafka listener for the fuzz alone: (bootstrap, data_dir, bus)."""
    from shmbus import Bus

    from helpers.bus import cleanup_bus
    from helpers.kafka import start_listener

    d = str(tmp_path_factory.mktemp("fuzz") / "bus")
    try:
        boot = start_listener(d)
        b = Bus(d, autostart=False)
        try:
            b.create_topic(BASE_TOPIC, 2, {"ring.bytes": 65536})
            yield boot, d, b
        finally:
            b.close()
    finally:
        cleanup_bus(d)


# --- valid requests -----------------------------------------------------------------------------------------------

def _frame(req, correlation_id: int) -> bytes:
    req.with_header(correlation_id=correlation_id, client_id="fuzz")
    return req.encode(header=True, framed=True)


def _batch() -> bytes:
    from kafka.record.memory_records import MemoryRecordsBuilder

    b = MemoryRecordsBuilder(2, 0, 16384)
    for i in range(3):
        b.append(1_700_000_000_000 + i, f"k{i}".encode(), f"value {i}".encode())
    b.close()
    return bytes(b.buffer())


def valid_requests(rng: random.Random) -> list[bytes]:
    """Framed valid requests; the topics they name start with ``fz-`` (auto-created only if decoded intact)."""
    from kafka.protocol.admin import CreateTopicsRequest as C
    from kafka.protocol.consumer.group import JoinGroupRequest as J
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest as M
    from kafka.protocol.producer import ProduceRequest as P

    out = []
    cid = rng.randrange(1, 1 << 30)
    for v in (1, 4, 9, 12):
        topics = [M.MetadataRequestTopic(name=f"fz-meta-v{v}", topic_id=None)] if v >= 10 else \
            [M.MetadataRequestTopic(name=f"fz-meta-v{v}")]
        out.append(_frame(M(topics=topics, allow_auto_topic_creation=True, include_topic_authorized_operations=False,
                            include_cluster_authorized_operations=False, version=v), cid))
    for v in (0, 5, 7):
        t = C.CreatableTopic(name=f"fz-create-v{v}", num_partitions=2, replication_factor=1, assignments=[],
                             configs=[C.CreatableTopic.CreatableTopicConfig(name="ring.bytes", value="4096")])
        out.append(_frame(C(topics=[t], timeout_ms=1000, validate_only=v > 0, version=v), cid))
    batch = _batch()
    for v in (3, 9):
        pd = P.TopicProduceData.PartitionProduceData(index=0, records=batch)
        out.append(_frame(P(transactional_id=None, acks=1, timeout_ms=1000,
                            topic_data=[P.TopicProduceData(name=BASE_TOPIC, partition_data=[pd])], version=v), cid))
    for v in (1, 5):
        proto = J.JoinGroupRequestProtocol(name="range", metadata=b"\0\0\0\0\0\x01\0\x07fz-base\0\0\0\0")
        out.append(_frame(J(group_id="fz-group", session_timeout_ms=10000, rebalance_timeout_ms=10000, member_id="",
                            group_instance_id=None, protocol_type="consumer", protocols=[proto], reason=None,
                            version=v), cid))
    for v in (0, 3):
        out.append(_frame(ApiVersionsRequest(client_software_name="fuzz", client_software_version="1", version=v),
                          cid))
    return out


# --- mutations ----------------------------------------------------------------------------------------------------

def _reframe(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def mutate(rng: random.Random, frame: bytes, limit: int) -> tuple[str, bytes]:
    """(kind, bytes to send on one connection)."""
    body = bytearray(frame[4:])
    kind = rng.choice(["bitflip", "bitflip", "bitflip", "truncate", "size_long", "size_short", "huge_count",
                       "huge_count", "length_2g", "zero", "negative", "over_limit", "garbage_after", "header",
                       "random", "two_requests"])
    if kind == "bitflip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(body))
            body[i] ^= 1 << rng.randrange(8)
        return kind, _reframe(bytes(body))
    if kind == "truncate":
        return kind, _reframe(bytes(body[:rng.randrange(len(body))]))
    if kind == "size_long":  # the prefix says more than comes: the client closes inside the frame
        return kind, struct.pack(">i", len(body) + rng.randint(1, 1000)) + bytes(body)
    if kind == "size_short":  # the rest of the body is read as the next frame
        return kind, struct.pack(">i", rng.randrange(10, len(body))) + bytes(body)
    if kind == "huge_count":  # an int32 (array count, string length) or a varint made huge
        i = rng.randrange(10, max(len(body) - 4, 11))
        if rng.random() < 0.5:
            body[i:i + 4] = struct.pack(">i", rng.choice([0x7FFFFFFF, 0x40000000, -2, 1 << 24]))
        else:
            body[i:i + 5] = b"\xff\xff\xff\xff\x0f"
        return kind, _reframe(bytes(body))
    if kind == "length_2g":
        return kind, struct.pack(">i", 0x7FFFFFFF) + bytes(body)
    if kind == "zero":
        return kind, struct.pack(">i", 0) + bytes(body)
    if kind == "negative":
        return kind, struct.pack(">i", rng.choice([-1, -(1 << 31), -4]))
    if kind == "over_limit":
        return kind, struct.pack(">i", limit + rng.randint(1, 16)) + bytes(body[:64])
    if kind == "garbage_after":  # Kafka ignores bytes after a request's body, and so does the listener
        return kind, _reframe(bytes(body) + rng.randbytes(rng.randint(1, 64)))
    if kind == "header":
        struct.pack_into(">hh", body, 0, rng.choice([rng.randrange(-5, 80), 3, 19, 18]), rng.randrange(-2, 20))
        return kind, _reframe(bytes(body))
    if kind == "random":
        return kind, _reframe(rng.randbytes(rng.randint(0, 300)))
    # two_requests: a valid one, then a bit-flipped one, on one connection
    flipped = bytearray(body)
    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return kind, frame + _reframe(bytes(flipped))


# --- what the listener may do with a connection's bytes -----------------------------------------------------------

class Allowed:
    """What the frames that decode intact allow: topics created, records appended, topics deleted."""

    def __init__(self):
        self.topics: set[str] = set()
        self.produce = False
        self.other_writes: list = []
        self.decoded = 0
        self._lock = threading.Lock()

    def account(self, stream: bytes, limit: int) -> set:
        """Walk ``stream`` as the listener does; note what each request that decodes may change.

        Returns the api_keys of the requests that decoded intact."""
        from shmbus.kafka.registry import HANDLERS, MalformedRequest
        from shmbus.kafka.server import _HEAD, decode_request

        keys: set = set()
        pos = 0
        while len(stream) - pos >= 4:
            (size,) = struct.unpack_from(">i", stream, pos)
            pos += 4
            if size < _HEAD.size or size > limit or len(stream) - pos < size:
                return keys
            frame = bytearray(stream[pos:pos + size])
            pos += size
            api_key, version = struct.unpack_from(">hh", frame, 0)
            h = HANDLERS.get(api_key)
            if h is None or not h.min_version <= version <= h.max_version:
                return keys
            (cid_len,) = struct.unpack_from(">h", frame, 8)
            if cid_len > 0 and _HEAD.size + cid_len > len(frame):
                return keys
            try:
                req = decode_request(h.request, frame, version)
            except MalformedRequest:
                return keys
            self._note(api_key, req)
            keys.add(api_key)
        return keys

    def _note(self, api_key: int, req) -> None:
        with self._lock:
            self.decoded += 1
            if api_key == 3 and req.topics:  # Metadata
                if req.API_VERSION < 4 or req.allow_auto_topic_creation:
                    self.topics.update(t.name for t in req.topics if t.name)
            elif api_key == 19:  # CreateTopics
                if not req.validate_only:
                    self.topics.update(t.name for t in req.topics)
            elif api_key == 0:  # Produce (auto-creates the topics it names)
                self.produce = True
                self.topics.update(t.name for t in req.topic_data if t.name)
            elif api_key in (20, 33, 44):  # DeleteTopics, AlterConfigs, IncrementalAlterConfigs
                self.other_writes.append((api_key, req))


WAITING_APIS = {11, 14}  # JoinGroup, SyncGroup: answered when the group's rebalance completes


def _send_one(address, payload: bytes) -> str:
    """Send ``payload`` on a new connection, half-close, read until the listener closes; how it ended."""
    host, port = address
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.settimeout(5)
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return "closed while sending"
            got = 0
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    return "timeout"
                except OSError:
                    return "reset"
                if not chunk:
                    return "answered" if got else "closed"
                got += len(chunk)
    except OSError as e:
        return f"connect failed: {e}"


def _anon_bytes(pid: int) -> int:
    """The process's resident anonymous memory (its heap; not the shared memory it maps)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def _state(bus):
    topics = set(bus.list_topics())
    ends = {(t, p.partition): p.end_offset for t in sorted(topics) if t.startswith("fz-")
            for p in bus.describe_topic(t).partitions}
    return topics, ends


@pytest.mark.timeout(180)
def test_hostile_bytes_close_connections_and_change_nothing(fbus):
    from kafka import KafkaAdminClient

    from shmbus.client import control
    from shmbus.kafka.server import MAX_REQUEST_BYTES

    boot, d, bus = fbus
    host, port = boot.rsplit(":", 1)
    address = (host, int(port))
    pid = control.request(d, {"cmd": "status"})["pid"]
    anon_before = _anon_bytes(pid)
    topics_before, ends_before = _state(bus)
    rng = random.Random(SEED)
    bases = valid_requests(rng)
    cases = []
    while len(cases) < MAX_CASES:
        kind, payload = mutate(rng, rng.choice(bases), MAX_REQUEST_BYTES)
        cases.append((kind, payload))
    # the cases every run must have, whatever the seed
    cases[:0] = [("length_2g", struct.pack(">i", 0x7FFFFFFF) + b"x" * 100), ("zero", b"\0\0\0\0"),
                 ("over_limit", struct.pack(">i", MAX_REQUEST_BYTES + 1) + b"x" * 100),
                 ("garbage_after", _reframe(bases[0][4:] + b"\xde\xad\xbe\xef"))]
    allowed = Allowed()
    outcomes: dict = {}
    done = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS
    work = iter(enumerate(cases))
    failures = []

    def worker():
        while time.monotonic() < deadline:
            with lock:
                item = next(work, None)
            if item is None:
                return
            _, (kind, payload) = item
            decoded = allowed.account(payload, MAX_REQUEST_BYTES)
            how = _send_one(address, payload)
            if how == "timeout" and decoded & WAITING_APIS:
                how = "waited"  # an intact JoinGroup or SyncGroup waits for its rebalance (up to its timeout)
            with lock:
                outcomes[(kind, how)] = outcomes.get((kind, how), 0) + 1
                done[0] += 1
                if how.startswith("connect failed") or how == "timeout":
                    failures.append((kind, how, payload[:80].hex()))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 60)
    ctx = f"seed={SEED} cases={done[0]} outcomes={sorted(outcomes.items())}"
    assert done[0] >= 50, ctx
    assert not failures, (ctx, failures[:5])

    # alive, answering, every connection gone, and a real client still served
    st = control.request(d, {"cmd": "status"})
    assert st["pid"] > 0 and st["kafka_listener"] is not None, ctx
    wait_for(lambda: listener_status(d)["connections"] == 0, 30, f"every fuzz connection to close ({ctx})")
    admin = KafkaAdminClient(bootstrap_servers=boot, request_timeout_ms=10000)
    try:
        listed = set(admin.list_topics())
    finally:
        admin.close()
    assert BASE_TOPIC in listed, ctx

    # the 2 GB prefix was refused before any allocation: anonymous memory (the rings of created topics are
    # shared memory, which RSS counts too) grew by less than it, allowing for the partitions that intact
    # CreateTopics requests made (a bit flip in num_partitions makes thousands: ~50 KiB each to spill)
    made = sum(len(bus.describe_topic(t).partitions) for t in set(bus.list_topics()) - topics_before)
    assert _anon_bytes(pid) < anon_before + 512 * 2**20 + made * 256 * 1024, (ctx, made)
    log = supervisor_log(d)
    assert f"request size {0x7FFFFFFF} outside 10..{MAX_REQUEST_BYTES}" in log, ctx
    assert "request size 0 outside" in log and f"request size {MAX_REQUEST_BYTES + 1} outside" in log, ctx
    assert "does not decode" in log or "is truncated" in log, ctx
    assert "internal error" not in log, (ctx, [ln for ln in log.splitlines() if "internal error" in ln][:3])

    # the bus changed only as intact requests allow
    topics_after, ends_after = _state(bus)
    assert topics_before - topics_after == set() or allowed.other_writes, (ctx, topics_before - topics_after)
    created = topics_after - topics_before
    assert created <= allowed.topics, (ctx, created - allowed.topics)
    assert "fz-meta-v1" in created, ctx  # the intact Metadata with trailing bytes auto-created it
    if not allowed.produce:
        assert {k: v for k, v in ends_after.items() if k[0] in topics_before} == ends_before, ctx
    assert allowed.decoded > 0, ctx


@pytest.mark.timeout(60)
def test_connections_beyond_the_limit_are_closed_at_once(kbus):
    """A listener with max_connections=3 (in this process, on the kbus bus): the 4th is closed, and logged."""
    from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

    from shmbus.kafka.server import KafkaListener

    logs = []
    lst = KafkaListener(kbus.data_dir, "127.0.0.1", 0, log=logs.append, max_connections=3)
    lst.start()
    socks = []
    try:
        def api_versions(s):
            s.sendall(_frame(ApiVersionsRequest(version=0), 5))
            (n,) = struct.unpack(">i", recv_exact(s, 4))
            return ApiVersionsResponse.decode(recv_exact(s, n), version=0, header=True).error_code

        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
            socks.append(s)
            assert api_versions(s) == 0
        extra = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
        try:
            assert extra.recv(1) == b""
        except ConnectionResetError:
            pass
        extra.close()
        assert lst.status()["refused"] == 1 and lst.status()["connections"] == 3
        assert any("refused a connection" in m and "3 connections open already" in m for m in logs), logs
        socks.pop().close()
        wait_for(lambda: lst.status()["connections"] == 2, 10, "the closed connection to be gone")
        s = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
        socks.append(s)
        assert api_versions(s) == 0
    finally:
        for s in socks:
            s.close()
        lst.close()


@pytest.mark.timeout(60)
def test_an_unauthenticated_connection_is_closed_after_the_auth_deadline(kbus, monkeypatch):
    """With SASL, a connection that keeps asking ApiVersions but never authenticates is closed (in this process)."""
    from kafka.protocol.metadata import ApiVersionsRequest

    from shmbus.kafka import server

    monkeypatch.setattr(server, "AUTH_TIMEOUT_S", 1.0)
    logs = []
    lst = server.KafkaListener(kbus.data_dir, "127.0.0.1", 0, log=logs.append, sasl_users={"alice": "pw"})
    lst.start()
    try:
        with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
            closed = False
            deadline = time.monotonic() + 20
            while not closed and time.monotonic() < deadline:
                try:
                    s.sendall(_frame(ApiVersionsRequest(version=0), 5))
                    (n,) = struct.unpack(">i", recv_exact(s, 4))
                    recv_exact(s, n)
                except (ConnectionError, OSError):
                    closed = True
                time.sleep(0.1)
            assert closed
        wait_for(lambda: any("not authenticated within 1 s" in m for m in logs), 10, f"the reason in {logs}")
    finally:
        lst.close()


META_CID = 0x4D455441  # the correlation id of the Metadata request sent after each mutated SASL exchange


def _responses(data: bytes) -> list[int]:
    """Correlation ids of the response frames in ``data`` (raw SASL tokens, 4-byte frames, are skipped)."""
    out, pos = [], 0
    while len(data) - pos >= 8:
        (n,) = struct.unpack_from(">i", data, pos)
        if n >= 4:
            out.append(struct.unpack_from(">i", data, pos + 4)[0])
        pos += 4 + max(n, 0)
    return out


def _exchange(address, payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                return got
            if not chunk:
                return got
            got += chunk


@pytest.mark.timeout(120)
def test_mutated_sasl_exchanges_never_authenticate(kbus):
    """A wrong password's SASL exchanges (v1 + SaslAuthenticate, v0 + raw token), mutated, then a Metadata:
    the Metadata is never answered, and nothing fails inside the listener (in this process)."""
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

    from shmbus.kafka.server import KafkaListener

    logs = []
    lst = KafkaListener(kbus.data_dir, "127.0.0.1", 0, log=logs.append,
                        sasl_users={"alice": "correct horse battery staple"})
    lst.start()
    rng = random.Random(SEED + 1)
    meta = _frame(MetadataRequest(topics=None, version=1), META_CID)
    wrong = b"\0alice\0wrong-password-xyz"
    bases = [
        _frame(SaslHandshakeRequest(mechanism="PLAIN", version=1), 1)
        + _frame(SaslAuthenticateRequest(auth_bytes=wrong, version=2), 2),
        _frame(SaslHandshakeRequest(mechanism="PLAIN", version=0), 1) + _reframe(wrong),
        _frame(SaslHandshakeRequest(mechanism="PLAIN", version=1), 1)
        + _frame(SaslAuthenticateRequest(auth_bytes=b"alice\0alice\0" + b"x" * 40, version=0), 2),
    ]
    answered = []
    deadline = time.monotonic() + SECONDS
    n = 0
    try:
        while time.monotonic() < deadline and n < 600:
            base = bytearray(rng.choice(bases))
            kind = rng.choice(["flip", "flip", "cut", "none"])
            if kind == "flip":
                for _ in range(rng.randint(1, 3)):
                    i = rng.randrange(4, len(base))
                    base[i] ^= 1 << rng.randrange(8)
            elif kind == "cut":
                base = base[:rng.randrange(4, len(base))]
            got = _exchange(("127.0.0.1", lst.port), bytes(base) + meta)
            if META_CID in _responses(got):
                answered.append((kind, bytes(base).hex()))
            n += 1
        assert n >= 20
        assert not answered, (SEED + 1, answered[:3])
        assert not [m for m in logs if "internal error" in m], logs[:3]
        assert any("authentication failed" in m for m in logs)
        wait_for(lambda: lst.status()["connections"] == 0, 20, "every connection to close")
    finally:
        lst.close()


@pytest.mark.parametrize("api", ["produce", "join_group"])
def test_a_null_where_the_schema_allows_none_is_malformed(api):
    """kafka-python decodes a count of -1 as None even where Kafka's schema does not allow null: refused at decode."""
    from kafka.protocol.consumer.group import JoinGroupRequest as J
    from kafka.protocol.producer import ProduceRequest as P

    from shmbus.kafka.registry import MalformedRequest
    from shmbus.kafka.server import decode_request

    if api == "produce":
        req = P(transactional_id=None, acks=1, timeout_ms=1000,
                topic_data=[P.TopicProduceData(name="t", partition_data=[])], version=3)
        where = "topic_data.partition_data"
    else:
        req = J(group_id="g", session_timeout_ms=10000, rebalance_timeout_ms=10000, member_id="",
                group_instance_id=None, protocol_type="consumer", protocols=[], reason=None, version=1)
        where = "protocols"
    req.with_header(correlation_id=1, client_id="t")
    frame = bytearray(req.encode(header=True))
    assert frame[-4:] == b"\0\0\0\0"  # the empty array's count: the last field of both requests
    decode_request(type(req), bytes(frame), req.API_VERSION)  # intact: decodes
    frame[-4:] = b"\xff\xff\xff\xff"
    with pytest.raises(MalformedRequest, match=f"has a null {where}"):
        decode_request(type(req), bytes(frame), req.API_VERSION)
