"""Devices, device keys, accepted tokens and rejections.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the first schema."""
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("capacity_w", sa.BigInteger, nullable=False),
        sa.Column("zone", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_devices_site_id", "devices", ["site_id"])
    op.create_table(
        "device_keys",
        sa.Column("kid", sa.LargeBinary(8), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("valid_from", sa.BigInteger, nullable=False),
        sa.Column("valid_until", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_device_keys_device_id", "device_keys", ["device_id"])
    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("boot", sa.BigInteger, nullable=False),
        sa.Column("interval_start", sa.BigInteger, nullable=False),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.Column("generated_wh", sa.BigInteger, nullable=False),
        sa.Column("imported_wh", sa.BigInteger, nullable=False),
        sa.Column("exported_wh", sa.BigInteger, nullable=False),
        sa.Column("charged_wh", sa.BigInteger, nullable=False),
        sa.Column("discharged_wh", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("quality", sa.Integer, nullable=False),
        sa.Column("record_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("device_id", "seq", name="uq_tokens_device_seq"),
        sa.UniqueConstraint("device_id", "interval_start", name="uq_tokens_device_interval"),
    )
    op.create_index("ix_tokens_interval_start", "tokens", ["interval_start"])
    op.create_table(
        "rejections",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("truncated", sa.Integer, nullable=False),
    )
    op.create_index("ix_rejections_reason", "rejections", ["reason"])


def downgrade() -> None:
    """Drop everything."""
    for name in ("rejections", "tokens", "device_keys", "devices"):
        op.drop_table(name)
