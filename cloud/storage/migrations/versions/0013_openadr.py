"""OpenADR 3 VTN objects: programs, events (with the dispatch event each became) and reports.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create openadr_programs, openadr_events and openadr_reports."""
    op.create_table(
        "openadr_programs",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("program_name", sa.String(128), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("modified_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "openadr_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False, index=True),
        sa.Column("dispatch_event_id", sa.String(64), nullable=True),
        sa.Column("start_s", sa.BigInteger, nullable=False),
        sa.Column("end_s", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("modified_ms", sa.BigInteger, nullable=False),
        sa.Column("deleted_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "openadr_reports",
        sa.Column("report_id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False, index=True),
        sa.Column("event_id", sa.String(64), nullable=False, index=True),
        sa.Column("client_name", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("modified_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop the OpenADR tables."""
    op.drop_table("openadr_reports")
    op.drop_table("openadr_events")
    op.drop_table("openadr_programs")
