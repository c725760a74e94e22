"""Which partitions a ``Consumer`` reads: subscribe, assign, pause and resume."""

from __future__ import annotations

from shmbus.client.consumer.guard import one_thread
from shmbus.client.consumer.partition import PartitionState, partition_state
from shmbus.core import paths
from shmbus.core.config import validate_topic_name
from shmbus.errors import ShmbusError, UnknownTopicError
from shmbus.log.reader import PartitionLog
from shmbus.records import TopicPartition


class AssignmentMixin:
    """The assigned partitions: ``_parts`` (by TopicPartition), ``_assigned`` (in order) and
    ``_single`` (the only one, if there is exactly one: poll's short path)."""

    def _new_partition(self, tp: TopicPartition) -> PartitionState:
        meta = self._bus.topic_meta(tp.topic)
        if not 0 <= tp.partition < meta.partitions:
            raise UnknownTopicError(f"partition does not exist: topic={tp.topic!r} partition={tp.partition} "
                                    f"(it has {meta.partitions})")
        ring = self._bus.ring(meta, tp.partition)
        log = PartitionLog(paths.partition_dir(self._bus.data_dir, tp.topic, tp.partition))
        return partition_state(tp, ring, log)

    def _set_assignment(self, tps) -> None:
        new = {}
        for tp in tps:
            tp = TopicPartition(*tp)
            new[tp] = self._parts.get(tp) or self._new_partition(tp)
        for tp, p in self._parts.items():
            if tp not in new:
                p.log.close()
        self._parts = new
        self._assigned = list(new.values())
        self._single = self._assigned[0] if len(self._assigned) == 1 else None

    def _part(self, tp) -> PartitionState:
        tp = TopicPartition(*tp)
        p = self._parts.get(tp)
        if p is None:
            raise ShmbusError(f"partition is not assigned to this consumer: topic={tp.topic!r} "
                              f"partition={tp.partition} (assign() or subscribe() it first)")
        return p

    @one_thread
    def subscribe(self, topics=(), pattern=None, listener=None) -> None:
        if isinstance(topics, str):
            topics = [topics]
        topics = list(topics)
        for t in topics:
            validate_topic_name(t)
        if self._member is not None:  # the group's coordinator assigns the partitions
            return self._member.subscribe(self, topics, pattern, listener)
        tps = []
        for t in topics:
            meta = self._bus.topic_meta(t)
            tps.extend(TopicPartition(t, p) for p in range(meta.partitions))
        self._subscription = topics
        self._set_assignment(tps)

    def subscription(self):
        return set(self._subscription) if self._subscription is not None else None

    @one_thread
    def unsubscribe(self) -> None:
        if self._member is not None:
            return self._member.unsubscribe(self)
        self._subscription = None
        self._set_assignment([])

    @one_thread
    def assign(self, partitions) -> None:
        tps = []
        for tp in partitions:
            if not isinstance(tp, tuple) or len(tp) != 2:
                raise TypeError(f"assign takes TopicPartition(topic, partition) items: got {tp!r}")
            validate_topic_name(tp[0])
            tps.append(TopicPartition(tp[0], int(tp[1])))
        if self._member is not None:
            raise ShmbusError(f"assign() is for consumers without a group: group_id={self.group_id!r} (subscribe() "
                              f"to let the group share the partitions, or make a Consumer without group_id)")
        self._subscription = None
        self._set_assignment(tps)

    def assignment(self) -> set:
        return set(self._parts)

    def topics(self) -> set:
        return set(self._bus.list_topics())

    def partitions_for_topic(self, topic: str):
        return set(range(self._bus.topic_meta(topic).partitions))

    @one_thread
    def pause(self, *tps) -> None:
        for tp in tps:
            self._part(tp).paused = True

    @one_thread
    def resume(self, *tps) -> None:
        for tp in tps:
            self._part(tp).paused = False

    def paused(self) -> set:
        return {p.tp for p in self._assigned if p.paused}
