"""Finding, starting and talking to a data dir's supervisor (from any process).

The supervisor holds an ``flock`` on ``supervisor.lock`` for as long as it
lives, and answers newline-delimited JSON on ``supervisor.sock``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from shmbus.core import ownership as _private
from shmbus.core import paths as _paths
from shmbus.core.supervisor_lock import running_pid
from shmbus.errors import SupervisorNotRunningError


def request(data_dir: str, cmd: dict, timeout: float = 10.0) -> dict:
    """Send one request; raise SupervisorNotRunningError if nobody answers."""
    path = _paths.socket_path(data_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise SupervisorNotRunningError(
                f"no supervisor is running: data_dir={data_dir} (start one with `shmbus serve --data-dir "
                f"{data_dir}` or Bus(data_dir, autostart=True))"
            ) from e
        s.sendall(json.dumps(cmd).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            part = s.recv(65536)
            if not part:
                break
            buf += part
    finally:
        s.close()
    if not buf:
        raise SupervisorNotRunningError(f"the supervisor closed the connection: data_dir={data_dir}")
    return json.loads(buf)


def ping(data_dir: str) -> bool:
    try:
        return request(data_dir, {"cmd": "ping"}, timeout=2.0).get("ok", False)
    except (SupervisorNotRunningError, OSError, ValueError):
        return False


def start(data_dir: str, wait_s: float = 120.0, args: tuple = ()) -> int:
    """Start a supervisor in the background unless one runs; return once it answers.

    The wait is long because a first start on a machine compiles the kernels
    (seconds); with a warm cache it is well under a second. ``args``: more of
    ``python -m shmbus.supervisor``'s options (the Kafka listener's).
    """
    if running_pid(data_dir) is not None and ping(data_dir):
        return running_pid(data_dir) or -1
    _private.makedirs(data_dir)
    log = open(_private.open_file(_paths.log_path(data_dir), os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
    log_start = log.tell()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmbus.supervisor", "--data-dir", data_dir, *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )
    finally:
        log.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ping(data_dir):
            return running_pid(data_dir) or proc.pid
        rc = proc.poll()
        if rc is not None and running_pid(data_dir) is None:
            said = _last_line(_paths.log_path(data_dir), log_start)
            raise SupervisorNotRunningError(
                f"the supervisor exited at start: exit={rc} data_dir={data_dir}{': ' + said if said else ''} "
                f"(see {_paths.log_path(data_dir)})"
            )
        time.sleep(0.01)
    raise SupervisorNotRunningError(
        f"the supervisor did not answer within {wait_s:.0f} s: data_dir={data_dir} (see {_paths.log_path(data_dir)})"
    )


def _last_line(path: str, start: int) -> str:
    """The last line written to ``path`` past ``start`` ('' if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def stop(data_dir: str, wait_s: float = 30.0, keep_rings: bool = False) -> bool:
    """Ask the supervisor to stop; wait until it has. False if none was running.

    It removes the bus's rings from /dev/shm once they are spilled and no
    other process maps them, unless ``keep_rings``.
    """
    if running_pid(data_dir) is None:
        return False
    try:
        request(data_dir, {"cmd": "stop", "keep_rings": bool(keep_rings)})
    except SupervisorNotRunningError:
        pass
    deadline = time.monotonic() + wait_s
    while running_pid(data_dir) is not None:
        if time.monotonic() > deadline:
            raise SupervisorNotRunningError(f"the supervisor did not stop within {wait_s:.0f} s: data_dir={data_dir}")
        time.sleep(0.01)
    return True
