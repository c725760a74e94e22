"""What ``shmbus bridge status`` shows: each bridge's config, its process (from the supervisor)
and the status file its process rewrites every half second."""

from __future__ import annotations

import time

from shmbus.bridge import config as C
from shmbus.core.paths import resolve_data_dir

STALE_S = 5.0  # a status file older than this is not a running bridge's


def bridge_rows(data_dir) -> list[dict]:
    from shmbus.client import control

    d = resolve_data_dir(data_dir)
    procs = {}
    if control.running_pid(d) is not None:
        try:
            procs = {(b["name"], b.get("worker", 0)): b
                     for b in control.request(d, {"cmd": "status"}).get("bridges", [])}
        except Exception:  # noqa: BLE001 (the supervisor stopped meanwhile: no process then)
            procs = {}
    rows = []
    for name in C.list_bridges(d):
        try:
            cfg = C.read_bridge(d, name)
        except Exception:  # noqa: BLE001 (removed meanwhile)
            continue
        workers = []
        topics: dict = {}
        last_error = last_error_ms = None
        for w in range(cfg.workers):
            st = C.read_json(C.status_path(d, name, w)) or {}
            pr = procs.get((name, w), {})
            fresh = bool(st) and time.time() - st.get("updated", 0) < STALE_S
            running = pr.get("pid") is not None and fresh and st.get("pid") == pr.get("pid")
            workers.append({"worker": w, "running": running, "pid": pr.get("pid"), "restarts": pr.get("restarts", 0),
                            "last_exit": pr.get("last_exit"), "updated": st.get("updated"),
                            "copier": st.get("copier") if fresh else None})
            if st.get("last_error_ms") and (last_error_ms is None or st["last_error_ms"] > last_error_ms):
                last_error, last_error_ms = st.get("last_error"), st["last_error_ms"]
            for t in st.get("topics", []) if fresh else []:
                key = (t["direction"], t["topic"])
                if key not in topics:
                    topics[key] = dict(t)
                    continue
                m = topics[key]
                for f in ("partitions", "lag_records", "rate", "copied", "skipped", "duplicates", "in_flight"):
                    m[f] += t[f]
                m["lag_ms"] = max(m["lag_ms"], t["lag_ms"])
        rows.append({
            "name": name, "direction": cfg.direction, "servers": cfg.servers, "topics_config": list(cfg.topics),
            "rename": cfg.rename, "running": all(w["running"] for w in workers), "pid": workers[0]["pid"],
            "restarts": sum(w["restarts"] for w in workers), "last_exit": workers[0]["last_exit"],
            "workers": workers, "last_error": last_error, "last_error_ms": last_error_ms,
            "topics": sorted(topics.values(), key=lambda t: (t["topic"], t["direction"])),
        })
    return rows


__all__ = ["bridge_rows"]
