from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import Query

from federation_hub.deps import Admin, AnyCaller, Client, State
from federation_hub.errors import NotFound
from federation_hub.routers import PathId, hub_router
from federation_hub.schemas import CloseRequest, RoundOut, RoundSpec, SealedItem
from federation_hub.services import rounds as service
from federation_hub.storage.base import Conflict, RoundRecord
from federation_hub.strategies import make_strategy
from federation_hub.tiers import Tier

router = hub_router(prefix="/v1/rounds", tags=["rounds"])
RoundId = PathId
Status = Literal["open", "closing", "released", "withheld", "relayed"]


def round_out(record: RoundRecord) -> RoundOut:
    """The record as published: all of it but its scope (derived from tier, tenant and group), with
    the settings its strategy hands to clients."""
    fields = asdict(record)
    del fields["scope"]
    config = make_strategy(record.strategy, record.timestep_group, record.strategy_params).client_config()
    return RoundOut(**fields, client_config=config)


@router.post(
    "", status_code=201, response_model=RoundOut, summary="open a round for a scope and timestep group"
)
def open_round(spec: RoundSpec, _: Admin, state: State) -> RoundOut:
    return round_out(service.open_round(state, spec))


@router.get("", response_model=list[RoundOut], summary="rounds visible to the caller")
def list_rounds(
    who: AnyCaller,
    state: State,
    status: Annotated[Status | None, Query()] = None,
) -> list[RoundOut]:
    return [round_out(r) for r in state.store.list_rounds(who.viewer, status)]


@router.get("/{round_id}", response_model=RoundOut, summary="one round")
def get_round(round_id: RoundId, who: AnyCaller, state: State) -> RoundOut:
    record = state.store.get_round(round_id, who.viewer)
    if record is None:
        raise NotFound(f"round {round_id}: not found")
    return round_out(record)


@router.post(
    "/{round_id}/close", response_model=RoundOut, summary="close: aggregate, apply k-anonymity, release"
)
def close_round(
    round_id: RoundId,
    _: Admin,
    state: State,
    body: CloseRequest | None = None,
) -> RoundOut:
    return round_out(service.close_round(state, round_id, reopen=bool(body and body.reopen)))


@router.get(
    "/{round_id}/sealed", response_model=list[SealedItem], summary="group tier: the ciphertexts, for members"
)
def sealed(round_id: RoundId, who: Client, state: State) -> list[SealedItem]:
    record = state.store.get_round(round_id, who.viewer)
    if record is None or record.tier != Tier.GROUP:
        raise NotFound(f"round {round_id}: no group round of yours")
    if record.status != "relayed":
        raise Conflict(f"round {round_id}: still {record.status}; ciphertexts are relayed once it is closed")
    return [
        SealedItem(
            update_id=row.update_id,
            timestep_group=record.timestep_group,
            round_id=record.id,
            nonce=base64.b64encode(row.nonce).decode(),
            ciphertext=base64.b64encode(row.ciphertext).decode(),
        )
        for row in state.store.sealed_rows(round_id)
    ]
