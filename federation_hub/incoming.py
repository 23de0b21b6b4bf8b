"""An update as the hub received it, from either body — JSON (`schemas.Update`) or safetensors
(`codec.py` with a `schemas.UpdateHeader` in its metadata) — in the one form the submission
service reads. Everything that needs no round is checked here; what depends on the round
(linears, shapes, norm bound, float16) is checked by `services/submission.py`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
from pydantic import TypeAdapter

from federation_hub import codec
from federation_hub.aggregate.lora import LoraPair
from federation_hub.errors import Invalid
from federation_hub.schemas import (
    MAX_LINEARS,
    Consent,
    PlainHeader,
    PlainUpdate,
    SealedUpdate,
    UpdateHeader,
    ValidationMetrics,
)
from federation_hub.tiers import Tier

HEADER = TypeAdapter(UpdateHeader)
NONCE_BYTES, TAG_BYTES = 12, 16  # ChaCha20-Poly1305 (privacy/sealing.py)


@dataclass(frozen=True)
class PlainPart:
    """One timestep group's contribution, readable by the hub."""

    pairs: dict[str, LoraPair]
    metrics: ValidationMetrics
    payload: bytes  # its stored form: a single-group safetensors payload (codec.py)
    float16: bool  # some factor was sent as float16


@dataclass(frozen=True)
class SealedPiece:
    """One timestep group's ciphertext for a group round."""

    round_id: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class Incoming:
    update_id: str
    tier: Tier
    consent: Consent
    group: str | None = None  # group tier
    plain: dict[str, PlainPart] = field(default_factory=dict)  # public and tenant tiers
    sealed: dict[str, SealedPiece] = field(default_factory=dict)  # group tier


def from_json(update: PlainUpdate | SealedUpdate) -> Incoming:
    if isinstance(update, SealedUpdate):
        sealed = {
            tg: SealedPiece(part.round_id, base64.b64decode(part.nonce), base64.b64decode(part.ciphertext))
            for tg, part in update.sealed.items()
        }
        return Incoming(update.update_id, Tier.GROUP, update.consent, group=update.group, sealed=sealed)
    plain = {}
    for tg, group in update.groups.items():
        pairs = group.pairs()
        metrics = group.metrics.model_dump()
        payload = codec.encode_contribution(tg, pairs, metrics, dtype=None)
        plain[tg] = PlainPart(pairs, group.metrics, payload, group.float16)
    return Incoming(update.update_id, update.tier, update.consent, plain=plain)


def from_safetensors(body: bytes) -> Incoming:
    """Raises `Invalid` for the container and its tensors, pydantic's ValidationError for the
    header (the router turns both into 422s naming the problem)."""
    groups, raw_header, others = codec.decode(body, "body", extra=("nonce", "ciphertext"))
    header = HEADER.validate_python(raw_header)
    if isinstance(header, PlainHeader):
        return _plain(body, header, groups, others)
    if groups:
        raise Invalid(f"body: a sealed update carries no factors (found tensors of {sorted(groups)[0]!r})")
    sealed = {}
    for tg, part in header.sealed.items():
        nonce = _bytes(others.pop(f"{tg}/nonce", None), f"{tg}/nonce")
        ciphertext = _bytes(others.pop(f"{tg}/ciphertext", None), f"{tg}/ciphertext")
        if len(nonce) != NONCE_BYTES:
            raise Invalid(f"body: tensor {tg}/nonce: {len(nonce)} bytes, a nonce is {NONCE_BYTES}")
        if len(ciphertext) < TAG_BYTES:
            raise Invalid(f"body: tensor {tg}/ciphertext: shorter than its authentication tag")
        sealed[tg] = SealedPiece(part.round_id, nonce, ciphertext)
    _nothing_else(others)
    return Incoming(header.update_id, Tier.GROUP, header.consent, group=header.group, sealed=sealed)


def _plain(body: bytes, header: PlainHeader, groups: codec.Groups, others: dict) -> Incoming:
    _nothing_else(others)
    for tg in sorted(set(groups) ^ set(header.groups)):
        has = "factors but no metrics" if tg in groups else "metrics but no factors"
        raise Invalid(f"body: timestep group {tg!r} has {has}", loc=("groups", tg))
    plain = {}
    for tg, pairs in groups.items():
        if len(pairs) > MAX_LINEARS:
            raise Invalid(
                f"body: timestep group {tg!r} has {len(pairs)} linears, at most {MAX_LINEARS}",
                loc=("groups", tg),
            )
        metrics = header.groups[tg].metrics
        # a single-group body is stored as it arrived; several are split, one payload per group
        payload = (
            body
            if len(groups) == 1
            else codec.encode_contribution(tg, pairs, metrics.model_dump(), dtype=None)
        )
        float16 = any(p.a.dtype == np.float16 or p.b.dtype == np.float16 for p in pairs.values())
        plain[tg] = PlainPart(pairs, metrics, payload, float16)
    return Incoming(header.update_id, header.tier, header.consent, plain=plain)


def _bytes(array: np.ndarray | None, name: str) -> bytes:
    if array is None:
        raise Invalid(f"body: tensor {name} is missing")
    if array.dtype != np.uint8 or array.ndim != 1:
        raise Invalid(f"body: tensor {name}: bytes are a 1-D U8 tensor")
    return array.tobytes()


def _nothing_else(others: dict) -> None:
    if others:
        raise Invalid(f"body: unexpected tensor {sorted(others)[0][:80]!r}")
