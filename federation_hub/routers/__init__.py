"""HTTP protocol only: parse, authorise, call a service, shape the reply. Every router is made by
`hub_router`, so all of them parse JSON strictly, take JSON bodies only as JSON, read path ids one
way and document the one error shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from email.message import Message
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from federation_hub import strict_json
from federation_hub.errors import Unsupported
from federation_hub.problems import ERROR_RESPONSES


def hub_router(**kwargs) -> APIRouter:
    return APIRouter(route_class=StrictJsonRoute, responses=ERROR_RESPONSES, **kwargs)


def _decimal(value: Any) -> Any:
    # pydantic's lax int would read " 1", "+1" and "1_000" from a path as rounds 1, 1 and 1000
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,18}", value) is None:
        raise ValueError("an id is plain decimal digits, without sign, spaces or leading zeros")
    return value


# A row id in a path (round, token): as the hub writes it and no other way.
PathId = Annotated[int, Path(ge=1, le=2**62), BeforeValidator(_decimal)]


def is_json(content_type: str | None) -> bool:
    """application/json or application/*+json (FastAPI's own test for a JSON body)."""
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by `strict_json.loads`, and that answers 415 to a
    body of another type (FastAPI would hand its bytes to the model: "Input should be a valid
    dictionary", a 422 that hides what is wrong)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_json = self.body_field is not None

        async def strict(request: Request) -> Response:
            request = StrictJsonRequest(request.scope, request.receive)
            if takes_json and not is_json(request.headers.get("content-type")) and await request.body():
                media = request.headers.get("content-type", "none").split(";")[0].strip()
                raise Unsupported(f"content-type {media[:64]!r}: this route takes application/json")
            return await handler(request)

        return strict
