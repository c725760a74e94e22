"""What shmbus has in /dev/shm, by bus, and who uses it: for ``shmbus doctor``, tests and tools.

Every object is named ``shmbus-<bus id>-...`` (see ``_paths.py``); the bus's
control block ``shmbus-<bus id>-ctl`` records its data dir. A bus is *live*
while its supervisor holds the data dir's lock or any process maps one of its
objects (``/proc/<pid>/maps``, through psutil's pid list); otherwise its
objects are leftovers: of a bus whose processes were all killed (the data dir
still there: what its rings hold can still be spilled) or of a data dir that
is gone (nothing to save).

Nothing here creates an object: the control block is read as a plain file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct

import psutil

from shmbus.core import paths as _paths, ownership as _private
from shmbus.errors import ForeignObjectError
from shmbus.layout import ring as R

SHM_DIR = "/dev/shm"
PREFIX = "shmbus-"


@dataclasses.dataclass
class BusObjects:
    """One bus's objects in /dev/shm."""

    bus_id: str
    names: list[str]  # file names in /dev/shm (no leading slash)
    bytes: int
    data_dir: str | None  # from the control block; None if it has none or it is unreadable
    supervisor_pid: int | None = None
    users: list[int] = dataclasses.field(default_factory=list)  # pids that map any of the objects
    # (name, owner uid, mode) of the objects that are another uid's (or not regular files): never
    # opened, never removed. (An object of this uid's with a mode open to others is not listed here:
    # it is this user's to remove.)
    foreign: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)

    @property
    def not_ours(self) -> bool:
        """Every object of this bus id belongs to another user (or is no object of a bus)."""
        return len(self.foreign) == len(self.names)

    @property
    def data_dir_exists(self) -> bool:
        return bool(self.data_dir) and os.path.isdir(self.data_dir)

    @property
    def live(self) -> bool:
        return self.supervisor_pid is not None or bool(self.users)


def read_ctl_data_dir(bid: str) -> str | None:
    """The data dir recorded in a bus's control block, read without opening it as shared memory.

    None unless the block is this user's own (``_private.check_object``).
    """
    name = f"{PREFIX}{bid}-ctl"
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        _private.check_object(name, fd)
    except (ForeignObjectError, OSError):
        os.close(fd)
        return None
    try:
        with open(fd, "rb") as f:
            head = f.read(8)
            f.seek(R.CTL_OFF_DATA_DIR)
            raw = f.read(4)
            if len(head) < 8 or struct.unpack("<Q", head)[0] != R.CTL_MAGIC or len(raw) < 4:
                return None
            (n,) = struct.unpack("<I", raw)
            if not 0 < n <= R.CTL_BYTES - R.CTL_OFF_DATA_DIR - 4:
                return None
            return f.read(n).decode("utf-8", "replace")
    except OSError:
        return None


def supervisor_pid(data_dir: str) -> int | None:
    """The pid of the supervisor holding ``data_dir``'s lock, or None (probes the flock, changes nothing)."""
    from shmbus.core.supervisor_lock import running_pid

    try:
        return running_pid(data_dir)
    except OSError:
        return None


def _mappers() -> dict[str, set[int]]:
    """/dev/shm file name -> pids that map it (every process we may read)."""
    out: dict[str, set[int]] = {}
    tag = f"{SHM_DIR}/{PREFIX}"
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find(tag)
                    if i >= 0:
                        name = line[i + len(SHM_DIR) + 1:].split()[0]
                        out.setdefault(name, set()).add(pid)
        except OSError:
            continue  # gone, or not ours to read
    return out


def inventory(with_users: bool = True) -> list[BusObjects]:
    """Every bus with objects in /dev/shm, sorted by bus id."""
    by_bus: dict[str, list[str]] = {}
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    for n in names:
        if n.startswith(PREFIX) and n.count("-") >= 2:
            by_bus.setdefault(n.split("-")[1], []).append(n)
    maps = _mappers() if with_users else {}
    out = []
    for bid in sorted(by_bus):
        objs = sorted(by_bus[bid])
        size = 0
        foreign = []
        for n in objs:
            try:
                st = os.stat(os.path.join(SHM_DIR, n), follow_symlinks=False)
            except OSError:
                continue
            size += st.st_blocks * 512
            if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
                foreign.append((n, st.st_uid, stat.S_IMODE(st.st_mode)))
        data_dir = read_ctl_data_dir(bid)
        b = BusObjects(bid, objs, size, data_dir, foreign=foreign)
        if data_dir:
            b.supervisor_pid = supervisor_pid(data_dir)
        b.users = sorted({pid for n in objs for pid in maps.get(n, ())} - {os.getpid()})
        out.append(b)
    return out


def bus_names(data_dir: str) -> list[str]:
    """/dev/shm names of the bus of ``data_dir`` (empty if it never had an id)."""
    bid = _paths.existing_bus_id(data_dir)
    if bid is None:
        return []
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(f"{PREFIX}{bid}-"))
    except OSError:
        return []


def unlink_names(names) -> int:
    """Unlink these /dev/shm objects; returns how many were removed (one not ours to remove is left)."""
    k = 0
    for n in names:
        try:
            os.unlink(os.path.join(SHM_DIR, n))
            k += 1
        except (FileNotFoundError, PermissionError):
            pass
    return k


def remove_bus(data_dir: str, stop_timeout_s: float = 15.0) -> list[str]:
    """Stop ``data_dir``'s supervisor and unlink the bus's objects; returns the names unlinked.

    For tests, benchmarks and tools that started this bus (and so its
    supervisor): the supervisor holding this data dir's lock is sent SIGTERM
    (its clean stop: a last spill, checkpoints) and, if it has not stopped
    within ``stop_timeout_s``, SIGKILL. The data dir itself is left as it is.
    Never raises for a bus that is gone.
    """
    import signal
    import time

    from shmbus.core.supervisor_lock import running_pid

    for sig, wait_s in ((signal.SIGTERM, stop_timeout_s), (signal.SIGKILL, 5.0)):
        pid = running_pid(data_dir)
        if not pid:
            break
        if pid > 0:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while running_pid(data_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
    names = bus_names(data_dir)
    unlink_names(names)
    return names


def release_bus(bid: str) -> tuple[list[str], str | None]:
    """Unlink every object of bus ``bid`` if no other process maps any; (names unlinked, why kept or None).

    For a supervisor at a clean stop, after its last spill (it checks that
    every claimed byte is on disk first) and while it still holds the data
    dir's lock. A process that maps an object keeps them all. A process that
    opens one meanwhile is caught by renaming the objects first (a mapping
    follows the rename in /proc/<pid>/maps) and checking again: then they are
    renamed back. A client that opens the bus afterwards makes them anew at
    the log end (``bus.open_or_recreate_ring``).
    """
    me = os.getpid()
    tag = f"{PREFIX}{bid}-"
    try:
        names = sorted(n for n in os.listdir(SHM_DIR) if n.startswith(tag))
    except OSError:
        return [], f"cannot list {SHM_DIR}"

    def users(ns):
        maps = _mappers()
        return sorted({pid for n in ns for pid in maps.get(n, ())} - {me})

    u = users(names)
    if u:
        return [], f"mapped by pids={','.join(map(str, u[:8]))}"
    moved = []
    for n in names:
        tomb = n if n.startswith(f"{tag}released-") else f"{tag}released-{n[len(tag):]}"
        try:
            os.rename(os.path.join(SHM_DIR, n), os.path.join(SHM_DIR, tomb))
            moved.append((n, tomb))
        except FileNotFoundError:
            pass
    u = users([t for _n, t in moved])
    if u:
        for n, t in moved:
            if n == t:
                continue
            try:
                os.link(os.path.join(SHM_DIR, t), os.path.join(SHM_DIR, n))  # (never over one made meanwhile)
                os.unlink(os.path.join(SHM_DIR, t))
            except OSError:
                pass  # left under its released name: `shmbus doctor` finds it
        return [], f"mapped by pids={','.join(map(str, u[:8]))}"
    unlink_names(t for _n, t in moved)
    return [n for n, _t in moved], None


def shm_space() -> tuple[int, int]:
    """(/dev/shm size, free bytes), or (-1, -1) if there is no /dev/shm."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return -1, -1
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


__all__ = ["BusObjects", "bus_names", "inventory", "read_ctl_data_dir", "release_bus", "remove_bus", "shm_space",
           "supervisor_pid", "unlink_names"]
