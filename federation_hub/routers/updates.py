from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from federation_hub.deps import Client, State
from federation_hub.errors import NotFound
from federation_hub.privacy.accountant import epsilon_spent
from federation_hub.schemas import Budget, Update, UpdateId, UpdateReceipt
from federation_hub.services import submission

router = APIRouter(prefix="/v1", tags=["updates"])


@router.post(
    "/updates",
    response_model=UpdateReceipt,
    status_code=201,
    summary="submit an update (per timestep group LoRA factors + metrics, or sealed for a group)",
    responses={
        200: {"model": UpdateReceipt, "description": "a replay of an accepted update: the first receipt"}
    },
)
async def submit_update(
    update: Update, request: Request, response: Response, who: Client, state: State
) -> UpdateReceipt:
    body_hash = hashlib.sha256(await request.body()).hexdigest()
    receipt, duplicate = await run_in_threadpool(submission.submit, state, who, update, body_hash)
    state.metrics.updates.labels(update.tier, "duplicate" if duplicate else "accepted").inc()
    if duplicate:
        response.status_code = 200
    return receipt


@router.get(
    "/updates/{update_id}", response_model=UpdateReceipt, summary="the receipt of one of your updates"
)
def get_update(update_id: UpdateId, who: Client, state: State) -> UpdateReceipt:
    found = state.store.find_update(who.tenant, who.client_id, update_id)
    if found is None:
        raise NotFound(f"update {update_id}: not found")
    return UpdateReceipt(**found[1])


@router.get("/budget", response_model=Budget, summary="your ε spent in the current period")
def budget(who: Client, state: State) -> Budget:
    period = submission.budget_period(state.settings)
    spent = state.store.budget_spent(who.client_key, period)
    return Budget(
        client_id=who.client_id, period=period, epsilon_spent=epsilon_spent(spent, state.settings.delta),
        epsilon_budget=state.settings.epsilon_budget, delta=state.settings.delta, contributions=len(spent),
    )  # fmt: skip
