"""The market's read models: orders, matched trades and their settlement, order-event leaves.

Owns: every query on market_orders, market_trades and market_events. Writes take the caller's
unit of work (cloud.storage.unit_of_work), because an order's rows are only ever written together
with the ledger leaves that make them true. Plain dataclasses in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.domain.devices import DeviceStatus
from cloud.domain.policies import TradingPolicy
from cloud.storage.bulk import insert_rows, update_rows
from cloud.storage.tables import (
    devices,
    market_events,
    market_orders,
    market_policies,
    market_trades,
    sites,
)


@dataclass(slots=True)  # not frozen: built per order, and a frozen init costs 8x
class OrderRow:
    """One order as the API shows it (side 0 = buy, 1 = sell; prices minor units per kWh)."""

    order_id: str
    account_id: str
    client_order_id: str
    request_sha256: bytes
    site_id: str
    side: int
    interval_start: int
    interval_s: int
    quantity_wh: int
    limit_price: int
    tif: str
    min_fill_wh: int
    source: str
    priority: int
    placed_seq: int
    status: str
    cancel_reason: str | None
    filled_wh: int
    remaining_wh: int
    filled_notional: int
    created_ms: int
    updated_ms: int


@dataclass(slots=True)  # not frozen: built per order, and a frozen init costs 8x
class OrderState:
    """What matching changes of an order after it was placed."""

    order_id: str
    limit_price: int
    quantity_wh: int
    priority: int
    status: str
    cancel_reason: str | None
    filled_wh: int
    remaining_wh: int
    filled_notional: int
    updated_ms: int


@dataclass(slots=True)  # not frozen: built per order, and a frozen init costs 8x
class TradeRow:
    """One matched trade and, once settled, what was delivered and paid."""

    trade_id: str
    entry_seq: int
    interval_start: int
    interval_s: int
    buy_order_id: str
    sell_order_id: str
    buyer_account_id: str
    buyer_site_id: str
    seller_account_id: str
    seller_site_id: str
    quantity_wh: int
    price: int
    taker_seq: int
    maker_seq: int
    created_ms: int
    status: str = "matched"  # matched | settled | short
    settled_wh: int | None = None
    settlement_seq: int | None = None
    shortfall_seq: int | None = None
    buyer_paid_minor: int | None = None
    seller_received_minor: int | None = None
    platform_fee_minor: int | None = None
    dso_fee_minor: int | None = None
    shortfall_cost_minor: int | None = None
    settled_ms: int | None = None


@dataclass(slots=True)  # not frozen: built per order, and a frozen init costs 8x
class EventRow:
    """Which ledger leaf holds an order event."""

    seq: int
    order_id: str | None
    interval_start: int
    kind: str  # place | amend | cancel | close


@dataclass(frozen=True, slots=True)
class Settlement:
    """A trade's settlement, written with its ledger entries."""

    trade_id: str
    status: str
    settled_wh: int
    settlement_seq: int | None
    shortfall_seq: int | None
    buyer_paid_minor: int
    seller_received_minor: int
    platform_fee_minor: int
    dso_fee_minor: int
    shortfall_cost_minor: int
    settled_ms: int


@dataclass(frozen=True, slots=True)
class IntervalSummary:
    """Matched volume and prices of one delivery interval (for the clearing-price history)."""

    interval_start: int
    trades: int
    volume_wh: int
    notional: int  # sum of wh x price
    last_price: int
    low_price: int
    high_price: int


# A row dataclass's values in field order, per row class (dataclasses.astuple would deep-copy
# every value, which was a tenth of a durable order's cost). OrderState and Settlement start
# with their key, as update_rows takes them.
_GETTERS: dict[type, attrgetter[tuple[object, ...]]] = {
    cls: attrgetter(*cls.__slots__)
    for cls in (OrderRow, OrderState, TradeRow, EventRow, Settlement)
}


def _values(row: object) -> tuple[object, ...]:
    """A row's values in its columns' order."""
    values: tuple[object, ...] = _GETTERS[type(row)](row)
    return values


class MarketStore:
    """Market rows over the aggregator's engine: `MarketStore(store.engine)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # writes (in the caller's unit of work) -------------------------------------------------

    async def write(
        self,
        conn: AsyncConnection,
        *,
        new_orders: Sequence[OrderRow] = (),
        changed_orders: Sequence[OrderState] = (),
        trades: Sequence[TradeRow] = (),
        events: Sequence[EventRow] = (),
    ) -> None:
        """Insert new orders, trades and event rows; update the state of changed orders."""
        if new_orders:
            await insert_rows(
                conn, market_orders, OrderRow.__slots__, [_values(o) for o in new_orders]
            )
        if changed_orders:
            await update_rows(
                conn,
                market_orders,
                "order_id",
                OrderState.__slots__[1:],
                [_values(o) for o in changed_orders],
            )
        if trades:
            await insert_rows(conn, market_trades, TradeRow.__slots__, [_values(t) for t in trades])
        if events:
            await insert_rows(conn, market_events, EventRow.__slots__, [_values(e) for e in events])

    async def write_settlements(
        self, conn: AsyncConnection, settlements: Sequence[Settlement]
    ) -> None:
        """Record trades' settlements."""
        if not settlements:
            return
        await update_rows(
            conn,
            market_trades,
            "trade_id",
            Settlement.__slots__[1:],
            [_values(x) for x in settlements],
        )

    # reads ---------------------------------------------------------------------------------

    async def client_keys(self) -> dict[tuple[str, str], tuple[str, bytes]]:
        """(account, client order id) -> (order id, request hash), for idempotency."""
        q = select(
            market_orders.c.account_id,
            market_orders.c.client_order_id,
            market_orders.c.order_id,
            market_orders.c.request_sha256,
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {
            (r.account_id, r.client_order_id): (r.order_id, bytes(r.request_sha256)) for r in rows
        }

    async def order_meta(self) -> dict[str, tuple[str, int]]:
        """order id -> (account id, interval length) for every order (the log leaves them out)."""
        q = select(market_orders.c.order_id, market_orders.c.account_id, market_orders.c.interval_s)
        async with self.engine.connect() as conn:
            return {r.order_id: (r.account_id, r.interval_s) for r in (await conn.execute(q)).all()}

    async def order(self, order_id: str) -> OrderRow | None:
        """One order."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(market_orders).where(market_orders.c.order_id == order_id)
                )
            ).first()
        return None if r is None else OrderRow(**r._mapping)

    async def orders(
        self,
        *,
        account_id: str | None = None,
        interval_start: int | None = None,
        active_only: bool = False,
        limit: int = 200,
    ) -> list[OrderRow]:
        """Orders, newest first, filtered by account, interval and activity."""
        q = select(market_orders)
        if account_id is not None:
            q = q.where(market_orders.c.account_id == account_id)
        if interval_start is not None:
            q = q.where(market_orders.c.interval_start == interval_start)
        if active_only:
            q = q.where(market_orders.c.status.in_(("open", "partially_filled")))
        q = q.order_by(market_orders.c.placed_seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [OrderRow(**r._mapping) for r in (await conn.execute(q)).all()]

    async def trades(
        self,
        *,
        account_id: str | None = None,
        interval_start: int | None = None,
        limit: int = 200,
    ) -> list[TradeRow]:
        """Trades, newest first; of one account (as buyer or seller) and/or one interval."""
        q = select(market_trades)
        if account_id is not None:
            q = q.where(
                or_(
                    market_trades.c.buyer_account_id == account_id,
                    market_trades.c.seller_account_id == account_id,
                )
            )
        if interval_start is not None:
            q = q.where(market_trades.c.interval_start == interval_start)
        q = q.order_by(market_trades.c.entry_seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [TradeRow(**r._mapping) for r in (await conn.execute(q)).all()]

    async def trade(self, trade_id: str) -> TradeRow | None:
        """One trade."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(market_trades).where(market_trades.c.trade_id == trade_id)
                )
            ).first()
        return None if r is None else TradeRow(**r._mapping)

    async def unsettled_trades(self) -> list[TradeRow]:
        """Matched trades not settled yet, oldest first."""
        q = (
            select(market_trades)
            .where(market_trades.c.status == "matched")
            .order_by(market_trades.c.entry_seq)
        )
        async with self.engine.connect() as conn:
            return [TradeRow(**r._mapping) for r in (await conn.execute(q)).all()]

    async def interval_summaries(self, limit: int = 96) -> list[IntervalSummary]:
        """Per delivery interval: trades, volume, notional, last/low/high price; newest first."""
        t = market_trades.c
        q = (
            select(
                t.interval_start,
                func.count().label("n"),
                func.sum(t.quantity_wh).label("vol"),
                func.sum(t.quantity_wh * t.price).label("notional"),
                func.min(t.price).label("low"),
                func.max(t.price).label("high"),
                func.max(t.entry_seq).label("last_seq"),
            )
            .group_by(t.interval_start)
            .order_by(t.interval_start.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
            last: dict[int, int] = {}
            if rows:
                seqs = [r.last_seq for r in rows]
                for r in (
                    await conn.execute(select(t.entry_seq, t.price).where(t.entry_seq.in_(seqs)))
                ).all():
                    last[r.entry_seq] = r.price
        return [
            IntervalSummary(
                r.interval_start,
                int(r.n),
                int(r.vol),
                int(r.notional),
                last[r.last_seq],
                int(r.low),
                int(r.high),
            )
            for r in rows
        ]

    async def event_seqs(self, order_ids: Sequence[str]) -> dict[str, list[int]]:
        """The ledger seqs of each order's events (place, amends, cancel), in order."""
        if not order_ids:
            return {}
        q = (
            select(market_events.c.order_id, market_events.c.seq)
            .where(market_events.c.order_id.in_(list(order_ids)))
            .order_by(market_events.c.seq)
        )
        out: dict[str, list[int]] = {}
        async with self.engine.connect() as conn:
            for r in (await conn.execute(q)).all():
                out.setdefault(r.order_id, []).append(r.seq)
        return out

    async def totals(self) -> dict[str, int]:
        """Counts and sums over every order and trade (for the demo's summary and metrics)."""
        t = market_trades.c
        async with self.engine.connect() as conn:
            orders = (await conn.execute(select(func.count()).select_from(market_orders))).scalar()
            row = (
                await conn.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(t.quantity_wh), 0),
                        func.coalesce(func.sum(t.settled_wh), 0),
                        func.count(t.settled_ms),
                        func.coalesce(func.sum(t.platform_fee_minor), 0),
                        func.coalesce(func.sum(t.dso_fee_minor), 0),
                        func.coalesce(func.sum(t.seller_received_minor), 0),
                        func.count().filter(t.status == "short"),
                    )
                )
            ).one()
        return {
            "orders": int(orders or 0),
            "trades": int(row[0]),
            "traded_wh": int(row[1]),
            "settled_wh": int(row[2]),
            "settled_trades": int(row[3]),
            "platform_fees_minor": int(row[4]),
            "dso_fees_minor": int(row[5]),
            "paid_to_sellers_minor": int(row[6]),
            "short_trades": int(row[7]),
        }

    # policies ----------------------------------------------------------------------------

    async def set_policy(self, p: TradingPolicy, now_ms: int) -> None:
        """Create or replace a site's policy."""
        values = {
            "account_id": p.account_id,
            "enabled": int(p.enabled),
            "sell_min_price": p.sell_min_price,
            "sell_max_wh": p.sell_max_wh,
            "battery_reserve_permille": p.battery_reserve_permille,
            "buy_max_price": p.buy_max_price,
            "buy_max_wh": p.buy_max_wh,
            "min_soc_permille": p.min_soc_permille,
            "updated_ms": now_ms,
        }
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(market_policies)
                .where(market_policies.c.site_id == p.site_id)
                .values(**values)
            )
            if done.rowcount == 0:
                await conn.execute(insert(market_policies).values(site_id=p.site_id, **values))

    async def policies(self, site_id: str | None = None) -> list[TradingPolicy]:
        """Every policy, or one site's."""
        q = select(market_policies).order_by(market_policies.c.site_id)
        if site_id is not None:
            q = q.where(market_policies.c.site_id == site_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            TradingPolicy(
                site_id=r.site_id,
                account_id=r.account_id,
                enabled=bool(r.enabled),
                sell_min_price=r.sell_min_price,
                sell_max_wh=r.sell_max_wh,
                battery_reserve_permille=r.battery_reserve_permille,
                buy_max_price=r.buy_max_price,
                buy_max_wh=r.buy_max_wh,
                min_soc_permille=r.min_soc_permille,
            )
            for r in rows
        ]

    async def site_standing(self, site_id: str) -> tuple[str | None, bool]:
        """The site's owner account (None: no such site) and whether it has an approved device
        (only such sites trade: their delivery is measured by signed records)."""
        async with self.engine.connect() as conn:
            owner = (
                await conn.execute(
                    select(sites.c.owner_account_id).where(sites.c.site_id == site_id)
                )
            ).scalar()
            approved = (
                await conn.execute(
                    select(devices.c.device_id)
                    .where(devices.c.site_id == site_id, devices.c.status == DeviceStatus.APPROVED)
                    .limit(1)
                )
            ).first()
        return owner, approved is not None
