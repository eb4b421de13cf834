"""DERMS dispatch: events, per-device commands and signed responses, event board samples,
alarms, and site coordinates for the operator's map.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the dispatch and alarm tables; add latitude/longitude to sites."""
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("latitude", sa.Float, nullable=True))
        batch.add_column(sa.Column("longitude", sa.Float, nullable=True))
    op.create_table(
        "dispatch_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("modification", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(80), nullable=False),
        sa.Column("control", sa.Integer, nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("start_s", sa.BigInteger, nullable=False),
        sa.Column("duration_s", sa.Integer, nullable=False),
        sa.Column("ramp_s", sa.Integer, nullable=False),
        sa.Column("randomize_s", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("cancelled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("modified_ms", sa.BigInteger, nullable=False),
        sa.Column("rewarded_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "dispatch_commands",
        sa.Column(
            "event_id",
            sa.String(64),
            sa.ForeignKey("dispatch_events.event_id"),
            primary_key=True,
        ),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("modification", sa.Integer, nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("expected_w", sa.BigInteger, nullable=False),
        sa.Column("baseline_w", sa.BigInteger, nullable=True),
        sa.Column("sent_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("status_ms", sa.BigInteger, nullable=True),
        sa.Column("first_ack_ms", sa.BigInteger, nullable=True),
        sa.Column("measured_w", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.String(128), nullable=False, server_default=""),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("delivered_wh", sa.BigInteger, nullable=True),
        sa.Column("reward_minor", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "dispatch_responses",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, index=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("modification", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("measured_w", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.String(128), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "dispatch_samples",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("at_s", sa.BigInteger, primary_key=True),
        sa.Column("requested_w", sa.BigInteger, nullable=False),
        sa.Column("measured_w", sa.BigInteger, nullable=False),
        sa.Column("baseline_w", sa.BigInteger, nullable=False),
        sa.Column("reporting", sa.Integer, nullable=False),
    )
    op.create_table(
        "alarms",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("raised_ms", sa.BigInteger, nullable=False),
        sa.Column("cleared_ms", sa.BigInteger, nullable=True),
        sa.Column("acked_by", sa.String(64), nullable=True),
        sa.Column("acked_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_alarms_open", "alarms", ["kind", "device_id", "cleared_ms"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_alarms_open", "alarms")
    for table in ("alarms", "dispatch_samples", "dispatch_responses", "dispatch_commands"):
        op.drop_table(table)
    op.drop_table("dispatch_events")
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("longitude")
        batch.drop_column("latitude")
