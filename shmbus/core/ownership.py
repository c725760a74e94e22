"""Keeping a bus private to its user: who may own its shared memory, and the modes of its files.

The names of a bus's shared-memory objects are visible in ``/dev/shm`` and
follow from its bus id, so another local user could make objects of those
names before the bus does (after a reboot or ``shmbus doctor``). Every open of
an existing object therefore goes through :func:`check_object`: the object
must be a regular file owned by this process's effective uid, with no access
for group or others; anything else raises :class:`ForeignObjectError` before
a byte of it is read or written. Objects are made with ``O_EXCL`` and mode
0600 (``ring.create_shm``).

Files in the data dir are made mode 0600 and folders 0700, whatever the
umask (:func:`makedirs`, :func:`write_file`, :func:`open_file`).
"""

from __future__ import annotations

import os
import stat

from shmbus.errors import ForeignObjectError

SHM_DIR = "/dev/shm"
FILE_MODE = 0o600
DIR_MODE = 0o700


def user_name(uid: int) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return None


def who(uid: int) -> str:
    """``uid (name)``, or the uid alone when it has no name here."""
    n = user_name(uid)
    return f"{uid} ({n})" if n else str(uid)


def shm_path(name: str) -> str:
    """The /dev/shm path of a shared-memory object name (with or without its leading /)."""
    return os.path.join(SHM_DIR, name.lstrip("/"))


def refusal(st: os.stat_result) -> str | None:
    """Why an object with this stat is not the bus's own (None if it is)."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return "it is owned by another user"
    if st.st_mode & 0o077:
        return "group or others may open it"
    return None


def foreign_error(name: str, st: os.stat_result, why: str) -> ForeignObjectError:
    path = shm_path(name)
    return ForeignObjectError(
        f"refusing a shared-memory object of the bus, {why}: name={path} owner_uid={who(st.st_uid)} "
        f"mode={stat.S_IMODE(st.st_mode):04o} (this process runs as uid {who(os.geteuid())} and uses only objects "
        f"it owns with mode 0600; nothing was read or written. Another local user may have made it: remove it "
        f"(`shmbus doctor` run by its owner, or rm {path} as its owner or root), then check who else runs on "
        f"this machine)")


def check_object(name: str, fd: int) -> None:
    """Raise :class:`ForeignObjectError` unless the object open at ``fd`` is this user's alone."""
    st = os.fstat(fd)
    why = refusal(st)
    if why is not None:
        raise foreign_error(name, st, why)


def check_path(name: str) -> None:
    """As :func:`check_object`, for an object not opened (one about to be unlinked); silent if it is gone."""
    try:
        st = os.stat(shm_path(name), follow_symlinks=False)
    except FileNotFoundError:
        return
    why = refusal(st)
    if why is not None:
        raise foreign_error(name, st, why)


# --- files and folders of the data dir ---
def makedirs(path: str) -> None:
    """``os.makedirs`` where every folder it makes is mode 0700 (whatever the umask)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent and parent != path and not os.path.isdir(parent):
        makedirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, DIR_MODE)


def mkdir(path: str) -> None:
    """``os.mkdir`` with mode 0700 (whatever the umask); FileExistsError if it exists."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def open_file(path: str, flags: int) -> int:
    """``os.open`` of a data-dir file; a file it makes is mode 0600 (whatever the umask)."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if flags & os.O_CREAT:
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
                os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
    return fd


def write_file(path: str, data: bytes, fsync: bool = True, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (a mode 0600 temporary renamed over it)."""
    tmp = tmp or f"{path}.{os.getpid()}.tmp"
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["check_object", "check_path", "makedirs", "mkdir", "open_file", "refusal", "shm_path",
           "user_name", "who", "write_file"]
