"""How many generations run and wait at once. (The other limit, on request body size, is the
middleware the hub uses too: `ruvdllm.http_limits`.)

Admission: `slots` generations run at once (one per backend) and up to `queue_size` more wait
their turn in arrival order; a request that finds the queue full is refused with 429 and a
Retry-After estimated from recent generation times. The check happens before the response
starts, so a streaming client learns of a full queue from the status, not mid-stream. When the
server stops (`close`), the requests still waiting and any that arrive are answered 503 at once;
the running ones keep their slots.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Sequence

from runtime.server.errors import ApiError, shutting_down

# The longest Retry-After sent: the `openai` client waits for one of at most 60 s and falls back
# to its own short backoff beyond, so a longer one would make it retry sooner, not later.
MAX_RETRY_AFTER_S = 60


def retry_after_s(durations: Sequence[float], waiting: int, slots: int) -> int:
    """Seconds until a refused request is likely to find a place: the `waiting` requests ahead
    drain at `slots` per typical run. Typical is the median of the recent run times `durations`
    (the lower of the two middle ones for an even count), not their mean, so one long generation
    among short ones does not set the pace; one second without any. Whole seconds (the header's
    unit), 1..MAX_RETRY_AFTER_S."""
    typical = statistics.median_low(durations) if durations else 1.0
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(typical * (waiting + 1) / slots)))


class Admission:
    """At most `slots` holders run at once, at most `queue_size` wait. Event-loop only (not
    thread-safe): every call comes from request handlers on the one loop."""

    def __init__(self, slots: int, queue_size: int, recent: int = 32):
        if slots < 1 or queue_size < 0:
            raise ValueError(f"admission: slots {slots} must be >= 1, queue size {queue_size} >= 0")
        self.slots = slots
        self.queue_size = queue_size
        self.closed = False  # the server is stopping: nothing more is admitted
        self._free = slots  # run slots nobody holds
        self._waiters: deque[asyncio.Future] = deque()  # for a run slot, in arrival order
        self._admitted = 0  # running + waiting
        self._durations: deque[float] = deque(maxlen=recent)  # seconds of recent runs, for Retry-After

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.slots)

    def reserve(self) -> Ticket:
        """A place in the queue now, or ApiError: 429 when there is none, 503 once closed."""
        if self.closed:
            raise shutting_down("not accepting requests")
        if self._admitted >= self.slots + self.queue_size:
            retry = self.retry_after()
            raise ApiError(
                429,
                f"server busy: {self.slots} running and {self.queue_size} queued (--queue-size); retry in {retry} s",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        self._admitted += 1
        return Ticket(self)

    def retry_after(self) -> int:
        return retry_after_s(self._durations, self.waiting, self.slots)

    def close(self) -> None:
        """Stop admitting: every request still waiting for a slot gets the 503 now (its ticket
        is released by its holder), and so does every later `reserve`. Running ones go on."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(shutting_down("the request was still queued"))

    async def _acquire(self) -> None:
        """A run slot, in arrival order; ApiError 503 if the admission closes meanwhile."""
        if self.closed:
            raise shutting_down("the request was still queued")
        if self._free and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot()  # handed the slot just as it was cancelled: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _release_slot(self) -> None:
        """Hand the slot to the first one waiting (it holds it from now on), else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _record(self, seconds: float) -> None:
        self._durations.append(seconds)


class Ticket:
    """One admitted request: `await ticket.run_slot()` waits for a run slot (FIFO); `release()`
    gives back the slot (if held) and the queue place. Release is idempotent, so it can be called
    from every path a request can end on."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._holding = False
        self._released = False
        self._started = 0.0

    async def run_slot(self) -> None:
        await self._admission._acquire()
        if self._released:  # released while waiting (the client went away)
            self._admission._release_slot()
            return
        self._holding = True
        self._started = time.monotonic()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admission._admitted -= 1
        if self._holding:
            self._holding = False
            self._admission._record(time.monotonic() - self._started)
            self._admission._release_slot()

    def abandon(self) -> None:
        """Release unless a run slot is held (its holder releases it when the run ends)."""
        if not self._holding:
            self.release()

    async def __aenter__(self) -> Ticket:
        try:
            await self.run_slot()
        except BaseException:
            self.release()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()
