"""Topic metadata: ``data_dir/topics/<topic>/topic.json``, seen by every process.

Creation is atomic: the topic's directory, metadata and rings are prepared
under a temporary name and renamed into place, so a topic is either wholly
there or not at all, and two processes creating one name race cleanly (one
gets :class:`TopicExistsError`). Changes to ``topic.json`` are written to a
temporary file and renamed over it. Safe across processes and threads.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass

from shmbus.core import paths as _paths, ownership as _private
from shmbus.errors import InvalidConfigError, TopicExistsError, UnknownTopicError


@dataclass(frozen=True)
class TopicMeta:
    name: str
    id: str  # hex, new for every incarnation of the name
    partitions: int
    config: dict
    created_ms: int

    @property
    def id_int(self) -> int:
        return int(self.id, 16)


def _write_json(path: str, obj) -> None:
    _private.write_file(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_topic(data_dir: str, name: str) -> TopicMeta:
    path = os.path.join(_paths.topic_dir(data_dir, name), "topic.json")
    try:
        with open(path) as f:
            d = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise UnknownTopicError(
            f"topic does not exist: topic={name!r} data_dir={data_dir} (create it with Bus.create_topic "
            f"or `shmbus topics create {name}`)"
        ) from None
    return TopicMeta(d["name"], d["id"], int(d["partitions"]), dict(d["config"]), int(d["created_ms"]))


def list_topics(data_dir: str) -> list[str]:
    try:
        names = os.listdir(_paths.topics_dir(data_dir))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.startswith(".") and n not in (".", ".."):
            # names of temporaries and trash start with ".tmp-" / ".del-"; a real
            # topic may start with "." too, so check for its metadata
            if n.startswith((".tmp-", ".del-")):
                continue
        if os.path.exists(os.path.join(_paths.topics_dir(data_dir), n, "topic.json")):
            out.append(n)
    return sorted(out)


def create_topic(data_dir: str, name: str, partitions: int, config: dict, make_rings) -> TopicMeta:
    """Create a topic; ``make_rings(meta)`` creates its rings before it becomes visible."""
    tdir = _paths.topics_dir(data_dir)
    _private.makedirs(tdir)
    final = os.path.join(tdir, name)
    if os.path.exists(os.path.join(final, "topic.json")):
        raise TopicExistsError(f"topic already exists: topic={name!r} (describe it, or delete it first)")
    meta = TopicMeta(name, secrets.token_hex(4), partitions, dict(config), int(time.time() * 1000))
    tmp = os.path.join(tdir, f".tmp-{meta.id}")
    _private.mkdir(tmp)
    try:
        for p in range(partitions):
            _private.mkdir(os.path.join(tmp, str(p)))
        _write_json(os.path.join(tmp, "topic.json"), {
            "name": meta.name, "id": meta.id, "partitions": meta.partitions,
            "config": meta.config, "created_ms": meta.created_ms,
        })
        make_rings(meta)
        try:
            os.rename(tmp, final)  # atomic; fails if `final` exists and is not empty
        except OSError:
            raise TopicExistsError(f"topic already exists: topic={name!r} (describe it, or delete it first)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def alter_topic(data_dir: str, name: str, new_config: dict) -> TopicMeta:
    meta = read_topic(data_dir, name)
    if new_config.get("ring.bytes", meta.config["ring.bytes"]) != meta.config["ring.bytes"]:
        raise InvalidConfigError(
            f"ring.bytes cannot change on an existing topic: ring.bytes={new_config['ring.bytes']} "
            f"(it is {meta.config['ring.bytes']}; delete and recreate the topic to change it)"
        )
    meta = TopicMeta(meta.name, meta.id, meta.partitions, dict(new_config), meta.created_ms)
    _write_json(os.path.join(_paths.topic_dir(data_dir, name), "topic.json"), {
        "name": meta.name, "id": meta.id, "partitions": meta.partitions,
        "config": meta.config, "created_ms": meta.created_ms,
    })
    return meta


def remove_topic_dir(data_dir: str, meta: TopicMeta) -> None:
    """Move the topic's directory aside (atomic), then remove it."""
    src = _paths.topic_dir(data_dir, meta.name)
    trash = os.path.join(_paths.topics_dir(data_dir), f".del-{meta.id}")
    try:
        os.rename(src, trash)
    except FileNotFoundError:
        raise UnknownTopicError(f"topic does not exist: topic={meta.name!r}") from None
    shutil.rmtree(trash, ignore_errors=True)
