"""Accepting an update: route each timestep group to its open round, check it against the round,
charge ε for public contributions, store everything in one transaction.

The acceptance rules live here; storage only reads and writes (storage/base.py `Transaction`).
The rules that depend on what is stored run inside the transaction, on reads it holds until
commit, so concurrent submissions (threads, hub replicas) cannot both pass them:

    the update id is new, or this is a replay      `_replay`, the one idempotency check
    every round is open                            the round held shared: a close waits for us
    one contribution per client and round
    the client's ε budget holds after this update  the client's ledger held exclusively

Replays are idempotent: the same update id with the same bytes returns the first receipt (and
stores nothing); the same id with other bytes is a conflict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from federation_hub.auth import Caller, scope_of
from federation_hub.errors import Forbidden, Invalid, NotFound
from federation_hub.incoming import Incoming
from federation_hub.privacy.accountant import BudgetExhausted
from federation_hub.privacy.accountant import charge as charge_epsilon
from federation_hub.schemas import Accepted, UpdateReceipt
from federation_hub.services.aggregation import strategy_for
from federation_hub.services.state import HubState
from federation_hub.storage.base import (
    ConcurrentWrite,
    Conflict,
    NewContribution,
    NewUpdate,
    Store,
    StoredUpdate,
)
from federation_hub.tiers import Tier
from federation_hub.validation import check_deltas


@dataclass(frozen=True)
class EpsilonCharge:
    """What an update's public contributions cost: one Gaussian mechanism per DP round, charged
    to the client's ledger for the period, against the hub's (ε, δ) budget."""

    period: int
    rounds: tuple[tuple[int, float], ...]  # (round id, noise multiplier), one per public contribution
    delta: float
    budget: float


def budget_period(settings, now: float | None = None) -> int:
    return int((time.time() if now is None else now) // settings.budget_period_s)


def submit(state: HubState, caller: Caller, update: Incoming, body_hash: str) -> tuple[UpdateReceipt, bool]:
    """Check `update` against its rounds and accept it; (receipt, duplicate)."""
    if caller.kind != "client":
        raise Forbidden("updates: only client tokens submit updates")
    stored = state.store.find_update(caller.tenant, caller.client_id, update.update_id)
    replay = _replay(stored, body_hash, update.update_id)
    if replay is not None:  # answered before any work: its rounds may have closed since
        return replay, True
    if not update.consent.granted:
        raise Forbidden(f"update {update.update_id}: consent not granted for the {update.tier} tier")
    if update.tier == Tier.GROUP:
        parts, charge = _sealed_parts(state, caller, update), None
    else:
        parts, charge = _plain_parts(state, caller, update)
    new = NewUpdate(
        caller.tenant,
        caller.client_id,
        update.update_id,
        body_hash,
        update.tier,
        tuple(p for _, p in parts),
        accepted_by=state.instance_id,
    )
    receipt = UpdateReceipt(
        update_id=update.update_id,
        duplicate=False,
        accepted=[Accepted(timestep_group=tg, round_id=p.round_id) for tg, p in parts],
    )
    try:
        return accept(state.store, new, receipt, charge)
    except BudgetExhausted:
        state.metrics.budget_refusals.inc()
        raise


def accept(
    store: Store, update: NewUpdate, receipt: UpdateReceipt, charge: EpsilonCharge | None
) -> tuple[UpdateReceipt, bool]:
    """Store `update` in one transaction if the rules allow it; (receipt, duplicate). `receipt`
    is the answer to a first acceptance, completed here with the ε spent; a replay gets the
    first receipt back. Raises Conflict or BudgetExhausted, and then stores nothing."""
    try:
        return _accept(store, update, receipt, charge)
    except ConcurrentWrite:
        # Another request stored this update id (a client's retry racing the first try), or the
        # client's contribution to one of these rounds, first. Decided again, the rules see it.
        return _accept(store, update, receipt, charge)


def _accept(
    store: Store, update: NewUpdate, receipt: UpdateReceipt, charge: EpsilonCharge | None
) -> tuple[UpdateReceipt, bool]:
    with store.transaction() as tx:
        stored = tx.find_update(update.tenant, update.client_id, update.update_id)
        replay = _replay(stored, update.body_hash, update.update_id)
        if replay is not None:
            return replay, True
        for part in update.contributions:
            status = tx.round_status(part.round_id)
            if status != "open":
                raise Conflict(f"round {part.round_id}: is {status}, no longer accepting updates")
            earlier = tx.contributor_update(part.round_id, update.client_key)
            if earlier == update.update_id:
                # This very update, committed by a racing retry after our id lookup: on
                # PostgreSQL (read committed) each statement sees the latest commits. Decided
                # again, the lookup finds it and this becomes a replay.
                raise ConcurrentWrite(f"update {update.update_id}: stored concurrently")
            if earlier is not None:
                raise Conflict(
                    f"round {part.round_id}: you contributed already (update {earlier}); one per round"
                )
        epsilon = None
        if charge is not None:
            epsilon = _epsilon_after(tx.budget_spent(update.client_key, charge.period), charge)
        first = receipt.model_copy(update={"epsilon_spent": epsilon})
        tx.add_update(update, first.model_dump())
        if charge is not None:
            tx.charge_budget(update.client_key, charge.period, charge.rounds, epsilon)
        return first, False


def _replay(stored: StoredUpdate | None, body_hash: str, update_id: str) -> UpdateReceipt | None:
    """The first receipt when `stored` is this update accepted before (the same bytes), None when
    the id is new; Conflict when the id was accepted with other bytes."""
    if stored is None:
        return None
    if stored.body_hash != body_hash:
        raise Conflict(f"update {update_id}: this id was accepted before with different content")
    return UpdateReceipt(**{**stored.receipt, "duplicate": True})


def _epsilon_after(spent: list[float], charge: EpsilonCharge) -> float:
    """ε after charging the update's rounds one by one; BudgetExhausted at the first over budget."""
    sigmas = [sigma for _, sigma in charge.rounds]
    epsilon = 0.0
    for i, sigma in enumerate(sigmas):
        epsilon = charge_epsilon([*spent, *sigmas[:i]], sigma, charge.delta, charge.budget)
    return epsilon


def _plain_parts(
    state: HubState, caller: Caller, update: Incoming
) -> tuple[list[tuple[str, NewContribution]], EpsilonCharge | None]:
    scope = scope_of(update.tier, caller.tenant, None)
    parts, charged = [], []
    for tg, part in sorted(update.plain.items()):
        round_ = state.store.open_round(scope, tg)
        if round_ is None:
            raise Conflict(f"groups.{tg}: no open {update.tier} round for timestep group {tg!r}")
        if part.float16 and not round_.accept_float16:
            raise Invalid(
                f"groups.{tg}: round {round_.id} takes float32 factors only (accept_float16 is off)",
                loc=("groups", tg),
            )
        norm = check_deltas(
            f"groups.{tg}", part.pairs, round_.shapes, round_.max_norm, round_.id, loc=("groups", tg)
        )
        sketch = None
        if strategy_for(round_).needs_features:  # clustering: its features now, not at the close
            sketch = state.sketcher(round_.id, round_.shapes, round_.sketch_seed).sketch(part.pairs).tobytes()
        contribution = NewContribution(
            round_id=round_.id,
            payload=part.payload,
            samples=part.metrics.samples,
            perplexity_before=part.metrics.perplexity_before,
            perplexity_after=part.metrics.perplexity_after,
            norm=norm,
            sketch=sketch,
        )
        parts.append((tg, contribution))
        if round_.dp:
            charged.append((round_.id, round_.dp["noise_multiplier"]))
    if not charged:
        return parts, None
    settings = state.settings
    charge = EpsilonCharge(budget_period(settings), tuple(charged), settings.delta, settings.epsilon_budget)
    return parts, charge


def _sealed_parts(state: HubState, caller: Caller, update: Incoming) -> list[tuple[str, NewContribution]]:
    if update.group not in caller.groups:
        raise Forbidden(f"group {update.group!r}: you are not a member")
    parts = []
    for tg, part in sorted(update.sealed.items()):
        round_ = state.store.get_round(part.round_id, caller.viewer)
        if (
            round_ is None
            or round_.tier != Tier.GROUP
            or round_.group != update.group
            or round_.tenant != caller.tenant
        ):
            raise NotFound(f"sealed.{tg}: round {part.round_id} is not a round of group {update.group!r}")
        if round_.timestep_group != tg:
            raise Invalid(
                f"sealed.{tg}: round {part.round_id} is for timestep group {round_.timestep_group!r}"
            )
        contribution = NewContribution(round_id=round_.id, payload=part.ciphertext, nonce=part.nonce)
        parts.append((tg, contribution))
    return parts
