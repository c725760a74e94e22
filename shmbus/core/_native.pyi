"""Type stubs of ``shmbus.core._native``, the compiled verbs (see shmbus/core/_native.c and shmbus/core/native.py).

Addresses (``addr``, ``meta_addr``, ``values_addr``) are the addresses of mappings or
numpy arrays (``ctypes.data``); a ring address points at the ring's 4096-byte header.
Appends answer ``offset << 2 | wake bits`` (bit 0: a consumer sleeps on the ring; bit 1:
the ring passed half full) or a negative status (layout/frame.py ``ST_*``).
"""

from collections.abc import Callable, Sequence
from typing import Any, Final

from typing_extensions import Buffer

_Headers = Sequence[tuple[str, bytes | None]]

#: every constant of shmbus/core/_layout.h by name (shmbus/layout/constants.py ``CONSTANTS``)
LAYOUT: Final[dict[str, int]]
#: 1 when the CPU has SSE4.2 (the CRC-32C instruction), else 0
HAVE_SSE42: Final[int]

def append(addr: int, key: bytes | None, value: bytes | None, hdrs: bytes, ts: int, pid: int, /) -> int:
    """Append one record (``hdrs``: encoded headers, b"" for none): ``offset << 2 | wake bits`` or a status."""

def append_batch(
    addr: int,
    data: Buffer,
    starts: Buffer,
    lens: Buffer,
    keys: Buffer,
    kstarts: Buffer,
    klens: Buffer,
    ts: int,
    pid: int,
    first: int,
    out: Buffer,
    /,
) -> int:
    """Records ``first..`` of a batch (int64 arrays; lens/klens -1: null) in one claim:
    ``count << 2 | wake bits`` or a status; their offsets go to ``out[j]``."""

def crc32c(data: bytes, crc: int = 0, /) -> int:
    """The CRC-32C of ``data``, continuing the finished ``crc``."""

def murmur2(key: bytes, /) -> int:
    """Kafka's murmur2 of ``key``, in [0, 2**32)."""

def partition(key: bytes, num_partitions: int, /) -> int:
    """Kafka's partition for ``key``: ``(murmur2(key) & 0x7fffffff) % num_partitions``."""

def add_sleepers(addr: int, delta: int, /) -> int:
    """Add ``delta`` to the ring's SLEEPERS count (a full barrier); the count before."""

def commit_offset(addr: int, slot: int, token: int, offset: int, /) -> int:
    """A group member's commit into its offsets table: 0, -2 (fenced) or -3 (no such slot)."""

def encode_headers(headers: Any, /) -> bytes | None:
    """Headers (a list or tuple of ``(str, bytes | None)``) as bytes; None for other kinds."""

def decode_headers(b: bytes, /) -> list[tuple[str, bytes | None]]:
    """Header bytes as ``[(str, bytes | None), ...]``; ValueError if they cannot be."""

def build_records(buf: Buffer, meta: Buffer, topic: str, partition: int, record_type: type, /) -> list[Any]:
    """``record_type`` 7-tuples (topic, partition, offset, timestamp, key, value, headers) for
    scan metadata rows (int64, META_COLS columns) whose bodies are in ``buf``."""

def scan(
    buf: Buffer,
    base: int,
    mask: int,
    pos: int,
    end: int,
    max_n: int,
    min_offset: int,
    verify: bool,
    meta: Buffer,
    values: Buffer = ...,
    /,
) -> int:
    """The ``scan`` kernel (with ``values``: ``scan_copy``); records described in ``meta``."""

def scan_ring(
    addr: int,
    pos: int,
    max_n: int,
    min_offset: int,
    meta_addr: int,
    meta_rows: int,
    values_addr: int = ...,
    values_len: int = ...,
    /,
) -> int:
    """``scan_ring`` (with the values buffer: ``scan_copy_ring``) over the ring at ``addr``."""

def write_frames(
    buf: Buffer,
    rows: Buffer,
    cols: int,
    first: int,
    fd: int,
    ifd: int,
    tfd: int,
    size: int,
    segment_bytes: int,
    base: int,
    last_index_pos: int,
    max_ts: int,
    index_interval: int,
    next_offset: int,
    /,
) -> tuple[int, int, int, int, int, int]:
    """A spill step of SegmentWriter.append: (next row, frames, size, last index pos, max ts, next offset)."""

class Reader:
    """One partition's single-record reads from the ring at ``addr``."""

    cursor: int  # the ring position of the next frame; -1: unknown
    position_raw: int  # the next offset; POS_NONE (INT64_MIN): not resolved

    def __new__(cls, addr: int, tp: tuple[str, int], record_type: type, /) -> "Reader": ...
    def take(self, more: bool, /) -> Any:
        """The record at the cursor; 0: nothing published there; None: the general path decides."""
    def take_many(self, max_n: int, spin_ns: int, /) -> list[Any] | int | None:
        """The records from the cursor on (up to ``max_n``, after spinning up to ``spin_ns``), or 0 / None."""
    def poll(self, max_n: int, spin_ns: int, /) -> dict[Any, list[Any]] | int | None:
        """As ``take_many``, answered as ``{tp: records}``."""

class Sender:
    """``Producer.send``'s common case in one call; other cases go to ``fallback``."""

    def __new__(
        cls,
        topics: dict[str, bytearray],
        fallback: Callable[..., Any],
        after: Callable[[int], Any],
        meta_type: type,
        pid: int,
        /,
    ) -> "Sender": ...
    def __call__(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: _Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Any: ...
    def set_pid(self, pid: int, /) -> None:
        """The pid written into claims (after a fork)."""
