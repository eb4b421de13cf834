"""The market's HTTP face: the anonymous order book, orders (place, amend, cancel), trades with
their settlement, the clearing-price history, inclusion proofs of one's own orders and trades,
and a live stream of changes (server-sent events).

Owns: those routes and their wire shapes. Prices are whole minor currency units per kWh and
energy whole Wh: strict integers, a float is a 422. Homeowners place orders for their own sites
and see only their own orders and trades; everyone signed in sees the anonymous book (price
levels, no accounts) and the history. The grid operator sees every order and trade.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictInt

from cloud.api.deps import ANYONE, AccountsDep, CtxDep, MarketDep, require
from cloud.auth import Principal, Role, can_see_site
from cloud.domain.policies import TradingPolicy
from cloud.services.ledger import LeafProof
from cloud.services.market import MarketError, MarketService, OrderRequest
from cloud.storage.market_store import OrderRow, TradeRow
from rules.market import Order, Side, TimeInForce

router = APIRouter()

SideName = Literal["buy", "sell"]
TifName = Literal["gtc", "ioc", "fok"]
WhInt = Annotated[StrictInt, Field(gt=0, le=1_000_000_000)]
PriceInt = Annotated[StrictInt, Field(ge=0, le=1_000_000)]
# Unix seconds that fit the database's 64-bit integers (a larger one is a 422, not a 500).
UnixSeconds = Annotated[StrictInt, Field(ge=0, le=2**62)]

TRADERS = (Role.HOMEOWNER,)
WATCHERS = (Role.HOMEOWNER, Role.GRID_OPERATOR)
Trader = Annotated[Principal, Depends(require(*TRADERS, action="trade"))]
Watcher = Annotated[Principal, Depends(require(*WATCHERS, action="see market orders"))]
Anyone = Annotated[Principal, Depends(require(*ANYONE, action="see the market"))]


class MarketInfo(BaseModel):
    """The market's rules and the intervals open for orders."""

    interval_s: int
    mode: str
    tick: int
    feed_in_price: int = Field(description="the price band's floor, minor units per kWh")
    retail_price: int = Field(description="the price band's ceiling, minor units per kWh")
    platform_fee: int
    dso_fee: int
    gate_closure_s: int
    horizon_s: int
    forecast_share_permille: int
    next_interval: int = Field(description="the first delivery interval still open for orders")
    open_intervals: list[int]


class OrderCreate(BaseModel):
    """A new order. `client_order_id` is an idempotency key: a retried request never places a
    second order, and the same key with other terms is a 409."""

    client_order_id: str = Field(min_length=1, max_length=64)
    site_id: str = Field(min_length=1, max_length=64)
    side: SideName
    interval_start: UnixSeconds
    quantity_wh: WhInt
    limit_price: PriceInt
    time_in_force: TifName = "gtc"
    min_fill_wh: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] = 0
    source: str = Field("manual", min_length=1, max_length=64)


class OrderAmend(BaseModel):
    """A new limit price and/or total quantity (a price change or an increase loses time
    priority; a decrease keeps it)."""

    limit_price: PriceInt | None = None
    quantity_wh: WhInt | None = None


class OrderPublic(BaseModel):
    """An order and its server state."""

    order_id: str
    client_order_id: str | None
    site_id: str
    side: SideName
    interval_start: int
    quantity_wh: int
    limit_price: int
    time_in_force: TifName
    min_fill_wh: int
    source: str
    status: str
    cancel_reason: str | None
    filled_wh: int
    remaining_wh: int
    average_price: int | None = Field(description="rounded down; exact = notional / filled")
    filled_notional: int = Field(description="sum of Wh x price over the fills")
    priority: int = Field(description="ledger seq that gave the order its time priority")


class TradePublic(BaseModel):
    """A matched trade; `side` and `site_id` are the viewer's own (null for an operator, who
    sees both sites)."""

    trade_id: str
    interval_start: int
    side: SideName | None
    site_id: str | None
    buyer_site_id: str | None
    seller_site_id: str | None
    quantity_wh: int
    price: int
    status: str = Field(description="matched, settled, or short (the seller under-delivered)")
    settled_wh: int | None
    shortfall_wh: int | None
    buyer_paid_minor: int | None
    seller_received_minor: int | None
    platform_fee_minor: int | None
    dso_fee_minor: int | None
    shortfall_cost_minor: int | None
    entry_seq: int = Field(description="its TRADE_MATCH leaf in the ledger")
    settlement_seq: int | None


class OrderResult(BaseModel):
    """The order after the request and the trades the request caused."""

    order: OrderPublic
    trades: list[TradePublic]
    created: bool


class Level(BaseModel):
    """One price level of the anonymous book."""

    price: int
    quantity_wh: int
    orders: int


class BookPublic(BaseModel):
    """The anonymous order book of one delivery interval: offers and bids by price level."""

    interval_start: int
    open: bool
    best_bid: int | None
    best_ask: int | None
    bids: list[Level]
    offers: list[Level]


class IntervalHistory(BaseModel):
    """Matched volume and prices of one delivery interval."""

    interval_start: int
    trades: int
    volume_wh: int
    last_price: int
    low_price: int
    high_price: int
    average_price: int = Field(description="volume-weighted, rounded down")


class LeafProofPublic(BaseModel):
    """A ledger leaf (an order event or a trade), its index and the path to a checkpoint."""

    leaf_index: int
    leaf: str
    tree_size: int
    path: list[str]
    checkpoint: str


def _market(market: MarketService | None) -> MarketService:
    if market is None:
        raise HTTPException(503, "the market is not running in this process")
    return market


def _refused(exc: MarketError) -> HTTPException:
    return HTTPException(exc.refusal.status, f"{exc.refusal.reason}: {exc.refusal.detail}")


def _side(side: int) -> SideName:
    return "buy" if side == int(Side.BUY) else "sell"


def order_public(o: Order, client_order_id: str | None = None) -> OrderPublic:
    """The wire form of an in-memory order."""
    return OrderPublic(
        order_id=o.order_id,
        client_order_id=client_order_id,
        site_id=o.site_id,
        side=_side(o.side),
        interval_start=o.interval_start,
        quantity_wh=o.quantity_wh,
        limit_price=o.limit_price,
        time_in_force=o.tif.value,
        min_fill_wh=o.min_fill_wh,
        source=o.source,
        status=o.status.value,
        cancel_reason=None if o.cancel_reason is None else o.cancel_reason.value,
        filled_wh=o.filled_wh,
        remaining_wh=o.remaining_wh,
        average_price=o.average_price_floor(),
        filled_notional=o.filled_notional,
        priority=o.priority,
    )


def row_public(r: OrderRow) -> OrderPublic:
    """The wire form of a stored order."""
    return OrderPublic(
        order_id=r.order_id,
        client_order_id=r.client_order_id,
        site_id=r.site_id,
        side=_side(r.side),
        interval_start=r.interval_start,
        quantity_wh=r.quantity_wh,
        limit_price=r.limit_price,
        time_in_force=r.tif,
        min_fill_wh=r.min_fill_wh,
        source=r.source,
        status=r.status,
        cancel_reason=r.cancel_reason,
        filled_wh=r.filled_wh,
        remaining_wh=r.remaining_wh,
        average_price=None if r.filled_wh == 0 else r.filled_notional // r.filled_wh,
        filled_notional=r.filled_notional,
        priority=r.priority,
    )


def trade_public(t: TradeRow, viewer: Principal) -> TradePublic:
    """A trade as `viewer` may see it: a homeowner sees their side only."""
    side: SideName | None = None
    site: str | None = None
    buyer_site: str | None = t.buyer_site_id
    seller_site: str | None = t.seller_site_id
    if viewer.role is Role.HOMEOWNER:
        if t.buyer_account_id == viewer.account_id:
            side, site, seller_site = "buy", t.buyer_site_id, None
        else:
            side, site, buyer_site = "sell", t.seller_site_id, None
    return TradePublic(
        trade_id=t.trade_id,
        interval_start=t.interval_start,
        side=side,
        site_id=site,
        buyer_site_id=buyer_site,
        seller_site_id=seller_site,
        quantity_wh=t.quantity_wh,
        price=t.price,
        status=t.status,
        settled_wh=t.settled_wh,
        shortfall_wh=None if t.settled_wh is None else t.quantity_wh - t.settled_wh,
        buyer_paid_minor=t.buyer_paid_minor if side != "sell" else None,
        seller_received_minor=t.seller_received_minor if side != "buy" else None,
        platform_fee_minor=t.platform_fee_minor,
        dso_fee_minor=t.dso_fee_minor,
        shortfall_cost_minor=t.shortfall_cost_minor if side != "sell" else None,
        entry_seq=t.entry_seq,
        settlement_seq=t.settlement_seq,
    )


def _proof_public(p: LeafProof) -> LeafProofPublic:
    return LeafProofPublic(
        leaf_index=p.leaf_index,
        leaf=p.leaf.hex(),
        tree_size=p.tree_size,
        path=[h.hex() for h in p.path],
        checkpoint=p.checkpoint,
    )


def _own(p: Principal, account_id: str) -> bool:
    return p.role is not Role.HOMEOWNER or account_id == p.account_id


@router.get("/api/v1/market", response_model=MarketInfo, tags=["market"])
async def market_info(market: MarketDep, ctx: CtxDep, _p: Anyone) -> MarketInfo:
    """The market's rules (interval, matching mode, tick, price band, fees, gate) and the
    delivery intervals open for orders."""
    m = _market(market)
    c = m.config
    return MarketInfo(
        interval_s=c.interval_s,
        mode=c.mode.value,
        tick=c.tick,
        feed_in_price=c.feed_in_price,
        retail_price=c.retail_price,
        platform_fee=c.platform_fee,
        dso_fee=c.dso_fee,
        gate_closure_s=c.gate_closure_s,
        horizon_s=c.horizon_s,
        forecast_share_permille=c.forecast_share_permille,
        next_interval=m.next_interval(),
        open_intervals=m.open_intervals(),
    )


@router.get("/api/v1/market/book", response_model=BookPublic, tags=["market"])
async def book(
    market: MarketDep,
    _p: Anyone,
    interval_start: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> BookPublic:
    """The anonymous book of a delivery interval (default: the next one open for orders):
    price levels with their total quantity and number of orders, no accounts."""
    m = _market(market)
    t = m.next_interval() if interval_start is None else interval_start
    b = m.book(t)
    if b is None:
        return BookPublic(
            interval_start=t,
            open=not m.is_closed(t),
            best_bid=None,
            best_ask=None,
            bids=[],
            offers=[],
        )
    return BookPublic(
        interval_start=t,
        open=not m.is_closed(t),
        best_bid=b.best_bid(),
        best_ask=b.best_ask(),
        bids=[Level(price=p, quantity_wh=q, orders=n) for p, q, n in b.depth(Side.BUY)],
        offers=[Level(price=p, quantity_wh=q, orders=n) for p, q, n in b.depth(Side.SELL)],
    )


@router.post(
    "/api/v1/market/orders",
    response_model=OrderResult,
    status_code=201,
    tags=["market"],
    responses={200: {"description": "a retried request: the order placed the first time"}},
)
async def place_order(
    body: OrderCreate, market: MarketDep, p: Trader, response: Response
) -> OrderResult:
    """Place an order for one of your sites. Pre-trade checks answer with their own reason:
    price band and tick, interval alignment, gate closure, your site with an approved device,
    no self-trade, offers within tradable Tgen plus a share of the forecast, bids within your
    payment credits. The answer carries the trades the order made at once."""
    m = _market(market)
    req = OrderRequest(
        client_order_id=body.client_order_id,
        site_id=body.site_id,
        side=Side.BUY if body.side == "buy" else Side.SELL,
        interval_start=body.interval_start,
        quantity_wh=body.quantity_wh,
        limit_price=body.limit_price,
        tif=TimeInForce(body.time_in_force),
        min_fill_wh=body.min_fill_wh,
        source=body.source,
    )
    try:
        out = await m.place(p.account_id, req)
    except MarketError as exc:
        raise _refused(exc) from None
    assert out.order is not None
    if not out.created:
        response.status_code = 200
    # The new trades as stored with the order (no read), a retry's from storage.
    trades: list[TradeRow | None] = list(out.trade_rows) or [
        await m.trade(t.trade_id) for t in out.trades
    ]
    return OrderResult(
        order=order_public(out.order, body.client_order_id),
        trades=[trade_public(t, p) for t in trades if t is not None],
        created=out.created,
    )


@router.get("/api/v1/market/orders", response_model=list[OrderPublic], tags=["market"])
async def list_orders(
    market: MarketDep,
    p: Watcher,
    interval_start: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[OrderPublic]:
    """Your orders, newest first (the grid operator: everyone's)."""
    m = _market(market)
    account = p.account_id if p.role is Role.HOMEOWNER else None
    rows = await m.orders(
        account_id=account, interval_start=interval_start, active_only=active, limit=limit
    )
    return [_live(m, r) for r in rows]


def _live(m: MarketService, r: OrderRow) -> OrderPublic:
    """A stored order with the market's live state (rows are written with each event, but the
    in-memory order is the same state without a read)."""
    o = m.live(r.order_id)
    return order_public(o, r.client_order_id) if o is not None else row_public(r)


async def _visible_order(m: MarketService, p: Principal, order_id: str) -> OrderRow:
    row = await m.order(order_id)
    if row is None or not _own(p, row.account_id):
        raise HTTPException(404, f"no order {order_id!r} here")
    return row


@router.get("/api/v1/market/orders/{order_id}", response_model=OrderPublic, tags=["market"])
async def get_order(order_id: str, market: MarketDep, p: Watcher) -> OrderPublic:
    """One of your orders."""
    m = _market(market)
    return _live(m, await _visible_order(m, p, order_id))


@router.patch("/api/v1/market/orders/{order_id}", response_model=OrderResult, tags=["market"])
async def amend_order(order_id: str, body: OrderAmend, market: MarketDep, p: Trader) -> OrderResult:
    """Amend a resting order's limit price and/or total quantity."""
    m = _market(market)
    row = await _visible_order(m, p, order_id)
    try:
        out = await m.amend(
            p.account_id, order_id, limit_price=body.limit_price, quantity_wh=body.quantity_wh
        )
    except MarketError as exc:
        raise _refused(exc) from None
    assert out.order is not None
    trades = [await m.trade(t.trade_id) for t in out.trades]
    return OrderResult(
        order=order_public(out.order, row.client_order_id),
        trades=[trade_public(t, p) for t in trades if t is not None],
        created=False,
    )


@router.delete("/api/v1/market/orders/{order_id}", response_model=OrderPublic, tags=["market"])
async def cancel_order(order_id: str, market: MarketDep, p: Trader) -> OrderPublic:
    """Cancel a resting order's unfilled rest (its fills stand)."""
    m = _market(market)
    row = await _visible_order(m, p, order_id)
    try:
        out = await m.cancel(p.account_id, order_id)
    except MarketError as exc:
        raise _refused(exc) from None
    assert out.order is not None
    return order_public(out.order, row.client_order_id)


@router.get(
    "/api/v1/market/orders/{order_id}/proofs",
    response_model=list[LeafProofPublic],
    tags=["market", "ledger"],
)
async def order_proofs(order_id: str, market: MarketDep, p: Watcher) -> list[LeafProofPublic]:
    """Inclusion proofs of your order's events (place, amends, cancel) in the signed ledger
    log, against the latest checkpoint; events not yet under a checkpoint are left out."""
    m = _market(market)
    await _visible_order(m, p, order_id)
    return [_proof_public(x) for x in await m.order_proofs(order_id)]


@router.get("/api/v1/market/trades", response_model=list[TradePublic], tags=["market"])
async def list_trades(
    market: MarketDep,
    p: Watcher,
    interval_start: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[TradePublic]:
    """Your trades, newest first, with their settlement (the grid operator: all trades)."""
    m = _market(market)
    account = p.account_id if p.role is Role.HOMEOWNER else None
    rows = await m.trades(account_id=account, interval_start=interval_start, limit=limit)
    return [trade_public(t, p) for t in rows]


@router.get(
    "/api/v1/market/trades/{trade_id}/proof",
    response_model=list[LeafProofPublic],
    tags=["market", "ledger"],
)
async def trade_proof(trade_id: str, market: MarketDep, p: Watcher) -> list[LeafProofPublic]:
    """Inclusion proofs of your trade's ledger entries: the match, and its settlement once
    settled (each left out until a checkpoint covers it)."""
    m = _market(market)
    t = await m.trade(trade_id)
    if t is None or not (_own(p, t.buyer_account_id) or _own(p, t.seller_account_id)):
        raise HTTPException(404, f"no trade {trade_id!r} here")
    seqs = [s for s in (t.entry_seq, t.settlement_seq, t.shortfall_seq) if s is not None]
    return [_proof_public(x) for x in await m.entry_proofs(seqs)]


@router.get("/api/v1/market/history", response_model=list[IntervalHistory], tags=["market"])
async def history(
    market: MarketDep,
    _p: Anyone,
    limit: Annotated[int, Query(ge=1, le=1000)] = 96,
) -> list[IntervalHistory]:
    """Clearing prices per delivery interval, newest first (anonymous aggregates)."""
    m = _market(market)
    return [
        IntervalHistory(
            interval_start=s.interval_start,
            trades=s.trades,
            volume_wh=s.volume_wh,
            last_price=s.last_price,
            low_price=s.low_price,
            high_price=s.high_price,
            average_price=s.notional // s.volume_wh if s.volume_wh else 0,
        )
        for s in await m.history(limit)
    ]


@router.get("/api/v1/market/stream", tags=["market"])
async def stream(
    request: Request,
    market: MarketDep,
    _p: Anyone,
    events: Annotated[
        int | None, Query(ge=1, description="stop after this many market events (default: never)")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: `market` with {version, interval_start, seq, trades} after every
    accepted order event, and a comment line every 15 s to keep the connection open."""
    m = _market(market)

    async def sse() -> AsyncIterator[str]:
        seen = m.version
        sent = 0
        yield f"event: hello\ndata: {json.dumps({'version': seen})}\n\n"
        while (events is None or sent < events) and not await request.is_disconnected():
            version = await m.wait_change(seen, 15.0)
            if version == seen:
                yield ": keep-alive\n\n"
                continue
            seen = version
            c = m.last_change
            data = {"version": version}
            if c is not None:
                data |= {"interval_start": c.interval_start, "seq": c.seq, "trades": c.trades}
            yield f"event: market\ndata: {json.dumps(data)}\n\n"
            sent += 1
            await asyncio.sleep(0)

    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


class PolicyBody(BaseModel):
    """A site's automated trading policy: sell the surplus at no less than `sell_min_price`
    (keeping `battery_reserve_permille` of the forecast at home), and/or buy up to
    `buy_max_wh` per interval at no more than `buy_max_price`; and keep the battery above
    `min_soc_permille` of its capacity. Null prices switch a half off."""

    enabled: bool = True
    sell_min_price: PriceInt | None = None
    sell_max_wh: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] = 0
    battery_reserve_permille: Annotated[StrictInt, Field(ge=0, le=1000)] = 0
    buy_max_price: PriceInt | None = None
    buy_max_wh: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] = 0
    min_soc_permille: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=1000,
            description=(
                "keep the battery above this state of charge, in permille of its usable "
                "capacity (times its state of health) as the ledger measures it (green "
                "energy stored). While below it, the missing energy comes out of the surplus "
                "offered, and what the forecast will not cover is added to the bid at no more "
                "than buy_max_price (no top-up without a buy price). 0: no reserve kept."
            ),
        ),
    ] = 0


class PolicyPublic(PolicyBody):
    """A site's policy as stored."""

    site_id: str


async def _policy_site(accounts: AccountsDep, p: Principal, site_id: str) -> str:
    """The site's owner account, if `p` may see the site; else 404."""
    site = await accounts.get_site(site_id)
    if site is None or not can_see_site(p, site):
        raise HTTPException(404, f"no site {site_id!r} here")
    return site.owner_account_id


@router.get("/api/v1/market/policies/{site_id}", response_model=PolicyPublic, tags=["market"])
async def get_policy(
    site_id: str, market: MarketDep, accounts: AccountsDep, p: Watcher
) -> PolicyPublic:
    """A site's automated trading policy (all off until set)."""
    m = _market(market)
    await _policy_site(accounts, p, site_id)
    x = await m.policy(site_id)
    if x is None:
        return PolicyPublic(site_id=site_id, enabled=False)
    return PolicyPublic(
        site_id=site_id,
        enabled=x.enabled,
        sell_min_price=x.sell_min_price,
        sell_max_wh=x.sell_max_wh,
        battery_reserve_permille=x.battery_reserve_permille,
        buy_max_price=x.buy_max_price,
        buy_max_wh=x.buy_max_wh,
        min_soc_permille=x.min_soc_permille,
    )


@router.put("/api/v1/market/policies/{site_id}", response_model=PolicyPublic, tags=["market"])
async def put_policy(
    site_id: str, body: PolicyBody, market: MarketDep, accounts: AccountsDep, p: Trader
) -> PolicyPublic:
    """Set your site's policy; from the next round the policy engine places and re-prices
    orders for the next open interval, each tagged with the policy as its source."""
    m = _market(market)
    owner = await _policy_site(accounts, p, site_id)
    if owner != p.account_id:
        raise HTTPException(403, "only the site's owner sets its trading policy")
    policy = TradingPolicy(site_id=site_id, account_id=owner, **body.model_dump())
    await m.set_policy(policy)
    return PolicyPublic(site_id=site_id, **body.model_dump())
