"""Opening and closing rounds; a close aggregates, applies k-anonymity and writes the release.

A close is resumable: the round first becomes `closing` (no more updates), then the outcome, the
release and its audit entry are written in one transaction (`finish`), which also drops what only
a close could need (plaintext payloads, running sums). A hub killed in between finds the round
`closing` at start-up and aggregates it again from the same stored contributions.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np

from federation_hub import codec
from federation_hub.auth import scope_of
from federation_hub.errors import Invalid, NotFound
from federation_hub.privacy.accountant import epsilon_spent
from federation_hub.privacy.kanon import release_allowed
from federation_hub.schemas import RoundSpec
from federation_hub.services import aggregation
from federation_hub.services.aggregation import strategy_for
from federation_hub.services.state import HubState
from federation_hub.storage.base import Conflict, NewRelease, RoundRecord, Store, Viewer
from federation_hub.strategies import make_strategy
from federation_hub.tiers import Tier

log = logging.getLogger("federation_hub.rounds")
ADMIN = Viewer(admin=True)


def open_round(state: HubState, spec: RoundSpec) -> RoundRecord:
    settings = state.settings
    if spec.tier == Tier.PUBLIC and (spec.tenant or spec.group):
        raise Invalid("round: a public round belongs to no tenant or group")
    if spec.tier in (Tier.TENANT, Tier.GROUP) and not spec.tenant:
        raise Invalid(f"round: a {spec.tier} round needs a tenant")
    if spec.tier == Tier.GROUP and not spec.group:
        raise Invalid("round: a group round needs a group")
    if spec.tier == Tier.TENANT and spec.group:
        raise Invalid("round: a tenant round has no group (use tier group)")
    if spec.tenant and not state.store.tenant_exists(spec.tenant):
        raise NotFound(f"tenant {spec.tenant!r}: does not exist")
    try:
        make_strategy(spec.strategy, spec.timestep_group, spec.strategy_params)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"round: {exc}") from None
    dp = None
    min_contributors = spec.min_contributors
    if spec.tier == Tier.PUBLIC:
        dp = (
            spec.dp.model_dump()
            if spec.dp
            else {
                "clip_norm": settings.default_clip_norm,
                "noise_multiplier": settings.default_noise_multiplier,
            }
        )
        min_contributors = max(min_contributors, settings.k_anonymity)
    fields = dict(
        scope=scope_of(spec.tier, spec.tenant, spec.group),
        tier=spec.tier,
        tenant=spec.tenant,
        grp=spec.group,
        timestep_group=spec.timestep_group,
        strategy=spec.strategy,
        strategy_params=dict(spec.strategy_params),
        shapes={name: shape.model_dump() for name, shape in spec.shapes.items()},
        max_norm=spec.max_norm,
        min_contributors=min_contributors,
        release_rank=spec.release_rank,
        dp=dp,
        accept_float16=spec.accept_float16,
        sketch_seed=int(state.child_rng().integers(0, 2**62)),
    )
    return state.store.create_round(fields)


def close_round(state: HubState, round_id: int, reopen: bool = False) -> RoundRecord:
    """Close (or finish closing) a round; idempotent for rounds already finished."""
    store = state.store
    round_ = store.get_round(round_id, ADMIN)
    if round_ is None:
        raise NotFound(f"round {round_id}: does not exist")
    if round_.status == "open":
        store.begin_closing(round_id)
    if store.get_round(round_id, ADMIN).status == "closing":
        _finish(state, round_)
    if reopen:
        fields = dict(
            scope=round_.scope,
            tier=round_.tier,
            tenant=round_.tenant,
            grp=round_.group,
            timestep_group=round_.timestep_group,
            strategy=round_.strategy,
            strategy_params=round_.strategy_params,
            shapes=round_.shapes,
            max_norm=round_.max_norm,
            min_contributors=round_.min_contributors,
            release_rank=round_.release_rank,
            dp=round_.dp,
            accept_float16=round_.accept_float16,
            sketch_seed=int(state.child_rng().integers(0, 2**62)),
        )
        try:
            store.create_round(fields)
        except Conflict:
            pass  # someone (a replica, a concurrent close) opened the next one already
    return store.get_round(round_id, ADMIN)


def resume_closing(state: HubState) -> None:
    """Finish rounds a killed hub left half-closed."""
    for round_id in state.store.closing_rounds():
        log.info("resuming close", extra={"round_id": round_id})
        close_round(state, round_id)


def finish(
    store: Store,
    round_id: int,
    status: str,
    outcome: str,
    release: NewRelease | None,
    audit: tuple[str, str, dict],
) -> str | None:
    """closing -> `status`, with the round's release (if any) and audit entry, in one
    transaction; returns the release id. A round finishes once: when it is no longer closing (a
    replica or an earlier attempt finished it), it keeps that first outcome and its release id
    is returned. The round is held exclusively, so concurrent finishers wait for each other."""
    with store.transaction() as tx:
        current = tx.lock_round(round_id)
        if current.status != "closing":
            return current.release_id
        release_id = tx.add_release(release) if release is not None else None
        tx.finish_round(round_id, status, outcome, release_id)
        kind, subject, details = audit
        tx.append_audit(kind, subject, {**details, "release_id": release_id})
        if status != "relayed":  # the plaintext contributions and running sums have served
            tx.drop_round_data(round_id)
        return release_id


def _finish(state: HubState, round_: RoundRecord) -> None:
    if round_.tier == Tier.GROUP:
        count = len(state.store.contribution_rows(round_.id))
        outcome = f"{count} sealed contributions relayed; members aggregate locally"
        details = {
            "tier": round_.tier,
            "tenant": round_.tenant,
            "group": round_.group,
            "contributions": count,
        }
        finish(state.store, round_.id, "relayed", outcome, None, ("relayed", str(round_.id), details))
        return
    started = time.perf_counter()
    held = state.folder.take(round_.id) if state.folder is not None else None  # its own sum, from memory
    flushed = time.perf_counter()
    rows, result = aggregation.aggregate(state, round_, strategy_for(round_), held)
    aggregated = time.perf_counter()
    state.metrics.aggregation_seconds.labels(round_.timestep_group).observe(aggregated - started)
    log.info(
        "round aggregated",
        extra={
            "round_id": round_.id,
            "flush_s": round(flushed - started, 3),
            "aggregate_s": round(aggregated - flushed, 3),
        },
    )
    chosen = [rows[i].client_key for i in np.flatnonzero(result.selection.weights)]
    needed = round_.min_contributors
    allowed, reason = (
        release_allowed(chosen, needed) if not result.withheld else (False, result.selection.reason)
    )
    base = {
        "tier": round_.tier,
        "tenant": round_.tenant,
        "timestep_group": round_.timestep_group,
        "strategy": round_.strategy,
    }
    if not allowed:
        state.metrics.releases.labels(round_.tier, round_.timestep_group, "withheld").inc()
        details = {**base, "reason": reason, "submitted": len(rows), "selected": len(set(chosen))}
        finish(state.store, round_.id, "withheld", reason, None, ("withheld", str(round_.id), details))
        return
    epsilon = epsilon_spent([round_.dp["noise_multiplier"]], state.settings.delta) if round_.dp else None
    pairs = {name: f.pair for name, f in result.factors.items()}
    residuals = {name: f.residual for name, f in result.factors.items()}
    payload = codec.encode_release(round_.timestep_group, pairs, residuals)
    details = {**result.selection.details, **result.facts, "shapes": round_.shapes}
    if epsilon is not None:
        details.update(epsilon_per_contributor=epsilon, delta=state.settings.delta)
    meta = {**base, "round_id": round_.id, "contributors": len(set(chosen)), "details": details}
    release = NewRelease(
        round_.tier, round_.tenant, round_.timestep_group, meta, hashlib.sha256(payload).hexdigest(), payload
    )
    audit = {
        **base,
        "contributors": sorted(set(chosen)),
        "contributor_count": len(set(chosen)),
        "epsilon": epsilon,
    }
    finish(state.store, round_.id, "released", "released", release, ("release", str(round_.id), audit))
    state.metrics.releases.labels(round_.tier, round_.timestep_group, "released").inc()
