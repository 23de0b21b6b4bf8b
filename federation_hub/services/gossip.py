"""Push-pull anti-entropy with peer hubs.

One exchange with a peer (both directions in two signed requests):

    A → B  POST /v1/gossip/sync  {hub_id: A, vv: VV_A, entries: []}
    B → A  {hub_id: B, vv: VV_B, entries: what B holds above VV_A}        (pull)
    A → B  POST /v1/gossip/sync  {hub_id: A, vv: VV_A', entries: what A holds above VV_B}   (push)

Entries are released aggregates; merging them is set union (gossip/vv.py), so lost, repeated or
reordered messages only delay convergence. Each exchange carries at most about half the request
size limit of payload; the rest follows in the next exchange.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time

import httpx

from federation_hub import codec
from federation_hub.gossip import signing
from federation_hub.gossip.vv import version_vector
from federation_hub.schemas import GossipEntry, GossipReply, GossipSync, ReleaseMeta
from federation_hub.services.state import HubState
from federation_hub.storage.base import ReleaseRecord
from ruvdllm.errors import RuvdllmError

log = logging.getLogger("federation_hub.gossip")
SYNC_PATH = "/v1/gossip/sync"


def local_vv(state: HubState) -> dict[str, int]:
    return version_vector(state.store.release_seqs())


def entries_for(state: HubState, peer_vv: dict[str, int]) -> list[GossipEntry]:
    """What we hold above the peer's version vector, within the byte allowance of one exchange."""
    allowance = state.settings.max_request_bytes // 2
    entries, used = [], 0
    for rel in state.store.releases_after(peer_vv, state.settings.gossip_tiers, limit=1000):
        size = len(rel.payload) * 4 // 3 + len(json.dumps(rel.meta))
        if entries and used + size > allowance:
            break
        entries.append(to_entry(rel))
        used += size
    return entries


def to_entry(rel: ReleaseRecord) -> GossipEntry:
    return GossipEntry(
        origin=rel.origin,
        seq=rel.seq,
        meta=rel.meta,
        payload=base64.b64encode(rel.payload).decode(),
        digest=rel.digest,
    )


def merge_entries(state: HubState, entries: list[GossipEntry], sender: str) -> int:
    """Validate and merge; entries that fail a check are skipped and logged, never stored."""
    good = []
    for entry in entries:
        try:
            payload = base64.b64decode(entry.payload, validate=True)
        except ValueError:
            payload = None
        problem = _problem(state, entry, payload)
        if problem:
            log.warning(
                "gossip entry rejected",
                extra={"peer": sender, "entry": f"{entry.origin}:{entry.seq}", "why": problem},
            )
            continue
        record = ReleaseRecord(
            origin=entry.origin,
            seq=entry.seq,
            tier=entry.meta["tier"],
            tenant=entry.meta.get("tenant"),
            timestep_group=entry.meta["timestep_group"],
            meta=entry.meta,
            digest=entry.digest,
            payload=payload,
        )
        good.append(record)
    merged = state.store.merge_releases(good) if good else 0
    state.metrics.gossip_merged.inc(merged)
    return merged


def _problem(state: HubState, entry: GossipEntry, payload: bytes | None) -> str | None:
    """Why an entry must not be merged, or None."""
    if payload is None:
        return "payload is not base64"
    if hashlib.sha256(payload).hexdigest() != entry.digest:
        return "digest does not match payload"
    if entry.meta.get("origin") != entry.origin or entry.meta.get("seq") != entry.seq:
        return "meta names another origin or seq"
    if not _meta_ok(entry.meta):
        return "meta is not a release summary"
    if entry.meta["tier"] not in state.settings.gossip_tiers:
        return f"tier {entry.meta['tier']!r} is not gossiped here"
    if entry.origin == state.hub_id and entry.seq > local_vv(state).get(state.hub_id, 0):
        return "claims to be ours but we never released it"
    try:
        _, metrics = codec.decode_contribution(payload, f"release {entry.origin}:{entry.seq}")
    except RuvdllmError as exc:
        return str(exc)
    if not isinstance(metrics.get("residuals"), dict):
        return "payload has no residuals"
    return None


def _meta_ok(meta: dict) -> bool:
    try:
        ReleaseMeta.model_validate(meta)
    except ValueError:
        return False
    return meta["id"] == f"{meta['origin']}:{meta['seq']}"


class GossipLoop:
    """Exchanges with every peer each interval, forever (until cancelled)."""

    def __init__(self, state: HubState):
        self.state = state
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0))

    async def run(self) -> None:
        interval = self.state.settings.gossip_interval_s
        try:
            while True:
                for peer in self.state.settings.peers:
                    await self.exchange(peer)
                await asyncio.sleep(interval)
        finally:
            await self.client.aclose()

    async def exchange(self, peer: str) -> bool:
        try:
            vv = await asyncio.to_thread(local_vv, self.state)
            reply = await self._post(peer, GossipSync(hub_id=self.state.hub_id, vv=vv))
            await asyncio.to_thread(merge_entries, self.state, reply.entries, reply.hub_id)
            push = await asyncio.to_thread(entries_for, self.state, reply.vv)
            if push:
                vv = await asyncio.to_thread(local_vv, self.state)
                await self._post(peer, GossipSync(hub_id=self.state.hub_id, vv=vv, entries=push))
            self.state.metrics.gossip.labels(peer, "ok").inc()
            return True
        except (httpx.HTTPError, ValueError) as exc:
            self.state.metrics.gossip.labels(peer, "failed").inc()
            log.info("gossip exchange failed", extra={"peer": peer, "error": f"{type(exc).__name__}: {exc}"})
            return False

    async def _post(self, peer: str, message: GossipSync) -> GossipReply:
        body = message.model_dump_json().encode()
        headers = signing.sign_headers(
            self.state.settings.gossip_secret, "POST", SYNC_PATH, self.state.hub_id, body, time.time()
        )
        response = await self.client.post(
            peer.rstrip("/") + SYNC_PATH,
            content=body,
            headers={**headers, "content-type": "application/json"},
        )
        response.raise_for_status()
        return GossipReply.model_validate_json(response.content)
