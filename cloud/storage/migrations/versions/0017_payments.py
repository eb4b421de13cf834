"""Payments behind the provider port (Stripe or the sandbox), the provider events applied to
them (the event id is the key that makes redelivery a no-op), and admin-entered FX rates.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

LIVE = "status IN ('created', 'processing', 'succeeded')"


def upgrade() -> None:
    """Create payments, payment_events and fx_rates."""
    op.create_table(
        "payments",
        sa.Column("payment_id", sa.String(40), primary_key=True),
        sa.Column("ref", sa.String(100), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_id", sa.String(100), nullable=True, unique=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("notified_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "status IN ('created', 'processing', 'succeeded', 'failed', 'canceled', 'refunded')",
            name="ck_payments_status",
        ),
    )
    op.create_index(
        "uq_payments_live_ref",
        "payments",
        ["ref"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_index("ix_payments_status_created", "payments", ["status", "created_ms"])
    op.create_table(
        "payment_events",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
    )
    op.create_index("ix_payment_events_payment_id", "payment_events", ["payment_id"])
    op.create_table(
        "fx_rates",
        sa.Column("base", sa.String(3), primary_key=True),
        sa.Column("quote", sa.String(3), primary_key=True),
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("rate_ppm", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fx_rates")
    op.drop_table("payment_events")
    op.drop_table("payments")
