"""Market payment credits topped up or redeemed through the payment port, with the flat bank
transfer fee (cloud/services/credits.py).

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create credit_transfers."""
    op.create_table(
        "credit_transfers",
        sa.Column("transfer_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("gross_minor", sa.BigInteger, nullable=False),
        sa.Column("fee_minor", sa.BigInteger, nullable=False),
        sa.Column("net_minor", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("payout_to", sa.String(100), nullable=False, server_default=""),
        sa.Column("payout_id", sa.String(100), nullable=True),
        sa.Column("ledger_seq", sa.BigInteger, nullable=True),
        sa.Column("return_seq", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("kind IN ('top_up', 'redemption')", name="ck_credit_transfers_kind"),
        sa.CheckConstraint(
            "state IN ('pending', 'complete', 'failed', 'paying_out', 'paid_out', 'returned')",
            name="ck_credit_transfers_state",
        ),
        sa.CheckConstraint(
            "gross_minor > 0 AND fee_minor >= 0 AND net_minor > 0 "
            "AND gross_minor = fee_minor + net_minor",
            name="ck_credit_transfers_amounts",
        ),
    )
    op.create_index("ix_credit_transfers_site_id", "credit_transfers", ["site_id"])


def downgrade() -> None:
    """Drop credit_transfers."""
    op.drop_index("ix_credit_transfers_site_id", "credit_transfers")
    op.drop_table("credit_transfers")
