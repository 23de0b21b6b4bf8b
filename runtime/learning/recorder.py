"""The background writer: the request path only enqueues, one thread owns the store and writes.

    recorder = Recorder(lambda: SqliteStore(path))
    recorder.record(pending)          # microseconds: an append to a bounded queue
    recorder.call(lambda store: ...)  # run on the writer, wait for the result (feedback, reads)
    recorder.close()                  # drain and stop; also at interpreter exit (atexit)

The queue is a deque the writer drains every `interval` seconds (or at once when flushed): an
append wakes no thread, so recording costs the caller a few microseconds and no context switch,
and the writer's work comes in batches rather than interleaved with every request. A process
killed outright (SIGKILL, power) loses at most the last `interval` of trajectories; a normal exit
writes everything (close, or atexit).

A full queue (the disk has stalled for `queue_size` requests) drops the new trajectory rather
than blocking the request: `dropped` counts them and the first drop of a run of drops says so in
one line. Generation never waits on the store.

Where threads cannot start (Pyodide without pthreads), `record` writes synchronously instead.
A store that cannot be opened, or a write that fails (a full disk, a locked file), is reported in
one line and recording stops or skips that row; generation goes on either way.
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from runtime.learning.store import TrajectoryStore, warn
from runtime.learning.trajectory import Pending, trajectory_of
from ruvdllm.errors import RuvdllmError

_STOP = object()


class Recorder:
    def __init__(
        self,
        open_store: Callable[[], TrajectoryStore],
        queue_size: int = 256,
        threaded: bool = True,
        on_warning: Callable[[str], None] = warn,
        interval: float = 0.05,
    ):
        self._open_store = open_store
        self.on_warning = on_warning
        self.dropped = 0  # trajectories refused because the queue was full
        self.failed = 0  # trajectories a write failed for
        self._dropping = False
        self._store: TrajectoryStore | None = None
        self._broken: str | None = None  # why the store is unusable, once it is
        self.queue_size = queue_size
        self.interval = interval  # seconds between the writer's looks at the queue
        self._queue: deque = deque()  # appends and pops are atomic: no lock on the request path
        self._wake = threading.Event()  # set by flush/call/close: drain now
        self._thread: threading.Thread | None = None
        self._closed = False
        if threaded:
            thread = threading.Thread(target=self._run, name="ruvdllm-trajectories", daemon=True)
            try:
                thread.start()
                self._thread = thread
            except RuntimeError:  # no threads here (Pyodide): write on the caller's thread
                pass
        atexit.register(self.close)

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    # --- the caller's side ---------------------------------------------------------------------

    def record(self, pending: Pending) -> bool:
        """Queue one finished request for writing; False when it was dropped (queue full or
        recorder closed)."""
        if self._closed:
            return False
        if self._thread is None:
            self._write(pending)
            return True
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                self.on_warning(
                    f"trajectory queue full ({self.queue_size}): the store is not keeping up; "
                    "dropping new trajectories until it does"
                )
            return False
        self._queue.append(pending)
        self._dropping = False
        return True

    def call(self, fn: Callable[[TrajectoryStore], object], timeout: float | None = 60.0):
        """Run `fn(store)` after everything queued before it, on the writer; return its result
        or raise its exception. RuvdllmError when the store is unusable."""
        if self._thread is None or self._closed:
            return fn(self._usable_store())
        future: Future = Future()
        self._queue.append((fn, future))  # after everything queued: a feedback sees its trajectory
        self._wake.set()
        return future.result(timeout)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until everything queued so far is written."""
        if self._thread is not None and not self._closed:
            self.call(lambda store: None, timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the store. Idempotent."""
        if self._closed:
            return
        if self._thread is not None:
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join()
        self._closed = True
        if self._store is not None:
            self._store.close()
            self._store = None
        atexit.unregister(self.close)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the writer's side -----------------------------------------------------------------------

    def _usable_store(self) -> TrajectoryStore:
        if self._store is None and self._broken is None:
            try:
                self._store = self._open_store()
            except (RuvdllmError, OSError) as exc:
                self._broken = str(exc)
                self.on_warning(f"{exc}; not recording trajectories")
        if self._store is None:
            raise RuvdllmError(f"the trajectory store is unusable ({self._broken})")
        return self._store

    def _write(self, pending: Pending) -> None:
        try:
            store = self._usable_store()
        except RuvdllmError:
            self.failed += 1
            return
        try:
            store.add_trajectory(trajectory_of(pending))
        except Exception as exc:  # a full disk, a locked file: lose this row, keep going
            self.failed += 1
            self.on_warning(f"trajectory {pending.id} not recorded ({type(exc).__name__}: {exc})")

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if item is _STOP:
                    return
                if isinstance(item, Pending):
                    self._write(item)
                    continue
                fn, future = item
                try:
                    future.set_result(fn(self._usable_store()))
                except BaseException as exc:
                    future.set_exception(exc)
