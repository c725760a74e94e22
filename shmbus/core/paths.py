"""Where a bus keeps its files, and the names of its shared-memory objects.

::

    data_dir/
      bus.json                     the bus id (names every shared-memory object)
      supervisor.lock              flock'd by the running supervisor; holds its pid
      supervisor.sock              the supervisor's control socket (mode 0600)
      supervisor.log
      topics/<topic>/topic.json    name, id, partitions, config
      topics/<topic>/<partition>/<base offset, 20 digits>.log   segments
      topics/<topic>/<partition>/<base offset, 20 digits>.index sparse offset index

Every file here is mode 0600 and every folder 0700 (``_private.py``).

Shared memory (``/dev/shm``), all mode 0600 and owned by the bus's user (an
object of these names that is not is refused: ``_private.py``)::

    shmbus-<bus id>-ctl                       wake-up words (layout/ring.py)
    shmbus-<bus id>-<topic id>-<partition>    one ring per partition
    shmbus-<bus id>-g-<sha1(group id), 12 hex>  a group's committed offsets (layout/groups.py)

A topic id is new for every incarnation of a topic, so a deleted and
recreated topic never meets its old rings.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import secrets

from shmbus.core import ownership as _private


def default_data_dir() -> str:
    env = os.environ.get("SHMBUS_DATA_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.abspath(os.path.join(xdg, "shmbus"))


def resolve_data_dir(data_dir) -> str:
    if data_dir is None:
        return default_data_dir()
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def topics_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "topics")


def topic_dir(data_dir: str, topic: str) -> str:
    return os.path.join(data_dir, "topics", topic)


def partition_dir(data_dir: str, topic: str, partition: int) -> str:
    return os.path.join(data_dir, "topics", topic, str(partition))


def lock_path(data_dir: str) -> str:
    return os.path.join(data_dir, "supervisor.lock")


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, "supervisor.sock")


def groups_socket_path(data_dir: str) -> str:
    """The group coordinator's socket (members connect to it)."""
    return os.path.join(data_dir, "groups.sock")


def groups_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "groups")


def checkpoint_path(data_dir: str, group_id: str) -> str:
    """A group's offsets checkpoint (its id %-quoted: any string is a valid group id)."""
    return os.path.join(groups_dir(data_dir), urllib.parse.quote(group_id, safe="") + ".json")


def log_path(data_dir: str) -> str:
    return os.path.join(data_dir, "supervisor.log")


def bus_id(data_dir: str) -> str:
    """The bus id of ``data_dir``, made (race-free) on first use."""
    path = os.path.join(data_dir, "bus.json")
    try:
        with open(path) as f:
            return json.load(f)["id"]
    except FileNotFoundError:
        pass
    _private.makedirs(os.path.join(data_dir, "topics"))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = _private.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(fd, "w") as f:
        json.dump({"id": secrets.token_hex(6), "version": 1}, f)
    try:
        os.link(tmp, path)  # fails if another process won the race
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return json.load(f)["id"]


def existing_bus_id(data_dir: str) -> str | None:
    """The bus id of ``data_dir`` if it has one (never makes one)."""
    try:
        with open(os.path.join(data_dir, "bus.json")) as f:
            return json.load(f)["id"]
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
        return None


def ctl_name(bid: str) -> str:
    return f"/shmbus-{bid}-ctl"


def ring_name(bid: str, topic_id: str, partition: int) -> str:
    return f"/shmbus-{bid}-{topic_id}-{partition}"


def group_table_name(bid: str, group_id: str) -> str:
    """The group's offsets table (made by the coordinator only)."""
    return f"/shmbus-{bid}-g-{hashlib.sha1(group_id.encode()).hexdigest()[:12]}"


def segment_name(base_offset: int, suffix: str = ".log") -> str:
    return f"{base_offset:020d}{suffix}"
