r"""The frame: one record, the same bytes in a ring and in a segment file.

Frames are 8-byte aligned and never straddle the end of a ring::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +---------------------------------------------------------------+
    |        frame length (u32): header + body, a multiple of 8      | +0  \  the header word,
    +---------------+-----------------------------------------------+      |  one 64-bit word,
    |   type (u8)   | aux (24 bits): a pid (RESERVED, fenced PADDING)| +4  /  written last
    +---------------+-----------------------------------------------+
    |                          offset (i64)                          | +8
    |                                                                |
    +---------------------------------------------------------------+
    |                timestamp, ms since the epoch (i64)             | +16
    |                                                                |
    +---------------------------------------------------------------+
    |                 key length (i32; -1 = null key)                | +24
    +---------------------------------------------------------------+
    |               value length (i32; -1 = null value)              | +28
    +---------------------------------------------------------------+
    |              headers length (i32; encoded bytes)               | +32
    +---------------------------------------------------------------+
    |        crc32c (u32) of bytes +8..+36 and of the body           | +36
    +---------------------------------------------------------------+
    |  key  |  value  |  headers  |  zeros up to a multiple of 8     | +40
    +---------------------------------------------------------------+

The header word's states (its low 32 bits are the length, except for FREE):

- FREE (0): nothing here yet. A reader stops.
- RESERVED: a writer claimed the space and is writing it; aux = its pid;
  the length is the whole claim (for a batch: every frame of it, the first
  frame's header being the one reserved and published last). A reader stops.
- DATA: a published record. The writer publishes with a compare-and-swap
  RESERVED(pid) -> DATA after the body; if the swap fails, the supervisor
  took the claim (below) and the send fails: nothing of it is published.
- PADDING: space to skip: the end of the ring, or an unblocked claim. aux 0,
  or the pid of a stalled writer whose claim was *fenced*: the supervisor
  turned its RESERVED word into PADDING(whole claim, pid) because the writer
  held readers up for longer than the topic's ``unblock.timeout.ms``. That
  writer, when it runs again, still writes its body into the claim, then its
  publish fails and it sets aux to 0 ("lets go", a compare-and-swap). Until
  then (or until the pid is gone) the spiller does not free (zero) the region.
- POISON: an 8-byte word inside a region the supervisor is unblocking, so a
  late writer's reserve (compare-and-swap from FREE) fails and it retries.

Headers are encoded as repeated ``u16 key length | key utf-8 | i32 value
length (-1 = null) | value``.
"""

from __future__ import annotations

ALIGN = 8
HEADER_BYTES = 40

# byte offsets inside a frame
OFF_HEADER_WORD = 0
OFF_TYPE = 4  # the header word's type byte (little-endian)
OFF_OFFSET = 8
OFF_TIMESTAMP = 16
OFF_KEY_LEN = 24
OFF_VALUE_LEN = 28
OFF_HEADERS_LEN = 32
OFF_CRC = 36
OFF_BODY = 40
CRC_FROM = OFF_OFFSET  # the checksum covers [+8, +36) then the body

# the header word's fields
LEN_MASK = 0xFFFF_FFFF  # bits 0..31: the frame length
TYPE_SHIFT = 32  # bits 32..39: the type
TYPE_MASK = 0xFF
AUX_SHIFT = 40  # bits 40..63: aux (a RESERVED frame's writer pid)
PID_MASK = (1 << 24) - 1

# frame types (bits 32..39 of the header word)
FREE = 0
DATA = 1
PADDING = 2
RESERVED = 3
POISON = 4

# The metadata a scan (the ``scan``/``scan_copy`` kernels, their C twins) fills: an int64
# array of META_COLS columns. Row 0 is the scan's state, rows 1..n describe one DATA frame each.
META_COLS = 8
# row 0
MS_POS = 0  # the position where the scan stopped (where the next one starts)
MS_COUNT = 1  # records described
MS_REASON = 2  # why it stopped: STOP_*
MS_BAD = 3  # the bad frame's position (STOP_CORRUPT, STOP_CRC; -1 otherwise); spill_scan: the blocked header word
# rows 1..n of scan and scan_copy
M_POS = 0  # the frame's position
M_OFFSET = 1
M_TS = 2  # timestamp
M_KLEN = 3  # key length (NULL_LEN: null)
M_VLEN = 4  # value length (NULL_LEN: null)
M_HLEN = 5  # headers length
M_BODY = 6  # the body's index in the scanned buffer (scan_copy: the value's start in the values buffer)
M_LEN = 7  # the frame's length
# rows 1..n of spill_scan (the frames the spiller copies to disk; write_frames reads them)
SP_INDEX = 0  # the frame's index in the ring mapping
SP_LEN = 1  # the frame's length
SP_OFFSET = 2  # -1 for padding
SP_TS = 3  # -1 for padding
SP_TYPE = 4  # DATA or PADDING
SP_PID = 5  # the writer's pid of a fenced claim's padding (0 otherwise)
SP_MIN_COLS = 5  # write_frames needs these columns

# The table the header parser fills (``parse_headers``, kernels/headers.py; core/headers.py makes the
# str and bytes objects from it): an int64 array of HDR_COLS columns. Row 0 is the parse's state,
# rows 1..n describe one header each, as indices into the header bytes.
HDR_COLS = 4
HS_COUNT = 0  # row 0: headers described (for a corrupt block: the well-formed ones before the bad one)
HS_BAD = 1  # row 0: the position of the header that cannot be (HDR_CORRUPT), else -1
H_KEY = 0  # rows 1..n: the key's start
H_KLEN = 1  # the key's length
H_VALUE = 2  # the value's start
H_VLEN = 3  # the value's length (NULL_LEN: null)
HDR_MIN_BYTES = 6  # the smallest header: u16 key length, i32 value length
HDR_KEY_MAX = 0xFFFF  # a key's UTF-8 bytes, at most (its length is a u16)
# what the header kernels return instead of a count
HDR_CORRUPT = -1  # parse: bytes that cannot be headers (row 0 says where)
HDR_TABLE_SHORT = -2  # parse: the table has fewer than 1 + len(bytes) // HDR_MIN_BYTES rows
HDR_BAD_LENGTHS = -3  # pack: lengths that disagree with the source or output buffer

# why a scan stopped (``meta[0, MS_REASON]`` of the scan kernels and their C twins)
STOP_MAX = 0  # max records or bytes reached
STOP_EMPTY = 1  # a FREE or RESERVED word: nothing more published yet
STOP_END = 2  # end of the buffer (segment chunk) or of the given range
STOP_CORRUPT = 3  # a header that cannot be (bad type or length)
STOP_CRC = 4  # checksum mismatch

NULL_LEN = -1
POS_NONE = -(1 << 63)  # a compiled Reader's position_raw for "not resolved yet" (INT64_MIN)

# what an append returns instead of ``offset << 2 | wake bits`` (kernels and shmbus/core/_native.c)
ST_FULL = -1  # no room until the supervisor spills
ST_DELETED = -2  # the topic was deleted
ST_TOO_LARGE = -3  # the frame would take more than half the ring
ST_OVER_MAX = -4  # key + value + headers > the topic's max.message.bytes
ST_STALLED = -5  # the writer stalled past unblock.timeout.ms; its claim was fenced, nothing written

# a batch's claim is at most this many bytes (its RESERVED header carries the whole length in 32 bits)
MAX_CLAIM_BYTES = 1 << 31


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def frame_length(key_len: int, value_len: int, headers_len: int) -> int:
    """Bytes a record takes in a ring or segment (lengths of -1 count as 0)."""
    return align(HEADER_BYTES + max(key_len, 0) + max(value_len, 0) + headers_len)


def header_word(length: int, ftype: int, aux: int = 0) -> int:
    return length | (ftype << TYPE_SHIFT) | ((aux & PID_MASK) << AUX_SHIFT)


assert OFF_TYPE * 8 == TYPE_SHIFT
assert OFF_BODY == HEADER_BYTES and HEADER_BYTES % ALIGN == 0
assert OFF_CRC + 4 == OFF_BODY
assert LEN_MASK == (1 << TYPE_SHIFT) - 1 and TYPE_MASK == (1 << (AUX_SHIFT - TYPE_SHIFT)) - 1
assert PID_MASK == (1 << (64 - AUX_SHIFT)) - 1
assert max(M_POS, M_OFFSET, M_TS, M_KLEN, M_VLEN, M_HLEN, M_BODY, M_LEN) < META_COLS
assert max(HS_COUNT, HS_BAD, H_KEY, H_KLEN, H_VALUE, H_VLEN) < HDR_COLS
