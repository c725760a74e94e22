#!/usr/bin/env python3
"""List shmbus's objects in /dev/shm by bus: its data dir, whether its supervisor runs, sizes.

    python tools/shm_ls.py            # look
    python tools/shm_ls.py --remove-orphans   # unlink the objects of buses whose data dir is gone

Only objects named ``shmbus-<bus id>-...`` are considered; nothing else is touched.
``shmbus doctor`` (issue 5) will do this with confirmation; this is the developer's quick look.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--remove-orphans", action="store_true")
    args = ap.parse_args()
    from shmbus.ring import ControlBlock
    from shmbus.supervisor import client

    buses = defaultdict(list)
    for n in sorted(os.listdir("/dev/shm")):
        if n.startswith("shmbus-"):
            buses[n.split("-")[1]].append(n)
    for bid, names in buses.items():
        data_dir = ""
        if f"shmbus-{bid}-ctl" in names:
            ctl = ControlBlock.open_or_create(bid)
            data_dir = ctl.data_dir()
            ctl.close()
        alive = bool(data_dir) and client.running_pid(data_dir) is not None
        exists = bool(data_dir) and os.path.isdir(data_dir)
        size = sum(os.stat(f"/dev/shm/{n}").st_size for n in names)
        state = "supervisor running" if alive else ("data dir exists" if exists else "ORPHAN (data dir gone)")
        print(f"bus {bid}: {len(names)} objects, {size / 2**20:.1f} MiB, data_dir={data_dir or '?'}: {state}")
        if args.remove_orphans and not exists and data_dir:
            for n in names:
                os.unlink(f"/dev/shm/{n}")
            print(f"  removed {len(names)} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
