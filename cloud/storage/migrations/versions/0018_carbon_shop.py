"""The retail carbon shop: projects, lots, orders and their lines, retirements (never two of
one serial: a unique (lot, first serial) and a trigger against overlapping ranges; retirements
are never changed), the append-only shop event log; and the `provider` and `buyer` roles.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_ROLES = "role IN ('homeowner', 'installer', 'approver', 'grid_operator', 'admin')"
NEW_ROLES = (
    "role IN ('homeowner', 'installer', 'approver', 'grid_operator', 'admin', 'provider', 'buyer')"
)

SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER carbon_retirements_no_overlap BEFORE INSERT ON carbon_retirements
    WHEN EXISTS (
        SELECT 1 FROM carbon_retirements r
        WHERE r.lot_id = NEW.lot_id
          AND r.serial_start <= NEW.serial_end AND NEW.serial_start <= r.serial_end
    )
    BEGIN
        SELECT RAISE(ABORT, 'retirement overlaps serials already retired');
    END
    """,
    """
    CREATE TRIGGER carbon_retirements_no_update BEFORE UPDATE ON carbon_retirements
    BEGIN
        SELECT RAISE(ABORT, 'retirements are final');
    END
    """,
    """
    CREATE TRIGGER carbon_retirements_no_delete BEFORE DELETE ON carbon_retirements
    BEGIN
        SELECT RAISE(ABORT, 'retirements are final');
    END
    """,
    """
    CREATE TRIGGER carbon_events_no_update BEFORE UPDATE ON carbon_events
    BEGIN
        SELECT RAISE(ABORT, 'the carbon shop event log is append-only');
    END
    """,
    """
    CREATE TRIGGER carbon_events_no_delete BEFORE DELETE ON carbon_events
    BEGIN
        SELECT RAISE(ABORT, 'the carbon shop event log is append-only');
    END
    """,
)

PG_TRIGGERS = (
    """
    CREATE FUNCTION carbon_retirements_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            RAISE EXCEPTION USING
                MESSAGE = 'retirements are final',
                ERRCODE = 'integrity_constraint_violation';
        END IF;
        -- one retirement of a lot at a time: the check below then sees every earlier one
        PERFORM 1 FROM carbon_lots WHERE lot_id = NEW.lot_id FOR UPDATE;
        IF EXISTS (
            SELECT 1 FROM carbon_retirements r
            WHERE r.lot_id = NEW.lot_id
              AND r.serial_start <= NEW.serial_end AND NEW.serial_start <= r.serial_end
        ) THEN
            RAISE EXCEPTION USING
                MESSAGE = 'retirement overlaps serials already retired (lot '
                    || NEW.lot_id || ')',
                ERRCODE = 'exclusion_violation';
        END IF;
        RETURN NEW;
    END
    $guard$
    """,
    """
    CREATE TRIGGER carbon_retirements_guard BEFORE INSERT OR UPDATE OR DELETE
    ON carbon_retirements FOR EACH ROW EXECUTE FUNCTION carbon_retirements_guard()
    """,
    """
    CREATE FUNCTION carbon_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $guard$
    BEGIN
        RAISE EXCEPTION USING
            MESSAGE = 'the carbon shop event log is append-only',
            ERRCODE = 'integrity_constraint_violation';
    END
    $guard$
    """,
    """
    CREATE TRIGGER carbon_events_append_only BEFORE UPDATE OR DELETE ON carbon_events
    FOR EACH ROW EXECUTE FUNCTION carbon_events_append_only()
    """,
)


def _roles(check: str) -> None:
    """Replace the accounts' role CHECK.

    SQLite rebuilds the table (batch mode): its rows are copied and the old table dropped,
    which sites and tokens still reference, so the drop must not check foreign keys. Python's
    sqlite3 runs DDL outside a transaction unless DML already opened one (alembic_version's
    update after an earlier migration of the same run): outside one, `foreign_keys = OFF`
    applies; inside one it is ignored and `defer_foreign_keys` moves the check to the commit,
    when the rebuilt table is back. Either way nothing is left unchecked: the rebuilt table
    holds the same keys, and `foreign_key_check` must find nothing.
    """
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys = OFF")
        op.execute("PRAGMA defer_foreign_keys = ON")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("ck_accounts_role", type_="check")
        batch.create_check_constraint("ck_accounts_role", check)
    if sqlite:
        bad = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        op.execute("PRAGMA foreign_keys = ON")
        if bad:
            raise RuntimeError(f"foreign keys broken by rebuilding accounts: {bad}")


def upgrade() -> None:
    """Add the provider and buyer roles and the carbon shop's tables."""
    _roles(NEW_ROLES)
    op.create_table(
        "carbon_projects",
        sa.Column("project_id", sa.String(32), primary_key=True),
        sa.Column("provider_account_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("standard", sa.String(100), nullable=False),
        sa.Column("verifier", sa.String(200), nullable=False),
        sa.Column("serial_prefix", sa.String(40), nullable=False),
        sa.Column("start_date", sa.String(10), nullable=True),
        sa.Column("end_date", sa.String(10), nullable=True),
        sa.Column("vintage", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'retired', 'withdrawn')", name="ck_carbon_projects_status"
        ),
    )
    op.create_index(
        "ix_carbon_projects_provider_account_id", "carbon_projects", ["provider_account_id"]
    )
    op.create_table(
        "carbon_lots",
        sa.Column("lot_id", sa.String(32), primary_key=True),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("carbon_projects.project_id"),
            nullable=False,
        ),
        sa.Column("serial_start", sa.BigInteger, nullable=False),
        sa.Column("serial_end", sa.BigInteger, nullable=False),
        sa.Column("price_minor_per_t", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("available_kg", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("certificate_id", sa.String(64), nullable=True, unique=True),
        sa.CheckConstraint("available_kg >= 0", name="ck_carbon_lots_available"),
        sa.CheckConstraint(
            "serial_start >= 0 AND serial_end >= serial_start "
            "AND available_kg <= serial_end - serial_start + 1",
            name="ck_carbon_lots_serials",
        ),
    )
    op.create_index("ix_carbon_lots_project_id", "carbon_lots", ["project_id"])
    op.create_table(
        "carbon_orders",
        sa.Column("order_id", sa.String(32), primary_key=True),
        sa.Column("buyer_account_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_minor", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("payment_id", sa.String(200), nullable=True),
        sa.Column("beneficiary", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "state IN ('reserved', 'placed', 'complete', 'cancelled', 'expired')",
            name="ck_carbon_orders_state",
        ),
    )
    op.create_index("ix_carbon_orders_buyer_account_id", "carbon_orders", ["buyer_account_id"])
    op.create_index("ix_carbon_orders_state_expires", "carbon_orders", ["state", "expires_ms"])
    op.create_table(
        "carbon_order_lines",
        sa.Column(
            "order_id", sa.String(32), sa.ForeignKey("carbon_orders.order_id"), primary_key=True
        ),
        sa.Column("lot_id", sa.String(32), sa.ForeignKey("carbon_lots.lot_id"), primary_key=True),
        sa.Column("serial_start", sa.BigInteger, primary_key=True),
        sa.Column("serial_end", sa.BigInteger, nullable=False),
        sa.Column("kg", sa.BigInteger, nullable=False),
        sa.Column("price_minor", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "kg > 0 AND serial_end - serial_start + 1 = kg", name="ck_carbon_order_lines_kg"
        ),
    )
    op.create_index("ix_carbon_order_lines_lot", "carbon_order_lines", ["lot_id"])
    op.create_table(
        "carbon_retirements",
        sa.Column("retirement_id", sa.String(32), primary_key=True),
        sa.Column(
            "order_id", sa.String(32), sa.ForeignKey("carbon_orders.order_id"), nullable=False
        ),
        sa.Column("lot_id", sa.String(32), sa.ForeignKey("carbon_lots.lot_id"), nullable=False),
        sa.Column("serial_start", sa.BigInteger, nullable=False),
        sa.Column("serial_end", sa.BigInteger, nullable=False),
        sa.Column("beneficiary", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("retired_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("lot_id", "serial_start", name="uq_carbon_retirements_lot_serial"),
        sa.CheckConstraint("serial_end >= serial_start", name="ck_carbon_retirements_range"),
    )
    op.create_index("ix_carbon_retirements_order", "carbon_retirements", ["order_id"])
    op.create_table(
        "carbon_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("order_id", sa.String(32), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False, server_default=""),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_carbon_events_project_id", "carbon_events", ["project_id"])
    op.create_index("ix_carbon_events_order_id", "carbon_events", ["order_id"])
    triggers = PG_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for sql in triggers:
        op.execute(sql)


def downgrade() -> None:
    """Drop the shop's tables (and PostgreSQL trigger functions); the two roles go, so no
    account may hold them any more."""
    for t in (
        "carbon_events",
        "carbon_retirements",
        "carbon_order_lines",
        "carbon_orders",
        "carbon_lots",
        "carbon_projects",
    ):
        op.drop_table(t)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION carbon_retirements_guard()")
        op.execute("DROP FUNCTION carbon_events_append_only()")
    _roles(OLD_ROLES)
