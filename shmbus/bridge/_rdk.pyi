"""Type stubs of ``shmbus.bridge._rdk``, the bridge's compiled copy loop (see shmbus/bridge/_rdk.c and
shmbus/bridge/fast.py).

``rows`` are scan rows (shmbus/layout/frame.py: int64, ``META_COLS`` columns, one DATA frame each,
its body at ``M_BODY`` in ``buf``); a ring address points at the ring's 4096-byte header.
"""

from typing import Final

from typing_extensions import Buffer

#: every constant of shmbus/core/_layout.h by name (shmbus/layout/constants.py ``CONSTANTS``)
LAYOUT: Final[dict[str, int]]
#: statuses of ``Producer.produce_frames``
DONE: Final[int]
STALE: Final[int]
CORRUPT: Final[int]
ERROR: Final[int]
#: kinds of ``Producer.errors`` entries
E_CLIENT: Final[int]
E_FATAL: Final[int]
E_DELIVERY: Final[int]
E_REFUSED: Final[int]

def load(path: str, /) -> int:
    """Open librdkafka at ``path`` and find the functions used; its version (OSError if it cannot)."""

class Producer:
    """An idempotent librdkafka producer fed frame rows; delivery reports counted per target partition."""

    def __init__(self, config: dict[str, str]) -> None: ...
    def topic(self, name: str, partitions: int, /) -> int:
        """A target topic, with room for ``partitions`` partitions: its index."""
    def produce_frames(self, topic: int, partition: int, buf: Buffer, rows: Buffer, prefix: bytes, other: bytes,
                       ring_address: int, /) -> tuple[int, int, int]:
        """(rows taken, records sent, status): each row's record with the provenance header ``prefix`` +
        its offset; rows whose provenance names ``other`` are skipped; a ring's rows are checked after
        their copy (``ring_address`` 0: a private chunk)."""
    def state(self, topic: int, partition: int, /) -> tuple[int, int, int, int]:
        """(records handed over, acknowledged, the highest source offset acknowledged + 1, failed)."""
    def poll(self, timeout_ms: int, /) -> int: ...
    def flush(self, timeout_ms: int, /) -> int:
        """Records still in flight after waiting up to ``timeout_ms``."""
    def purge(self) -> None: ...
    def errors(self) -> list[tuple[int, int, int, int, str]]:
        """[(code, kind, topic index or -1, partition or -1, text)] since the last call."""
    def close(self) -> None: ...
