"""The HTTP endpoints: protocol only. Requests are checked into jobs (jobs.py), admitted or
refused (limits.py), run on the engine's workers (engine.py) and answered in OpenAI's shapes
(responses.py). With an API key configured, every /v1 endpoint wants `Authorization: Bearer KEY`
(what the `openai` client sends as its api_key).

    GET  /health                 liveness + load: running, queued, limits (never needs a key)
    GET  /v1/models              the one served model
    GET  /v1/models/{id}
    POST /v1/completions         prompt -> text        (stream: SSE)
    POST /v1/chat/completions    messages -> message   (stream: SSE)
    POST /v1/feedback            a rating, thumb or correction on a completion id (learning loop A)
    GET  /openapi.json, /docs    FastAPI's schema and its page (never need a key: no data in them)

With learning loop A on (runtime/learning/), every answered completion is recorded under the id
its response carries, off the request path; feedback on that id moves the usefulness of the DGR
patterns the answer used.

Only protocol runs on the event loop: a request is checked into a job (tokenizer, chat template,
the model's checks) on a thread of the pool, and generated on the engine's workers, so /health
and every other request are answered while a prompt is encoded or a model generates.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from runtime.learning.loop_a import LoopA, UnknownCompletion
from runtime.learning.trajectory import Feedback
from runtime.server.engine import Engine, Job, Outcome
from runtime.server.errors import ApiError, error_body, from_runtime
from runtime.server.jobs import chat_job, check_model_name, completion_job
from runtime.server.limits import Admission, Ticket
from runtime.server.responses import DONE, Reply, info_of, sse
from runtime.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackReply,
    FeedbackRequest,
    ModelCard,
    ModelList,
)
from ruvdllm.errors import RuvdllmError

log = logging.getLogger("ruvdllm.server")


@dataclass
class ServerState:
    """What the endpoints share; one per app (app.state.server)."""

    engine: Engine
    admission: Admission
    model_name: str
    api_key: str | None = None  # None: no authentication (the default binds to loopback only)
    learning: LoopA | None = None  # None: loop A is off (nothing recorded, no feedback endpoint)
    created: int = field(default_factory=lambda: int(time.time()))


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


def require_key(request: Request, state: State) -> None:
    if state.api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.api_key.encode()):
        raise ApiError(
            401,
            "missing or incorrect API key (send Authorization: Bearer KEY)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


health_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_key)])


@health_router.get("/health")
async def health(state: State) -> dict:
    admission = state.admission
    return {
        "status": "ok",
        "model": state.model_name,
        "workers": state.engine.workers,
        "running": admission.admitted - admission.waiting,
        "queued": admission.waiting,
        "queue_size": admission.queue_size,
    }


def _card(state: ServerState) -> ModelCard:
    return ModelCard(
        id=state.model_name, created=state.created, max_model_len=state.engine.config.max_position
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_card(state)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, state: State) -> ModelCard:
    check_model_name(model_id, state.model_name)
    return _card(state)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest, state: State):
    check_model_name(body.model, state.model_name)
    job, prompt_text = await run_in_threadpool(completion_job, state.engine.model, body)
    echo = prompt_text if body.echo else ""
    reply = Reply("completion", state.model_name)
    return await _answer(request, state, job, reply, bool(body.stream), body.include_usage(), echo)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest, state: State):
    check_model_name(body.model, state.model_name)
    job = await run_in_threadpool(chat_job, state.engine.model, body)
    reply = Reply("chat", state.model_name)
    return await _answer(request, state, job, reply, bool(body.stream), body.include_usage())


@router.post("/v1/feedback", response_model=FeedbackReply)
async def feedback(body: FeedbackRequest, state: State) -> FeedbackReply:
    if state.learning is None:
        raise ApiError(
            404,
            "feedback: learning loop A is off on this server (learning config loop_a.enabled)",
            code="learning_off",
        )
    given = Feedback(body.completion_id, body.kind(), body.rating, body.correction)
    try:
        # The store is written by its own thread; waiting for it must not block the event loop.
        result = await run_in_threadpool(state.learning.feedback, given)
    except UnknownCompletion as exc:
        raise ApiError(404, str(exc), param="completion_id", code="completion_not_found") from None
    except RuvdllmError as exc:  # the store cannot be opened: the server's side, not the request's
        raise ApiError(503, f"feedback: {exc}", code="store_unavailable") from None
    return FeedbackReply(
        completion_id=result.completion_id,
        kind=result.kind,
        value=result.value,
        patterns_rescored=len(result.patterns),
    )


def _record(state: ServerState, job: Job, outcome: Outcome, completion_id: str) -> None:
    """Queue the answered request for loop A (microseconds: the writer thread does the rest)."""
    if state.learning is None or outcome.finish_reason == "cancelled":
        return
    state.learning.record(
        state.engine.model,
        job.prompt,
        job.settings,
        outcome.trace,
        outcome.control,
        outcome.text,
        outcome.tokens,
        outcome.finish_reason,
        outcome.generation_ms,
        model_name=state.model_name,
        completion_id=completion_id,
    )


async def _answer(
    request: Request,
    state: ServerState,
    job: Job,
    reply: Reply,
    stream: bool,
    include_usage: bool,
    echo: str = "",
):
    ticket = state.admission.reserve()  # 429 (503 when stopping) here, before any response has started
    if stream:
        return _stream(state, job, reply, ticket, include_usage, echo)
    return await _complete(state, job, reply, ticket, echo, request)


async def _generation(state: ServerState, job: Job, ticket: Ticket, cancel: threading.Event):
    """Wait for a run slot, then yield the job's text deltas (str) and finally (Outcome,
    queued ms). The ticket is released on every path: by the engine once the worker has
    finished, or here when the job never reached a worker."""
    arrived = time.monotonic()
    submitted = False
    try:
        await ticket.run_slot()
        queued_ms = (time.monotonic() - arrived) * 1e3
        submitted = True
        async with aclosing(state.engine.deltas(job, cancel, on_done=ticket.release)) as items:
            async for item in items:
                yield item if isinstance(item, str) else (item, queued_ms)
    finally:
        if not submitted:
            ticket.release()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete(state: ServerState, job: Job, reply: Reply, ticket: Ticket, echo: str, request: Request):
    cancel = threading.Event()

    async def outcome() -> tuple[Outcome, float]:
        async with aclosing(_generation(state, job, ticket, cancel)) as items:
            async for item in items:
                if not isinstance(item, str):
                    return item
        raise RuntimeError("generation ended without an outcome")

    task = asyncio.ensure_future(outcome())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():  # the client left: stop the worker at its next step
            cancel.set()
            task.cancel()
    if not task.done() or task.cancelled():
        raise ApiError(499, "client closed the request")
    try:
        result, queued_ms = task.result()
    except RuvdllmError as exc:
        raise from_runtime(exc) from None
    _record(state, job, result, reply.id)
    info = info_of(job, result, queued_ms)
    if reply.kind == "chat":
        return JSONResponse(reply.chat(result, info))
    return JSONResponse(reply.completion(echo + result.text, result, info))


class EventStream(StreamingResponse):
    """A StreamingResponse that always closes its event generator and runs `on_close`, however
    the response ends (finished, client gone, send failed, never started)."""

    def __init__(self, events, on_close):
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()
            self._on_close()


def _stream(state: ServerState, job: Job, reply: Reply, ticket: Ticket, include_usage: bool, echo: str):
    cancel = threading.Event()

    async def events():
        try:
            if (opening := reply.opening()) is not None:
                yield opening
            if echo:
                yield reply.delta(echo)
            async with aclosing(_generation(state, job, ticket, cancel)) as items:
                async for item in items:
                    if isinstance(item, str):
                        yield reply.delta(item)
                    else:
                        outcome, queued_ms = item
                        _record(state, job, outcome, reply.id)
                        yield reply.closing(outcome, info_of(job, outcome, queued_ms), include_usage)
        except RuvdllmError as exc:
            yield sse(from_runtime(exc).body())
        except ApiError as exc:  # the server is stopping: still queued, or cut at its grace period's end
            yield sse(exc.body())
        except Exception as exc:  # the status line is gone: report in-band, keep serving
            log.exception("generation failed mid-stream")
            yield sse(error_body(500, f"internal error: {type(exc).__name__}"))
        yield DONE

    def on_close() -> None:
        cancel.set()  # a no-op when the job has finished
        ticket.abandon()  # the events never reached the queue: give back the place

    return EventStream(events(), on_close)
