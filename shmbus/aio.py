"""asyncio clients in aiokafka's shape: :class:`AIOProducer` and :class:`AIOConsumer`.

::

    from shmbus.aio import AIOProducer, AIOConsumer

    async with AIOProducer() as p:
        md = await p.send_and_wait("prices", b"42.0", key=b"AAPL")
    async with AIOConsumer("prices", group_id="g", auto_offset_reset="earliest") as c:
        async for record in c:
            ...

They wrap the shared-memory :class:`~shmbus.Producer` and
:class:`~shmbus.Consumer` and take the same arguments. What never waits runs
on the event loop's thread, at the speed of the synchronous clients: a send
into a ring with room, a poll that finds records. What waits does not block
the loop:

- a send into a full ring retries with short sleeps on the loop until
  ``max_block_ms`` (then ``BufferFullError``); ``acks="disk"`` sends, which
  wait for an fsync, run on the client's one worker thread;
- a consumer with nothing to read waits on that worker thread, in steps that
  double from 50 ms to 400 ms while nothing comes, also across calls
  (``WAIT_STEP_MS``; a new record ends the wait at once), so that ``commit``, ``seek`` and ``stop`` get
  their turn within one step, and an idle consumer wakes a few times a second.

Every call into the wrapped consumer is made by one thread at a time, in
order. Records that a cancelled ``getone``/``getmany`` had already received are
returned by the next call, never dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time

from shmbus.errors import BufferFullError, ConsumerStoppedError

WAIT_STEP_MS = (50, 400)  # a waiting consumer's calls on the worker thread: the first, and the longest
FULL_SLEEP_S = (0.0005, 0.02)  # a send into a full ring sleeps this long, doubling, between tries


def _nothing() -> None:
    return None


class _Client:
    """What both clients share: the synchronous client, made on ``start()`` by the one worker thread."""

    def __init__(self, make):
        self._make = make
        self._sync = None  # the Producer or Consumer, between start() and stop()
        self._ex = None
        self._stopped = False

    def _client(self):
        if self._sync is None:
            what = "stopped" if self._stopped else "not started"
            name = type(self).__name__
            raise ConsumerStoppedError(f"the {name} is {what} (`await {name[3:].lower()}.start()` or `async with`)")
        return self._sync

    async def start(self) -> None:
        """Open it (a first use on a machine may start the supervisor: seconds); the Consumer joins its group."""
        if self._sync is not None:
            return
        if self._stopped:
            raise ConsumerStoppedError(f"this {type(self).__name__} was stopped: make a new one")
        self._ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"shmbus-{type(self).__name__}")
        try:
            self._sync = await asyncio.get_running_loop().run_in_executor(self._ex, self._make)
        except BaseException:
            self._ex.shutdown(wait=False)
            self._ex = None
            raise

    async def _stop(self, close_on_worker: bool) -> None:
        self._stopped = True
        sync, self._sync = self._sync, None
        if sync is None:
            return
        loop = asyncio.get_running_loop()
        try:
            if close_on_worker:
                await loop.run_in_executor(self._ex, sync.close)
            else:
                await loop.run_in_executor(self._ex, _nothing)  # (the worker's calls ended)
                sync.close()  # (on the loop's thread: no call runs meanwhile)
        finally:
            self._ex.shutdown(wait=False)

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class AIOProducer(_Client):
    """``AIOProducer(data_dir=None, *, acks="memory", max_block_ms=60000, key_serializer=None,
    value_serializer=None)``: a :class:`~shmbus.Producer` for asyncio. ``await start()`` (or
    ``async with``) opens it; ``await stop()`` closes it."""

    def __init__(self, data_dir=None, **config):
        from shmbus.client.producer import Producer

        super().__init__(functools.partial(Producer, data_dir, **{**config, "max_block_ms": 0}))
        self.max_block_ms = config.get("max_block_ms", 60000)
        self.acks = config.get("acks", "memory")

    async def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
        """Send one record; returns a future whose result is its ``RecordMetadata`` (done at once with
        ``acks="memory"``: the record is in shared memory when this returns)."""
        md = await self._send(topic, value, key, partition, timestamp_ms, headers)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(md)
        return fut

    async def send_and_wait(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
        """Send one record; returns its ``RecordMetadata``."""
        return await self._send(topic, value, key, partition, timestamp_ms, headers)

    async def send_batch(self, topic, values, keys=None, partition=None):
        """Many records in one call, as ``Producer.send_batch``; returns its ``BatchMetadata``."""
        p = self._client()
        if self.acks == "disk":
            return await asyncio.get_running_loop().run_in_executor(
                self._ex, functools.partial(p.send_batch, topic, values, keys=keys, partition=partition))
        try:
            return p.send_batch(topic, values, keys=keys, partition=partition)
        except BufferFullError:
            return await self._retry_full(topic, functools.partial(p.send_batch, topic, values, keys=keys,
                                                                   partition=partition))

    async def _send(self, topic, value, key, partition, timestamp_ms, headers):
        p = self._client()
        if self.acks == "disk":  # (the fsync waits: on the worker thread)
            return await asyncio.get_running_loop().run_in_executor(
                self._ex, functools.partial(p.send, topic, value, key, headers, partition, timestamp_ms))
        try:
            return p.send(topic, value, key, headers, partition, timestamp_ms)  # (a ring with room: at once)
        except BufferFullError:
            return await self._retry_full(topic, functools.partial(p.send, topic, value, key, headers, partition,
                                                                   timestamp_ms))

    async def _retry_full(self, topic, call):
        """After a first ``call()`` found the ring full: ``call()`` again, sleeping on the loop between tries,
        until the ring has room or ``max_block_ms`` passed (the synchronous producer was made not to wait)."""
        deadline = time.monotonic() + self.max_block_ms / 1000
        sleep = FULL_SLEEP_S[0]
        while True:
            await asyncio.sleep(sleep)
            try:
                return call()
            except BufferFullError as e:
                if time.monotonic() >= deadline:
                    raise BufferFullError(
                        f"ring full for max_block_ms: topic={topic!r} max_block_ms={self.max_block_ms} (is the "
                        f"supervisor running? `shmbus status`; a larger ring.bytes absorbs longer bursts)") from e
            sleep = min(sleep * 2, FULL_SLEEP_S[1])

    async def flush(self, timeout=None) -> None:
        """Wait for the sends in progress (a record is in shared memory, or with ``acks="disk"`` on disk,
        once its send returned: there is nothing else to wait for)."""
        self._client()
        await asyncio.get_running_loop().run_in_executor(self._ex, _nothing)

    async def stop(self) -> None:
        """Wait for the sends in progress, then close (idempotent). A send still retrying into a full ring
        raises ShmbusError."""
        await self._stop(close_on_worker=False)


class AIOConsumer(_Client):
    """``AIOConsumer(*topics, data_dir=None, group_id=None, ...)``: a :class:`~shmbus.Consumer` for
    asyncio, with the same arguments. ``await start()`` (or ``async with``) opens it and joins the
    group; ``await stop()`` commits (with ``enable_auto_commit``) and leaves."""

    def __init__(self, *topics, data_dir=None, **config):
        from shmbus.client.consumer import Consumer

        # (no spin: a wait runs on the worker thread, where spinning only burns a core)
        super().__init__(functools.partial(Consumer, *topics, data_dir=data_dir, **{"spin_us": 0, **config}))
        self._busy = None  # the worker thread's call in progress (a wait), if any
        self._kept: dict = {}  # records a cancelled wait received: the next getone/getmany returns them
        self._step = WAIT_STEP_MS[0]  # the next wait step (it grows while the consumer is idle)

    # --- the one thread at a time ---
    def _now(self, fn, *args):
        """Call the consumer from the loop's thread: at once when the worker thread is idle, else after
        its call (at most one wait step)."""
        c = self._client()
        if self._busy is None or self._busy.done():
            return getattr(c, fn)(*args)
        return self._ex.submit(getattr(c, fn), *args).result()

    async def _later(self, fn, *args):
        """Call the consumer on the worker thread; the loop goes on meanwhile. The result of a call whose
        awaiting task is cancelled is kept for the next getone/getmany (records are never dropped)."""
        c = self._client()
        fut = asyncio.get_running_loop().run_in_executor(self._ex, functools.partial(getattr(c, fn), *args))
        self._busy = fut
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fn == "poll":
                fut.add_done_callback(self._keep)
            raise

    def _keep(self, fut) -> None:
        if not fut.cancelled() and fut.exception() is None:
            for tp, recs in fut.result().items():
                self._kept.setdefault(tp, []).extend(recs)

    async def stop(self) -> None:
        """Close the consumer (idempotent); a waiting ``getone``/``getmany`` raises ConsumerStoppedError, and
        ``async for`` ends."""
        await self._stop(close_on_worker=True)

    # --- reading ---
    async def getmany(self, *partitions, timeout_ms=0, max_records=None) -> dict:
        """{TopicPartition: [ConsumerRecord]}: what is there, else what comes within ``timeout_ms``
        (of ``partitions`` only, if given)."""
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise ValueError(f"timeout_ms must be a number >= 0: timeout_ms={timeout_ms!r}")
        kept = self._take_kept(partitions)
        if kept:
            return kept
        others = self._pause_others(partitions)
        try:
            got = self._now("poll", 0, max_records)
            if got or not timeout_ms:
                return got
            deadline = time.monotonic() + timeout_ms / 1000
            step = self._step
            while True:
                if self._sync is None:
                    raise ConsumerStoppedError("the AIOConsumer was stopped while it waited")
                left_ms = (deadline - time.monotonic()) * 1000
                if left_ms <= 0:
                    return {}
                got = await self._later("poll", max(1, int(min(left_ms, step))), max_records)
                if got:
                    self._step = WAIT_STEP_MS[0]
                    return got
                step = self._step = min(step * 2, WAIT_STEP_MS[1])
        finally:
            if others and self._sync is not None:
                self._now("resume", *others)

    async def getone(self, *partitions):
        """The next record (of ``partitions`` only, if given), waiting for one as long as it takes."""
        while True:
            got = await self.getmany(*partitions, timeout_ms=60_000, max_records=1)
            first = None
            for tp, recs in got.items():  # (more than one: records kept from a cancelled wait, handed out singly)
                if first is None and recs:
                    first, recs = recs[0], recs[1:]
                if recs:
                    self._kept[tp] = recs + self._kept.get(tp, [])
            if first is not None:
                return first

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.getone()
        except ConsumerStoppedError:
            raise StopAsyncIteration from None

    def _take_kept(self, partitions) -> dict:
        if not self._kept:
            return {}
        want = set(partitions) if partitions else None
        out = {tp: recs for tp, recs in self._kept.items() if want is None or tp in want}
        for tp in out:
            del self._kept[tp]
        return out

    def _pause_others(self, partitions) -> list:
        if not partitions:
            return []
        skip = set(partitions) | self._now("paused")
        others = [tp for tp in self._now("assignment") if tp not in skip]
        if others:
            self._now("pause", *others)
        return others

    # --- the rest of the Consumer, as aiokafka names it ---
    def subscribe(self, topics=(), pattern=None, listener=None) -> None:
        self._now("subscribe", topics, pattern, listener)

    def unsubscribe(self) -> None:
        self._now("unsubscribe")

    def assign(self, partitions) -> None:
        self._now("assign", partitions)

    def assignment(self) -> set:
        return self._now("assignment")

    def subscription(self):
        return self._now("subscription")

    def seek(self, tp, offset: int) -> None:
        self._kept.pop(tp, None)
        self._now("seek", tp, offset)

    async def seek_to_beginning(self, *tps) -> None:
        for tp in tps or list(self._kept):
            self._kept.pop(tp, None)
        await self._later("seek_to_beginning", *tps)

    async def seek_to_end(self, *tps) -> None:
        for tp in tps or list(self._kept):
            self._kept.pop(tp, None)
        await self._later("seek_to_end", *tps)

    def pause(self, *tps) -> None:
        self._now("pause", *tps)

    def resume(self, *tps) -> None:
        self._now("resume", *tps)

    def paused(self) -> set:
        return self._now("paused")

    async def position(self, tp) -> int:
        return await self._later("position", tp)

    async def committed(self, tp):
        return await self._later("committed", tp)

    async def commit(self, offsets=None) -> None:
        """Commit the positions of every assigned partition (or ``offsets``); on the worker thread."""
        await self._later("commit", offsets)

    async def beginning_offsets(self, partitions) -> dict:
        return await self._later("beginning_offsets", partitions)

    async def end_offsets(self, partitions) -> dict:
        return await self._later("end_offsets", partitions)

    async def offsets_for_times(self, timestamps) -> dict:
        return await self._later("offsets_for_times", timestamps)


__all__ = ["AIOProducer", "AIOConsumer", "WAIT_STEP_MS"]
