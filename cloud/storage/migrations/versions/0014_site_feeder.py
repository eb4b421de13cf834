"""Sites carry the distribution feeder they hang off (a fleet group, like the zone).

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
    """Add sites.feeder ("" for none)."""
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("feeder", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("feeder")
