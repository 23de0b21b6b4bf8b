"""The client devices (and operators) use to talk to a hub, over httpx.

    with HubClient("https://hub.example", token) as hub:
        update = ClientUpdate("dev42-0007", Tier.PUBLIC, {"coarse": GroupContribution(pairs, metrics)})
        hub.submit(update)                  # idempotent: retried with the same bytes on failure
        pairs = hub.release_pairs(hub.releases("coarse")[0]["id"])

Updates travel as safetensors (codec.py) unless `binary=False` asks for JSON, with float16
factors for each timestep group whose round accepts them. Releases download as safetensors, checked
against their digest. Private-tier updates never leave the device: `submit` refuses them before
building a request. Group-tier updates are sealed here with the group key;
`aggregate_group_round` fetches a closed group round's ciphertexts, opens them and runs the
round's DAF strategy locally.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import httpx
import numpy as np

from federation_hub import codec, safetensors_io
from federation_hub.aggregate.lora import LoraPair
from federation_hub.privacy import sealing
from federation_hub.schemas import (
    Consent,
    GroupDeltas,
    GroupMetrics,
    LoraDelta,
    PlainHeader,
    PlainUpdate,
    SealedHeader,
    SealedPart,
    SealedRound,
    SealedUpdate,
    ValidationMetrics,
)
from federation_hub.strategies import ContributionMeta, make_strategy
from federation_hub.strategies.run import RoundResult, run_strategy
from federation_hub.tiers import SENDABLE, Tier
from federation_hub.validation import check_deltas
from ruvdllm.errors import RuvdllmError


class HubRequestError(RuvdllmError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GroupContribution:
    """One timestep group's part of an update."""

    pairs: dict[str, LoraPair]  # linear name -> (A [rank, in], B [out, rank])
    perplexity_before: float
    perplexity_after: float
    samples: int

    def metrics(self) -> dict:
        return {
            "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after,
            "samples": self.samples,
        }


@dataclass(frozen=True)
class ClientUpdate:
    update_id: str  # unique per client; a retry reuses it
    tier: Tier
    groups: dict[str, GroupContribution]  # timestep group -> contribution
    consent: bool = False  # the user's consent to share at this tier; the hub refuses without it
    policy: str = "v1"  # version of the data-sharing policy consented to
    group: str | None = None  # group tier: the member group


@dataclass
class HubClient:
    """`base_url` may list several replicas of one hub, comma-separated: requests go round-robin,
    and a retry goes to the next replica (updates are idempotent by id, so a retry after a
    replica died mid-request is a replay at worst)."""

    base_url: str
    token: str
    timeout_s: float = 60.0  # an upload of a large update on a slow link
    retries: int = 3  # connection errors and 5xx; safe because updates are idempotent by id
    transport: httpx.BaseTransport | None = None
    event_hooks: dict | None = None  # e.g. {"request": [callback]} to observe every request
    binary: bool = True  # updates as safetensors; False: JSON + base64 (a third bigger, slower to parse)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self):
        self._replicas = [url.strip().rstrip("/") for url in self.base_url.split(",") if url.strip()]
        # a random first replica: many short-lived clients spread over the replicas, not all on one;
        # next() is atomic under the GIL, so threads may share a client
        self._turn = itertools.count(random.randrange(len(self._replicas)))
        self._http = httpx.Client(
            headers={"authorization": f"Bearer {self.token}"},
            timeout=self.timeout_s,
            transport=self.transport,
            event_hooks=self.event_hooks or {},
        )

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- requests -----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        content_type: str = "application/json",
        json=None,
        params=None,
        idempotent: bool | None = None,
        accept: str | None = None,
    ):
        """One call; retried on connection errors and 5xx only when repeating it is harmless
        (reads, update submission — idempotent by update id — and closing a round). JSON replies
        come back parsed, others as the response."""
        retries = self.retries if (method == "GET" if idempotent is None else idempotent) else 0
        attempt = 0
        headers = {"content-type": content_type} if content is not None else {}
        if accept:
            headers["accept"] = accept
        while True:
            attempt += 1
            replica = self._replicas[next(self._turn) % len(self._replicas)]
            try:
                response = self._http.request(
                    method, replica + path, content=content, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if attempt > retries:
                    raise RuvdllmError(f"hub {replica}: {type(exc).__name__}: {exc}") from None
                self._back_off(attempt)
                continue
            if response.status_code >= 500 and attempt <= retries:
                self._back_off(attempt)
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail")
                except ValueError:
                    detail = response.text
                raise HubRequestError(
                    response.status_code, f"hub {method} {path}: {response.status_code} {detail}"
                )
            if accept and response.headers.get("content-type", "").startswith(accept):
                return response
            return response.json() if response.content else None

    def _back_off(self, attempt: int) -> None:
        """Another replica is tried at once; once every one has failed, wait before the next turn."""
        if attempt % len(self._replicas) == 0:
            time.sleep(0.2 * 2 ** (attempt // len(self._replicas)))

    def me(self) -> dict:
        return self.request("GET", "/v1/me")

    def rounds(self, status: str | None = None) -> list[dict]:
        return self.request("GET", "/v1/rounds", params={"status": status} if status else None)

    def round(self, round_id: int) -> dict:
        return self.request("GET", f"/v1/rounds/{round_id}")

    def budget(self) -> dict:
        return self.request("GET", "/v1/budget")

    def releases(self, timestep_group: str | None = None, limit: int = 100) -> list[dict]:
        params = {"limit": limit, **({"timestep_group": timestep_group} if timestep_group else {})}
        return self.request("GET", "/v1/releases", params=params)

    def release(self, release_id: str) -> dict:
        return self.request("GET", f"/v1/releases/{release_id}")

    def release_pairs(self, release_id: str) -> dict[str, LoraPair]:
        """The released factors, downloaded as the stored safetensors file and checked against the
        release's digest."""
        response = self.request("GET", f"/v1/releases/{release_id}", accept=codec.MEDIA_TYPE)
        digest = response.headers.get("x-release-digest")
        if digest != hashlib.sha256(response.content).hexdigest():
            raise RuvdllmError(f"release {release_id}: the download does not match its digest")
        return codec.decode_release(response.content, f"release {release_id}")[1]

    # --- submitting ---------------------------------------------------------------------------
    def submit(
        self,
        update: ClientUpdate,
        group_key: str | None = None,
        binary: bool | None = None,
        float16: bool | None = None,
    ) -> dict:
        """Send an update; returns the hub's receipt. Private tier: refused here, nothing is sent.
        `float16` None: float16 factors for the timestep groups whose round accepts them (and
        whose factors fit float16's range); True: all; False: none."""
        tier = _check_sendable(update)
        binary = self.binary if binary is None else binary
        if float16 is None:
            half = self._float16_groups(update) if tier is not Tier.GROUP else frozenset()
        else:
            half = frozenset(update.groups) if float16 else frozenset()
        body = self.encode(update, group_key, binary=binary, float16=half)
        content_type = codec.MEDIA_TYPE if binary else "application/json"
        return self.request("POST", "/v1/updates", content=body, content_type=content_type, idempotent=True)

    def encode(
        self,
        update: ClientUpdate,
        group_key: str | None = None,
        binary: bool = True,
        float16: Collection[str] = (),
    ) -> bytes:
        """The exact request body for `update` (the tier check happens first, before any I/O);
        the factors of the timestep groups in `float16` as float16."""
        tier = _check_sendable(update)
        consent = Consent(granted=update.consent, policy=update.policy)
        if tier is Tier.GROUP:
            sealed = self._sealed(update, consent, group_key)
            if not binary:
                return sealed.model_dump_json().encode()
            header = SealedHeader(
                update_id=sealed.update_id,
                tier=Tier.GROUP,
                group=sealed.group,
                consent=consent,
                sealed={tg: SealedRound(round_id=part.round_id) for tg, part in sealed.sealed.items()},
            )
            tensors = {}
            for tg, part in sorted(sealed.sealed.items()):
                tensors[f"{tg}/nonce"] = np.frombuffer(base64.b64decode(part.nonce), np.uint8)
                tensors[f"{tg}/ciphertext"] = np.frombuffer(base64.b64decode(part.ciphertext), np.uint8)
            return safetensors_io.encode(tensors, {codec.UPDATE_KEY: header.model_dump_json()})
        if binary:
            header = PlainHeader(
                update_id=update.update_id,
                tier=tier,
                consent=consent,
                groups={
                    tg: GroupMetrics(metrics=ValidationMetrics(**p.metrics()))
                    for tg, p in update.groups.items()
                },
            )
            groups = {
                tg: {
                    name: _as(pair, np.float16 if tg in float16 else np.float32)
                    for name, pair in part.pairs.items()
                }
                for tg, part in update.groups.items()
            }
            return codec.encode(groups, header.model_dump(mode="json"), dtype=None)
        groups = {
            tg: GroupDeltas(
                deltas={
                    name: LoraDelta.of(pair, "float16" if tg in float16 else "float32")
                    for name, pair in part.pairs.items()
                },
                metrics=ValidationMetrics(**part.metrics()),
            )
            for tg, part in update.groups.items()
        }
        message = PlainUpdate(update_id=update.update_id, tier=tier, consent=consent, groups=groups)
        return message.model_dump_json().encode()

    def _float16_groups(self, update: ClientUpdate) -> frozenset[str]:
        """The timestep groups whose open round (of the update's tier) accepts float16 and whose
        factors are within float16's range (beyond it, float16 is infinity, which no hub accepts)."""
        accepting = {
            r["timestep_group"]
            for r in self.rounds("open")
            if r["tier"] == Tier(update.tier) and r.get("accept_float16")
        }
        return frozenset(
            tg
            for tg, part in update.groups.items()
            if tg in accepting
            and all(
                np.abs(array).max(initial=0.0) <= F16_MAX
                for pair in part.pairs.values()
                for array in (pair.a, pair.b)
            )
        )

    def _sealed(self, update: ClientUpdate, consent: Consent, group_key: str | None) -> SealedUpdate:
        if not group_key or not update.group:
            raise RuvdllmError(f"update {update.update_id}: the group tier needs a group and its key")
        open_rounds = {
            r["timestep_group"]: r["id"]
            for r in self.rounds("open")
            if r["tier"] == Tier.GROUP and r["group"] == update.group
        }
        sealed = {}
        for tg, part in update.groups.items():
            if tg not in open_rounds:
                raise RuvdllmError(
                    f"update {update.update_id}: group {update.group!r} has no open {tg!r} round"
                )
            plaintext = codec.encode_contribution(tg, part.pairs, part.metrics())
            aad = sealing.associated_data(update.group, open_rounds[tg], tg, update.update_id)
            nonce, ciphertext = sealing.seal(group_key, plaintext, aad)
            sealed[tg] = SealedPart(
                round_id=open_rounds[tg],
                nonce=base64.b64encode(nonce).decode(),
                ciphertext=base64.b64encode(ciphertext).decode(),
            )
        return SealedUpdate(
            update_id=update.update_id, tier=Tier.GROUP, group=update.group, consent=consent, sealed=sealed
        )

    # --- group tier: local aggregation --------------------------------------------------------
    def aggregate_group_round(self, round_id: int, group_key: str, rng: np.random.Generator) -> RoundResult:
        """Open a closed group round's ciphertexts with the group key and aggregate them here with
        the round's strategy. Contributions that do not open or do not fit the round are skipped:
        the hub could have relayed anything."""
        round_ = self.round(round_id)
        items = self.request("GET", f"/v1/rounds/{round_id}/sealed")
        contributions, seen = [], set()
        for item in items:
            if item["update_id"] in seen:
                continue  # the hub relaying one ciphertext twice must not double its weight
            aad = sealing.associated_data(
                round_["group"], round_id, round_["timestep_group"], item["update_id"]
            )
            try:
                plaintext = sealing.open_sealed(
                    group_key, base64.b64decode(item["nonce"]), base64.b64decode(item["ciphertext"]), aad
                )
                tg, pairs, metrics = codec.decode_contribution(
                    plaintext, f"sealed update {item['update_id']}"
                )
                if tg != round_["timestep_group"]:
                    continue
                check_deltas(item["update_id"], pairs, round_["shapes"], round_["max_norm"], round_id)
                ValidationMetrics(**metrics)
            except (RuvdllmError, ValueError):
                continue
            seen.add(item["update_id"])
            contributions.append((item["update_id"], pairs, metrics))
        metas = [
            ContributionMeta(uid, uid, m["samples"], m["perplexity_before"], m["perplexity_after"])
            for uid, _, m in contributions
        ]
        strategy = make_strategy(round_["strategy"], round_["timestep_group"], round_["strategy_params"])
        shapes = {n: (s["out_features"], s["in_features"]) for n, s in round_["shapes"].items()}
        rank = round_["release_rank"]
        ranks = {
            n: (s["rank"] if rank is None else (None if rank == 0 else rank))
            for n, s in round_["shapes"].items()
        }

        def load(indices):
            return (contributions[i][1] for i in indices)

        return run_strategy(strategy, metas, load, shapes, ranks, rng, round_["sketch_seed"])


F16_MAX = float(np.finfo(np.float16).max)


def _as(pair: LoraPair, dtype) -> LoraPair:
    return LoraPair(a=np.asarray(pair.a, dtype=dtype), b=np.asarray(pair.b, dtype=dtype))


def _check_sendable(update: ClientUpdate) -> Tier:
    tier = Tier(update.tier)
    if tier is Tier.PRIVATE:
        raise RuvdllmError(
            f"update {update.update_id}: tier private never leaves this device; nothing was sent"
        )
    if tier not in SENDABLE:
        raise RuvdllmError(f"update {update.update_id}: tier {tier.value!r} cannot be sent")
    return tier


class HubAdmin(HubClient):
    """Operator calls: tenants, tokens, rounds, the audit log."""

    def create_tenant(self, name: str) -> dict:
        return self.request("POST", "/v1/admin/tenants", json={"name": name})

    def create_token(self, tenant: str, client_id: str, groups: list[str] | None = None) -> dict:
        return self.request(
            "POST",
            "/v1/admin/tokens",
            json={"tenant": tenant, "client_id": client_id, "groups": groups or []},
        )

    def revoke_token(self, token_id: int) -> None:
        self.request("POST", f"/v1/admin/tokens/{token_id}/revoke")

    def open_round(self, **spec) -> dict:
        return self.request("POST", "/v1/rounds", json=spec)

    def close_round(self, round_id: int, reopen: bool = False) -> dict:
        return self.request("POST", f"/v1/rounds/{round_id}/close", json={"reopen": reopen}, idempotent=True)

    def receipt(self, tenant: str, client_id: str, update_id: str) -> dict:
        """Any client's update receipt (the read is audited)."""
        return self.request("GET", f"/v1/admin/updates/{tenant}/{client_id}/{update_id}")

    def receipts(
        self, tenant: str, client_id: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[dict]:
        """A tenant's receipts, oldest first; page with `after` = the last one's `seq`."""
        params = {
            "tenant": tenant,
            "after": after,
            "limit": limit,
            **({"client_id": client_id} if client_id else {}),
        }
        return self.request("GET", "/v1/admin/updates", params=params)

    def audit(self, after: int = 0) -> list[dict]:
        return self.request("GET", "/v1/admin/audit", params={"after": after})

    def verify_audit(self) -> dict:
        return self.request("GET", "/v1/admin/audit/verify")


def shapes_spec(layers: int, targets: dict[str, tuple[int, int]], rank: int) -> dict:
    """A round's `shapes` for `layers` layers × `targets` {name: (in, out)}: "layers.{i}.{target}"."""
    return {
        f"layers.{i}.{target}": {"rank": rank, "in_features": in_f, "out_features": out_f}
        for i in range(layers)
        for target, (in_f, out_f) in targets.items()
    }
