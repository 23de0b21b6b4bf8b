"""The FastAPI application: endpoints (routes.py), OpenAI-style errors (errors.py) and the body
size limit (`ruvdllm.http_limits`) around an Engine. Built by `create_app`, served by `ruvdllm serve`
(command.py) or any ASGI server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import FastAPI

from runtime.server.engine import Engine
from runtime.server.errors import install_error_handlers, size_limit_error
from runtime.server.limits import Admission
from runtime.server.routes import ServerState, health_router, router
from ruvdllm.http_limits import BodySizeLimit


@dataclass(frozen=True)
class ServerLimits:
    queue_size: int = 64  # requests waiting beyond those running; a burst of clients waits, not 429s
    max_request_bytes: int = 1 << 20  # 1 MiB: far more than any prompt within the context needs


def create_app(
    engine: Engine,
    model_name: str,
    limits: ServerLimits = ServerLimits(),
    api_key: str | None = None,
    learning=None,
) -> FastAPI:
    """An app serving `engine`'s model as `model_name`; as many generations run at once as the
    engine has workers, `limits.queue_size` more wait. With `api_key`, /v1 wants it as a bearer
    token. `learning`: loop A (runtime.learning.loop_a.LoopA), already attached to the engine's
    models; None records nothing and answers /v1/feedback with 404."""
    app = FastAPI(
        title="ruvdllm",
        summary="OpenAI-compatible API over a 4-bit masked-diffusion language model",
        version="1",
    )
    app.state.server = ServerState(
        engine=engine,
        admission=Admission(engine.workers, limits.queue_size),
        model_name=model_name,
        api_key=api_key,
        learning=learning,
    )
    app.include_router(health_router)
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=limits.max_request_bytes,
        error_body=size_limit_error,
        hint="--max-request-bytes",
    )
    return app


def begin_shutdown(app: FastAPI, grace_s: float) -> None:
    """The server is stopping (on the event loop, as its listening sockets close): requests
    still queued, and any that still arrive, get a 503 now; running generations have `grace_s`
    seconds to finish, then stop at their next step with a 503 (a stream: an error event and
    [DONE]), so each ends with an answer in the API's shape rather than a cut connection."""
    state = app.state.server
    state.admission.close()
    asyncio.get_running_loop().call_later(grace_s, state.engine.stop)
