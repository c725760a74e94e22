#!/usr/bin/env python3
"""List shmbus's objects in /dev/shm by bus: data dir, supervisor, who maps them, sizes.

    python tools/shm_ls.py

A developer's quick look; ``shmbus doctor`` is the tool that cleans up (it
spills a dead bus's rings first and never touches a live bus).
"""

from __future__ import annotations

import sys


def main() -> int:
    from shmbus.core import shm

    buses = shm.inventory()
    if not buses:
        print("no shmbus objects in /dev/shm")
    for b in buses:
        if b.supervisor_pid is not None:
            state = f"supervisor pid={b.supervisor_pid}"
        elif b.users:
            state = f"mapped by pids={','.join(map(str, b.users))}"
        elif b.data_dir_exists:
            state = "DEAD (data dir exists: `shmbus doctor` spills and removes it)"
        else:
            state = "ORPHAN (data dir gone)"
        print(f"bus {b.bus_id}: {len(b.names)} objects, {b.bytes / 2**20:.1f} MiB, "
              f"data_dir={b.data_dir or '?'}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
