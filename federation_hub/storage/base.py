"""The storage interface the services use, and the records it returns.

Every method is one transaction. Methods that write several things (an update with its
contributions and ε charges; a round's outcome with its release and audit entry) write them all
or nothing, so a hub killed at any instant leaves either the whole write or none of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from ruvdllm.errors import RuvdllmError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Conflict(RuvdllmError):
    """The write contradicts what is stored (closed round, second contribution, reused id)."""


@dataclass(frozen=True)
class TokenRecord:
    id: int
    tenant: str
    client_id: str
    groups: tuple[str, ...]
    revoked: bool


@dataclass(frozen=True)
class RoundRecord:
    id: int
    scope: str
    tier: str
    tenant: str | None
    group: str | None
    timestep_group: str
    strategy: str
    strategy_params: dict
    shapes: dict  # linear -> {"rank", "in_features", "out_features"}
    max_norm: float
    min_contributors: int
    release_rank: int | None
    dp: dict | None
    sketch_seed: int
    status: str  # open | closing | released | withheld | relayed
    created_at: datetime
    closed_at: datetime | None
    release_id: str | None
    outcome: str | None
    contributions: int


@dataclass(frozen=True)
class NewContribution:
    round_id: int
    payload: bytes  # RVH1, or ciphertext for the group tier
    samples: int | None = None
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    norm: float | None = None
    nonce: bytes | None = None


@dataclass(frozen=True)
class NewUpdate:
    tenant: str
    client_id: str
    update_id: str
    body_hash: str  # sha256 of the request body: a replay must be the same bytes
    tier: str
    contributions: tuple[NewContribution, ...]

    @property
    def client_key(self) -> str:
        return f"{self.tenant}/{self.client_id}"


@dataclass(frozen=True)
class BudgetCharge:
    """ε charged at acceptance (a contribution accepted may be released)."""

    period: int
    noise_multipliers: tuple[float, ...]  # one per public contribution in the update, by round
    round_ids: tuple[int, ...]
    check: Callable[[list[float], list[float]], float]  # (spent, new) -> ε after; raises when over budget


@dataclass(frozen=True)
class ContributionRow:
    id: int
    client_key: str
    update_id: str
    samples: int | None
    perplexity_before: float | None
    perplexity_after: float | None
    norm: float | None


@dataclass(frozen=True)
class SealedRow:
    update_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class NewRelease:
    tier: str
    tenant: str | None
    timestep_group: str
    meta: dict  # summary fields; the store adds id, origin, seq, created_at
    digest: str
    payload: bytes


@dataclass(frozen=True)
class ReleaseRecord:
    origin: str
    seq: int
    tier: str
    tenant: str | None
    timestep_group: str
    meta: dict
    digest: str
    payload: bytes | None  # None when listed without payloads

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.seq}"


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    kind: str
    subject: str
    details: dict
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Viewer:
    """Whose data a read may return: the admin sees all; a client its tenant's, its groups', public."""

    admin: bool
    tenant: str | None = None
    groups: tuple[str, ...] = ()


class Store(ABC):
    dialect: str

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abstractmethod
    def hub_id(self, wanted: str | None = None) -> str:
        """This hub's id: created once (as `wanted`, or random) and kept in the database."""

    # tenants and tokens
    @abstractmethod
    def create_tenant(self, name: str) -> None: ...

    @abstractmethod
    def tenant_exists(self, name: str) -> bool: ...

    @abstractmethod
    def create_token(self, token_hash: str, tenant: str, client_id: str, groups: Sequence[str]) -> int: ...

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abstractmethod
    def revoke_token(self, token_id: int) -> bool: ...

    # rounds
    @abstractmethod
    def create_round(self, fields: dict) -> RoundRecord:
        """Raises Conflict when the scope already has an open round for the timestep group."""

    @abstractmethod
    def get_round(self, round_id: int, viewer: Viewer) -> RoundRecord | None: ...

    @abstractmethod
    def list_rounds(self, viewer: Viewer, status: str | None = None) -> list[RoundRecord]: ...

    @abstractmethod
    def open_round(self, scope: str, timestep_group: str) -> RoundRecord | None: ...

    @abstractmethod
    def begin_closing(self, round_id: int) -> bool:
        """open -> closing; False if it was not open. Closing rounds accept nothing more."""

    @abstractmethod
    def closing_rounds(self) -> list[int]:
        """Rounds a killed hub left half-closed: aggregated again at start-up."""

    @abstractmethod
    def finish_round(
        self,
        round_id: int,
        status: str,
        outcome: str,
        release: NewRelease | None,
        audit: tuple[str, str, dict],
    ) -> str | None:
        """closing -> status, with its release and audit entry in one transaction. Idempotent: a
        round already finished keeps its first outcome. Returns the release id (or None)."""

    # updates
    @abstractmethod
    def find_update(self, tenant: str, client_id: str, update_id: str) -> tuple[str, dict] | None:
        """(body hash, receipt) of an accepted update."""

    @abstractmethod
    def accept_update(
        self, update: NewUpdate, receipt: Callable[[float | None], dict], charge: BudgetCharge | None
    ) -> tuple[dict, bool]:
        """Store an update, its contributions and ε charges atomically; (receipt, duplicate).
        A replay of the same bytes returns the first receipt; other bytes under the same id,
        a closed round or a second contribution by the client raise Conflict."""

    @abstractmethod
    def contribution_rows(self, round_id: int) -> list[ContributionRow]: ...

    @abstractmethod
    def payloads(self, contribution_ids: Sequence[int], chunk: int = 32) -> Iterator[bytes]:
        """Payloads in the order asked, read `chunk` at a time."""

    @abstractmethod
    def sealed_rows(self, round_id: int) -> list[SealedRow]: ...

    @abstractmethod
    def budget_spent(self, client_key: str, period: int) -> list[float]: ...

    # releases and gossip
    @abstractmethod
    def get_release(self, release_id: str, viewer: Viewer) -> ReleaseRecord | None: ...

    @abstractmethod
    def list_releases(
        self, viewer: Viewer, timestep_group: str | None = None, limit: int = 100
    ) -> list[ReleaseRecord]: ...

    @abstractmethod
    def release_seqs(self) -> dict[str, list[int]]:
        """origin -> sequence numbers held (for the version vector)."""

    @abstractmethod
    def releases_after(self, vv: dict[str, int], tiers: Sequence[str], limit: int) -> list[ReleaseRecord]: ...

    @abstractmethod
    def merge_releases(self, releases: Sequence[ReleaseRecord]) -> int:
        """Insert the ones not held yet (by origin and seq); returns how many were new."""

    # audit
    @abstractmethod
    def append_audit(self, kind: str, subject: str, details: dict) -> None: ...

    @abstractmethod
    def audit_entries(self, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...
