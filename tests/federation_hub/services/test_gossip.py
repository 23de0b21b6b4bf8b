"""Merging what a signed peer sends (services/gossip.py) on a real store: a copy never replaces
this hub's own releases and never changes who may read a release; and a push the peer refuses
for its size says so in the log."""

import asyncio
import base64
import hashlib
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from federation_hub.aggregate.lora import LoraPair
from federation_hub.codec import encode_release
from federation_hub.observability import HubMetrics
from federation_hub.schemas import GossipEntry, GossipSync
from federation_hub.services import gossip
from federation_hub.services.rounds import finish
from federation_hub.services.state import HubState
from federation_hub.settings import HubSettings
from federation_hub.storage import open_store
from federation_hub.storage.base import NewRelease, Viewer
from federation_hub.tiers import Tier

SHAPES = {"l": {"rank": 1, "in_features": 2, "out_features": 2}}
ADMIN = Viewer(admin=True)


@pytest.fixture
def state(tmp_path):
    """Hub "a", gossiping tenant releases too (so a peer could try to relabel one), holding its own
    tenant release a:1 (digest ff…: any copy's sorts below) and a public release b:1 of peer b."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    settings = HubSettings(database_url=url, admin_token_hash="-", gossip_tiers=(Tier.PUBLIC, Tier.TENANT))
    store = open_store(url)
    hub = HubState(settings, store, store.hub_id("a"), HubMetrics(), np.random.default_rng(0))
    store.create_tenant("acme")
    round_id = store.create_round(
        dict(
            scope="tenant:acme",
            tier="tenant",
            tenant="acme",
            grp=None,
            timestep_group="coarse",
            strategy="daf",
            strategy_params={},
            shapes=SHAPES,
            max_norm=10.0,
            min_contributors=1,
            release_rank=None,
            dp=None,
            sketch_seed=1,
        )  # fmt: skip
    ).id
    store.begin_closing(round_id)
    own = NewRelease("tenant", "acme", "coarse", {"round_id": round_id}, "f" * 64, b"RVH1")
    assert finish(store, round_id, "released", "released", own, ("release", str(round_id), {})) == "a:1"
    assert gossip.merge_entries(hub, [entry("b", 1, seed=0)], "b") == 1
    yield hub
    store.close()


def entry(origin, seq, tier="public", tenant=None, seed=0, below=None) -> GossipEntry:
    """A well-formed release entry; with `below`, one whose digest sorts below that digest."""
    while True:
        rng = np.random.default_rng(seed)
        pair = LoraPair(
            rng.standard_normal((1, 2)).astype(np.float32), rng.standard_normal((2, 1)).astype(np.float32)
        )
        payload = encode_release("coarse", {"l": pair}, {"l": 0.0})
        digest = hashlib.sha256(payload).hexdigest()
        if below is None or digest < below:
            break
        seed += 1
    meta = {
        "id": f"{origin}:{seq}", "origin": origin, "seq": seq, "tier": tier, "tenant": tenant,
        "timestep_group": "coarse", "round_id": 1, "strategy": "daf", "contributors": 5,
        "created_at": "2025-01-01T00:00:00+00:00", "details": {"shapes": SHAPES},
    }  # fmt: skip
    return GossipEntry(
        origin=origin, seq=seq, meta=meta, payload=base64.b64encode(payload).decode(), digest=digest
    )


def rejected(caplog) -> list[str]:
    return [r.why for r in caplog.records if r.getMessage() == "gossip entry rejected"]


def test_a_peer_cannot_replace_our_own_release(state, caplog):
    """The outside probe's request: a:1, a tenant release of ours, sent back as public with a
    smaller digest. It was merged: the release became public, readable by every tenant."""
    forged = entry("a", 1, tier="public", below="f" * 64)
    with caplog.at_level(logging.WARNING, "federation_hub.gossip"):
        assert gossip.merge_entries(state, [forged], "b") == 0
    assert any("never replaced" in why for why in rejected(caplog))
    held = state.store.get_release("a:1", ADMIN)
    assert (held.tier, held.tenant, held.digest) == ("tenant", "acme", "f" * 64)
    assert state.store.get_release("a:1", Viewer(admin=False, tenant="globex")) is None
    assert [e.kind for e in state.store.audit_entries()].count("release-conflict") == 0


def test_a_copy_never_changes_who_reads_a_release(state, caplog):
    held = state.store.get_release("b:1", ADMIN)
    relabelled = entry("b", 1, tier="tenant", tenant="acme", seed=1, below=held.digest)
    with caplog.at_level(logging.WARNING, "federation_hub.gossip"):
        assert gossip.merge_entries(state, [relabelled], "b") == 0
    assert state.store.get_release("b:1", ADMIN) == held
    assert any("who reads a release" in why for why in rejected(caplog))
    # the deterministic rule still holds where readers agree: the smaller digest wins
    smaller = entry("b", 1, seed=1, below=held.digest)
    gossip.merge_entries(state, [smaller], "b")
    assert state.store.get_release("b:1", ADMIN).digest == smaller.digest


def test_a_public_release_names_no_tenant(state, caplog):
    with caplog.at_level(logging.WARNING, "federation_hub.gossip"):
        assert gossip.merge_entries(state, [entry("b", 2, tenant="acme")], "b") == 0
    assert rejected(caplog) == ["meta is not a release summary"]


def test_a_push_over_the_peers_limit_says_so(hub):
    """A peer answers a body over its limit 413 and closes the connection unread: the log said
    only `ReadError: `. The conftest hub takes 2 MiB."""
    settings = SimpleNamespace(gossip_secret=b"s" * 32)
    loop = gossip.GossipLoop(SimpleNamespace(settings=settings, hub_id="a"))
    big = entry("a", 1).model_copy(update={"payload": base64.b64encode(b"x" * 3 * 2**20).decode()})

    async def push():
        try:
            await loop._post(hub.url, GossipSync(hub_id="a", vv={}, entries=[big]))
        finally:
            await loop.client.aclose()

    with pytest.raises(gossip.ExchangeFailed, match=r"of \d{7,} bytes.*--max-request-mb"):
        asyncio.run(push())
