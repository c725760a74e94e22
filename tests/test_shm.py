"""Shared-memory objects: names, modes, and running out of /dev/shm."""

from __future__ import annotations

import os
import stat

import pytest

from shmbus import ShmbusError


def test_no_room_in_dev_shm_is_a_clear_error_and_creates_nothing(bus):
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(ShmbusError, match="no room in /dev/shm"):
        bus.create_topic("huge", config={"ring.bytes": 1 << 40})
    assert "huge" not in bus.list_topics()
    assert set(os.listdir("/dev/shm")) - before == set()


def test_objects_are_named_shmbus_and_mode_0600(bus):
    bus.create_topic("t", partitions=3)
    names = [n.lstrip("/") for n in bus.shared_memory_names()]
    assert len(names) == 4  # 3 rings + the control block
    for n in names:
        assert n.startswith(f"shmbus-{bus.id}-")
        mode = stat.S_IMODE(os.stat(f"/dev/shm/{n}").st_mode)
        assert mode == 0o600, (n, oct(mode))
