"""Iterating a consumer: records one at a time, blocking, until ``consumer_timeout_ms`` passes with none.

Shared by the shared-memory ``Consumer`` and the Kafka-cluster one: each has
``poll(timeout_ms=...)``, ``consumer_timeout_ms``, an ``_iter_buf`` list, and
the attributes of :func:`~shmbus.client.consumer.guard.one_thread`.
"""

from __future__ import annotations

import time

from shmbus.client.consumer.guard import one_thread


class IterationMixin:
    def __iter__(self):
        return self

    @one_thread
    def __next__(self):
        if self._iter_buf:
            return self._iter_buf.pop()
        limit = self.consumer_timeout_ms
        deadline = None if limit is None else time.monotonic() + limit / 1000.0
        while True:
            wait = 1000 if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000.0)
            got = self.poll(timeout_ms=wait)
            if got:
                recs = [r for lst in got.values() for r in lst]
                recs.reverse()
                self._iter_buf = recs
                return self._iter_buf.pop()
            if deadline is not None and time.monotonic() >= deadline:
                raise StopIteration
