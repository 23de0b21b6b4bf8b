"""Who is calling: tokens, their hashes, and the caller a request acts as.

Tokens are 256 random bits. The hub stores only their sha256: for secrets of that entropy a fast
hash is enough (there is no dictionary to try), unlike passwords that need a slow KDF.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from federation_hub.storage.base import Viewer
from federation_hub.tiers import Tier

TOKEN_PREFIX = "rvh_"  # recognisable in logs and secret scanners


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_admin_token(token: str, admin_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), admin_hash)


@dataclass(frozen=True)
class Caller:
    kind: str  # "admin" | "client"
    tenant: str | None = None
    client_id: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def viewer(self) -> Viewer:
        return Viewer(admin=self.kind == "admin", tenant=self.tenant, groups=self.groups)

    @property
    def client_key(self) -> str:
        return f"{self.tenant}/{self.client_id}"


def scope_of(tier: Tier, tenant: str | None, group: str | None) -> str:
    """Where a round's data lives: public is one scope; tenant and group are per organisation."""
    if tier == Tier.PUBLIC:
        return "public"
    if tier == Tier.TENANT:
        return f"tenant:{tenant}"
    return f"group:{tenant}:{group}"
