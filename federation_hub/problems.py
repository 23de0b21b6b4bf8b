"""One error shape for every reply that is not a success: `{"detail": "<one line>", "errors": [...]}`
(`schemas.Problem`), whoever raised it — a service (`RuvdllmError`), request validation, the
router (404/405), the body size limit (413) or a bug (500).

Validation errors never echo the input. FastAPI's default handler does, and rendering it fails on
what the hub refuses in the first place (NaN, a lone surrogate), turning a 422 into a 500; the
input may also be megabytes of base64 or bytes that are not UTF-8. A location is the field path
from "body", "path", "query" or "header" on — without the union tag pydantic puts first for a
tagged union (`["tenant", "groups", ...]` reads like a field named tenant).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from federation_hub.errors import Unauthorized, status_of
from federation_hub.schemas import FieldProblem, Problem
from ruvdllm.errors import RuvdllmError

log = logging.getLogger("federation_hub")
MAX_TEXT = 300  # a message may quote a (bounded) piece of input; a location may hold a dict key

# What each error status means, for the OpenAPI schema of every route.
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": Problem, "description": description}
    for status, description in {
        400: "a malformed request (headers, encoding)",
        401: "no token, or one the hub does not know",
        403: "not allowed: role, group membership, consent, ε budget",
        404: "not found, or not yours",
        409: "conflicts with what is stored: round not open, second contribution, reused update id",
        413: "the body is over the limit",
        422: "not a valid request, or it does not fit the round; `errors` lists the fields",
    }.items()
}


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """Printable in a JSON reply: lone surrogates escaped, long text cut."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_problems(errors: list[dict], tags: tuple[str, ...] = ()) -> list[FieldProblem]:
    """pydantic's errors as `FieldProblem`s; `tags` are a tagged union's tag values, dropped from
    the front of a location."""
    problems = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
            where, loc = loc[:1], loc[1:]
        else:
            where = ["body"]
        if loc and isinstance(loc[0], str) and loc[0] in tags:
            loc = loc[1:]
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            loc = [*loc, error.get("ctx", {}).get("discriminator", "'tier'").strip("'")]
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            # Whichever parser refused the body (FastAPI's json, strict_json's rules, pydantic's on
            # the update route), one form: no field to name, so no location past "body" (FastAPI
            # puts a character offset there), and the reason says where, once.
            loc = []
            message = f"invalid JSON: {error.get('ctx', {}).get('error') or 'not parseable'}"
        parts = [*where, *loc]
        problems.append(
            FieldProblem(
                loc=[p if isinstance(p, int) else clean(str(p), 80) for p in parts], msg=clean(message)
            )
        )
    return problems


def summary(problems: list[FieldProblem]) -> str:
    if not problems:
        return "invalid request"
    first = problems[0]
    line = f"{'.'.join(str(p) for p in first.loc)}: {first.msg}"
    return line + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def problem_response(status: int, detail: str, errors=(), headers: dict | None = None) -> JSONResponse:
    body = Problem(detail=clean(detail), errors=list(errors))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def problem_body(status: int, message: str) -> bytes:
    """For the body size limit (ruvdllm/http_limits.py), which answers before the app runs."""
    return json.dumps(Problem(detail=message).model_dump()).encode()


def install(app: FastAPI) -> None:
    @app.exception_handler(RuvdllmError)
    async def hub_error(request: Request, exc: RuvdllmError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        status = status_of(exc)
        errors = ()
        if status == 422:  # a 422 names where, whoever refused it (a rule here, or validation)
            where = ["body", *getattr(exc, "loc", ())]
            errors = [FieldProblem(loc=[clean(str(p), 80) for p in where], msg=clean(str(exc)))]
        return problem_response(status, str(exc), errors, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = field_problems(list(exc.errors()))
        return problem_response(422, summary(problems), problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # Only for a bug in the outer middleware: `UnexpectedErrors` answers the app's own.
        # Starlette re-raises after answering, so the traceback still reaches the log.
        return problem_response(500, _bug_detail(request.scope))


def _bug_detail(scope) -> str:
    request_id = scope.get("state", {}).get("request_id", "?")
    return f"internal error (request {request_id}); see the hub's log"


class UnexpectedErrors:
    """Pure ASGI: an exception that no handler took (a bug) is logged with its traceback and
    answered 500 in the one shape, and the request ends normally.

    Left to Starlette, the catch-all handler answers and then re-raises, so the server, seeing the
    app fail, closes the connection: the client's next request on that keep-alive connection met
    a reset. If the response had already started, no status can be sent: the exception goes on,
    and the server closes the connection, as it must for a reply cut short."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            if started:
                raise
            request_id = scope.get("state", {}).get("request_id", "?")
            log.exception("unhandled error", extra={"request_id": request_id, "path": scope.get("path")})
            await problem_response(500, _bug_detail(scope))(scope, receive, send)
