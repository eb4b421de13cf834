"""The order service and settlement on real storage (SQLite and PostgreSQL).

Two homeowners trade for one delivery interval: pre-trade checks refuse what they must, the
trade and both orders are stored with their ledger leaves in one unit of work, the gate closes,
the seller's signed record arrives, and the trade settles for the delivered energy with itemised
fees; a seller who under-delivers leaves the buyer a grid purchase at the retail price. The log
replays to the same market, and a restart rebuilds it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.domain.market_checks import MarketConfig, MarketReason
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService
from cloud.services.market import MarketError, MarketService, OrderRequest
from cloud.services.settlement import SettlementService
from cloud.storage.accounts import AccountStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.market_store import MarketStore
from cloud.storage.store import Store
from edge.accounting import Channel
from protocol import topics
from rules.ledger import EntryKind, check_conservation, replay, site_account
from rules.market import OrderStatus, Side, TimeInForce
from rules.market import replay as market_replay
from rules.market.codec import decode_event
from tests.helpers.records import FakeDevice

DAY = 86_400
T = (1_800_000_000 // DAY) * DAY + 12 * 3600  # a noon, UTC: the forecast has sun
CFG = MarketConfig(interval_s=300, gate_closure_s=300, feed_in_price=8, retail_price=32)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class World:
    """A store, a ledger, the market and settlement on one clock, and two homes."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.ledger = LedgerService(
            LedgerStore(store.engine),
            Ed25519PrivateKey.generate(),
            "test/ledger",
            clock.now,
            grace_s=60,
        )
        self.mstore = MarketStore(store.engine)
        self.market = MarketService(self.ledger, self.mstore, CFG, clock.now)
        self.settlement = SettlementService(self.ledger, self.market, self.mstore, clock.now)
        self.seller_dev = FakeDevice("pi-sell", site_id="site-sell", capacity_w=10_000)
        self.buyer_dev = FakeDevice("pi-buy", site_id="site-buy")
        self.ingest = IngestService(store, self.seller_dev.deployment, clock.now)
        self.accounts: dict[str, str] = {}

    async def start(self) -> None:
        accounts = AccountStore(self.store.engine)
        for name, dev in (("seller", self.seller_dev), ("buyer", self.buyer_dev)):
            acct = await accounts.create_account(
                f"{name}@example.org", name, "correct horse battery", "homeowner", "approved"
            )
            self.accounts[name] = acct.account_id
            await accounts.create_site(dev.site_id, acct.account_id, f"{name}'s home")
            await self.store.add_device(
                dev.device_id, dev.site_id, dev.public_key, dev.kid, dev.capacity_w
            )
        await self.ledger.load()
        await self.market.load()

    async def deliver(self, dev: FakeDevice, start: int, energy: dict[Channel, int]) -> None:
        dev.next_start = start
        tok = dev.sign(energy)
        out = await self.ingest.handle(
            topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS), tok.envelope
        )
        assert out.receipt.status == "accepted", out.receipt

    def req(
        self, who: str, side: Side, wh: int, price: int, key: str, **kw: object
    ) -> OrderRequest:
        dev = self.seller_dev if who == "seller" else self.buyer_dev
        return OrderRequest(key, dev.site_id, side, kw.pop("interval", T), wh, price, **kw)  # type: ignore[arg-type]


async def _refused(reason: MarketReason, coro: object) -> None:
    with pytest.raises(MarketError) as err:
        await coro  # type: ignore[misc]
    assert err.value.refusal.reason is reason, err.value


async def make_world(store: Store) -> World:
    """Two homes an hour before noon: the seller's morning delivered, the buyer's credits."""
    clock = Clock(T - 3600)
    w = World(store, clock)
    await w.start()
    # The seller's last three hours, all used at home: a forecast, but no tradable Tgen yet.
    for k in range(36):
        await w.deliver(w.seller_dev, T - 3600 - (36 - k) * 300, {Channel.GENERATED: 600})
    clock.t = T - 3600
    assert await w.ledger.close_due() > 0
    await w.ledger.append(lambda eng: [eng.deposit("site-buy", int(clock.t), 1_000)])
    return w


@pytest.fixture
async def world(store: Store) -> World:
    return await make_world(store)


async def test_trade_matches_then_settles_for_what_was_delivered(world: World) -> None:
    w, seller, buyer = world, world.accounts["seller"], world.accounts["buyer"]
    # The forecast for noon from this morning's 600 Wh intervals: about that again.
    forecast = w.market.forecast(w.ledger.engine, "site-sell", T)
    assert 500 < forecast < 900
    await _refused(
        MarketReason.INSUFFICIENT_TOKENS,
        w.market.place(seller, w.req("seller", Side.SELL, forecast, 20, "too-much")),
    )
    await _refused(
        MarketReason.PRICE_OUT_OF_BAND,
        w.market.place(seller, w.req("seller", Side.SELL, 100, 40, "dear")),
    )
    await _refused(
        MarketReason.NOT_YOUR_SITE,
        w.market.place(buyer, w.req("seller", Side.SELL, 100, 20, "theirs")),
    )
    await _refused(
        MarketReason.MISALIGNED_INTERVAL,
        w.market.place(seller, w.req("seller", Side.SELL, 100, 20, "odd", interval=T + 7)),
    )

    sell = await w.market.place(seller, w.req("seller", Side.SELL, 200, 20, "s1"))
    assert sell.order is not None and sell.trades == [] and sell.created
    again = await w.market.place(seller, w.req("seller", Side.SELL, 200, 20, "s1"))
    assert again.order is not None and again.order.order_id == sell.order.order_id
    assert not again.created  # a retried request places nothing twice
    await _refused(
        MarketReason.IDEMPOTENCY_CONFLICT,
        w.market.place(seller, w.req("seller", Side.SELL, 201, 20, "s1")),
    )
    await _refused(
        MarketReason.SELF_TRADE, w.market.place(seller, w.req("seller", Side.BUY, 10, 25, "self"))
    )
    # 1000 credits cover at most 31 kWh at the retail price the bid is reserved at.
    await _refused(
        MarketReason.INSUFFICIENT_CREDIT,
        w.market.place(buyer, w.req("buyer", Side.BUY, 40_000, 25, "huge")),
    )

    buy = await w.market.place(buyer, w.req("buyer", Side.BUY, 300, 25, "b1"))
    assert buy.order is not None and len(buy.trades) == 1
    trade = buy.trades[0]
    assert (trade.quantity_wh, trade.price) == (200, 20)  # at the resting offer's price
    assert buy.order.status is OrderStatus.PARTIALLY_FILLED and buy.order.remaining_wh == 100

    rows = {o.order_id: o for o in await w.mstore.orders(limit=10)}
    assert rows[sell.order.order_id].status == "filled"
    assert rows[buy.order.order_id].filled_wh == 200
    stored = await w.mstore.trade(trade.trade_id)
    assert stored is not None and stored.status == "matched"
    kinds = [e.kind for e in w.ledger.engine.entries if e.seq >= stored.entry_seq - 1]
    assert kinds[:2] == [EntryKind.ORDER_EVENT, EntryKind.TRADE_MATCH]  # the fill's own leaves
    seqs = await w.mstore.event_seqs([buy.order.order_id])
    assert seqs[buy.order.order_id] == [stored.entry_seq - 1]

    # Gate closure: the buyer's rest expires; no more orders for T.
    w.clock.t = T - 300
    assert await w.market.close_due_gates() == 1
    rest = await w.mstore.order(buy.order.order_id)
    assert rest is not None and rest.status == "expired" and rest.remaining_wh == 100
    await _refused(
        MarketReason.GATE_CLOSED, w.market.place(buyer, w.req("buyer", Side.BUY, 10, 25, "late"))
    )

    # Not settled before the seller's interval is closed in the ledger.
    assert await w.settlement.settle_due() == 0
    w.clock.t = T + 300 + 61
    await w.deliver(w.seller_dev, T, {Channel.GENERATED: 900, Channel.EXPORTED: 500})
    await w.ledger.close_due()
    assert await w.settlement.sell_surplus() == 0  # T's trade has not settled: it keeps T's Tgen
    before = w.ledger.engine.state.balance(site_account("site-buy"))
    assert await w.settlement.settle_due() == 1
    done = await w.mstore.trade(trade.trade_id)
    assert done is not None and done.status == "settled" and done.settled_wh == 200
    assert done.seller_received_minor == 4  # 200 Wh at 20 per kWh
    assert done.buyer_paid_minor == before - w.ledger.engine.state.balance(site_account("site-buy"))
    assert done.buyer_paid_minor == (
        done.seller_received_minor + done.platform_fee_minor + done.dso_fee_minor
    )
    assert await w.settlement.settle_due() == 0  # once

    # The surplus settles with the grid: the 300 Wh exported beyond the trade, at feed-in.
    seller_before = w.ledger.engine.state.balance(site_account("site-sell"))
    assert await w.settlement.sell_surplus() == 300
    (sale,) = [e for e in w.ledger.engine.entries if e.kind is EntryKind.GRID_SALE]
    assert (sale.site, sale.interval_start, sale.exit_wh) == ("site-sell", T, 300)
    paid = w.ledger.engine.state.balance(site_account("site-sell")) - seller_before
    assert paid == 300 * CFG.feed_in_price // 1000  # 2, the rest carried to the next sale
    assert await w.settlement.sell_surplus() == 0  # once

    # The log alone replays to the same market and balances.
    entries = w.ledger.engine.entries
    assert replay(entries).snapshot() == w.ledger.engine.state.snapshot()
    assert check_conservation(entries) == []
    events = [decode_event(e.market) for e in entries if e.kind is EntryKind.ORDER_EVENT]
    trades, _orders = market_replay(events, CFG.mode)
    assert trades == [trade]


async def test_an_under_delivering_seller_leaves_the_buyer_a_grid_purchase(world: World) -> None:
    w, seller, buyer = world, world.accounts["seller"], world.accounts["buyer"]
    await w.market.place(seller, w.req("seller", Side.SELL, 300, 18, "s"))
    buy = await w.market.place(buyer, w.req("buyer", Side.BUY, 300, 30, "b", tif=TimeInForce.IOC))
    (trade,) = buy.trades
    w.clock.t = T - 300
    await w.market.close_due_gates()
    w.clock.t = T + 300 + 61
    await w.deliver(w.seller_dev, T, {Channel.GENERATED: 400, Channel.EXPORTED: 120})
    await w.ledger.close_due()
    assert await w.settlement.settle_due() == 1
    done = await w.mstore.trade(trade.trade_id)
    assert done is not None and done.status == "short"
    assert done.settled_wh == 120 and done.shortfall_seq is not None
    purchase = w.ledger.engine.entries[done.shortfall_seq]
    assert purchase.kind is EntryKind.GRID_PURCHASE and purchase.requested_wh == 180
    assert done.shortfall_cost_minor == 5  # 180 Wh at the retail 32 per kWh, rounded down
    assert check_conservation(w.ledger.engine.entries) == []


async def test_a_restart_rebuilds_the_market_from_the_log(world: World) -> None:
    w, seller, buyer = world, world.accounts["seller"], world.accounts["buyer"]
    sell = await w.market.place(seller, w.req("seller", Side.SELL, 300, 20, "s"))
    await w.market.amend(seller, sell.order.order_id, quantity_wh=250)  # type: ignore[union-attr]
    await w.market.place(buyer, w.req("buyer", Side.BUY, 100, 22, "b"))
    restarted = World(w.store, w.clock)
    await restarted.ledger.load()
    await restarted.market.load()
    o = restarted.market.market.order(sell.order.order_id)  # type: ignore[union-attr]
    assert o is not None and (o.quantity_wh, o.filled_wh, o.remaining_wh) == (250, 100, 150)
    assert [t.trade_id for t in restarted.market.unsettled()] == [
        t.trade_id for t in w.market.unsettled()
    ]
    # The idempotency keys survive too.
    again = await restarted.market.place(seller, w.req("seller", Side.SELL, 300, 20, "s"))
    assert not again.created
    await restarted.market.cancel(seller, sell.order.order_id)  # type: ignore[union-attr]
    await _refused(MarketReason.NOT_RESTING, restarted.market.cancel(seller, sell.order.order_id))  # type: ignore[union-attr]


async def test_policies_place_tagged_orders_that_trade(world: World) -> None:
    from cloud.domain.policies import TradingPolicy
    from cloud.services.policies import PolicyEngine

    w = world
    engine = PolicyEngine(w.market, w.mstore)
    await w.mstore.set_policy(
        TradingPolicy("site-sell", w.accounts["seller"], sell_min_price=12, sell_max_wh=300), 0
    )
    await w.mstore.set_policy(
        TradingPolicy("site-buy", w.accounts["buyer"], buy_max_price=26, buy_max_wh=200), 0
    )
    assert await engine.run_once() == 2
    assert await engine.run_once() == 0  # a second round places nothing twice
    t = w.market.next_interval()
    orders = await w.mstore.orders(interval_start=t)
    assert {(o.side, o.source) for o in orders} == {(0, "policy:site-buy"), (1, "policy:site-sell")}
    trades = await w.mstore.trades(interval_start=t)
    # Policies run in site order: the buyer's bid rested first, so the trade is at its price.
    assert len(trades) == 1 and trades[0].quantity_wh == 200 and trades[0].price == 26


async def test_concurrent_orders_share_group_commits_and_each_gets_its_answer(
    world: World,
) -> None:
    w, seller, buyer = world, world.accounts["seller"], world.accounts["buyer"]
    appends = w.ledger.appends
    sells = [w.req("seller", Side.SELL, 5, 20 + k % 3, f"s{k}") for k in range(40)]
    bad = w.req("seller", Side.SELL, 5, 99, "out-of-band")
    buys = [w.req("buyer", Side.BUY, 7, 21, f"b{k}") for k in range(20)]
    results = await asyncio.gather(
        *(w.market.place(seller, r) for r in sells),
        w.market.place(seller, bad),
        *(w.market.place(buyer, r) for r in buys),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], MarketError)
    assert refused[0].refusal.reason is MarketReason.PRICE_OUT_OF_BAND
    assert w.ledger.appends - appends < 60  # fewer commits than requests
    stored = await w.mstore.orders(limit=100)
    assert len(stored) == 60
    live = {o.order_id: o for o in w.market.market.orders.values()}
    for row in stored:  # each row in the state the market left it in
        o = live[row.order_id]
        assert (row.filled_wh, row.remaining_wh, row.status) == (
            o.filled_wh,
            o.remaining_wh,
            o.status.value,
        )
    events = [
        decode_event(e.market) for e in w.ledger.engine.entries if e.kind is EntryKind.ORDER_EVENT
    ]
    trades, _ = market_replay(events, CFG.mode)
    assert [t.trade_id for t in trades] == [t.trade_id for t in await w.mstore.trades(limit=500)][
        ::-1
    ]


async def test_a_request_is_answered_when_its_commit_is_written_not_when_the_queue_drains(
    world: World,
) -> None:
    # Orders keep arriving while commits are written (as under steady HTTP load): the first
    # caller must get its answer after its own commit, not after every later request's.
    w, buyer = world, world.accounts["buyer"]
    done: list[int] = []

    async def place(k: int) -> None:
        await w.market.place(buyer, w.req("buyer", Side.BUY, 1, 20, f"q{k}"))
        done.append(k)

    appends = w.ledger.appends
    tasks = [asyncio.create_task(place(0))]
    k = 1
    # Requests keep coming, one every millisecond, until six more commits were written.
    while w.ledger.appends - appends < 6 and k < 2000:
        await asyncio.sleep(0.001)
        tasks.append(asyncio.create_task(place(k)))
        k += 1
    await asyncio.gather(*tasks)
    assert w.ledger.appends - appends >= 6  # the requests did span several commits
    assert done.index(0) < len(done) // 2, done


async def test_a_site_standing_is_read_again_in_the_background_past_half_its_life(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloud.services.market as market_module

    monkeypatch.setattr(market_module, "STANDING_TTL_S", 0.4)
    w, buyer = world, world.accounts["buyer"]
    site = w.req("buyer", Side.BUY, 1, 20, "first").site_id
    w.market._standing.pop(site, None)
    await w.market.place(buyer, w.req("buyer", Side.BUY, 1, 20, "first"))
    first_expiry = w.market._standing[site][2]
    while time.monotonic() < first_expiry - 0.15:  # past half its life, not expired
        await asyncio.sleep(0.01)
    await w.market.place(buyer, w.req("buyer", Side.BUY, 1, 20, "second"))  # no wait: cached
    # No order reads it after this: only the background refresh can renew the entry.
    for _ in range(300):
        if w.market._standing[site][2] > first_expiry:
            break
        await asyncio.sleep(0.01)
    assert w.market._standing[site][2] > first_expiry
