"""The small value types of the public API (kafka-python's shapes)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


class PartitionDescription(NamedTuple):
    partition: int
    start_offset: int
    end_offset: int


class TopicDescription(NamedTuple):
    name: str
    config: dict
    partitions: list


class BatchMetadata(NamedTuple):
    """Where each record of a ``send_batch`` went: numpy arrays, one entry per record."""

    topic: str
    partitions: np.ndarray
    offsets: np.ndarray


class RecordBatch:
    """Records of one partition from ``poll_batch``, without a Python object per record.

    ``offsets``, ``timestamps``: int64 arrays. Values are stored back to back in
    ``value_data`` (uint8); record i's value is
    ``value_data[value_starts[i] : value_starts[i] + value_lengths[i]]``
    (``value_lengths[i] == -1``: a null value). :meth:`values_array` gives a
    2-D view when all values have one length. Keys and headers are not
    copied on this path; use ``poll`` when you need them.
    Safe for one thread; the arrays are the batch's own (not shared memory).
    """

    __slots__ = ("topic", "partition", "offsets", "timestamps", "value_data", "value_starts", "value_lengths")

    def __init__(self, topic, partition, offsets, timestamps, value_data, value_starts, value_lengths):
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.timestamps = timestamps
        self.value_data = value_data
        self.value_starts = value_starts
        self.value_lengths = value_lengths

    def __len__(self) -> int:
        return len(self.offsets)

    def value(self, i: int) -> bytes | None:
        n = int(self.value_lengths[i])
        if n < 0:
            return None
        s = int(self.value_starts[i])
        return self.value_data[s : s + n].tobytes()

    def values(self) -> list:
        return [self.value(i) for i in range(len(self))]

    def values_array(self) -> np.ndarray:
        """A (records, length) uint8 view; raises ValueError if lengths differ."""
        n = len(self)
        if n == 0:
            return np.empty((0, 0), np.uint8)
        w = int(self.value_lengths[0])
        if w < 0 or not np.all(self.value_lengths == w):
            raise ValueError("values differ in length (or are null); use value(i) or values()")
        return self.value_data[: n * w].reshape(n, w)

    def __iter__(self):
        for i in range(len(self)):
            yield ConsumerRecord(self.topic, self.partition, int(self.offsets[i]), int(self.timestamps[i]),
                                 None, self.value(i), [])

    def __repr__(self) -> str:
        return f"RecordBatch(topic={self.topic!r}, partition={self.partition}, records={len(self)})"
