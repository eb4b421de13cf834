"""Accounts' carbon footprints: each saved calculation (the newest is the account's baseline),
with the answers and the model version of the factors it was computed with.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create footprints."""
    op.create_table(
        "footprints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("saved_ms", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("answers", sa.Text, nullable=False),
        sa.Column("total_kg", sa.BigInteger, nullable=False),
        sa.CheckConstraint("total_kg >= 0", name="ck_footprints_total"),
    )
    op.create_index("ix_footprints_account_saved", "footprints", ["account_id", "saved_ms"])


def downgrade() -> None:
    op.drop_table("footprints")
