"""HTTP protocol only: parse, authorise, call a service, shape the reply. Every router is made by
`hub_router`, so all of them parse JSON strictly and document the one error shape."""

from __future__ import annotations

from fastapi import APIRouter

from federation_hub.problems import ERROR_RESPONSES
from federation_hub.strict_json import StrictJsonRoute


def hub_router(**kwargs) -> APIRouter:
    return APIRouter(route_class=StrictJsonRoute, responses=ERROR_RESPONSES, **kwargs)
