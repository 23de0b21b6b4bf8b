from __future__ import annotations

import hashlib

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from federation_hub.deps import Client, State
from federation_hub.errors import NotFound
from federation_hub.privacy.accountant import epsilon_spent
from federation_hub.routers import hub_router
from federation_hub.schemas import Budget, PlainUpdate, SealedUpdate, Update, UpdateId, UpdateReceipt
from federation_hub.services import submission
from federation_hub.tiers import Tier

router = hub_router(prefix="/v1", tags=["updates"])


# The body is parsed here rather than by FastAPI: from the raw bytes (pydantic's JSON parser, about
# twice as fast as json.loads + validation on megabytes of base64) and off the event loop, so a
# large upload never stalls other requests. Its schema is still published (main.py merges $defs).
UPDATE = TypeAdapter(Update)
UPDATE_SCHEMA = UPDATE.json_schema(ref_template="#/components/schemas/{model}")


def parse_update(body: bytes) -> PlainUpdate | SealedUpdate:
    try:
        return UPDATE.validate_json(body)
    except ValidationError as exc:
        # no input echoed back (problems.py); locations from "body" on, without the union's tag
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *_untagged(e["loc"]))} for e in errors]) from None


def _untagged(loc: tuple) -> tuple:
    return loc[1:] if loc and loc[0] in {t.value for t in Tier} else loc


@router.post(
    "/updates",
    response_model=UpdateReceipt,
    status_code=201,
    summary="submit an update (per timestep group LoRA factors + metrics, or sealed for a group)",
    responses={
        200: {"model": UpdateReceipt, "description": "a replay of an accepted update: the first receipt"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {k: v for k, v in UPDATE_SCHEMA.items() if k != "$defs"}}
            },
        }
    },
)
async def submit_update(request: Request, response: Response, who: Client, state: State) -> UpdateReceipt:
    body = await request.body()
    update = await run_in_threadpool(parse_update, body)
    body_hash = hashlib.sha256(body).hexdigest()
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
    return UpdateReceipt(**found.receipt)


@router.get("/budget", response_model=Budget, summary="your ε spent in the current period")
def budget(who: Client, state: State) -> Budget:
    period = submission.budget_period(state.settings)
    spent = state.store.budget_spent(who.client_key, period)
    return Budget(
        client_id=who.client_id,
        period=period,
        epsilon_spent=epsilon_spent(spent, state.settings.delta),
        epsilon_budget=state.settings.epsilon_budget,
        delta=state.settings.delta,
        contributions=len(spent),
    )
