"""Consumer groups' committed offsets on disk: one JSON checkpoint per group.

``data_dir/groups/<group id, %-quoted>.json`` holds the group's generation and
``{"offsets": {topic: {partition: offset}}}``. The coordinator writes it (every
``CHECKPOINT_S`` and at stop, fsynced); clients read it when no supervisor runs.
"""

from __future__ import annotations

import json


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


__all__ = ["flat_offsets", "nested_offsets", "read_checkpoint"]
