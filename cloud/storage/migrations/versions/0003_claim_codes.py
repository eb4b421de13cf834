"""Claim codes for device enrollment.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the claim_codes table."""
    op.create_table(
        "claim_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("site_id", sa.String(64), sa.ForeignKey("sites.site_id"), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("used_by_device", sa.String(64), nullable=True),
    )
    op.create_index("ix_claim_codes_site_id", "claim_codes", ["site_id"])


def downgrade() -> None:
    """Drop the claim_codes table."""
    op.drop_table("claim_codes")
