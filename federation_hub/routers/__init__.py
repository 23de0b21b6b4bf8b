"""HTTP protocol only: parse, authorise, call a service, shape the reply. Every router is made by
`hub_router`, so all of them parse JSON strictly and document the one error shape."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from federation_hub import strict_json
from federation_hub.problems import ERROR_RESPONSES


def hub_router(**kwargs) -> APIRouter:
    return APIRouter(route_class=StrictJsonRoute, responses=ERROR_RESPONSES, **kwargs)


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by `strict_json.loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
