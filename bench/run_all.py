"""Run every benchmark in bench/ (each in its own process, with a time limit) and print their tables.

    python bench/run_all.py            # full: ~8-10 min on a 2-vCPU machine
    python bench/run_all.py --quick    # smoke run, ~1 min
    python bench/run_all.py --only latency,throughput

Each script writes its JSON to bench/results/<name>.json (<name>.quick.json with
--quick); the tables printed here are also written to bench/results/all.md
(all.quick.md). Exit status: 0 if every script exited 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["import_time", "idle_cpu", "latency", "throughput", "disk", "groups", "kafka"]
TIMEOUT_S = {"quick": 150, "full": 420}  # per script; each is designed to stay under ~3 min in full mode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(SCRIPTS))
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else SCRIPTS
    for n in names:
        if n not in SCRIPTS:
            ap.error(f"unknown benchmark {n!r} (one of {', '.join(SCRIPTS)})")
    extra = (["--quick"] if args.quick else []) + (["--no-pin"] if args.no_pin else [])
    limit = TIMEOUT_S["quick" if args.quick else "full"]
    outputs, status = [], {}
    for name in names:
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *extra]
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        t = time.monotonic()
        # a new session, so that on a timeout the whole group (script + its children) can be killed
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=limit)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, 15)  # SIGTERM: the script cleans up in its finally blocks
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                out, _ = p.communicate()
            rc = f"timeout after {limit} s"
        status[name] = rc
        print(out, flush=True)
        print(f"== {name}: exit {rc} in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        outputs.append(f"## {name}\n\nCommand: `{sys.executable} "
                       f"bench/{name}.py {' '.join(extra)}`\n{out}\n")
    md = os.path.join(HERE, "results", "all.quick.md" if args.quick else "all.md")
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "w") as f:
        f.write("\n".join(outputs))
    print("\nexit status: " + ", ".join(f"{k} {v}" for k, v in status.items()))
    print(f"tables: {os.path.relpath(md, os.getcwd())}")
    return 0 if all(v == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
