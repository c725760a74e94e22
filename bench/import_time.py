"""Start-up cost: ``import shmbus`` + ``Bus(d, autostart=False)`` + a producer + the first ``send``.

Each measurement runs in a fresh interpreter (``python -c``), with a warm numba
cache: one discarded run first compiles/caches the kernels if needed. Two kinds
of fresh process, alternated, ``--runs`` of each (median and [min–max]):

* **total** (the target, ≤ 0.5 s): the clock starts just before ``import shmbus``
  and stops after the first ``send`` returns; nothing imported beforehand;
* **breakdown**: the same steps with ``import numpy`` and ``import numba`` done
  first and timed on their own, so the shmbus share is visible;

plus the wall time of the whole process (interpreter start to exit) and, for
reference, a consumer + its first ``poll(timeout_ms=0)`` after the send (not in
the total). One extra run with ``python -X importtime`` lists the slowest imports.

    python bench/import_time.py            # full: 7 runs of each
    python bench/import_time.py --quick    # 2 runs of each
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "import_time"
TARGET_S = 0.5
CHILD_TIMEOUT_S = 120  # the warm-up run may compile every kernel on a cold cache

_TOTAL = r"""
import json, sys, time
pc = time.perf_counter
t0 = pc()
import shmbus
from shmbus import Bus
t1 = pc()
bus = Bus(sys.argv[1], autostart=False)
t2 = pc()
prod = bus.producer()
t3 = pc()
prod.send("t", b"x" * 100)
t4 = pc()
numba_at_send = "numba" in sys.modules
cons = bus.consumer("t", auto_offset_reset="earliest")  # the default consumer
assert cons.poll(timeout_ms=1000)
t5 = pc()
cons.close(); prod.close(); bus.close()
print(json.dumps({"import_shmbus": t1 - t0, "bus": t2 - t1, "producer": t3 - t2, "first_send": t4 - t3,
                  "total": t4 - t0, "consumer_first_poll": t5 - t4,
                  "numba_loaded": "numba" in sys.modules, "numba_at_send": numba_at_send}))
"""

_BREAKDOWN = r"""
import json, sys, time
pc = time.perf_counter
t0 = pc()
import numpy
t1 = pc()
import numba
t2 = pc()
import shmbus
from shmbus import Bus
t3 = pc()
bus = Bus(sys.argv[1], autostart=False)
t4 = pc()
prod = bus.producer()
t5 = pc()
prod.send("t", b"x" * 100)
t6 = pc()
prod.close(); bus.close()
print(json.dumps({"import_numpy": t1 - t0, "import_numba": t2 - t1, "import_shmbus_rest": t3 - t2,
                  "bus": t4 - t3, "producer": t5 - t4, "first_send": t6 - t5, "total": t6 - t0}))
"""


def _env():
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = C.ROOT + (os.pathsep + pp if pp else "")
    return env


def run_child(code: str, data_dir: str, extra_args=()) -> tuple:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *extra_args, "-c", code, data_dir], capture_output=True, text=True,
                       timeout=CHILD_TIMEOUT_S, env=_env(), cwd=tempfile.gettempdir(), check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"child failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall, p.stderr


def top_imports(stderr: str, k: int = 12) -> list:
    """(cumulative µs, module) of the slowest imports from ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        try:
            _self, cum, name = line[len("import time:"):].split("|")
            rows.append((int(cum), name.rstrip()))
        except ValueError:
            continue
    # keep top-level-ish entries: the largest cumulative times, skipping children of a listed parent
    rows.sort(reverse=True)
    out = []
    for cum, name in rows:
        if len(out) >= k:
            break
        out.append((cum, name))
    return out


def main(argv=None) -> int:
    C.install_sigterm_handler()
    ap = C.arg_parser(NAME, __doc__)
    ap.add_argument("--runs", type=int, default=None, help="fresh processes of each kind (default 7, quick 2)")
    args = ap.parse_args(argv)
    runs = args.runs or args.rounds or (2 if args.quick else 7)
    env = C.environment()
    totals, breakdowns, errors = [], [], []
    importtime = []
    with C.temp_bus(autostart=False) as (bus, d):
        bus.create_topic("t", partitions=1)
        t = time.perf_counter()
        try:
            warm, _w, _e = run_child(_TOTAL, d)  # warm the numba cache; discarded
            warm_s = time.perf_counter() - t
        except Exception as e:
            errors.append(f"warm-up run: {e}")
            warm, warm_s = None, None
        if not errors:
            for i in range(runs):
                for kind, code, sink in (("total", _TOTAL, totals), ("breakdown", _BREAKDOWN, breakdowns)):
                    try:
                        res, wall, _err = run_child(code, d)
                        res["process_wall"] = wall
                        sink.append(res)
                    except Exception as e:
                        errors.append(f"run {i} {kind}: {e}")
                        print(f"ERROR run {i} {kind}: {e}", file=sys.stderr)
            try:
                _res, _wall, err = run_child(_TOTAL, d, ["-X", "importtime"])
                importtime = top_imports(err)
            except Exception as e:
                errors.append(f"importtime run: {e}")

    def col(rows, key):
        return [r[key] * 1e3 for r in rows if key in r]

    header = ["step", "ms (median [min–max])"]
    rows = [
        ["**import shmbus + Bus + producer + first send (total)**", C.cell(col(totals, "total"))],
        ["  import shmbus (incl. numpy)", C.cell(col(totals, "import_shmbus"))],
        ["  Bus(data_dir, autostart=False)", C.cell(col(totals, "bus"))],
        ["  bus.producer()", C.cell(col(totals, "producer"))],
        ["  first send()", C.cell(col(totals, "first_send"))],
        ["breakdown run: import numpy alone", C.cell(col(breakdowns, "import_numpy"))],
        ["breakdown run: import numba alone (after numpy)", C.cell(col(breakdowns, "import_numba"))],
        ["breakdown run: import shmbus, rest (after numba)", C.cell(col(breakdowns, "import_shmbus_rest"))],
        ["breakdown run: Bus + producer + first send", C.cell([(r["bus"] + r["producer"] + r["first_send"]) * 1e3
                                                               for r in breakdowns])],
        ["whole process wall (interpreter start → exit), total run", C.cell(col(totals, "process_wall"))],
        ["(not in total) then a consumer (defaults) + its first poll", C.cell(col(totals, "consumer_first_poll"))],
    ]
    table = C.markdown_table(header, rows)
    med_total = C.median([r["total"] for r in totals])
    print()
    print(f"### Start-up: import + Bus + producer + first send, fresh process, warm numba cache "
          f"({runs} run(s) of each kind)")
    print()
    print(table)
    print()
    if med_total is not None:
        verdict = "meets" if med_total <= TARGET_S else "MISSES"
        print(f"Median total {med_total * 1e3:.0f} ms: {verdict} the target of ≤ {TARGET_S * 1e3:.0f} ms. "
              f"Warm-up run (discarded) took {warm_s:.1f} s." if warm_s is not None else "")
    at_send = {r.get("numba_at_send") for r in totals}
    at_poll = {r.get("numba_loaded") for r in totals}
    print(f"numba imported by the time the first send returned: {', '.join(sorted(map(str, at_send)))}; "
          f"after the consumer's first poll: {', '.join(sorted(map(str, at_poll)))} "
          f"(True: the compiled verbs are not built, or SHMBUS_NATIVE=0)")
    if importtime:
        print("\nSlowest imports (`python -X importtime`, cumulative µs, one run): " +
              ", ".join(f"{name.strip()} {cum / 1e3:.0f} ms" for cum, name in importtime[:8]))
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    out = C.out_path(NAME, args)
    C.write_json(out, {"benchmark": NAME, "env": env, "quick": args.quick, "runs": runs, "target_s": TARGET_S,
                       "summary": {"total_s": C.summary([r["total"] for r in totals]),
                                   **{k: C.summary([r[k] for r in totals]) for k in
                                      ("import_shmbus", "bus", "producer", "first_send", "process_wall",
                                       "consumer_first_poll")},
                                   **{f"breakdown_{k}": C.summary([r[k] for r in breakdowns]) for k in
                                      ("import_numpy", "import_numba", "import_shmbus_rest", "bus", "producer",
                                       "first_send", "total")}},
                       "warmup_run": warm, "warmup_s": warm_s, "totals": totals, "breakdowns": breakdowns,
                       "slowest_imports_us": importtime, "errors": errors, "table_markdown": table})
    print(f"\nJSON: {os.path.relpath(out, os.getcwd())}")
    return 1 if errors or not totals else 0


if __name__ == "__main__":
    sys.exit(main())
