"""The client devices (and operators) use to talk to a hub, over httpx.

    with HubClient("https://hub.example", token) as hub:
        update = ClientUpdate("dev42-0007", Tier.PUBLIC, {"coarse": GroupContribution(pairs, metrics)})
        hub.submit(update)                  # idempotent: retried with the same bytes on failure
        pairs = hub.release_pairs(hub.releases("coarse")[0]["id"])

Private-tier updates never leave the device: `submit` refuses them before building a request.
Group-tier updates are sealed here with the group key; `aggregate_group_round` fetches a closed
group round's ciphertexts, opens them and runs the round's DAF strategy locally.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from federation_hub import codec
from federation_hub.aggregate.lora import LoraPair
from federation_hub.privacy import sealing
from federation_hub.schemas import (
    Consent,
    GroupDeltas,
    LoraDelta,
    PlainUpdate,
    SealedPart,
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
    base_url: str
    token: str
    timeout_s: float = 60.0  # an upload of a large update on a slow link
    retries: int = 3  # connection errors and 5xx; safe because updates are idempotent by id
    transport: httpx.BaseTransport | None = None
    event_hooks: dict | None = None  # e.g. {"request": [callback]} to observe every request
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self):
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/"),
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
        json=None,
        params=None,
        idempotent: bool | None = None,
    ):
        """One call; retried on connection errors and 5xx only when repeating it is harmless
        (reads, update submission — idempotent by update id — and closing a round)."""
        retries = self.retries if (method == "GET" if idempotent is None else idempotent) else 0
        attempt = 0
        headers = {"content-type": "application/json"} if content is not None else None
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    method, path, content=content, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if attempt > retries:
                    raise RuvdllmError(f"hub {self.base_url}: {type(exc).__name__}: {exc}") from None
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 500 and attempt <= retries:
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail")
                except ValueError:
                    detail = response.text
                raise HubRequestError(
                    response.status_code, f"hub {method} {path}: {response.status_code} {detail}"
                )
            return response.json() if response.content else None

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
        body = self.release(release_id)
        return {name: LoraDelta.model_validate(delta).pair() for name, delta in body["deltas"].items()}

    # --- submitting ---------------------------------------------------------------------------
    def submit(self, update: ClientUpdate, group_key: str | None = None) -> dict:
        """Send an update; returns the hub's receipt. Private tier: refused here, nothing is sent."""
        body = self.encode(update, group_key)
        return self.request("POST", "/v1/updates", content=body, idempotent=True)

    def encode(self, update: ClientUpdate, group_key: str | None = None) -> bytes:
        """The exact request body for `update` (the tier check happens first, before any I/O)."""
        tier = Tier(update.tier)
        if tier is Tier.PRIVATE:
            raise RuvdllmError(
                f"update {update.update_id}: tier private never leaves this device; nothing was sent"
            )
        if tier not in SENDABLE:
            raise RuvdllmError(f"update {update.update_id}: tier {tier.value!r} cannot be sent")
        consent = Consent(granted=update.consent, policy=update.policy)
        if tier is Tier.GROUP:
            return self._sealed(update, consent, group_key).model_dump_json().encode()
        groups = {
            tg: GroupDeltas(
                deltas={name: LoraDelta.of(pair) for name, pair in part.pairs.items()},
                metrics=ValidationMetrics(**part.metrics()),
            )
            for tg, part in update.groups.items()
        }
        message = PlainUpdate(update_id=update.update_id, tier=tier, consent=consent, groups=groups)
        return message.model_dump_json().encode()

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
            plaintext = codec.encode_contribution(part.pairs, part.metrics())
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
                pairs, metrics = codec.decode_contribution(plaintext, f"sealed update {item['update_id']}")
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
