"""Validation at the door: out-of-range timestamps and offsets, and header names that are not
valid Unicode, get the library's errors (both send paths), and nothing is written."""

from __future__ import annotations

import pytest

from shmbus import TopicPartition
from shmbus.errors import InvalidArgumentError, InvalidRecordError, ShmbusError
from shmbus.client.producer import Producer


def _end(bus):
    return bus.describe_topic("t").partitions[0].end_offset


@pytest.fixture
def topic(bus):
    bus.create_topic("t")
    with bus.producer() as p:
        p.send("t", b"first", timestamp_ms=5)
    return bus


# send: the producer's send attribute (a compiled native.Sender when built), and the Python send
_SENDS = {
    "send": lambda p: p.send,
    "python send": lambda p: (lambda *a, **k: Producer.send(p, *a, **k)),
}


@pytest.mark.parametrize("path", sorted(_SENDS))
@pytest.mark.parametrize("ts", [-5, -1, 1 << 63, (1 << 64) + 3, -(1 << 63) - 1, 1.5, "7", True])
def test_a_bad_timestamp_is_refused_and_nothing_is_written(topic, path, ts):
    bus = topic
    with bus.producer() as p:
        send = _SENDS[path](p)
        before = _end(bus)
        with pytest.raises(InvalidRecordError, match="timestamp_ms must be an int >= 0 and < 2\\*\\*63") as ei:
            send("t", b"v", timestamp_ms=ts)
        assert isinstance(ei.value, ShmbusError) and isinstance(ei.value, ValueError)
        with pytest.raises(InvalidRecordError):
            send("t", b"v", key=b"k", headers=[("h", b"x")], partition=0, timestamp_ms=ts)
        assert _end(bus) == before
        assert send("t", b"ok", timestamp_ms=0).offset == before  # the edges are fine
        assert send("t", b"ok", timestamp_ms=(1 << 63) - 1).offset == before + 1


@pytest.mark.parametrize("path", sorted(_SENDS))
@pytest.mark.parametrize("name", ["\ud800", "a\udcffb", "\udfff"])
def test_a_header_name_with_a_surrogate_is_refused_and_nothing_is_written(topic, path, name):
    bus = topic
    with bus.producer() as p:
        send = _SENDS[path](p)
        before = _end(bus)
        for headers in ([(name, b"v")], ((name, None),), [("ok", b"1"), (name, b"v")], iter([(name, b"v")])):
            with pytest.raises(InvalidRecordError, match="a header key must be valid Unicode"):
                send("t", b"v", headers=headers)
        assert _end(bus) == before


def test_seek_and_offsets_for_times_out_of_int64_get_the_librarys_error(topic):
    bus = topic
    tp = TopicPartition("t", 0)
    with bus.consumer(auto_offset_reset="earliest") as c:
        c.assign([tp])
        for bad in (1 << 63, 1 << 70, -1):
            with pytest.raises(InvalidArgumentError, match="offset must be an int >= 0 and < 2\\*\\*63"):
                c.seek(tp, bad)
            with pytest.raises(InvalidArgumentError, match="timestamp must be an int >= 0 and < 2\\*\\*63"):
                c.offsets_for_times({tp: bad})
        c.seek(tp, (1 << 63) - 1)  # the largest offset is accepted (and is past the end)
        assert c.offsets_for_times({tp: (1 << 63) - 1}) == {tp: None}
        assert c.offsets_for_times({tp: 0})[tp].offset == 0
        c.seek(tp, 0)
        assert [r.timestamp for r in c.poll(timeout_ms=500)[tp]] == [5]
