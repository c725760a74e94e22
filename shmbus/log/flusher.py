"""The background flusher: fsyncs and closes rolled segments, then moves their partition's recovery point."""

from __future__ import annotations

import os
import queue
import threading

from shmbus.log.files import fsync_path, write_recovery_point


class Flusher:
    """One background thread that fsyncs and closes rolled segments, oldest first (as Kafka's
    flush on roll): a roll costs the spill loop nothing. Each job then moves its partition's
    recovery point, so a crash of the machine before the fsync makes recovery check that
    segment too (log/recovery.py). A job's files are open fds (closed here, and given
    back to the writer's :class:`~shmbus.log.filepool.FilePool`) or, for a writer that was parked, paths."""

    PATH_PATIENCE_S = 10.0  # out of fds: how long a path's fsync is retried before its point stays

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, items, pdir: str, point: int, pool=None) -> threading.Event:
        """Queue a job; its event is set when done, with ``synced`` False if a file could not be synced."""
        done = threading.Event()
        done.synced = False
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="segment-flusher", daemon=True)
                self.thread.start()
        self.q.put((items, pdir, point, pool, done))
        return done

    def _run(self) -> None:
        while True:
            items, pdir, point, pool, done = self.q.get()
            synced = True
            closed = 0
            try:
                for item in items:
                    if isinstance(item, int):
                        try:
                            os.fsync(item)
                        except OSError:
                            pass
                        finally:
                            os.close(item)
                            closed += 1
                    else:
                        try:
                            fsync_path(item, self.PATH_PATIENCE_S)
                        except OSError:
                            synced = False  # not known to be on disk: recovery keeps checking it
                if synced:
                    write_recovery_point(pdir, point)
            finally:
                if pool is not None and closed:
                    pool.closed_fds(closed)
                done.synced = synced
                done.set()


FLUSHER = Flusher()  # the process's one flusher


def pending(done: threading.Event) -> bool:
    """Is a flusher job not done, or done without syncing every file?"""
    return not done.is_set() or not done.synced
