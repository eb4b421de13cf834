"""The log of approver decisions on accounts: who, when, old -> new status and why.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the account_decisions table."""
    op.create_table(
        "account_decisions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "account_id", sa.String(32), sa.ForeignKey("accounts.account_id"), nullable=False
        ),
        sa.Column("decided_by", sa.String(32), nullable=False),
        sa.Column("decided_ms", sa.BigInteger, nullable=False),
        sa.Column("old_status", sa.String(16), nullable=False),
        sa.Column("new_status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
    )
    op.create_index("ix_account_decisions_account_id", "account_decisions", ["account_id"])
    op.create_index("ix_account_decisions_decided_ms", "account_decisions", ["decided_ms"])


def downgrade() -> None:
    """Drop the account_decisions table."""
    op.drop_table("account_decisions")
