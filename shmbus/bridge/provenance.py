"""The provenance header every copied record carries: ``shmbus.bridge`` = ``ORIGIN TOPIC PARTITION OFFSET``.

ORIGIN is the side the record was read from: ``bus:<bus id>`` for a bus,
``kafka:<bootstrap servers>`` for a cluster (as the bridge names it). A bridge
copies no record whose provenance names its own other side, so a two-way bridge
never sends a record back; TOPIC, PARTITION and OFFSET translate offsets.
"""

from __future__ import annotations

HEADER = "shmbus.bridge"


def bus_origin(bus_id: str) -> bytes:
    return f"bus:{bus_id}".encode()


def cluster_origin(servers: str) -> bytes:
    return f"kafka:{servers}".encode()


def value(origin: bytes, topic: str, partition: int, offset: int) -> bytes:
    return b"%s %s %d %d" % (origin, topic.encode(), partition, offset)


def from_origin(headers, origin: bytes) -> bool:
    """Does a record with ``headers`` ([(key, value)], or None) carry provenance from ``origin``?"""
    if not headers:
        return False
    for k, v in headers:
        if k == HEADER and v is not None and v.split(b" ", 1)[0] == origin:
            return True
    return False


def parse(v: bytes):
    """(origin, topic, partition, offset) of a provenance value, or None if it is not one."""
    try:
        origin, topic, p, off = v.split(b" ")
        return origin, topic.decode(), int(p), int(off)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def source_offset(headers, origin: bytes, topic: str, partition: int):
    """The offset a record had on the side ``origin`` if its provenance says it came from ``topic`` and
    ``partition`` there (``headers``: [(key, value)], or None); else None."""
    for k, v in headers or ():
        pv = parse(v) if k == HEADER else None
        if pv and pv[0] == origin and pv[1] == topic and pv[2] == partition:
            return pv[3]
    return None


__all__ = ["HEADER", "bus_origin", "cluster_origin", "value", "from_origin", "parse", "source_offset"]
