"""The one place that calls ``numba.njit``.

Every kernel is compiled with ``cache=True, nogil=True`` through :func:`jit`.

Where the cache goes. numba keys its cache on the hash of the file that defines
a kernel, so a change to a helper in another file (an atomic intrinsic, say)
would leave stale machine code in use. Our locator instead stamps every kernel
with one hash over *all* of ``shmbus/kernels/*.py`` and
``shmbus/layout/*.py`` (the byte layouts kernels bake in) plus the numba and llvmlite
versions: change any kernel source and every kernel recompiles once.

The heap. Importing numba and loading kernels leaves ~50-100k objects that
live as long as the process; every full pass of Python's cyclic garbage
collector walks them all (tens of ms), a pause that lands on whatever
send or poll runs at that moment. :func:`freeze_heap` moves the objects alive
at that point into the collector's permanent generation (``gc.freeze``):
reference counting still frees them, only cycle detection skips them. It runs
after numba's import and after each kernel load; ``SHMBUS_GC_FREEZE=0`` turns
it off.

The directory is, in order: ``$NUMBA_CACHE_DIR`` if the user set one;
``shmbus/kernels/__pycache__`` if the package dir is writable; else
``$XDG_CACHE_HOME/shmbus/numba`` (``~/.cache/shmbus/numba``), a dir the user owns.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile

import numba
from numba.core import caching as _caching


def freeze_heap() -> None:
    """Hide the objects alive now from the cyclic GC's full passes (see the module doc)."""
    if os.environ.get("SHMBUS_GC_FREEZE", "1") != "0":
        gc.freeze()

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


_LAYOUT_DIR = os.path.join(os.path.dirname(_KERNEL_DIR), "layout")


def _sources_stamp() -> str:
    h = hashlib.sha256()
    for d in (_KERNEL_DIR, _LAYOUT_DIR):
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    h.update(numba.__version__.encode())
    import llvmlite

    h.update(llvmlite.__version__.encode())
    return h.hexdigest()[:16]


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def cache_dir() -> str:
    """The directory our kernels are cached in (created on first use)."""
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return os.path.join(user, "shmbus")
    in_tree = os.path.join(_KERNEL_DIR, "__pycache__")
    if _writable_dir(in_tree):
        return in_tree
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "shmbus", "numba")


_STAMP = _sources_stamp()
_CACHE_DIR = cache_dir()


class _ShmbusCacheLocator(_caching._CacheLocator):
    """Caches kernels of shmbus/kernels only; stamped by all kernel sources."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno
        self._path = _CACHE_DIR

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return _STAMP

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _KERNEL_DIR:
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


_IMPL = getattr(_caching, "CacheImpl", None) or getattr(_caching, "_CacheImpl")
if _ShmbusCacheLocator not in _IMPL._locator_classes:
    _IMPL._locator_classes.insert(0, _ShmbusCacheLocator)


freeze_heap()


def entry_point(cache: dict, name: str, signatures):
    """The compiled entry point of hot kernel ``name`` (``signatures()[name]`` = (dispatcher, types)).

    Calling it skips numba's dispatcher, which types every argument on every
    call: about half of the dispatcher's cost per call. Loading one costs tens
    of ms, so each is loaded when first needed and kept in ``cache``.
    """
    f = cache.get(name)
    if f is None:
        disp, sig = signatures()[name]
        f = cache[name] = disp.compile(sig)
        freeze_heap()
    return f


def jit(*args, **kwargs):
    """``numba.njit`` with shmbus's options: cache=True, nogil=True."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)
