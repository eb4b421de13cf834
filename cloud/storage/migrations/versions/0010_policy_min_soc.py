"""Automated trading policies keep the battery above a state of charge: `min_soc_permille` of the
battery's usable capacity (0: no reserve kept, what every existing policy does).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the min_soc_permille column to market_policies."""
    with op.batch_alter_table("market_policies") as batch:
        batch.add_column(
            sa.Column("min_soc_permille", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop the min_soc_permille column."""
    with op.batch_alter_table("market_policies") as batch:
        batch.drop_column("min_soc_permille")
