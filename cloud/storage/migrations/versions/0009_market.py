"""The market's read models: orders (with the client's idempotency key), matched trades and their
settlement, and the ledger leaf of every order event (the truth stays in the ledger log); and
homeowners' automated trading policies.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "market_orders",
        sa.Column("order_id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("request_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("side", sa.Integer, nullable=False),
        sa.Column("interval_start", sa.BigInteger, nullable=False),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.Column("quantity_wh", sa.BigInteger, nullable=False),
        sa.Column("limit_price", sa.BigInteger, nullable=False),
        sa.Column("tif", sa.String(8), nullable=False),
        sa.Column("min_fill_wh", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("priority", sa.BigInteger, nullable=False),
        sa.Column("placed_seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("cancel_reason", sa.String(20), nullable=True),
        sa.Column("filled_wh", sa.BigInteger, nullable=False),
        sa.Column("remaining_wh", sa.BigInteger, nullable=False),
        sa.Column("filled_notional", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("account_id", "client_order_id", name="uq_market_orders_client_id"),
        sa.CheckConstraint(
            "quantity_wh > 0 AND filled_wh + remaining_wh = quantity_wh",
            name="ck_market_orders_quantity",
        ),
    )
    op.create_index("ix_market_orders_account_id", "market_orders", ["account_id"])
    op.create_index("ix_market_orders_interval_start", "market_orders", ["interval_start"])
    op.create_table(
        "market_trades",
        sa.Column("trade_id", sa.String(40), primary_key=True),
        sa.Column("entry_seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("interval_start", sa.BigInteger, nullable=False),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.Column("buy_order_id", sa.String(40), nullable=False),
        sa.Column("sell_order_id", sa.String(40), nullable=False),
        sa.Column("buyer_account_id", sa.String(32), nullable=False),
        sa.Column("buyer_site_id", sa.String(64), nullable=False),
        sa.Column("seller_account_id", sa.String(32), nullable=False),
        sa.Column("seller_site_id", sa.String(64), nullable=False),
        sa.Column("quantity_wh", sa.BigInteger, nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("taker_seq", sa.BigInteger, nullable=False),
        sa.Column("maker_seq", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("settled_wh", sa.BigInteger, nullable=True),
        sa.Column("settlement_seq", sa.BigInteger, nullable=True),
        sa.Column("shortfall_seq", sa.BigInteger, nullable=True),
        sa.Column("buyer_paid_minor", sa.BigInteger, nullable=True),
        sa.Column("seller_received_minor", sa.BigInteger, nullable=True),
        sa.Column("platform_fee_minor", sa.BigInteger, nullable=True),
        sa.Column("dso_fee_minor", sa.BigInteger, nullable=True),
        sa.Column("shortfall_cost_minor", sa.BigInteger, nullable=True),
        sa.Column("settled_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "status IN ('matched', 'settled', 'short')", name="ck_market_trades_status"
        ),
    )
    op.create_index("ix_market_trades_interval_start", "market_trades", ["interval_start"])
    op.create_index("ix_market_trades_buyer_account_id", "market_trades", ["buyer_account_id"])
    op.create_index("ix_market_trades_seller_account_id", "market_trades", ["seller_account_id"])
    op.create_table(
        "market_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("order_id", sa.String(40), nullable=True),
        sa.Column("interval_start", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
    )
    op.create_index("ix_market_events_order_id", "market_events", ["order_id"])
    op.create_table(
        "market_policies",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Integer, nullable=False),
        sa.Column("sell_min_price", sa.BigInteger, nullable=True),
        sa.Column("sell_max_wh", sa.BigInteger, nullable=False),
        sa.Column("battery_reserve_permille", sa.Integer, nullable=False),
        sa.Column("buy_max_price", sa.BigInteger, nullable=True),
        sa.Column("buy_max_wh", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_market_policies_account_id", "market_policies", ["account_id"])


def downgrade() -> None:
    op.drop_table("market_policies")
    op.drop_table("market_events")
    op.drop_table("market_trades")
    op.drop_table("market_orders")
