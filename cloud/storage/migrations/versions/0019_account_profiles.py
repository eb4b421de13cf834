"""Account profiles for self-registration: individual or business (with the business's name and
company/VAT number), the affiliation (`none`: a plain buyer; `provider`: an offset project
provider), when the email address was verified; and `server_secrets`, the deployment's own
secrets (the key that signs email verification links).

Existing accounts count as verified (email_verified_ms = created_ms): they were made by an
operator or reviewed by an approver, and nothing that worked before may stop working.

The columns are added with ADD COLUMN (nullable or with a default, CHECKs inline), so SQLite
does not rebuild `accounts` (0018's `_roles` says what a rebuild would need).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the profile columns, backfill verification and affiliation, add server_secrets."""
    op.add_column(
        "accounts",
        sa.Column(
            "account_type",
            sa.String(16),
            sa.CheckConstraint(
                "account_type IN ('individual', 'business')", name="ck_accounts_account_type"
            ),
            nullable=False,
            server_default="individual",
        ),
    )
    op.add_column(
        "accounts", sa.Column("business_name", sa.String(200), nullable=False, server_default="")
    )
    op.add_column(
        "accounts", sa.Column("business_id", sa.String(64), nullable=False, server_default="")
    )
    op.add_column(
        "accounts",
        sa.Column(
            "affiliation",
            sa.String(16),
            sa.CheckConstraint(
                "affiliation IN ('none', 'provider')", name="ck_accounts_affiliation"
            ),
            nullable=False,
            server_default="none",
        ),
    )
    op.add_column("accounts", sa.Column("email_verified_ms", sa.BigInteger, nullable=True))
    op.execute("UPDATE accounts SET email_verified_ms = created_ms")
    op.execute("UPDATE accounts SET affiliation = 'provider' WHERE role = 'provider'")
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop server_secrets and the profile columns."""
    op.drop_table("server_secrets")
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:  # dropping columns rebuilds accounts: see 0018's _roles
        op.execute("PRAGMA foreign_keys = OFF")
        op.execute("PRAGMA defer_foreign_keys = ON")
    with op.batch_alter_table("accounts") as batch:
        # SQLite's rebuild copies the CHECKs too: drop those that name the columns first.
        batch.drop_constraint("ck_accounts_affiliation", type_="check")
        batch.drop_constraint("ck_accounts_account_type", type_="check")
        for column in (
            "email_verified_ms",
            "affiliation",
            "business_id",
            "business_name",
            "account_type",
        ):
            batch.drop_column(column)
    if sqlite:
        bad = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        op.execute("PRAGMA foreign_keys = ON")
        if bad:
            raise RuntimeError(f"foreign keys broken by rebuilding accounts: {bad}")
