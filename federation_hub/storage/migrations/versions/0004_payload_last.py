"""Contributions keep their payload in the last column (SQLite).

SQLite stores a row's columns one after another and a megabyte payload spills into a chain of
overflow pages; reading any column after it (`sketch`, `accepted_by`, `folded`, `created_at`)
walks that whole chain, so listing a round's unfolded contributions read every payload they held
(~0.8 ms a row, measured). The table is rebuilt with the payload last; PostgreSQL keeps large
values out of line (TOAST) and needs nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = [  # the order of storage/tables.py: everything small first, the payload last
    "id", "round_id", "update_pk", "client_key", "update_id", "samples", "perplexity_before",
    "perplexity_after", "norm", "nonce", "sketch", "accepted_by", "folded", "created_at", "payload",
]  # fmt: skip


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_table(
        "contributions_rebuilt",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("update_pk", sa.Integer, sa.ForeignKey("updates.id"), nullable=False),
        sa.Column("client_key", sa.String(160), nullable=False),
        sa.Column("update_id", sa.String(128), nullable=False),
        sa.Column("samples", sa.BigInteger, nullable=True),
        sa.Column("perplexity_before", sa.Float, nullable=True),
        sa.Column("perplexity_after", sa.Float, nullable=True),
        sa.Column("norm", sa.Float, nullable=True),
        sa.Column("nonce", sa.LargeBinary, nullable=True),
        sa.Column("sketch", sa.LargeBinary, nullable=True),
        sa.Column("accepted_by", sa.String(64), nullable=True),
        sa.Column("folded", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True),
        sa.UniqueConstraint("round_id", "client_key", name="one_contribution_per_client"),
    )
    names = ", ".join(COLUMNS)
    op.execute(f"INSERT INTO contributions_rebuilt ({names}) SELECT {names} FROM contributions")
    op.drop_index("unfolded_contributions", "contributions")
    op.drop_table("contributions")
    op.rename_table("contributions_rebuilt", "contributions")
    op.create_index(
        "unfolded_contributions", "contributions", ["round_id"], sqlite_where=sa.text("NOT folded")
    )


def downgrade() -> None:
    pass  # column order carries no meaning for the schema before this one
