"""``shmbus stats``: a live view of a bus, as AeronStat gives of a media driver.

A snapshot reads, per partition, the ring's header words (log end offset,
claimed and released bytes: ring fill), the partition's files (disk use), and
the supervisor's status (spill lag, its CPU and memory, its Kafka listener's
counters); per group, the committed offsets (lag). Rates are differences
between two snapshots divided by the time between them: produce rate from
the log end offset, consume rate from a group's committed offsets, the Kafka
listener's requests, produced and fetched records and bytes per second from
its counters.
"""

from __future__ import annotations

import os
import time

from shmbus.core import paths as _paths


def _disk_bytes(pdir: str) -> int:
    total = 0
    try:
        with os.scandir(pdir) as it:
            for e in it:
                try:
                    total += e.stat().st_size
                except OSError:
                    pass
    except OSError:
        pass
    return total


def snapshot(bus) -> dict:
    """Everything stats shows, at one moment (no rates: see :func:`with_rates`)."""
    from shmbus.client import control as client

    now = time.monotonic()
    sup = None
    try:
        sup = client.request(bus.data_dir, {"cmd": "status"}, timeout=5)
    except Exception:  # noqa: BLE001 (not running, or busy: shown as not running)
        sup = None
    spill = {}
    if sup and sup.get("ok", True):
        for p in sup.get("partitions", []):
            spill[(p["topic"], p["partition"])] = p
    parts = []
    for name in bus.list_topics():
        try:
            meta = bus.topic_meta(name)
        except Exception:  # noqa: BLE001 (deleted meanwhile)
            continue
        for p in range(meta.partitions):
            ring = bus.ring(meta, p)
            claim = ring.claim_position()
            s = spill.get((name, p), {})
            parts.append({
                "topic": name, "partition": p, "end_offset": ring.next_offset(),
                "ring_bytes": ring.ring_bytes, "ring_used": max(claim - ring.released(), 0),
                "spill_lag_bytes": s.get("spill_lag_bytes"),
                "spill_error": s.get("spill_error"),
                "disk_bytes": _disk_bytes(_paths.partition_dir(bus.data_dir, name, p)),
            })
    groups = []
    try:
        names = bus.list_groups()
    except Exception:  # noqa: BLE001 (groups unavailable: none shown)
        names = []
    for g in names:
        try:
            d = bus.describe_group(g)
        except Exception:  # noqa: BLE001
            continue
        committed = sum(v.committed for v in d.offsets.values() if v.committed is not None)
        lag = sum(v.lag for v in d.offsets.values() if v.lag is not None)
        groups.append({"group": g, "state": d.state, "members": len(d.members), "committed_total": committed,
                       "lag": lag})
    kafka = None
    if sup and sup.get("kafka_listener"):
        k = sup["kafka_listener"]
        kafka = {key: k.get(key) for key in ("address", "sasl", "connections", "max_connections",
                                              "connections_total", "refused", *KAFKA_RATE_KEYS)}
    supervisor = None
    if sup:
        supervisor = {"pid": sup.get("pid"), "cpu_percent": sup.get("cpu_percent"), "rss_bytes": sup.get("rss_bytes"),
                      "uptime_s": sup.get("uptime_s"), "spill_error": sup.get("spill_error"),
                      "problems": sup.get("problems", [])}
    return {"t": now, "partitions": parts, "groups": groups, "supervisor": supervisor, "kafka_listener": kafka}


#: The Kafka listener's counters that stats shows as rates (``<key>_per_s``).
KAFKA_RATE_KEYS = ("requests", "produced_records", "produced_bytes", "fetched_records", "fetched_bytes")


def with_rates(prev: dict | None, cur: dict) -> dict:
    """``cur`` with produce rates per partition and consume rates per group (records/s) (pure)."""
    dt = cur["t"] - prev["t"] if prev else 0.0
    before = {(p["topic"], p["partition"]): p for p in prev["partitions"]} if prev else {}
    gbefore = {g["group"]: g for g in prev["groups"]} if prev else {}
    for p in cur["partitions"]:
        b = before.get((p["topic"], p["partition"]))
        p["produce_rate"] = (p["end_offset"] - b["end_offset"]) / dt if b and dt > 0 else None
    for g in cur["groups"]:
        b = gbefore.get(g["group"])
        g["consume_rate"] = (g["committed_total"] - b["committed_total"]) / dt if b and dt > 0 else None
    k, kb = cur.get("kafka_listener"), (prev or {}).get("kafka_listener")
    if k is not None:
        same = kb is not None and kb["address"] == k["address"] and dt > 0
        for key in KAFKA_RATE_KEYS:
            k[f"{key}_per_s"] = max(k[key] - kb[key], 0) / dt if same else None
    return cur


def kafka_line(k: dict, rates: dict) -> str:
    """One line on the Kafka listener: where, SASL, connections, and the rates in ``rates`` (``<key>_per_s``)."""
    def rate(key, unit=""):
        return _n(rates.get(f"{key}_per_s"), unit)

    conns = f"connections={k['connections']}"
    if k.get("max_connections"):
        conns += f"/{k['max_connections']}"
    if k.get("refused"):
        conns += f" (refused {k['refused']})"
    return (f"kafka listener {k['address']}  SASL/PLAIN={'on' if k['sasl'] else 'off'}  {conns}  "
            f"requests/s={rate('requests')}  "
            f"produce={rate('produced_records')} rec/s {_rate_bytes(rates.get('produced_bytes_per_s'))}  "
            f"fetch={rate('fetched_records')} rec/s {_rate_bytes(rates.get('fetched_bytes_per_s'))}"
            + (f"  (rates over the last {rates['window_s']:.0f} s)" if rates.get("window_s") else ""))


def _rate_bytes(x) -> str:
    return "-" if x is None else f"{_b(int(x))}/s"


def _n(x, unit="") -> str:
    if x is None:
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suf}{unit}"
    return f"{x:.0f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def _b(x) -> str:
    if x is None:
        return "-"
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= div:
            return f"{x / div:.1f} {suf}"
    return f"{x} B"


def render(snap: dict, data_dir: str) -> str:
    lines = [f"shmbus stats  data_dir={data_dir}  {time.strftime('%H:%M:%S')}"]
    s = snap["supervisor"]
    if s:
        cpu = "-" if s["cpu_percent"] is None else f"{s['cpu_percent']:.1f}%"
        lines.append(f"supervisor pid={s['pid']} cpu={cpu} rss={_b(s['rss_bytes'])} uptime={s['uptime_s']:.0f}s")
        if s.get("spill_error"):
            lines.append(f"WARNING: {s['spill_error']}")
        lines.extend(f"PROBLEM: {p}" for p in s.get("problems", []))
    else:
        lines.append("supervisor: NOT RUNNING (nothing is spilled; `shmbus serve`)")
    if snap.get("kafka_listener"):
        lines.append(kafka_line(snap["kafka_listener"], snap["kafka_listener"]))
    lines.append("")
    head = ("topic", "part", "end offset", "produce/s", "ring fill", "spill lag", "disk")
    rows = [head]
    for p in snap["partitions"]:
        fill = f"{100.0 * p['ring_used'] / p['ring_bytes']:.0f}% of {_b(p['ring_bytes'])}"
        rows.append((p["topic"], str(p["partition"]), str(p["end_offset"]), _n(p.get("produce_rate")), fill,
                     _b(p["spill_lag_bytes"]), _b(p["disk_bytes"])))
    if len(rows) == 1:
        lines.append("no topics")
    else:
        lines.extend(_table(rows))
    if snap["groups"]:
        lines.append("")
        rows = [("group", "state", "members", "consume/s", "lag")]
        for g in snap["groups"]:
            rows.append((g["group"], g["state"], str(g["members"]), _n(g.get("consume_rate")), str(g["lag"])))
        lines.extend(_table(rows))
    return "\n".join(lines)


def _table(rows) -> list[str]:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]


__all__ = ["kafka_line", "render", "snapshot", "with_rates"]
