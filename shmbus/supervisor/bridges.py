"""The supervisor's bridge keeper: one child process per configured bridge (``shmbus/bridge/``).

Every ``CHECK_S`` it reads ``data_dir/bridges/``: starts a process for a new
bridge, stops one whose bridge was removed, restarts one whose config changed,
and restarts a dead one after a back-off (doubling from ``BACKOFF_MIN_S`` to
``BACKOFF_MAX_S``, back to the minimum once a process ran ``STABLE_S``). At the
supervisor's stop, every bridge process is asked to stop (SIGTERM) and killed if
it has not within ``STOP_WAIT_S``. Only processes started here are signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from shmbus.bridge import config as bridge_config
from shmbus.core import ownership

CHECK_S = 1.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0
STOP_WAIT_S = 10.0


class Child:
    def __init__(self, name: str, worker: int):
        self.name = name
        self.worker = worker
        self.proc: subprocess.Popen | None = None
        self.mtime = None
        self.started = 0.0
        self.restarts = 0
        self.backoff = BACKOFF_MIN_S
        self.next_start = 0.0
        self.last_exit = None


class BridgeKeeper:
    def __init__(self, data_dir: str, log):
        self.data_dir = data_dir
        self.log = log
        self.children: dict[tuple[str, int], Child] = {}  # (bridge, worker) -> its process
        self.stopping = threading.Event()
        self.thread = None
        self.lock = threading.Lock()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="bridges", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 (keep the thread: the next round tries again)
                self.log(f"bridges: {type(e).__name__}: {e}")
            self.stopping.wait(CHECK_S)

    def _mtime(self, name: str):
        try:
            return os.stat(bridge_config.config_path(self.data_dir, name)).st_mtime_ns
        except FileNotFoundError:
            return None

    def check(self) -> None:
        now = time.monotonic()
        wanted = {}
        for name in bridge_config.list_bridges(self.data_dir):
            mtime = self._mtime(name)
            try:
                cfg = bridge_config.read_bridge(self.data_dir, name)
            except Exception:  # noqa: BLE001 (removed meanwhile, or unreadable: its process keeps running)
                wanted.update({k: self.children[k].mtime for k in self.children if k[0] == name})
                continue
            for w in range(cfg.workers):
                wanted[(name, w)] = mtime
        with self.lock:
            for key in [k for k in self.children if k not in wanted]:
                self._stop(self.children.pop(key), "removed")
            for key, mtime in sorted(wanted.items()):
                name = key[0]
                ch = self.children.get(key)
                if ch is None:
                    ch = self.children[key] = Child(*key)
                if ch.proc is not None and ch.mtime != mtime:
                    self._stop(ch, "config changed")
                    ch.next_start = 0.0
                if ch.proc is not None and ch.proc.poll() is not None:
                    ch.last_exit = ch.proc.returncode
                    ran = now - ch.started
                    ch.proc = None
                    ch.backoff = BACKOFF_MIN_S if ran >= STABLE_S else min(ch.backoff * 2, BACKOFF_MAX_S)
                    ch.next_start = now + ch.backoff
                    ch.restarts += 1
                    self.log(f"bridge {name} exited (status {ch.last_exit}) after {ran:.1f}s: restarting in "
                             f"{ch.backoff:.1f}s (its log: {bridge_config.log_path(self.data_dir, name)})")
                if ch.proc is None and now >= ch.next_start and not self.stopping.is_set():
                    ch.mtime = mtime
                    self._spawn(ch)

    def _spawn(self, ch: Child) -> None:
        ownership.makedirs(bridge_config.bridges_dir(self.data_dir))
        fd = ownership.open_file(bridge_config.log_path(self.data_dir, ch.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            ch.proc = subprocess.Popen(
                [sys.executable, "-m", "shmbus.bridge", "--data-dir", self.data_dir, "--name", ch.name,
                 "--worker", str(ch.worker), "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True, start_new_session=True)
        finally:
            os.close(fd)
        ch.started = time.monotonic()

    def _stop(self, ch: Child, why: str) -> None:
        p = ch.proc
        ch.proc = None
        if p is None or p.poll() is not None:
            return
        p.terminate()  # (a process this keeper started: Popen knows whether it was reaped)
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.log(f"bridge {ch.name} did not stop within {STOP_WAIT_S:.0f}s ({why}): killing pid={p.pid}")
            p.kill()
            p.wait(5)

    def status(self) -> list:
        """Each bridge process (without the lock: a stop under way holds it for seconds)."""
        out = []
        for ch in list(self.children.values()):
            p = ch.proc
            out.append({"name": ch.name, "worker": ch.worker, "pid": p.pid if p is not None else None,
                        "restarts": ch.restarts, "last_exit": ch.last_exit})
        return out

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(CHECK_S + STOP_WAIT_S + 5)
        with self.lock:
            procs = [ch for ch in self.children.values() if ch.proc is not None and ch.proc.poll() is None]
            for ch in procs:
                ch.proc.terminate()
            deadline = time.monotonic() + STOP_WAIT_S
            for ch in procs:
                try:
                    ch.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.log(f"bridge {ch.name} did not stop within {STOP_WAIT_S:.0f}s: killing pid={ch.proc.pid}")
                    ch.proc.kill()
                    ch.proc.wait(5)


__all__ = ["BridgeKeeper"]
