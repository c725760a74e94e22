"""A bridge's configuration (``data_dir/bridges/<name>.json``, mode 0600, written atomically)
and the names of its other files there: ``<name>.status.json`` (written by the bridge process),
``<name>.positions.json`` (the saved read positions of direction out), ``<name>.log``."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import asdict, dataclass

from shmbus.cluster.urls import kafka_servers
from shmbus.core import ownership, paths
from shmbus.errors import InvalidConfigError, ShmbusError

DIRECTIONS = ("out", "in", "both")
MAX_WORKERS = 16
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
TOPIC_PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?\[\]-]{1,249}$")


@dataclass(frozen=True)
class BridgeConfig:
    name: str
    servers: str  # host:port[,host:port...]
    topics: tuple  # patterns (fnmatch: `prices.*`)
    direction: str = "out"
    rename: str = "{topic}"  # the other side's topic name
    workers: int = 1  # processes for direction out, each copying the partitions p with p % workers == its index

    def matches(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, p) for p in self.topics)

    def target(self, topic: str) -> str:
        return self.rename.replace("{topic}", topic)

    def source(self, target: str) -> str | None:
        """The topic whose ``target`` is ``target`` (None if the rename cannot give it)."""
        pre, _, post = self.rename.partition("{topic}")
        if len(target) <= len(pre) + len(post) or not target.startswith(pre) or not target.endswith(post):
            return None
        return target[len(pre): len(target) - len(post)]

    @property
    def url(self) -> str:
        return f"kafka://{self.servers}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["topics"] = list(self.topics)
        return d


def check(name: str, url: str, topics, direction: str, rename: str, workers: int = 1) -> BridgeConfig:
    """A BridgeConfig from user input; InvalidConfigError saying what is wrong."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidConfigError(f"a bridge name is 1-100 of A-Z a-z 0-9 _ -: name={name!r}")
    if not isinstance(url, str) or not url.startswith("kafka://"):
        raise InvalidConfigError(f"--to is kafka://host:port[,host:port...]: to={url!r}")
    servers = kafka_servers(url)
    if isinstance(topics, str):
        topics = [t.strip() for t in topics.split(",") if t.strip()]
    topics = tuple(topics)
    if not topics:
        raise InvalidConfigError("--topics names at least one topic or pattern (e.g. 'orders,prices.*')")
    for t in topics:
        if not TOPIC_PATTERN_RE.match(t):
            raise InvalidConfigError(f"a topic pattern is a topic name with * ? [..] wildcards: pattern={t!r}")
    if direction not in DIRECTIONS:
        raise InvalidConfigError(f"--direction is one of out, in, both: direction={direction!r}")
    if rename.count("{topic}") != 1 or not re.match(r"^[A-Za-z0-9._-]*$", rename.replace("{topic}", "")):
        raise InvalidConfigError(f"--rename holds {{topic}} once, and else only A-Z a-z 0-9 . _ -: "
                                 f"rename={rename!r} (e.g. 'host1.{{topic}}')")
    if direction == "both" and rename != "{topic}":
        raise InvalidConfigError("--rename works with --direction out or in (a two-way bridge keeps the names)")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise InvalidConfigError(f"--workers is an int from 1 to {MAX_WORKERS}: workers={workers!r}")
    if direction == "in" and workers != 1:
        raise InvalidConfigError("--workers is for --direction out or both (direction in runs one process)")
    return BridgeConfig(name, servers, topics, direction, rename, workers)


def bridges_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "bridges")


def config_path(data_dir: str, name: str) -> str:
    return os.path.join(bridges_dir(data_dir), f"{name}.json")


def _worker(worker: int) -> str:
    return f".w{worker}" if worker else ""


def status_path(data_dir: str, name: str, worker: int = 0) -> str:
    return os.path.join(bridges_dir(data_dir), f"{name}{_worker(worker)}.status.json")


def positions_path(data_dir: str, name: str, worker: int = 0) -> str:
    return os.path.join(bridges_dir(data_dir), f"{name}{_worker(worker)}.positions.json")


def lock_path(data_dir: str, name: str, worker: int = 0) -> str:
    """Held by the running process of a bridge's worker (which removes it when the bridge was removed)."""
    return os.path.join(bridges_dir(data_dir), f"{name}{_worker(worker)}.lock")


def duplicates_path(data_dir: str, name: str) -> str:
    """The duplicates direction ``in`` counted (its positions are the Kafka group's committed offsets)."""
    return os.path.join(bridges_dir(data_dir), f"{name}.in.json")


def worker_files(data_dir: str, name: str, kind: str) -> list[str]:
    """Every worker's ``kind`` (``status``, ``positions``) file of bridge ``name`` that exists."""
    try:
        names = os.listdir(bridges_dir(data_dir))
    except FileNotFoundError:
        return []
    want = re.compile(rf"^{re.escape(name)}(\.w[0-9]+)?\.{kind}\.json$")
    return sorted(os.path.join(bridges_dir(data_dir), n) for n in names if want.match(n))


def log_path(data_dir: str, name: str) -> str:
    return os.path.join(bridges_dir(data_dir), f"{name}.log")


def write_bridge(data_dir: str, cfg: BridgeConfig, replace: bool = False) -> str:
    data_dir = paths.resolve_data_dir(data_dir)
    ownership.makedirs(bridges_dir(data_dir))
    path = config_path(data_dir, cfg.name)
    if not replace and os.path.exists(path):
        raise ShmbusError(f"a bridge named {cfg.name!r} exists already (`shmbus bridge remove {cfg.name}` first)")
    ownership.write_file(path, json.dumps(cfg.to_json(), indent=1).encode())
    return path


def read_bridge(data_dir: str, name: str) -> BridgeConfig:
    path = config_path(paths.resolve_data_dir(data_dir), name)
    try:
        with open(path) as f:
            d = json.load(f)
        return BridgeConfig(d["name"], d["servers"], tuple(d["topics"]), d["direction"], d["rename"],
                            int(d.get("workers", 1)))
    except FileNotFoundError:
        raise ShmbusError(f"no bridge named {name!r} (`shmbus bridge list` shows them)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ShmbusError(f"the bridge config {path} is unreadable: {e} (remove it and add the bridge again)") \
            from None


def list_bridges(data_dir: str) -> list[str]:
    try:
        names = os.listdir(bridges_dir(paths.resolve_data_dir(data_dir)))
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and "." not in n[:-5] and NAME_RE.match(n[:-5]))


def remove_bridge(data_dir: str, name: str) -> None:
    """Remove the bridge's config, status and saved positions (the supervisor stops its process)."""
    data_dir = paths.resolve_data_dir(data_dir)
    if not os.path.exists(config_path(data_dir, name)):
        raise ShmbusError(f"no bridge named {name!r} (`shmbus bridge list` shows them)")
    os.unlink(config_path(data_dir, name))
    for p in (worker_files(data_dir, name, "status") + worker_files(data_dir, name, "positions")
              + [duplicates_path(data_dir, name)]):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def write_json(path: str, obj) -> None:
    ownership.write_file(path, json.dumps(obj).encode(), fsync=False)


__all__ = ["BridgeConfig", "check", "write_bridge", "read_bridge", "list_bridges", "remove_bridge",
           "config_path", "status_path", "positions_path", "duplicates_path", "lock_path", "worker_files",
           "log_path", "bridges_dir", "read_json", "write_json", "write_json_durable"]


def write_json_durable(path: str, obj) -> None:
    ownership.write_file(path, json.dumps(obj).encode(), fsync=True)
