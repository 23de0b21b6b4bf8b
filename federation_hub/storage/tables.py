"""The hub's tables (SQLAlchemy Core). Alembic migrations create them; a test checks that the
migrated schema and this metadata agree.

    meta           key/value: hub id, release and audit counters (rows locked to serialise them)
    tenants        organisations
    tokens         sha256 of client tokens, scoped to a tenant and its groups
    rounds         one per (scope, timestep group) at a time; scope = public | tenant | tenant+group
    updates        one per (tenant, client, update id): replays are answered from here
    contributions  one per (round, client): the payload (safetensors or ciphertext) and its metrics;
                   `folded` once a running sum holds it (services/folding.py)
    partials       running sums of a round's contributions, one per hub process that folds
    budget         the ε ledger: one row per public contribution, per client and period
    releases       released aggregates, ours and gossiped: unique (origin, seq)
    audit          append-only, hash-chained (triggers refuse UPDATE and DELETE)
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("scope", sa.String(160), nullable=False),  # "public", "tenant:<t>", "group:<t>:<g>"
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("grp", sa.String(64), nullable=True),
    sa.Column("timestep_group", sa.String(32), nullable=False),
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("strategy_params", sa.JSON, nullable=False),
    sa.Column("shapes", sa.JSON, nullable=False),
    sa.Column("max_norm", sa.Float, nullable=False),
    sa.Column("min_contributors", sa.Integer, nullable=False),
    sa.Column("release_rank", sa.Integer, nullable=True),
    sa.Column("dp", sa.JSON, nullable=True),
    sa.Column("accept_float16", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sketch_seed", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("release_id", sa.String(96), nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
    # at most one open round per scope and timestep group
    sa.Index(
        "one_open_round",
        "scope",
        "timestep_group",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
)

updates = sa.Table(
    "updates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("update_id", sa.String(128), nullable=False),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("receipt", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("tenant", "client_id", "update_id", name="update_once"),
)

contributions = sa.Table(
    "contributions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("update_pk", sa.Integer, sa.ForeignKey("updates.id"), nullable=False),
    sa.Column("client_key", sa.String(160), nullable=False),  # "<tenant>/<client>"
    sa.Column("update_id", sa.String(128), nullable=False),
    sa.Column("samples", sa.BigInteger, nullable=True),
    sa.Column("perplexity_before", sa.Float, nullable=True),
    sa.Column("perplexity_after", sa.Float, nullable=True),
    sa.Column("norm", sa.Float, nullable=True),
    sa.Column("nonce", sa.LargeBinary, nullable=True),  # group tier: sealed payload
    sa.Column("sketch", sa.LargeBinary, nullable=True),  # clustering rounds: float64 features
    sa.Column("accepted_by", sa.String(64), nullable=True),  # the hub process that accepted it
    sa.Column("folded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # NULL once no close can need it: folded into a running sum (strategies that keep everyone),
    # or its round finished; clustering strategies keep it until then (they may exclude it).
    # Last: on SQLite, reading a column stored after a megabyte payload walks its overflow pages
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.UniqueConstraint("round_id", "client_key", name="one_contribution_per_client"),
    sa.Index(
        "unfolded_contributions",
        "round_id",
        sqlite_where=sa.text("NOT folded"),
        postgresql_where=sa.text("NOT folded"),
    ),
)

partials = sa.Table(
    "partials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),  # the hub process that folds into it
    sa.Column("folded", sa.Integer, nullable=False),  # contributions it holds
    sa.Column("payload", sa.LargeBinary, nullable=False),  # codec.encode_partial
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("round_id", "owner", name="one_partial_per_owner"),
)

budget = sa.Table(
    "budget",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client_key", sa.String(160), nullable=False),
    sa.Column("period", sa.BigInteger, nullable=False),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("noise_multiplier", sa.Float, nullable=False),
    sa.Column("epsilon_after", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("budget_by_client", "client_key", "period"),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("origin", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("timestep_group", sa.String(32), nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("origin", "seq", name="release_once"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
