"""ruvdllm/http_limits.py: the body is counted as it arrives and a body over the limit gets the
app's 413 even where the app would answer a failed read its own way (FastAPI's 400, a catch-all
500, an exception group, an app that swallows the error) — the cases where counting inside the
app's receive is said not to work. Driven as raw ASGI, so every message the client would get is
seen."""

import asyncio
import json

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ruvdllm.http_limits import BodySizeLimit, BodyTooLarge

LIMIT = 100


def call(app, chunks, headers=(), path="/"):
    """One POST through `app` with the body in `chunks`; (status, JSON body, every message sent,
    how many chunks the app read)."""
    sent, pending, read = [], list(chunks), []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        read.append(pending.pop(0))
        return {"type": "http.request", "body": read[-1], "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # nothing may escape the middleware
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], json.loads(body) if body else None, sent, len(read)


def pieces(data, chunk=30):
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def chunked(size):
    return pieces(b"x" * size)


async def echo(scope, receive, send):
    """Reads the whole body, answers its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs():
    status, body, _, read = call(BodySizeLimit(echo, LIMIT), [b"x" * 500], [(b"content-length", b"500")])
    assert status == 413 and read == 0
    assert body == {"detail": "request body: 500 bytes, the limit is 100"}


def test_a_length_that_is_not_a_number_is_a_400():
    for declared in (b"ten", b"-1", b"\xc2\xb2", b"1_0"):
        status, body, _, read = call(BodySizeLimit(echo, LIMIT), [b"{}"], [(b"content-length", declared)])
        assert (status, read) == (400, 0) and "not a number" in body["detail"]


def test_bodies_up_to_the_limit_pass_whole():
    assert call(BodySizeLimit(echo, LIMIT), chunked(LIMIT))[:2] == (200, {"size": LIMIT})
    declared = [(b"content-length", str(LIMIT).encode())]
    assert call(BodySizeLimit(echo, LIMIT), [b"x" * LIMIT], declared)[:2] == (200, {"size": LIMIT})


def test_a_chunked_body_is_refused_the_moment_it_crosses_and_never_read_on():
    status, body, _, read = call(BodySizeLimit(echo, LIMIT), chunked(1000))
    assert status == 413 and read == 4  # 120 bytes: the fourth chunk crossed
    assert body == {"detail": "request body: at least 120 bytes, the limit is 100"}


def test_the_refusal_speaks_the_apps_error_shape():
    def openai_style(status, message):
        return json.dumps({"error": {"message": message, "code": status}}).encode()

    limited = BodySizeLimit(echo, LIMIT, error_body=openai_style, hint="--max-request-bytes")
    status, body, sent, _ = call(limited, chunked(1000))
    assert status == 413 and body["error"]["message"].endswith("the limit is 100 (--max-request-bytes)")
    headers = dict(sent[0]["headers"])
    assert headers[b"connection"] == b"close" and int(headers[b"content-length"]) == len(json.dumps(body))


def fastapi_app():
    app = FastAPI()

    class Prompt(BaseModel):
        prompt: str

    @app.post("/model")  # FastAPI reads the body and turns a failed read into its own 400
    async def model(body: Prompt):
        return {"ok": True}

    @app.post("/raw")  # the failed read propagates out of the endpoint
    async def raw(request: Request):
        return {"size": len(await request.body())}

    @app.post("/group")  # ... wrapped in an exception group
    async def group(request: Request):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request.body)
        return {"ok": True}

    @app.exception_handler(Exception)  # a catch-all 500, like the OpenAI-compatible server's
    async def crash(request, exc):
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    return app


def test_framework_answers_to_the_failed_read_never_reach_the_client():
    app = fastapi_app()
    body = json.dumps({"prompt": "x" * 1000}).encode()
    for path in ("/model", "/raw", "/group"):
        status, answer, sent, read = call(app, pieces(body), path=path)
        assert status == 413 and "at least" in answer["detail"], path
        assert len(sent) == 2 and read == 4, path  # the 413 and nothing else; no more body read
    ok = json.dumps({"prompt": "x"}).encode()
    assert call(app, [ok], path="/model")[:2] == (200, {"ok": True})
    assert call(app, [ok], path="/raw")[:2] == (200, {"size": len(ok)})


def test_an_app_that_swallows_the_error_sees_the_client_gone():
    seen = []

    async def stubborn(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
        except BodyTooLarge:
            pass
        seen.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    status, _, sent, read = call(BodySizeLimit(stubborn, LIMIT), chunked(1000))
    assert status == 413 and len(sent) == 2 and read == 4
    assert seen == ["http.disconnect"]


def test_a_response_already_started_is_left_incomplete():
    async def streams_first(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            await send({"type": "http.response.body", "body": b"", "more_body": True})

    status, _, sent, read = call(BodySizeLimit(streams_first, LIMIT), chunked(1000))
    assert status == 200 and read == 4
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body")


def test_other_errors_of_the_app_still_propagate_and_other_scopes_pass():
    async def broken(scope, receive, send):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        call(BodySizeLimit(broken, LIMIT), [b"{}"])

    seen = []

    async def lifespan(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(lifespan, LIMIT)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
