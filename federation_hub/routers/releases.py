from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request, Response

from federation_hub import codec
from federation_hub.deps import AnyCaller, State
from federation_hub.errors import NotFound
from federation_hub.routers import hub_router
from federation_hub.schemas import RELEASE_ID_PATTERN, LoraDelta, Release, ReleaseSummary, TimestepGroup
from federation_hub.storage.base import ReleaseRecord

router = hub_router(prefix="/v1/releases", tags=["releases"])


def summary(record: ReleaseRecord) -> dict:
    meta = record.meta
    return dict(
        id=record.id,
        origin=record.origin,
        seq=record.seq,
        tier=record.tier,
        tenant=record.tenant,
        timestep_group=record.timestep_group,
        round_id=meta["round_id"],
        strategy=meta["strategy"],
        contributors=meta["contributors"],
        created_at=meta["created_at"],
        digest=record.digest,
        details=meta.get("details", {}),
    )


@router.get(
    "", response_model=list[ReleaseSummary], summary="released aggregates visible to the caller, newest first"
)
def list_releases(
    who: AnyCaller,
    state: State,
    timestep_group: Annotated[TimestepGroup | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ReleaseSummary]:
    return [
        ReleaseSummary(**summary(r)) for r in state.store.list_releases(who.viewer, timestep_group, limit)
    ]


@router.get(
    "/{release_id}",
    response_model=Release,
    summary="one release with its LoRA factors (JSON, or the stored safetensors file)",
    responses={
        200: {
            "description": f"JSON; with `Accept: {codec.MEDIA_TYPE}` the release's safetensors file "
            "(its sha256 is the release's digest, also in `x-release-digest`)",
            "content": {codec.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def get_release(
    release_id: Annotated[str, Path(pattern=RELEASE_ID_PATTERN)],
    request: Request,
    who: AnyCaller,
    state: State,
):
    record = state.store.get_release(release_id, who.viewer)
    if record is None:
        raise NotFound(f"release {release_id}: not found")
    if codec.MEDIA_TYPE in request.headers.get("accept", ""):
        return Response(
            record.payload, media_type=codec.MEDIA_TYPE, headers={"x-release-digest": record.digest}
        )
    _, pairs, residuals = codec.decode_release(record.payload, f"release {release_id}")
    return Release(
        **summary(record),
        deltas={name: LoraDelta.of(pair) for name, pair in pairs.items()},
        residuals=residuals,
    )
