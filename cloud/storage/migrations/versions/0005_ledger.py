"""The token ledger: Merkle-log entries, the records they cover, closed intervals, checkpoints;
and key revocation.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the ledger tables; add device_keys.revoked_ms."""
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("interval_start", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("leaf", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_entries_site", "ledger_entries", ["site_id", "interval_start"])
    op.create_table(
        "ledger_refs",
        sa.Column("record_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("token_id", sa.String(64), nullable=False, unique=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_intervals",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("interval_start", sa.BigInteger, primary_key=True),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("closed_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("device_keys") as batch:
        batch.add_column(sa.Column("revoked_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    """Drop the ledger tables and the revocation column."""
    with op.batch_alter_table("device_keys") as batch:
        batch.drop_column("revoked_ms")
    for table in ("ledger_checkpoints", "ledger_intervals", "ledger_refs", "ledger_entries"):
        op.drop_table(table)
