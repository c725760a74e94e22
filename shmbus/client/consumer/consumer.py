"""``Consumer``: reads partitions straight out of the rings, and from disk behind them.

The class composes one mixin per job (see the package's ``__init__``): which
partitions it reads (assignment.py), where in them (offsets.py), how records
are read (fetch.py) and how it waits for them (wait.py). This module holds
construction, ``poll`` and ``poll_batch``, iteration and closing.
"""

from __future__ import annotations

import time

import numpy as np

from shmbus.client.consumer.assignment import AssignmentMixin
from shmbus.client.consumer.config import check_config
from shmbus.client.consumer.fetch import NOTHING, FetchMixin
from shmbus.client.consumer.guard import get_ident, one_thread, refuse_second_thread
from shmbus.client.consumer.iteration import IterationMixin
from shmbus.client.consumer.offsets import OffsetsMixin
from shmbus.client.consumer.partition import PartitionState
from shmbus.client.consumer.wait import WaitMixin, kernels
from shmbus.client.handle import BusHandle
from shmbus.core import native
from shmbus.errors import ShmbusError
from shmbus.layout import frame
from shmbus.records import TopicPartition


class Consumer(AssignmentMixin, OffsetsMixin, FetchMixin, WaitMixin, IterationMixin):
    """Reads records from partitions of one bus (docs/api.md lists every argument).

    Extra keywords: ``spin_us`` (default 100): how long a blocking poll spins
    before it sleeps. Longer buys latency for CPU. ``load_kernels`` (default
    True) matters only without the compiled verbs (``SHMBUS_NATIVE=0`` or no C
    build): it loads the numba kernels of the read path at construction, ~0.5 s
    once per process, rather than at the first read that needs them, which
    would stall that poll mid-stream. With the compiled verbs a consumer
    imports no numba and starts in ~30 ms.
    """

    def __init__(self, *topics, data_dir=None, group_id=None, auto_offset_reset="latest",
                 enable_auto_commit=True, auto_commit_interval_ms=5000, max_poll_records=500,
                 partition_assignment_strategy="range", session_timeout_ms=10000,
                 max_poll_interval_ms=300000, consumer_timeout_ms=None, key_deserializer=None,
                 value_deserializer=None, spin_us=100, load_kernels=True, _bus=None):
        strategies = check_config(auto_offset_reset, partition_assignment_strategy, max_poll_records,
                                  auto_commit_interval_ms, session_timeout_ms, max_poll_interval_ms,
                                  consumer_timeout_ms, spin_us)
        self._token = [True]  # taken by the thread inside a public method (see guard.py)
        self._owner = None  # that thread's ident, on the paths that may re-enter
        self._member = None  # group membership (client/group_member.py) when group_id is set
        self._own_bus = _bus is None
        self._bus = _bus if _bus is not None else BusHandle(data_dir)
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.consumer_timeout_ms = consumer_timeout_ms
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self._spin_s = spin_us / 1e6
        self._spin_cap_ns = min(int(spin_us * 1000), 100_000)  # poll's compiled spin, per call
        self._plain = key_deserializer is None and value_deserializer is None  # records as they are stored
        self._parts: dict[TopicPartition, PartitionState] = {}
        self._assigned: list[PartitionState] = []
        self._single: PartitionState | None = None  # the only assigned partition, if there is one: poll's short path
        self._next_partition = 0  # where the next poll's round over the partitions starts
        self._subscription: list[str] | None = None
        self._meta = np.zeros((4097, frame.META_COLS), np.int64)  # a scan's rows (row 0: its state)
        self._meta_cell = memoryview(self._meta)  # read as cell[row, column]
        self._meta_addr = self._meta.ctypes.data
        self._meta_rows = self._meta.shape[0]
        # the ring scans by address: C (one function, the copying form with two more arguments), or
        # the numba entry points loaded on first use
        self._scan_ring = native.scan_ring or self._lazy("scan_ring")
        self._scan_copy_ring = native.scan_ring or self._lazy("scan_copy_ring")
        self._values = np.empty(1 << 20, np.uint8)
        self._iter_buf: list = []
        self._closed = False
        if native.scan is None and (load_kernels or native.Reader is None):
            kernels.load_reader_kernels()  # numba (~0.7 s), so that no poll stalls on it mid-stream
        if group_id is not None:
            from shmbus.client.group_member import GroupMember

            try:
                self._member = GroupMember(self, group_id, strategies, session_timeout_ms, max_poll_interval_ms,
                                           enable_auto_commit, auto_commit_interval_ms)
            except BaseException:
                if self._own_bus:
                    self._bus.close()
                raise
        if topics:
            self.subscribe(list(topics))

    def _lazy(self, name):
        """Load kernel ``name`` on first use (tens of ms), then call it directly."""

        def first_call(*args):
            f = kernels.entry(name)
            setattr(self, "_" + name, f)
            return f(*args)

        return first_call

    # --- polling ---
    def poll(self, timeout_ms=0, max_records=None, update_offsets=True) -> dict:
        """{TopicPartition: [ConsumerRecord, ...]}; waits up to ``timeout_ms`` for the first record."""
        token = self._token  # (the guard of one_thread, inline: this is the hot path)
        try:
            t = token.pop()
        except IndexError:
            if self._owner != get_ident():
                refuse_second_thread("poll")
            return self._poll(timeout_ms, max_records, False)  # re-entered: iteration, a listener callback
        try:
            single = self._single
            if single is not None and single.reader is not None and self._plain and timeout_ms.__class__ is int \
                    and timeout_ms >= 0 and not single.paused:
                # compiled: the records at the cursor, after a spin of up to spin_us for one to come
                n = self.max_poll_records if max_records is None else max_records
                if n.__class__ is int and n >= 1:
                    # (the spin is at most 100 µs per call, below any timeout but 0: it holds the GIL;
                    # a longer spin_us goes on in _poll. No min(): a builtin call costs as much as the rest of this wrapper.)
                    spin = self._spin_cap_ns if timeout_ms else 0
                    got = single.reader.poll(n, spin)
                    if got:
                        return got
                    if got is not None and not timeout_ms:
                        return {}  # nothing published at the cursor, and no time to wait
                    return self._poll(timeout_ms, max_records, False, spin / 1e9)  # (no second spin of the same)
            return self._poll(timeout_ms, max_records, False)
        finally:
            self._owner = None
            token.append(t)

    @one_thread
    def poll_batch(self, timeout_ms=0, max_records=None) -> dict:
        """{TopicPartition: RecordBatch}: the fast path, numpy arrays and no object per record."""
        return self._poll(timeout_ms, max_records, True)

    def _poll(self, timeout_ms, max_records, batch: bool, spun_s: float = 0.0) -> dict:
        self._owner = get_ident()  # (listeners run in here and may call back)
        if self._closed:
            raise ShmbusError("poll on a closed consumer (make a new one)")
        if timeout_ms.__class__ is not int or timeout_ms < 0:
            if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
                raise ValueError(f"timeout_ms must be a number >= 0: timeout_ms={timeout_ms!r}")
        budget = max_records if max_records is not None else self.max_poll_records
        if budget.__class__ is not int or budget < 1:
            raise ValueError(f"max_records must be an int >= 1: max_records={max_records!r}")
        if not batch:
            budget = min(budget, 1024)
        deadline = None
        member = self._member
        while True:
            if member is not None:
                member.before_poll(self)  # rebalances and auto-commit; keeps _single None (group_member.py)
            single = self._single
            if single is not None and not batch and not single.paused:
                if single.reader is not None:
                    got = self._take_one(single, budget)  # one record, or nothing there, without a scan
                elif self._idle(single):
                    got = NOTHING
                else:
                    got = self._fetch(single, budget, False) or NOTHING  # the general path
                if got:
                    return {single.tp: got}
                if got is not None:  # nothing there
                    if timeout_ms == 0:
                        return {}
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout_ms / 1000.0
                    if now >= deadline:
                        return {}
                    self._wait(deadline, spun_s)
                    spun_s = 0.0
                    continue
            out = {}
            parts = self._assigned
            n = len(parts)
            left = budget
            for k in range(n):
                p = parts[(self._next_partition + k) % n]
                if p.paused:
                    continue
                reader = p.reader
                if batch or reader is None:
                    if self._idle(p):
                        continue
                    got = self._fetch(p, left, batch)
                elif self._plain:
                    got = reader.take_many(left, 0)  # the records at the cursor, compiled
                    if got.__class__ is not list:
                        got = self._fetch(p, left, batch) if got is None else None
                else:
                    got = self._take_one(p, left)  # one record, or nothing there, without a scan
                    if got is None:
                        got = self._fetch(p, left, batch)
                if got:
                    out[p.tp] = got
                    left -= len(got)
                    if left <= 0:
                        break
            if n:
                self._next_partition = (self._next_partition + 1) % n
            if out or timeout_ms == 0:
                return out
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_ms / 1000.0
            if now >= deadline:
                return out
            self._wait(deadline, spun_s)
            spun_s = 0.0

    # --- lifecycle ---
    @one_thread
    def close(self, autocommit=True) -> None:
        if self._closed:
            return
        if self._member is not None:
            try:
                self._member.close(self, autocommit)  # commit, on_partitions_revoked, leave the group
            except ShmbusError:
                pass
        self._closed = True
        for p in self._assigned:
            p.release()
        self._parts = {}
        self._assigned = []
        self._single = None
        if self._own_bus:
            self._bus.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Consumer"]
