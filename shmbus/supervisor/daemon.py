"""The supervisor daemon (``shmbus serve``): one per data dir.

Jobs, each in its own module: spilling rings to segments (``spill.py``),
unblocking dead writers' claims (``unblock.py``), coordinating consumer groups
(``groups/``, its own socket and thread), running the bridges' processes
(``bridges.py``, its own thread); and answering the control
socket (status, stop). It holds an exclusive ``flock`` on ``supervisor.lock``
for its whole life, so a second one for the same data dir exits at once.

Threads: the spill loop (main thread), the log keeper (retention and
compaction, ``keep_logs``: a compaction pass can take seconds, which spilling
must not wait for) and the control socket. Producers and consumers never wait
on the supervisor except when a ring is full or acks="disk".

File descriptors: at start the soft ``RLIMIT_NOFILE`` is raised to the hard
limit. Rings are mapped without keeping an fd; open segment files are bounded
by a :class:`~shmbus.log.filepool.FilePool` (idle writers close theirs), with
room left for sockets and passing work. Running out of fds anyway (EMFILE,
ENFILE) is never fatal: each loop logs it (at most every ``FD_LOG_S``), backs
off, tries again on its next round, and ``status`` reports it.
"""

from __future__ import annotations

import collections
import faulthandler
import fcntl
import json
import os
import resource
import signal
import socket
import sys
import threading
import time

import psutil

from shmbus.core import ownership, paths
from shmbus.log import metadata
from shmbus.log.partition import open_or_recreate_ring
from shmbus.errors import ShmbusError
from shmbus.core.ring import ControlBlock
from shmbus.log import recovery
from shmbus.core.limits import fd_exhausted
from shmbus.log.filepool import FilePool
from shmbus.log import cleaner, retention
from shmbus.supervisor.sockets import listen_unix
from shmbus.supervisor.spill import PartitionSpiller

IDLE_WAIT_S = 0.05  # the spiller's longest sleep; producers ring the spill bell when a ring passes half full
BLOCKED_WAIT_S = 0.01  # the sleep while a claim blocks a ring (the unblocker judges it on the next rounds)
RESCAN_S = 0.2  # how often the topic list is re-read
KEEP_S = 0.5  # how often retention and compaction look at the partitions
SPILL_LOG_S = 10.0  # a spill failure is logged again this often while it lasts
IDLE_CLOSE_S = 10.0  # a partition that spilled nothing for this long closes its segment files
FD_LOG_S = 10.0  # running out of fds is logged at most this often
FD_BACKOFF_S = 0.05  # and a loop that ran out waits this long before it tries again
FD_PROBLEM_S = 60.0  # status reports it for this long after the last time


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the kernel allows); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if want == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def segment_fd_cap(soft: int) -> int:
    """How many fds open segment files may take under a soft limit of ``soft`` (a pure policy):
    all but a quarter (at least 128) kept for sockets, clients, group tables, recovery and readers."""
    return max(24, soft - max(128, soft // 4))


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
    def __init__(self, data_dir: str, kafka=None, metrics=None):
        self.data_dir = paths.resolve_data_dir(data_dir)
        ownership.makedirs(self.data_dir)
        self.lock_fd = ownership.open_file(paths.lock_path(self.data_dir), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise AlreadyRunning(f"a supervisor is already running for data_dir={self.data_dir}") from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            self.id = paths.bus_id(self.data_dir)
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
        self.coordinator = None  # the consumer-group coordinator (groups/server.py), its own socket and thread
        self.kafka_settings = kafka  # kafka/settings.py ListenerSettings, or None: no Kafka listener
        self.kafka = None  # the Kafka listener (kafka/server.py), its own threads
        self.metrics_settings = metrics  # metrics.py MetricsSettings, or None: no metrics endpoint
        self.metrics = None  # the Prometheus endpoint (metrics.py), prometheus_client's threads
        self.bridges = None  # the bridge keeper (bridges.py): a child process per configured bridge
        self.lock = threading.Lock()
        self._stamp = None
        self.cleaner = cleaner.Cleaner()
        self._spill_errors: dict = {}
        self.release_rings = True  # at a clean stop, remove the bus's objects from /dev/shm (stop --keep-rings: no)
        self._all_spilled = False  # set by run() after its last spill: every claimed byte is on disk
        self._failing: dict = {}  # partition dir -> the exception its last spill raised (cleared by a good one)
        self._unchecked: collections.deque = collections.deque()  # segment files for _check_older
        self.fd_soft, self.fd_hard = raise_fd_limit()
        self.pool = FilePool(segment_fd_cap(self.fd_soft))
        self.fd_errors = 0  # times a loop ran out of fds; the last: (time, where, error)
        self.fd_last: tuple | None = None
        self._fd_logged = -1e9
        self._rescan_failed = False  # the last rescan could not read everything: do it again
        self.rounds = 0  # spill rounds, the time they took, and the longest
        self.busy_s = 0.0
        self.round_max_s = 0.0

    # --- topics ---
    def _topics_stamp(self):
        """Changes when a topic is created, deleted or altered (renames touch the dirs' mtimes)."""
        tdir = paths.topics_dir(self.data_dir)
        try:
            stamp = [os.stat(tdir).st_mtime_ns]
            with os.scandir(tdir) as it:
                for e in it:
                    stamp.append((e.name, e.stat().st_mtime_ns))
        except FileNotFoundError:
            return None
        return tuple(sorted(stamp, key=str))

    def rescan(self, force: bool = True) -> None:
        """Start spilling new topics' partitions, drop deleted ones.

        Out of fds (raises OSError EMFILE or ENFILE, or finishes with partitions left
        out), nothing is dropped, and the next call scans again whatever the stamp says.
        """
        stamp = self._topics_stamp()
        if not force and stamp == self._stamp and not self._rescan_failed:
            return
        self._stamp = stamp
        self._rescan_failed = True  # until this scan is through
        now_ms = int(time.time() * 1000)
        names = metadata.list_topics(self.data_dir)
        live = set()
        short = None  # the first fd error met: some partitions wait for the next scan
        for name in names:
            try:
                meta = metadata.read_topic(self.data_dir, name)
            except OSError as e:
                if not fd_exhausted(e):
                    continue
                short = e  # unreadable now: keep what runs, look again next time
                live.update(k for k in self.spillers if k[0] == self.topic_ids.get(name))
                continue
            except Exception:  # noqa: BLE001 (deleted meanwhile, or not a topic)
                continue
            self.topic_ids[name] = meta.id
            for p in range(meta.partitions):
                key = (meta.id, p)
                live.add(key)
                sp = self.spillers.get(key)
                if sp is None:
                    if short is not None:
                        continue  # no fds: the next scan opens the rest
                    pdir = paths.partition_dir(self.data_dir, name, p)
                    try:
                        self.recover(pdir)
                        ring = open_or_recreate_ring(self.data_dir, self.id, meta, p)
                        try:
                            sp = PartitionSpiller(ring, pdir, meta.config, now_ms,
                                                  on_unblock=self.ctl.ring_doorbell, pool=self.pool)
                        except BaseException:
                            ring.close()
                            raise
                    except Exception as e:  # noqa: BLE001 (deleted meanwhile, or out of fds)
                        if fd_exhausted(e):
                            short = e
                        else:
                            log(f"cannot open ring topic={name} partition={p}: {e}")
                        continue
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
        if short is not None:
            self._out_of_fds(short, "opening partitions")
            return
        self._rescan_failed = False

    def _out_of_fds(self, e: OSError, where: str) -> None:
        """A loop ran out of fds: note it for ``status``, log it (at most every FD_LOG_S), shrink the file pool."""
        self.fd_errors += 1
        self.fd_last = (time.time(), where, f"{type(e).__name__}: {e}")
        now = time.monotonic()
        if now - self._fd_logged >= FD_LOG_S:
            self._fd_logged = now
            log(f"out of file descriptors ({where}), retrying: {e}; {self._fd_numbers()}; "
                f"failures so far={self.fd_errors} (raise the open-files limit: `ulimit -n`, or LimitNOFILE= "
                f"in a systemd unit)")
        try:
            self.pool.pressure()
        except OSError:
            pass

    def _fd_numbers(self) -> str:
        return (f"RLIMIT_NOFILE soft={self.fd_soft} hard={self.fd_hard} open={_open_fds()} "
                f"segment_files={self.pool.open_fds} (cap {self.pool.cap_fds})")

    def fd_problem(self) -> str | None:
        """One line about running out of fds, if it happened in the last FD_PROBLEM_S, else None."""
        last = self.fd_last
        if last is None or time.time() - last[0] > FD_PROBLEM_S:
            return None
        ago = time.time() - last[0]
        return (f"out of file descriptors: {self.fd_errors} failures, the last {ago:.0f}s ago ({last[1]}: "
                f"{last[2]}); {self._fd_numbers()}: raise the open-files limit (`ulimit -n`)")

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
                except OSError as e:
                    if fd_exhausted(e):
                        self._out_of_fds(e, "log keeper")
                        return  # the next round (KEEP_S) tries again
                    log(f"log keeping failed dir={sp.writer.pdir}: {type(e).__name__}: {e}")
                except ValueError as e:
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
        short = False  # out of fds in this round
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
                if fd_exhausted(e):
                    self._out_of_fds(e, "spilling")  # (parks idle writers: the next ones may get files)
                    short = True
                else:
                    self._spill_failed(sp, e)
                continue
            if self._failing and self._failing.pop(sp.writer.pdir, None) is not None:
                self._spill_recovered(sp)
            backlogs.append((sp.ring.claim_position() - sp.spilled_pos, sp.ring.ring_bytes))
            blocked = blocked or sp.stuck
        wait = next_round_wait(backlogs, blocked)
        return max(wait, FD_BACKOFF_S) if short else wait

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
        from shmbus.kernels import frames as frame_kernels

        frame_kernels.warm()  # compile or load every kernel now: clients that autostarted us then find a warm cache
        self.rescan()
        from shmbus.supervisor.groups import Coordinator

        self.coordinator = Coordinator(self.data_dir, log, out_of_fds=self._out_of_fds)
        self.coordinator.start()  # before the control socket: a client that sees us answer can join a group
        if self.kafka is not None:
            self.start_kafka()
        self.start_control()
        from shmbus.supervisor.bridges import BridgeKeeper

        self.bridges = BridgeKeeper(self.data_dir, log)
        self.bridges.start()
        keeper = threading.Thread(target=self._keep_loop, name="log-keeper", daemon=True)
        keeper.start()
        last_scan = last_idle = time.monotonic()
        while not self.stopping.is_set():
            seen = self.ctl.spill_bell()
            t0 = time.monotonic()
            wait = self.spill_all()
            now = time.monotonic()
            self.rounds += 1
            self.busy_s += now - t0
            self.round_max_s = max(self.round_max_s, now - t0)
            if now - last_scan > RESCAN_S:
                try:
                    self.rescan(force=False)
                except OSError as e:
                    if not fd_exhausted(e):
                        raise
                    self._rescan_failed = True
                    self._out_of_fds(e, "scanning topics")
                    wait = max(wait, FD_BACKOFF_S)
                last_scan = now
            if now - last_idle > IDLE_CLOSE_S:
                self.pool.park_idle(int(time.time() * 1000), int(IDLE_CLOSE_S * 1000))
                last_idle = now
            if wait > 0:
                self.ctl.spiller_sleep(seen, wait)
        self.bridges.close()  # before the last spill: what they wrote to the bus is spilled with the rest
        keeper.join()  # a compaction pass under way ends at its next segment (cleaner.Aborted)
        # a last spill so that what is published is on disk (topics made since the last rescan too)
        try:
            self.rescan(force=False)
        except OSError as e:
            if not fd_exhausted(e):
                raise
            log(f"out of file descriptors at stop: topics made since the last scan are spilled at the next start: {e}")
        self.spill_all()
        spilled = not self._failing
        for sp in self.spillers.values():
            spilled = spilled and sp.ring.claim_position() <= sp.spilled_pos
            try:
                sp.writer.fsync_all()  # and the recovery point moves to the log end: a quick restart
            except OSError as e:  # (the recovery point stays: the next start checks more)
                log(f"fsync at stop failed dir={sp.writer.pdir}: {type(e).__name__}: {e}")
            sp.close()
            sp.ring.close()
        self._all_spilled = spilled

    # --- the Kafka listener ---
    def open_kafka(self) -> None:
        """Bind the Kafka listener's socket (before anything runs: a port in use fails the start)."""
        from shmbus.kafka.server import KafkaListener

        k = self.kafka_settings
        try:
            self.kafka = KafkaListener(self.data_dir, k.host, k.port, log=log, sasl_users=k.sasl_users)
        except OSError as e:
            raise ShmbusError(f"cannot open the Kafka listener on {k.host}:{k.port}: {e.strerror or e} (is the "
                              f"port in use? pick another with --kafka-listener HOST:PORT)") from None

    def start_kafka(self) -> None:
        self.kafka.broker.coordinator = self.coordinator
        self.kafka.start()
        log(f"kafka listener on {self.kafka.address}{' (SASL/PLAIN)' if self.kafka_settings.sasl_users else ''}")

    # --- the metrics endpoint ---
    def open_metrics(self) -> None:
        """Bind and serve the Prometheus endpoint (before anything runs: a port in use fails the start)."""
        from shmbus.supervisor.metrics import MetricsServer

        m = self.metrics_settings
        try:
            self.metrics = MetricsServer(self, m)
        except OSError as e:
            raise ShmbusError(f"cannot open the metrics endpoint on {m.host}:{m.port}: {e.strerror or e} (is the "
                              f"port in use? pick another with --metrics HOST:PORT)") from None
        log(f"metrics on http://{self.metrics.address}/metrics")

    # --- control socket ---
    def start_control(self) -> None:
        s = listen_unix(paths.socket_path(self.data_dir), 64)
        s.settimeout(0.2)
        self.sock = s
        threading.Thread(target=self._serve, name="control", daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if fd_exhausted(e):  # the client waits in the backlog; try again soon
                    self._out_of_fds(e, "control socket")
                    time.sleep(FD_BACKOFF_S)
                    continue
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
        """The supervisor's state; answers also when out of fds (what needs one is then None)."""
        try:
            proc = psutil.Process()
            cpu, rss = proc.cpu_percent(interval=None), proc.memory_info().rss
        except OSError:
            cpu = rss = None
        parts = []
        for (tid, p), sp in list(self.spillers.items()):
            if sp.closed:
                continue  # (its topic was deleted meanwhile: its ring is let go)
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
        problems = [p for p in (self.fd_problem(),) if p]
        return {
            "pid": os.getpid(), "data_dir": self.data_dir, "bus_id": self.id,
            "uptime_s": round(time.time() - self.started, 3),
            "cpu_percent": cpu, "rss_bytes": rss,
            "spill_rounds": self.rounds, "spill_busy_s": round(self.busy_s, 6),
            "spill_round_max_ms": round(self.round_max_s * 1000, 3),
            "spill_error": self.spill_error(), "failing_partitions": len(self._failing),
            "fds": {"open": _open_fds(), "limit_soft": self.fd_soft, "limit_hard": self.fd_hard,
                    "segment_files": self.pool.open_fds, "segment_files_cap": self.pool.cap_fds,
                    "writers_open": self.pool.writers_open(), "writers_parked": self.pool.parked,
                    "writers_reopened": self.pool.reopened, "exhausted": self.fd_errors},
            "problems": problems,
            "kafka_listener": self.kafka.status() if self.kafka is not None else None,
            "metrics": self.metrics.status() if self.metrics is not None else None,
            "bridges": self.bridges.status() if self.bridges is not None else [],
            "partitions": parts,
        }

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.kafka is not None:
            self.kafka.close()  # its group members leave before the coordinator writes the checkpoints
        if self.coordinator is not None:
            self.coordinator.close()  # writes every group's checkpoint
        if self.sock is not None:
            self.sock.close()
            try:
                os.unlink(paths.socket_path(self.data_dir))
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
        from shmbus.core import shm

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


def _open_fds() -> int | None:
    """How many fds this process has open (None if that cannot be read now: it takes one)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shmbus supervisor: {msg}", file=sys.stderr, flush=True)


def serve(data_dir: str, kafka=None, metrics=None) -> int:
    """Run a supervisor until stopped; ``kafka``: the Kafka listener's settings (kafka/settings.py), or None;
    ``metrics``: the metrics endpoint's (metrics.py), or None."""
    try:
        sup = Supervisor(data_dir, kafka, metrics)
    except (AlreadyRunning, ShmbusError) as e:
        print(f"shmbus: {e}", file=sys.stderr)
        return 1
    try:
        if kafka is not None:
            sup.open_kafka()
        if metrics is not None:
            sup.open_metrics()
    except ShmbusError as e:
        print(f"shmbus: {e}", file=sys.stderr)
        sup.close()
        return 1
    faulthandler.enable(sys.stderr, all_threads=True)  # a fatal signal leaves every thread's stack in the log
    stop = lambda *_: (sup.stopping.set(), sup.ctl.ring_spill_bell())  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"started pid={os.getpid()} data_dir={sup.data_dir} bus_id={sup.id} RLIMIT_NOFILE soft={sup.fd_soft} "
        f"hard={sup.fd_hard} segment_file_cap={sup.pool.cap_fds}")
    try:
        sup.run()
    finally:
        sup.close()
        log("stopped")
    return 0


__all__ = ["Supervisor", "serve"]
