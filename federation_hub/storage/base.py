"""The storage interface the services use, and the records it returns.

Storage stores; the services decide. Every `Store` method is one transaction on its own. Where a
rule must read and write atomically (accept an update only into an open round, once per client,
within the ε budget; finish a round once), the service opens a `Transaction` and applies the
rule between its plain reads and writes (services/submission.py, services/rounds.py). Either way
a write of several things (an update with its contributions and ε charges; a round's outcome with
its release and audit entry) is all or nothing, so a hub killed at any instant leaves the whole
write or none of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone

from ruvdllm.errors import RuvdllmError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Conflict(RuvdllmError):
    """The write contradicts what is stored (closed round, second contribution, reused id)."""


class ConcurrentWrite(Conflict):
    """A concurrent transaction (another thread or replica) wrote the same unique key first, so
    nothing of this transaction was stored. Run again, the service's rules see the other write
    and decide (a replay, a second contribution); a second ConcurrentWrite is answered as 409."""


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
    accept_float16: bool
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
    payload: bytes  # safetensors (codec.py), or ciphertext for the group tier
    samples: int | None = None
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    norm: float | None = None
    nonce: bytes | None = None
    sketch: bytes | None = None  # clustering rounds: its features (float64), computed on arrival


@dataclass(frozen=True)
class NewUpdate:
    tenant: str
    client_id: str
    update_id: str
    body_hash: str  # sha256 of the request body: a replay must be the same bytes
    tier: str
    contributions: tuple[NewContribution, ...]
    accepted_by: str | None = None  # the hub process accepting it: it folds it first

    @property
    def client_key(self) -> str:
        return f"{self.tenant}/{self.client_id}"


@dataclass(frozen=True)
class StoredUpdate:
    """An accepted update, as a replay is answered from it."""

    body_hash: str
    receipt: dict


@dataclass(frozen=True)
class UpdateRow:
    """An accepted update as an operator lists it (receipts, for reconciling after a crash)."""

    seq: int  # the update's row id: listings page by it
    tenant: str
    client_id: str
    update_id: str
    tier: str
    created_at: datetime
    receipt: dict


@dataclass(frozen=True)
class RoundState:
    status: str
    release_id: str | None


@dataclass(frozen=True)
class ContributionRow:
    id: int
    client_key: str
    update_id: str
    samples: int | None
    perplexity_before: float | None
    perplexity_after: float | None
    norm: float | None
    folded: bool = False  # a running sum (a partial) holds it
    sketch: bytes | None = None


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


class Transaction(ABC):
    """Plain reads and writes inside one database transaction: everything written is stored at
    commit, or nothing is. Opened by `Store.transaction()` for the services' rules that must read
    and write atomically; the rules themselves live in the services, not here.

    A read that a rule decides on holds what it read until the transaction ends, so no concurrent
    transaction (another thread, another replica) can change it between the rule and the write.
    Each method says what it holds. A unique key that a concurrent transaction wrote first ends
    the transaction with `ConcurrentWrite`.
    """

    # updates
    @abstractmethod
    def find_update(self, tenant: str, client_id: str, update_id: str) -> StoredUpdate | None:
        """Not held: a concurrent insert of the same id ends one of the two with ConcurrentWrite."""

    @abstractmethod
    def round_status(self, round_id: int) -> str:
        """Held shared: submissions to one round proceed together, closing it (`begin_closing`)
        waits for them, and they for it."""

    @abstractmethod
    def contributor_update(self, round_id: int, client_key: str) -> str | None:
        """The update id of the client's contribution to the round, if any. Not held: a
        concurrent second contribution ends one of the two with ConcurrentWrite."""

    @abstractmethod
    def budget_spent(self, client_key: str, period: int) -> list[float]:
        """The noise multipliers charged to the client in the period. Held exclusively: a
        concurrent charge to the same client and period waits until this transaction ends."""

    @abstractmethod
    def add_update(self, update: NewUpdate, receipt: dict) -> None:
        """The update (answered with `receipt` on replays) and its contributions."""

    @abstractmethod
    def charge_budget(
        self, client_key: str, period: int, charges: Sequence[tuple[int, float]], epsilon_after: float
    ) -> None:
        """One ledger row per (round id, noise multiplier)."""

    # rounds
    @abstractmethod
    def lock_round(self, round_id: int) -> RoundState:
        """Held exclusively: one transaction at a time finishes a round."""

    @abstractmethod
    def add_release(self, release: NewRelease) -> str:
        """Numbered with this hub's next sequence number; returns its id (origin:seq)."""

    @abstractmethod
    def finish_round(self, round_id: int, status: str, outcome: str, release_id: str | None) -> None: ...

    @abstractmethod
    def append_audit(self, kind: str, subject: str, details: dict) -> None: ...


class Snapshot(ABC):
    """Reads that all see the database at one instant (opened by `Store.reading()`): a round's
    contributions, the partial sums and the payloads not in them are counted exactly once, even
    while other processes fold contributions into partials."""

    @abstractmethod
    def contribution_rows(self, round_id: int) -> list[ContributionRow]:
        """With `folded` and `sketch`."""

    @abstractmethod
    def partials(self, round_id: int) -> Iterator[tuple[str, bytes]]:
        """(owner, payload) of the round's partial sums, one at a time."""

    @abstractmethod
    def payloads(self, contribution_ids: Sequence[int]) -> Iterator[bytes]:
        """Contribution payloads in the order asked, read in bulk a chunk at a time."""


class Store(ABC):
    dialect: str

    @abstractmethod
    def reading(self) -> AbstractContextManager[Snapshot]:
        """A read-only transaction on one snapshot of the database."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction: committed when the block ends, rolled back if it raises."""

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

    # updates
    @abstractmethod
    def find_update(self, tenant: str, client_id: str, update_id: str) -> StoredUpdate | None: ...

    @abstractmethod
    def list_updates(
        self,
        tenant: str,
        client_id: str | None = None,
        update_id: str | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[UpdateRow]:
        """A tenant's accepted updates (one client's, one update id, if named), oldest first,
        after row `after`."""

    @abstractmethod
    def contribution_rows(self, round_id: int) -> list[ContributionRow]: ...

    @abstractmethod
    def payloads(self, contribution_ids: Sequence[int], chunk: int = 32) -> Iterator[bytes]:
        """Payloads in the order asked, read `chunk` at a time."""

    @abstractmethod
    def sealed_rows(self, round_id: int) -> list[SealedRow]: ...

    @abstractmethod
    def unfolded(
        self,
        owner: str,
        adopt_before: datetime,
        limit: int,
        exclude: Sequence[int] = (),
        round_id: int | None = None,
    ) -> dict[int, list[ContributionRow]]:
        """Per open plaintext round (or just `round_id`, open or closing), contributions no
        partial holds yet and not in `exclude`: those `owner` accepted, and anyone's accepted
        before `adopt_before` (left by a process that stopped); oldest first, at most `limit`."""

    @abstractmethod
    def partial(self, round_id: int, owner: str) -> bytes | None:
        """`owner`'s partial sum of the round, as last saved."""

    @abstractmethod
    def budget_spent(self, client_key: str, period: int) -> list[float]: ...

    # releases and gossip
    @abstractmethod
    def get_release(self, release_id: str, viewer: Viewer) -> ReleaseRecord | None: ...

    @abstractmethod
    def held_release(self, origin: str, seq: int) -> ReleaseRecord | None:
        """The release held under (origin, seq), whoever may read it, without its payload."""

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
        """Insert the ones not held yet (by origin and seq); returns how many were new. A copy with
        another digest replaces the held one if its digest is smaller and its tier and tenant are
        the held one's (audited `release-conflict`); which copies may be merged at all is the
        gossip service's decision."""

    # audit
    @abstractmethod
    def append_audit(self, kind: str, subject: str, details: dict) -> None: ...

    @abstractmethod
    def audit_entries(self, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...
