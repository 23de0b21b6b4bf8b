from __future__ import annotations

import hashlib

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from federation_hub import codec, incoming, strict_json
from federation_hub.deps import Client, State
from federation_hub.errors import NotFound, Unsupported
from federation_hub.incoming import Incoming
from federation_hub.privacy.accountant import epsilon_spent
from federation_hub.routers import hub_router
from federation_hub.schemas import Budget, Problem, Update, UpdateId, UpdateReceipt
from federation_hub.services import submission
from federation_hub.tiers import Tier

router = hub_router(prefix="/v1", tags=["updates"])


# The body is parsed here rather than by FastAPI: from the raw bytes and off the event loop, so a
# large upload never stalls other requests. JSON goes through pydantic's own parser (15 ms for a
# 2.8 MiB update, where strict_json.loads + validation took 20), which keeps the last copy of a
# duplicated key: `strict_json.duplicate_key` then refuses those (2 ms) as every other route does.
# Safetensors needs no parsing of the numbers at all (incoming.py). Both schemas are published
# (main.py merges the JSON one's $defs).
UPDATE = TypeAdapter(Update)
UPDATE_SCHEMA = UPDATE.json_schema(ref_template="#/components/schemas/{model}")
HEADER_SCHEMA = incoming.HEADER.json_schema(ref_template="#/components/schemas/{model}")
JSON, SAFETENSORS = "application/json", codec.MEDIA_TYPE
BINARY_BODY = f"""A safetensors file. Its metadata entry `{codec.UPDATE_KEY}` holds an `UpdateHeader` (components) as JSON
(update id, tier, consent, and per timestep group the metrics, or for the group tier the round of
each ciphertext); its tensors are `{{timestep group}}/{{linear}}/a` [rank, in] and `.../b` [out, rank]
(F32, or F16 where the round accepts float16), or `{{timestep group}}/nonce` and
`{{timestep group}}/ciphertext` (U8) for the group tier. See docs/hub.md "Wire format"."""


def parse(body: bytes, content_type: str) -> Incoming:
    """The update in `body`, by its content type; 415 for any other type, 422 naming the problem."""
    media = content_type.split(";")[0].strip().lower()
    if media == SAFETENSORS:
        try:
            return incoming.from_safetensors(body)
        except ValidationError as exc:
            raise _invalid(exc, ("body", "metadata", codec.UPDATE_KEY)) from None
    if media == JSON or media.endswith("+json"):
        try:
            update = UPDATE.validate_json(body)
        except ValidationError as exc:
            raise _invalid(exc, ("body",)) from None
        duplicate = strict_json.duplicate_key(body)
        if duplicate is not None:
            reason = f"duplicate key {duplicate[:64]!r}"  # as strict_json.loads says it
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "ctx": {"error": reason}}]
            )
        return incoming.from_json(update)
    raise Unsupported(f"content-type {media[:64]!r}: send {JSON} or {SAFETENSORS} (a safetensors body)")


def _invalid(exc: ValidationError, prefix: tuple) -> RequestValidationError:
    """No input echoed back (problems.py); locations from `prefix` on, without the union's tag."""
    errors = exc.errors(include_url=False, include_input=False)
    return RequestValidationError([{**e, "loc": (*prefix, *_untagged(e["loc"]))} for e in errors])


def _untagged(loc: tuple) -> tuple:
    return loc[1:] if loc and loc[0] in {t.value for t in Tier} else loc


def _parse_and_hash(body: bytes, content_type: str) -> tuple[Incoming, str]:
    return parse(body, content_type), hashlib.sha256(body).hexdigest()


@router.post(
    "/updates",
    response_model=UpdateReceipt,
    status_code=201,
    summary="submit an update (per timestep group LoRA factors + metrics, or sealed for a group)",
    responses={
        200: {"model": UpdateReceipt, "description": "a replay of an accepted update: the first receipt"},
        415: {"model": Problem, "description": f"a body that is neither {JSON} nor {SAFETENSORS}"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {k: v for k, v in UPDATE_SCHEMA.items() if k != "$defs"}},
                SAFETENSORS: {"schema": {"type": "string", "format": "binary", "description": BINARY_BODY}},
            },
        }
    },
)
async def submit_update(request: Request, response: Response, who: Client, state: State) -> UpdateReceipt:
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    update, body_hash = await run_in_threadpool(_parse_and_hash, body, content_type)
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
