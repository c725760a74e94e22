"""``Producer``: appends records to partition rings, lock-free, from any process.

A ``Producer`` belongs to one process and may be shared by its threads (as
kafka-python's): the append to a ring is lock-free and atomic between
processes, so between threads too; the rest of its state is the topic
handles (a dict, filled once per topic), the round-robin counter (a race there
only changes which partition an unkeyed record goes to) and caches. Many
producers in many processes may write the same partition at once.
"""

from __future__ import annotations

import numbers
import os
import time
import weakref

import numpy as np

from shmbus.client.handle import BusHandle
from shmbus.core import native
from shmbus.core.headers import as_bytes as _as_bytes, encode_headers
from shmbus.core.config import validate_topic_name
from shmbus.errors import (
    BufferFullError,
    InvalidRecordError,
    RecordTooLargeError,
    ShmbusError,
    StalledWriteError,
    UnknownTopicError,
)
from shmbus.layout import frame as frame_layout
from shmbus.core.partitioner import partition_for_key
from shmbus.records import BatchMetadata, RecordMetadata

_PID = os.getpid()
_SENDERS = weakref.WeakSet()  # producers whose send is a native.Sender (it holds the pid it writes)


def _set_pid_after_fork():
    global _PID
    _PID = os.getpid()
    for prod in list(_SENDERS):
        prod.send.set_pid(_PID)


os.register_at_fork(after_in_child=_set_pid_after_fork)

_KEY_CACHE_MAX = 65536
_time_ns = time.time_ns
_new_tuple = tuple.__new__
_NO_KEYS = np.frombuffer(b"", np.uint8)
# a full ring: tries without sleeping, then sleeps growing by _SPIN_SLEEP_S per that many tries, up to the max
_SPINS_BEFORE_SLEEP = 20
_SPIN_SLEEP_S = 0.0002
_MAX_SPIN_SLEEP_S = 0.005
_TS_END = 1 << 63  # timestamps are int64 ms since the epoch, >= 0


def check_timestamp(ts) -> int:
    """``timestamp_ms`` as an int in [0, 2**63), or InvalidRecordError."""
    if isinstance(ts, bool) or not isinstance(ts, numbers.Integral) or not 0 <= ts < _TS_END:
        raise InvalidRecordError(f"timestamp_ms must be an int >= 0 and < 2**63 (ms since the epoch), or None "
                                 f"for now: timestamp_ms={ts!r}")
    return int(ts)


def _kernels():
    """The numba kernels (kernels/frames.py), imported on first need: numba's import and the
    first kernel load cost ~0.5 s, which a producer that only sends single records never pays
    when the compiled verbs (shmbus/native.py) are there."""
    from shmbus.kernels import frames

    return frames


def _lazy_kernel(name: str):
    """A stand-in that loads kernel ``name`` on its first call, then puts it in its place."""

    def first_call(*args):
        f = _kernels().entry(name)
        globals()["_" + name] = f
        return f(*args)

    return first_call


# the single-record numba kernels, called by their compiled entry points (see kernels/frames.py)
_append_v = _lazy_kernel("append_v")
_append_kv = _lazy_kernel("append_kv")
_append_any = _lazy_kernel("append_any")


def _append_numba(addr, key, value, hdrs, ts, pid):
    """``native.append``'s signature over the numba kernels (SHMBUS_NATIVE=0, or no C build)."""
    if not hdrs and value is not None:
        if key is None:
            return _append_v(addr, value, ts, pid)
        return _append_kv(addr, key, value, ts, pid)
    return _append_any(addr, key if key is not None else b"", -1 if key is None else len(key),
                       value if value is not None else b"", -1 if value is None else len(value), hdrs, ts, pid)


# append(addr, key, value, hdrs, ts, pid) -> offset << 2 | wake bits, or a status (layout/frame.py ST_*)
_append = native.append or _append_numba

_ACKS = ("memory", "disk")


def _as_partition(p) -> int:
    if isinstance(p, bool) or not isinstance(p, numbers.Integral):
        raise TypeError(f"partition must be an int: partition={p!r}")
    return int(p)


class _TopicHandle:
    __slots__ = ("meta", "rings", "addrs", "n", "key_cache", "state", "_words")

    def __init__(self, meta, rings):
        self.meta = meta
        self.rings = rings
        self.addrs = [r.address for r in rings]
        self.n = len(rings)
        self.key_cache = {}
        # what native.Sender reads: int64 [partitions, round-robin next, ring addresses...]
        self.state = bytearray(np.array([self.n, 0, *self.addrs], np.int64).tobytes())
        self._words = memoryview(self.state).cast("q")

    @property
    def rr(self) -> int:
        """The next partition for an unkeyed record (shared with native.Sender)."""
        return self._words[1]

    @rr.setter
    def rr(self, p: int) -> None:
        self._words[1] = p


class Producer:
    """Sends records to topics of one bus (docs/api.md lists every argument).

    ``acks="memory"``: ``send`` returns once the record is in shared memory,
    visible to every reader and safe from any process's death.
    ``acks="disk"``: once it is in a segment file and fsynced.
    """

    def __init__(self, data_dir=None, *, acks: str = "memory", max_block_ms: int = 60000,
                 key_serializer=None, value_serializer=None, _bus=None):
        from shmbus.errors import InvalidConfigError

        if acks not in _ACKS:
            raise InvalidConfigError(f"acks must be 'memory' or 'disk': acks={acks!r}")
        if isinstance(max_block_ms, bool) or not isinstance(max_block_ms, int) or max_block_ms < 0:
            raise InvalidConfigError(f"max_block_ms must be an int >= 0: max_block_ms={max_block_ms!r}")
        for name, f in (("key_serializer", key_serializer), ("value_serializer", value_serializer)):
            if f is not None and not callable(f):
                raise InvalidConfigError(f"{name} must be callable: {name}={f!r}")
        self._own_bus = _bus is None
        self._bus = _bus if _bus is not None else BusHandle(data_dir)
        self.acks = acks
        self._durable = acks == "disk"  # read on every send: a bool, not a string compare
        self.max_block_ms = max_block_ms
        self._key_ser = key_serializer
        self._value_ser = value_serializer
        self._topics: dict[str, _TopicHandle] = {}
        self._closed = False
        self._ctl = self._bus.ctl
        self._fast: dict[str, bytearray] = {}  # topic -> _TopicHandle.state, for native.Sender
        self._shapes: dict = {}  # (rows, width) -> send_batch's index arrays for a 2-D array (_send_rows)
        if native.Sender is not None and key_serializer is None and value_serializer is None and acks == "memory":
            # send's common case in one C call; everything else it hands to the Python send below
            self.send = native.Sender(self._fast, Producer.send.__get__(self), self._ring_bells, RecordMetadata, _PID,
                                      self._stalled)
            _SENDERS.add(self)

    # --- topics ---
    def _topic(self, topic: str) -> _TopicHandle:
        h = self._topics.get(topic)
        if h is None:
            validate_topic_name(topic)
            meta = self._bus.topic_meta(topic)  # raises UnknownTopicError
            rings = [self._bus.ring(meta, p) for p in range(meta.partitions)]
            h = self._topics[topic] = _TopicHandle(meta, rings)
            if not self._closed:
                self._fast[topic] = h.state
        return h

    def _reload(self, topic: str) -> _TopicHandle:
        old = self._topics.pop(topic, None)
        self._fast.pop(topic, None)
        if old is not None:
            self._bus.forget_topic(old.meta)
        return self._topic(topic)

    def _reload_deleted(self, topic: str) -> _TopicHandle:
        """The topic again after an append found its ring deleted (it may have been made anew)."""
        try:
            return self._reload(topic)
        except UnknownTopicError:
            raise UnknownTopicError(f"topic was deleted: topic={topic!r}") from None

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._topic(topic).n))

    # --- sending ---
    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None) -> RecordMetadata:
        """Append one record; returns once it is in shared memory (acks='memory') or on disk.

        With the compiled verbs (shmbus/native.py), a producer without
        serializers and with acks='memory' answers ``send`` with a
        ``native.Sender`` (an instance attribute) which does the common case
        in C and calls this method for everything else. Here, the common
        cases take a short path too: one dict lookup for the topic, one for a
        key's partition, and one call of the append verb.
        """
        if self._closed:
            raise ShmbusError("send on a closed producer (make a new one)")
        if self._value_ser is not None:
            value = self._value_ser(value)
        if self._key_ser is not None and key is not None:
            key = self._key_ser(key)
        h = self._topics.get(topic)
        if h is None:
            h = self._topic(topic)
        if value.__class__ is not bytes and value is not None:
            value = _as_bytes(value, "value")
        if key.__class__ is not bytes and key is not None:
            key = _as_bytes(key, "key")
        if partition is None:
            if key is None:
                w = h._words
                p = w[1]
                w[1] = p + 1 if p + 1 < h.n else 0
            else:
                p = h.key_cache.get(key)
                if p is None:
                    p = partition_for_key(key, h.n)
                    if len(h.key_cache) < _KEY_CACHE_MAX:
                        h.key_cache[key] = p
        else:
            if partition.__class__ is not int:
                partition = _as_partition(partition)
            if not 0 <= partition < h.n:
                raise ValueError(f"partition out of range: topic={topic!r} partition={partition!r} "
                                 f"(it has {h.n} partitions: 0..{h.n - 1})")
            p = partition
        if timestamp_ms is None:
            ts = _time_ns() // 1_000_000
        else:
            ts = timestamp_ms
            if ts.__class__ is not int or not 0 <= ts < _TS_END:
                ts = check_timestamp(ts)
        # (append refuses a record over max.message.bytes, read from the ring's header)
        r = _append(h.addrs[p], key, value, encode_headers(headers) if headers else b"", ts, _PID)
        if r < 0:
            r, h = self._send_slow(topic, p, key, value, headers, ts, r)
        if r & 3:
            self._ring_bells(r)
        if self._durable:
            self._wait_durable(h.rings[p], r >> 2, topic, p)
        return _new_tuple(RecordMetadata, (topic, p, r >> 2, ts))  # a NamedTuple without its Python __new__

    def send_async(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        """``send`` as a ``concurrent.futures.Future`` that is already done (the record is written
        when this returns): the shape of a Kafka-cluster producer's fast path (``shmbus.connect``),
        so that one application runs on both backends. Errors raise here, as from ``send``."""
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(self.send(topic, value, key, headers, partition, timestamp_ms))
        return fut

    def _too_large(self, ring, topic, key, value, hdrs):
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0) + len(hdrs)
        raise RecordTooLargeError(
            f"record too large: bytes={size} max.message.bytes={ring.max_message_bytes()} topic={topic!r} "
            f"(raise the topic's max.message.bytes with alter_topic_config, or split the record)")

    def _stalled(self, topic, p, sent: str = "") -> None:
        """Raise for an append whose claim the supervisor fenced (ST_STALLED): nothing of it was written."""
        try:
            timeout = self._bus.topic_meta(topic).config.get("unblock.timeout.ms")
        except Exception:  # noqa: BLE001 (deleted meanwhile: the message still says what happened)
            timeout = "?"
        raise StalledWriteError(
            f"record not written: this process stalled between claiming ring space and publishing for longer "
            f"than unblock.timeout.ms={timeout}, and the supervisor gave the space to the readers: "
            f"topic={topic!r} partition={p}{sent} (send it again; if stalls this long are expected, "
            f"raise the topic's unblock.timeout.ms with alter_topic_config)")
    def _why_full(self) -> str:
        """The likely cause of a ring that stayed full, for BufferFullError."""
        failing = self._ctl.spill_failure(self._bus.data_dir)
        if failing:
            return f"{failing}: free space there; the ring empties once spilling works again; `shmbus status`"
        return "is the supervisor running? `shmbus status`; a larger ring.bytes absorbs longer bursts"

    def _ring_bells(self, bits: int) -> None:
        """Wake who an append asks for: bit 0 the readers' doorbell, bit 1 the supervisor's spill bell."""
        if bits & 1:
            self._ctl.ring_doorbell()
        if bits & 2:
            self._ctl.ring_spill_bell()

    def _send_slow(self, topic, p, key, value, headers, ts, r):
        """A full ring (wait up to max_block_ms), a deleted topic, or a record too large for the ring."""
        hdrs = encode_headers(headers) if headers else b""
        deadline = time.monotonic() + self.max_block_ms / 1000.0
        spins = 0
        while True:
            if r == frame_layout.ST_OVER_MAX or r == frame_layout.ST_TOO_LARGE:
                ring = (self._topics.get(topic) or self._topic(topic)).rings[p]
                if r == frame_layout.ST_OVER_MAX:
                    self._too_large(ring, topic, key, value, hdrs)
                frame = frame_layout.frame_length(len(key) if key is not None else -1,
                                                  len(value) if value is not None else -1, len(hdrs))
                raise RecordTooLargeError(
                    f"record too large for the ring: frame_bytes={frame} ring.bytes={ring.ring_bytes} topic={topic!r} "
                    f"(a record may take at most half the ring; recreate the topic with a larger ring.bytes)")
            spins += 1
            h = self._retry_or_raise(r, topic, p, deadline, spins)
            r = _append(h.addrs[p], key, value, hdrs, ts, _PID)
            if r >= 0:
                return r, h

    def _retry_or_raise(self, r: int, topic: str, p: int, deadline: float, spins: int, progress=None) -> _TopicHandle:
        """After an append into partition ``p`` answered status ``r`` (< 0; a record too large is the
        caller's): raise the error it means, or return the topic handle to append with again.

        ``ST_STALLED`` raises StalledWriteError; ``ST_DELETED`` reloads the topic (it may have been
        made anew); ``ST_FULL`` rings the spill bell and, after the first few tries, sleeps a little,
        raising BufferFullError once ``deadline`` passed. ``progress`` is (records written, records
        asked) of a batch, for the messages.
        """
        if r == frame_layout.ST_STALLED:
            self._stalled(topic, p, "" if progress is None else
                          f" written_by_this_call={progress[0]} of {progress[1]} records for this partition")
        if r == frame_layout.ST_DELETED:
            h = self._reload_deleted(topic)
            if p >= h.n:
                raise UnknownTopicError(f"partition no longer exists: topic={topic!r} partition={p}")
            return h
        h = self._topics.get(topic) or self._topic(topic)
        self._ctl.ring_spill_bell()
        now = time.monotonic()
        if now >= deadline:
            sent = (f"ring.bytes={h.rings[p].ring_bytes}" if progress is None
                    else f"sent={progress[0]} of {progress[1]}")
            raise BufferFullError(
                f"ring full for max_block_ms: topic={topic!r} partition={p} max_block_ms={self.max_block_ms} "
                f"{sent} ({self._why_full()})")
        if spins > _SPINS_BEFORE_SLEEP:
            time.sleep(min(_SPIN_SLEEP_S * (spins // _SPINS_BEFORE_SLEEP), _MAX_SPIN_SLEEP_S, deadline - now))
        return h

    def _wait_durable(self, ring, off: int, topic: str, p: int, deadline=None) -> None:
        """Block until the supervisor has fsynced ``off`` (acks='disk')."""
        if deadline is None:
            deadline = time.monotonic() + self.max_block_ms / 1000.0
        want = off + 1
        i = 0
        while ring.durable() < want:
            ring.want_durable(want)
            if i % 20 == 0:
                self._ctl.ring_spill_bell()
            if time.monotonic() > deadline:
                failing = self._ctl.spill_failure(self._bus.data_dir)
                raise BufferFullError(
                    f"record not fsynced within max_block_ms: topic={topic!r} partition={p} offset={off} "
                    f"max_block_ms={self.max_block_ms} ("
                    + (f"{failing}: free space there" if failing else
                       "acks='disk' needs a running supervisor: `shmbus status`") + ")")
            time.sleep(0.0002 if i < 50 else 0.002)
            i += 1

    def _wait_batch_durable(self, topic: str, h: _TopicHandle, runs, parts, offsets) -> None:
        """acks='disk': block until every partition a batch went to has fsynced its last record.

        ``runs`` ([(partition, start, stop)], in batch order) when the batch went in contiguous
        runs, else None and ``parts`` names each record's partition.
        """
        if runs is not None:
            last = [(p, int(offsets[b - 1])) for p, a, b in runs if b > a]
        else:
            last = [(int(p), int(offsets[parts == p].max())) for p in np.unique(parts)]
        for p, off in last:
            self._wait_durable(h.rings[p], off, topic, p)

    @staticmethod
    def _partition_runs(topic: str, h: _TopicHandle, n: int, partition) -> list:
        """A batch of ``n`` records without keys as contiguous runs [(partition, start, stop)], in order.

        All in ``partition`` when given; else spread evenly, one run per partition, starting at the
        round-robin partition (which moves on by one per batch). Runs are never empty unless n is 0.
        """
        if partition is not None:
            partition = _as_partition(partition)
            if not 0 <= partition < h.n:
                raise ValueError(f"partition out of range: topic={topic!r} partition={partition!r} "
                                 f"(it has {h.n} partitions)")
            return [(partition, 0, n)]
        p0 = h.rr
        h.rr = (p0 + 1) % h.n
        runs = []
        for j in range(h.n):
            a, b = (j * n) // h.n, ((j + 1) * n) // h.n
            if b > a:
                runs.append(((p0 + j) % h.n, a, b))
        return runs

    @staticmethod
    def _key_partitions(h: _TopicHandle, keys: list) -> np.ndarray:
        """Each record's partition by its key (murmur2, cached); round-robin for a None key."""
        n = len(keys)
        parts = np.empty(n, np.int64)
        cache = h.key_cache
        rr = h.rr
        for i, k in enumerate(keys):
            if k is None:
                parts[i] = rr
                rr = rr + 1 if rr + 1 < h.n else 0
                continue
            p = cache.get(k)
            if p is None:
                p = partition_for_key(k, h.n)
                if len(cache) < _KEY_CACHE_MAX:
                    cache[k] = p
            parts[i] = p
        h.rr = rr
        return parts

    def send_batch(self, topic, values, keys=None, partition=None) -> BatchMetadata:
        """Many records in one call. ``values``: a list of bytes-likes or a 2-D uint8 array."""
        if self._closed:
            raise ShmbusError("send_batch on a closed producer (make a new one)")
        h = self._topic(topic)
        if (keys is None and values.__class__ is np.ndarray and values.ndim == 2 and values.dtype == np.uint8
                and native.append_batch is not None):
            return self._send_rows(topic, h, values, partition)
        data, starts, lens = self._value_columns(values)
        n = len(lens)
        ks, kdata, kstarts, klens = self._key_columns(keys, n)
        sizes = np.maximum(lens, 0) + np.maximum(klens, 0)
        limit = h.rings[0].max_message_bytes()
        if n and int(sizes.max()) > limit:
            i = int(np.argmax(sizes))
            raise RecordTooLargeError(
                f"record too large: index={i} bytes={int(sizes[i])} max.message.bytes={limit} "
                f"topic={topic!r} (nothing of the batch was sent)")
        # partitions: contiguous runs where we can (one claim each, no gathering)
        if ks is not None and partition is None:
            runs = None
            parts = self._key_partitions(h, ks)
        else:
            runs = self._partition_runs(topic, h, n, partition)
            parts = np.empty(n, np.int64)
            for p, a, b in runs:
                parts[a:b] = p
        offsets = np.full(n, -1, np.int64)
        ts = time.time_ns() // 1_000_000
        if n == 0:
            return BatchMetadata(topic, parts, offsets)
        if runs is not None:
            for p, a, b in runs:
                self._append_batch(topic, p, data, starts[a:b], lens[a:b], kdata, kstarts[a:b], klens[a:b], ts,
                                   offsets[a:b])
        else:
            for p in np.unique(parts):
                p = int(p)
                sel = np.nonzero(parts == p)[0]
                out = np.full(len(sel), -1, np.int64)
                self._append_batch(topic, p, data, starts[sel], lens[sel], kdata, kstarts[sel], klens[sel], ts, out)
                offsets[sel] = out
        if self._durable:
            self._wait_batch_durable(topic, h, runs, parts, offsets)
        return BatchMetadata(topic, parts, offsets)

    def _value_columns(self, values):
        """A batch's values as (bytes, starts, lengths), a length of -1 for a None value."""
        if isinstance(values, np.ndarray):
            if values.ndim != 2 or values.dtype != np.uint8:
                raise TypeError(f"values as an array must be 2-D uint8: ndim={values.ndim} dtype={values.dtype}")
            n, w = values.shape
            data = np.ascontiguousarray(values).reshape(-1)[:]
            data.flags.writeable = False  # one compiled kernel for both input kinds (read-only data)
            return data, np.arange(n, dtype=np.int64) * w, np.full(n, w, np.int64)
        if self._value_ser is not None:
            values = [self._value_ser(v) for v in values]
        vals = [v if type(v) is bytes or v is None else _as_bytes(v, "value") for v in values]
        n = len(vals)
        lens = np.fromiter((len(v) if v is not None else -1 for v in vals), np.int64, n)
        data = np.frombuffer(b"".join(v for v in vals if v is not None), np.uint8)
        starts = np.zeros(n, np.int64)
        if n:
            np.cumsum(np.maximum(lens, 0)[:-1], out=starts[1:])
        return data, starts, lens

    def _key_columns(self, keys, n: int):
        """A batch's keys as (the keys as bytes or None, bytes, starts, lengths); no keys: (None, ...)."""
        if keys is None:
            return None, _NO_KEYS, np.zeros(n, np.int64), np.full(n, -1, np.int64)
        if self._key_ser is not None:
            keys = [self._key_ser(k) if k is not None else None for k in keys]
        ks = [k if type(k) is bytes or k is None else _as_bytes(k, "key") for k in keys]
        if len(ks) != n:
            raise ValueError(f"keys and values differ in length: keys={len(ks)} values={n}")
        klens = np.fromiter((len(k) if k is not None else -1 for k in ks), np.int64, n)
        kdata = np.frombuffer(b"".join(k for k in ks if k is not None), np.uint8)
        kstarts = np.zeros(n, np.int64)
        if n:
            np.cumsum(np.maximum(klens, 0)[:-1], out=kstarts[1:])
        return ks, kdata, kstarts, klens

    def _send_rows(self, topic, h, values, partition) -> BatchMetadata:
        """send_batch of a 2-D uint8 array without keys (one record per row): the short path.

        The per-shape index arrays are remembered, and the compiled append
        reads the rows where they are, so a call costs a few numpy calls
        plus one append per partition run.
        """
        n, w = values.shape
        limit = h.rings[0].max_message_bytes()
        if w > limit:
            raise RecordTooLargeError(
                f"record too large: index=0 bytes={w} max.message.bytes={limit} "
                f"topic={topic!r} (nothing of the batch was sent)")
        data = values if values.flags.c_contiguous else np.ascontiguousarray(values)
        shape = self._shapes.get((n, w))
        if shape is None:
            starts = np.arange(n, dtype=np.int64) * w
            lens = np.full(n, w, np.int64)
            klens = np.full(n, -1, np.int64)
            kstarts = np.zeros(n, np.int64)
            for a in (starts, lens, klens, kstarts):
                a.flags.writeable = False
            if len(self._shapes) >= 16:
                self._shapes.clear()
            shape = self._shapes[(n, w)] = (starts, lens, klens, kstarts)
        starts, lens, klens, kstarts = shape
        runs = self._partition_runs(topic, h, n, partition)
        offsets = np.empty(n, np.int64)
        parts = np.empty(n, np.int64)
        if n == 0:
            return BatchMetadata(topic, parts, offsets)
        ts = _time_ns() // 1_000_000
        for p, a, b in runs:
            self._append_batch(topic, p, data, starts[a:b], lens[a:b], _NO_KEYS, kstarts[a:b], klens[a:b], ts,
                               offsets[a:b])
            parts[a:b] = p
        if self._durable:
            self._wait_batch_durable(topic, h, runs, parts, offsets)
        return BatchMetadata(topic, parts, offsets)

    def _append_batch(self, topic, p, data, starts, lens, kdata, kstarts, klens, ts, out):
        i = 0
        n = len(starts)
        deadline = None
        spins = 0
        h = self._topics.get(topic) or self._topic(topic)
        while i < n:
            ring = h.rings[p]
            if native.append_batch is not None:
                r = native.append_batch(ring.address, data, starts, lens, kdata, kstarts, klens, ts, _PID, i, out)
            else:
                r = _kernels().append_batch(ring.buf, data, starts, lens, kdata, kstarts, klens, ts, _PID, i, out)
            if r >= 0:
                i += r >> 2
                if r & 3:
                    self._ring_bells(r)
                spins = 0
                continue
            if r == frame_layout.ST_TOO_LARGE:
                raise RecordTooLargeError(
                    f"record too large for the ring: topic={topic!r} ring.bytes={ring.ring_bytes} "
                    f"(a record may take at most half the ring); records before index {i} were sent")
            if deadline is None:
                deadline = time.monotonic() + self.max_block_ms / 1000.0
            spins += 1
            h = self._retry_or_raise(r, topic, p, deadline, spins, (i, n))

    def flush(self, timeout=None) -> None:
        """Records are visible once ``send`` returns; with acks='disk' they are on disk too.

        So there is nothing to wait for; kept for kafka-python's shape.
        """
        return None

    def close(self, timeout=None) -> None:
        if self._closed:
            return
        self._closed = True
        self._topics.clear()
        self._fast.clear()
        if self._own_bus:
            self._bus.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Producer"]
