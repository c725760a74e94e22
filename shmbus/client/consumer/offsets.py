"""Where a ``Consumer`` reads: positions, seeks, beginning and end offsets, offsets for times, commits."""

from __future__ import annotations

from shmbus.client.consumer.guard import one_thread
from shmbus.client.consumer.partition import PartitionState
from shmbus.errors import CommitFailedError, InvalidArgumentError, OffsetOutOfRangeError
from shmbus.log.partition import offset_for_time, partition_start_offset
from shmbus.records import OffsetAndTimestamp, TopicPartition

INT64_END = 1 << 63  # offsets and timestamps are int64, >= 0


class OffsetsMixin:
    def _start(self, p: PartitionState) -> int:
        return partition_start_offset(p.ring, p.log)

    def _reset(self, p: PartitionState, why: str) -> None:
        """Set the position by ``auto_offset_reset`` (or raise OffsetOutOfRangeError for "none")."""
        if self.auto_offset_reset == "earliest":
            p.position = self._start(p)
        elif self.auto_offset_reset == "latest":
            p.position = p.ring.next_offset()
        else:
            raise OffsetOutOfRangeError(
                f"{why}: topic={p.tp.topic!r} partition={p.tp.partition} position={p.position} "
                f"start={self._start(p)} end={p.ring.next_offset()} (seek, or set auto_offset_reset="
                f"'earliest' or 'latest')")
        p.cursor = -1

    @one_thread
    def position(self, tp) -> int:
        p = self._part(tp)
        if p.position is None:
            self._reset(p, "no position and no committed offset")
        return p.settled_position()

    @one_thread
    def seek(self, tp, offset: int) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < INT64_END:
            raise InvalidArgumentError(f"offset must be an int >= 0 and < 2**63: offset={offset!r}")
        p = self._part(tp)
        p.position = offset
        p.cursor = -1

    @one_thread
    def seek_to_beginning(self, *tps) -> None:
        for p in ([self._part(tp) for tp in tps] if tps else self._assigned):
            p.position = self._start(p)
            p.cursor = -1

    @one_thread
    def seek_to_end(self, *tps) -> None:
        for p in ([self._part(tp) for tp in tps] if tps else self._assigned):
            p.position = p.ring.next_offset()
            p.cursor = -1

    def _with_part(self, tp, fn):
        """fn(the read state of ``tp``): the assigned one, else a temporary one."""
        tp = TopicPartition(*tp)
        p = self._parts.get(tp)
        if p is not None:
            return fn(p)
        tmp = self._new_partition(tp)
        try:
            return fn(tmp)
        finally:
            tmp.log.close()

    @one_thread
    def beginning_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._with_part(tp, self._start) for tp in partitions}

    @one_thread
    def end_offsets(self, partitions) -> dict:
        return {TopicPartition(*tp): self._with_part(tp, lambda p: p.ring.next_offset()) for tp in partitions}

    @one_thread
    def offsets_for_times(self, timestamps: dict) -> dict:
        out = {}
        for tp, ts in timestamps.items():
            if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < INT64_END:
                raise InvalidArgumentError(f"timestamp must be an int >= 0 and < 2**63 (ms since the epoch): "
                                           f"timestamp={ts!r}")
            out[TopicPartition(*tp)] = self._with_part(tp, lambda p, ts=ts: self._offset_for_time(p, ts))
        return out

    def _offset_for_time(self, p: PartitionState, ts: int):
        """The first record with a timestamp >= ts: on disk, else in the ring (read again if lapped)."""
        hit = offset_for_time(p.ring, p.log, ts, self._meta)
        return None if hit is None else OffsetAndTimestamp(*hit)

    @one_thread
    def committed(self, tp, metadata=False):
        if self._member is not None:
            return self._member.committed(tp)
        return None

    @one_thread
    def commit(self, offsets=None) -> None:
        if self._member is not None:
            return self._member.commit(self, offsets)
        raise CommitFailedError("commit needs a consumer group: group_id=None (create the Consumer with group_id=...)")

    @one_thread
    def commit_async(self, offsets=None, callback=None) -> None:
        self.commit(offsets)
