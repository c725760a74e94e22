"""A Produce request's record batches: headers, checksum, decompression, records.

A partition's ``records`` in a Produce request (v3 and later) is one or more
RecordBatch v2::

    baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (2) | crc u32
    | attributes i16 | lastOffsetDelta i32 | firstTimestamp i64 | maxTimestamp i64
    | producerId i64 | producerEpoch i16 | baseSequence i32 | records count i32 | records

``crc`` is CRC-32C over attributes..end. Attributes: bits 0-2 the codec (0
none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), bit 3 the timestamp type, bit 4
transactional, bit 5 control.

Every byte is the client's: :func:`parse_batches` checks the framing, the
magic, the checksum and the attributes, and decompresses with a cap (a small
compressed batch must not become gigabytes in memory: the cap is what the
batch's records may hold at most, ``count * (2 * max.message.bytes + 64)``,
and never more than the listener's request limit). It raises
:class:`BatchError` with the Kafka error code a partition is answered with:

- CORRUPT_MESSAGE: bad framing, checksum, compressed data, or records;
- UNSUPPORTED_FOR_MESSAGE_FORMAT: magic 0 or 1 (message sets of Kafka 0.10
  and older; every client since Kafka 0.11 sends v2);
- UNSUPPORTED_COMPRESSION_TYPE: a codec number other than 0..4;
- INVALID_REQUEST: a transactional or control batch (the bus has no
  transactions);
- MESSAGE_TOO_LARGE: a record over the topic's ``max.message.bytes``.

The records themselves are parsed and checked by the numba kernel
``shmbus/kernels/kafka_in.py``.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

from shmbus.kernels import kafka_in as K
from shmbus.kernels.crc32c import crc32c



class E:
    """The Kafka error codes a batch is refused with (the numbers of handlers/errors.py; that package
    imports this module, so they are named here)."""

    CORRUPT_MESSAGE = 2
    MESSAGE_TOO_LARGE = 10
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    UNSUPPORTED_COMPRESSION_TYPE = 76


HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_BYTES = HEADER.size  # 61
LOG_OVERHEAD = 12  # baseOffset and batchLength: what batchLength does not count
CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = range(5)
CODEC_NAMES = ("none", "gzip", "snappy", "lz4", "zstd")
ATTR_CODEC = 0x07
ATTR_TIMESTAMP_TYPE = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
RECORD_OVERHEAD = 64  # a record's Kafka framing beyond its key, value and headers, bounded generously


class BatchError(Exception):
    """A batch the partition is answered with ``code`` for (nothing of the partition is written)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Batch(NamedTuple):
    """One checked batch, its records parsed (``table`` rows, see kernels/kafka_in.py)."""

    count: int
    first_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    codec: int
    data: np.ndarray  # the records section (decompressed), read-only uint8
    table: np.ndarray  # int64 [count, K_COLS]
    hbuf: np.ndarray  # the headers in frame form
    size: int  # key + value + header bytes of all records (frame form)

    @property
    def last_sequence(self) -> int:
        """The sequence of the batch's last record (sequences wrap at 2**31, as Kafka's)."""
        return (self.base_sequence + self.count - 1) & 0x7FFFFFFF


def parse_batches(records, max_message_bytes: int, limit: int) -> list[Batch]:
    """Every batch of a partition's ``records`` bytes, checked and parsed; BatchError for the first bad one.

    ``limit``: the most bytes the records of one batch may decompress to.
    """
    if not records:
        raise BatchError(E.CORRUPT_MESSAGE, "a partition's records are empty (a Produce needs a record batch)")
    mv = memoryview(records)
    out = []
    pos = 0
    while pos < len(mv):
        if len(mv) - pos < HEADER_BYTES:
            if len(mv) - pos >= 17 and mv[pos + 16] in (0, 1):
                raise _old_format(mv[pos + 16])
            raise BatchError(E.CORRUPT_MESSAGE, f"a record batch is truncated: {len(mv) - pos} bytes left, "
                                                f"a header takes {HEADER_BYTES}")
        (_base, length, _epoch, magic, crc, attrs, last_delta, first_ts, _max_ts, pid, pepoch, base_seq,
         count) = HEADER.unpack_from(mv, pos)
        if magic != 2:
            if magic in (0, 1):
                raise _old_format(magic)
            raise BatchError(E.CORRUPT_MESSAGE, f"unknown record batch magic {magic}")
        end = pos + LOG_OVERHEAD + length
        if length < HEADER_BYTES - LOG_OVERHEAD or end > len(mv):
            raise BatchError(E.CORRUPT_MESSAGE, f"a record batch's length {length} does not fit the "
                                                f"{len(mv) - pos} bytes left")
        if crc32c(mv[pos + 21: end]) != crc:
            raise BatchError(E.CORRUPT_MESSAGE, "a record batch's CRC-32C does not match its bytes")
        if attrs & (ATTR_TRANSACTIONAL | ATTR_CONTROL):
            raise BatchError(E.INVALID_REQUEST, "transactional and control batches are not supported: the bus "
                                                "has no transactions (leave transactional.id unset)")
        if count < 1 or last_delta != count - 1:
            raise BatchError(E.CORRUPT_MESSAGE, f"a record batch counts {count} records with last offset "
                                                f"delta {last_delta}")
        codec = attrs & ATTR_CODEC
        body = mv[pos + HEADER_BYTES: end]
        cap = min(limit, count * (2 * max_message_bytes + RECORD_OVERHEAD))
        if codec == CODEC_NONE:
            raw = bytes(body)
        else:
            raw = decompress(codec, bytes(body), cap)
        if len(raw) > cap:
            raise _over_cap(cap)
        data = np.frombuffer(raw, np.uint8)
        table = np.empty((count if count <= len(raw) else 1, K.K_COLS), np.int64)
        hbuf = np.empty(3 * len(raw) + 8, np.uint8)
        n = K.parse_records(data, 0, len(raw), count, max_message_bytes, table, hbuf)
        if n == K.P_OVER_MAX:
            raise BatchError(E.MESSAGE_TOO_LARGE, f"record {int(table[0, K.K_KSTART])} of a batch is larger "
                                                  f"than the topic's max.message.bytes={max_message_bytes} "
                                                  f"(key + value + headers)")
        if n == K.P_COUNT:
            raise BatchError(E.CORRUPT_MESSAGE, f"a record batch's header counts {count} records, its bytes "
                                                f"hold another number")
        if n < 0:
            raise BatchError(E.CORRUPT_MESSAGE, "a record batch's records do not parse (a length or varint "
                                                "runs past its record, or a header key is not UTF-8)")
        out.append(Batch(count, first_ts, pid, pepoch, base_seq, codec, data, table, hbuf,
                         int(table[:count, K.K_SIZE].sum())))
        pos = end
    return out


def _old_format(magic: int) -> BatchError:
    return BatchError(E.UNSUPPORTED_FOR_MESSAGE_FORMAT,
                      f"record batch magic {magic} (a message set of Kafka 0.10 or older) is not supported: "
                      f"the bus takes RecordBatch v2 (Produce v3 and later)")


def decompress(codec: int, payload: bytes, cap: int) -> bytes:
    """``payload`` decompressed with Kafka's codec number ``codec``; BatchError past ``cap`` bytes.

    Decompression stops one byte past the cap, so a decompression bomb never
    fills memory. BatchError for bad data or an unknown codec too.
    """
    try:
        if codec == CODEC_GZIP:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out = d.decompress(payload, cap + 1)
            if len(out) <= cap and not d.eof:
                raise ValueError("the gzip stream is truncated")
        elif codec == CODEC_SNAPPY:
            out = _snappy(payload, cap)
        elif codec == CODEC_LZ4:
            import lz4.frame

            d = lz4.frame.LZ4FrameDecompressor()
            out = d.decompress(payload, max_length=cap + 1)
            if len(out) <= cap and not d.eof:
                raise ValueError("the lz4 frame is truncated")
        elif codec == CODEC_ZSTD:
            import io

            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload), read_across_frames=True) as r:
                out = r.read(cap + 1)
        else:
            raise BatchError(E.UNSUPPORTED_COMPRESSION_TYPE, f"unknown compression codec {codec} (Kafka's are 0..4)")
    except ImportError as e:
        raise BatchError(E.UNSUPPORTED_COMPRESSION_TYPE,
                         f"compression {CODEC_NAMES[codec]} needs a module that is not installed: {e.name} "
                         f"(install the extra 'kafka')") from None
    except BatchError:
        raise
    except Exception as e:  # noqa: BLE001 (any failure of a decoder on hostile bytes)
        raise BatchError(E.CORRUPT_MESSAGE, f"{CODEC_NAMES[codec]} data does not decompress: "
                                            f"{type(e).__name__}: {e}") from None
    if len(out) > cap:
        raise _over_cap(cap)
    return out


def _over_cap(cap: int) -> BatchError:
    return BatchError(E.MESSAGE_TOO_LARGE, f"a record batch's records decompress to more than {cap} bytes, more "
                                           f"than its records may hold under the topic's max.message.bytes")


_XERIAL = b"\x82SNAPPY\x00"


def _snappy(payload: bytes, cap: int) -> bytes:
    """Snappy as Kafka clients send it: raw, or xerial-framed (a 16-byte header, then
    ``i32 length | raw block`` repeated). Each block's decompressed size is read from its
    preamble before it is decompressed, so the cap holds before any memory is taken."""
    import snappy

    blocks = []
    if payload[:8] == _XERIAL and len(payload) >= 16:
        i = 16
        while i < len(payload):
            if i + 4 > len(payload):
                raise ValueError("truncated xerial block length")
            (n,) = struct.unpack_from(">i", payload, i)
            if n < 0 or i + 4 + n > len(payload):
                raise ValueError("a xerial block runs past the end")
            blocks.append(payload[i + 4: i + 4 + n])
            i += 4 + n
    else:
        blocks.append(payload)
    total = 0
    for b in blocks:
        total += _snappy_length(b)
        if total > cap:
            raise _over_cap(cap)
    return b"".join(snappy.decompress(b) for b in blocks)


def _snappy_length(block: bytes) -> int:
    """The decompressed length a raw snappy block declares (its leading varint)."""
    n = shift = 0
    for i, b in enumerate(block[:5]):
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
    raise ValueError("a snappy block's length preamble is bad")
