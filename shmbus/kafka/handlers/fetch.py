"""Fetch and ListOffsets: Kafka consumers read the bus.

Fetch (versions 4..12) answers each partition with record batches (magic 2,
uncompressed) encoded from the frames by the ``kafka_out`` kernel: the same
offsets (gaps left by compaction stay gaps), timestamps, keys, values and
headers as the Python API reads. Versions 13 and later name topics by id and
are not offered, so clients use 12.

Reading a partition is the Python Consumer's read path (client/consumer/
fetch.py) with the same public pieces: at a known ring *cursor* the ring is
scanned; else the segment files are read (``PartitionLog``) until they run
out, and the cursor becomes the ring's reclaiming position seen before the
disk was looked at. A ring read is checked after it was encoded: if the
spiller released a frame meanwhile (the bytes may be changing), the batch is
dropped and read again from disk. Each connection keeps one reader per
partition it fetched (``session.state``), so a consumer that fetches the
next offset goes on from its cursor without a seek; they are closed with the
connection.

Limits: a partition's batches stop at its ``partition_max_bytes``, the
response's at ``max_bytes`` (at most ``MAX_RESPONSE_BYTES``); the first
record of the response is always sent whole even if it is larger (as Kafka
does), so a consumer never stalls on a large record. Each batch holds at most
``MAX_ROWS`` records; a partition's answer may hold several batches.

Errors, per partition: an offset below the partition's start or above its
end is answered OFFSET_OUT_OF_RANGE (the client applies its
``auto.offset.reset``); an unknown topic or partition
UNKNOWN_TOPIC_OR_PARTITION; a record that fails its checksum on disk, or
whose header bytes do not parse, CORRUPT_MESSAGE once the records before it
were sent. ``high_watermark`` and ``last_stable_offset`` are the ring's next
offset (nothing is transactional, so both isolation levels read the same),
``log_start_offset`` the partition's first offset.

Fetch sessions (KIP-227) are not kept: every response has session id 0, a
full response, which tells clients to send full requests; a request naming a
session id is answered FETCH_SESSION_ID_NOT_FOUND.

Long polls: when the records found are fewer than ``min_bytes`` bytes, the
handler waits up to ``max_wait_ms`` as a Python consumer does (wait.py):
it counts itself as a sleeper on each ring of the request, looks once more,
and sleeps on the bus doorbell (a futex), which a producer rings after a
publish when a ring has sleepers. It wakes for new records, not on a timer
(it wakes every ``CLOSE_CHECK_S`` to see whether the listener is closing).

ListOffsets (versions 1..6): earliest (-2) is the partition's start offset,
latest (-1) the ring's next offset, a timestamp the first record whose
timestamp is at or after it (disk, then ring; offset -1 if none).
Max-timestamp (-3, version 7) would need a scan of the whole partition and
is not offered.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from kafka.protocol.consumer import FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse

from shmbus.client.consumer.partition import PartitionState
from shmbus.core import native
from shmbus.core import paths
from shmbus.core.native import LazyModule
from shmbus.errors import CorruptRecordError, InvalidTopicError
from shmbus.kafka.handlers import errors as E
from shmbus.kafka.registry import handles
from shmbus.layout import frame as F
from shmbus.log.partition import offset_for_time, partition_start_offset
from shmbus.log.reader import PartitionLog
from shmbus.records import TopicPartition

frames_k = LazyModule("shmbus.kernels.frames")
kafka_out = LazyModule("shmbus.kernels.kafka_out")

FETCH_SESSION_ID_NOT_FOUND = 70
MAX_ROWS = 4096  # records per scan, and so per batch
MAX_RESPONSE_BYTES = 55 * 1024 * 1024  # Kafka's broker fetch.max.bytes: a client cannot ask for more
MAX_READERS = 1024  # partition readers one connection keeps (least recently used ones are closed)
CLOSE_CHECK_S = 0.5  # a long poll looks at the listener's closing at least this often
BATCH_OVERHEAD = 61  # a batch's header
START_TTL_S = 1.0
KEEP_OUT_BYTES = 8 * 1024 * 1024  # a connection's output buffer shrinks back after an answer larger than this


class PartitionReader:
    """One partition as one connection reads it: its ring, its segment files, where the next read goes on."""

    def __init__(self, broker, meta, partition: int):
        self.topic_id = meta.id
        ring = broker.ring(meta, partition)
        log = PartitionLog(paths.partition_dir(broker.data_dir, meta.name, partition))
        self.p = PartitionState(TopicPartition(meta.name, partition), ring, log)
        self.reported = None  # the offset of the last CORRUPT_MESSAGE logged
        self._start = (0.0, 0)  # (when, start offset): for log_start_offset, re-read at most every START_TTL_S

    @property
    def ring(self):
        return self.p.ring

    def start(self, fresh: bool = True) -> int:
        """The partition's first offset (one directory listing and a 16-byte read; ``fresh=False``: a
        value at most START_TTL_S old, for log_start_offset in every Fetch answer)."""
        now = time.monotonic()
        if fresh or now - self._start[0] > START_TTL_S:
            self._start = (now, partition_start_offset(self.p.ring, self.p.log))
        return self._start[1]

    def close(self) -> None:
        self.p.release()


class FetchState:
    """What one connection keeps between its fetches: partition readers, scan rows, the output buffer."""

    def __init__(self, session):
        self.broker = session.broker
        self.readers: OrderedDict = OrderedDict()
        self.meta = np.zeros((MAX_ROWS + 1, F.META_COLS), np.int64)
        self.meta_addr = self.meta.ctypes.data
        self.res = np.zeros(1, np.int64)
        self.out = np.empty(1 << 20, np.uint8)
        self.used = 0  # bytes of ``out`` holding this response's batches
        self.scan_ring = native.scan_ring

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()

    def reader(self, meta, partition: int) -> PartitionReader:
        key = (meta.name, partition)
        r = self.readers.get(key)
        if r is not None and (r.topic_id != meta.id or r.ring.deleted()):
            r.close()  # the topic was deleted (and maybe made again): a new incarnation
            del self.readers[key]
            r = None
        if r is None:
            r = self.readers[key] = PartitionReader(self.broker, meta, partition)
        else:
            self.readers.move_to_end(key)
        return r

    def trim(self) -> None:
        """Close the least recently used readers beyond MAX_READERS (after a request: none is in use)."""
        while len(self.readers) > MAX_READERS:
            self.readers.popitem(last=False)[1].close()

    def scan(self, ring, cursor: int, position: int) -> int:
        if self.scan_ring is None:
            self.scan_ring = frames_k.scan_ring
        return self.scan_ring(ring.address, cursor, MAX_ROWS, position, self.meta_addr, self.meta.shape[0])

    def reserve(self, n: int) -> None:
        """Room for ``n`` more bytes after ``used``."""
        if self.used + n > len(self.out):
            new = np.empty(max(self.used + n, 2 * len(self.out)), np.uint8)
            new[: self.used] = self.out[: self.used]
            self.out = new

    def encode(self, buf, rows, budget: int, min_one: bool) -> int:
        """Encode ``rows`` as one batch after ``used``, within ``budget`` bytes (the first record whole
        anyway if ``min_one``). Returns the records encoded (0: none fit), or a ``KO_*`` status."""
        n = len(rows)
        cap = min(budget, 2 * int(rows[:, F.M_LEN].sum()) + BATCH_OVERHEAD)
        if cap > 0:
            self.reserve(cap)
            got = kafka_out.encode_batch(buf, rows, n, self.out, self.used, self.used + cap, self.res)
        else:
            got = kafka_out.KO_TOO_SMALL
            self.res[0] = -1
        if got == kafka_out.KO_TOO_SMALL:
            if not min_one:
                return 0
            need = int(self.res[0])
            if need < 0:  # (no room was tried) the size of the first record alone
                kafka_out.encode_batch(buf, rows, 1, self.out, self.used, self.used, self.res)
                need = int(self.res[0])
            self.reserve(need)
            got = kafka_out.encode_batch(buf, rows, 1, self.out, self.used, self.used + need, self.res)
        if got < 0:
            return got
        self.used += got
        return int(self.res[0])


def _state(session) -> FetchState:
    st = session.state.get(__name__)
    if st is None:
        st = session.state[__name__] = FetchState(session)
        session.on_close.append(st.close)
    return st


def _topic(b, name):
    """The topic's metadata; None if it does not exist or the name is not a topic name (never created here)."""
    try:
        return b.topic(name)
    except InvalidTopicError:
        return None


class PartitionAnswer:
    """One partition of a Fetch: its reader, where its batches lie in the output, its error."""

    __slots__ = ("topic", "partition", "reader", "offset", "max_bytes", "error", "spans", "records", "nbytes")

    def __init__(self, topic, partition, offset, max_bytes):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.max_bytes = max_bytes
        self.reader = None
        self.error = E.NONE
        self.spans = []
        self.records = 0
        self.nbytes = 0


def _read(st: FetchState, a: PartitionAnswer, budget: int, min_one: bool) -> None:
    """Read partition ``a`` on from its offset into ``st.out``, up to ``budget`` bytes."""
    r = a.reader
    p = r.p
    ring = p.ring
    if p.position != a.offset:
        p.position = a.offset  # a seek (or the first fetch): find the place again
        p.cursor = -1
    if a.offset > ring.next_offset() or a.offset < 0:
        a.error = E.OFFSET_OUT_OF_RANGE
        return
    for _attempt in range(64):
        room = budget - a.nbytes
        one = min_one and a.records == 0
        if room <= 0 and not one:
            return
        at = st.used
        if p.cursor < 0:
            rel0 = ring.reclaiming()
            try:
                n, meta, chunk = p.log.read(p.position, MAX_ROWS)
            except CorruptRecordError as e:
                if a.records == 0:
                    _corrupt(st, a, r, str(e))
                return
            if n:
                rows = meta[1: n + 1]
                if int(rows[0, F.M_OFFSET]) > p.position and a.records == 0 and p.position < r.start():
                    a.error = E.OFFSET_OUT_OF_RANGE
                    return
                k = st.encode(chunk, rows, room, one)
                if k <= 0:
                    if k < 0 and a.records == 0:
                        _corrupt(st, a, r, "its header bytes do not parse (on disk)")
                    return
                _took(a, at, st.used, k)
                p.position = int(rows[k - 1, F.M_OFFSET]) + 1
                continue
            if a.records == 0 and p.position < (p.log.segs[0] if p.log.segs else r.start()):
                a.error = E.OFFSET_OUT_OF_RANGE  # below the first segment: retention deleted it
                return
            p.cursor = rel0
        n = st.scan(ring, p.cursor, p.position)
        meta = st.meta
        if n == 0:
            new = int(meta[0, F.MS_POS])
            if new < ring.reclaiming():
                p.cursor = -1  # lapped: what was passed is on disk now
                continue
            p.cursor = new
            return
        rows = meta[1: n + 1]
        k = st.encode(ring.buf, rows, room, one)
        if int(rows[0, F.M_POS]) < ring.reclaiming():
            st.used = at  # the spiller released frames while they were copied: read them from disk
            p.cursor = -1
            continue
        if k <= 0:
            if k < 0 and a.records == 0:
                _corrupt(st, a, r, "its header bytes do not parse (in the ring)")
            return
        _took(a, at, st.used, k)
        if k < n:
            p.cursor = int(rows[k - 1, F.M_POS] + rows[k - 1, F.M_LEN])
        else:
            p.cursor = int(meta[0, F.MS_POS])
        p.position = int(rows[k - 1, F.M_OFFSET]) + 1
    # (64 rounds of lapping or batches: answer what there is; the client fetches again)


def _corrupt(st: FetchState, a: PartitionAnswer, r: PartitionReader, why: str) -> None:
    """Answer CORRUPT_MESSAGE for the record at the position; say so in the log once per reader and offset."""
    a.error = E.CORRUPT_MESSAGE
    if r.reported != r.p.position:
        r.reported = r.p.position
        st.broker.log(f"kafka listener: fetch of topic={a.topic!r} partition={a.partition} offset={r.p.position}: "
                      f"CORRUPT_MESSAGE: {why} (the client cannot read past it; seek beyond it)")


def _took(a: PartitionAnswer, start: int, end: int, k: int) -> None:
    a.spans.append((start, end))
    a.records += k
    a.nbytes += end - start


def _pass(st: FetchState, answers: list, total: list, max_bytes: int) -> bool:
    """Read every partition on once; True if any answered an error."""
    err = False
    for a in answers:
        if a.error != E.NONE or a.reader is None:
            continue
        before = a.nbytes
        room = min(a.max_bytes, max_bytes - total[0])
        _read(st, a, a.nbytes + max(room, 0), total[0] == 0)
        a.offset = a.reader.p.position  # where the next pass goes on
        total[0] += a.nbytes - before
        err = err or a.error != E.NONE
    return err


@handles(FetchRequest, FetchResponse, 4, 12)
def fetch(session, req):
    b = session.broker
    st = _state(session)
    version = req.API_VERSION
    T = FetchResponse.FetchableTopicResponse
    P = T.PartitionData
    if version >= 7 and req.session_id != 0:
        return FetchResponse(throttle_time_ms=0, error_code=FETCH_SESSION_ID_NOT_FOUND, session_id=0, responses=[])
    max_bytes = min(req.max_bytes, MAX_RESPONSE_BYTES) if req.max_bytes > 0 else 0
    answers = []
    for t in req.topics:
        meta = _topic(b, t.topic)
        for fp in t.partitions:
            a = PartitionAnswer(t.topic, fp.partition, fp.fetch_offset, max(fp.partition_max_bytes, 0))
            if meta is None or not 0 <= fp.partition < meta.partitions:
                a.error = E.UNKNOWN_TOPIC_OR_PARTITION
            else:
                try:
                    a.reader = st.reader(meta, fp.partition)
                except Exception as e:  # noqa: BLE001 (a partition deleted meanwhile, out of fds, ...)
                    b.log(f"kafka listener: fetch of topic={t.topic!r} partition={fp.partition}: "
                          f"{type(e).__name__}: {e}")
                    a.error = E.UNKNOWN_TOPIC_OR_PARTITION
            answers.append(a)
    st.used = 0
    total = [0]
    deadline = time.monotonic() + max(req.max_wait_ms, 0) / 1000
    err = _pass(st, answers, total, max_bytes)
    if not err and total[0] < req.min_bytes and answers:
        _long_poll(st, answers, total, max_bytes, req.min_bytes, deadline)
    responses = _responses(st, answers, req, T, P)
    st.trim()
    if len(st.out) > KEEP_OUT_BYTES:
        st.out = np.empty(1 << 20, np.uint8)  # a large answer's buffer is not kept for the connection's life
    return FetchResponse(throttle_time_ms=0, error_code=E.NONE, session_id=0, responses=responses)


def _long_poll(st: FetchState, answers: list, total: list, max_bytes: int, min_bytes: int, deadline: float) -> None:
    """Wait for min_bytes until the deadline, woken by the doorbell producers ring for sleepers."""
    b = st.broker
    ctl = b.bus.ctl
    rings = {id(a.reader.ring): a.reader.ring for a in answers if a.reader is not None and a.error == E.NONE}
    rings = list(rings.values())
    add = native.add_sleepers
    while not b.closing.is_set():
        now = time.monotonic()
        if now >= deadline:
            return
        seen = ctl.doorbell()
        for ring in rings:
            add(ring.address, 1) if add is not None else frames_k.add_sleepers(ring.buf, 1)
        try:
            # look again after counting as a sleeper: a record published before the count was
            # seen here, one published after it rings the doorbell
            if _pass(st, answers, total, max_bytes) or total[0] >= min_bytes:
                return
            ctl.sleep(seen, min(deadline - now, CLOSE_CHECK_S))
        finally:
            for ring in rings:
                add(ring.address, -1) if add is not None else frames_k.add_sleepers(ring.buf, -1)


def _responses(st: FetchState, answers: list, req, T, P) -> list:
    b = st.broker
    by_topic: dict = {}
    out = st.out
    aborted = [] if req.isolation_level == 1 else None
    for a in answers:
        if a.reader is not None:
            ring = a.reader.ring
            hw = ring.next_offset()
            start = a.reader.start(fresh=False)
        else:
            hw = start = -1
        if a.spans:
            records = b"".join(out[s:e].tobytes() for s, e in a.spans)
        else:
            records = b""
        b.counters.fetched_records += a.records
        b.counters.fetched_bytes += a.nbytes
        by_topic.setdefault(a.topic, []).append(P(
            partition_index=a.partition, error_code=a.error, high_watermark=hw, last_stable_offset=hw,
            log_start_offset=start, aborted_transactions=aborted, preferred_read_replica=-1, records=records))
    return [T(topic=name, partitions=parts) for name, parts in by_topic.items()]


# --- ListOffsets ---------------------------------------------------------------------------------------------

EARLIEST = -2
LATEST = -1


@handles(ListOffsetsRequest, ListOffsetsResponse, 1, 6)
def list_offsets(session, req):
    b = session.broker
    st = _state(session)
    T = ListOffsetsResponse.ListOffsetsTopicResponse
    P = T.ListOffsetsPartitionResponse
    topics = []
    for t in req.topics:
        meta = _topic(b, t.name)
        parts = []
        for lp in t.partitions:
            r = None
            if meta is not None and 0 <= lp.partition_index < meta.partitions:
                try:
                    r = st.reader(meta, lp.partition_index)
                except Exception as e:  # noqa: BLE001
                    b.log(f"kafka listener: list offsets of topic={t.name!r} partition={lp.partition_index}: "
                          f"{type(e).__name__}: {e}")
            if r is None:
                parts.append(P(partition_index=lp.partition_index, error_code=E.UNKNOWN_TOPIC_OR_PARTITION,
                               timestamp=-1, offset=-1, leader_epoch=-1))
                continue
            ts = lp.timestamp
            if ts == EARLIEST:
                off, when = r.start(), -1
            elif ts == LATEST:
                off, when = r.ring.next_offset(), -1
            elif ts >= 0:
                hit = offset_for_time(r.ring, r.p.log, ts, st.meta)
                off, when = hit if hit is not None else (-1, -1)
            else:
                off, when = -1, -1  # a special timestamp this version does not know
            parts.append(P(partition_index=lp.partition_index, error_code=E.NONE, timestamp=when, offset=off,
                           leader_epoch=0))
        topics.append(T(name=t.name, partitions=parts))
    st.trim()
    return ListOffsetsResponse(throttle_time_ms=0, topics=topics)
