from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from federation_hub.deps import State
from federation_hub.errors import NotFound, Unauthorized
from federation_hub.gossip import signing
from federation_hub.routers import hub_router
from federation_hub.schemas import GossipReply, GossipSync
from federation_hub.services import gossip as service

router = hub_router(prefix="/v1/gossip", tags=["gossip"])


async def peer(request: Request, state: State) -> str:
    """The calling hub's id, if its HMAC signature over this exact request holds."""
    secret = state.settings.gossip_secret
    if secret is None:
        raise NotFound("gossip: not enabled on this hub")
    sender = signing.verify(
        secret, request.method, request.url.path, request.headers, await request.body(), time.time()
    )
    if sender is None:
        raise Unauthorized("gossip: missing, stale or wrong HMAC signature")
    return sender


@router.post("/sync", response_model=GossipReply, summary="anti-entropy exchange (HMAC-signed, hub to hub)")
async def sync(message: GossipSync, sender: Annotated[str, Depends(peer)], state: State) -> GossipReply:
    if message.hub_id != sender:
        raise Unauthorized(f"gossip: signed by {sender!r} but speaks for {message.hub_id!r}")
    merged = (
        await run_in_threadpool(service.merge_entries, state, message.entries, sender)
        if message.entries
        else 0
    )
    entries = await run_in_threadpool(service.entries_for, state, message.vv)
    vv = await run_in_threadpool(service.local_vv, state)
    return GossipReply(hub_id=state.hub_id, vv=vv, entries=entries, merged=merged)
