"""Utility (machine) clients of the Connect API, their access tokens, homeowners' grants of a
site to a client, and the append-only log of every grant and revocation (a trigger refuses
updates and deletes of the log).

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER site_grant_log_no_update BEFORE UPDATE ON site_grant_log
    BEGIN
        SELECT RAISE(ABORT, 'the site grant log is append-only');
    END
    """,
    """
    CREATE TRIGGER site_grant_log_no_delete BEFORE DELETE ON site_grant_log
    BEGIN
        SELECT RAISE(ABORT, 'the site grant log is append-only');
    END
    """,
)

PG_TRIGGERS = (
    """
    CREATE FUNCTION site_grant_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $guard$
    BEGIN
        RAISE EXCEPTION USING
            MESSAGE = 'the site grant log is append-only',
            ERRCODE = 'integrity_constraint_violation';
    END
    $guard$
    """,
    """
    CREATE TRIGGER site_grant_log_append_only BEFORE UPDATE OR DELETE ON site_grant_log
    FOR EACH ROW EXECUTE FUNCTION site_grant_log_append_only()
    """,
)


def upgrade() -> None:
    """Create utility_clients, utility_tokens, site_grants and site_grant_log."""
    op.create_table(
        "utility_clients",
        sa.Column("client_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "utility_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column(
            "client_id",
            sa.String(32),
            sa.ForeignKey("utility_clients.client_id"),
            nullable=False,
        ),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_utility_tokens_client_id", "utility_tokens", ["client_id"])
    op.create_table(
        "site_grants",
        sa.Column("site_id", sa.String(64), sa.ForeignKey("sites.site_id"), primary_key=True),
        sa.Column(
            "client_id",
            sa.String(32),
            sa.ForeignKey("utility_clients.client_id"),
            primary_key=True,
        ),
        sa.Column("granted_by", sa.String(64), nullable=False),
        sa.Column("granted_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_site_grants_client", "site_grants", ["client_id"])
    op.create_table(
        "site_grant_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("action IN ('granted', 'revoked')", name="ck_site_grant_log_action"),
    )
    op.create_index("ix_site_grant_log_site_id", "site_grant_log", ["site_id"])
    triggers = PG_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for sql in triggers:
        op.execute(sql)


def downgrade() -> None:
    """Drop the utility access tables (and the PostgreSQL trigger function)."""
    op.drop_table("site_grant_log")
    op.drop_table("site_grants")
    op.drop_table("utility_tokens")
    op.drop_table("utility_clients")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION site_grant_log_append_only()")
