"""The log of approver decisions on devices: who, when, old -> new status and why.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the device_decisions table."""
    op.create_table(
        "device_decisions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("decided_by", sa.String(32), nullable=False),
        sa.Column("decided_ms", sa.BigInteger, nullable=False),
        sa.Column("old_status", sa.String(16), nullable=False),
        sa.Column("new_status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
    )
    op.create_index("ix_device_decisions_device_id", "device_decisions", ["device_id"])
    op.create_index("ix_device_decisions_decided_ms", "device_decisions", ["decided_ms"])


def downgrade() -> None:
    """Drop the device_decisions table."""
    op.drop_table("device_decisions")
