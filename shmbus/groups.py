"""Consumer-group descriptions (the coordinator itself is issue 4's work).

Until the coordinator exists no group can be joined, so every group is
described as Kafka describes one that does not exist: state "Dead", no
members, no offsets.
"""

from __future__ import annotations

from typing import NamedTuple


class OffsetInfo(NamedTuple):
    committed: int | None
    end_offset: int
    lag: int | None


class MemberDescription(NamedTuple):
    member_id: str
    pid: int
    assignment: set


class GroupDescription(NamedTuple):
    group_id: str
    state: str
    generation: int
    members: list
    offsets: dict


def list_groups(bus) -> list[str]:
    return []


def describe_group(bus, group_id: str) -> GroupDescription:
    if not isinstance(group_id, str) or not group_id:
        raise ValueError(f"group_id must be a non-empty str: group_id={group_id!r}")
    return GroupDescription(group_id, "Dead", 0, [], {})
