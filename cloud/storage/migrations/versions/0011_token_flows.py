"""Tokens keep the record fields the ledger's interval close needs beyond the energy columns
(state of charge, technology, zone), so closing reads columns instead of decoding envelopes.
Existing rows are filled in from their stored envelopes.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from protocol import cose

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    """Add soc_permille, tech and zone to tokens; fill them from each token's envelope."""
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("soc_permille", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tech", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("zone", sa.String(64), nullable=False, server_default=""))
    conn = op.get_bind()
    tokens = sa.table(
        "tokens",
        sa.column("token_id", sa.String),
        sa.column("envelope", sa.LargeBinary),
        sa.column("soc_permille", sa.Integer),
        sa.column("tech", sa.String),
        sa.column("zone", sa.String),
    )
    after = ""
    while True:
        rows = conn.execute(
            sa.select(tokens.c.token_id, tokens.c.envelope)
            .where(tokens.c.token_id > after)
            .order_by(tokens.c.token_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        values = []
        for token_id, envelope in rows:
            rec = cose.open_record(bytes(envelope))[1]  # stored tokens were verified at ingest
            values.append(
                {"t": token_id, "soc": rec.soc_permille, "tech": rec.tech[0], "zone": rec.zone}
            )
        conn.execute(
            tokens.update()
            .where(tokens.c.token_id == sa.bindparam("t"))
            .values(
                soc_permille=sa.bindparam("soc"),
                tech=sa.bindparam("tech"),
                zone=sa.bindparam("zone"),
            ),
            values,
        )
        after = rows[-1][0]


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("zone")
        batch.drop_column("tech")
        batch.drop_column("soc_permille")
