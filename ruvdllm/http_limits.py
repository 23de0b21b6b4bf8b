"""The request body size limit both HTTP services use (the federation hub and `ruvdllm serve`):
pure ASGI middleware, standard library only.

    app = BodySizeLimit(app, max_bytes=1 << 20, error_body=my_json_error, hint="--max-request-bytes")

The body is counted as it arrives and never buffered, so memory stays bounded by what the app
itself keeps:

- a declared Content-Length over the limit is answered 413 before the app runs (a client that
  sent `Expect: 100-continue` never uploads the body); one that is not a number, 400;
- a body without Content-Length (chunked) is counted as the app reads it, and answered 413 the
  moment it crosses the limit.

Counting inside the app's `receive` has to hold even though frameworks turn an exception raised
while they read the body into an answer of their own (FastAPI answers 400 "There was an error
parsing the body", an app's catch-all handler a 500). So, the moment the body crosses the limit:

1. the 413 is sent first, before the app sees anything, so it is the response;
2. then `BodyTooLarge` is raised inside the app's read, so the app stops reading;
3. whatever the app sends afterwards (that 400, a 500 page) is dropped;
4. every later `receive()` reports the client gone (`http.disconnect`), so an app that swallowed
   the error and goes on working, or waits for the disconnect, stops;
5. any exception the app then raises (ours, one it raised instead, an exception group wrapping
   either) ends the request quietly: its answer is already out.

If the app started its response before the body crossed the limit (it streams while it reads),
no status can be sent any more: the app's read still fails, and the response stays incomplete,
which the server answers by closing the connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
ErrorBody = Callable[[int, str], bytes]  # (status, message) -> the JSON body of the app's errors


class BodyTooLarge(Exception):
    """Raised inside the app's read of a body that crossed the limit; its 413 is already sent.
    Not a RuvdllmError, so no app handler mistakes it for a user error of its own."""


def detail_body(status: int, message: str) -> bytes:
    """FastAPI's own error shape: {"detail": message}."""
    return json.dumps({"detail": message}).encode()


class BodySizeLimit:
    """Answer 413 to request bodies larger than `max_bytes` (see the module docstring).

    `error_body` renders the app's error shape, so a refusal reads like the app's other errors;
    `hint` names the setting that raises the limit (appended to the message)."""

    def __init__(self, app: ASGIApp, max_bytes: int, error_body: ErrorBody = detail_body, hint: str = ""):
        self.app = app
        self.max_bytes = max_bytes
        self.error_body = error_body
        self.hint = f" ({hint})" if hint else ""

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await self._refuse(send, 400, "Content-Length: not a number")
                return
            if int(declared) > self.max_bytes:
                await self._refuse(send, 413, self._message(f"{int(declared)} bytes"))
                return

        seen = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}  # (4) as far as the app is concerned, we are done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not started:
                        refused = True
                        await self._refuse(send, 413, self._message(f"at least {seen} bytes"))  # (1)
                    raise BodyTooLarge(f"request body: over {self.max_bytes} bytes")  # (2)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # (3) the 413 is the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass  # (5), or the response had started: it stays incomplete
        except Exception:
            if not refused:
                raise
            # (5) whatever the app raised instead (a framework's own error, an exception group)

    def _message(self, size: str) -> str:
        return f"request body: {size}, the limit is {self.max_bytes}{self.hint}"

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = self.error_body(status, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is never read
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            return value.decode("latin-1").strip()
    return None
