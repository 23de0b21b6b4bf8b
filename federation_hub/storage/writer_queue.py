"""First come, first served for a process's SQLite writers.

SQLite admits one writer at a time, and a writer that finds the database locked does not wait
to be woken: its busy handler sleeps and retries, backing off to 100 ms between tries. Under a
steady stream of writes a writer that has backed off keeps losing the lock to fresh ones that
try sooner, so a few requests waited seconds while the median waited 10 ms (the latency's tail of
`benchmarks/hub_load.py`: p99 ~1.5 s, 15-20× p50, all of it waiting for the write lock). Taking
turns in the process first, in arrival order, leaves at most one of its writers at the database's
lock; the busy handler then only arbitrates between processes (a seeding worker, a CLI).

The standard library's locks promise no order of wake-up, hence this queue of handed-over turns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class WriterQueue:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiting: deque[tuple[int, threading.Event]] = deque()  # (thread ident, its wake-up)
        self._holder: int | None = None  # the thread whose turn it is

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this thread's turn (FIFO), hold it for the block, pass it to the next."""
        me = threading.get_ident()
        with self._guard:
            if self._holder == me:  # SQLite would wait on itself for its whole busy timeout
                raise RuntimeError("a write transaction inside a write transaction on one thread")
            waiter = None
            if self._holder is None:
                self._holder = me
            else:
                waiter = (me, threading.Event())
                self._waiting.append(waiter)
        if waiter is not None:
            try:
                waiter[1].wait()  # the previous holder made this thread the holder, then woke it
            except BaseException:  # interrupted while queued: the turn must not be lost
                with self._guard:
                    if waiter in self._waiting:
                        self._waiting.remove(waiter)
                        raise
                self._pass_on()
                raise
        try:
            yield
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        with self._guard:
            if self._waiting:
                self._holder, wake = self._waiting.popleft()
                wake.set()
            else:
                self._holder = None
