"""The compiled copy loop of direction out (``shmbus/bridge/_rdk.c``), when it is built and allowed.

``load()`` returns the ``_rdk`` module with librdkafka opened, or None; then
``REASON`` says why and the bridge copies through confluent-kafka's Python API
(the same records, the same provenance and acknowledgements, slower).
librdkafka is the very library confluent-kafka loaded (found among the
process's mappings), so both clients share one copy of it.

``SHMBUS_NATIVE=0`` selects the Python copier, as it selects the numba kernels
for the bus's verbs (the tests run the bridge both ways).
"""

from __future__ import annotations

import importlib
import os

REASON = ""
_module = None
_tried = False


def librdkafka_path() -> str | None:
    """The file of the librdkafka that confluent-kafka loaded in this process, or None."""
    importlib.import_module("confluent_kafka.cimpl")  # (loads librdkafka)

    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith("librdkafka"):
                        return path
    except OSError:
        return None
    return None


def load():
    """The ``_rdk`` module ready to use, or None (see ``REASON``)."""
    global REASON, _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("SHMBUS_NATIVE", "1") == "0":
        REASON = "SHMBUS_NATIVE=0"
        return None
    try:
        from shmbus.bridge import _rdk
    except ImportError as e:
        REASON = f"not built ({e})"
        return None
    from shmbus.layout.constants import CONSTANTS

    if getattr(_rdk, "LAYOUT", {}) != dict(CONSTANTS):
        REASON = "stale build: its layout differs from shmbus/layout (reinstall shmbus)"
        return None
    path = librdkafka_path()
    if path is None:
        REASON = "librdkafka not found among the process's libraries"
        return None
    try:
        _rdk.load(path)
    except OSError as e:
        REASON = str(e)
        return None
    _module = _rdk
    return _module


__all__ = ["load", "librdkafka_path", "REASON"]
