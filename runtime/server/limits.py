"""How many generations run and wait at once. (The other limit, on request body size, is the
middleware the hub uses too: `ruvdllm.http_limits`.)

Admission: `slots` generations run at once (one per backend) and up to `queue_size` more wait
their turn in arrival order; a request that finds the queue full is refused with 429 and a
Retry-After estimated from recent generation times. The check happens before the response
starts, so a streaming client learns of a full queue from the status, not mid-stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from runtime.server.errors import ApiError


class Admission:
    """At most `slots` holders run at once, at most `queue_size` wait. Event-loop only (not
    thread-safe): every call comes from request handlers on the one loop."""

    def __init__(self, slots: int, queue_size: int, recent: int = 32):
        if slots < 1 or queue_size < 0:
            raise ValueError(f"admission: slots {slots} must be >= 1, queue size {queue_size} >= 0")
        self.slots = slots
        self.queue_size = queue_size
        self._running = asyncio.Semaphore(slots)
        self._admitted = 0  # running + waiting
        self._durations: deque[float] = deque(maxlen=recent)  # seconds of recent runs, for Retry-After

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.slots)

    def reserve(self) -> Ticket:
        """A place in the queue now, or ApiError 429 when there is none."""
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
        """Seconds until a queue place is likely free: the queue ahead drains at `slots` per
        mean run time. At least one second (the header's unit)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * (self.waiting + 1) / self.slots))

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
        await self._admission._running.acquire()
        if self._released:  # released while waiting (the client went away)
            self._admission._running.release()
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
            self._admission._running.release()

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
