"""The supervisor daemon (``shmbus serve``): one per data dir.

Jobs, each in its own module: spilling rings to segments (``spill.py``),
unblocking dead writers' claims (``unblock.py``), coordinating consumer groups
(``coordinator.py``, its own socket and thread); and answering the control
socket (status, stop). It holds an exclusive ``flock`` on ``supervisor.lock``
for its whole life, so a second one for the same data dir exits at once.

Threads: the spill loop (main thread), the log keeper (retention and
compaction, ``keep_logs``: a compaction pass can take seconds, which spilling
must not wait for) and the control socket. Producers and consumers never wait
on the supervisor except when a ring is full or acks="disk".
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time

import psutil

from shmbus import _paths, _private, metadata
from shmbus.bus import open_or_recreate_ring
from shmbus.errors import ShmbusError
from shmbus.ring import ControlBlock
from shmbus.segments import recovery
from shmbus.supervisor import cleaner, retention
from shmbus.supervisor.sockets import listen_unix
from shmbus.supervisor.spill import PartitionSpiller

IDLE_WAIT_S = 0.05  # the spiller's longest sleep; producers ring the spill bell when a ring passes half full
BLOCKED_WAIT_S = 0.01  # the sleep while a claim blocks a ring (the unblocker judges it on the next rounds)
RESCAN_S = 0.2  # how often the topic list is re-read
KEEP_S = 0.5  # how often retention and compaction look at the partitions
SPILL_LOG_S = 10.0  # a spill failure is logged again this often while it lasts


def next_round_wait(backlogs, blocked: bool) -> float:
    """How long the spiller sleeps after a round (a pure policy).

    ``backlogs``: (bytes published or claimed but not spilled, ring bytes) per
    ring. A round spills everything published, so what is left is what came
    in during the round. Going again at once while records trickle in would
    keep a third process runnable on a 2-core machine, taking the CPU from
    spinning producers and consumers for milliseconds at a time; so: sleep
    (a producer rings the spill bell when its ring passes half full, an
    ``acks="disk"`` producer at once), unless a ring is a quarter full of
    unspilled bytes already. A blocked claim is looked at again soon.
    """
    if any(b * 4 >= rb for b, rb in backlogs):
        return 0.0
    return BLOCKED_WAIT_S if blocked else IDLE_WAIT_S


class AlreadyRunning(Exception):
    pass


class Supervisor:
    def __init__(self, data_dir: str):
        self.data_dir = _paths.resolve_data_dir(data_dir)
        _private.makedirs(self.data_dir)
        self.lock_fd = _private.open_file(_paths.lock_path(self.data_dir), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise AlreadyRunning(f"a supervisor is already running for data_dir={self.data_dir}") from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            self.id = _paths.bus_id(self.data_dir)
            self.ctl = ControlBlock.open_or_create(self.id, self.data_dir)
        except BaseException:
            os.close(self.lock_fd)
            raise
        self.ctl.set_spill_errno(0)  # (a predecessor's failure is not ours)
        self.spillers: dict[tuple[str, int], PartitionSpiller] = {}
        self.topic_ids: dict[str, str] = {}
        self.stopping = threading.Event()
        self.started = time.time()
        self.sock = None
        self.coordinator = None  # the consumer-group coordinator (coordinator.py), its own socket and thread
        self.lock = threading.Lock()
        self._stamp = None
        self.cleaner = cleaner.Cleaner()
        self._spill_errors: dict = {}
        self.release_rings = True  # at a clean stop, remove the bus's objects from /dev/shm (stop --keep-rings: no)
        self._all_spilled = False  # set by run() after its last spill: every claimed byte is on disk
        self._failing: dict = {}  # partition dir -> the exception its last spill raised (cleared by a good one)
        self._unchecked: collections.deque = collections.deque()  # segment files for _check_older
        self.rounds = 0  # spill rounds, the time they took, and the longest
        self.busy_s = 0.0
        self.round_max_s = 0.0

    # --- topics ---
    def _topics_stamp(self):
        """Changes when a topic is created, deleted or altered (renames touch the dirs' mtimes)."""
        tdir = _paths.topics_dir(self.data_dir)
        try:
            stamp = [os.stat(tdir).st_mtime_ns]
            with os.scandir(tdir) as it:
                for e in it:
                    stamp.append((e.name, e.stat().st_mtime_ns))
        except FileNotFoundError:
            return None
        return tuple(sorted(stamp, key=str))

    def rescan(self, force: bool = True) -> None:
        stamp = self._topics_stamp()
        if not force and stamp == self._stamp:
            return
        self._stamp = stamp
        now_ms = int(time.time() * 1000)
        names = metadata.list_topics(self.data_dir)
        live = set()
        for name in names:
            try:
                meta = metadata.read_topic(self.data_dir, name)
            except Exception:
                continue
            self.topic_ids[name] = meta.id
            for p in range(meta.partitions):
                key = (meta.id, p)
                live.add(key)
                sp = self.spillers.get(key)
                if sp is None:
                    try:
                        self.recover(_paths.partition_dir(self.data_dir, name, p))
                        ring = open_or_recreate_ring(self.data_dir, self.id, meta, p)
                    except Exception as e:  # deleted meanwhile
                        log(f"cannot open ring topic={name} partition={p}: {e}")
                        continue
                    sp = PartitionSpiller(ring, _paths.partition_dir(self.data_dir, name, p), meta.config, now_ms,
                                          on_unblock=self.ctl.ring_doorbell)
                    self.spillers[key] = sp
                else:
                    sp.config = meta.config
                    if sp.ring.max_message_bytes() != meta.config["max.message.bytes"]:
                        sp.ring.set_max_message_bytes(meta.config["max.message.bytes"])
                    sp.writer.segment_bytes = meta.config["segment.bytes"]
                    sp.writer.segment_ms = meta.config["segment.ms"]
        for key in [k for k in self.spillers if k not in live]:
            sp = self.spillers.pop(key)
            if self._failing.pop(sp.writer.pdir, None) is not None and not self._failing:
                self.ctl.set_spill_errno(0)  # (its failure went with it)
            with sp.keep_lock, sp.state_lock:  # not under the log keeper's feet
                sp.closed = True
                sp.close()
                sp.ring.close()

    # --- the log keeper: recovery, retention, compaction (each job in its own module) ---
    def recover(self, pdir: str) -> None:
        """Before the first spill into a partition: cut a torn tail, rebuild bad indexes."""
        rep = recovery.recover_partition(pdir)
        for path, old, new, why in rep.truncated:
            log(f"recovery: cut a bad tail ({why}) file={path} size={old} -> {new}")
        for what in rep.swaps + [f"rebuilt {p}" for p in rep.rebuilt]:
            log(f"recovery: {what} dir={pdir}")
        self._unchecked.extend(rep.older)  # checksummed by the log keeper (_check_older)

    def _check_older(self) -> None:
        """Checksums of the segments recovery kept without reading them; a warning for each corrupt one."""
        while self._unchecked and not self.stopping.is_set():
            path = self._unchecked.popleft()
            try:
                _n, bad = recovery.check_segment(path)
            except FileNotFoundError:
                continue  # deleted by retention, or its topic
            if bad is not None:
                log(f"WARNING: corrupt record in a segment ({bad.why}), kept: readers get CorruptRecordError "
                    f"there and may seek past it: offset={bad.offset} file={bad.file} position={bad.position} "
                    f"(restore the file from a copy if you have one; `shmbus doctor --verify` checks every segment)")

    def keep_logs(self) -> None:
        """Retention and compaction of every partition, in the log-keeper thread.

        Not in the spill thread: a compaction pass reads the whole partition (seconds for a
        million records), and spilling, so producers on a full ring, would wait for it. Each
        partition is kept under its ``keep_lock`` (the spill thread takes it only to close the
        partition); its writer is touched only under ``state_lock`` (held by the spill thread
        while it spills), briefly: to snapshot the segments for the cleaner, and for
        retention's ``start_empty``. The cleaner then works on closed segments only.
        """
        for sp in list(self.spillers.values()):
            if self.stopping.is_set():
                return
            with sp.keep_lock:
                if sp.closed or sp.ring.deleted():
                    continue
                now_ms = int(time.time() * 1000)
                try:
                    retention.enforce(sp.writer, sp.config, now_ms, sp.state_lock)
                    with sp.state_lock:
                        snapshot = sp.writer.snapshot()
                    self.cleaner.maybe_clean(sp.writer, sp.config, now_ms, snapshot, self.stopping.is_set)
                except cleaner.Aborted:
                    return
                except FileNotFoundError:
                    continue  # the topic is being deleted
                except (OSError, ValueError) as e:
                    log(f"log keeping failed dir={sp.writer.pdir}: {type(e).__name__}: {e}")

    def _keep_loop(self) -> None:
        while not self.stopping.wait(KEEP_S):
            try:
                self._check_older()
                self.keep_logs()
            except Exception as e:  # noqa: BLE001 (keep the thread: the next round tries again)
                log(f"log keeping failed: {type(e).__name__}: {e}")

    # --- the spill loop ---
    def spill_all(self) -> float:
        """One spill round over every ring; returns how long to sleep before the next (seconds)."""
        now_ms = int(time.time() * 1000)
        backlogs = []
        blocked = False
        for sp in list(self.spillers.values()):
            if sp.ring.deleted():
                continue
            try:
                with sp.state_lock:  # the log keeper snapshots the writer, or starts an empty segment
                    sp.spill(sp.ring.ring_bytes)
                    sp.roll_if_old(now_ms)
            except FileNotFoundError:
                continue  # the topic is being deleted; the next rescan drops it
            except Exception as e:  # noqa: BLE001 (a full disk, say: keep the other partitions going)
                self._spill_failed(sp, e)
                continue
            if self._failing and self._failing.pop(sp.writer.pdir, None) is not None:
                self._spill_recovered(sp)
            backlogs.append((sp.ring.claim_position() - sp.spilled_pos, sp.ring.ring_bytes))
            blocked = blocked or sp.stuck
        return next_round_wait(backlogs, blocked)

    def _spill_failed(self, sp, e: Exception) -> None:
        """Record and log a failed spill; the next round retries.

        Logged every ``SPILL_LOG_S`` per error while it lasts (one line for
        all the partitions it hits), and published in the control block
        (``SPILL_ERRNO``) so that a producer blocked on a full ring says why.
        """
        self._failing[sp.writer.pdir] = e
        errno = getattr(e, "errno", None)
        if isinstance(errno, int) and errno > 0:
            self.ctl.set_spill_errno(errno)
        key = (type(e).__name__, str(e))
        now = time.monotonic()
        if now - self._spill_errors.get(key, -1e9) >= SPILL_LOG_S:
            self._spill_errors[key] = now
            what = self.ctl.spill_failure(self.data_dir) if isinstance(errno, int) and errno > 0 else None
            log(f"spill failed, retrying: {what + ': ' if what else ''}dir={sp.writer.pdir} "
                f"failing_partitions={len(self._failing)} error={type(e).__name__}: {e}")
        time.sleep(0.01)

    def _spill_recovered(self, sp) -> None:
        if not self._failing:
            self.ctl.set_spill_errno(0)
            self._spill_errors.clear()
            log(f"spilling works again: dir={sp.writer.pdir}")

    def spill_error(self, pdir: str | None = None) -> str | None:
        """What status shows: the failing spills' error (of partition ``pdir``, or of any), or None."""
        e = self._failing.get(pdir) if pdir is not None else next(iter(list(self._failing.values())), None)
        if e is None:
            return None
        return self.ctl.spill_failure(self.data_dir) or f"spilling is failing: {type(e).__name__}: {e}"

    def run(self) -> None:
        from shmbus.kernels import frames as K

        K.warm()  # compile or load every kernel now: clients that autostarted us then find a warm cache
        self.rescan()
        from shmbus.supervisor.coordinator import Coordinator

        self.coordinator = Coordinator(self.data_dir, log)
        self.coordinator.start()  # before the control socket: a client that sees us answer can join a group
        self.start_control()
        keeper = threading.Thread(target=self._keep_loop, name="log-keeper", daemon=True)
        keeper.start()
        last_scan = time.monotonic()
        while not self.stopping.is_set():
            seen = self.ctl.spill_bell()
            t0 = time.monotonic()
            wait = self.spill_all()
            now = time.monotonic()
            self.rounds += 1
            self.busy_s += now - t0
            self.round_max_s = max(self.round_max_s, now - t0)
            if now - last_scan > RESCAN_S:
                self.rescan(force=False)
                last_scan = now
            if wait > 0:
                self.ctl.spiller_sleep(seen, wait)
        keeper.join()  # a compaction pass under way ends at its next segment (cleaner.Aborted)
        # a last spill so that what is published is on disk (topics made since the last rescan too)
        self.rescan(force=False)
        self.spill_all()
        spilled = not self._failing
        for sp in self.spillers.values():
            spilled = spilled and sp.ring.claim_position() <= sp.spilled_pos
            sp.writer.fsync_all()  # and the recovery point moves to the log end: a quick restart
            sp.close()
            sp.ring.close()
        self._all_spilled = spilled

    # --- control socket ---
    def start_control(self) -> None:
        s = listen_unix(_paths.socket_path(self.data_dir), 64)
        s.settimeout(0.2)
        self.sock = s
        threading.Thread(target=self._serve, name="control", daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            f = conn.makefile("rb")
            for line in f:
                try:
                    req = json.loads(line)
                    resp = self.dispatch(req)
                except Exception as e:  # answer, never die
                    resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                conn.sendall(json.dumps(resp).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def dispatch(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "stop":
            if req.get("keep_rings"):
                self.release_rings = False
            self.stopping.set()
            self.ctl.ring_spill_bell()
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, **self.status()}
        return {"ok": False, "error": f"unknown command: cmd={cmd!r}"}

    def status(self) -> dict:
        proc = psutil.Process()
        parts = []
        for (tid, p), sp in list(self.spillers.items()):
            name = next((n for n, i in self.topic_ids.items() if i == tid), tid)
            parts.append({
                "topic": name, "partition": p, "next_offset": sp.ring.next_offset(),
                "ring_bytes": sp.ring.ring_bytes, "ring_used": max(sp.ring.fill(), 0),
                "spilled_frames": sp.spilled_frames, "spilled_bytes": sp.spilled_bytes,
                "unblocked": sp.unblocked,
                "fenced": sp.fenced,
                "release_held_by_pid": sp.held_by,
                "spill_lag_bytes": max(sp.ring.claim_position() - sp.spilled_pos, 0),
                "spill_error": self.spill_error(sp.writer.pdir),
            })
        return {
            "pid": os.getpid(), "data_dir": self.data_dir, "bus_id": self.id,
            "uptime_s": round(time.time() - self.started, 3),
            "cpu_percent": proc.cpu_percent(interval=None), "rss_bytes": proc.memory_info().rss,
            "spill_rounds": self.rounds, "spill_busy_s": round(self.busy_s, 6),
            "spill_round_max_ms": round(self.round_max_s * 1000, 3),
            "spill_error": self.spill_error(), "failing_partitions": len(self._failing),
            "partitions": parts,
        }

    def close(self) -> None:
        if self.coordinator is not None:
            self.coordinator.close()  # writes every group's checkpoint
        if self.sock is not None:
            self.sock.close()
            try:
                os.unlink(_paths.socket_path(self.data_dir))
            except FileNotFoundError:
                pass
        self.ctl.close()
        if self.release_rings and self._all_spilled:
            self._release_rings()
        os.close(self.lock_fd)  # releases the flock

    def _release_rings(self) -> None:
        """Remove the bus's objects from /dev/shm (RAM) at a clean stop, under the lock.

        Only after the last spill put every claimed byte on disk (``run``) and
        the groups' checkpoints are written; kept if another process maps any
        of them (a client still using the bus). The next ``Bus()`` makes the
        rings anew at the log end.
        """
        from shmbus import shm

        try:
            removed, kept = shm.release_bus(self.id)
        except Exception as e:  # noqa: BLE001 (a stop never fails on this)
            log(f"rings kept in /dev/shm: {type(e).__name__}: {e}")
            return
        if kept:
            log(f"rings kept in /dev/shm: {kept} (everything in them is on disk; `shmbus doctor` removes them "
                f"once no process has the bus open, or the next start uses them)")
        elif removed:
            log(f"removed {len(removed)} shared-memory objects of the bus (spilled; the next start makes them anew)")


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shmbus supervisor: {msg}", file=sys.stderr, flush=True)


def serve(data_dir: str) -> int:
    try:
        sup = Supervisor(data_dir)
    except (AlreadyRunning, ShmbusError) as e:
        print(f"shmbus: {e}", file=sys.stderr)
        return 1
    stop = lambda *_: (sup.stopping.set(), sup.ctl.ring_spill_bell())  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"started pid={os.getpid()} data_dir={sup.data_dir} bus_id={sup.id}")
    try:
        sup.run()
    finally:
        sup.close()
        log("stopped")
    return 0


__all__ = ["Supervisor", "serve"]
