"""Accepting an update: route each timestep group to its open round, check it against the round,
charge ε for public contributions, store everything in one transaction.

Replays are idempotent: the same update id with the same bytes returns the first receipt (and
stores nothing); the same id with other bytes is a conflict.
"""

from __future__ import annotations

import base64
import time

from federation_hub import codec
from federation_hub.auth import Caller, scope_of
from federation_hub.errors import Forbidden, Invalid, NotFound
from federation_hub.privacy.accountant import charge as charge_epsilon
from federation_hub.schemas import Accepted, PlainUpdate, SealedUpdate, UpdateReceipt
from federation_hub.services.state import HubState
from federation_hub.storage.base import BudgetCharge, Conflict, NewContribution, NewUpdate
from federation_hub.validation import check_deltas


def budget_period(settings, now: float | None = None) -> int:
    return int((time.time() if now is None else now) // settings.budget_period_s)


def submit(
    state: HubState, caller: Caller, update: PlainUpdate | SealedUpdate, body_hash: str
) -> tuple[UpdateReceipt, bool]:
    if caller.kind != "client":
        raise Forbidden("updates: only client tokens submit updates")
    found = state.store.find_update(caller.tenant, caller.client_id, update.update_id)
    if found is not None:  # a replay: answer before doing any work
        if found[0] != body_hash:
            raise Conflict(f"update {update.update_id}: this id was accepted before with different content")
        return UpdateReceipt(**{**found[1], "duplicate": True}), True
    if not update.consent.granted:
        raise Forbidden(f"update {update.update_id}: consent not granted for the {update.tier} tier")
    if isinstance(update, SealedUpdate):
        parts, charge = _sealed_parts(state, caller, update), None
    else:
        parts, charge = _plain_parts(state, caller, update)
    new = NewUpdate(
        caller.tenant, caller.client_id, update.update_id, body_hash, update.tier, tuple(p for _, p in parts)
    )
    accepted = [Accepted(timestep_group=tg, round_id=p.round_id) for tg, p in parts]

    def receipt(epsilon: float | None) -> dict:
        return UpdateReceipt(
            update_id=update.update_id, duplicate=False, accepted=accepted, epsilon_spent=epsilon
        ).model_dump()

    body, duplicate = state.store.accept_update(new, receipt, charge)
    result = UpdateReceipt(**{**body, "duplicate": duplicate})
    return result, duplicate


def _plain_parts(state: HubState, caller: Caller, update: PlainUpdate):
    scope = scope_of(update.tier, caller.tenant, None)
    parts, sigmas, round_ids = [], [], []
    for tg, group in sorted(update.groups.items()):
        round_ = state.store.open_round(scope, tg)
        if round_ is None:
            raise Conflict(f"groups.{tg}: no open {update.tier} round for timestep group {tg!r}")
        pairs = group.pairs()
        norm = check_deltas(f"groups.{tg}", pairs, round_.shapes, round_.max_norm, round_.id)
        metrics = group.metrics.model_dump()
        parts.append((tg, NewContribution(
            round_id=round_.id, payload=codec.encode_contribution(pairs, metrics), samples=metrics["samples"],
            perplexity_before=metrics["perplexity_before"], perplexity_after=metrics["perplexity_after"], norm=norm,
        )))  # fmt: skip
        if round_.dp:
            sigmas.append(round_.dp["noise_multiplier"])
            round_ids.append(round_.id)
    charge = None
    if sigmas:
        settings = state.settings

        def check(spent: list[float], new: list[float]) -> float:
            epsilon = None
            for i, sigma in enumerate(new):
                epsilon = charge_epsilon([*spent, *new[:i]], sigma, settings.delta, settings.epsilon_budget)
            return epsilon

        charge = BudgetCharge(
            budget_period(settings), tuple(sigmas), tuple(round_ids), _counted(state, check)
        )
    return parts, charge


def _counted(state: HubState, check):
    def wrapped(spent, new):
        try:
            return check(spent, new)
        except Exception:
            state.metrics.budget_refusals.inc()
            raise

    return wrapped


def _sealed_parts(state: HubState, caller: Caller, update: SealedUpdate):
    if update.group not in caller.groups:
        raise Forbidden(f"group {update.group!r}: you are not a member")
    parts = []
    for tg, part in sorted(update.sealed.items()):
        round_ = state.store.get_round(part.round_id, caller.viewer)
        if (
            round_ is None
            or round_.tier != "group"
            or round_.group != update.group
            or round_.tenant != caller.tenant
        ):
            raise NotFound(f"sealed.{tg}: round {part.round_id} is not a round of group {update.group!r}")
        if round_.timestep_group != tg:
            raise Invalid(
                f"sealed.{tg}: round {part.round_id} is for timestep group {round_.timestep_group!r}"
            )
        parts.append((tg, NewContribution(
            round_id=round_.id, payload=base64.b64decode(part.ciphertext), nonce=base64.b64decode(part.nonce)
        )))  # fmt: skip
    return parts
