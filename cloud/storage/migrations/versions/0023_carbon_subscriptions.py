"""Monthly offset subscriptions of the carbon shop and their runs, one per calendar month.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create carbon_subscriptions and carbon_subscription_runs."""
    op.create_table(
        "carbon_subscriptions",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("buyer_account_id", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("kg_per_month", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("beneficiary", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "state IN ('active', 'cancelled')", name="ck_carbon_subscriptions_state"
        ),
        sa.CheckConstraint("kg_per_month > 0", name="ck_carbon_subscriptions_kg"),
    )
    op.create_index(
        "ix_carbon_subscriptions_buyer_account_id", "carbon_subscriptions", ["buyer_account_id"]
    )
    op.create_table(
        "carbon_subscription_runs",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("order_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop the subscription tables."""
    op.drop_table("carbon_subscription_runs")
    op.drop_index("ix_carbon_subscriptions_buyer_account_id", "carbon_subscriptions")
    op.drop_table("carbon_subscriptions")
