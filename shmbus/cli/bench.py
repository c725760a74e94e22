"""``shmbus bench``: one-way latency and throughput between two processes, on a real bus.

Latency: this process sends paced records (one every ``--period-us``), each
carrying its send time (``perf_counter_ns``, CLOCK_MONOTONIC: the same clock
in every process); a consumer process stamps each on receipt. Percentiles
come from an HDR histogram (the ``hdrhistogram`` package: 3 significant
digits from 1 ns to an hour), and ``--histogram FILE.svg`` (or ``.png`` with
matplotlib installed) draws latency by percentile, HDR-style.

Throughput: ``send`` one record at a time, and ``send_batch`` of 1,000; a
consumer process reads with ``poll`` / ``poll_batch`` and times from its
first record to the last.

For comparisons with other transports in one run see ``bench/`` in the
source tree; this command is the quick look at a machine.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time

import click
import numpy as np

PCTS = (50.0, 90.0, 99.0, 99.9, 99.99)
LAT_TOPIC = "shmbus-bench-latency"
TPUT_TOPIC = "shmbus-bench-throughput"


def _fresh_topic(bus, name: str, ring_bytes: int = 1 << 24) -> None:
    from shmbus.errors import UnknownTopicError

    try:
        bus.delete_topic(name)
    except UnknownTopicError:
        pass
    bus.create_topic(name, partitions=1, config={"ring.bytes": ring_bytes})


def _latency_consumer(data_dir, topic, n, ready, out_q):
    from shmbus.client.bus import Bus

    lat = np.empty(n, np.int64)
    got = 0
    with Bus(data_dir) as bus, bus.consumer(topic, auto_offset_reset="earliest") as c:
        c.poll(timeout_ms=0)  # positioned, kernels loaded
        ready.set()
        t_end = time.monotonic() + 60 + n * 1e-4
        pc = time.perf_counter_ns
        while got < n and time.monotonic() < t_end:
            for recs in c.poll(timeout_ms=100).values():
                now = pc()
                for r in recs:
                    ts = int.from_bytes(r.value[:8], "little")
                    if ts:  # 0: the warm-up record
                        lat[got] = now - ts
                        got += 1
    out_q.put(lat[:got])


def latency(data_dir, n: int, size: int, period_us: float = 20.0, progress: bool = False) -> np.ndarray:
    """One-way latencies (ns) of ``n`` paced records: producer here, consumer in a spawned process."""
    from shmbus.client.bus import Bus

    with Bus(data_dir) as bus:
        _fresh_topic(bus, LAT_TOPIC)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ready = ctx.Event()
        proc = ctx.Process(target=_latency_consumer, args=(bus.data_dir, LAT_TOPIC, n, ready, q), daemon=True)
        proc.start()
        try:
            if not ready.wait(120):
                raise click.ClickException("the consumer process did not start within 120 s")
            pad = b"x" * max(size - 8, 0)
            period = int(period_us * 1000)
            with bus.producer() as prod:
                send = prod.send
                send(LAT_TOPIC, b"\0" * 8 + pad)  # warm-up: its stamp 0 tells the consumer not to count it
                pc = time.perf_counter_ns
                yld = os.sched_yield

                def run(items):
                    nxt = pc() + 1_000_000
                    for _ in items:  # n paced records after the warm-up one
                        while pc() < nxt:
                            yld()
                        send(LAT_TOPIC, pc().to_bytes(8, "little") + pad)
                        nxt += period

                if progress:
                    with click.progressbar(range(n), label=f"latency: {n:,} x {size} B, one every {period_us:g} us",
                                           file=click.get_text_stream("stderr")) as bar:
                        run(bar)
                else:
                    run(range(n))
            lat = q.get(timeout=120)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        bus.delete_topic(LAT_TOPIC)
    return lat


def _tput_consumer(data_dir, topic, n, batch, ready, out_q):
    from shmbus.client.bus import Bus

    got = 0
    t0 = None
    with Bus(data_dir) as bus, bus.consumer(topic, auto_offset_reset="earliest") as c:
        c.poll(timeout_ms=0)
        c.poll_batch(timeout_ms=0)
        ready.set()
        t_end = time.monotonic() + 120
        while got < n and time.monotonic() < t_end:
            res = c.poll_batch(timeout_ms=100, max_records=65536) if batch else c.poll(timeout_ms=100)
            for recs in res.values():
                if t0 is None:
                    t0 = time.perf_counter()
                got += len(recs)
        t1 = time.perf_counter()
    out_q.put((got, (t1 - t0) if t0 else 0.0))


def throughput(data_dir, n: int, size: int, batch: bool, progress: bool = False) -> tuple[int, float]:
    """(records received, seconds from the first to the last) for ``n`` records of ``size`` bytes."""
    from shmbus.client.bus import Bus

    with Bus(data_dir) as bus:
        _fresh_topic(bus, TPUT_TOPIC, ring_bytes=1 << 26)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ready = ctx.Event()
        proc = ctx.Process(target=_tput_consumer, args=(bus.data_dir, TPUT_TOPIC, n, batch, ready, q), daemon=True)
        proc.start()
        try:
            if not ready.wait(120):
                raise click.ClickException("the consumer process did not start within 120 s")
            value = b"x" * size
            with bus.producer() as prod:
                label = f"throughput ({'send_batch/poll_batch' if batch else 'send/poll'}): {n:,} x {size} B"
                chunks = range(0, n, 1000)
                it = click.progressbar(chunks, label=label, file=click.get_text_stream("stderr")) if progress else None
                with (it if it is not None else _null()) as bar:
                    for start in (bar if bar is not None else chunks):
                        k = min(1000, n - start)
                        if batch:
                            prod.send_batch(TPUT_TOPIC, [value] * k)
                        else:
                            send = prod.send
                            for _ in range(k):
                                send(TPUT_TOPIC, value)
            got, secs = q.get(timeout=180)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        bus.delete_topic(TPUT_TOPIC)
    return got, secs


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def histogram(lat_ns: np.ndarray):
    """An HdrHistogram of the latencies (ns), 3 significant digits."""
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram(1, 3_600 * 10**9, 3)
    vals, counts = np.unique(np.clip(lat_ns, 1, 3_600 * 10**9), return_counts=True)
    for v, c in zip(vals.tolist(), counts.tolist()):
        h.record_value(v, c)
    return h


def percentiles(h) -> dict:
    """{label: microseconds} for p50 ... p99.99 and max."""
    out = {f"p{p:g}": h.get_value_at_percentile(p) / 1000.0 for p in PCTS}
    out["max"] = h.get_max_value() / 1000.0
    return out


def spectrum(h, points: int = 200) -> list[tuple[float, float]]:
    """(percentile, microseconds) along HDR's log axis 1 / (1 - p), up to the max."""
    out = []
    total = h.get_total_count()
    top = 1.0 - 1.0 / max(total, 2)
    for i in range(points + 1):
        p = 1.0 - 10 ** (-math.log10(1.0 / (1.0 - top)) * i / points)
        out.append((100.0 * p, h.get_value_at_percentile(100.0 * p) / 1000.0))
    out.append((100.0, h.get_max_value() / 1000.0))
    return out


def write_picture(h, path: str, title: str) -> None:
    """Latency by percentile, HDR-style: SVG by hand, PNG through matplotlib."""
    pts = spectrum(h)
    if path.lower().endswith(".png"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise click.ClickException(f"a PNG needs matplotlib (pip install matplotlib), or write .svg: "
                                       f"path={path}") from None
        xs = [1.0 / max(1.0 - p / 100.0, 1e-9) for p, _ in pts]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(xs, [v for _, v in pts])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [1, 10, 100, 1000, 10000, 100000]
        ax.set_xticks([t for t in ticks if t <= xs[-1] * 1.01], [_pct_label(t) for t in ticks if t <= xs[-1] * 1.01])
        ax.set_xlabel("percentile")
        ax.set_ylabel("one-way latency (us)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    if not path.lower().endswith(".svg"):
        raise click.ClickException(f"the histogram picture must be .svg or .png: path={path}")
    with open(path, "w") as f:
        f.write(svg(pts, title))


def _pct_label(x: float) -> str:
    p = 100.0 * (1.0 - 1.0 / x)
    return f"{p:g}%"


def svg(pts, title: str, w: int = 800, hgt: int = 450) -> str:
    """An SVG line chart of (percentile, us) on log-log axes (x: 1 / (1 - p))."""
    ml, mr, mt, mb = 70, 20, 40, 50
    xs = [math.log10(1.0 / max(1.0 - p / 100.0, 1e-9)) for p, _ in pts]
    ys = [math.log10(max(v, 1e-3)) for _, v in pts]
    x_hi = max(xs[-1], 1.0)
    y_lo, y_hi = math.floor(min(ys)), math.ceil(max(ys))
    if y_hi == y_lo:
        y_hi += 1

    def X(x):
        return ml + (w - ml - mr) * x / x_hi

    def Y(y):
        return hgt - mb - (hgt - mt - mb) * (y - y_lo) / (y_hi - y_lo)

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" '
              f'font-size="12"><rect width="100%" height="100%" fill="white"/>'),
             f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{_esc(title)}</text>']
    for k in range(int(x_hi) + 1):
        x = X(k)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{hgt - mb}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{hgt - mb + 16}" text-anchor="middle">{_pct_label(10 ** k)}</text>')
    for k in range(y_lo, y_hi + 1):
        y = Y(k)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0 ** k:g} us</text>')
    line = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, ys))
    parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line}"/>')
    parts.append(f'<text x="{w / 2}" y="{hgt - 12}" text-anchor="middle">percentile</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def run(data_dir, n: int, size: int, tput_records: int, picture: str | None, as_json: bool) -> dict:
    """The whole ``shmbus bench``: latency, then throughput of send and of send_batch."""
    if size < 8:
        raise click.BadParameter("must be >= 8 (the send time rides in the value)", param_hint="--size")
    if picture and not picture.lower().endswith((".svg", ".png")):
        raise click.BadParameter(f"must end in .svg or .png: {picture}", param_hint="--histogram")
    lat = latency(data_dir, n, size, progress=not as_json)
    h = histogram(lat)
    res = {"records": int(h.get_total_count()), "size": size, "latency_us": percentiles(h)}
    if picture:
        write_picture(h, picture, f"shmbus one-way latency, {size} B, {h.get_total_count():,} records")
        res["picture"] = picture
    for key, batch in (("send_poll", False), ("send_batch_poll_batch", True)):
        got, secs = throughput(data_dir, tput_records, size, batch, progress=not as_json)
        res[key] = {"records": got, "seconds": round(secs, 4), "records_per_s": round(got / secs) if secs > 0 else None}
    return res


def render(res: dict) -> str:
    lat = res["latency_us"]
    lines = [f"one-way latency, {res['records']:,} records of {res['size']} B (HDR histogram, 3 digits):",
             "  " + "  ".join(f"{k} {v:,.2f} us" for k, v in lat.items())]
    for key, label in (("send_poll", "send -> poll"), ("send_batch_poll_batch", "send_batch -> poll_batch")):
        r = res[key]
        rate = f"{r['records_per_s']:,} records/s" if r["records_per_s"] else "-"
        lines.append(f"throughput {label}: {rate} ({r['records']:,} records in {r['seconds']:.3f} s)")
    if res.get("picture"):
        lines.append(f"latency by percentile written to {res['picture']}")
    return "\n".join(lines)


__all__ = ["histogram", "latency", "percentiles", "render", "run", "svg", "throughput"]
