"""Shared helpers for the bench scripts: processes, buses, cleanup, statistics, tables.

Kept free of heavy imports (no numpy, no shmbus at module level): every
spawned child re-imports the script that started it, and this module with it.

Method:
* two processes made with the ``spawn`` context, producer pinned to cpu0 and
  consumer to cpu1 (``--no-pin`` to leave placement to the scheduler); the
  shmbus supervisor is started by the (unpinned) orchestrator, so it is not
  pinned either;
* rounds are interleaved (round k runs every transport once) and a cell is the
  median over rounds of the per-round value, with [min-max] across rounds;
* a short noise probe (both vCPUs spinning on the clock, % of wall time lost)
  is run before each round and recorded;
* every child has a deadline: it is killed (by pid) when its trial runs over,
  and every data dir, supervisor and /dev/shm object is removed in ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
CTX = mp.get_context("spawn")


def ensure_shmbus_importable() -> None:
    """Make ``import shmbus`` work from a checkout (also for the supervisor subprocess)."""
    try:
        import shmbus  # noqa: F401
        return
    except ImportError:
        pass
    sys.path.insert(0, ROOT)
    pp = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + pp if pp else "")


ensure_shmbus_importable()


def install_sigterm_handler() -> None:
    """SIGTERM/SIGHUP -> SystemExit, so the ``finally`` blocks (cleanup) run."""

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGHUP, _raise)


# --- command line -------------------------------------------------------------------------

def arg_parser(name: str, doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"bench/{name}.py", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: script-specific)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin producer/consumer to cpu0/cpu1")
    ap.add_argument("--out", default=None,
                    help=f"JSON output path (default bench/results/{name}.json, {name}.quick.json with --quick)")
    return ap


def out_path(name: str, args) -> str:
    if args.out:
        return args.out
    return os.path.join(RESULTS_DIR, f"{name}.quick.json" if args.quick else f"{name}.json")


def cpus_for(args) -> tuple:
    """(producer cpu, consumer cpu) or (None, None)."""
    if args.no_pin:
        return None, None
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None, None
    return avail[0], avail[1]


def pin(cpu) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# --- environment --------------------------------------------------------------------------

def _shown_path(arg: str) -> str:
    """A command-line word as the results record it: paths in this checkout relative to it,
    other absolute paths by their last part (results name no folder of the machine)."""
    if os.path.isabs(arg):
        full = os.path.abspath(arg)
        if full.startswith(ROOT + os.sep):
            return os.path.relpath(full, ROOT)
        return os.path.basename(full)
    return arg


def environment() -> dict:
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "command": " ".join(_shown_path(a) for a in [sys.executable] + sys.argv),
    }
    with contextlib.suppress(Exception), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        import numba
        import numpy

        env["numpy"] = numpy.__version__
        env["numba"] = numba.__version__
    with contextlib.suppress(Exception):
        env["git"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "shmbus"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        env["shmbus_tree_dirty"] = bool(dirty)
    return env


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
        f.write("\n")
    os.replace(tmp, path)


# --- buses --------------------------------------------------------------------------------

def bus_shm_names(data_dir: str) -> list:
    from shmbus.core import shm

    return shm.bus_names(data_dir)


def cleanup_data_dir(data_dir: str) -> None:
    """Stop the data dir's supervisor, unlink its shared memory, remove the dir. Never raises."""
    try:
        from shmbus.core import shm

        shm.remove_bus(data_dir)
    except Exception as e:  # cleanup must go on
        print(f"warning: removing the bus of {data_dir} failed: {e!r}", file=sys.stderr)
    shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def temp_bus(autostart: bool = True):
    """(Bus, data_dir) on a fresh temporary data dir; everything removed on exit."""
    d = tempfile.mkdtemp(prefix="shmbus-bench-")
    bus = None
    try:
        from shmbus import Bus

        bus = Bus(os.path.join(d, "bus"), autostart=autostart)
        yield bus, bus.data_dir
    finally:
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.close()
        cleanup_data_dir(os.path.join(d, "bus"))
        shutil.rmtree(d, ignore_errors=True)


def warm_kernels(bus) -> None:
    """Load (or compile, on a cold cache) every kernel the benchmarks use, in this process."""
    import numpy as np

    name = "bench-warmup"
    bus.create_topic(name, partitions=1)
    prod = bus.producer()
    cons = bus.consumer(name, auto_offset_reset="earliest")
    try:
        prod.send(name, b"x" * 100)
        prod.send_batch(name, np.zeros((10, 100), np.uint8))
        prod.send_batch(name, [b"y" * 100] * 10)
        got = 0
        deadline = time.monotonic() + 60
        while got < 1 and time.monotonic() < deadline:
            got += sum(len(v) for v in cons.poll(timeout_ms=100, max_records=1).values())
        while got < 21 and time.monotonic() < deadline:
            got += sum(len(v) for v in cons.poll_batch(timeout_ms=100).values())
        if got != 21:
            raise RuntimeError(f"warm-up read {got} of 21 records")
    finally:
        cons.close()
        prod.close()
        bus.delete_topic(name)


def drop_topic(bus, name: str) -> None:
    with contextlib.suppress(Exception):
        bus.delete_topic(name)


# --- child processes ----------------------------------------------------------------------

class Children:
    """Spawned worker processes that are killed (by pid) and reaped whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, target, *args, name=None):
        p = CTX.Process(target=target, args=args, daemon=True, name=name)
        p.start()
        self.procs.append(p)
        return p

    def join(self, timeout: float) -> None:
        """Wait for all; on timeout kill them and raise; raise if one exited non-zero."""
        from multiprocessing.connection import wait

        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in self.procs if p.is_alive()]
            failed = [p for p in self.procs if p.exitcode not in (None, 0)]
            left = deadline - time.monotonic()
            if not alive or failed or left <= 0:
                break
            wait([p.sentinel for p in alive], timeout=min(left, 1.0))
        if failed and alive:  # one side died: the other would wait for it until its own timeout
            self.kill()
            raise RuntimeError(f"child processes failed: {[(p.name, p.exitcode) for p in failed]} "
                               f"(killed the others: {[(p.name, p.pid) for p in alive]})")
        if alive:
            self.kill()
            raise TimeoutError(f"child processes still running after {timeout:.0f} s (killed): "
                               f"{[(p.name, p.pid) for p in alive]}")
        bad = [(p.name, p.exitcode) for p in self.procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"child processes failed: {bad}")

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                with contextlib.suppress(Exception):
                    p.kill()
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def child_fail(out_file: str, exc: BaseException) -> None:
    """Record a child's failure next to its results (the parent reports it)."""
    import traceback

    with contextlib.suppress(Exception), open(out_file + ".err", "w") as f:
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def read_child_error(out_file: str) -> str:
    try:
        with open(out_file + ".err") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --- noise probe --------------------------------------------------------------------------

def _probe_child(cpu, duration_s, out_file, barrier):
    pin(cpu)
    barrier.wait(60)
    pc = time.perf_counter_ns
    t0 = last = pc()
    end = t0 + int(duration_s * 1e9)
    lost = 0
    maxgap = 0
    while True:
        now = pc()
        gap = now - last
        if gap > 20_000:  # a loop turn is ~0.1 us: anything over 20 us is time taken away
            lost += gap
            maxgap = max(maxgap, gap)
        last = now
        if now >= end:
            break
    with open(out_file, "w") as f:
        json.dump({"lost_pct": 100.0 * lost / (now - t0), "max_gap_us": maxgap / 1e3}, f)


def noise_probe(cpus, duration_s: float = 0.3) -> dict:
    """Both vCPUs spin reading the clock: % of wall time lost per vCPU and the largest gap."""
    with tempfile.TemporaryDirectory(prefix="shmbus-bench-probe-") as d:
        cpus = [c for c in cpus if c is not None] or [None, None]
        barrier = CTX.Barrier(len(cpus))
        files = [os.path.join(d, f"p{i}.json") for i in range(len(cpus))]
        with Children() as ch:
            for c, fn in zip(cpus, files):
                ch.start(_probe_child, c, duration_s, fn, barrier, name="probe")
            try:
                ch.join(60)
            except Exception as e:
                return {"error": repr(e)}
        res = []
        for fn in files:
            with open(fn) as f:
                res.append(json.load(f))
    return {"lost_pct": [round(r["lost_pct"], 2) for r in res],
            "max_gap_us": round(max(r["max_gap_us"] for r in res), 1)}


def fmt_probe(i: int, p: dict) -> str:
    if "error" in p:
        return f"r{i}: probe failed"
    return f"r{i}: {p['lost_pct']} max {p['max_gap_us']:.0f}µs"


# --- load from other processes -------------------------------------------------------------

def _proc_stat():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
    steal = v[7] if len(v) > 7 else 0
    return busy / hz, steal / hz


def _tree_cpu(extra_pids=()):
    """CPU seconds of this process, its reaped children, and ``extra_pids`` (e.g. the supervisor)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for pid in extra_pids:
        if not pid:
            continue
        try:
            import psutil

            ct = psutil.Process(pid).cpu_times()
            total += ct.user + ct.system
        except Exception:
            pass
    return total


class LoadMonitor:
    """How much CPU processes that are not ours used during a round (this machine is shared).

    other = system-wide busy CPU - (this process + its reaped children + the supervisor), in cores.
    Children must be joined (reaped) before ``stop`` for their time to count as ours.
    """

    def __init__(self, extra_pids=()):
        self.extra = list(extra_pids)
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = _proc_stat()
        self.mine0 = _tree_cpu(self.extra)

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        busy, steal = _proc_stat()
        mine = _tree_cpu(self.extra)
        other = max(0.0, (busy - self.busy0) - (mine - self.mine0))
        return {"wall_s": round(wall, 2), "other_cores": round(other / wall, 3) if wall > 0 else None,
                "steal_cores": round((steal - self.steal0) / wall, 3) if wall > 0 else None,
                "loadavg1": float(open("/proc/loadavg").read().split()[0])}


def wait_quiet(extra_pids=(), threshold_cores: float = 0.25, max_wait_s: float = 20.0, sample_s: float = 0.5) -> dict:
    """Wait (at most ``max_wait_s``) until other processes use less than ``threshold_cores``.

    The machines here are shared: a round that starts while someone's test suite
    runs measures that suite. Returns {"waited_s", "other_cores"} (the last sample).
    """
    t0 = time.monotonic()
    while True:
        m = LoadMonitor(extra_pids)
        time.sleep(sample_s)
        other = m.stop()["other_cores"]
        waited = time.monotonic() - t0
        if other is None or other < threshold_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores": other}


class Rounds:
    """What :func:`interleaved_rounds` measured: per-transport results and the noise around them."""

    def __init__(self, keys):
        self.results = {k: [] for k in keys}  # key -> one result (or None: failed) per round
        self.errors: list = []
        self.probes: list = []  # noise_probe() before each round
        self.loads: list = []  # LoadMonitor.stop() of each round
        self.waits: list = []  # wait_quiet() before each round


def interleaved_rounds(transports, rounds: int, trial, *, quick: bool, cpus, max_quiet_wait: float, prefix: str,
                       on_result=None) -> Rounds:
    """Run ``trial(tr, (bus, bus_nosup), workdir, tag)`` for every transport, ``rounds`` times.

    The order rotates by one each round, so no transport always runs first or
    last. Two throw-away buses serve all trials: one with a supervisor, one
    without. Before a round (not in quick runs): wait for other processes to go
    quiet, from a budget of ``max_quiet_wait`` seconds in all; then a noise
    probe; the round's other load is recorded. A trial that raises is recorded
    as an error and its result as None. ``on_result(rnd, tr, res, elapsed_s)``
    is called after each trial (progress lines).
    """
    from shmbus.client import control as client

    out = Rounds(tr[0] for tr in transports)
    quiet_budget = max_quiet_wait
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir, temp_bus() as (bus, _d), \
            temp_bus(autostart=False) as (bus_nosup, _d2):
        warm_kernels(bus)
        sup_pid = client.running_pid(bus.data_dir)
        for rnd in range(rounds):
            if not quick and quiet_budget > 0:
                q = wait_quiet([sup_pid], max_wait_s=min(20.0, quiet_budget))
                quiet_budget -= q["waited_s"]
                out.waits.append(q)
            mon = LoadMonitor([sup_pid])
            out.probes.append(noise_probe(cpus, 0.1 if quick else 0.3))
            k = rnd % len(transports)
            for tr in transports[k:] + transports[:k]:
                try:
                    res = trial(tr, (bus, bus_nosup), workdir, f"r{rnd}")
                except Exception as e:  # noqa: BLE001 - a failed trial is reported, the others still run
                    out.errors.append(f"round {rnd} {tr[0]}: {e}")
                    print(f"ERROR round {rnd} {tr[0]}: {e}", file=sys.stderr)
                    res = None
                out.results[tr[0]].append(res)
                if on_result is not None:
                    on_result(rnd, tr, res, time.monotonic() - t_start)
            out.loads.append(mon.stop())
    return out


def fmt_load(i: int, m: dict) -> str:
    return f"r{i}: {m['other_cores']:.2f}"


# --- statistics and formatting ------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_num(x, unit: str = "") -> str:
    """Significant-figure formatting: 0.123, 1.23, 12.3, 123, 1234, 12k..."""
    if x is None:
        return "–"
    ax = abs(x)
    if ax >= 10000:
        s = f"{x / 1e3:.0f}k"
    elif ax >= 100:
        s = f"{x:.0f}"
    elif ax >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


def fmt_rate(x) -> str:
    """Records per second: 216k, 1.23M."""
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def fmt_ratio(x) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def cell(values, fmt=fmt_num) -> str:
    """'median [min–max]' over rounds (just the value for one round)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return "–"
    if len(vs) == 1:
        return fmt(vs[0])
    return f"{fmt(statistics.median(vs))} [{fmt(min(vs))}–{fmt(max(vs))}]"


def summary(values) -> dict:
    vs = [v for v in values if v is not None]
    if not vs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def per_round_ratio(a: list, b: list, invert: bool = False) -> list:
    """Same-round ratios a/b (or b/a): immune to drift between rounds."""
    out = []
    for x, y in zip(a, b):
        if x is None or y is None or x == 0 or y == 0:
            out.append(None)
        else:
            out.append(y / x if invert else x / y)
    return out
