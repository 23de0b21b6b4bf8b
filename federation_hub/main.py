"""The app factory: settings in, FastAPI app out. Middleware, routers and a lifespan that opens
(and migrates) the store, finishes rounds a killed hub left half-closed, and runs gossip."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from federation_hub import problems
from federation_hub.observability import HubMetrics, RequestLogMiddleware
from federation_hub.routers import admin, gossip, health, releases, rounds, updates
from federation_hub.schemas import HUB_ID_PATTERN
from federation_hub.services.folding import Folder
from federation_hub.services.gossip import GossipLoop
from federation_hub.services.rounds import resume_closing
from federation_hub.services.state import HubState
from federation_hub.settings import HubSettings
from federation_hub.storage import open_store
from federation_hub.storage.base import Store
from ruvdllm.errors import RuvdllmError
from ruvdllm.http_limits import BodySizeLimit

log = logging.getLogger("federation_hub")


def hub_id_of(store: Store, wanted: str | None) -> str:
    """The database's hub id (made `wanted`, or random, on its first start), if it can name
    releases: a database made before hub ids were checked may hold one like "eu:1", whose release
    ids ("eu:1:1") no route would take."""
    hub_id = store.hub_id(wanted)
    if re.fullmatch(HUB_ID_PATTERN, hub_id) is None:
        raise RuvdllmError(
            f"hub database: its hub id {hub_id[:80]!r} is not 1 to 64 of A-Z a-z 0-9 _ . - "
            "(release ids are 'hub id:seq'); start this hub on a new database"
        )
    return hub_id


def create_app(settings: HubSettings) -> FastAPI:
    metrics = HubMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = await asyncio.to_thread(open_store, settings.database_url)
        hub_id = await asyncio.to_thread(hub_id_of, store, settings.hub_id)
        state = HubState(settings, store, hub_id, metrics, np.random.default_rng(settings.dp_seed))
        app.state.hub = state
        state.folder = Folder(state)
        tasks = [
            asyncio.create_task(asyncio.to_thread(resume_closing, state), name="resume-closing"),
            asyncio.create_task(state.folder.run(), name="folding"),
        ]
        if settings.peers and settings.gossip_secret:
            tasks.append(asyncio.create_task(GossipLoop(state).run(), name="gossip"))
        log.info(
            "hub started", extra={"hub_id": hub_id, "database": store.dialect, "peers": list(settings.peers)}
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            store.close()

    app = FastAPI(
        title="RuvDLLM federation hub",
        version=health.VERSION,
        summary="Aggregates per-timestep-group LoRA adapter updates (DAF) under privacy tiers; gossips releases with peer hubs.",
        lifespan=lifespan,
    )
    # a 413 reads like every other error of the hub (problems.py)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        error_body=problems.problem_body,
        hint="--max-request-mb",
    )
    app.add_middleware(problems.UnexpectedErrors)  # inside the request log: it logs a bug's 500
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    problems.install(app)

    for module in (health, admin, rounds, updates, releases, gossip):
        app.include_router(module.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            # the update bodies are parsed by hand (routers/updates.py); their models join the
            # components here, the binary body's header (its metadata) as `UpdateHeader`
            components = schema["components"]["schemas"]
            components.update(updates.UPDATE_SCHEMA.get("$defs", {}))
            components.update(updates.HEADER_SCHEMA.get("$defs", {}))
            components["UpdateHeader"] = {k: v for k, v in updates.HEADER_SCHEMA.items() if k != "$defs"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
