"""The ``shmbus`` command line (click).

User errors (unknown topic, bad name, bad config value, ...) print one line
to stderr and exit 1, never a traceback; click's own usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from shmbus.errors import ShmbusError

DATA_DIR_HELP = "Data directory (default: $SHMBUS_DATA_DIR, else $XDG_DATA_HOME/shmbus or ~/.local/share/shmbus)."


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)(f)


def fail(msg: str) -> None:
    click.echo(f"shmbus: {msg}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns ShmbusError (and bad values) into one line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ShmbusError as e:
            fail(str(e))
        except (TypeError, ValueError) as e:
            if isinstance(e, click.ClickException):
                raise
            fail(str(e))
        except BrokenPipeError:
            # `shmbus consume ... | head`: the reader went away
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            sys.exit(0)
        except KeyboardInterrupt:
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shmbus")
def cli():
    """shmbus: a Kafka-shaped message bus for one machine.

    \b
    Example:
      shmbus topics create prices --partitions 4
      echo 'AAPL:189.5' | shmbus produce prices --key-separator :
      shmbus consume prices --from-beginning --max-messages 1
    """


def _bus(data_dir, autostart=False):
    from shmbus.client.bus import Bus

    return Bus(data_dir, autostart=autostart)


# --- supervisor ---
@cli.command()
@data_dir_option
@click.option("--foreground", is_flag=True, help="Run in this terminal instead of in the background.")
@click.option("--kafka-listener", metavar="HOST:PORT", default=None,
              help="Serve the Kafka protocol there (loopback only unless --kafka-listener-allow-remote); "
                   "default: $SHMBUS_KAFKA_LISTENER, else off.")
@click.option("--kafka-listener-allow-remote", is_flag=True,
              help="Allow a non-loopback listener address (whoever reaches it can read and write the bus).")
@click.option("--kafka-sasl-users", metavar="FILE", default=None,
              help="Require SASL/PLAIN: one user:password per line; the file must be mode 0600 and yours.")
@click.option("--metrics", metavar="HOST:PORT", default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (loopback only unless "
                   "--metrics-allow-remote); default: $SHMBUS_METRICS, else off.")
@click.option("--metrics-allow-remote", is_flag=True,
              help="Allow a non-loopback metrics address (the figures name every topic and group).")
def serve(data_dir, foreground, kafka_listener, kafka_listener_allow_remote, kafka_sasl_users, metrics,
          metrics_allow_remote):
    """Run the supervisor (spills rings to disk, coordinates groups, serves Kafka clients if asked).

    \b
    Example:
      shmbus serve                  # in the background, returns when ready
      shmbus serve --foreground     # until Ctrl-C or `shmbus stop`
      shmbus serve --kafka-listener 127.0.0.1:9092   # Kafka clients: bootstrap.servers=127.0.0.1:9092
      shmbus serve --metrics 127.0.0.1:9464          # Prometheus: scrape http://127.0.0.1:9464/metrics
    """
    from shmbus.core.paths import resolve_data_dir
    from shmbus.client import control as client
    from shmbus.kafka.settings import ENV_LISTENER, listener_settings
    from shmbus.supervisor.daemon import serve as run
    from shmbus.supervisor.metrics import ENV_METRICS, metrics_settings

    d = resolve_data_dir(data_dir)
    if client.running_pid(d) is not None:
        fail(f"a supervisor is already running: pid={client.running_pid(d)} data_dir={d}")
    address = kafka_listener or os.environ.get(ENV_LISTENER) or None
    kafka = None
    args = []
    if address:
        kafka = listener_settings(address, kafka_listener_allow_remote, kafka_sasl_users)  # (a user error: exit 1)
        args = ["--kafka-listener", address]
        if kafka_listener_allow_remote:
            args.append("--kafka-listener-allow-remote")
        if kafka_sasl_users:
            args += ["--kafka-sasl-users", os.path.abspath(kafka_sasl_users)]
    elif kafka_listener_allow_remote or kafka_sasl_users:
        fail("--kafka-listener-allow-remote and --kafka-sasl-users need --kafka-listener HOST:PORT")
    metrics_address = metrics or os.environ.get(ENV_METRICS) or None
    msettings = None
    if metrics_address:
        msettings = metrics_settings(metrics_address, metrics_allow_remote)  # (a user error: exit 1)
        args += ["--metrics", metrics_address] + (["--metrics-allow-remote"] if metrics_allow_remote else [])
    elif metrics_allow_remote:
        fail("--metrics-allow-remote needs --metrics HOST:PORT")
    if foreground:
        sys.exit(run(d, kafka, msettings))
    pid = client.start(d, args=tuple(args))
    click.echo(f"supervisor running: pid={pid} data_dir={d}" + (f" kafka_listener={address}" if address else "")
               + (f" metrics={metrics_address}" if metrics_address else ""))


@cli.command()
@data_dir_option
@click.option("--keep-rings", is_flag=True,
              help="Leave the rings in /dev/shm (a quicker restart; they take RAM until `shmbus doctor`).")
def stop(data_dir, keep_rings):
    """Stop the supervisor (it spills what is published first).

    Then the bus's rings are removed from /dev/shm (RAM), once everything in
    them is on disk and no other process maps them; the next start makes them
    anew. A process that still has the bus open keeps them.

    \b
    Example:
      shmbus stop
      shmbus stop --keep-rings   # for a quick restart
    """
    from shmbus.core.paths import resolve_data_dir
    from shmbus.client import control as client

    d = resolve_data_dir(data_dir)
    if not client.stop(d, keep_rings=keep_rings):
        fail(f"no supervisor is running: data_dir={d}")
    click.echo(f"supervisor stopped: data_dir={d}")


@cli.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir, as_json):
    """Is the supervisor running, and how are the rings and the Kafka listener?

    \b
    Example:
      shmbus status --json
    """
    from shmbus.core.paths import resolve_data_dir
    from shmbus.client import control as client

    d = resolve_data_dir(data_dir)
    if client.running_pid(d) is None:
        if as_json:
            click.echo(json.dumps({"running": False, "data_dir": d}))
        else:
            click.echo(f"supervisor: not running  data_dir={d}")
        sys.exit(1)
    st = client.request(d, {"cmd": "status"})
    st["running"] = True
    st.pop("ok", None)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    rss = f"{st['rss_bytes'] / 2**20:.1f} MiB" if st.get("rss_bytes") is not None else "?"
    click.echo(f"supervisor: running  pid={st['pid']}  uptime={st['uptime_s']:.0f}s  rss={rss}  data_dir={d}")
    if st.get("spill_error"):
        click.echo(f"WARNING: {st['spill_error']} (partitions failing: {st.get('failing_partitions')}; "
                   f"producers block once their rings are full)")
    for problem in st.get("problems", []):
        click.echo(f"PROBLEM: {problem}")
    if st.get("kafka_listener"):
        from shmbus.cli.stats import kafka_line

        click.echo(kafka_line(st["kafka_listener"], st["kafka_listener"].get("rates") or {}))
    for b in st.get("bridges") or []:
        click.echo(f"bridge {b['name']}" + (f" worker {b['worker']}" if b.get("worker") else "")
                   + (f": pid={b['pid']}" if b["pid"] else ": not running") + f"  restarts={b['restarts']}"
                   + "  (`shmbus bridge status`)")
    if st["partitions"]:
        click.echo(f"{'TOPIC':<24} {'PART':>4} {'END OFFSET':>12} {'RING USED':>12} {'RING':>10} {'SPILLED':>12}")
        for p in st["partitions"]:
            click.echo(f"{p['topic']:<24} {p['partition']:>4} {p['next_offset']:>12} {p['ring_used']:>12} "
                       f"{p['ring_bytes']:>10} {p['spilled_frames']:>12}")


# --- topics ---
@cli.group()
def topics():
    """Create, list, describe, alter and delete topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=int, default=1, show_default=True)
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE", help="A topic config (repeatable).")
@data_dir_option
def topics_create(name, partitions, configs, data_dir):
    """Create a topic.

    \b
    Example:
      shmbus topics create prices --partitions 4 --config retention.ms=60000
    """
    from shmbus.core.config import parse_config_pairs

    cfg = parse_config_pairs(list(configs))
    with _bus(data_dir) as bus:
        bus.create_topic(name, partitions=partitions, config=cfg)
    click.echo(f"created topic {name} with {partitions} partition(s)")


def _echo_names(names, as_json: bool) -> None:
    """A list command's answer: one name a line, or a JSON array."""
    if as_json:
        click.echo(json.dumps(names))
    else:
        for n in names:
            click.echo(n)


@topics.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def topics_list(data_dir, as_json):
    """List topics.

    \b
    Example:
      shmbus topics list --json
    """
    with _bus(data_dir) as bus:
        names = bus.list_topics()
    _echo_names(names, as_json)


@topics.command("describe")
@click.argument("name")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def topics_describe(name, data_dir, as_json):
    """Partitions (start and end offsets) and config of a topic.

    \b
    Example:
      shmbus topics describe prices
    """
    with _bus(data_dir) as bus:
        d = bus.describe_topic(name)
    if as_json:
        click.echo(json.dumps({"name": d.name, "config": d.config,
                               "partitions": [p._asdict() for p in d.partitions]}, indent=1))
        return
    click.echo(f"topic: {d.name}  partitions: {len(d.partitions)}")
    for k, v in d.config.items():
        click.echo(f"  {k}={v}")
    click.echo(f"{'PARTITION':>9} {'START':>14} {'END':>14}")
    for p in d.partitions:
        click.echo(f"{p.partition:>9} {p.start_offset:>14} {p.end_offset:>14}")


@topics.command("delete")
@click.argument("name")
@data_dir_option
def topics_delete(name, data_dir):
    """Delete a topic and its data.

    \b
    Example:
      shmbus topics delete prices
    """
    with _bus(data_dir) as bus:
        bus.delete_topic(name)
    click.echo(f"deleted topic {name}")


@topics.command("alter")
@click.argument("name")
@click.option("--config", "configs", multiple=True, required=True, metavar="KEY=VALUE")
@data_dir_option
def topics_alter(name, configs, data_dir):
    """Change a topic's config.

    \b
    Example:
      shmbus topics alter prices --config retention.ms=3600000
    """
    from shmbus.core.config import parse_config_pairs

    cfg = parse_config_pairs(list(configs))
    with _bus(data_dir) as bus:
        bus.alter_topic_config(name, cfg)
    click.echo(f"altered topic {name}: " + " ".join(f"{k}={v}" for k, v in cfg.items()))


# --- produce / consume ---
@cli.command()
@click.argument("topic")
@click.option("--key-separator", default=None, help="Split each line into key SEP value at the first SEP.")
@click.option("--partition", type=int, default=None)
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE", help="A header on every record (repeatable).")
@click.option("--acks", type=click.Choice(["memory", "disk"]), default="memory", show_default=True)
@data_dir_option
def produce(topic, key_separator, partition, headers, acks, data_dir):
    """Send one record per line of stdin.

    \b
    Example:
      printf 'AAPL:189.5\\nMSFT:410.2\\n' | shmbus produce prices --key-separator :
    """
    hdrs = []
    for h in headers:
        if "=" not in h:
            fail(f"a header must be KEY=VALUE: header={h!r}")
        k, v = h.split("=", 1)
        hdrs.append((k, v.encode()))
    if sys.stdin is None or sys.stdin.closed:
        fail("no stdin to read records from (pipe lines into `shmbus produce`)")
    from shmbus.client.bus import Bus

    with Bus(data_dir) as bus:
        bus.topic_meta(topic)  # fail fast on an unknown topic
        n = 0
        with bus.producer(acks=acks) as prod:
            for line in sys.stdin.buffer:
                line = line.rstrip(b"\r\n")
                key = None
                if key_separator is not None:
                    sep = key_separator.encode()
                    if sep not in line:
                        fail(f"line {n + 1} has no key separator {key_separator!r}: {line[:60]!r}")
                    key, line = line.split(sep, 1)
                prod.send(topic, line, key=key, headers=hdrs or None, partition=partition)
                n += 1
    click.echo(f"sent {n} record(s) to {topic}", err=True)


@cli.command()
@click.argument("topic")
@click.option("--group", default=None, help="Consume as a member of this consumer group.")
@click.option("--from-beginning", is_flag=True, help="Start at the first offset (default: only new records).")
@click.option("--max-messages", type=int, default=None, help="Exit after this many records.")
@click.option("--partition", type=int, default=None, help="Read only this partition.")
@click.option("--offset", type=int, default=None, help="Start at this offset (needs --partition).")
@click.option("--timeout-ms", type=int, default=None, help="Exit after this long without a record.")
@click.option("--format", "fmt", default="{value}", show_default=True,
              help="Per record; fields: topic partition offset timestamp key value headers.")
@data_dir_option
def consume(topic, group, from_beginning, max_messages, partition, offset, timeout_ms, fmt, data_dir):
    """Print records as they arrive, one line each.

    \b
    Example:
      shmbus consume prices --from-beginning --max-messages 10 --format '{partition}:{offset} {key}={value}'
    """
    from shmbus.client.bus import Bus
    from shmbus.records import TopicPartition

    if offset is not None and partition is None:
        fail("--offset needs --partition")
    try:
        fmt.format(topic="t", partition=0, offset=0, timestamp=0, key="k", value="v", headers="")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        fail(f"bad --format: {type(e).__name__}: {e} format={fmt!r} (fields: topic partition offset timestamp key "
             f"value headers, e.g. '{{partition}}:{{offset}} {{key}}={{value}}')")
    if group is not None and partition is not None:
        fail(f"--partition and --group do not go together: group={group!r} partition={partition} (a group "
             f"shares the topic's partitions among its members; drop one of them)")
    with Bus(data_dir) as bus:
        meta = bus.topic_meta(topic)
        c = bus.consumer(group_id=group, auto_offset_reset="earliest" if from_beginning else "latest",
                         consumer_timeout_ms=timeout_ms)
        try:
            if partition is not None:
                if not 0 <= partition < meta.partitions:
                    fail(f"partition does not exist: topic={topic!r} partition={partition} (0..{meta.partitions - 1})")
                c.assign([TopicPartition(topic, partition)])
                if offset is not None:
                    c.seek(TopicPartition(topic, partition), offset)
            else:
                c.subscribe([topic])
            n = 0
            for r in c:
                click.echo(fmt.format(
                    topic=r.topic, partition=r.partition, offset=r.offset, timestamp=r.timestamp,
                    key=_text(r.key), value=_text(r.value),
                    headers=",".join(f"{k}={_text(v)}" for k, v in r.headers)))
                n += 1
                if max_messages is not None and n >= max_messages:
                    break
        finally:
            c.close()


def _text(b):
    if b is None:
        return "null"
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.hex()


# --- groups ---
@cli.group()
def groups():
    """List and describe consumer groups."""


@groups.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
def groups_list(data_dir, as_json):
    """List consumer groups.

    \b
    Example:
      shmbus groups list
    """
    with _bus(data_dir) as bus:
        names = bus.list_groups()
    _echo_names(names, as_json)


@groups.command("describe")
@click.argument("group")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
def groups_describe(group, data_dir, as_json):
    """Members, committed offsets, end offsets and lag of a group.

    \b
    Example:
      shmbus groups describe billing
    """
    with _bus(data_dir) as bus:
        d = bus.describe_group(group)
    if as_json:
        click.echo(json.dumps({
            "group_id": d.group_id, "kind": d.kind, "state": d.state, "generation": d.generation,
            "members": [{"member_id": m.member_id, "pid": m.pid,
                         **({"client_id": m.client_id, "client_host": m.client_host} if m.client_id is not None else {}),
                         "assignment": sorted([list(tp) for tp in m.assignment])} for m in d.members],
            "offsets": [{"topic": tp.topic, "partition": tp.partition, **o._asdict()} for tp, o in d.offsets.items()],
        }, indent=1))
        return
    click.echo(f"group: {d.group_id}  state: {d.state}  generation: {d.generation}  members: {len(d.members)}"
               + ("  (Kafka clients)" if d.kind == "kafka" else ""))
    owner = {tp: m for m in d.members for tp in m.assignment}
    if d.offsets:  # as kafka-consumer-groups --describe: one row per partition
        rows = [("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER", "HOST" if d.kind == "kafka" else "PID")]
        for tp in sorted(d.offsets):
            o, m = d.offsets[tp], owner.get(tp)
            rows.append((tp.topic, str(tp.partition), "-" if o.committed is None else str(o.committed),
                         str(o.end_offset), "-" if o.lag is None else str(o.lag),
                         m.member_id if m else "-", (str(m.pid) if m.client_id is None else m.client_host or "-")
                         if m else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for m in d.members:
        if not m.assignment:
            who = f"pid {m.pid}" if m.client_id is None else f"client {m.client_id} host {m.client_host}"
            click.echo(f"idle member: {m.member_id} {who} (more members than partitions, or a rebalance)")


# --- bench and demo ---
@cli.command()
@click.option("--records", type=int, default=100_000, show_default=True, help="Paced records for the latency run.")
@click.option("--size", type=int, default=100, show_default=True, help="Value bytes per record (>= 8).")
@click.option("--throughput-records", type=int, default=500_000, show_default=True,
              help="Records for each throughput run (send, send_batch).")
@click.option("--histogram", "picture", type=click.Path(dir_okay=False), default=None,
              help="Write latency by percentile to this .svg (or .png, with matplotlib) file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
@data_dir_option
def bench(records, size, throughput_records, picture, as_json, data_dir):
    """Latency and throughput between two processes, with percentiles.

    \b
    Example:
      shmbus bench --records 100000 --size 100
      shmbus bench --histogram latency.svg
    """
    from shmbus.cli import bench as B

    for name, v in (("--records", records), ("--throughput-records", throughput_records)):
        if v < 2:
            fail(f"{name} must be >= 2: {name}={v}")
    res = B.run(data_dir, records, size, throughput_records, picture, as_json)
    click.echo(json.dumps(res) if as_json else B.render(res))


@cli.command()
@click.option("--records", type=int, default=20_000, show_default=True, help="Records per producer.")
@click.option("--producers", type=int, default=2, show_default=True)
@click.option("--partitions", type=int, default=4, show_default=True)
@data_dir_option
def demo(records, producers, partitions, data_dir):
    """Producers and consumers across processes, printed.

    \b
    Example:
      shmbus demo --producers 2 --records 20000
    """
    from shmbus.cli.demo import run_demo

    run_demo(data_dir, records, producers, partitions)


@cli.command()
@data_dir_option
@click.option("--yes", "-y", is_flag=True, help="Remove without asking.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (removes only with --yes).")
@click.option("--verify", is_flag=True,
              help="Instead: check the checksum of every record of every segment of the data dir; a report per "
                   "partition; exit 1 if a record is corrupt.")
def doctor(data_dir, yes, as_json, verify):
    """Find and remove what dead buses left in /dev/shm; check /dev/shm's size.

    A bus whose supervisor runs or whose objects a process maps is left alone.
    A dead bus's rings are first spilled into its data dir (if it still
    exists), then removed. Stale supervisor sockets go too. Objects owned by
    another user are skipped (listed, never opened or removed).

    With --verify: read every segment of every partition of the data dir and
    check every record's checksum (nothing is changed or removed).

    \b
    Example:
      shmbus doctor          # shows what it found, asks before removing
      shmbus doctor --yes    # for scripts
      shmbus doctor --verify # are the segment files intact?
    """
    from shmbus.core import shm
    from shmbus.core.paths import resolve_data_dir
    from shmbus.cli import doctor as D

    d = resolve_data_dir(data_dir)
    if verify:
        sys.exit(D.run_verify(d, as_json))
    findings = [D.judge(b) for b in shm.inventory()]
    dirs = {d} | {f.bus.data_dir for f in findings if f.bus.data_dir_exists}
    stale = sorted(p for dd in dirs for p in D.stale_files(dd))
    act = [f for f in findings if f.action not in ("keep", "skip")]
    skipped = [line for f in findings if f.action != "skip" for line in D.skipped_lines(f.bus)]
    advice = D.shm_advice(d)
    if as_json:
        click.echo(json.dumps({
            "buses": [{"bus_id": f.bus.bus_id, "data_dir": f.bus.data_dir, "objects": f.bus.names,
                       "bytes": f.bus.bytes, "action": f.action, "why": f.why,
                       "skipped": [n for n, _, _ in f.bus.foreign]} for f in findings],
            "stale_files": stale, "shm": advice, "removed": bool(yes and (act or stale))}, indent=2))
    else:
        for line in advice:
            click.echo(line)
        if not findings:
            click.echo("no shmbus objects in /dev/shm")
        for f in findings:
            click.echo(f"bus {f.bus.bus_id}: {len(f.bus.names)} objects, {f.bus.bytes / 2**20:.1f} MiB: "
                       f"{f.action.upper()} ({f.why})")
        for line in skipped:
            click.echo(line)
        for p in stale:
            click.echo(f"stale file: {p}: REMOVE")
        if not act and not stale:
            click.echo("nothing to clean")
            return
        if not yes:
            try:
                ok = click.confirm(f"Remove {len(act)} dead bus(es) and {len(stale)} stale file(s)?", default=False)
            except click.Abort:
                fail("no answer on stdin, nothing removed (pass --yes to remove without asking)")
            if not ok:
                click.echo("nothing removed")
                return
    if not yes and as_json:
        return
    removed = 0
    for f in act:
        if f.action == "spill+remove":
            try:
                D.spill_dead_bus(f.bus.data_dir)
            except Exception as e:  # noqa: BLE001 (a live supervisor appeared, or a damaged dir: keep it)
                click.echo(f"bus {f.bus.bus_id}: kept, could not spill it first: {type(e).__name__}: {e}", err=True)
                continue
        # (the spill pass may have made rings a topic lacked: those go too)
        names = set(f.bus.names) | (set(shm.bus_names(f.bus.data_dir)) if f.bus.data_dir_exists else set())
        removed += shm.unlink_names(sorted(n for n in names if D.is_mine(n)))
    for p in stale:
        try:
            os.unlink(p)
        except (FileNotFoundError, PermissionError):
            pass
    if not as_json:
        click.echo(f"removed {removed} shared-memory object(s) and {len(stale)} stale file(s)")


@cli.command()
@data_dir_option
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="One snapshot (rates over --interval), then exit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object per snapshot).")
def stats(data_dir, interval, once, as_json):
    """A live view: produce and consume rates, ring fill, spill lag, disk use, group lag, supervisor, Kafka listener.

    \b
    Example:
      shmbus stats                  # refreshes every second until Ctrl-C
      shmbus stats --once --json    # for scripts
    """
    from shmbus.cli import stats as S

    if not interval > 0:
        fail(f"--interval must be > 0: interval={interval}")
    bus = _bus(data_dir)
    try:
        prev = S.snapshot(bus)
        while True:
            time.sleep(interval)
            cur = S.with_rates(prev, S.snapshot(bus))
            if as_json:
                out = dict(cur, data_dir=bus.data_dir)
                del out["t"]
                click.echo(json.dumps(out))
            else:
                if not once:
                    click.clear()
                click.echo(S.render(cur, bus.data_dir))
            if once:
                return
            prev = cur
    finally:
        bus.close()


# --- bridges ---
@cli.group()
def bridge():
    """Copy records between the bus and a Kafka cluster (the supervisor runs each bridge)."""


@bridge.command("add")
@click.argument("name")
@click.option("--to", "url", required=True, metavar="kafka://HOST:PORT[,HOST:PORT]", help="The Kafka cluster.")
@click.option("--topics", required=True, metavar="LIST",
              help="Comma-separated topic names or patterns (* ? [..]), e.g. 'orders,prices.*'.")
@click.option("--direction", type=click.Choice(["out", "in", "both"]), default="out", show_default=True,
              help="out: bus -> cluster; in: cluster -> bus; both.")
@click.option("--rename", default="{topic}", show_default=True,
              help="The other side's topic name, e.g. 'host1.{topic}' (out or in only).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes copying bus -> cluster, each a share of the partitions (out or both).")
@data_dir_option
def bridge_add(name, url, topics, direction, rename, workers, data_dir):
    """Add a bridge; the supervisor starts it (within a second if it runs, else at its start).

    \b
    Example:
      shmbus bridge add to-dc --to kafka://kafka1:9092,kafka2:9092 --topics 'orders,prices.*'
      shmbus bridge add from-dc --to kafka://kafka1:9092 --topics 'orders' --direction in --rename 'dc.{topic}'
    """
    from shmbus.bridge import config as B
    from shmbus.core.paths import resolve_data_dir
    from shmbus.client import control as client

    d = resolve_data_dir(data_dir)
    cfg = B.check(name, url, topics, direction, rename, workers)
    B.write_bridge(d, cfg)
    running = client.running_pid(d) is not None
    click.echo(f"bridge {name} added: {direction} {','.join(cfg.topics)} <-> kafka://{cfg.servers}"
               + ("" if running else " (no supervisor runs: `shmbus serve` starts it)"))


@bridge.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@data_dir_option
def bridge_list(as_json, data_dir):
    """The configured bridges.

    \b
    Example:
      shmbus bridge list --json
    """
    from shmbus.bridge import config as B
    from shmbus.core.paths import resolve_data_dir

    d = resolve_data_dir(data_dir)
    cfgs = [B.read_bridge(d, n) for n in B.list_bridges(d)]
    if as_json:
        click.echo(json.dumps([c.to_json() for c in cfgs], indent=1))
        return
    for c in cfgs:
        click.echo(f"{c.name}  {c.direction}  kafka://{c.servers}  topics={','.join(c.topics)}  rename={c.rename}"
                   + (f"  workers={c.workers}" if c.workers > 1 else ""))


@bridge.command("remove")
@click.argument("name")
@data_dir_option
def bridge_remove(name, data_dir):
    """Remove a bridge; the supervisor stops its process (what it copied stays on both sides).

    \b
    Example:
      shmbus bridge remove to-dc
    """
    from shmbus.bridge import config as B
    from shmbus.core.paths import resolve_data_dir

    B.remove_bridge(resolve_data_dir(data_dir), name)
    click.echo(f"bridge {name} removed")


@bridge.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@data_dir_option
def bridge_status(as_json, data_dir):
    """Per bridge and topic: lag (records, ms), rate, records copied, duplicates, the last error.

    \b
    Example:
      shmbus bridge status
    """
    from shmbus.bridge.status import bridge_rows

    rows = bridge_rows(data_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no bridges (`shmbus bridge add` makes one)")
        return
    click.echo(f"{'BRIDGE':<16} {'DIR':<3} {'TOPIC':<24} {'TARGET':<24} {'LAG':>10} {'LAG MS':>8} {'RATE/S':>10} "
               f"{'COPIED':>12} {'DUPS':>6}")
    for b in rows:
        pids = ",".join(str(w["pid"]) for w in b["workers"] if w["pid"] is not None)
        state = f"pid={pids}" if b["running"] else "NOT RUNNING"
        copier = next((w["copier"] for w in b["workers"] if w.get("copier")), None)
        click.echo(f"{b['name']:<16} {state}  restarts={b['restarts']}  kafka://{b['servers']}"
                   + (f"  copier={copier}" if copier else "")
                   + (f"  last error: {b['last_error']}" if b["last_error"] else ""))
        for t in b["topics"]:
            click.echo(f"{b['name']:<16} {t['direction']:<3} {t['topic']:<24} {t['target']:<24} {t['lag_records']:>10} "
                       f"{t['lag_ms']:>8} {t['rate']:>10.0f} {t['copied']:>12} {t['duplicates']:>6}")


def main():
    cli(prog_name="shmbus")


if __name__ == "__main__":
    main()
