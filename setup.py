"""Builds the optional C extension ``shmbus.core._native`` (everything else is in pyproject.toml).

The extension holds the per-record verbs (send one record, take one record);
where it cannot be built (no C compiler, or not x86-64 Linux) the install still
succeeds and shmbus uses its numba kernels for them (see shmbus/native.py).
"""

import platform
import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
    # shmbus/core/_layout.h: the layout constants, generated from shmbus/layout by tools/gen_layout_h.py
    ext.append(Extension("shmbus.core._native", ["shmbus/core/_native.c"], depends=["shmbus/core/_layout.h"],
                         extra_compile_args=["-O2", "-std=gnu11"], optional=True))

setup(ext_modules=ext)
