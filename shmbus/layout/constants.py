"""Every layout constant the verbs use, under the one name both twins give it.

The numba kernels (``shmbus/kernels/``) import these names from here; the C
verbs (``shmbus/core/_native.c``) include ``shmbus/core/_layout.h``, which
``tools/gen_layout_h.py`` writes from :data:`CONSTANTS`, and export them back
as ``_native.LAYOUT``, which ``shmbus/native.py`` compares with
:data:`CONSTANTS` at import (a build from another layout is not used). The
values themselves are defined, and explained, in ``frame.py``, ``ring.py``,
``groups.py`` and ``segment.py`` of this package.
"""

from __future__ import annotations

from shmbus.layout import frame as _F
from shmbus.layout import groups as _G
from shmbus.layout import ring as _R
from shmbus.layout import segment as _S

# --- the partition ring (ring.py) ---
RING_HDR = _R.HEADER_BYTES
R_RING_BYTES = _R.OFF_RING_BYTES
R_FLAGS = _R.OFF_FLAGS
R_MAX_MESSAGE = _R.OFF_MAX_MESSAGE
R_CLAIM_POS = _R.OFF_CLAIM_POS
R_CLAIM_OFFSET = _R.OFF_CLAIM_OFFSET
R_RELEASED = _R.OFF_RELEASED
R_RECLAIMING = _R.OFF_RECLAIMING
R_SLEEPERS = _R.OFF_SLEEPERS
FLAG_DELETED = _R.FLAG_DELETED

# --- a frame (frame.py) ---
F_ALIGN = _F.ALIGN
F_HDR = _F.HEADER_BYTES
F_OFFSET = _F.OFF_OFFSET
F_TS = _F.OFF_TIMESTAMP
F_KLEN = _F.OFF_KEY_LEN
F_VLEN = _F.OFF_VALUE_LEN
F_HLEN = _F.OFF_HEADERS_LEN
F_CRC = _F.OFF_CRC
# the header word
LEN_MASK = _F.LEN_MASK
TYPE_SHIFT = _F.TYPE_SHIFT
TYPE_MASK = _F.TYPE_MASK
AUX_SHIFT = _F.AUX_SHIFT
PID_MASK = _F.PID_MASK
T_FREE = _F.FREE
T_DATA = _F.DATA
T_PADDING = _F.PADDING
T_RESERVED = _F.RESERVED
T_POISON = _F.POISON
NULL_LEN = _F.NULL_LEN

# what an append returns instead of offset << 2 | wake bits
ST_FULL = _F.ST_FULL
ST_DELETED = _F.ST_DELETED
ST_TOO_LARGE = _F.ST_TOO_LARGE
ST_OVER_MAX = _F.ST_OVER_MAX
ST_STALLED = _F.ST_STALLED
MAX_CLAIM_BYTES = _F.MAX_CLAIM_BYTES

# --- the scan metadata (frame.py) ---
META_COLS = _F.META_COLS
MS_POS = _F.MS_POS
MS_COUNT = _F.MS_COUNT
MS_REASON = _F.MS_REASON
MS_BAD = _F.MS_BAD
M_POS = _F.M_POS
M_OFFSET = _F.M_OFFSET
M_TS = _F.M_TS
M_KLEN = _F.M_KLEN
M_VLEN = _F.M_VLEN
M_HLEN = _F.M_HLEN
M_BODY = _F.M_BODY
M_LEN = _F.M_LEN
SP_INDEX = _F.SP_INDEX
SP_LEN = _F.SP_LEN
SP_OFFSET = _F.SP_OFFSET
SP_TS = _F.SP_TS
SP_TYPE = _F.SP_TYPE
SP_PID = _F.SP_PID
SP_MIN_COLS = _F.SP_MIN_COLS
STOP_MAX = _F.STOP_MAX
STOP_EMPTY = _F.STOP_EMPTY
STOP_END = _F.STOP_END
STOP_CORRUPT = _F.STOP_CORRUPT
STOP_CRC = _F.STOP_CRC

# --- a compiled Reader's read state ---
POS_NONE = _F.POS_NONE

# --- a group's offsets table (groups.py) ---
G_HDR = _G.HEADER_BYTES
G_SLOTS = _G.OFF_SLOTS
G_SLOT_BYTES = _G.SLOT_BYTES
S_OFFSET = _G.S_OFFSET
G_OK = _G.COMMIT_OK
G_FENCED = _G.COMMIT_FENCED
G_BAD_SLOT = _G.COMMIT_BAD_SLOT

# --- a segment's index records (segment.py) ---
IDX_BYTES = _S.IDX_BYTES
IDX_OFF_REL = _S.IDX_OFF_REL
IDX_OFF_POS = _S.IDX_OFF_POS
TIDX_BYTES = _S.TIDX_BYTES
TIDX_OFF_TS = _S.TIDX_OFF_TS
TIDX_OFF_REL = _S.TIDX_OFF_REL
TIDX_OFF_PAD = _S.TIDX_OFF_PAD

#: every constant above, by name, in the order of this file: the table of ``shmbus/core/_layout.h``
CONSTANTS = {k: v for k, v in dict(globals()).items() if k.isupper() and type(v) is int}
