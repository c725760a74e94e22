"""One thread at a time inside a ``Consumer``.

A ``Consumer`` belongs to one process and one thread at a time. A call made
while another thread is inside one of its methods raises
``ConcurrentAccessError`` (as Kafka's Java consumer does). Each public method
that touches read state takes the consumer's one token on entry and puts it
back on return: ``list.pop`` and ``list.append`` on a one-item list, atomic
and cheaper than a ``threading.Lock`` acquire and release (which would cost a
quarter of an idle ``poll``). A thread that finds the token gone proceeds only
if it is the one inside (``_owner``, set on the paths that run user code: a
rebalance listener that calls ``commit`` or ``seek``, iteration).
"""

from __future__ import annotations

import functools
import threading

from shmbus.errors import ConcurrentAccessError

get_ident = threading.get_ident


def refuse_second_thread(name: str):
    """Raise the ConcurrentAccessError of a call to ``name`` while another thread is inside."""
    raise ConcurrentAccessError(
        f"a Consumer is for one thread at a time (one consumer per thread; or guard it with your own lock): "
        f"{name}() called from thread {threading.current_thread().name!r} while another thread is inside this consumer")


def one_thread(fn):
    """``fn`` runs only while no other thread is inside this consumer (else ConcurrentAccessError)."""
    name = fn.__name__

    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        token = self._token
        try:
            t = token.pop()
        except IndexError:
            if self._owner != get_ident():
                refuse_second_thread(name)
            return fn(self, *args, **kwargs)  # re-entered by the thread inside (a listener callback)
        self._owner = get_ident()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._owner = None
            token.append(t)

    return guarded
