"""Revenue meter data for reconciliation with the virtual meter: imports (Green Button files
from a utility's meter, accepted or refused) and their interval readings.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create revenue_imports and revenue_intervals."""
    op.create_table(
        "revenue_imports",
        sa.Column("import_id", sa.String(32), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False, index=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("imported_ms", sa.BigInteger, nullable=False),
        sa.Column("imported_by", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # accepted | rejected
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("intervals", sa.BigInteger, nullable=False),
        sa.Column("first_start", sa.BigInteger, nullable=True),
        sa.Column("last_end", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "revenue_intervals",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("flow", sa.String(16), primary_key=True),
        sa.Column("interval_start", sa.BigInteger, primary_key=True),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.Column("value_wh", sa.BigInteger, nullable=False),
        sa.Column("quality", sa.Integer, nullable=True),
        sa.Column("import_id", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("revenue_intervals")
    op.drop_table("revenue_imports")
