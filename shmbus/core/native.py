"""The compiled per-record verbs (``shmbus/core/_native.c``), when they are built and allowed.

``append`` and ``append_batch`` are the C twins of the numba kernels
``append_*`` (kernels/frames.py): same bytes, same statuses; ``Reader`` reads
one record at a consumer's cursor as the numba ``scan_ring`` kernel and the
records builder do (the consumer's general path, client/consumer/fetch.py);
``murmur2``/``partition`` and ``crc32c`` those of kernels/murmur2.py and
kernels/crc32c.py (bytes only); ``commit_offset`` that of
kernels/groups.py (a group member's commit); ``encode_headers`` and
``decode_headers`` those of kernels/headers.py (``pack_headers``, ``parse_headers``,
called by core/headers.py, which makes the Python objects);
``build_records`` that of ``client/consumer/fetch.py: python_records`` (records from scan rows); ``scan``
that of the ``scan`` and ``scan_copy`` kernels (with a values array), ``scan_ring`` that of
``scan_ring`` and ``scan_copy_ring``, so a consumer never imports numba; ``write_frames`` a
step of the supervisor's ``SegmentWriter.append`` (the numba twin: ``lay_out_frames`` in
kernels/segment_write.py, its writes in log/writer.py). ``Sender`` is
``Producer.send``'s common case in one call (see the C file).
They exist for the cost of a call and of start-up (see the C file's header).

``SHMBUS_NATIVE=0`` in the environment selects the numba kernels instead (the
tests run the data path both ways). If the extension was not built, or its
layout constants (``_native.LAYOUT``, every constant of its header, generated
from shmbus/layout/constants.py) disagree with shmbus/layout (a stale build),
the numba kernels are used and ``REASON`` says why.
"""

from __future__ import annotations

import os

from shmbus.layout.constants import CONSTANTS as _CONSTANTS

append = None
append_batch = None
Reader = None
crc32c = None
murmur2 = None
partition = None
add_sleepers = None
commit_offset = None
encode_headers = None
decode_headers = None
build_records = None
Sender = None
scan = None
scan_ring = None
write_frames = None
REASON = ""


def _expected() -> dict:
    """The constants the C module must export as ``LAYOUT``: all of shmbus/layout/constants.py,
    from which its header ``shmbus/core/_layout.h`` is generated (tools/gen_layout_h.py)."""
    return dict(_CONSTANTS)


def _load() -> None:
    global REASON
    if os.environ.get("SHMBUS_NATIVE", "1") == "0":
        REASON = "SHMBUS_NATIVE=0"
        return
    try:
        from shmbus.core import _native
    except ImportError as e:
        REASON = f"not built ({e})"
        return
    want = _expected()
    got_layout = getattr(_native, "LAYOUT", {})
    if got_layout != want:
        diff = sorted(k for k in want.keys() | got_layout.keys() if got_layout.get(k) != want.get(k))
        REASON = f"stale build: layout differs in {', '.join(diff)} (reinstall shmbus)"
        return
    try:
        got = {name: getattr(_native, name) for name in _VERBS}
    except AttributeError as e:
        REASON = f"stale build: {e} (reinstall shmbus)"
        return
    globals().update(got)  # every verb, or (above) none


# the names the C module must have (each a module global here, None until loaded)
_VERBS = ("append", "append_batch", "Reader", "crc32c", "murmur2", "partition", "add_sleepers", "Sender",
          "commit_offset", "encode_headers", "decode_headers", "build_records", "scan", "scan_ring", "write_frames")
_load()
ENABLED = append is not None


class LazyModule:
    """Stands for a module of numba kernels until an attribute is first used, then imports it.

    Importing numba and loading kernels costs ~0.5 s, which a process that
    only sends and takes single records (the compiled verbs above) need never
    pay. Attributes are cached on the stand-in once looked up.
    """

    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def __getattr__(self, attr):
        import importlib

        value = getattr(importlib.import_module(self._name), attr)
        self.__dict__[attr] = value
        return value


_K = LazyModule("shmbus.kernels.frames")


def _numba_kernel(name: str):
    def call(*args):
        return getattr(_K, name)(*args)

    call.__name__ = name
    return call


# The scans every reader uses (consumer, segment reads): the C twin when it is loaded,
# else the numba kernel, imported on the first call.
scan_frames = scan if scan is not None else _numba_kernel("scan")
scan_copy_frames = scan if scan is not None else _numba_kernel("scan_copy")
