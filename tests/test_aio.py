"""``shmbus.aio``: AIOProducer and AIOConsumer on a real bus, with records from other processes.

Each test runs its coroutine with ``asyncio.run`` under the test's timeout; the producers in other
processes are started and ended here (``subprocess``), also when a test fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from shmbus import BufferFullError, ConsumerStoppedError, TopicPartition
from shmbus.aio import AIOConsumer, AIOProducer


def run(coro, timeout_s=60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


def producer_process(data_dir, topic, n, delay_s=0.0, partition=0):
    """A process that sends records b"p0".."p{n-1}" to ``topic`` after ``delay_s``."""
    code = textwrap.dedent(f"""
        import time
        from shmbus import Producer
        time.sleep({delay_s})
        with Producer({data_dir!r}) as p:
            for i in range({n}):
                p.send({topic!r}, b"p%d" % i, key=b"k", partition={partition}, headers=[("i", b"%d" % i)])
    """)
    return subprocess.Popen([sys.executable, "-c", code])


class Ticker:
    """Counts the event loop's turns every 5 ms: a loop blocked by a call counts none meanwhile."""

    def __init__(self):
        self.ticks = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(0.005)
            self.ticks += 1

    def stop(self):
        self.task.cancel()


@pytest.mark.timeout(120)
def test_round_trip_keys_headers_timestamps_and_async_for(bus):
    bus.create_topic("a", 3)

    async def main():
        sent = []
        async with AIOProducer(bus.data_dir) as p:
            for i in range(300):
                md = await p.send_and_wait("a", b"v%d" % i, key=b"k%d" % (i % 7), headers=[("n", b"%d" % i)],
                                           timestamp_ms=1_700_000_000_000 + i)
                sent.append((md.topic, md.partition, md.offset, b"v%d" % i))
            fut = await p.send("a", b"last", key=b"k0")
            md = await fut
            sent.append((md.topic, md.partition, md.offset, b"last"))
            await p.flush()
        got = []
        async with AIOConsumer("a", data_dir=bus.data_dir, group_id="g", auto_offset_reset="earliest") as c:
            async for r in c:
                got.append(r)
                if len(got) == len(sent):
                    break
            await c.commit()
            committed = {tp: await c.committed(tp) for tp in c.assignment()}
        return sent, got, committed

    sent, got, committed = run(main())
    assert sorted((r.topic, r.partition, r.offset, r.value) for r in got) == sorted(sent)
    for r in got:
        if r.value != b"last":
            i = int(r.value[1:])
            assert r.key == b"k%d" % (i % 7) and r.headers == [("n", b"%d" % i)] and r.timestamp == 1_700_000_000_000 + i
    ends = {tp: n for tp, n in bus.consumer().end_offsets([TopicPartition("a", p) for p in range(3)]).items()}
    assert committed == ends


@pytest.mark.timeout(120)
def test_a_wait_leaves_the_loop_free_and_ends_when_another_process_sends(bus):
    bus.create_topic("w", 1)

    async def main():
        async with AIOConsumer("w", data_dir=bus.data_dir, auto_offset_reset="earliest") as c:
            assert await c.getmany(timeout_ms=0) == {}
            proc = producer_process(bus.data_dir, "w", 5, delay_s=1.0)
            try:
                ticker = Ticker()
                got = await c.getmany(timeout_ms=30_000)
                ticker.stop()
                rest = []
                while len(rest) + sum(map(len, got.values())) < 5:
                    r = await c.getone()
                    rest.append(r)
            finally:
                proc.wait(30)
            return got, rest, ticker.ticks, proc.returncode

    got, rest, ticks, rc = run(main())
    values = [r.value for rs in got.values() for r in rs] + [r.value for r in rest]
    assert rc == 0 and values == [b"p%d" % i for i in range(5)]
    assert ticks >= 20  # the loop ran on while the consumer waited about a second (5 ms ticks)


@pytest.mark.timeout(120)
def test_records_a_cancelled_wait_received_come_with_the_next_call(bus):
    bus.create_topic("c", 1)

    async def main():
        got = []
        cancelled = 0
        async with AIOConsumer("c", data_dir=bus.data_dir, auto_offset_reset="earliest") as c:
            async with AIOProducer(bus.data_dir) as p:
                for _ in range(5):  # many waits cancelled at random moments, records arriving meanwhile
                    t = asyncio.get_running_loop().create_task(c.getmany(timeout_ms=10_000))
                    await asyncio.sleep(0.01)
                    await p.send_and_wait("c", b"x", partition=0)
                    await asyncio.sleep(0)
                    t.cancel()
                    try:
                        for rs in (await t).values():  # (the wait ended with the record before the cancel)
                            got.extend(rs)
                    except asyncio.CancelledError:
                        cancelled += 1
                    await asyncio.sleep(0.06)  # (the worker's step ends; what it got is kept)
                for i in range(5):
                    await p.send_and_wait("c", b"y%d" % i, partition=0)
            while len(got) < 10:
                for rs in (await c.getmany(timeout_ms=2000)).values():
                    got.extend(rs)
            return got, cancelled

    got, cancelled = run(main())
    print(f"{cancelled} of 5 waits cancelled")
    assert [r.offset for r in got][-5:] == [5, 6, 7, 8, 9]
    assert sorted(r.offset for r in got) == list(range(10))  # none lost, none twice (even cancelled ones)


@pytest.mark.timeout(120)
def test_stop_ends_a_waiting_async_for_and_the_consumer_says_so_afterwards(bus):
    bus.create_topic("s", 1)

    async def main():
        c = AIOConsumer("s", data_dir=bus.data_dir)
        await c.start()
        seen = []

        async def reader():
            async for r in c:
                seen.append(r)
            return "ended"

        t = asyncio.get_running_loop().create_task(reader())
        await asyncio.sleep(0.2)
        await c.stop()
        result = await asyncio.wait_for(t, 10)
        with pytest.raises(ConsumerStoppedError, match="stopped"):
            await c.getone()
        with pytest.raises(ConsumerStoppedError, match="stopped"):
            c.assignment()
        await c.stop()  # (again: nothing)
        return result, seen

    assert run(main()) == ("ended", [])


@pytest.mark.timeout(60)
def test_use_before_start_names_the_fix():
    async def main():
        p = AIOProducer()
        with pytest.raises(ConsumerStoppedError, match=r"not started .*start\(\)"):
            await p.send_and_wait("t", b"x")
        c = AIOConsumer("t")
        with pytest.raises(ConsumerStoppedError, match=r"not started .*start\(\)"):
            await c.getmany()

    run(main())


@pytest.mark.timeout(120)
def test_a_full_ring_waits_without_blocking_the_loop_then_raises(bus):
    """The supervisor stopped, nothing spills the ring: a send into it waits max_block_ms with the loop
    running on, then raises BufferFullError naming max_block_ms."""
    from shmbus.client import control

    bus.create_topic("f", 1, {"ring.bytes": 65536})

    async def main():
        async with AIOProducer(bus.data_dir, max_block_ms=500) as p:
            await p.send_and_wait("f", b"first", partition=0)
            assert control.stop(bus.data_dir, keep_rings=True)
            n = 0
            ticker = Ticker()
            with pytest.raises(BufferFullError) as ei:
                while True:
                    await p.send_and_wait("f", b"z" * 1000, partition=0)
                    n += 1
            ticker.stop()
            return n, ticker.ticks, str(ei.value)

    n, ticks, msg = run(main())
    assert 0 < n < 66 and ticks >= 20
    assert "max_block_ms=500" in msg and "topic='f'" in msg


@pytest.mark.timeout(120)
def test_getmany_of_some_partitions_seek_and_positions(bus):
    bus.create_topic("m", 2)
    with bus.producer() as p:
        for i in range(10):
            p.send("m", b"%d" % i, partition=i % 2)

    async def main():
        tp0, tp1 = TopicPartition("m", 0), TopicPartition("m", 1)
        async with AIOConsumer(data_dir=bus.data_dir, auto_offset_reset="earliest") as c:
            c.assign([tp0, tp1])
            only1 = await c.getmany(tp1, timeout_ms=1000)
            pos = (await c.position(tp0), await c.position(tp1))
            c.seek(tp1, 2)
            again = await c.getone(tp1)
            await c.seek_to_end(tp0)
            ends = await c.end_offsets([tp0, tp1])
            return only1, pos, again, await c.position(tp0), ends, c.paused()

    only1, pos, again, pos0, ends, paused = run(main())
    assert list(only1) == [TopicPartition("m", 1)] and [r.value for r in only1[TopicPartition("m", 1)]] == \
        [b"1", b"3", b"5", b"7", b"9"]
    assert pos == (0, 5) and again.offset == 2 and pos0 == 5 and paused == set()
    assert ends == {TopicPartition("m", 0): 5, TopicPartition("m", 1): 5}
