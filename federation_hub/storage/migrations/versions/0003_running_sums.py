"""Running sums: contributions are folded into per-process partial sums as they arrive.

Revision ID: 0003
Revises: 0002
Create Date: 2025-06-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("folded", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("round_id", "owner", name="one_partial_per_owner"),
    )
    with op.batch_alter_table("contributions") as batch:  # SQLite rebuilds the table for the nullable payload
        batch.alter_column("payload", existing_type=sa.LargeBinary, nullable=True)
        batch.add_column(sa.Column("sketch", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("accepted_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("folded", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index(
        "unfolded_contributions",
        "contributions",
        ["round_id"],
        sqlite_where=sa.text("NOT folded"),
        postgresql_where=sa.text("NOT folded"),
    )


def downgrade() -> None:
    op.drop_index("unfolded_contributions", "contributions")
    with op.batch_alter_table("contributions") as batch:
        batch.drop_column("folded")
        batch.drop_column("accepted_by")
        batch.drop_column("sketch")
    op.drop_table("partials")
