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
            procs = {b["name"]: b for b in control.request(d, {"cmd": "status"}).get("bridges", [])}
        except Exception:  # noqa: BLE001 (the supervisor stopped meanwhile: no process then)
            procs = {}
    rows = []
    for name in C.list_bridges(d):
        try:
            cfg = C.read_bridge(d, name)
        except Exception:  # noqa: BLE001 (removed meanwhile)
            continue
        st = C.read_json(C.status_path(d, name)) or {}
        pr = procs.get(name, {})
        fresh = bool(st) and time.time() - st.get("updated", 0) < STALE_S
        running = pr.get("pid") is not None and fresh and st.get("pid") == pr.get("pid")
        rows.append({
            "name": name, "direction": cfg.direction, "servers": cfg.servers, "topics_config": list(cfg.topics),
            "rename": cfg.rename, "running": running, "pid": pr.get("pid"), "restarts": pr.get("restarts", 0),
            "last_exit": pr.get("last_exit"), "last_error": st.get("last_error"),
            "last_error_ms": st.get("last_error_ms"), "updated": st.get("updated"),
            "topics": st.get("topics", []) if fresh else [],
        })
    return rows


__all__ = ["bridge_rows"]
