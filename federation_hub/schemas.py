"""The wire format: Pydantic models for every request and reply (they are the OpenAPI schema).

In JSON, arrays travel as objects `{"dtype": "float32", "shape": [rows, cols], "data": <base64 of
the little-endian bytes, row-major>}`; shape, dtype, length and finiteness are checked here,
so an invalid update never reaches the aggregation code. What depends on a round (the linears and
ranks it expects, its norm bound) is checked by `services/submission.py` against that round.
Every input model forbids unknown fields: a client cannot name a tenant, only its token does.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from federation_hub.aggregate.lora import LoraPair
from federation_hub.tiers import Tier

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]  # tenant, client, group
# "layers.3.q_proj"
LinearName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,127}$")]
UpdateId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
# A hub's id in the federation. A release is "{hub id}:{seq}" and travels as one URL path part, so
# a hub id holds neither a colon nor a slash (`ruvdllm hub --hub-id` is checked against it).
HUB_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
RELEASE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}:[0-9]{1,18}$"
HubId = Annotated[str, StringConstraints(pattern=HUB_ID_PATTERN)]
# "coarse", "domain", "fine"
TimestepGroup = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
RoundTier = Literal[Tier.PUBLIC, Tier.TENANT, Tier.GROUP]  # private never reaches a hub
PlainTier = Literal[Tier.PUBLIC, Tier.TENANT]  # read by the hub: aggregated, released, gossiped
# checked by base64.b64decode(validate=True) where decoded: a regex over megabytes would double the cost
Base64 = Annotated[str, Field(json_schema_extra={"contentEncoding": "base64"})]
Dim = Annotated[int, Field(ge=1, le=65536)]
PositiveFinite = Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]

MAX_LINEARS = 4096  # 128 layers × 32 targets: any real model fits
MAX_GROUPS = 16


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -----------------------------------------------------------------------------------


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(
        description='where: "body", "path", "query" or "header", then the field path (no input echoed)'
    )
    msg: str


class Problem(BaseModel):
    """Every error reply of the hub, whatever the status."""

    detail: str = Field(description="one line naming what is wrong")
    errors: list[FieldProblem] = Field(
        default_factory=list, description="422: each invalid field of the request; empty otherwise"
    )


def _b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not valid base64") from None


WIRE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class Tensor(Input):
    dtype: Literal["float32", "float16"] = Field(description="float16 only where the round accepts it")
    shape: list[Dim] = Field(min_length=2, max_length=2)
    data: Base64 = Field(description="base64 of the little-endian bytes, row-major")

    _array: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _decode(self) -> Tensor:
        raw = _b64decode(self.data, "tensor data")
        dtype = WIRE_DTYPES[self.dtype]
        expected = dtype.itemsize * math.prod(self.shape)
        if len(raw) != expected:
            raise ValueError(
                f"tensor data: {len(raw)} bytes, shape {self.shape} {self.dtype} needs {expected}"
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(self.shape)
        if not np.isfinite(array).all():
            raise ValueError("tensor data: contains NaN or infinity")
        self._array = array
        return self

    def array(self) -> np.ndarray:
        return self._array

    @classmethod
    def of(cls, array: np.ndarray, dtype: str = "float32") -> Tensor:
        array = np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype])
        return cls(dtype=dtype, shape=list(array.shape), data=base64.b64encode(array.tobytes()).decode())


class LoraDelta(Input):
    """One adapted linear's delta `b @ a`."""

    a: Tensor = Field(description="A [rank, in]")
    b: Tensor = Field(description="B [out, rank]")

    @model_validator(mode="after")
    def _ranks_agree(self) -> LoraDelta:
        if self.a.shape[0] != self.b.shape[1]:
            raise ValueError(f"A is rank {self.a.shape[0]} but B is rank {self.b.shape[1]}")
        return self

    def pair(self) -> LoraPair:
        return LoraPair(a=self.a.array(), b=self.b.array())

    @classmethod
    def of(cls, pair: LoraPair, dtype: str = "float32") -> LoraDelta:
        return cls(a=Tensor.of(pair.a, dtype), b=Tensor.of(pair.b, dtype))


class ValidationMetrics(Input):
    perplexity_before: PositiveFinite = Field(description="held-out perplexity before the update")
    perplexity_after: PositiveFinite = Field(description="held-out perplexity after the update")
    samples: int = Field(ge=1, le=10**12, description="examples the update was trained on")


class Consent(Input):
    granted: bool = Field(description="the user agreed to share at this tier")
    policy: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = Field(
        description="version of the data-sharing policy agreed to"
    )
    given_at: datetime | None = None


class GroupDeltas(Input):
    """One timestep group's contribution."""

    deltas: dict[LinearName, LoraDelta] = Field(min_length=1, max_length=MAX_LINEARS)
    metrics: ValidationMetrics

    def pairs(self) -> dict[str, LoraPair]:
        return {name: delta.pair() for name, delta in self.deltas.items()}

    @property
    def float16(self) -> bool:
        return any(t.dtype == "float16" for d in self.deltas.values() for t in (d.a, d.b))


class PlainUpdate(Input):
    """A public- or tenant-tier update: per timestep group, LoRA factor pairs and metrics."""

    update_id: UpdateId = Field(description="chosen by the client; accepted once, replays are idempotent")
    tier: PlainTier
    consent: Consent
    groups: dict[TimestepGroup, GroupDeltas] = Field(min_length=1, max_length=MAX_GROUPS)


class SealedPart(Input):
    round_id: int = Field(ge=1, le=2**62, description="the open group round this ciphertext is bound to")
    nonce: Base64 = Field(description="12-byte ChaCha20-Poly1305 nonce")
    ciphertext: Base64 = Field(description="the sealed contribution: safetensors (see docs/hub.md)")

    @field_validator("nonce")
    @classmethod
    def _nonce_length(cls, value: str) -> str:
        if len(_b64decode(value, "nonce")) != 12:
            raise ValueError("nonce: must be 12 bytes")
        return value

    @field_validator("ciphertext")
    @classmethod
    def _ciphertext_decodes(cls, value: str) -> str:
        if len(_b64decode(value, "ciphertext")) < 16:
            raise ValueError("ciphertext: shorter than its authentication tag")
        return value


class SealedUpdate(Input):
    """A group-tier update: ciphertext per timestep group, readable only by the group's members."""

    update_id: UpdateId
    tier: Literal[Tier.GROUP]
    group: Name
    consent: Consent
    sealed: dict[TimestepGroup, SealedPart] = Field(min_length=1, max_length=MAX_GROUPS)


Update = Annotated[PlainUpdate | SealedUpdate, Field(discriminator="tier")]


# The binary body: a safetensors file whose metadata "ruvdllm.update" holds one of these headers
# as JSON, and whose tensors hold the factors (codec.py) or, sealed, "{group}/nonce" and
# "{group}/ciphertext" (U8).


class GroupMetrics(Input):
    metrics: ValidationMetrics


class PlainHeader(Input):
    update_id: UpdateId
    tier: PlainTier
    consent: Consent
    groups: dict[TimestepGroup, GroupMetrics] = Field(min_length=1, max_length=MAX_GROUPS)


class SealedRound(Input):
    round_id: int = Field(ge=1, le=2**62)


class SealedHeader(Input):
    update_id: UpdateId
    tier: Literal[Tier.GROUP]
    group: Name
    consent: Consent
    sealed: dict[TimestepGroup, SealedRound] = Field(min_length=1, max_length=MAX_GROUPS)


UpdateHeader = Annotated[PlainHeader | SealedHeader, Field(discriminator="tier")]


class Accepted(BaseModel):
    timestep_group: str
    round_id: int


class UpdateReceipt(BaseModel):
    update_id: str
    duplicate: bool = Field(description="true when this update id was accepted before (a replay)")
    accepted: list[Accepted]
    epsilon_spent: float | None = Field(
        None, description="public tier: your ε in this period after this update"
    )


class StoredReceipt(BaseModel):
    """An accepted update's receipt as an operator reads it."""

    seq: int = Field(description="position in the listing: pass it as `after` for the next page")
    tenant: str
    client_id: str
    update_id: str
    tier: str
    accepted_at: datetime
    receipt: UpdateReceipt


# --- rounds -----------------------------------------------------------------------------------


class LinearShape(Input):
    rank: Dim
    in_features: Dim
    out_features: Dim


class DPParams(Input):
    clip_norm: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    noise_multiplier: float = Field(8.0, ge=0.3, le=1e4, allow_inf_nan=False)


StrategyParam = float | int | str


class RoundSpec(Input):
    tier: RoundTier
    tenant: Name | None = Field(None, description="tenant and group tiers: the organisation")
    group: Name | None = Field(None, description="group tier: the member group")
    timestep_group: TimestepGroup
    strategy: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "daf"
    strategy_params: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")], StrategyParam] = (
        Field(default_factory=dict, max_length=16)
    )
    shapes: dict[LinearName, LinearShape] = Field(min_length=1, max_length=MAX_LINEARS)
    max_norm: float = Field(
        100.0, gt=0, le=1e9, allow_inf_nan=False, description="bound on an update's Frobenius norm"
    )
    min_contributors: int = Field(
        1, ge=1, le=10**6, description="public rounds: raised to the hub's k-anonymity"
    )
    release_rank: int | None = Field(
        None, ge=0, le=65536, description="rank of the released factors; null: each linear's rank; 0: exact"
    )
    dp: DPParams | None = Field(None, description="public tier; defaults from the hub")
    accept_float16: bool = Field(
        False, description="accept factors sent as float16: half the bytes, ~3 significant digits"
    )


class RoundOut(BaseModel):
    id: int
    tier: RoundTier
    tenant: str | None
    group: str | None
    timestep_group: str
    strategy: str
    strategy_params: dict[str, StrategyParam]
    client_config: dict[str, StrategyParam]
    shapes: dict[str, LinearShape]
    max_norm: float
    min_contributors: int
    release_rank: int | None
    dp: DPParams | None
    accept_float16: bool
    sketch_seed: int
    status: Literal["open", "closing", "released", "withheld", "relayed"]
    contributions: int
    created_at: datetime
    closed_at: datetime | None
    release_id: str | None
    outcome: str | None


class CloseRequest(Input):
    reopen: bool = Field(False, description="open the next round with the same spec")


# --- releases ---------------------------------------------------------------------------------


class ReleaseSummary(BaseModel):
    id: str = Field(description="origin hub id : sequence number")
    origin: str
    seq: int
    tier: PlainTier
    tenant: str | None
    timestep_group: str
    round_id: int
    strategy: str
    contributors: int
    created_at: datetime
    digest: str = Field(description="sha256 of the payload")
    details: dict


class ReleaseDetails(BaseModel):
    """A release's details: what the strategy and privacy did (free-form), and the round's shapes."""

    model_config = ConfigDict(extra="allow")

    shapes: dict[LinearName, LinearShape] = Field(min_length=1, max_length=MAX_LINEARS)


class ReleaseMeta(BaseModel):
    """What a release's stored metadata must hold; checked on releases that arrive by gossip."""

    id: str
    origin: str
    seq: int
    tier: PlainTier
    tenant: str | None
    timestep_group: TimestepGroup
    round_id: int
    strategy: str
    contributors: int = Field(ge=0)
    created_at: datetime
    details: ReleaseDetails

    @model_validator(mode="after")
    def _tenant_fits_tier(self) -> ReleaseMeta:
        # who may read a release follows from these two (storage `_visible_releases`)
        if (self.tier == Tier.PUBLIC) != (self.tenant is None):
            raise ValueError("a public release has no tenant; a tenant release has one")
        return self


class Release(ReleaseSummary):
    deltas: dict[str, LoraDelta]
    residuals: dict[str, float] = Field(description="per linear: ||exact − released|| / ||exact||")


class SealedItem(BaseModel):
    update_id: str
    timestep_group: str
    round_id: int
    nonce: str
    ciphertext: str


class Budget(BaseModel):
    client_id: str
    period: int
    epsilon_spent: float
    epsilon_budget: float
    delta: float
    contributions: int


# --- administration ---------------------------------------------------------------------------


class TenantIn(Input):
    name: Name


class TokenIn(Input):
    tenant: Name
    client_id: Name
    groups: list[Name] = Field(default_factory=list, max_length=64)


class TokenOut(BaseModel):
    token_id: int
    token: str = Field(description="shown once; the hub keeps only its hash")
    tenant: str
    client_id: str
    groups: list[str]


class Principal(BaseModel):
    kind: Literal["admin", "client"]
    tenant: str | None
    client_id: str | None
    groups: list[str]


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    kind: str
    subject: str
    details: dict
    prev_hash: str
    hash: str


class AuditVerdict(BaseModel):
    entries: int
    intact: bool
    first_bad: int | None


class Health(BaseModel):
    status: Literal["ok"]
    hub_id: str
    database: str
    version: str


# --- gossip -----------------------------------------------------------------------------------


class GossipEntry(Input):
    origin: HubId
    seq: int = Field(ge=1, le=2**62)
    meta: dict = Field(description="the release summary as the origin wrote it")
    payload: Base64 = Field(description="the released factors: safetensors (codec.py)")
    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class GossipSync(Input):
    hub_id: HubId
    vv: dict[HubId, Annotated[int, Field(ge=0, le=2**62)]] = Field(max_length=4096)
    entries: list[GossipEntry] = Field(default_factory=list, max_length=10_000)


class GossipReply(BaseModel):
    hub_id: str
    vv: dict[str, int]
    entries: list[GossipEntry]
    merged: int
