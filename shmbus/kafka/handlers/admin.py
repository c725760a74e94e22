"""Topic admin: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.

What a Kafka admin client (``kafka-topics``, kafka-python's
``KafkaAdminClient``, confluent-kafka's ``AdminClient``) does to topics goes
through :class:`~shmbus.client.bus.Bus`, so it is the same as the Python API
and ``shmbus topics`` doing it, with the same checks.

- Topic configs are shmbus's keys (``shmbus/core/config.py``): an unknown key
  or a bad value is INVALID_CONFIG with the bus's message (which names the
  key, the value and what is allowed).
- The replication factor is 1 (this one broker): -1 (the default) or 1 is
  accepted, anything else is INVALID_REPLICATION_FACTOR.
- A topic keeps its partitions for life: CreatePartitions answers
  INVALID_PARTITIONS saying so (clients show that message; an API missing
  from ApiVersions would only give them a generic "unsupported" error).
- ``ring.bytes`` is fixed when a topic is created: altering it is
  INVALID_CONFIG; AlterConfigs (which sets a topic's whole config, every key
  it leaves out going back to its default) keeps the topic's ring.bytes.
- DescribeConfigs of a topic lists every key with its value; a key is
  "default" when its value is the default's. The broker resource (name
  ``""`` or the broker id ``"0"``) lists a few read-only settings of the
  listener.

Admin calls of all connections are serialised by one lock: the broker's
``Bus`` object is shared by the connection threads.
"""

from __future__ import annotations

import threading
import uuid

from kafka.protocol.admin import (
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
)

from shmbus.core.config import TOPIC_CONFIG_DOCS, TOPIC_DEFAULTS, validate_topic_config, validate_topic_name
from shmbus.errors import (
    InvalidConfigError, InvalidTopicError, ShmbusError, TopicExistsError, UnknownTopicError,
)
from shmbus.kafka.handlers import errors as E
from shmbus.kafka.handlers.metadata import topic_uuid
from shmbus.kafka.registry import handles

UNKNOWN_SERVER_ERROR = -1

# ConfigResource types (Kafka's protocol).
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
RESOURCE_BROKER_LOGGER = 8

# ConfigSource (DescribeConfigs v1+).
SOURCE_DYNAMIC_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5

# ConfigType (DescribeConfigs v3+).
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_SHORT, TYPE_LONG, TYPE_DOUBLE, TYPE_LIST = 1, 2, 3, 4, 5, 6, 7

# IncrementalAlterConfigs operations.
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3

_TOPIC_TYPES = {"cleanup.policy": TYPE_LIST, "segment.bytes": TYPE_INT, "max.message.bytes": TYPE_INT,
                "unblock.timeout.ms": TYPE_INT}
_READ_ONLY = frozenset({"ring.bytes"})  # fixed at creation
_LIST_KEYS = frozenset({"cleanup.policy"})

_LOCK = threading.Lock()


def _zero_uuid():
    return uuid.UUID(int=0)


def _error_of(e: Exception) -> int:
    if isinstance(e, InvalidTopicError):
        return E.INVALID_TOPIC_EXCEPTION
    if isinstance(e, TopicExistsError):
        return E.TOPIC_ALREADY_EXISTS
    if isinstance(e, UnknownTopicError):
        return E.UNKNOWN_TOPIC_OR_PARTITION
    if isinstance(e, InvalidConfigError):
        return E.INVALID_CONFIG
    return UNKNOWN_SERVER_ERROR


def _message(e: Exception) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _config_text(value) -> str:
    return str(value)


# --- CreateTopics -----------------------------------------------------------------------------------------------

def _partitions_to_create(t, default_partitions: int) -> int:
    """The partition count a CreatableTopic asks for; raises _Refused with Kafka's code."""
    if t.replication_factor not in (-1, 1):
        raise _Refused(E.INVALID_REPLICATION_FACTOR,
                       f"replication factor must be 1 (or -1 for the default): this is a one-broker cluster; "
                       f"replication_factor={t.replication_factor}")
    if t.assignments:
        if t.num_partitions != -1 or t.replication_factor != -1:
            raise _Refused(E.INVALID_REQUEST, "give either replica assignments or num_partitions and "
                                              "replication_factor, not both")
        indexes = sorted(a.partition_index for a in t.assignments)
        if indexes != list(range(len(indexes))):
            raise _Refused(E.INVALID_REPLICA_ASSIGNMENT, f"replica assignments must number the partitions "
                                                         f"0..{len(indexes) - 1} once each: {indexes}")
        for a in t.assignments:
            if list(a.broker_ids) != [0]:
                raise _Refused(E.INVALID_REPLICA_ASSIGNMENT,
                               f"every partition's replicas must be [0] (the one broker): partition "
                               f"{a.partition_index} has {list(a.broker_ids)}")
        return len(indexes)
    n = default_partitions if t.num_partitions == -1 else t.num_partitions
    if not 1 <= n <= 10000:
        raise _Refused(E.INVALID_PARTITIONS, f"number of partitions must be from 1 to 10000 (or -1 for the "
                                             f"broker's default, {default_partitions}): num_partitions={n}")
    return n


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _creatable_configs(t) -> dict:
    config = {}
    for c in t.configs or ():
        if c.name in config:
            raise _Refused(E.INVALID_CONFIG, f"config key given twice: {c.name}")
        if c.value is None:  # Kafka: no value means the default
            continue
        config[c.name] = c.value
    try:
        return validate_topic_config(config)
    except InvalidConfigError as e:
        raise _Refused(E.INVALID_CONFIG, str(e)) from None


def _described_configs(cfg: dict, R) -> list:
    return [R(name=k, value=_config_text(v), read_only=k in _READ_ONLY,
              config_source=SOURCE_DEFAULT if v == TOPIC_DEFAULTS[k] else SOURCE_DYNAMIC_TOPIC, is_sensitive=False)
            for k, v in cfg.items()]


@handles(CreateTopicsRequest, CreateTopicsResponse, 0, 7)
def create_topics(session, req):
    b = session.broker
    T = CreateTopicsResponse.CreatableTopicResult
    C = T.CreatableTopicConfigs
    counts: dict = {}
    for t in req.topics:
        counts[t.name] = counts.get(t.name, 0) + 1
    results = []
    for t in req.topics:
        name = t.name
        try:
            if counts[name] > 1:
                raise _Refused(E.INVALID_REQUEST, f"topic {name!r} is named more than once in the request")
            try:
                validate_topic_name(name)
            except InvalidTopicError as e:
                raise _Refused(E.INVALID_TOPIC_EXCEPTION, str(e)) from None
            n = _partitions_to_create(t, b.num_partitions)
            cfg = _creatable_configs(t)
            with _LOCK:
                if name in b.topics():
                    raise _Refused(E.TOPIC_ALREADY_EXISTS, f"topic already exists: topic={name!r}")
                if not req.validate_only:
                    try:
                        b.bus.create_topic(name, n, cfg)
                    except ShmbusError as e:
                        raise _Refused(_error_of(e), _message(e)) from None
                    finally:
                        b.forget(name)
            meta = None if req.validate_only else b.topic(name)
        except _Refused as e:
            results.append(T(name=name, topic_id=_zero_uuid(), error_code=e.code, error_message=str(e),
                             num_partitions=-1, replication_factor=-1, configs=None))
            continue
        if not req.validate_only:
            b.log(f"kafka listener: {session} created topic={name!r} partitions={n}")
        results.append(T(name=name, topic_id=topic_uuid(meta) if meta is not None else _zero_uuid(),
                         error_code=E.NONE, error_message=None, num_partitions=n, replication_factor=1,
                         configs=_described_configs(meta.config if meta is not None else cfg, C)))
    return CreateTopicsResponse(throttle_time_ms=0, topics=results)


# --- DeleteTopics -----------------------------------------------------------------------------------------------

def _name_of_id(b, topic_id) -> str | None:
    for name in b.topics():
        meta = b.topic(name)
        if meta is not None and topic_uuid(meta) == topic_id:
            return name
    return None


@handles(DeleteTopicsRequest, DeleteTopicsResponse, 0, 6)
def delete_topics(session, req):
    b = session.broker
    R = DeleteTopicsResponse.DeletableTopicResult
    if req.API_VERSION >= 6:
        asked = [(t.name, t.topic_id) for t in req.topics]
    else:
        asked = [(name, None) for name in req.topic_names]
    results = []
    for name, topic_id in asked:
        by_id = name is None
        try:
            with _LOCK:
                if by_id:
                    name = _name_of_id(b, topic_id)
                    if name is None:
                        raise _Refused(E.UNKNOWN_TOPIC_ID, f"no topic has the id {topic_id}")
                try:
                    validate_topic_name(name)
                    topic_id = topic_uuid(b.bus.topic_meta(name))
                    b.bus.delete_topic(name)
                except ShmbusError as e:
                    raise _Refused(_error_of(e), _message(e)) from None
                finally:
                    b.forget(name)
        except _Refused as e:
            results.append(R(name=name, topic_id=topic_id or _zero_uuid(), error_code=e.code,
                             error_message=str(e)))
            continue
        b.log(f"kafka listener: {session} deleted topic={name!r}")
        results.append(R(name=name, topic_id=topic_id, error_code=E.NONE, error_message=None))
    return DeleteTopicsResponse(throttle_time_ms=0, responses=results)


# --- CreatePartitions ---------------------------------------------------------------------------------------------

@handles(CreatePartitionsRequest, CreatePartitionsResponse, 0, 3)
def create_partitions(session, req):
    b = session.broker
    R = CreatePartitionsResponse.CreatePartitionsTopicResult
    results = []
    for t in req.topics:
        meta = None
        try:
            validate_topic_name(t.name)
            meta = b.topic(t.name)
        except ShmbusError:
            pass
        if meta is None:
            results.append(R(name=t.name, error_code=E.UNKNOWN_TOPIC_OR_PARTITION,
                             error_message=f"topic does not exist: topic={t.name!r}"))
        elif t.count == meta.partitions:
            results.append(R(name=t.name, error_code=E.INVALID_PARTITIONS,
                             error_message=f"topic {t.name!r} already has {meta.partitions} partitions"))
        else:
            results.append(R(name=t.name, error_code=E.INVALID_PARTITIONS,
                             error_message=f"shmbus cannot change the number of partitions of a topic "
                                           f"(topic {t.name!r} has {meta.partitions}, {t.count} asked): "
                                           f"create a new topic with the partitions you need"))
    return CreatePartitionsResponse(throttle_time_ms=0, results=results)


# --- DescribeConfigs ----------------------------------------------------------------------------------------------

def broker_configs(session) -> list[tuple[str, str, int, str]]:
    """The broker resource's configs: (key, value, type, documentation), all read-only."""
    lst = session.listener
    b = session.broker
    return [
        ("broker.id", str(b.node_id), TYPE_INT, "the one broker's id"),
        ("auto.create.topics.enable", "true" if b.auto_create else "false", TYPE_BOOLEAN,
         "a Metadata request naming a missing topic creates it"),
        ("num.partitions", str(b.num_partitions), TYPE_INT, "partitions of a topic created without a count"),
        ("default.replication.factor", "1", TYPE_SHORT, "one broker, one replica"),
        ("socket.request.max.bytes", str(lst.max_request_bytes), TYPE_INT, "largest request accepted"),
        ("max.connections", str(lst.max_connections), TYPE_INT, "connections beyond this are closed"),
        ("sasl.enabled.mechanisms", "PLAIN" if lst.sasl_users is not None else "", TYPE_LIST,
         "SASL mechanisms (--kafka-sasl-users)"),
        ("listeners", f"{'SASL_PLAINTEXT' if lst.sasl_users is not None else 'PLAINTEXT'}://{b.address()}",
         TYPE_STRING, "where the broker listens"),
    ]


def _is_this_broker(session, name: str) -> bool:
    return name in ("", str(session.broker.node_id))


@handles(DescribeConfigsRequest, DescribeConfigsResponse, 0, 4)
def describe_configs(session, req):
    b = session.broker
    version = req.API_VERSION
    R = DescribeConfigsResponse.DescribeConfigsResult
    C = R.DescribeConfigsResourceResult
    results = []
    for res in req.resources:
        keys = None if res.configuration_keys is None else set(res.configuration_keys)
        rows = []
        code, message = E.NONE, None
        if res.resource_type == RESOURCE_TOPIC:
            meta = None
            try:
                validate_topic_name(res.resource_name)
                meta = b.topic(res.resource_name)
            except ShmbusError as e:
                code, message = E.INVALID_TOPIC_EXCEPTION, str(e)
            if meta is None and code == E.NONE:
                code, message = E.UNKNOWN_TOPIC_OR_PARTITION, f"topic does not exist: topic={res.resource_name!r}"
            if meta is not None:
                for k in TOPIC_DEFAULTS:
                    v = meta.config.get(k, TOPIC_DEFAULTS[k])
                    default = v == TOPIC_DEFAULTS[k]
                    rows.append((k, _config_text(v), k in _READ_ONLY, default,
                                 SOURCE_DEFAULT if default else SOURCE_DYNAMIC_TOPIC,
                                 _TOPIC_TYPES.get(k, TYPE_LONG), TOPIC_CONFIG_DOCS[k]))
        elif res.resource_type == RESOURCE_BROKER:
            if not _is_this_broker(session, res.resource_name):
                code, message = E.INVALID_REQUEST, (f"unknown broker {res.resource_name!r}: this cluster has one "
                                                    f"broker, id {b.node_id}")
            else:
                for k, v, typ, doc in broker_configs(session):
                    rows.append((k, v, True, False, SOURCE_STATIC_BROKER, typ, doc))
        else:
            code, message = E.INVALID_REQUEST, (f"resource type {res.resource_type} has no configs here (topics: "
                                                f"{RESOURCE_TOPIC}, the broker: {RESOURCE_BROKER})")
        configs = []
        for k, v, read_only, default, source, typ, doc in rows:
            if keys is not None and k not in keys:
                continue
            configs.append(C(name=k, value=v, read_only=read_only, is_default=default,
                             config_source=source, is_sensitive=False, synonyms=[], config_type=typ,
                             documentation=doc if version >= 3 and req.include_documentation else None))
        results.append(R(error_code=code, error_message=message, resource_type=res.resource_type,
                         resource_name=res.resource_name, configs=configs))
    return DescribeConfigsResponse(throttle_time_ms=0, results=results)


# --- AlterConfigs, IncrementalAlterConfigs ------------------------------------------------------------------------

def _alter(session, res, validate_only: bool, new_config) -> tuple[int, str | None]:
    """Apply ``new_config(current_config) -> config`` to the resource; (error code, message)."""
    b = session.broker
    if res.resource_type == RESOURCE_BROKER:
        return E.INVALID_REQUEST, "the broker's configs are read-only (they are the listener's settings)"
    if res.resource_type != RESOURCE_TOPIC:
        return E.INVALID_REQUEST, f"resource type {res.resource_type} cannot be altered here (topics: {RESOURCE_TOPIC})"
    name = res.resource_name
    seen = set()
    for c in res.configs:
        if c.name in seen:
            return E.INVALID_REQUEST, f"config key given twice: {c.name}"
        seen.add(c.name)
    try:
        validate_topic_name(name)
        with _LOCK:
            meta = b.bus.topic_meta(name)
            current = validate_topic_config(None, base=meta.config)
            cfg = validate_topic_config(new_config(current))
            if cfg["ring.bytes"] != current["ring.bytes"]:
                raise InvalidConfigError(
                    f"ring.bytes cannot change on an existing topic: ring.bytes={cfg['ring.bytes']} (it is "
                    f"{current['ring.bytes']}; delete and recreate the topic to change it)")
            if not validate_only:
                try:
                    b.bus.alter_topic_config(name, cfg)
                finally:
                    b.forget(name)
    except _Refused as e:
        return e.code, str(e)
    except ShmbusError as e:
        return _error_of(e), _message(e)
    if not validate_only:
        b.log(f"kafka listener: {session} altered the config of topic={name!r}: "
              f"{', '.join(sorted(c.name for c in res.configs)) or 'every key to its default'}")
    return E.NONE, None


def _known(key: str) -> None:
    if key not in TOPIC_DEFAULTS:
        raise _Refused(E.INVALID_CONFIG, f"unknown topic config key: {key} (valid keys: {', '.join(TOPIC_DEFAULTS)})")


@handles(AlterConfigsRequest, AlterConfigsResponse, 0, 2)
def alter_configs(session, req):
    R = AlterConfigsResponse.AlterConfigsResourceResponse
    out = []
    for res in req.resources:
        def whole(current, res=res):
            cfg = {"ring.bytes": current["ring.bytes"]}  # fixed for the topic's life: kept
            for c in res.configs:
                _known(c.name)
                if c.value is not None:
                    cfg[c.name] = c.value
            return cfg

        code, message = _alter(session, res, req.validate_only, whole)
        out.append(R(error_code=code, error_message=message, resource_type=res.resource_type,
                     resource_name=res.resource_name))
    return AlterConfigsResponse(throttle_time_ms=0, responses=out)


def _list_words(value) -> list[str]:
    return [w.strip() for w in str(value).split(",") if w.strip()]


@handles(IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0, 1)
def incremental_alter_configs(session, req):
    R = IncrementalAlterConfigsResponse.AlterConfigsResourceResponse
    out = []
    for res in req.resources:
        def changed(current, res=res):
            cfg = dict(current)
            for c in res.configs:
                _known(c.name)
                op = c.config_operation
                if op == OP_SET:
                    if c.value is None:
                        raise _Refused(E.INVALID_CONFIG, f"SET needs a value: {c.name}")
                    cfg[c.name] = c.value
                elif op == OP_DELETE:
                    cfg[c.name] = TOPIC_DEFAULTS[c.name]
                elif op in (OP_APPEND, OP_SUBTRACT):
                    if c.name not in _LIST_KEYS:
                        raise _Refused(E.INVALID_CONFIG, f"APPEND and SUBTRACT apply to list configs "
                                                         f"({', '.join(sorted(_LIST_KEYS))}), not to {c.name}")
                    words = _list_words(cfg[c.name])
                    given = _list_words(c.value or "")
                    if op == OP_APPEND:
                        words += [w for w in given if w not in words]
                    else:
                        words = [w for w in words if w not in given]
                    if not words:
                        raise _Refused(E.INVALID_CONFIG, f"{c.name} cannot be empty (it takes delete, compact, "
                                                         f"or compact,delete)")
                    cfg[c.name] = ",".join(words)
                else:
                    raise _Refused(E.INVALID_REQUEST, f"unknown config operation {op} for {c.name} (0 SET, "
                                                      f"1 DELETE, 2 APPEND, 3 SUBTRACT)")
            return cfg

        code, message = _alter(session, res, req.validate_only, changed)
        out.append(R(error_code=code, error_message=message, resource_type=res.resource_type,
                     resource_name=res.resource_name))
    return IncrementalAlterConfigsResponse(throttle_time_ms=0, responses=out)
