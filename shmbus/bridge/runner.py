"""The bridge process (``python -m shmbus.bridge --data-dir D --name N``), run and restarted by the supervisor.

One thread; per direction a copier whose ``step`` moves what is there and returns.

``OutCopier`` (bus -> cluster): a shmbus Consumer assigned to the bus's matching
partitions, seeked to the saved positions (``<name>.positions.json``; the log
start the first time), reads rings and segment files alike. An idempotent
librdkafka producer (``enable.idempotence``, ``acks=all``, no message timeout:
a cluster that is down is waited for) sends each record to the same partition.
Per partition, the last record of each polled batch carries a delivery callback;
librdkafka reports a partition's deliveries in order, so its success means every
record below it was acknowledged, and only then does the saved position move. No
more than ``WINDOW`` records are read past the saved positions: that bounds the
duplicates after a crash (at-least-once). At start (and after the producer is
made anew), the tail of each target partition is read: records there whose
provenance is past the saved position are the duplicates that follow, counted.

``NativeOutCopier`` is the same copier with its loop compiled (bridge/_rdk.c): the
Consumer hands it frame rows (``_copy_frames``) and librdkafka gets each record's
bytes with no Python object per record; the Bridge uses it when it is built
(bridge/fast.py), and ``OutCopier`` otherwise.

``InCopier`` (cluster -> bus): a librdkafka consumer (group ``shmbus-bridge.<name>``,
no auto commit) reads the matching topics; the shmbus Producer writes each record
to the same partition with its timestamp; the Kafka offsets are committed after
the bus took them. No more than ``WINDOW`` records are written to the bus past the
offsets the cluster confirmed committed (at the window, the commit waits). When a
partition is assigned, the bus partition's tail is read: records there whose
provenance is at or past the committed offset will be written again, counted.

Both skip records whose provenance header names the other side. The status file
(``<name>.status.json``) is rewritten every ``STATUS_S``; the bus is only read by
direction out, so a cluster that is down never slows its producers.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque

from shmbus.bridge import config as C
from shmbus.bridge import provenance as P
from shmbus.errors import CorruptRecordError, ShmbusError, TopicExistsError
from shmbus.layout import frame as F

WINDOW = 100_000  # records read from the bus past the saved positions, at most (the duplicates' bound)
POLL_RECORDS = 5000
SAVE_S = 0.2  # how often positions are saved and Kafka offsets committed
STATUS_S = 0.5
DISCOVER_S = 2.0  # how often new matching topics are looked for
TAIL_TIMEOUT_S = 5.0
LOCK_WAIT_S = 60.0  # a new process waits this long for the one it replaces to stop
PR_SET_PDEATHSIG = 1  # prctl(2)


def log(name: str, msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shmbus bridge {name}: {msg}", file=sys.stderr, flush=True)


class Side:
    """What both copiers keep for the status file."""

    direction = ""

    def __init__(self, cfg, report):
        self.cfg = cfg
        self.report = report  # report(error text): the bridge's last error
        self.copied: dict = {}  # source topic -> records copied
        self.skipped: dict = {}  # source topic -> records not copied (provenance from the other side)
        self.dups: dict = {}  # source topic -> duplicates counted
        self.last_ts: dict = {}  # (topic, p) -> timestamp of the last record acknowledged
        self.rate_prev = (time.monotonic(), {})

    def rates(self) -> dict:
        t0, prev = self.rate_prev
        now = time.monotonic()
        cur = dict(self.copied)
        self.rate_prev = (now, cur)
        dt = max(now - t0, 1e-3)
        return {t: (n - prev.get(t, 0)) / dt for t, n in cur.items()}


class OutCopier(Side):
    direction = "out"

    def __init__(self, cfg, bus, data_dir, report, worker=0):
        super().__init__(cfg, report)
        import confluent_kafka as ck
        from confluent_kafka import admin

        self.ck = ck
        self.ck_admin = admin
        self.bus = bus
        self.origin = P.bus_origin(bus.id)
        self.other = P.cluster_origin(cfg.servers)
        self.worker = worker
        self.ppath = C.positions_path(data_dir, cfg.name, worker)
        kept = C.read_json(self.ppath) or {}
        self.dups = dict(kept.get("duplicates", {}))  # (counted over the bridge's life, kept with the positions)
        self.dups_saved = dict(self.dups)
        self.acked = {}  # (topic, p) -> next offset acknowledged
        for path in C.worker_files(data_dir, cfg.name, "positions"):
            # (every worker's file: with another number of workers a partition had another one; positions only grow)
            for t, ps in ((C.read_json(path) or {}).get("out") or {}).items():
                for p, o in ps.items():
                    if int(p) % cfg.workers == worker:
                        self.acked[(t, int(p))] = max(o, self.acked.get((t, int(p)), 0))
        self.saved = dict(self.acked)
        self.read = {}  # (topic, p) -> next offset read
        self.outstanding = {}  # (topic, p) -> batch-end callbacks not yet called
        self.deferred = {}  # (topic, p) -> a position reached by skipped records while callbacks were out
        self.failed = set()
        self.rebuild = False
        self.topics = {}  # source topic -> partitions
        self.topic_ids = {}  # source topic -> its id (a topic deleted and made anew has another)
        self.consumer = bus.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        self.producer = None
        self.admin = admin.AdminClient({"bootstrap.servers": cfg.servers, "log_level": 0})
        self.last_discover = 0.0
        self.tail_pending = True

    # --- the cluster side ---
    def _producer(self):
        return self.ck.Producer({
            "bootstrap.servers": self.cfg.servers, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "message.timeout.ms": 0, "queue.buffering.max.messages": WINDOW + POLL_RECORDS,
            "queue.buffering.max.kbytes": 1 << 21, "enable.gapless.guarantee": True, "error_cb": self._error,
            "log_level": 0, "reconnect.backoff.max.ms": 1000})

    def _error(self, err) -> None:
        self.report(f"cluster: {err.str()}")
        if err.fatal():
            self.rebuild = True

    def _batch_end(self, key, target_key, pos, ts):
        def done(err, msg):
            self.outstanding[key] -= 1
            if err is not None or target_key in self.failed:
                if err is not None:
                    self.failed.add(target_key)
                    self.report(f"delivery to {msg.topic()}/{msg.partition()} failed: {err.str()}")
                    self.rebuild = True
                return
            if pos > self.acked.get(key, 0):
                self.acked[key] = pos
                self.last_ts[key] = ts
            if not self.outstanding[key] and key in self.deferred:
                self.acked[key] = max(self.acked[key], self.deferred.pop(key))
        return done

    def ensure_target(self, topic: str, partitions: int) -> bool:
        """The cluster has the target topic with ``partitions`` partitions or more (made if missing)."""
        target = self.cfg.target(topic)
        md = self.admin.list_topics(timeout=5)
        t = md.topics.get(target)
        if t is None or t.error is not None:
            fut = self.admin.create_topics([self.ck_admin.NewTopic(target, partitions, replication_factor=-1)],
                                           operation_timeout=3)[target]
            try:
                fut.result(4)
            except Exception as e:  # noqa: BLE001 (exists already, or no CreateTopics: auto-creation decides)
                code = e.args[0].code() if e.args and hasattr(e.args[0], "code") else None
                if code != self.ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    log(self.cfg.name, f"cannot create {target} on the cluster ({e}); trying auto-creation")
            md = self.admin.list_topics(target, timeout=5)
            t = md.topics.get(target)
        have = len(t.partitions) if t is not None and t.error is None else 0
        if have < partitions:
            self.report(f"topic {target} on the cluster has {have} partitions, {topic} on the bus {partitions}: "
                        f"not copied (give it {partitions} partitions on the cluster)")
            return False
        return True

    def discover(self) -> None:
        self.last_discover = time.monotonic()
        self.forget_missing()
        new = {}
        for t in self.bus.list_topics():
            if t in self.topics or not self.cfg.matches(t):
                continue
            try:
                meta = self.bus.topic_meta(t)
            except ShmbusError:
                continue
            if self.ensure_target(t, meta.partitions):
                new[t] = meta.partitions
                self.topic_ids[t] = meta.id
        if not new:
            return
        self.topics.update(new)
        self._assign()

    def _assign(self) -> None:
        from shmbus.records import TopicPartition

        tps = [TopicPartition(t, p) for t, n in self.topics.items() for p in self.mine(n)]
        self.consumer.assign(tps)
        starts = self.consumer.beginning_offsets(tps)
        for tp in tps:
            key = (tp.topic, tp.partition)
            pos = self.read.get(key, self.acked.get(key, starts[tp]))
            self.read[key] = pos
            self.acked.setdefault(key, pos)
            self.consumer.seek(tp, pos)
            self.outstanding.setdefault(key, 0)
            self.copied.setdefault(tp.topic, 0)
        if self.tail_pending:
            self.count_duplicates()

    def mine(self, partitions: int) -> range:
        """This worker's partitions of a topic of ``partitions``."""
        return range(self.worker, partitions, self.cfg.workers)

    def count_duplicates(self) -> None:
        """Records already on the cluster past the saved positions (sent before a crash) will be sent again:
        read each target partition's last record; those its provenance puts past the position are counted."""
        ck = self.ck
        c = ck.Consumer({"bootstrap.servers": self.cfg.servers, "group.id": f"shmbus-bridge.{self.cfg.name}.tail",
                         "enable.auto.commit": False, "log_level": 0, "fetch.wait.max.ms": 10})
        try:
            want = {}
            for (t, p) in self.read:
                try:
                    lo, hi = c.get_watermark_offsets(ck.TopicPartition(self.cfg.target(t), p), timeout=2)
                except ck.KafkaException:
                    return  # the cluster is not there: nothing is counted
                if hi > lo:
                    want[(self.cfg.target(t), p)] = (t, hi - 1)
            if not want:
                self.tail_pending = False
                return
            c.assign([ck.TopicPartition(tt, p, off) for (tt, p), (_, off) in want.items()])
            deadline = time.monotonic() + TAIL_TIMEOUT_S
            while want and time.monotonic() < deadline:
                for m in c.consume(100, 0.2):
                    if m.error() is not None or (m.topic(), m.partition()) not in want:
                        continue
                    src, _ = want.pop((m.topic(), m.partition()))
                    off = P.source_offset(m.headers(), self.origin, src, m.partition())
                    if off is not None and off + 1 > self.read[(src, m.partition())]:
                        self.dups[src] = self.dups.get(src, 0) + off + 1 - self.read[(src, m.partition())]
            self.tail_pending = False
        finally:
            c.close()

    def restart_producer(self) -> None:
        """After a failed delivery or a fatal producer error: a new producer, reading again from the
        acknowledged positions (what was in flight is sent again, duplicates counted)."""
        from shmbus.records import TopicPartition

        if self.producer is not None:
            self._discard_producer()
            self.producer = None
        self.failed.clear()
        self.deferred.clear()
        for key in self.read:
            self.outstanding[key] = 0
            self.read[key] = self.acked.get(key, self.read[key])
            self.consumer.seek(TopicPartition(*key), self.read[key])
        self.tail_pending = True
        self.rebuild = False
        self.producer = self._producer()
        if self.read:
            self.count_duplicates()

    def _discard_producer(self) -> None:
        try:
            self.producer.purge()
        except Exception:  # noqa: BLE001
            pass

    def forget_missing(self) -> None:
        """Drop the topics deleted from the bus (a topic made anew by that name is
        found again by the next discovery, from its start)."""
        live = set(self.bus.list_topics())
        gone = [t for t in self.topics if t not in live or self._topic_id(t) != self.topic_ids.get(t)]
        if not gone:
            return
        for t in gone:
            del self.topics[t]
            self.topic_ids.pop(t, None)
            for key in [k for k in self.read if k[0] == t]:
                for d in (self.read, self.acked, self.outstanding, self.deferred):
                    d.pop(key, None)
            log(self.cfg.name, f"topic {t} was deleted from the bus: no longer copied (one made anew by that name "
                               f"is copied from its start)")
        self._assign()

    def _topic_id(self, topic: str):
        from shmbus.log import metadata

        try:
            return metadata.read_topic(self.bus.data_dir, topic).id
        except Exception:  # noqa: BLE001 (deleted meanwhile)
            return None

    def unsaved(self) -> int:
        return sum(self.read[k] - self.acked.get(k, self.read[k]) for k in self.read)

    # --- the loop ---
    def _room(self, timeout_ms: int) -> int:
        """A step's start: a producer (made anew after a failure), new topics, deliveries served. Returns
        how many records may be read now; 0 when none (the window is full, or nothing to read): then it
        waited up to ``timeout_ms`` for deliveries instead."""
        if self.producer is None or self.rebuild:
            self.restart_producer()
        if time.monotonic() - self.last_discover > DISCOVER_S:
            self.discover()
        self._serve(0)
        room = WINDOW - self.unsaved()
        if room <= 0 or not self.read:
            self._serve(timeout_ms)
            return 0
        return room

    def _serve(self, timeout_ms: int) -> None:
        """Deliveries and errors, waiting up to ``timeout_ms`` for the first."""
        self.producer.poll(timeout_ms / 1000)

    def step(self, timeout_ms: int) -> int:
        room = self._room(timeout_ms)
        if not room:
            return 0
        prod = self.producer
        got = self.consumer.poll(timeout_ms=timeout_ms, max_records=min(POLL_RECORDS, room))
        n = 0
        produce = prod.produce
        origin, other, hdr = self.origin, self.other, P.HEADER
        items = list(got.items())
        for i, (tp, recs) in enumerate(items):
            topic, p = tp
            key = (topic, p)
            target = self.cfg.target(topic)
            end = recs[-1].offset + 1
            pre = b"%s %s %d " % (origin, topic.encode(), p)
            last = len(recs) - 1  # the last record to send (those after it came from the other side)
            while last >= 0 and recs[last].headers and P.from_origin(recs[last].headers, other):
                last -= 1
            sent = 0
            off = recs[0].offset
            try:
                for _t, _p, off, ts, k, v, hs in recs[:max(last, 0)]:  # (ConsumerRecord's fields)
                    if hs:
                        if P.from_origin(hs, other):
                            continue
                        h = hs + [(hdr, b"%b%d" % (pre, off))]
                    else:
                        h = [(hdr, b"%b%d" % (pre, off))]
                    try:  # (positional: topic, value, key, partition, on_delivery, callback, timestamp, headers)
                        produce(target, v, k, p, None, None, ts, h)
                    except BufferError:
                        self._produce_waiting(target, v, k, p, None, ts, h)
                    sent += 1
                if last >= 0:
                    # the batch's last record carries a callback: its success acknowledges every one below
                    # (librdkafka reports a partition's deliveries in order, and gapless: a failure is fatal)
                    r = recs[last]
                    off = r.offset
                    hs = r.headers
                    h = [(hdr, b"%b%d" % (pre, r.offset))]
                    cb = self._batch_end(key, (target, p), end, r.timestamp)
                    self._produce_waiting(target, r.value, r.key, p, cb, r.timestamp, hs + h if hs else h)
                    self.outstanding[key] += 1
                    sent += 1
                else:
                    if self.outstanding[key]:
                        self.deferred[key] = end
                    else:
                        self.acked[key] = max(self.acked.get(key, 0), end)
            except self.ck.KafkaException as e:
                self.copied[topic] += sent
                self._refused(tp, off, e.args[0].str() if e.args else str(e),
                              [(t, rs[0].offset) for t, rs in items[i + 1:]])
            skipped = len(recs) - sent
            self.read[key] = end
            self.copied[topic] += sent
            if skipped:
                self.skipped[topic] = self.skipped.get(topic, 0) + skipped
            n += sent
        prod.poll(0)
        return n

    def _refused(self, tp, offset: int, why: str, rest) -> None:
        """librdkafka refused the record at ``offset`` (too large for it, ...): read on from it (and
        ``rest``, [(tp, offset)] of the partitions polled but not sent yet) next time, and raise: the
        run loop says why and pauses. Stuck there: at least once skips nothing."""
        for t2, o2 in rest:
            self.consumer.seek(t2, o2)
        self.consumer.seek(tp, offset)
        key = (tp[0], tp[1])
        self.read[key] = offset
        # this batch's records before it went without a callback: once all that was produced is
        # delivered (a failure is fatal: gapless), the position is the refused record's
        if self.producer.flush(5) == 0 and (self.cfg.target(tp[0]), tp[1]) not in self.failed:
            self.acked[key] = max(self.acked.get(key, 0), offset)
        raise ShmbusError(f"the cluster's client refused the record at {tp[0]}/{tp[1]} offset {offset}: {why} "
                          f"(records after it are not copied until it can be)")

    def _produce_waiting(self, target, value, key, p, cb, ts, headers) -> None:
        """produce, waiting for room in librdkafka's queue."""
        while True:
            try:
                self.producer.produce(target, value, key, p, cb, None, ts, headers)
                return
            except BufferError:
                self.producer.poll(0.01)

    def save(self) -> None:
        if self.acked != self.saved or self.dups != self.dups_saved:
            out = {}
            for (t, p), o in self.acked.items():
                out.setdefault(t, {})[str(p)] = o
            C.write_json_durable(self.ppath, {"out": out, "duplicates": self.dups})
            self.saved = dict(self.acked)
            self.dups_saved = dict(self.dups)

    def close(self, save: bool = True) -> None:
        if self.producer is not None:
            self.producer.flush(5)
        if save:
            self.save()
        self.consumer.close()

    def status(self) -> list:
        from shmbus.records import TopicPartition

        rates = self.rates()
        now_ms = int(time.time() * 1000)
        out = []
        for t, n in self.topics.items():
            tps = [TopicPartition(t, p) for p in self.mine(n)]
            try:
                ends = self.consumer.end_offsets(tps)
            except ShmbusError:
                continue
            lag = sum(max(ends[tp] - self.acked.get((t, tp.partition), 0), 0) for tp in tps)
            behind = [now_ms - self.last_ts.get((t, tp.partition), now_ms) for tp in tps
                      if ends[tp] > self.acked.get((t, tp.partition), 0)]
            out.append({"direction": "out", "topic": t, "target": self.cfg.target(t), "partitions": len(tps),
                        "lag_records": lag, "lag_ms": max(behind, default=0), "rate": round(rates.get(t, 0.0), 1),
                        "copied": self.copied.get(t, 0), "skipped": self.skipped.get(t, 0),
                        "duplicates": self.dups.get(t, 0), "in_flight": sum(
                            self.read[(t, p)] - self.acked.get((t, p), self.read[(t, p)]) for p in self.mine(n))})
        return out


class NativeOutCopier(OutCopier):
    """``OutCopier`` with its copy loop compiled (bridge/_rdk.c): frame rows from the bus straight into
    librdkafka, no Python object per record.

    The Consumer hands each partition's frames over (``_copy_frames``: a segment chunk, or a ring span
    checked frame by frame against the spiller); ``produce_frames`` gives librdkafka one record per
    frame with the provenance header, and counts per target partition what it handed over and what was
    acknowledged. A partition's acknowledged position is the highest source offset acknowledged, or
    everything read when nothing is in flight (so skipped records at the end of a read count too).
    The same producer settings, window, duplicate count and saved positions as ``OutCopier``.
    """

    def __init__(self, cfg, bus, data_dir, report, worker=0, rdk=None):
        self.rdk = rdk
        self.tindex = {}  # source topic -> the producer's index of its target topic
        self.prefix = {}  # (topic, p) -> the provenance value before the offset
        self.pending = {}  # (topic, p) -> deque of (end, timestamp) per handed-over read, for lag_ms
        self.refused = None  # why librdkafka refused a record in this step's read
        super().__init__(cfg, bus, data_dir, report, worker)

    def _producer(self):
        conf = {"bootstrap.servers": self.cfg.servers, "enable.idempotence": "true", "acks": "all",
                "linger.ms": "5", "message.timeout.ms": "0",
                "queue.buffering.max.messages": str(WINDOW + POLL_RECORDS),
                "queue.buffering.max.kbytes": str(1 << 21), "enable.gapless.guarantee": "true", "log_level": "0",
                "reconnect.backoff.max.ms": "1000"}
        self.tindex = {}
        return self.rdk.Producer(conf)

    def _discard_producer(self) -> None:
        self.producer.purge()
        self.producer.close()
        self.pending.clear()

    def _target(self, topic: str) -> int:
        t = self.tindex.get(topic)
        if t is None:
            t = self.tindex[topic] = self.producer.topic(self.cfg.target(topic), self.topics[topic])
        return t

    def _sink(self, tp, buf, rows, ring) -> int:
        topic, p = tp
        key = (topic, p)
        pre = self.prefix.get(key)
        if pre is None:
            pre = self.prefix[key] = b"%s %s %d " % (self.origin, topic.encode(), p)
        k, sent, status = self.producer.produce_frames(self._target(topic), p, buf, rows, pre, self.other,
                                                       ring.address if ring is not None else 0)
        if k:
            end = int(rows[k - 1, F.M_OFFSET]) + 1
            self.read[key] = end
            self.copied[topic] += sent
            if k > sent:
                self.skipped[topic] = self.skipped.get(topic, 0) + k - sent
            q = self.pending.get(key)
            if q is None:
                q = self.pending[key] = deque()
            q.append((end, int(rows[k - 1, F.M_TS])))
        if status == self.rdk.CORRUPT:
            self.rebuild = True  # (read again from the acknowledged positions: stuck there, and saying why)
            raise CorruptRecordError(f"topic={topic!r} partition={p} offset={int(rows[k, F.M_OFFSET])}: the record's "
                                     f"header bytes do not parse (the bridge cannot copy past it)")
        if status == self.rdk.ERROR:
            # librdkafka refused the record (too large for it, ...): the Consumer reads on from it next
            # time; step raises after this read, the run loop says why and pauses. Stuck there.
            why = "; ".join(self._take_errors()) or "refused"
            self.refused = f"the cluster's client refused the record at {topic}/{p} offset {int(rows[k, F.M_OFFSET])}: " \
                           f"{why} (records after it are not copied until it can be)"
        return k

    def _take_errors(self) -> list:
        """Report the producer's errors (a failed delivery or a fatal error: a new producer follows);
        returns the texts of the records it refused."""
        rdk = self.rdk
        refused = []
        for _code, kind, t, p, text in self.producer.errors():
            if kind == rdk.E_REFUSED:
                refused.append(text)
            elif kind == rdk.E_DELIVERY:
                target = next((self.cfg.target(s) for s, i in self.tindex.items() if i == t), "?")
                self.report(f"delivery to {target}/{p} failed: {text}")
                self.rebuild = True
            else:
                self.report(f"cluster: {text}")
                self.rebuild = self.rebuild or kind == rdk.E_FATAL
        return refused

    def _take_acks(self) -> None:
        prod = self.producer
        self._take_errors()
        state = prod.state
        for topic, t in self.tindex.items():
            for p in self.mine(self.topics.get(topic, 0)):
                key = (topic, p)
                produced, acked, end, failed = state(t, p)
                pos = self.read.get(key, 0) if produced == acked else end
                if failed or pos <= self.acked.get(key, 0):
                    continue
                self.acked[key] = pos
                q = self.pending.get(key)
                while q and q[0][0] <= pos:
                    self.last_ts[key] = q.popleft()[1]

    def _serve(self, timeout_ms: int) -> None:
        self.producer.poll(timeout_ms)
        self._take_acks()

    def step(self, timeout_ms: int) -> int:
        room = self._room(timeout_ms)
        if not room:
            return 0
        prod = self.producer
        self.refused = None
        n = self.consumer._copy_frames(min(POLL_RECORDS, room), self._sink)
        if self.refused:
            raise ShmbusError(self.refused)
        if not n and timeout_ms:
            prod.poll(min(timeout_ms, 10))  # (deliveries come back meanwhile)
            self.consumer._wait(time.monotonic() + timeout_ms / 1000)
        prod.poll(0)
        return n

    def close(self, save: bool = True) -> None:
        if self.producer is not None:
            self.producer.flush(5000)
            self._take_acks()
        if save:
            self.save()
        if self.producer is not None:
            self.producer.close()
        self.consumer.close()


class InCopier(Side):
    direction = "in"

    def __init__(self, cfg, bus, data_dir, report):
        super().__init__(cfg, report)
        import confluent_kafka as ck

        self.ck = ck
        self.bus = bus
        self.other = P.bus_origin(bus.id)
        self.origin = P.cluster_origin(cfg.servers)
        self.consumer = ck.Consumer({
            "bootstrap.servers": cfg.servers, "group.id": f"shmbus-bridge.{cfg.name}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50, "error_cb": self._error, "log_level": 0,
            "reconnect.backoff.max.ms": 1000, "topic.metadata.refresh.interval.ms": 2000,
            "on_commit": self._on_commit})
        self.producer = bus.producer()
        self.topics = {}  # cluster topic -> partitions
        self.next = {}  # (cluster topic, p) -> next offset to commit
        self.committed = {}  # (cluster topic, p) -> the offset last sent in a commit
        self.confirmed = {}  # (cluster topic, p) -> the offset the cluster confirmed committed
        self.dpath = C.duplicates_path(data_dir, cfg.name)
        self.dups = dict((C.read_json(self.dpath) or {}).get("duplicates", {}))  # (over the bridge's life)
        self.dups_saved = dict(self.dups)
        self.last_discover = 0.0

    def _error(self, err) -> None:
        self.report(f"cluster: {err.str()}")

    def _on_commit(self, err, partitions) -> None:
        if err is not None:
            self.report(f"cluster: commit failed (retried): {err.str()}")
            return
        self._confirm(partitions)

    def _confirm(self, partitions) -> None:
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                key = (tp.topic, tp.partition)
                self.confirmed[key] = max(self.confirmed.get(key, 0), tp.offset)

    def unsaved(self) -> int:
        """Records written to the bus past the offsets the cluster confirmed committed."""
        return sum(o - self.confirmed.get(k, o) for k, o in self.next.items())

    def count_duplicates(self, tps) -> None:
        """Records of the cluster already on the bus at or past the committed offsets (written before a
        crash, their commit not made) will be written again: the provenance of the last record this bridge
        wrote to the bus partition tells how many; they are counted."""
        from shmbus.records import TopicPartition

        ck = self.ck
        with self.bus.consumer(auto_offset_reset="earliest", enable_auto_commit=False) as c:
            for tp in tps:
                start = tp.offset
                if start < 0:
                    try:
                        start = self.consumer.get_watermark_offsets(tp, timeout=5)[0]
                    except ck.KafkaException:
                        continue  # (the cluster is not there: nothing is counted)
                last = self._last_written(c, TopicPartition(self.cfg.target(tp.topic), tp.partition), tp)
                if last is not None and last >= start:
                    self.dups[tp.topic] = self.dups.get(tp.topic, 0) + last + 1 - start

    def _last_written(self, c, btp, tp):
        """The source offset in the provenance of the last record copied from ``tp`` to bus partition
        ``btp`` (None if none is among its last 2 * WINDOW records). Other producers' records may lie
        between: it reads back from the end in growing steps."""
        lo = c.beginning_offsets([btp])[btp]
        hi = c.end_offsets([btp])[btp]
        c.assign([btp])
        step = 64
        while True:
            begin = max(lo, hi - step)
            c.seek(btp, begin)
            last = None
            pos = begin
            while pos < hi:
                recs = c.poll(timeout_ms=100, max_records=POLL_RECORDS).get(btp, [])
                if not recs:
                    break
                for r in recs:
                    if r.offset >= hi:
                        break
                    off = P.source_offset(r.headers, self.origin, tp.topic, tp.partition)
                    if off is not None:
                        last = off
                pos = recs[-1].offset + 1
            if last is not None or begin == lo or step >= 2 * WINDOW:
                return last
            hi, step = begin, min(step * 8, 2 * WINDOW)

    def discover(self) -> None:
        ck = self.ck
        self.last_discover = time.monotonic()
        try:
            md = self.consumer.list_topics(timeout=5)
        except ck.KafkaException as e:
            self.report(f"cluster: cannot list topics: {e}")
            return
        new = []
        for t, tm in md.topics.items():
            if t in self.topics or t.startswith("__") or tm.error is not None or not self.cfg.matches(t):
                continue
            n = len(tm.partitions)
            target = self.cfg.target(t)
            try:
                self.bus.create_topic(target, n)
            except TopicExistsError:
                have = self.bus.topic_meta(target).partitions
                if have < n:
                    self.report(f"topic {target} on the bus has {have} partitions, {t} on the cluster {n}: "
                                f"not copied (`shmbus topics create` it anew with {n} partitions)")
                    continue
            self.topics[t] = n
            self.copied.setdefault(t, 0)
            new += [ck.TopicPartition(t, p) for p in range(n)]
        if not new:
            return
        try:
            got = self.consumer.committed(new, timeout=10)
        except ck.KafkaException as e:
            for tp in new:
                self.topics.pop(tp.topic, None)
            self.report(f"cluster: cannot read the committed offsets: {e}")
            return
        self.count_duplicates(got)
        for tp in got:
            if tp.offset < 0:
                tp.offset = ck.OFFSET_BEGINNING
            else:
                self.confirmed[(tp.topic, tp.partition)] = tp.offset
        self.consumer.incremental_assign(got)

    def step(self, timeout_ms: int) -> int:
        if time.monotonic() - self.last_discover > DISCOVER_S:
            self.discover()
        if not self.topics:
            time.sleep(timeout_ms / 1000)
            return 0
        room = WINDOW - self.unsaved()
        if room < POLL_RECORDS:
            self.save(wait=True)  # the window is full: its commit is waited for
            room = WINDOW - self.unsaved()
            if room <= 0:
                time.sleep(timeout_ms / 1000)
                return 0
        msgs = self.consumer.consume(min(POLL_RECORDS, room), timeout_ms / 1000)
        try:
            n = self._write(msgs)
        except BaseException:
            self._rewind(msgs)
            raise
        return n

    def _rewind(self, msgs) -> None:
        """A write to the bus failed: read again from the first record of each partition not written."""
        first = {}
        for m in msgs:
            if m.error() is None:
                key = (m.topic(), m.partition())
                if m.offset() >= self.next.get(key, -1) and key not in first:
                    first[key] = m.offset()
        for (t, p), off in first.items():
            try:
                self.consumer.seek(self.ck.TopicPartition(t, p, off))
            except self.ck.KafkaException as e:
                self.report(f"cluster: cannot seek {t}/{p} back to {off}: {e}")

    def _write(self, msgs) -> int:
        send = self.producer.send
        other, origin, hdr = self.other, self.origin, P.HEADER
        n = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != self.ck.KafkaError._PARTITION_EOF:
                    self.report(f"cluster: {err.str()}")
                continue
            t, p, off = m.topic(), m.partition(), m.offset()
            hs = m.headers()
            if hs and P.from_origin(hs, other):
                self.skipped[t] = self.skipped.get(t, 0) + 1
            else:
                pv = (hdr, b"%s %s %d %d" % (origin, t.encode(), p, off))
                tst, ts = m.timestamp()
                send(self.cfg.target(t), m.value(), m.key(), headers=hs + [pv] if hs else [pv], partition=p,
                     timestamp_ms=ts if tst != self.ck.TIMESTAMP_NOT_AVAILABLE and ts >= 0 else None)
                self.copied[t] += 1
                self.last_ts[(t, p)] = ts
                n += 1
            if (t, p) not in self.confirmed:
                self.confirmed[(t, p)] = off  # (no offset was committed: it started here)
            self.next[(t, p)] = off + 1
        return n

    def save(self, wait: bool = False) -> None:
        """Commit the offsets after what the bus took (``wait``: until the cluster confirms it)."""
        if self.dups != self.dups_saved:
            C.write_json_durable(self.dpath, {"duplicates": self.dups})
            self.dups_saved = dict(self.dups)
        todo = {k: v for k, v in self.next.items() if self.committed.get(k) != v or wait}
        if not todo:
            return
        try:
            got = self.consumer.commit(offsets=[self.ck.TopicPartition(t, p, o) for (t, p), o in todo.items()],
                                       asynchronous=not wait)
            self.committed.update(todo)
            if wait and got:
                self._confirm(got)
        except self.ck.KafkaException as e:
            self.report(f"cluster: commit failed (retried): {e}")

    def close(self, save: bool = True) -> None:
        if save:
            self.save(wait=True)
        self.consumer.close()
        self.producer.close()

    def status(self) -> list:
        ck = self.ck
        rates = self.rates()
        now_ms = int(time.time() * 1000)
        out = []
        for t, n in self.topics.items():
            lag = 0
            behind = []
            for p in range(n):
                try:
                    _lo, hi = self.consumer.get_watermark_offsets(ck.TopicPartition(t, p), cached=True)
                except ck.KafkaException:
                    hi = -1
                pos = self.next.get((t, p))
                if hi >= 0 and pos is not None and hi > pos:
                    lag += hi - pos
                    behind.append(now_ms - self.last_ts.get((t, p), now_ms))
                elif hi > 0 and pos is None:
                    lag += hi
            out.append({"direction": "in", "topic": t, "target": self.cfg.target(t), "partitions": n,
                        "lag_records": lag, "lag_ms": max(behind, default=0), "rate": round(rates.get(t, 0.0), 1),
                        "copied": self.copied.get(t, 0), "skipped": self.skipped.get(t, 0),
                        "duplicates": self.dups.get(t, 0), "in_flight": sum(
                            o - self.confirmed.get(k, o) for k, o in self.next.items() if k[0] == t)})
        return out


def exit_with_parent(parent: int) -> bool:
    """Ask the kernel for a SIGTERM when the parent (the supervisor) dies; False if it is gone already."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # (not Linux: the run loop's check of the parent stops it)
    return os.getppid() == parent


def take_lock(data_dir: str, name: str, worker: int, wait_s: float = LOCK_WAIT_S) -> int:
    """The worker's lock file, held for the process's life: a process the supervisor starts waits here
    until the one it replaces (its supervisor died) has stopped, so no two copy the same partitions."""
    import fcntl

    from shmbus.core import ownership

    path = C.lock_path(data_dir, name, worker)
    ownership.makedirs(os.path.dirname(path))
    fd = ownership.open_file(path, os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ShmbusError(f"bridge {name} worker {worker}: another process holds {path} after "
                                  f"{wait_s:.0f}s (a bridge process of a supervisor that died; it stops by itself)")
            if not said:
                log(name, f"waiting for the previous process of worker {worker} to stop ({path})")
                said = True
            time.sleep(0.05)


class Bridge:
    def __init__(self, data_dir: str, name: str, worker: int = 0, parent: int | None = None):
        from shmbus.client.bus import Bus

        self.data_dir = data_dir
        self.cfg = C.read_bridge(data_dir, name)
        if not 0 <= worker < self.cfg.workers:
            raise ShmbusError(f"bridge {name} has {self.cfg.workers} workers: worker={worker} "
                              f"(0..{self.cfg.workers - 1})")
        self.parent = parent if parent is not None else os.getppid()
        self.lock_fd = take_lock(data_dir, name, worker)  # (before the saved positions are read)
        self.worker = worker
        self.spath = C.status_path(data_dir, name, worker)
        self.stopping = False
        self.started = time.time()
        self.last_error = None
        self.last_error_ms = None
        self.bus = Bus(data_dir, autostart=False)
        self.copiers = []
        self.copier = None  # direction out: "compiled" (bridge/_rdk.c) or "python" (confluent-kafka's API)
        if self.cfg.direction in ("out", "both"):
            from shmbus.bridge import fast

            rdk = fast.load()
            if rdk is not None:
                self.copier = "compiled"
                self.copiers.append(NativeOutCopier(self.cfg, self.bus, data_dir, self.report, worker, rdk))
            else:
                self.copier = "python"
                log(name, f"direction out copies through confluent-kafka's Python API: the compiled copier is "
                          f"not used ({fast.REASON})")
                self.copiers.append(OutCopier(self.cfg, self.bus, data_dir, self.report, worker))
        if self.cfg.direction in ("in", "both") and worker == 0:
            self.copiers.append(InCopier(self.cfg, self.bus, data_dir, self.report))

    def report(self, error: str) -> None:
        now = int(time.time() * 1000)
        if error != self.last_error or now - (self.last_error_ms or 0) > 10_000:
            log(self.cfg.name, error)
        self.last_error, self.last_error_ms = error, now

    def write_status(self) -> None:
        topics = []
        for c in self.copiers:
            try:
                topics += c.status()
            except Exception as e:  # noqa: BLE001 (the status never stops the copying)
                self.report(f"status: {type(e).__name__}: {e}")
        C.write_json(self.spath, {
            "name": self.cfg.name, "worker": self.worker, "pid": os.getpid(), "started": self.started,
            "updated": time.time(),
            "direction": self.cfg.direction, "servers": self.cfg.servers, "copier": self.copier,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms, "topics": topics})

    def run(self) -> int:
        ppid = self.parent
        timeout_ms = 20 if len(self.copiers) > 1 else 100
        last_save = last_status = 0.0
        log(self.cfg.name, f"started pid={os.getpid()} worker={self.worker}/{self.cfg.workers} "
                           f"direction={self.cfg.direction} cluster={self.cfg.servers} "
                           f"topics={','.join(self.cfg.topics)}")
        try:
            while not self.stopping:
                for c in self.copiers:
                    try:
                        c.step(timeout_ms)
                    except (ShmbusError, self.copiers[0].ck.KafkaException) as e:
                        self.report(f"{c.direction}: {type(e).__name__}: {e}")
                        if isinstance(e, ShmbusError) and isinstance(c, OutCopier):
                            c.forget_missing()
                        time.sleep(0.5)
                now = time.monotonic()
                if now - last_save > SAVE_S:
                    for c in self.copiers:
                        c.save()
                    last_save = now
                if now - last_status > STATUS_S:
                    self.write_status()
                    last_status = now
                    if os.getppid() != ppid:
                        log(self.cfg.name, "the supervisor is gone: stopping")
                        break
        finally:
            removed = not os.path.exists(C.config_path(self.data_dir, self.cfg.name))
            for c in self.copiers:
                try:
                    c.close(save=not removed)
                except Exception as e:  # noqa: BLE001
                    log(self.cfg.name, f"closing {c.direction}: {type(e).__name__}: {e}")
            if removed:  # (`bridge remove`: a bridge added again by that name starts afresh)
                for path in (self.spath, C.positions_path(self.data_dir, self.cfg.name, self.worker),
                             C.lock_path(self.data_dir, self.cfg.name, self.worker),
                             *([C.duplicates_path(self.data_dir, self.cfg.name)] if self.worker == 0 else [])):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            else:
                self.write_status()
            self.bus.close()
            log(self.cfg.name, "stopped")
        return 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m shmbus.bridge", description="Run one bridge (the supervisor does).")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--parent", type=int, default=None, help="the supervisor's pid: stop when it dies")
    args = ap.parse_args(argv)
    if args.parent is not None and not exit_with_parent(args.parent):
        return 0  # (the supervisor that started it is gone)
    try:
        b = Bridge(args.data_dir, args.name, args.worker, args.parent)
    except ShmbusError as e:
        print(f"shmbus bridge: {e}", file=sys.stderr)
        return 1

    def stop(*_):
        b.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return b.run()


__all__ = ["Bridge", "OutCopier", "NativeOutCopier", "InCopier", "main", "WINDOW"]
