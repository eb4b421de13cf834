"""Energy attribute certificates: certificates (granular and 1 MWh RECs), the Wh slices of
generation tokens they cover, and the log of transfers. No Wh of a token is certified twice:
(token_id, start_wh) is the slices' primary key and a trigger refuses a slice that overlaps
another of the same token (on PostgreSQL under a per-token advisory lock, so concurrent
issuers cannot both pass the check). Slices are never updated.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER certificate_slices_no_overlap BEFORE INSERT ON certificate_slices
    WHEN EXISTS (
        SELECT 1 FROM certificate_slices s
        WHERE s.token_id = NEW.token_id AND s.start_wh < NEW.end_wh AND NEW.start_wh < s.end_wh
    )
    BEGIN
        SELECT RAISE(ABORT, 'certificate slice overlaps energy already certified');
    END
    """,
    """
    CREATE TRIGGER certificate_slices_append_only BEFORE UPDATE ON certificate_slices
    BEGIN
        SELECT RAISE(ABORT, 'certificate slices are never changed');
    END
    """,
)

PG_TRIGGERS = (
    """
    CREATE FUNCTION certificate_slices_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            RAISE EXCEPTION USING
                MESSAGE = 'certificate slices are never changed',
                ERRCODE = 'integrity_constraint_violation';
        END IF;
        PERFORM pg_advisory_xact_lock(hashtext('gridmint/cert/' || NEW.token_id));
        IF EXISTS (
            SELECT 1 FROM certificate_slices s
            WHERE s.token_id = NEW.token_id
              AND s.start_wh < NEW.end_wh AND NEW.start_wh < s.end_wh
        ) THEN
            RAISE EXCEPTION USING
                MESSAGE = 'certificate slice overlaps energy already certified (token '
                    || NEW.token_id || ')',
                ERRCODE = 'exclusion_violation';
        END IF;
        RETURN NEW;
    END
    $guard$
    """,
    """
    CREATE TRIGGER certificate_slices_no_overlap BEFORE INSERT OR UPDATE ON certificate_slices
    FOR EACH ROW EXECUTE FUNCTION certificate_slices_guard()
    """,
)


def upgrade() -> None:
    """Create certificates, certificate_slices (with the overlap trigger) and transfers."""
    op.create_table(
        "certificates",
        sa.Column("certificate_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner_site_id", sa.String(64), nullable=False),
        sa.Column("issued_site_id", sa.String(64), nullable=False),
        sa.Column("device_ids", sa.Text, nullable=False),
        sa.Column("technology", sa.String(64), nullable=False),
        sa.Column("market_zone", sa.String(64), nullable=False),
        sa.Column("production_start", sa.BigInteger, nullable=False),
        sa.Column("production_end", sa.BigInteger, nullable=False),
        sa.Column("energy_wh", sa.BigInteger, nullable=False),
        sa.Column("issued_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("retired_ms", sa.BigInteger, nullable=True),
        sa.Column("beneficiary", sa.String(200), nullable=False, server_default=""),
        sa.CheckConstraint("kind IN ('granular', 'rec')", name="ck_certificates_kind"),
        sa.CheckConstraint(
            "status IN ('active', 'retired', 'expired')", name="ck_certificates_status"
        ),
        sa.CheckConstraint("energy_wh > 0", name="ck_certificates_energy"),
    )
    op.create_index("ix_certificates_owner_site_id", "certificates", ["owner_site_id"])
    op.create_index("ix_certificates_issued_site_id", "certificates", ["issued_site_id"])
    op.create_table(
        "certificate_slices",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("start_wh", sa.BigInteger, primary_key=True),
        sa.Column("end_wh", sa.BigInteger, nullable=False),
        sa.Column(
            "certificate_id",
            sa.String(64),
            sa.ForeignKey("certificates.certificate_id"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "start_wh >= 0 AND end_wh > start_wh", name="ck_certificate_slices_range"
        ),
    )
    op.create_index(
        "ix_certificate_slices_certificate_id", "certificate_slices", ["certificate_id"]
    )
    op.create_table(
        "certificate_transfers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "certificate_id",
            sa.String(64),
            sa.ForeignKey("certificates.certificate_id"),
            nullable=False,
        ),
        sa.Column("from_site_id", sa.String(64), nullable=False),
        sa.Column("to_site_id", sa.String(64), nullable=False),
        sa.Column("by_account", sa.String(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_certificate_transfers_certificate_id", "certificate_transfers", ["certificate_id"]
    )
    triggers = PG_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for sql in triggers:
        op.execute(sql)


def downgrade() -> None:
    """Drop the certificate tables (and the PostgreSQL trigger function)."""
    op.drop_table("certificate_transfers")
    op.drop_table("certificate_slices")
    op.drop_table("certificates")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION certificate_slices_guard()")
