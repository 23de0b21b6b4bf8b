"""The Store on SQLAlchemy Core: one implementation of the queries (releases and gossip in
`sql_releases.py`), two engines (`engines.py`).

SQLite: WAL (readers never block the writer), synchronous=FULL (an acknowledged write survives a
power cut, not just a killed process), and `BEGIN IMMEDIATE` for every transaction so concurrent
writers queue on the database lock instead of failing on a read-to-write upgrade.
PostgreSQL: row locks (`FOR UPDATE`, `FOR SHARE`) and transaction-scoped advisory locks serialise
what must be serial across replicas: counters, a client's ε ledger, closing against submitting.
A unique key two replicas insert at once fails in the later one (IntegrityError), reported as
`ConcurrentWrite`.
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from federation_hub import audit as audit_chain
from federation_hub.storage import migrate
from federation_hub.storage import tables as t
from federation_hub.storage.base import (
    AuditRecord,
    ConcurrentWrite,
    Conflict,
    NewRelease,
    NewUpdate,
    RoundRecord,
    RoundState,
    SealedRow,
    Store,
    StoredUpdate,
    TokenRecord,
    Transaction,
    UpdateRow,
    Viewer,
    utcnow,
)
from federation_hub.storage.sql_contributions import ContributionQueries, RunningSumWrites
from federation_hub.storage.sql_releases import ReleaseQueries
from federation_hub.tiers import Tier
from ruvdllm.errors import RuvdllmError


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _find_update(conn: Connection, tenant: str, client_id: str, update_id: str) -> StoredUpdate | None:
    u = t.updates.c
    row = conn.execute(
        sa.select(u.body_hash, u.receipt).where(
            u.tenant == tenant, u.client_id == client_id, u.update_id == update_id
        )
    ).first()
    return StoredUpdate(row.body_hash, row.receipt) if row else None


def _spent(conn: Connection, client_key: str, period: int) -> list[float]:
    b = t.budget.c
    query = sa.select(b.noise_multiplier).where(b.client_key == client_key, b.period == period).order_by(b.id)
    return list(conn.execute(query).scalars())


class SqlStore(ContributionQueries, ReleaseQueries, Store):
    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        migrate.upgrade(engine)
        with self._write() as conn:
            self._insert_ignore(conn, t.meta, {"key": "audit_head", "value": f"0:{audit_chain.GENESIS}"})

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE; reads stay deferred and never block)."""
        with self._writer_turn(), self.engine.connect() as conn:
            conn.execution_options(hub_write=True)
            with conn.begin():
                yield conn

    def _writer_turn(self) -> AbstractContextManager:
        """Whatever this process's writers must take before the database's own write lock
        (SQLite: a FIFO turn, storage/writer_queue.py; PostgreSQL: nothing, rows lock)."""
        return nullcontext()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        try:
            with self._write() as conn:
                yield SqlTransaction(self, conn)
        except IntegrityError:
            # SQLite serialises writers, so only a concurrent PostgreSQL transaction gets here
            raise ConcurrentWrite("a concurrent request stored the same key first") from None

    # --- dialect hooks -------------------------------------------------------------------------
    @abstractmethod
    def _insert_ignore(self, conn: Connection, table: sa.Table, values: dict) -> bool:
        """INSERT … ON CONFLICT DO NOTHING; True when a row was inserted."""

    def _lock_key(self, conn: Connection, key: str) -> None:
        """Serialise transactions on `key` (SQLite: the database lock already does)."""

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def hub_id(self, wanted: str | None = None) -> str:
        with self._write() as conn:
            self._insert_ignore(conn, t.meta, {"key": "hub_id", "value": wanted or uuid.uuid4().hex[:16]})
            stored = conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == "hub_id")).scalar_one()
        if wanted and stored != wanted:
            raise RuvdllmError(
                f"hub database: belongs to hub {stored!r}, not {wanted!r} (one database per hub id)"
            )
        return stored

    # --- tenants and tokens --------------------------------------------------------------------
    def create_tenant(self, name: str) -> None:
        try:
            with self._write() as conn:
                conn.execute(t.tenants.insert().values(name=name, created_at=utcnow()))
                self._append_audit(conn, "tenant-created", name, {})
        except IntegrityError:
            raise Conflict(f"tenant {name!r}: exists already") from None

    def tenant_exists(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.tenants.c.id).where(t.tenants.c.name == name)).first() is not None

    def create_token(self, token_hash: str, tenant: str, client_id: str, groups: Sequence[str]) -> int:
        with self._write() as conn:
            token_id = conn.execute(
                t.tokens.insert().values(
                    token_hash=token_hash,
                    tenant=tenant,
                    client_id=client_id,
                    groups=sorted(set(groups)),
                    created_at=utcnow(),
                )
            ).inserted_primary_key[0]
            self._append_audit(
                conn,
                "token-issued",
                f"{tenant}/{client_id}",
                {"token_id": token_id, "groups": sorted(set(groups))},
            )
            return token_id

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.tokens).where(t.tokens.c.token_hash == token_hash)).first()
        if row is None:
            return None
        return TokenRecord(row.id, row.tenant, row.client_id, tuple(row.groups), row.revoked_at is not None)

    def revoke_token(self, token_id: int) -> bool:
        with self._write() as conn:
            done = conn.execute(
                t.tokens.update()
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
            if done:
                self._append_audit(conn, "token-revoked", str(token_id), {})
            return bool(done)

    # --- rounds -------------------------------------------------------------------------------
    def _round_query(self):
        count = (
            sa.select(sa.func.count(t.contributions.c.id))
            .where(t.contributions.c.round_id == t.rounds.c.id)
            .scalar_subquery()
            .label("contributions")
        )
        return sa.select(t.rounds, count)

    @staticmethod
    def _round(row) -> RoundRecord:
        """The rounds columns and the contribution count are RoundRecord's fields, but for `grp`
        (`group` is an SQL keyword) and the times (SQLite returns them naive)."""
        fields = dict(row._mapping)
        fields["group"] = fields.pop("grp")
        fields["created_at"], fields["closed_at"] = _utc(row.created_at), _utc(row.closed_at)
        return RoundRecord(**fields)

    @staticmethod
    def _visible_rounds(viewer: Viewer):
        if viewer.admin:
            return sa.true()
        r = t.rounds.c
        return sa.or_(
            r.tier == Tier.PUBLIC,
            sa.and_(r.tier == Tier.TENANT, r.tenant == viewer.tenant),
            sa.and_(r.tier == Tier.GROUP, r.tenant == viewer.tenant, r.grp.in_(list(viewer.groups) or [""])),
        )

    def create_round(self, fields: dict) -> RoundRecord:
        try:
            with self._write() as conn:
                round_id = conn.execute(
                    t.rounds.insert().values(**fields, status="open", created_at=utcnow())
                ).inserted_primary_key[0]
                self._append_audit(
                    conn,
                    "round-opened",
                    str(round_id),
                    {k: fields[k] for k in ("scope", "timestep_group", "strategy")},
                )
        except IntegrityError:
            raise Conflict(
                f"round: {fields['scope']} already has an open {fields['timestep_group']} round"
            ) from None
        return self.get_round(round_id, Viewer(admin=True))

    def get_round(self, round_id: int, viewer: Viewer) -> RoundRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                self._round_query().where(t.rounds.c.id == round_id, self._visible_rounds(viewer))
            ).first()
        return self._round(row) if row else None

    def list_rounds(self, viewer: Viewer, status: str | None = None) -> list[RoundRecord]:
        query = self._round_query().where(self._visible_rounds(viewer)).order_by(t.rounds.c.id)
        if status:
            query = query.where(t.rounds.c.status == status)
        with self.engine.connect() as conn:
            return [self._round(row) for row in conn.execute(query)]

    def open_round(self, scope: str, timestep_group: str) -> RoundRecord | None:
        query = self._round_query().where(
            t.rounds.c.scope == scope,
            t.rounds.c.timestep_group == timestep_group,
            t.rounds.c.status == "open",
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return self._round(row) if row else None

    def begin_closing(self, round_id: int) -> bool:
        with self._write() as conn:
            done = conn.execute(
                t.rounds.update()
                .where(t.rounds.c.id == round_id, t.rounds.c.status == "open")
                .values(status="closing")
            ).rowcount
            return bool(done)

    def closing_rounds(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(t.rounds.c.id).where(t.rounds.c.status == "closing").order_by(t.rounds.c.id)
                ).scalars()
            )

    def _next_counter(self, conn: Connection, key: str) -> int:
        self._insert_ignore(conn, t.meta, {"key": key, "value": "0"})
        current = int(
            conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == key).with_for_update()).scalar_one()
        )
        conn.execute(t.meta.update().where(t.meta.c.key == key).values(value=str(current + 1)))
        return current + 1

    # --- updates ------------------------------------------------------------------------------
    def find_update(self, tenant: str, client_id: str, update_id: str) -> StoredUpdate | None:
        with self.engine.connect() as conn:
            return _find_update(conn, tenant, client_id, update_id)

    def budget_spent(self, client_key: str, period: int) -> list[float]:
        with self.engine.connect() as conn:
            return _spent(conn, client_key, period)

    def list_updates(
        self,
        tenant: str,
        client_id: str | None = None,
        update_id: str | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[UpdateRow]:
        u = t.updates.c
        query = sa.select(u.id, u.tenant, u.client_id, u.update_id, u.tier, u.created_at, u.receipt).where(
            u.tenant == tenant, u.id > after
        )
        if client_id is not None:
            query = query.where(u.client_id == client_id)
        if update_id is not None:
            query = query.where(u.update_id == update_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(u.id).limit(limit)).all()
        return [
            UpdateRow(r.id, r.tenant, r.client_id, r.update_id, r.tier, _utc(r.created_at), r.receipt)
            for r in rows
        ]

    def sealed_rows(self, round_id: int) -> list[SealedRow]:
        c = t.contributions.c
        query = sa.select(c.update_id, c.nonce, c.payload).where(c.round_id == round_id).order_by(c.id)
        with self.engine.connect() as conn:
            return [
                SealedRow(row.update_id, bytes(row.nonce), bytes(row.payload)) for row in conn.execute(query)
            ]

    # --- audit --------------------------------------------------------------------------------
    def _append_audit(self, conn: Connection, kind: str, subject: str, details: dict) -> None:
        head = conn.execute(
            sa.select(t.meta.c.value).where(t.meta.c.key == "audit_head").with_for_update()
        ).scalar_one()
        last_seq, prev_hash = head.split(":")
        seq = int(last_seq) + 1
        at = utcnow()
        digest = audit_chain.entry_hash(prev_hash, seq, at, kind, subject, details)
        conn.execute(
            t.audit.insert().values(
                seq=seq, at=at, kind=kind, subject=subject, details=details, prev_hash=prev_hash, hash=digest
            )
        )
        conn.execute(t.meta.update().where(t.meta.c.key == "audit_head").values(value=f"{seq}:{digest}"))

    def append_audit(self, kind: str, subject: str, details: dict) -> None:
        with self._write() as conn:
            self._append_audit(conn, kind, subject, details)

    def audit_entries(self, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        a = t.audit.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.audit).where(a.seq > after).order_by(a.seq).limit(limit)).all()
        return [
            AuditRecord(r.seq, _utc(r.at), r.kind, r.subject, r.details, r.prev_hash, r.hash) for r in rows
        ]


class SqlTransaction(RunningSumWrites, Transaction):
    """`Transaction` on one connection of a `SqlStore` write transaction."""

    def __init__(self, store: SqlStore, conn: Connection):
        self._store = store
        self._conn = conn

    # --- updates ------------------------------------------------------------------------------
    def find_update(self, tenant: str, client_id: str, update_id: str) -> StoredUpdate | None:
        return _find_update(self._conn, tenant, client_id, update_id)

    def round_status(self, round_id: int) -> str:
        query = sa.select(t.rounds.c.status).where(t.rounds.c.id == round_id).with_for_update(read=True)
        return self._conn.execute(query).scalar_one()

    def contributor_update(self, round_id: int, client_key: str) -> str | None:
        c = t.contributions.c
        query = sa.select(c.update_id).where(c.round_id == round_id, c.client_key == client_key)
        return self._conn.execute(query).scalar()

    def budget_spent(self, client_key: str, period: int) -> list[float]:
        self._store._lock_key(self._conn, f"budget:{client_key}:{period}")
        return _spent(self._conn, client_key, period)

    def add_update(self, update: NewUpdate, receipt: dict) -> None:
        now = utcnow()
        update_pk = self._conn.execute(
            t.updates.insert().values(
                tenant=update.tenant,
                client_id=update.client_id,
                update_id=update.update_id,
                body_hash=update.body_hash,
                tier=update.tier,
                receipt=receipt,
                created_at=now,
            )
        ).inserted_primary_key[0]
        for part in update.contributions:
            self._conn.execute(
                t.contributions.insert().values(
                    round_id=part.round_id,
                    update_pk=update_pk,
                    client_key=update.client_key,
                    update_id=update.update_id,
                    samples=part.samples,
                    perplexity_before=part.perplexity_before,
                    perplexity_after=part.perplexity_after,
                    norm=part.norm,
                    nonce=part.nonce,
                    payload=part.payload,
                    sketch=part.sketch,
                    accepted_by=update.accepted_by,
                    created_at=now,
                )
            )

    def charge_budget(
        self, client_key: str, period: int, charges: Sequence[tuple[int, float]], epsilon_after: float
    ) -> None:
        now = utcnow()
        for round_id, noise_multiplier in charges:
            self._conn.execute(
                t.budget.insert().values(
                    client_key=client_key,
                    period=period,
                    round_id=round_id,
                    noise_multiplier=noise_multiplier,
                    epsilon_after=epsilon_after,
                    created_at=now,
                )
            )

    # --- rounds -------------------------------------------------------------------------------
    def lock_round(self, round_id: int) -> RoundState:
        r = t.rounds.c
        query = sa.select(r.status, r.release_id).where(r.id == round_id).with_for_update()
        row = self._conn.execute(query).one()
        return RoundState(row.status, row.release_id)

    def add_release(self, release: NewRelease) -> str:
        origin = self._conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == "hub_id")).scalar_one()
        seq = self._store._next_counter(self._conn, "release_seq")
        release_id = f"{origin}:{seq}"
        now = utcnow()
        meta = {**release.meta, "id": release_id, "origin": origin, "seq": seq, "created_at": now.isoformat()}
        self._conn.execute(
            t.releases.insert().values(
                origin=origin,
                seq=seq,
                tier=release.tier,
                tenant=release.tenant,
                timestep_group=release.timestep_group,
                meta=meta,
                digest=release.digest,
                payload=release.payload,
                received_at=now,
            )
        )
        return release_id

    def finish_round(self, round_id: int, status: str, outcome: str, release_id: str | None) -> None:
        self._conn.execute(
            t.rounds.update()
            .where(t.rounds.c.id == round_id)
            .values(status=status, outcome=outcome, release_id=release_id, closed_at=utcnow())
        )

    def append_audit(self, kind: str, subject: str, details: dict) -> None:
        self._store._append_audit(self._conn, kind, subject, details)
