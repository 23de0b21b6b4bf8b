"""JSON bodies as the hub accepts them: RFC 8259 JSON, nothing Python's `json` adds.

Python's parser takes `NaN`, `Infinity` and `-Infinity`, turns `1e400` into `inf`, and keeps a
lone surrogate (`"\\ud800"`) as a string that no UTF-8 encoder, database driver or JSON renderer
will take back. Any of them passing a request model reaches storage or a reply and ends as a 500
(found by an outside probe against every router). Here they are parse errors, answered 422 like
any other malformed body, and every router parses its bodies this way (`StrictJsonRoute`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _check_strings(value: Any) -> None:
    """Every string (keys included) must be encodable as UTF-8: no lone surrogates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                item.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads(body: bytes | str) -> Any:
    """json.loads that refuses NaN, ±Infinity, numbers beyond float range and lone surrogates.
    Raises json.JSONDecodeError (what FastAPI answers with 422) for each."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        _check_strings(value)
    except json.JSONDecodeError:
        raise
    except UnicodeEncodeError:
        raise json.JSONDecodeError("a string holds a lone surrogate (not UTF-8)", "", 0) from None
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(str(exc) or type(exc).__name__, "", 0) from None
    return value


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by `loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
