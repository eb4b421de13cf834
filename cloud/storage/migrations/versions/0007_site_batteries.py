"""Per-site battery parameters for the ledger: usable capacity, state of health, self-discharge
and round-trip efficiency (integers: Wh, permille, ppm per hour).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the site_batteries table."""
    op.create_table(
        "site_batteries",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("usable_capacity_wh", sa.BigInteger, nullable=False),
        sa.Column("soh_permille", sa.Integer, nullable=False),
        sa.Column("self_discharge_ppm_per_h", sa.Integer, nullable=False),
        sa.Column("round_trip_permille", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String(32), nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop the site_batteries table."""
    op.drop_table("site_batteries")
