"""Topic admin and SASL/PLAIN through the Kafka listener, with kafka-python's and confluent-kafka's admin clients.

What the clients do must be what the Python API sees (``Bus.describe_topic``),
bad input must get Kafka's error codes with shmbus's messages and change
nothing, and a listener with ``--kafka-sasl-users`` must serve only
authenticated connections.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import uuid

import pytest

from helpers.kafka import listener_status, read_frame, recv_exact, supervisor_log
from helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def _name(prefix="a"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kadmin(kbus):
    from kafka import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=kbus.bootstrap, request_timeout_ms=10000)
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def cadmin(kbus):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kbus.bootstrap})


def _cresults(futures):
    """{key: None | (code, name, message)} of a confluent-kafka admin call's futures."""
    from confluent_kafka import KafkaException

    out = {}
    for key, f in futures.items():
        try:
            out[key] = f.result()
        except KafkaException as e:
            err = e.args[0]
            out[key] = (err.code(), err.name(), err.str())
    return out


# --- kafka-python ------------------------------------------------------------------------------------------------

def test_kafka_python_creates_describes_alters_and_deletes(kbus, kadmin):
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    name = _name()
    r = kadmin.create_topics([NewTopic(name, 3, 1, topic_configs={"retention.ms": "60000",
                                                                    "cleanup.policy": "compact"})])
    (res,) = r["topics"]
    assert res["error_code"] == 0 and res["num_partitions"] == 3 and res["replication_factor"] == 1
    assert res["configs"]["retention.ms"]["value"] == "60000"
    d = kbus.bus.describe_topic(name)
    assert len(d.partitions) == 3
    assert d.config["retention.ms"] == 60000 and d.config["cleanup.policy"] == "compact"
    assert name in kadmin.list_topics()

    (desc,) = kadmin.describe_topics([name])
    assert desc["error_code"] == 0 and len(desc["partitions"]) == 3

    got = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all")
    cfg = got["topic"][name]
    assert set(cfg) == set(d.config)
    assert cfg["retention.ms"]["value"] == "60000" and cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert cfg["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"
    assert cfg["ring.bytes"]["read_only"] is True
    modified = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])["topic"][name]
    assert set(modified) == {"retention.ms", "cleanup.policy"}

    # kafka-python's default: IncrementalAlterConfigs (SET), other keys stay
    r = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": "999"})])
    assert r["topic"][name] == "OK"
    d = kbus.bus.describe_topic(name)
    assert d.config["retention.ms"] == 999 and d.config["cleanup.policy"] == "compact"
    # AlterConfigs: kafka-python sends the other modified keys along (AlterConfigs resets what it leaves out)
    r = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": "1234"})],
                             incremental=False)
    assert r["topic"][name] == "OK"
    d = kbus.bus.describe_topic(name)
    assert d.config["retention.ms"] == 1234 and d.config["cleanup.policy"] == "compact"

    r = kadmin.delete_topics([name])
    assert [t["error_code"] for t in r["topics"]] == [0]
    assert name not in kbus.bus.list_topics()
    assert name not in kadmin.list_topics()


def test_kafka_python_bad_input_gets_kafkas_errors_and_creates_nothing(kbus, kadmin, ktopic):
    import kafka.errors as Errors
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    before = set(kbus.bus.list_topics())
    name = _name()
    cases = [
        (NewTopic(name, 1, 1, topic_configs={"bogus.key": "1"}), Errors.InvalidConfigurationError, "unknown topic config key"),
        (NewTopic(name, 1, 1, topic_configs={"ring.bytes": "100000"}), Errors.InvalidConfigurationError, "power of two"),
        (NewTopic(name, 1, 3), Errors.InvalidReplicationFactorError, "replication factor must be 1"),
        (NewTopic(name, 0, 1), Errors.InvalidPartitionsError, "number of partitions"),
        (NewTopic("bad/name", 1, 1), Errors.InvalidTopicError, "illegal character"),
    ]
    for topic, error, message in cases:
        with pytest.raises(error) as e:
            kadmin.create_topics([topic])
        assert message in str(e.value), (topic, str(e.value))
    assert set(kbus.bus.list_topics()) == before

    existing = ktopic(2)
    with pytest.raises(Errors.TopicAlreadyExistsError):
        kadmin.create_topics([NewTopic(existing, 4, 1)])
    assert len(kbus.bus.describe_topic(existing).partitions) == 2

    # validate_only checks and creates nothing
    r = kadmin.create_topics([NewTopic(name, 2, 1, topic_configs={"retention.ms": "5"})], validate_only=True)
    assert r["topics"][0]["error_code"] == 0
    assert name not in kbus.bus.list_topics()

    with pytest.raises(Errors.InvalidPartitionsError) as e:
        kadmin.create_partitions({existing: NewPartitions(4)})
    assert "cannot change the number of partitions" in str(e.value)
    assert len(kbus.bus.describe_topic(existing).partitions) == 2

    with pytest.raises(ValueError):  # kafka-python checks the key is alterable (ring.bytes is read-only)
        kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, existing, configs={"ring.bytes": "8192"})])
    r = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, existing, configs={"ring.bytes": "8192"})],
                             raise_on_unknown=False)
    assert "ring.bytes cannot change on an existing topic" in r["topic"][existing]
    r = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, existing, configs={"retention.ms": "-5"})])
    assert "retention.ms must be >= -1" in r["topic"][existing]
    assert kbus.bus.describe_topic(existing).config == kbus.bus.describe_topic(ktopic()).config

    with pytest.raises(Errors.UnknownTopicOrPartitionError):
        kadmin.delete_topics([_name("missing")])


def test_the_broker_resource_lists_the_listeners_settings(kadmin):
    from kafka.admin import ConfigResource, ConfigResourceType

    got = kadmin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all")
    cfg = got["broker"]["0"]
    assert cfg["auto.create.topics.enable"]["value"] == "true"
    assert cfg["num.partitions"]["value"] == "1"
    assert all(v["read_only"] for v in cfg.values())


# --- confluent-kafka ---------------------------------------------------------------------------------------------

def test_confluent_kafka_creates_describes_alters_and_deletes(kbus, cadmin):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    good, bad_cfg, bad_rf = _name(), _name(), _name()
    r = _cresults(cadmin.create_topics([
        NewTopic(good, 2, 1, config={"cleanup.policy": "compact", "max.message.bytes": "2048"}),
        NewTopic(bad_cfg, 1, 1, config={"retention.ms": "soon"}),
        NewTopic(bad_rf, 1, 2),
    ], request_timeout=10))
    assert r[good] is None
    assert r[bad_cfg][1] == "INVALID_CONFIG" and "retention.ms must be an integer" in r[bad_cfg][2]
    assert r[bad_rf][1] == "INVALID_REPLICATION_FACTOR"
    names = set(kbus.bus.list_topics())
    assert good in names and bad_cfg not in names and bad_rf not in names
    assert kbus.bus.describe_topic(good).config["max.message.bytes"] == 2048

    (res,) = _cresults(cadmin.describe_configs([ConfigResource("topic", good)], request_timeout=10)).values()
    assert res["cleanup.policy"].value == "compact" and not res["cleanup.policy"].is_default
    assert res["retention.ms"].is_default and res["ring.bytes"].is_read_only

    r = _cresults(cadmin.incremental_alter_configs([ConfigResource("topic", good, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.APPEND),
        ConfigEntry("retention.ms", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])]))
    assert list(r.values()) == [None]
    cfg = kbus.bus.describe_topic(good).config
    assert cfg["cleanup.policy"] == "compact,delete" and cfg["retention.ms"] == 5000
    assert cfg["max.message.bytes"] == 1048576

    r = _cresults(cadmin.incremental_alter_configs([ConfigResource("topic", good, incremental_configs=[
        ConfigEntry("retention.ms", "7", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("no.such.key", "1", incremental_operation=AlterConfigOpType.SET),
    ])]))
    (err,) = r.values()
    assert err[1] == "INVALID_CONFIG" and "unknown topic config key: no.such.key" in err[2]
    assert kbus.bus.describe_topic(good).config["retention.ms"] == 5000  # all or nothing

    r = _cresults(cadmin.delete_topics([good, _name("missing")], request_timeout=10))
    assert r[good] is None
    assert [v[1] for k, v in r.items() if k != good] == ["UNKNOWN_TOPIC_OR_PART"]
    assert good not in kbus.bus.list_topics()


def test_confluent_kafka_create_partitions_says_why_not(kbus, cadmin, ktopic):
    from confluent_kafka.admin import NewPartitions

    name = ktopic(2)
    (err,) = _cresults(cadmin.create_partitions([NewPartitions(name, 4)], request_timeout=10)).values()
    assert err[1] == "INVALID_PARTITIONS" and "cannot change the number of partitions" in err[2]
    assert len(kbus.bus.describe_topic(name).partitions) == 2


def test_kcat_lists_topics_created_by_an_admin_client(kbus, cadmin):
    from confluent_kafka.admin import NewTopic

    name = _name()
    assert _cresults(cadmin.create_topics([NewTopic(name, 3, 1)], request_timeout=10)) == {name: None}
    out = subprocess.run(["kcat", "-b", kbus.bootstrap, "-L", "-t", name], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert f'topic "{name}" with 3 partitions' in out.stdout


@pytest.mark.parametrize("version", range(0, 8))
def test_create_topics_every_offered_version(kbus, version):
    """Each CreateTopics version the listener offers, encoded by kafka-python, over a raw socket."""
    from kafka.protocol.admin import CreateTopicsRequest as C, CreateTopicsResponse

    name = _name(f"v{version}")
    req = C(topics=[C.CreatableTopic(name=name, num_partitions=2, replication_factor=-1 if version >= 4 else 1,
                                     assignments=[], configs=[C.CreatableTopic.CreatableTopicConfig(
                                         name="retention.ms", value="42000")])],
            timeout_ms=5000, validate_only=False, version=version)
    resp = _roundtrip(kbus.bootstrap, req, CreateTopicsResponse, version)
    assert [t.error_code for t in resp.topics] == [0]
    d = kbus.bus.describe_topic(name)
    assert len(d.partitions) == 2 and d.config["retention.ms"] == 42000


def test_alter_configs_sets_the_whole_config(kbus, ktopic):
    """AlterConfigs (not incremental): keys the request leaves out go back to their defaults; ring.bytes stays."""
    from kafka.protocol.admin import AlterConfigsRequest as A, AlterConfigsResponse

    name = ktopic(1, {"cleanup.policy": "compact", "retention.ms": "5000", "ring.bytes": 65536})
    R = A.AlterConfigsResource
    for version in range(0, 3):
        req = A(resources=[R(resource_type=2, resource_name=name, configs=[
            R.AlterableConfig(name="segment.ms", value=str(1000 + version))])], validate_only=False, version=version)
        resp = _roundtrip(kbus.bootstrap, req, AlterConfigsResponse, version)
        assert [(x.error_code, x.resource_name) for x in resp.responses] == [(0, name)]
        cfg = kbus.bus.describe_topic(name).config
        assert cfg["segment.ms"] == 1000 + version and cfg["cleanup.policy"] == "delete"
        assert cfg["retention.ms"] == 604800000 and cfg["ring.bytes"] == 65536
    req = A(resources=[R(resource_type=2, resource_name=name, configs=[
        R.AlterableConfig(name="retention.ms", value="1")]), R(resource_type=4, resource_name="0", configs=[
        R.AlterableConfig(name="num.partitions", value="3")])], validate_only=True, version=1)
    resp = _roundtrip(kbus.bootstrap, req, AlterConfigsResponse, 1)
    assert [x.error_code for x in resp.responses] == [0, 42]  # the broker's configs are read-only
    assert kbus.bus.describe_topic(name).config["retention.ms"] == 604800000  # validate_only


def test_delete_topics_by_id_and_unknown_ids(kbus, ktopic):
    import uuid as _uuid

    from kafka.protocol.admin import DeleteTopicsRequest as D, DeleteTopicsResponse
    from kafka.protocol.metadata import MetadataRequest as M, MetadataResponse

    name = ktopic(1)
    meta = _roundtrip(kbus.bootstrap, M(topics=[M.MetadataRequestTopic(name=name, topic_id=None)],
                                        allow_auto_topic_creation=False, include_topic_authorized_operations=False,
                                        version=12), MetadataResponse, 12)
    (t,) = meta.topics
    stranger = _uuid.uuid4()
    req = D(topics=[D.DeleteTopicState(name=None, topic_id=t.topic_id),
                    D.DeleteTopicState(name=None, topic_id=stranger)], timeout_ms=5000, version=6)
    resp = _roundtrip(kbus.bootstrap, req, DeleteTopicsResponse, 6)
    got = [(r.name, r.topic_id, r.error_code) for r in resp.responses]
    assert got == [(name, t.topic_id, 0), (None, stranger, 100)]  # UNKNOWN_TOPIC_ID
    assert "no topic has the id" in resp.responses[1].error_message
    assert name not in kbus.bus.list_topics()


def test_describe_configs_versions_keys_and_documentation(kbus, ktopic):
    from kafka.protocol.admin import DescribeConfigsRequest as Q, DescribeConfigsResponse

    name = ktopic(1, {"retention.ms": 1000})
    for version in range(0, 5):
        req = Q(resources=[Q.DescribeConfigsResource(resource_type=2, resource_name=name,
                                                     configuration_keys=["retention.ms", "segment.ms"]),
                           Q.DescribeConfigsResource(resource_type=4, resource_name="7", configuration_keys=None),
                           Q.DescribeConfigsResource(resource_type=2, resource_name="no-such-topic",
                                                     configuration_keys=None)],
                include_synonyms=False, include_documentation=True, version=version)
        resp = _roundtrip(kbus.bootstrap, req, DescribeConfigsResponse, version)
        topic, broker, missing = resp.results
        assert topic.error_code == 0
        got = {c.name: c for c in topic.configs}
        assert set(got) == {"retention.ms", "segment.ms"}
        assert got["retention.ms"].value == "1000" and got["segment.ms"].value == "604800000"
        if version == 0:
            assert not got["retention.ms"].is_default and got["segment.ms"].is_default
        else:
            assert (got["retention.ms"].config_source, got["segment.ms"].config_source) == (1, 5)
        if version >= 3:
            assert got["retention.ms"].config_type == 5 and "delete segments" in got["retention.ms"].documentation
        assert broker.error_code == 42 and "one broker, id 0" in broker.error_message
        assert missing.error_code == 3


def test_create_topics_edge_cases(kbus):
    from kafka.protocol.admin import CreateTopicsRequest as C, CreateTopicsResponse

    T = C.CreatableTopic
    A = T.CreatableReplicaAssignment
    dup, assigned, bad_assign, both = _name(), _name(), _name(), _name()
    req = C(topics=[T(name=dup, num_partitions=1, replication_factor=1, assignments=[], configs=[]),
                    T(name=dup, num_partitions=1, replication_factor=1, assignments=[], configs=[]),
                    T(name=assigned, num_partitions=-1, replication_factor=-1, configs=[],
                      assignments=[A(partition_index=1, broker_ids=[0]), A(partition_index=0, broker_ids=[0])]),
                    T(name=bad_assign, num_partitions=-1, replication_factor=-1, configs=[],
                      assignments=[A(partition_index=0, broker_ids=[0, 1])]),
                    T(name=both, num_partitions=2, replication_factor=1, configs=[],
                      assignments=[A(partition_index=0, broker_ids=[0])])],
            timeout_ms=5000, validate_only=False, version=5)
    resp = _roundtrip(kbus.bootstrap, req, CreateTopicsResponse, 5)
    codes = [(t.name, t.error_code) for t in resp.topics]
    assert codes == [(dup, 42), (dup, 42), (assigned, 0), (bad_assign, 39), (both, 42)]
    names = set(kbus.bus.list_topics())
    assert assigned in names and not {dup, bad_assign, both} & names
    assert len(kbus.bus.describe_topic(assigned).partitions) == 2


def test_incremental_alter_configs_list_operations(kbus, ktopic):
    from kafka.protocol.admin import IncrementalAlterConfigsRequest as I, IncrementalAlterConfigsResponse

    name = ktopic(1, {"cleanup.policy": "compact,delete"})
    R = I.AlterConfigsResource

    def alter(*ops):
        req = I(resources=[R(resource_type=2, resource_name=name, configs=[
            R.AlterableConfig(name=k, config_operation=op, value=v) for k, op, v in ops])],
            validate_only=False, version=1)
        (r,) = _roundtrip(kbus.bootstrap, req, IncrementalAlterConfigsResponse, 1).responses
        return r.error_code, r.error_message

    assert alter(("cleanup.policy", 3, "delete")) == (0, None)  # SUBTRACT
    assert kbus.bus.describe_topic(name).config["cleanup.policy"] == "compact"
    code, message = alter(("cleanup.policy", 3, "compact"))
    assert code == 40 and "cannot be empty" in message
    code, message = alter(("retention.ms", 2, "5"))  # APPEND to a number
    assert code == 40 and "APPEND and SUBTRACT apply to list configs" in message
    code, message = alter(("retention.ms", 9, "5"))
    assert code == 42 and "unknown config operation 9" in message
    code, message = alter(("retention.ms", 0, "5"), ("retention.ms", 0, "6"))
    assert code == 42 and "given twice" in message
    assert kbus.bus.describe_topic(name).config["cleanup.policy"] == "compact"


def _roundtrip(bootstrap, req, response_cls, version, correlation_id=11):
    host, port = bootstrap.rsplit(":", 1)
    req.with_header(correlation_id=correlation_id, client_id="test")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(req.encode(header=True, framed=True))
        return response_cls.decode(read_frame(s), version=version, header=True)


# --- SASL/PLAIN --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sasl_bus(tmp_path_factory):
    """A supervisor whose listener requires SASL/PLAIN: (bootstrap, data_dir), users alice:s3cret, bob:hunter2."""
    from helpers.bus import cleanup_bus
    from helpers.kafka import start_listener

    base = tmp_path_factory.mktemp("sasl")
    users = base / "users"
    users.write_text("# test users\nalice:s3cret\nbob:hunter2\n")
    os.chmod(users, 0o600)
    d = str(base / "bus")
    try:
        yield start_listener(d, "--kafka-sasl-users", str(users)), d
    finally:
        cleanup_bus(d)


def _sasl_conf(bootstrap, password, user="alice"):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": user, "sasl.password": password}


def test_confluent_kafka_with_the_right_password_administers_topics(sasl_bus):
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap, d = sasl_bus
    a = AdminClient(_sasl_conf(bootstrap, "s3cret"))
    name = _name()
    assert _cresults(a.create_topics([NewTopic(name, 1, 1)], request_timeout=10)) == {name: None}
    assert name in a.list_topics(timeout=10).topics
    assert listener_status(d)["sasl"] is True


def test_confluent_kafka_with_a_wrong_password_is_refused(sasl_bus):
    import threading

    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap, d = sasl_bus
    errors = []
    seen = threading.Event()

    def on_error(err):
        errors.append(err)
        if err.code() == KafkaError._AUTHENTICATION:
            seen.set()

    a = AdminClient({**_sasl_conf(bootstrap, "Pa55-not-it"), "error_cb": on_error})
    with pytest.raises(KafkaException):
        a.list_topics(timeout=3)
    a.poll(0.5)
    assert seen.wait(10), [e.str() for e in errors]
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert "Authentication failed" in auth[0].str()
    log = supervisor_log(d)
    assert "wrong password for user 'alice'" in log and "Pa55-not-it" not in log  # never the password


def test_kafka_python_with_plain_works_and_a_wrong_password_does_not(sasl_bus):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    bootstrap, d = sasl_bus
    conf = dict(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                sasl_plain_username="bob", request_timeout_ms=10000)
    a = KafkaAdminClient(sasl_plain_password="hunter2", **conf)
    try:
        name = _name()
        a.create_topics([NewTopic(name, 2, 1)])
        assert name in a.list_topics()
    finally:
        a.close()
    before = supervisor_log(d).count("wrong password for user 'bob'")
    with pytest.raises(KafkaError) as e:  # kafka-python cannot bootstrap: every connection is refused
        KafkaAdminClient(sasl_plain_password="nope", **{**conf, "request_timeout_ms": 3000,
                                                        "bootstrap_timeout_ms": 3000}).list_topics()
    wait_for(lambda: supervisor_log(d).count("wrong password for user 'bob'") > before, 10,
             f"no authentication failure logged; the client raised {e.value!r}")


def _closed(s) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_request_before_authentication_closes_the_connection(sasl_bus):
    from kafka.protocol.metadata import MetadataRequest

    bootstrap, d = sasl_bus
    host, port = bootstrap.rsplit(":", 1)
    req = MetadataRequest(topics=None, version=1)
    req.with_header(correlation_id=1, client_id="early")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(req.encode(header=True, framed=True))
        assert _closed(s)
    assert "api_key=3 before SASL authentication" in supervisor_log(d)


def test_raw_sasl_exchanges(sasl_bus):
    """SaslHandshake v1 + SaslAuthenticate, v0 + a raw token, a wrong mechanism, out-of-turn calls (raw socket)."""
    from kafka.protocol.metadata import MetadataRequest, MetadataResponse
    from kafka.protocol.sasl import (
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    )

    bootstrap, d = sasl_bus
    host, port = bootstrap.rsplit(":", 1)

    def send(s, req, cid=1):
        req.with_header(correlation_id=cid, client_id="raw")
        s.sendall(req.encode(header=True, framed=True))

    def recv(s, cls, version):
        return cls.decode(read_frame(s), version=version, header=True)

    def metadata_works(s):
        send(s, MetadataRequest(topics=None, version=1), 9)
        return recv(s, MetadataResponse, 1).brokers[0].port == int(port)

    # v1 handshake + SaslAuthenticate v2
    with socket.create_connection((host, int(port)), timeout=10) as s:
        send(s, SaslHandshakeRequest(mechanism="PLAIN", version=1))
        r = recv(s, SaslHandshakeResponse, 1)
        assert r.error_code == 0 and r.mechanisms == ["PLAIN"]
        send(s, SaslAuthenticateRequest(auth_bytes=b"\0alice\0s3cret", version=2))
        r = recv(s, SaslAuthenticateResponse, 2)
        assert r.error_code == 0 and r.session_lifetime_ms == 0
        assert metadata_works(s)
        send(s, SaslHandshakeRequest(mechanism="PLAIN", version=1))  # again: out of turn
        assert recv(s, SaslHandshakeResponse, 1).error_code == 34  # ILLEGAL_SASL_STATE
        assert _closed(s)

    # v0 handshake, then the raw PLAIN token; an empty raw token back
    with socket.create_connection((host, int(port)), timeout=10) as s:
        send(s, SaslHandshakeRequest(mechanism="PLAIN", version=0))
        assert recv(s, SaslHandshakeResponse, 0).error_code == 0
        token = b"alice\0alice\0s3cret"
        s.sendall(struct.pack(">i", len(token)) + token)
        assert recv_exact(s, 4) == b"\0\0\0\0"
        assert metadata_works(s)

    # v0 with a wrong password: closed without an answer
    with socket.create_connection((host, int(port)), timeout=10) as s:
        send(s, SaslHandshakeRequest(mechanism="PLAIN", version=0))
        assert recv(s, SaslHandshakeResponse, 0).error_code == 0
        token = b"\0alice\0S3CRET"
        s.sendall(struct.pack(">i", len(token)) + token)
        assert _closed(s)

    # another mechanism: UNSUPPORTED_SASL_MECHANISM listing PLAIN, then closed
    with socket.create_connection((host, int(port)), timeout=10) as s:
        send(s, SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=1))
        r = recv(s, SaslHandshakeResponse, 1)
        assert r.error_code == 33 and r.mechanisms == ["PLAIN"]
        assert _closed(s)

    # SaslAuthenticate before SaslHandshake; an authzid other than the user; a wrong password
    for first, token, code in ((False, b"\0alice\0s3cret", 34), (True, b"bob\0alice\0s3cret", 58),
                               (True, b"\0alice\0s3cre", 58), (True, b"\0mallory\0s3cret", 58),
                               (True, b"no separators", 58)):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            if first:
                send(s, SaslHandshakeRequest(mechanism="PLAIN", version=1))
                assert recv(s, SaslHandshakeResponse, 1).error_code == 0
            send(s, SaslAuthenticateRequest(auth_bytes=token, version=1))
            r = recv(s, SaslAuthenticateResponse, 1)
            assert r.error_code == code, token
            if code == 58:
                assert r.error_message.startswith("Authentication failed")
            assert _closed(s)

    # a null token (a bytes length of -1, which the schema does not allow): malformed, the connection closes
    with socket.create_connection((host, int(port)), timeout=10) as s:
        send(s, SaslHandshakeRequest(mechanism="PLAIN", version=1))
        assert recv(s, SaslHandshakeResponse, 1).error_code == 0
        req = SaslAuthenticateRequest(auth_bytes=b"", version=1)
        req.with_header(correlation_id=2, client_id="raw")
        frame = bytearray(req.encode(header=True, framed=True))
        assert frame[-4:] == b"\0\0\0\0"
        frame[-4:] = b"\xff\xff\xff\xff"
        s.sendall(frame)
        assert _closed(s)
    wait_for(lambda: "has a null auth_bytes" in supervisor_log(d), 10, "the closing reason in the log")
    assert "internal error" not in supervisor_log(d)


def test_sasl_on_a_listener_without_it_is_illegal_state(kbus):
    from kafka.protocol.sasl import SaslHandshakeRequest, SaslHandshakeResponse

    resp = _roundtrip(kbus.bootstrap, SaslHandshakeRequest(mechanism="PLAIN", version=1), SaslHandshakeResponse, 1)
    assert resp.error_code == 34


def test_kcat_with_sasl_plain(sasl_bus):
    bootstrap, d = sasl_bus
    base = ["kcat", "-b", bootstrap, "-L", "-m", "5", "-X", "security.protocol=SASL_PLAINTEXT",
            "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=alice"]
    ok = subprocess.run(base + ["-X", "sasl.password=s3cret"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "1 brokers:" in ok.stdout, ok.stderr
    bad = subprocess.run(base + ["-X", "sasl.password=nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "Authentication failed" in bad.stderr, (bad.stdout, bad.stderr)
