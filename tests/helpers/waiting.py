"""Waiting for a condition, and worker processes that are always reaped."""

from __future__ import annotations

import multiprocessing as mp
import time

SPAWN = mp.get_context("spawn")


def wait_for(cond, timeout_s, what):
    """Poll ``cond()`` every 10 ms until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Procs:
    """Worker processes (spawn) that are killed and reaped at teardown, whatever happened."""

    def __init__(self):
        self.procs = []

    def start(self, target, *args):
        p = SPAWN.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def join_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in self.procs if p.is_alive()]
        assert not alive, f"worker processes still running after {timeout} s: {[p.pid for p in alive]}"

    def kill_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)
