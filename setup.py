"""Builds the optional C extensions (everything else is in pyproject.toml).

``shmbus.core._native`` holds the per-record verbs (send one record, take one
record); where it cannot be built (no C compiler, or not x86-64 Linux) the
install still succeeds and shmbus uses its numba kernels for them (see
shmbus/core/native.py). ``shmbus.bridge._rdk`` is the bridge's bus -> cluster
copy loop over librdkafka, which it opens at run time (the library
confluent-kafka loads; nothing to link at build time); without it the bridge
copies through confluent-kafka's Python API (see shmbus/bridge/fast.py).
"""

import platform
import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
    # shmbus/core/_layout.h: the layout constants, generated from shmbus/layout by tools/gen_layout_h.py
    ext.append(Extension("shmbus.core._native", ["shmbus/core/_native.c"], depends=["shmbus/core/_layout.h"],
                         extra_compile_args=["-O2", "-std=gnu11"], optional=True))
    ext.append(Extension("shmbus.bridge._rdk", ["shmbus/bridge/_rdk.c"], depends=["shmbus/core/_layout.h"],
                         extra_compile_args=["-O2", "-std=gnu11"], libraries=["dl"], optional=True))

setup(ext_modules=ext)
