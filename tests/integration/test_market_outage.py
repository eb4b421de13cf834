"""A database outage while orders flow: an order is answered only once it is stored, and the
market never runs ahead of the log.

The order service matches a batch while the one before it is written (a pipeline of group
commits), so when the database goes away some batches are matched in memory and never stored.
The outage is real (the test's own PostgreSQL database refuses connections and its sessions
are terminated, while the server serves every other test). Afterwards the answered orders are
exactly the stored ones, the service's market equals one rebuilt from the stored log by a fresh
service, and trading carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.services.ledger import LedgerService
from cloud.services.market import MarketError, MarketService
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.market_store import MarketStore
from cloud.storage.store import Store
from rules.market import Side
from tests.helpers.services import set_database_open
from tests.integration.test_market import CFG, T, World, make_world

pytestmark = [pytest.mark.postgres]

ORDERS = 1600
WORKERS = 256


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(pg_url)
    await s.migrate()
    yield s
    await s.close()


def _state(market: MarketService) -> dict[str, tuple[str, int, int, int]]:
    return {
        o.order_id: (o.status.value, o.filled_wh, o.remaining_wh, o.priority)
        for o in market.market.orders.values()
    }


async def test_an_outage_under_load_answers_only_what_was_stored(
    pg_store: Store, pg_url: str
) -> None:
    w: World = await make_world(pg_store)
    await w.ledger.append(lambda eng: [eng.deposit("site-buy", int(w.clock.t), 10**9)])
    answered: dict[str, str] = {}  # client order id -> order id
    failed: list[str] = []
    down, up = asyncio.Event(), asyncio.Event()
    queue = list(range(ORDERS))

    async def worker() -> None:
        while queue:
            k = queue.pop(0)
            who = "seller" if k % 2 == 0 else "buyer"
            side = Side.SELL if who == "seller" else Side.BUY
            price = 18 + k % 7 if who == "seller" else 16 + k % 7
            interval = T + 300 * (k // 2 % 8)  # within the seller's forecast share
            req = w.req(who, side, 2, price, f"o{k}", interval=interval)
            try:
                outcome = await w.market.place(w.accounts[who], req)
            except MarketError as exc:
                raise AssertionError(f"refused, not failed: {exc}") from None
            except Exception:
                failed.append(req.client_order_id)
                if len(failed) >= 40:
                    up.set()
                continue
            assert outcome.order is not None
            answered[req.client_order_id] = outcome.order.order_id
            if len(answered) >= 200:
                down.set()

    async def outage() -> None:
        await down.wait()
        await set_database_open(pg_url, False)
        await up.wait()
        await set_database_open(pg_url, True)

    try:
        await asyncio.gather(outage(), *(worker() for _ in range(WORKERS)))
    finally:
        await set_database_open(pg_url, True)
    assert len(failed) >= 40 and len(answered) + len(failed) == ORDERS

    # Trading carries on after the outage, on a market rebuilt from storage.
    after = await w.market.place(w.accounts["seller"], w.req("seller", Side.SELL, 3, 18, "after"))
    assert after.order is not None
    answered["after"] = after.order.order_id

    stored = {r.client_order_id: r.order_id for r in await w.mstore.orders(limit=10 * ORDERS)}
    assert stored == answered  # answered exactly when stored
    assert set(failed).isdisjoint(stored)

    # A fresh service on the same database rebuilds the same market from the stored log.
    fresh_ledger = LedgerService(
        LedgerStore(pg_store.engine), Ed25519PrivateKey.generate(), "test/ledger", w.clock.now
    )
    await fresh_ledger.load()
    fresh = MarketService(fresh_ledger, MarketStore(pg_store.engine), CFG, w.clock.now)
    await fresh.load()
    assert fresh_ledger.engine.state.next_seq == w.ledger.engine.state.next_seq
    assert _state(fresh) == _state(w.market)
    rows = {r.order_id: r for r in await w.mstore.orders(limit=10 * ORDERS)}
    for oid, (status, filled, remaining, _prio) in _state(w.market).items():
        r = rows[oid]
        assert (r.status, r.filled_wh, r.remaining_wh) == (status, filled, remaining), oid
    trades = await w.mstore.trades(limit=10 * ORDERS)
    assert trades, "the orders crossed"
    assert all(t.buy_order_id in rows and t.sell_order_id in rows for t in trades)
