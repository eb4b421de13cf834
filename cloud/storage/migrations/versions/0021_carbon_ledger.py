"""The carbon shop on the ledger: the CARBON leaf of each listed lot, paid order and retirement,
a lot's own serial prefix (gridmint_solar lots name their certificate), and the lot a listed
certificate is held by.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nullable columns only: rows from before have no leaf (the shop wrote none then)."""
    op.add_column("carbon_lots", sa.Column("serial_prefix", sa.String(40), nullable=True))
    op.add_column("carbon_lots", sa.Column("ledger_seq", sa.BigInteger, nullable=True))
    op.add_column("carbon_orders", sa.Column("paid_seq", sa.BigInteger, nullable=True))
    op.add_column("carbon_orders", sa.Column("retired_seq", sa.BigInteger, nullable=True))
    op.add_column("carbon_retirements", sa.Column("ledger_seq", sa.BigInteger, nullable=True))
    op.add_column("certificates", sa.Column("listed_lot_id", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop the columns in place (SQLite 3.35+ drops a column without rebuilding the table, so
    the retirements' triggers stay)."""
    for table, column in (
        ("certificates", "listed_lot_id"),
        ("carbon_retirements", "ledger_seq"),
        ("carbon_orders", "retired_seq"),
        ("carbon_orders", "paid_seq"),
        ("carbon_lots", "ledger_seq"),
        ("carbon_lots", "serial_prefix"),
    ):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
