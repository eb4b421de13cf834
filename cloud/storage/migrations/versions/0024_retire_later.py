"""Carbon shop orders that are paid now and retired later, at the buyer's choice.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """carbon_orders.retire_on_payment: 1 (every existing order) retires when paid."""
    op.add_column(
        "carbon_orders",
        sa.Column("retire_on_payment", sa.Integer, nullable=False, server_default="1"),
    )


def downgrade() -> None:
    with op.batch_alter_table("carbon_orders") as batch:
        batch.drop_column("retire_on_payment")
