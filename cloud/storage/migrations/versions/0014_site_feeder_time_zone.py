"""Sites carry the distribution feeder they hang off (a fleet group, like the zone) and their
IANA time zone (the virtual meter's days and the Green Button export are in local time).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add sites.feeder ("" for none) and sites.time_zone ("UTC" until set)."""
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("feeder", sa.String(64), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC")
        )


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("time_zone")
        batch.drop_column("feeder")
