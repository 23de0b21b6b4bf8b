"""Generation for the server: a pool of opened models, one generation per model at a time, run on
worker threads so the event loop keeps answering while onnxruntime computes.

A `runtime.model.DiffusionModel` holds one key/value cache, so it serves one sequence at a
time; `workers` models (each its own onnxruntime session) serve that many requests in parallel.
A job takes a free model from the pool, generates, and puts it back. Text reaches the caller as
deltas (runtime/server/text_stream.py) from the sampler's per-step callback; that callback is
also where a job is stopped early — when the client has gone, once an end-of-sequence token
or a stop sequence has ended the text (the rest of the span would be thrown away), or when the
server stops (`stop`) and cannot wait for the rest.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from runtime.denoise import StepEvent
from runtime.server.errors import shutting_down
from runtime.server.text_stream import TextStream
from runtime.settings import GenerationSettings


@dataclass(frozen=True)
class Job:
    """One generation, checked and ready to run."""

    prompt: list[int]  # token ids
    settings: GenerationSettings
    seed: int
    stops: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # one line each, returned with the answer (a poor sampler choice)


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop sequence), "length", or "cancelled" (nobody waits)
    prompt_tokens: int
    completion_tokens: int  # tokens behind `text`
    steps: int
    generation_ms: float
    forward_ms: float
    # What the learning loop records (runtime/learning/loop_a.py): the tokens behind `text`, the
    # step trace and the generation's adapter control (its prompt embedding, TALoRA config).
    tokens: list[int] = field(default_factory=list, repr=False)
    trace: list[StepEvent] = field(default_factory=list, repr=False)
    control: object = field(default=None, repr=False)


class _Ended(Exception):
    """Raised from the step callback: stop denoising (the text is complete, or unwanted)."""


class Engine:
    """Runs jobs on `len(models)` worker threads, one model each at a time."""

    def __init__(self, models: Sequence):
        if not models:
            raise ValueError("engine: at least one model")
        self.model = models[0]  # the reference for config, tokenizer and checks (all are equal)
        self.workers = len(models)
        self.models = list(models)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for model in models:
            self._free.put(model)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ruvdllm-generate")
        self._stopping = threading.Event()

    @property
    def config(self):
        return self.model.config

    def run(
        self,
        job: Job,
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Outcome:
        """Generate `job` on the calling thread (a worker), sending text deltas to `on_delta`.
        Stops at the next step once `cancel` is set (finish reason "cancelled"); raises
        RuvdllmError for input the model rejects, and ApiError 503 once `stop` was called."""
        eos = self.config.eos_token_ids if job.settings.stop_at_eos else ()
        stream = TextStream(self.model.decode, eos, job.stops)
        steps, forward_ms, generated, trace = 0, 0.0, [], []

        def on_step(event: StepEvent) -> None:
            nonlocal steps, forward_ms, generated
            trace.append(event)
            steps += 1
            forward_ms += event.forward_ms
            generated = event.tokens
            if self._stopping.is_set():
                raise shutting_down("the generation was stopped before it finished")
            if cancel is not None and cancel.is_set():
                stream.end("cancelled")
                raise _Ended()
            delta = stream.update(event.tokens)
            if delta and on_delta is not None:
                on_delta(delta)
            if stream.done:
                raise _Ended()

        started = time.perf_counter()
        model = self._free.get()
        control = None
        try:
            control = model.control(job.settings)
            model.generate(job.prompt, job.settings, seed=job.seed, on_step=on_step, control=control)
            # The last step's region, not the result's tokens: those are always cut at an end of
            # sequence, which `ignore_eos` must not do. The stream cuts where the job says.
            delta = stream.finish(generated, "length")
            if delta and on_delta is not None:
                on_delta(delta)
        except _Ended:
            pass
        finally:
            self._free.put(model)
        return Outcome(
            text=stream.text,
            finish_reason=stream.finish_reason or "length",
            prompt_tokens=len(job.prompt),
            completion_tokens=len(stream.tokens),
            steps=steps,
            generation_ms=(time.perf_counter() - started) * 1e3,
            forward_ms=forward_ms,
            tokens=list(stream.tokens),
            trace=trace,
            control=control,
        )

    def submit(
        self, job: Job, on_delta: Callable[[str], None] | None = None, cancel: threading.Event | None = None
    ) -> asyncio.Future:
        """Start `job` on a worker; the future (on the running loop) resolves to its Outcome."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self.run, job, on_delta, cancel)

    async def deltas(self, job: Job, cancel: threading.Event, on_done: Callable[[], None]):
        """Async iterator over the job's text deltas (str), then its Outcome. `on_done` runs
        when the worker has finished the job — also when the iterator is abandoned early, in
        which case `cancel` stops the worker at its next step."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        end = object()

        def on_delta(delta: str) -> None:  # on the worker thread
            loop.call_soon_threadsafe(items.put_nowait, delta)

        future = self.submit(job, on_delta, cancel)
        # The future's result is set through the loop after every delta already queued by the
        # worker, so `end` arrives last.
        future.add_done_callback(lambda _: items.put_nowait(end))
        future.add_done_callback(lambda _: on_done())
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen, even if nobody asks
        try:
            while (item := await items.get()) is not end:
                yield item
            yield future.result()
        finally:
            if not future.done():
                cancel.set()

    def stop(self) -> None:
        """End every generation at its next step, and every later one at its first (the server
        is stopping and its grace period is over): they raise ApiError 503. Any thread."""
        self._stopping.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
