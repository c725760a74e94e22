"""Consumer groups' committed offsets on disk: one JSON checkpoint per group.

``data_dir/groups/<group id, %-quoted>.json`` holds the group's generation and
``{"offsets": {topic: {partition: offset}}}``. The coordinator
(``supervisor/groups/``) writes it through a ``CheckpointWriter`` when offsets
changed (every ``CHECKPOINT_S`` at most) and at stop, fsynced; clients read it
when no supervisor runs.

A checkpoint, as ``checkpoint_document`` makes it::

    {"group_id": str, "generation": int, "strategy": str, "kind": "shmbus" | "kafka",
     "offsets": {topic: {partition (str): offset}},
     "members": [{"member_id": str, "pid": int, "session_timeout_ms": int}, ...],
     "written_ms": int}

``kind`` says whose members the group has: the Python API's (``shmbus``) or
Kafka clients' through the listener (``kafka``); a group has members of one
kind only, and its committed offsets keep that kind across restarts. The
members' pids let a restarted coordinator wait for the old members to
rejoin or die before it grants anything.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time

from shmbus.core import ownership


def read_checkpoint(path: str) -> dict | None:
    """A group's checkpoint, or None if there is none (or it cannot be parsed)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def nested_offsets(offsets: dict) -> dict:
    """{TopicPartition: offset} -> {topic: {partition: offset}} (the checkpoint's shape, for JSON)."""
    out: dict = {}
    for tp in sorted(offsets):
        out.setdefault(tp.topic, {})[str(tp.partition)] = offsets[tp]
    return out


def flat_offsets(nested: dict) -> list:
    """The checkpoint's offsets as [[topic, partition, offset], ...]."""
    return [[t, int(p), int(o)] for t, ps in (nested or {}).items() for p, o in ps.items()]


def checkpoint_document(group_id: str, generation: int, strategy: str, offsets: dict, members,
                        kind: str = "shmbus") -> dict:
    """A group's checkpoint: ``offsets`` {TopicPartition: offset}; ``members`` [(member id, pid,
    session_timeout_ms)]; ``kind`` ``shmbus`` or ``kafka``."""
    return {
        "group_id": group_id, "generation": generation, "strategy": strategy, "kind": kind,
        "offsets": nested_offsets(offsets),
        "members": [{"member_id": mid, "pid": pid, "session_timeout_ms": timeout} for mid, pid, timeout in members],
        "written_ms": int(time.time() * 1000),
    }


def read_checkpoints(groups_dir: str):
    """Every readable checkpoint in ``groups_dir`` (with a ``group_id``), in file-name order."""
    for name in sorted(os.listdir(groups_dir)):
        if not name.endswith(".json"):
            continue
        ck = read_checkpoint(os.path.join(groups_dir, name))
        if ck and "group_id" in ck:
            yield ck


class CheckpointWriter:
    """Writes checkpoints in a thread of its own (write to a temporary file, fsync, rename), so the
    coordinator's loop never waits for a disk. Of several checkpoints of one path waiting, the
    newest is written (or the removal, ``remove``). ``failed`` is True once a write failed."""

    def __init__(self, log):
        self.log = log
        self.failed = False
        self._queue: queue.Queue = queue.Queue()
        self._thread = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="group-checkpoints", daemon=True)
        self._thread.start()

    def put(self, path: str, document: dict) -> None:
        self._queue.put((path, json.dumps(document, indent=1).encode()))

    def remove(self, path: str) -> None:
        """Remove the checkpoint (after what is queued for it): a deleted group."""
        self._queue.put((path, None))

    def close(self, timeout: float) -> bool:
        """Write what is queued and stop; True if every checkpoint was written."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.failed and (self._thread is None or not self._thread.is_alive())

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = {}
            while item is not None:
                batch[item[0]] = item[1]  # the newest snapshot per group wins
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for path, data in batch.items():
                try:
                    if data is None:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                    else:
                        ownership.write_file(path, data)
                except OSError as e:
                    self.failed = True
                    self.log(f"cannot write the group checkpoint: path={path}: {e}")
            if item is None:
                return


__all__ = ["CheckpointWriter", "checkpoint_document", "flat_offsets", "nested_offsets", "read_checkpoint",
           "read_checkpoints"]
