"""Another local user against a bus: shared-memory objects planted under its names, modes of its files, doctor.

Planting needs root (to give an object to another uid): those tests skip
otherwise. The other user is ``nobody`` (uid 65534).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from helpers.waiting import wait_for

from shmbus import ForeignObjectError, TopicPartition
from shmbus.core import paths as _paths, shm
from shmbus.log import metadata
from shmbus.client import control as client

pytestmark = pytest.mark.timeout(120)

OTHER = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's objects needs root")
WORKTREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


def _give(name: str, uid: int, mode: int) -> None:
    os.chown(_path(name), uid, uid)
    os.chmod(_path(name), mode)


def _state(name: str):
    """Everything a write would change: the bytes, the owner and the mode."""
    st = os.stat(_path(name))
    with open(_path(name), "rb") as f:
        return f.read(), st.st_uid, stat.S_IMODE(st.st_mode)


def _plant_ctl(data_dir: str, uid: int = OTHER, mode: int = 0o666) -> str:
    """A valid control block under the bus's name (recording another data dir), given to ``uid``."""
    from shmbus.core.ring import ControlBlock

    bid = _paths.bus_id(data_dir)
    ctl = ControlBlock.open_or_create(bid, "/somewhere/else")
    ctl.close()
    _give(_paths.ctl_name(bid), uid, mode)
    return _paths.ctl_name(bid)


def _unlink(*names) -> None:
    for n in names:
        try:
            os.unlink(_path(n))
        except FileNotFoundError:
            pass


def _supervisor_log(data_dir: str) -> str:
    try:
        with open(_paths.log_path(data_dir), errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _refused(excinfo, name: str, uid: int, mode: int) -> None:
    msg = str(excinfo.value)
    assert _path(name) in msg, msg
    assert f"owner_uid={uid}" in msg and f"mode={mode:04o}" in msg, msg
    assert "shmbus doctor" in msg and f"rm {_path(name)}" in msg, msg


@needs_root
def test_a_planted_control_block_is_refused_by_bus_clients_and_supervisor(data_dir):
    from shmbus import Bus, Consumer, Producer

    name = _plant_ctl(data_dir)
    try:
        before = _state(name)
        with pytest.raises(ForeignObjectError) as e:
            Bus(data_dir, autostart=False)
        _refused(e, name, OTHER, 0o666)
        assert "owner_uid=65534 (nobody)" in str(e.value) and "another user" in str(e.value)
        with pytest.raises(ForeignObjectError):
            Producer(data_dir)
        with pytest.raises(ForeignObjectError):
            Consumer("t", data_dir=data_dir)

        # the supervisor, run directly: one line, exit 1, no traceback
        env = dict(os.environ, PYTHONPATH=WORKTREE)
        r = subprocess.run([sys.executable, "-m", "shmbus.supervisor", "--data-dir", data_dir], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert _path(name) in r.stderr and "owner_uid=65534" in r.stderr, r.stderr
        # ... and started in the background (`shmbus serve`): the error says why
        r = subprocess.run([sys.executable, "-m", "shmbus", "serve", "--data-dir", data_dir], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "exited at start" in r.stderr and _path(name) in r.stderr, r.stderr
        assert client.running_pid(data_dir) is None
        assert _state(name) == before  # nothing written, owner and mode as they were
    finally:
        _unlink(name)


@needs_root
@pytest.mark.parametrize("mode", [0o666, 0o640, 0o604])
def test_an_object_of_this_user_open_to_others_is_refused(data_dir, mode):
    from shmbus import Bus

    name = _plant_ctl(data_dir, uid=os.geteuid(), mode=mode)
    try:
        before = _state(name)
        with pytest.raises(ForeignObjectError, match="group or others may open it") as e:
            Bus(data_dir, autostart=False)
        _refused(e, name, 0, mode)
        assert _state(name) == before
    finally:
        _unlink(name)


@needs_root
def test_a_planted_ring_is_refused_and_nothing_is_written_into_it(data_dir):
    """The bus's objects are gone (a reboot); another user makes its ring first, valid, mode 0666."""
    from shmbus import Bus
    from shmbus.core.ring import Ring

    with Bus(data_dir) as bus:
        bus.create_topic("t", config={"ring.bytes": 1 << 16})
        with bus.producer() as p:
            for i in range(10):
                p.send("t", b"v%d" % i)
        meta = bus.topic_meta("t")
    shm.remove_bus(data_dir)  # supervisor stopped (it spilled), objects gone
    name = _paths.ring_name(_paths.existing_bus_id(data_dir), meta.id, 0)
    Ring.create(name, 1 << 16, 10, meta.id_int, 0).close()  # at the log end, as the bus would make it
    _give(name, OTHER, 0o666)
    try:
        before = _state(name)
        with Bus(data_dir) as bus:  # its control block is new (its own); the supervisor starts
            with bus.producer() as p, pytest.raises(ForeignObjectError) as e:
                p.send("t", b"injected?")
            _refused(e, name, OTHER, 0o666)
            with bus.consumer(auto_offset_reset="earliest") as c, pytest.raises(ForeignObjectError):
                c.assign([TopicPartition("t", 0)])
                c.poll(timeout_ms=200)
            with pytest.raises(ForeignObjectError):
                bus.describe_topic("t")
            # the supervisor does not spill from it; its log says why
            wait_for(lambda: _path(name) in _supervisor_log(data_dir), 30, "the supervisor to log the refusal")
            assert "owner_uid=65534" in _supervisor_log(data_dir)
            assert client.running_pid(data_dir) is not None
        assert _state(name) == before
    finally:
        shm.remove_bus(data_dir)
        _unlink(name)


@needs_root
def test_a_planted_group_table_is_left_alone_and_commits_still_work(data_dir):
    from shmbus import Bus
    from shmbus.core.offsets_table import GroupTable

    name = None
    try:
        with Bus(data_dir) as bus:
            bus.create_topic("t", config={"ring.bytes": 1 << 16})
            name = _paths.group_table_name(bus.id, "g")
            GroupTable.create(name, "g").close()
            _give(name, OTHER, 0o666)
            before = _state(name)
            with bus.producer() as p:
                for i in range(20):
                    p.send("t", b"v%d" % i)
            with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
                got = []
                wait_for(lambda: got.extend(r for rs in c.poll(timeout_ms=100).values() for r in rs) or len(got) >= 20,
                         60, "20 records")
                c.commit()
                assert c.committed(TopicPartition("t", 0)) == 20
            assert _state(name) == before
            wait_for(lambda: _path(name) in _supervisor_log(data_dir), 10, "the supervisor to log the refusal")
            with bus.consumer("t", group_id="g") as c2:  # the commit went over the socket, and holds
                assert c2.committed(TopicPartition("t", 0)) == 20
        assert _state(name) == before
    finally:
        shm.remove_bus(data_dir)
        if name:
            _unlink(name)


def _walk_modes(top: str):
    bad = []
    seen = {"file": 0, "dir": 0}
    for root, dirs, files in os.walk(top):
        for n in dirs + [""]:
            p = os.path.join(root, n) if n else root
            m = stat.S_IMODE(os.lstat(p).st_mode)
            seen["dir"] += not n
            if m != 0o700:
                bad.append((p, oct(m)))
        for n in files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            seen["file"] += 1
            if stat.S_IMODE(st.st_mode) != 0o600:
                bad.append((p, oct(stat.S_IMODE(st.st_mode))))
    return bad, seen


@pytest.mark.timeout(180)
def test_data_dir_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path):
    from shmbus import Bus

    data_dir = str(tmp_path / "not" / "yet" / "bus")
    old = os.umask(0)  # (the supervisor started below inherits it)
    try:
        with Bus(data_dir) as bus:
            bus.create_topic("t", partitions=2, config={"ring.bytes": 1 << 16, "segment.bytes": 1 << 16})
            bus.alter_topic_config("t", {"retention.ms": 3600_000})
            with bus.producer() as p:
                for i in range(3000):
                    p.send("t", b"%060d" % i, key=b"k%d" % (i % 5))
                p.flush()
            with bus.consumer("t", group_id="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
                got = []
                wait_for(lambda: got.extend(r for rs in c.poll(timeout_ms=100).values() for r in rs)
                         or len(got) >= 3000, 90, "3000 records")
                c.commit()
            # while it runs: its sockets too
            for sock in (_paths.socket_path(data_dir), os.path.join(data_dir, "groups.sock")):
                assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, sock
        client.stop(data_dir)
        files = {os.path.relpath(os.path.join(r, n), data_dir) for r, _, fs in os.walk(data_dir) for n in fs}
        for want in ("bus.json", "supervisor.log", "supervisor.lock", "topics/t/topic.json", "groups/g.json",
                     "topics/t/0/00000000000000000000.log", "topics/t/0/00000000000000000000.index"):
            assert want in files, (want, sorted(files))
        assert any(f.startswith("topics/t/0/recovery-point") for f in files), sorted(files)
        bad, seen = _walk_modes(str(tmp_path / "not"))
        assert not bad, bad
        assert seen["dir"] >= 8 and seen["file"] >= 10, seen
        for n in shm.bus_names(data_dir):
            st = os.stat(_path(n))
            assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600, n
    finally:
        os.umask(old)
        shm.remove_bus(data_dir)


def _other_user_python() -> list[str] | None:
    """A Python the other user may run, with this worktree and this environment's packages on its path.

    (This one may live in a folder only root can enter: then the system's Python of the same version.)
    """
    import site

    path = ":".join([WORKTREE, *site.getsitepackages()])
    minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for exe in (sys.executable, f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"):
        try:
            r = subprocess.run([exe, "-c", "import shmbus.cli.main"], user=OTHER, group=OTHER, extra_groups=[],
                               env={"PYTHONPATH": path}, capture_output=True, timeout=60, cwd="/")
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return [exe, path]
    return None


def _as_other_user(python, args, env_extra=None, timeout=120):
    exe, path = python
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "PYTHONPATH": path,
           "LANG": "C.UTF-8", **(env_extra or {})}
    return subprocess.run([exe, "-m", "shmbus", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, user=OTHER, group=OTHER, extra_groups=[], cwd="/")


@needs_root
@pytest.mark.timeout(240)
def test_doctor_by_another_user_skips_a_live_bus_without_a_traceback(data_dir):
    from shmbus import Bus

    python = _other_user_python()
    if python is None:
        pytest.skip(f"no Python with shmbus's packages that uid {OTHER} may run")
    with Bus(data_dir) as bus:
        bus.create_topic("t", partitions=2, config={"ring.bytes": 1 << 16})
        with bus.producer() as p:
            p.send("t", b"before", partition=0)
        names = shm.bus_names(data_dir)
        assert len(names) == 3
        before = {n: os.stat(_path(n)) for n in names}
        mine = [n for n in names if n.startswith(f"shmbus-{bus.id}-")]
        # the bus's data dir, where the other user cannot look, or a default data dir that does not exist
        there = {"SHMBUS_DATA_DIR": data_dir}
        for args, extra in ((["doctor", "--json"], there), (["doctor"], {}), (["doctor", "--yes"], there),
                            (["doctor", "--yes", "--json"], {})):
            r = _as_other_user(python, args, extra)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr + r.stdout, (args, r.stderr)
            if "--json" in args:
                rep = {b["bus_id"]: b for b in json.loads(r.stdout)["buses"]}
                assert rep[bus.id]["action"] == "skip", rep[bus.id]
                assert "uid 0 (root)" in rep[bus.id]["why"]
            else:
                line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"bus {bus.id}:"))
                assert "SKIP (owned by uid 0 (root)" in line, r.stdout
        assert shm.bus_names(data_dir) == names
        for n in mine:
            st = os.stat(_path(n))
            assert (st.st_ino, st.st_uid, st.st_mode) == (before[n].st_ino, before[n].st_uid, before[n].st_mode), n
        # the bus works on
        with bus.producer() as p:
            p.send("t", b"after", partition=0)
        with bus.consumer(auto_offset_reset="earliest") as c:
            c.assign([TopicPartition("t", 0)])
            got = []
            wait_for(lambda: got.extend(r for rs in c.poll(timeout_ms=100).values() for r in rs) or len(got) >= 2,
                     30, "2 records")
            assert [r.value for r in got] == [b"before", b"after"]


@needs_root
def test_doctor_reports_another_users_object_under_this_users_bus_and_never_opens_it(tmp_path):
    """A dead bus of this user with one object planted among its own: the report lists it as skipped."""
    from shmbus import Bus

    data_dir = str(tmp_path / "bus")
    planted = None
    try:
        with Bus(data_dir, autostart=False) as bus:
            bus.create_topic("t", config={"ring.bytes": 1 << 16})
            planted = f"/shmbus-{bus.id}-deadbeef-0"
            from shmbus.core.ring import Ring

            Ring.create(planted, 1 << 16, 0, 0xDEADBEEF, 0).close()
            _give(planted, OTHER, 0o600)
            before = _state(planted)
        env = dict(os.environ, PYTHONPATH=WORKTREE, SHMBUS_DATA_DIR=data_dir)
        r = subprocess.run([sys.executable, "-m", "shmbus", "doctor", "--json"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rep = {b["bus_id"]: b for b in json.loads(r.stdout)["buses"]}[_paths.existing_bus_id(data_dir)]
        assert rep["action"] == "spill+remove" and rep["skipped"] == [planted.lstrip("/")], rep
        r = subprocess.run([sys.executable, "-m", "shmbus", "doctor"], env=env, capture_output=True, text=True,
                           timeout=60, input="n\n")
        assert f"skipped: {_path(planted)}: owned by uid 65534 (nobody), mode 0600" in r.stdout, r.stdout
        from shmbus.cli import doctor as D

        assert not D.is_mine(planted.lstrip("/"))
        assert D.is_mine(_paths.ctl_name(_paths.existing_bus_id(data_dir)).lstrip("/"))
        assert _state(planted) == before
    finally:
        shm.remove_bus(data_dir)
        if planted:
            _unlink(planted)


def test_metadata_files_are_made_private():
    """(no supervisor) the helpers every data-dir write goes through, under a umask that would open them."""
    import tempfile

    from shmbus.core import ownership as _private

    old = os.umask(0)
    try:
        with tempfile.TemporaryDirectory() as d:
            sub = os.path.join(d, "a", "b")
            _private.makedirs(sub)
            _private.write_file(os.path.join(sub, "x.json"), b"{}")
            metadata._write_json(os.path.join(sub, "y.json"), {"k": 1})
            bad, seen = _walk_modes(os.path.join(d, "a"))
            assert not bad and seen == {"file": 2, "dir": 2}, (bad, seen)
    finally:
        os.umask(old)
