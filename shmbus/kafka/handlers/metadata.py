"""ApiVersions and Metadata: what the listener offers, and the cluster as clients see it.

The cluster is this one broker. Every partition of every topic is led by it,
with itself as the only replica and in-sync replica. A Metadata request that
names a topic that does not exist creates it when auto-creation is on and
the client allows it (Kafka's ``auto.create.topics.enable``), else answers
UNKNOWN_TOPIC_OR_PARTITION for it.
"""

from __future__ import annotations

import uuid

from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse

from shmbus.errors import InvalidTopicError
from shmbus.kafka.handlers import errors as E
from shmbus.kafka.registry import api_version_entries, handles



@handles(ApiVersionsRequest, ApiVersionsResponse, 0, 4, needs_auth=False)
def api_versions(session, req):
    return ApiVersionsResponse(error_code=E.NONE, api_keys=api_version_entries(), throttle_time_ms=0)


def topic_uuid(meta) -> uuid.UUID:
    """The topic's id as Kafka sees it: the incarnation id, so a deleted and re-created topic gets a new one."""
    return uuid.UUID(int=meta.id_int & ((1 << 128) - 1) or 1)


def partitions_of(meta, node_id: int) -> list:
    P = MetadataResponse.MetadataResponseTopic.MetadataResponsePartition
    return [P(error_code=E.NONE, partition_index=p, leader_id=node_id, leader_epoch=0, replica_nodes=[node_id],
              isr_nodes=[node_id], offline_replicas=[]) for p in range(meta.partitions)]


@handles(MetadataRequest, MetadataResponse, 0, 12)
def metadata(session, req):
    b = session.broker
    T = MetadataResponse.MetadataResponseTopic
    version = req.API_VERSION
    if req.topics is None or (version == 0 and not req.topics):
        names = b.topics()  # all topics (v0: an empty list meant all)
        allow_create = False
    else:
        names = [t.name for t in req.topics]
        allow_create = req.allow_auto_topic_creation if version >= 4 else True
    topics = []
    for name in names:
        if name is None:
            topics.append(T(error_code=E.UNKNOWN_TOPIC_ID, name=None, is_internal=False, partitions=[]))
            continue
        try:
            meta = b.topic(name, create=allow_create)
        except InvalidTopicError:
            topics.append(T(error_code=E.INVALID_TOPIC_EXCEPTION, name=name, is_internal=False, partitions=[]))
            continue
        if meta is None:
            topics.append(T(error_code=E.UNKNOWN_TOPIC_OR_PARTITION, name=name, is_internal=False, partitions=[]))
            continue
        topics.append(T(error_code=E.NONE, name=name, topic_id=topic_uuid(meta), is_internal=False,
                        partitions=partitions_of(meta, b.node_id)))
    brokers = [MetadataResponse.MetadataResponseBroker(node_id=b.node_id, host=b.host, port=b.port, rack=None)]
    return MetadataResponse(throttle_time_ms=0, brokers=brokers, cluster_id=b.cluster_id, controller_id=b.node_id,
                            topics=topics)
