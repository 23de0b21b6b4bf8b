"""OpenAI-style errors: every failure the server answers is

    {"error": {"message": "...", "type": "...", "param": "..." | null, "code": "..." | null}}

with a 4xx status for anything the client can fix (bad JSON, wrong types, out-of-range knobs,
a prompt beyond the context, a body too large, a full queue) and 5xx only for the server's own
faults. The official `openai` client turns these into its typed exceptions (BadRequestError,
NotFoundError, RateLimitError, ...) and shows `message`.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.server.schemas import UNSUPPORTED
from ruvdllm.errors import RuvdllmError

log = logging.getLogger("ruvdllm.server")

# The `type` OpenAI uses per status; the client only looks at the status, people read the type.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}

# Leading words of the runtime's RuvdllmError messages (runtime/settings.py) -> the request field.
PARAM_OF_MESSAGE = {
    "sampler": "sampler",
    "acceptance": "acceptance",
    "decoding": "decoding",
    "schedule": "schedule",
    "prompt": "prompt",
    "length": "max_tokens",
    "block size": "block_size",
    "steps": "steps",
    "threshold": "threshold",
    "entropy bound": "entropy_bound",
    "order": "order",
    "temperature": "temperature",
    "top-k": "top_k",
    "top-p": "top_p",
    "DGR": "dgr",
    "TALoRA": "talora",
}


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        message = " ".join(message.split())  # one line, whatever a template or a library put in it
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def size_limit_error(status: int, message: str) -> bytes:
    """The body of a refusal by the body size limit (413, or 400 for a bad Content-Length),
    which answers before FastAPI and its handlers see the request."""
    code = "request_too_large" if status == 413 else None
    return json.dumps(error_body(status, message, code=code)).encode()


def from_runtime(exc: RuvdllmError, prompt_param: str = "prompt") -> ApiError:
    """A runtime validation error (one line, starting with the thing that is wrong) as a 400."""
    message = str(exc)
    param = next((p for word, p in PARAM_OF_MESSAGE.items() if message.startswith(word)), None)
    if param == "prompt":
        param = prompt_param
    code = "context_length_exceeded" if "exceed the model's context" in message else None
    return ApiError(400, message, param=param, code=code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _location(loc: tuple) -> str | None:
    """Pydantic's error location as the dotted request field (`messages.0.content`): drops
    "body" and the union-member tags Pydantic inserts (`str`, `list[int]`, `TextPart`)."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif part != "body" and part.isidentifier() and part.islower() and part not in _TYPE_TAGS:
            parts.append(part)
    return ".".join(parts) or None


def from_validation(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    if not errors:
        return ApiError(400, "invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return ApiError(
            400, f"request body: malformed JSON ({detail})".replace(" ()", ""), code="invalid_json"
        )
    param = _location(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        # an OpenAI field of the other endpoint (`tools` on /v1/completions) is not one this
        # server declines: that endpoint has no such field
        message = "unrecognized request argument"
    elif param in UNSUPPORTED:
        message = f"not supported by this server ({UNSUPPORTED[param]})"
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type", "model_type"):
        message = "must be a JSON object (Content-Type: application/json)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{param}: " if param else "request body: "
    return ApiError(400, f"{where}{message}{more}", param=param)


def unparsable_body(cause: BaseException) -> ApiError:
    """FastAPI's answer to a body its JSON parser raised on with something other than a JSON
    syntax error ("There was an error parsing the body"), in the words and code of a malformed
    JSON body: bytes that are not UTF-8 (RFC 8259 wants it), nesting deeper than Python's parser
    goes."""
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        detail = f"not UTF-8: byte 0x{byte} at position {cause.start}"
    elif isinstance(cause, RecursionError):
        detail = "nested too deeply"
    else:
        detail = type(cause).__name__
    return ApiError(400, f"request body: malformed JSON ({detail})", code="invalid_json")


def shutting_down(what: str) -> ApiError:
    """The answer to a request the server will not finish because it is stopping (503, which
    the `openai` client retries: against another replica, or this one once restarted)."""
    return ApiError(503, f"server shutting down: {what}", code="server_shutting_down")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to OpenAI-style JSON: validation -> 400, runtime errors -> 400,
    HTTP errors keep their status, anything unexpected -> 500 (logged with its traceback)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return from_validation(exc).response()

    @app.exception_handler(RuvdllmError)
    async def _runtime(request: Request, exc: RuvdllmError):
        return from_runtime(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI read the body and failed
            return unparsable_body(exc.__cause__).response()
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path}: no such endpoint"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(exc).__name__}").response()
