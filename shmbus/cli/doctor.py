"""``shmbus doctor``: leftovers in /dev/shm and in data dirs, and a /dev/shm too small.

What it looks at (see ``shmbus/shm.py`` for how a bus is found and judged):

- a bus whose supervisor runs or whose objects some process maps is *live*:
  never touched;
- a dead bus whose data dir is gone: its objects are *orphans*, removed;
- a dead bus whose data dir is still there (every process of it was killed):
  its rings may hold records not yet on disk, so doctor first spills them
  into the data dir (one supervisor pass, which also cuts torn tails), then
  removes the objects; the next ``Bus()`` starts the rings again at the log
  end;
- a stale ``supervisor.sock`` (nobody holds the lock) is removed;
- an object owned by another user is skipped: never opened, never removed
  (a bus of another user's, or an object planted under this user's names).

Nothing is removed without a yes (``--yes`` for scripts).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time

from shmbus.core import paths as _paths, ownership as _private, shm
from shmbus.log import metadata

DOCKER_DEFAULT = 64 << 20


@dataclasses.dataclass
class Finding:
    bus: shm.BusObjects
    action: str  # "keep", "remove", "spill+remove", "skip"
    why: str


def judge(b: shm.BusObjects) -> Finding:
    """What to do with one bus's objects (a pure policy)."""
    if b.not_ours:
        uids = sorted({uid for _, uid, _ in b.foreign})
        return Finding(b, "skip", "owned by " + ", ".join(f"uid {_private.who(u)}" for u in uids)
                       + ", not this user's: left alone")
    if b.supervisor_pid is not None:
        return Finding(b, "keep", f"live: supervisor pid={b.supervisor_pid}")
    if b.users:
        return Finding(b, "keep", f"live: mapped by pids={','.join(map(str, b.users[:8]))}")
    if not b.data_dir:
        return Finding(b, "remove", "no data dir recorded (a bus that never finished starting)")
    if not b.data_dir_exists:
        return Finding(b, "remove", f"orphan: data dir is gone ({b.data_dir})")
    return Finding(b, "spill+remove", f"dead bus (no supervisor, no process maps it); data dir {b.data_dir}")


def spill_dead_bus(data_dir: str, timeout_s: float = 30.0) -> None:
    """Copy what a dead bus's rings hold to its segments (a supervisor pass without a daemon)."""
    from shmbus.supervisor.daemon import Supervisor

    sup = Supervisor(data_dir)  # raises AlreadyRunning if a supervisor appeared meanwhile
    try:
        sup.rescan()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sup.spill_all()
            left = [sp for sp in sup.spillers.values() if sp.ring.claim_position() > sp.spilled_pos]
            if not left or all(sp.stuck for sp in left):
                # what is left is a dead writer's unpublished claim: nothing acknowledged is in it
                break
            time.sleep(0.02)
        for sp in sup.spillers.values():
            sp.writer.fsync_all()
            sp.close()
            sp.ring.close()
        sup.spillers.clear()
    finally:
        sup.close()


def stale_files(data_dir: str) -> list[str]:
    """Files of a supervisor that is not running (its socket)."""
    if shm.supervisor_pid(data_dir) is not None:
        return []
    out = []
    for path in (_paths.socket_path(data_dir),):
        if os.path.exists(path):
            out.append(path)
    gdir = os.path.join(data_dir, "groups")
    try:
        out.extend(os.path.join(gdir, n) for n in os.listdir(gdir) if n.endswith(".sock"))
    except OSError:
        pass
    return out


def ring_bytes_needed(data_dir: str) -> int:
    """/dev/shm bytes the topics of ``data_dir`` take when all their rings exist."""
    total = 0
    try:
        names = metadata.list_topics(data_dir)
    except OSError:
        return 0
    for name in names:
        try:
            meta = metadata.read_topic(data_dir, name)
        except Exception:  # noqa: BLE001 (a topic being deleted: skip it)
            continue
        total += meta.partitions * (meta.config["ring.bytes"] + 4096)
    return total


def shm_advice(data_dir: str) -> list[str]:
    """Lines about /dev/shm's size; a warning where it is too small for this data dir's topics."""
    size, free = shm.shm_space()
    if size < 0:
        return ["WARNING: no /dev/shm on this machine: shmbus needs POSIX shared memory (Linux)."]
    lines = [f"/dev/shm: size={_mib(size)} free={_mib(free)}"]
    need = ring_bytes_needed(data_dir) if os.path.isdir(data_dir) else 0
    mine = sum(b.bytes for b in shm.inventory(with_users=False) if b.data_dir == data_dir)
    if need:
        lines.append(f"topics in {data_dir} need {_mib(need)} of rings ({_mib(mine)} exist now)")
    if size <= DOCKER_DEFAULT:
        lines.append(f"WARNING: /dev/shm is only {_mib(size)} (Docker's default is 64 MiB): start the container "
                     f"with --shm-size=1g (or larger), or use small ring.bytes")
    if need - mine > free:
        lines.append(f"WARNING: /dev/shm has {_mib(free)} free but the missing rings need {_mib(need - mine)}: "
                     f"creating them will fail with 'no room in /dev/shm'; free space (shmbus doctor), delete "
                     f"topics, lower ring.bytes or enlarge /dev/shm")
    return lines


def is_mine(name: str) -> bool:
    """The /dev/shm object ``name`` is this user's (a regular file owned by this uid)."""
    try:
        st = os.stat(os.path.join(shm.SHM_DIR, name), follow_symlinks=False)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode)


def skipped_lines(b: shm.BusObjects) -> list[str]:
    """One line per object of the bus that is another user's (it stays where it is)."""
    return [f"skipped: /dev/shm/{n}: owned by uid {_private.who(uid)}, mode {mode:04o} (not this user's: "
            f"remove it as its owner, and check who else runs on this machine)" for n, uid, mode in b.foreign]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def verify_data_dir(data_dir: str) -> list[dict]:
    """``recovery.verify_partition`` for every partition of every topic of ``data_dir``."""
    from shmbus.log import recovery

    out = []
    for name in metadata.list_topics(data_dir):
        try:
            meta = metadata.read_topic(data_dir, name)
        except Exception:  # noqa: BLE001 (a topic being deleted: skip it)
            continue
        for p in range(meta.partitions):
            r = recovery.verify_partition(_paths.partition_dir(data_dir, name, p))
            bad = r["bad"]
            out.append({"topic": name, "partition": p, "segments": r["segments"], "records": r["records"],
                        "bytes": r["bytes"], "corrupt_segments": r["corrupt_segments"],
                        "bad": dataclasses.asdict(bad) if bad is not None else None})
    return out


def run_verify(data_dir: str, as_json: bool) -> int:
    """``shmbus doctor --verify``: print the report; 1 if anything is corrupt, else 0."""
    import json

    import click

    if not os.path.isdir(data_dir):
        click.echo(f"shmbus: no data dir: {data_dir}", err=True)
        return 1
    parts = verify_data_dir(data_dir)
    corrupt = [p for p in parts if p["bad"] is not None]
    if as_json:
        click.echo(json.dumps({"data_dir": data_dir, "partitions": parts, "corrupt": len(corrupt)}, indent=2))
        return 1 if corrupt else 0
    for p in parts:
        line = f"{p['topic']}/{p['partition']}: {p['segments']} segments, {p['records']} records, " \
               f"{_mib(p['bytes'])}: "
        b = p["bad"]
        if b is None:
            click.echo(line + "OK")
        else:
            click.echo(line + f"CORRUPT ({b['why']}) offset={b['offset']} file={b['file']} position={b['position']}"
                       + (f" and {p['corrupt_segments'] - 1} more corrupt segment(s)" if p["corrupt_segments"] > 1 else ""))
    if not parts:
        click.echo(f"no topics in {data_dir}")
    if corrupt:
        click.echo(f"{len(corrupt)} of {len(parts)} partitions hold a corrupt record: readers get CorruptRecordError "
                   f"there and may seek past it; restore the files from a copy if you have one")
        return 1
    click.echo(f"all {len(parts)} partitions intact")
    return 0


__all__ = ["Finding", "is_mine", "judge", "run_verify", "shm_advice", "skipped_lines", "spill_dead_bus", "stale_files",
           "verify_data_dir"]
