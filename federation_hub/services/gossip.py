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

from federation_hub import codec, strict_json
from federation_hub.gossip import signing
from federation_hub.gossip.vv import version_vector
from federation_hub.schemas import GossipEntry, GossipReply, GossipSync, ReleaseMeta
from federation_hub.services.state import HubState
from federation_hub.storage.base import ReleaseRecord
from federation_hub.validation import check_release
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
        meta, problem = _problem(state, entry, payload)
        if problem:
            log.warning(
                "gossip entry rejected",
                extra={"peer": sender, "entry": f"{entry.origin}:{entry.seq}", "why": problem},
            )
            continue
        record = ReleaseRecord(
            origin=entry.origin,
            seq=entry.seq,
            tier=meta.tier,
            tenant=meta.tenant,
            timestep_group=meta.timestep_group,
            meta=entry.meta,
            digest=entry.digest,
            payload=payload,
        )
        good.append(record)
    merged = state.store.merge_releases(good) if good else 0
    state.metrics.gossip_merged.inc(merged)
    return merged


def _problem(
    state: HubState, entry: GossipEntry, payload: bytes | None
) -> tuple[ReleaseMeta | None, str | None]:
    """(the entry's metadata, why it must not be merged or None). As strict as a submission: a
    release is merged only if its metadata is a release summary with its round's shapes and its
    payload decodes to finite factors of exactly those shapes, with a residual for each."""
    if payload is None:
        return None, "payload is not base64"
    if hashlib.sha256(payload).hexdigest() != entry.digest:
        return None, "digest does not match payload"
    try:
        meta = ReleaseMeta.model_validate(entry.meta)
    except ValueError:
        return None, "meta is not a release summary"
    if meta.origin != entry.origin or meta.seq != entry.seq or meta.id != f"{meta.origin}:{meta.seq}":
        return None, "meta names another origin or seq"
    if meta.tier not in state.settings.gossip_tiers:
        return None, f"tier {meta.tier!r} is not gossiped here"
    held = state.store.held_release(entry.origin, entry.seq)
    if entry.origin == state.hub_id:
        # our releases are what we released: no copy replaces one (the smaller-digest rule below
        # would let any peer with the secret rewrite them, tier and tenant included)
        if held is None:
            return None, "claims to be ours but we never released it"
        if held.digest != entry.digest:
            return None, "claims to be ours with other content; our releases are never replaced"
    elif held is not None and held.digest != entry.digest:
        if (held.tier, held.tenant) != (meta.tier, meta.tenant):
            return (
                None,
                "other content under another tier or tenant; a copy never changes who reads a release",
            )
    what = f"release {meta.id}"
    try:
        tg, pairs, _ = codec.decode_release(payload, what)
        if tg != meta.timestep_group:
            return None, f"payload is for timestep group {tg!r}, meta says {meta.timestep_group!r}"
        shapes = {name: shape.model_dump() for name, shape in meta.details.shapes.items()}
        check_release(what, pairs, shapes)
    except RuvdllmError as exc:
        return None, str(exc)
    return meta, None


class ExchangeFailed(Exception):
    """A request of an exchange failed: which, how big, and what came back."""


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
        except (httpx.HTTPError, ValueError, ExchangeFailed) as exc:
            self.state.metrics.gossip.labels(peer, "failed").inc()
            log.info("gossip exchange failed", extra={"peer": peer, "error": f"{type(exc).__name__}: {exc}"})
            return False

    async def _post(self, peer: str, message: GossipSync) -> GossipReply:
        body = message.model_dump_json().encode()
        headers = signing.sign_headers(
            self.state.settings.gossip_secret, "POST", SYNC_PATH, self.state.hub_id, body, time.time()
        )
        what = f"POST {SYNC_PATH} of {len(body)} bytes"
        try:
            response = await self.client.post(
                peer.rstrip("/") + SYNC_PATH,
                content=body,
                headers={**headers, "content-type": "application/json"},
            )
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
            # A peer answers a body over its limit 413 and closes without reading it; mid-upload,
            # that reaches us as a bare read or write error, with no status to show.
            raise ExchangeFailed(
                f"{what}: {type(exc).__name__} {exc}".rstrip()
                + " (the peer closed the connection; is the body over its --max-request-mb?)"
            ) from exc
        if response.is_error:
            raise ExchangeFailed(f"{what}: {response.status_code} {_detail(response)}")
        # strict_json: a peer's NaN must not reach storage, where no reply could render it
        return GossipReply.model_validate(strict_json.loads(response.content))


def _detail(response: httpx.Response) -> str:
    """A peer's error reply in one line: its `detail` (problems.py), or the status's phrase."""
    try:
        detail = strict_json.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail)[:300] if detail else response.reason_phrase
