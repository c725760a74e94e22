"""Consumer-group descriptions for ``Bus.list_groups`` / ``Bus.describe_group`` and the CLI.

The coordinator (``supervisor/groups/``) knows members, assignments,
states and committed offsets; end offsets and lag are read here, from the
rings. With no supervisor running, the groups' checkpoints on disk
(``data_dir/groups/*.json``) answer: committed offsets, no members, state
``Empty`` (or ``Dead`` when the group has no offsets), as Kafka describes a
group nobody is in; offsets still in a group's shared-memory table (its
supervisor was killed after they were committed) are newer and win. Safe in
any process; one request per call.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import NamedTuple

from shmbus.errors import SupervisorNotRunningError, UnknownTopicError
from shmbus.records import TopicPartition


class OffsetInfo(NamedTuple):
    committed: int | None
    end_offset: int
    lag: int | None


class MemberDescription(NamedTuple):
    """A member: ``pid`` for Python API members (0 for Kafka clients, whose ``client_id`` and
    ``client_host`` are set instead; its ``assignment`` is decoded from the leader's assignment)."""
    member_id: str
    pid: int
    assignment: set
    client_id: str | None = None
    client_host: str | None = None


class GroupDescription(NamedTuple):
    """``kind``: ``shmbus`` (Python API members) or ``kafka`` (Kafka clients through the listener)."""
    group_id: str
    state: str
    generation: int
    members: list
    offsets: dict
    kind: str = "shmbus"


def _ask(bus, msg: dict) -> dict | None:
    """The coordinator's answer, or None if no supervisor runs."""
    from shmbus.client.group_member import request

    try:
        return request(bus.data_dir, msg)
    except SupervisorNotRunningError:
        return None


def list_groups(bus) -> list[str]:
    resp = _ask(bus, {"op": "list"})
    if resp is not None:
        return resp["groups"]
    from shmbus.core.paths import groups_dir
    from shmbus.log.group_offsets import read_checkpoint

    d = groups_dir(bus.data_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        ck = read_checkpoint(os.path.join(d, n))
        if ck and ck.get("offsets"):
            out.append(ck.get("group_id") or urllib.parse.unquote(n[:-5]))
    return sorted(out)


def describe_raw(bus, group_id: str) -> dict:
    """The coordinator's description (plus ``strategy`` and recent ``rebalances``), or the checkpoint's."""
    if not isinstance(group_id, str) or not group_id:
        raise ValueError(f"group_id must be a non-empty str: group_id={group_id!r}")
    resp = _ask(bus, {"op": "describe", "group": group_id})
    if resp is not None:
        return resp
    from shmbus.core.paths import checkpoint_path
    from shmbus.log.group_offsets import flat_offsets, read_checkpoint

    ck = read_checkpoint(checkpoint_path(bus.data_dir, group_id)) or {}
    offsets = _with_table(bus, group_id, flat_offsets(ck.get("offsets")))
    return {"group_id": group_id, "state": "Empty" if offsets else "Dead",
            "generation": int(ck.get("generation", 0)), "members": [], "offsets": offsets,
            "kind": ck.get("kind", "shmbus")}


def _with_table(bus, group_id: str, offsets: list) -> list:
    """``offsets`` ([[topic, partition, offset], ...]) overlaid with the group's table, if one is left in /dev/shm."""
    import posix_ipc

    from shmbus.core import paths as _paths
    from shmbus.errors import ShmbusError
    from shmbus.core.offsets_table import GroupTable
    from shmbus.layout import groups as group_layout

    try:
        t = GroupTable.open(_paths.group_table_name(bus.id, group_id))
    except (posix_ipc.Error, ShmbusError, OSError, ValueError):
        return offsets
    try:
        names = {group_layout.topic_key(x): x for x in set(bus.list_topics()) | {o[0] for o in offsets}}
        out = {(o[0], int(o[1])): int(o[2]) for o in offsets}
        for s in range(min(t.used(), t.slots)):
            key, part, flags = t.slot_meta(s)
            off = t.offset(s)
            if flags & group_layout.FLAG_USED and off >= 0 and key in names:
                out[(names[key], int(part))] = off
        return [[tp, p, o] for (tp, p), o in sorted(out.items())]
    finally:
        t.close()


def describe_group(bus, group_id: str) -> GroupDescription:
    d = describe_raw(bus, group_id)
    members = [MemberDescription(m["member_id"], int(m.get("pid", 0)),
                                 {TopicPartition(t, int(p)) for t, p in m["assignment"]},
                                 m.get("client_id"), m.get("client_host")) for m in d["members"]]
    committed = {TopicPartition(t, int(p)): int(o) for t, p, o in d["offsets"]}
    tps = set(committed)
    for m in members:
        tps |= m.assignment
    offsets = {}
    metas = {}
    for tp in sorted(tps):
        try:
            meta = metas.get(tp.topic) or metas.setdefault(tp.topic, bus.topic_meta(tp.topic))
            if tp.partition >= meta.partitions:
                continue
            end = bus.ring(meta, tp.partition).next_offset()
        except UnknownTopicError:
            continue  # offsets of a deleted topic are kept, not shown
        c = committed.get(tp)
        offsets[tp] = OffsetInfo(c, end, None if c is None else max(0, end - c))
    return GroupDescription(d["group_id"], d["state"], int(d["generation"]), members, offsets,
                            d.get("kind") or "shmbus")
