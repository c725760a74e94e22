"""Replacing and deleting segment files so that a crash leaves the old or the new, never neither.

Replace (the cleaner)::

    1. write <base>.log.cleaned, <base>.index.cleaned, <base>.timeindex.cleaned; fsync each
    2. rename <base>.log.cleaned -> <base>.log        the commit point (rename is atomic)
    3. rename the two index files into place
    4. fsync the directory

Delete (retention, or a segment the cleaner emptied)::

    1. unlink <base>.log                               the commit point
    2. unlink <base>.index, <base>.timeindex

On start, :func:`resolve_leftovers` finishes what a crash interrupted: a
``.log.cleaned`` still there means step 2 never happened, so every
``.cleaned`` of that base goes; index ``.cleaned`` files without one were
committed, so they are renamed into place; index files without a ``.log``
are deleted. ``.swap`` files (Kafka's name for the same step; none are made
here) are deleted too.

Readers are safe throughout: an open fd keeps reading the file it opened,
and a reader checks an index entry against the log before using it
(``log.PartitionLog``).
"""

from __future__ import annotations

import os

from shmbus.log.files import segment_path

CLEANED = ".cleaned"
INDEX_EXTS = (".index", ".timeindex")


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def write_cleaned(pdir: str, base: int, log_bytes, index_bytes: bytes, timeindex_bytes: bytes) -> None:
    """Step 1 of a replace: the new files beside the old, fsynced. ``log_bytes``: buffers written in order."""
    for ext, parts in ((".log", log_bytes), (".index", [index_bytes]), (".timeindex", [timeindex_bytes])):
        fd = os.open(segment_path(pdir, base, ext) + CLEANED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for part in parts:
                mv = memoryview(part).cast("B")
                while len(mv):
                    mv = mv[os.write(fd, mv):]
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_cleaned(pdir: str, base: int) -> None:
    """Steps 2-4 of a replace."""
    os.rename(segment_path(pdir, base) + CLEANED, segment_path(pdir, base))
    for ext in INDEX_EXTS:
        os.rename(segment_path(pdir, base, ext) + CLEANED, segment_path(pdir, base, ext))
    fsync_dir(pdir)


def discard_cleaned(pdir: str, base: int) -> None:
    for ext in (".log",) + INDEX_EXTS:
        _unlink(segment_path(pdir, base, ext) + CLEANED)


def delete_segment(pdir: str, base: int) -> None:
    """Delete a segment: its log first (the commit point), then its indexes."""
    _unlink(segment_path(pdir, base))
    for ext in INDEX_EXTS:
        _unlink(segment_path(pdir, base, ext))


def resolve_leftovers(pdir: str) -> list[str]:
    """Finish or undo what a crash interrupted (see the module doc). Returns what was done."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    done = []
    logs = {n[:20] for n in names if n.endswith(".log") and len(n) == 24}
    cleaned_logs = {n[:20] for n in names if n.endswith(".log" + CLEANED)}
    for n in sorted(names):
        path = os.path.join(pdir, n)
        stem = n[:20]
        if n.endswith(".swap"):
            _unlink(path)
            done.append(f"deleted {n}")
        elif n.endswith(CLEANED):
            if stem in cleaned_logs:
                _unlink(path)  # the swap never committed: the old segment stands
                done.append(f"deleted {n}")
            elif stem in logs:
                os.rename(path, path[: -len(CLEANED)])  # committed: finish it
                done.append(f"renamed {n}")
            else:
                _unlink(path)
                done.append(f"deleted {n}")
        elif any(n.endswith(ext) for ext in INDEX_EXTS) and stem not in logs and stem.isdigit():
            _unlink(path)  # a deleted segment's index
            done.append(f"deleted {n}")
    if done:
        fsync_dir(pdir)
    return done


__all__ = ["commit_cleaned", "delete_segment", "discard_cleaned", "resolve_leftovers", "write_cleaned"]
