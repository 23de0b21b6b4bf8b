from __future__ import annotations

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from federation_hub.deps import State
from federation_hub.routers import hub_router
from federation_hub.schemas import Health

router = hub_router(tags=["operations"])
VERSION = "0.1.0"


@router.get("/health", response_model=Health, summary="liveness and database reachability")
def health(state: State) -> Health:
    state.store.ping()
    return Health(status="ok", hub_id=state.hub_id, database=state.store.dialect, version=VERSION)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: State) -> Response:
    state.metrics.releases_held.set(sum(len(s) for s in state.store.release_seqs().values()))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
