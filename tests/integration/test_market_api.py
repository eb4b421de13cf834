"""The market over HTTP (the app on real storage): two homeowners trade; each sees only their own
orders and trades, everyone sees the anonymous book; strict integers; retried POSTs are safe;
proofs of one's own order events verify against the signed checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from cloud.api.app import create_app
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store
from protocol import merkle
from protocol.checkpoint import parse_signed_checkpoint
from tests.integration.test_market import CFG, T, World, make_world


@dataclass
class Api:
    world: World
    client: httpx.AsyncClient
    headers: dict[str, dict[str, str]]


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    w = await make_world(store)
    accounts = AccountStore(store.engine)
    headers = {}
    for name, acct in w.accounts.items():
        headers[name] = {"Authorization": f"Bearer {await accounts.issue_token(acct, 3600)}"}
    op = await accounts.create_account(
        "op@example.org", "op", "correct horse battery", "grid_operator", "approved"
    )
    headers["operator"] = {
        "Authorization": f"Bearer {await accounts.issue_token(op.account_id, 3600)}"
    }
    app = create_app(store, accounts=accounts, ledger=w.ledger, market=w.market, now=w.clock.now)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        yield Api(w, client, headers)


def order(site: str, side: str, wh: int, price: object, key: str) -> dict[str, object]:
    return {
        "client_order_id": key,
        "site_id": site,
        "side": side,
        "interval_start": T,
        "quantity_wh": wh,
        "limit_price": price,
    }


async def test_two_homeowners_trade_and_see_only_their_own(api: Api) -> None:
    c, h = api.client, api.headers
    info = (await c.get("/api/v1/market", headers=h["buyer"])).json()
    assert info["interval_s"] == CFG.interval_s and info["next_interval"] <= T
    sell = await c.post(
        "/api/v1/market/orders", json=order("site-sell", "sell", 200, 20, "s1"), headers=h["seller"]
    )
    assert sell.status_code == 201, sell.text
    retry = await c.post(
        "/api/v1/market/orders", json=order("site-sell", "sell", 200, 20, "s1"), headers=h["seller"]
    )
    assert (
        retry.status_code == 200
        and retry.json()["order"]["order_id"] == sell.json()["order"]["order_id"]
    )
    conflict = await c.post(
        "/api/v1/market/orders", json=order("site-sell", "sell", 150, 20, "s1"), headers=h["seller"]
    )
    assert conflict.status_code == 409 and "idempotency_conflict" in conflict.json()["detail"]
    for bad in (20.0, "20", 20.5):
        r = await c.post(
            "/api/v1/market/orders",
            json=order("site-sell", "sell", 100, bad, "f"),
            headers=h["seller"],
        )
        assert r.status_code == 422, (bad, r.text)  # no floats, no strings: whole units only
    theirs = await c.post(
        "/api/v1/market/orders", json=order("site-sell", "buy", 10, 20, "x"), headers=h["buyer"]
    )
    assert theirs.status_code == 403 and "not_your_site" in theirs.json()["detail"]

    book = (
        await c.get("/api/v1/market/book", params={"interval_start": T}, headers=h["buyer"])
    ).json()
    assert book["offers"] == [{"price": 20, "quantity_wh": 200, "orders": 1}]
    assert "account" not in str(book) and "site-sell" not in str(book)  # anonymous

    buy = await c.post(
        "/api/v1/market/orders", json=order("site-buy", "buy", 150, 24, "b1"), headers=h["buyer"]
    )
    assert buy.status_code == 201, buy.text
    (trade,) = buy.json()["trades"]
    assert (trade["side"], trade["quantity_wh"], trade["price"]) == ("buy", 150, 20)
    assert trade["seller_site_id"] is None  # the counterparty stays private

    mine = (await c.get("/api/v1/market/orders", headers=h["buyer"])).json()
    assert [o["client_order_id"] for o in mine] == ["b1"]
    seller_order = sell.json()["order"]["order_id"]
    peek = await c.get(f"/api/v1/market/orders/{seller_order}", headers=h["buyer"])
    assert peek.status_code == 404  # another account's order does not exist for the buyer
    assert (
        await c.delete(f"/api/v1/market/orders/{seller_order}", headers=h["buyer"])
    ).status_code == 404
    seller_trades = (await c.get("/api/v1/market/trades", headers=h["seller"])).json()
    assert [(t["side"], t["buyer_site_id"]) for t in seller_trades] == [("sell", None)]
    everyone = (await c.get("/api/v1/market/orders", headers=h["operator"])).json()
    assert {o["client_order_id"] for o in everyone} == {"s1", "b1"}

    amended = await c.patch(
        f"/api/v1/market/orders/{seller_order}", json={"limit_price": 19}, headers=h["seller"]
    )
    assert amended.status_code == 200, amended.text
    assert amended.json()["order"]["limit_price"] == 19
    cancelled = await c.delete(f"/api/v1/market/orders/{seller_order}", headers=h["seller"])
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["filled_wh"] == 150

    # Proofs of the seller's own order events, once a checkpoint covers them.
    assert await api.world.ledger.checkpoint_if_grown() is not None
    proofs = (
        await c.get(f"/api/v1/market/orders/{seller_order}/proofs", headers=h["seller"])
    ).json()
    assert len(proofs) == 3  # place, amend, cancel
    key = api.world.ledger.public_key
    for p in proofs:
        cp = parse_signed_checkpoint(
            p["checkpoint"].encode(), api.world.ledger.origin, key, origin=api.world.ledger.origin
        )
        merkle.verify_inclusion(
            merkle.leaf_hash(bytes.fromhex(p["leaf"])),
            p["leaf_index"],
            p["tree_size"],
            [bytes.fromhex(x) for x in p["path"]],
            cp.root,
        )
    trade_proof = (
        await c.get(f"/api/v1/market/trades/{trade['trade_id']}/proof", headers=h["buyer"])
    ).json()
    assert len(trade_proof) == 1 and trade_proof[0]["leaf_index"] == trade["entry_seq"]
    history = (await c.get("/api/v1/market/history", headers=h["seller"])).json()
    assert history[0]["interval_start"] == T and history[0]["volume_wh"] == 150


async def test_the_stream_announces_each_accepted_event(api: Api) -> None:
    c, h = api.client, api.headers

    async def listen() -> str:
        r = await c.get("/api/v1/market/stream", params={"events": 1}, headers=h["buyer"])
        return r.text

    listener = asyncio.create_task(listen())
    # The listener may not be subscribed yet when the first order lands: keep placing small
    # orders until it has heard one (each is a real accepted event), at most 20.
    for k in range(20):
        r = await c.post(
            "/api/v1/market/orders",
            json=order("site-sell", "sell", 10, 20, f"e{k}"),
            headers=h["seller"],
        )
        assert r.status_code == 201, r.text
        done, _ = await asyncio.wait({listener}, timeout=0.5)
        if done:
            break
    text = await asyncio.wait_for(listener, 10)
    assert text.startswith("event: hello")
    assert "event: market" in text and f'"interval_start": {T}' in text


async def test_a_policy_round_trips_with_its_minimum_state_of_charge(api: Api) -> None:
    c, h = api.client, api.headers
    url = "/api/v1/market/policies/site-buy"
    unset = (await c.get(url, headers=h["buyer"])).json()
    assert unset["enabled"] is False and unset["min_soc_permille"] == 0
    body = {"buy_max_price": 26, "buy_max_wh": 100, "min_soc_permille": 350}
    put = await c.put(url, json=body, headers=h["buyer"])
    assert put.status_code == 200, put.text
    assert put.json()["min_soc_permille"] == 350
    got = (await c.get(url, headers=h["buyer"])).json()
    assert got["min_soc_permille"] == 350 and got["buy_max_wh"] == 100
    (stored,) = await api.world.mstore.policies("site-buy")
    assert stored.min_soc_permille == 350
    for bad in (-1, 1001, 350.0, "350"):
        r = await c.put(url, json=body | {"min_soc_permille": bad}, headers=h["buyer"])
        assert r.status_code == 422, (bad, r.text)
    # Replacing the policy without the field sets it back to its default, 0.
    r = await c.put(url, json={"buy_max_price": 26, "buy_max_wh": 100}, headers=h["buyer"])
    assert r.status_code == 200 and r.json()["min_soc_permille"] == 0
    assert (await c.get(url, headers=h["buyer"])).json()["min_soc_permille"] == 0
    # Only the site's owner sets it; the site is not even visible to another homeowner.
    theirs = await c.put(url, json=body, headers=h["seller"])
    assert theirs.status_code == 404  # another home's site does not exist for the seller


async def test_the_policy_engine_resizes_its_bid_as_the_battery_fills(api: Api) -> None:
    from cloud.services.policies import PolicyEngine
    from edge.accounting import Channel
    from protocol import topics
    from rules.ledger import BatteryParams

    w, c, h = api.world, api.client, api.headers
    # The buyer's home has a 2 kWh battery (ideal round trip, so Tstorage is what was charged).
    battery = BatteryParams(usable_capacity_wh=2000, round_trip_efficiency_permille=1000)
    w.ledger.battery = lambda site: battery if site == "site-buy" else None
    assert w.ledger.battery_state("site-buy") == (0, 2000)
    assert w.ledger.battery_state("site-sell") == (0, 0)
    url = "/api/v1/market/policies/site-buy"
    body = {"buy_max_price": 26, "buy_max_wh": 100, "min_soc_permille": 500}  # keep 1000 Wh
    assert (await c.put(url, json=body, headers=h["buyer"])).status_code == 200
    engine = PolicyEngine(w.market, w.mstore)
    t = w.market.next_interval()
    key = f"policy:site-buy:{t}:buy"

    # Empty battery, no sun forecast for the buyer: the bid tops it up to its reserve.
    assert w.market.forecast(w.ledger.engine, "site-buy", t) == 0
    assert await engine.run_once() == 1
    bid = w.market.order_for_key(w.accounts["buyer"], key)
    assert bid is not None and bid.quantity_wh == 100 + 1000
    order_id, priority = bid.order_id, bid.priority  # the market updates its orders in place
    assert await engine.run_once() == 0  # nothing changed: nothing amended

    # The sun charges the battery 400 Wh; once the ledger closes that interval, the bid shrinks.
    dev = w.buyer_dev
    dev.next_start = T - 3600 - 300
    tok = dev.sign({Channel.GENERATED: 400, Channel.CHARGED: 400}, soc_permille=200)
    out = await w.ingest.handle(
        topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS), tok.envelope
    )
    assert out.receipt.status == "accepted", out.receipt
    w.clock.t = T - 3600 + 61
    assert await w.ledger.close_due() > 0
    assert w.market.next_interval() == t
    stored = w.ledger.engine.state.tstorage_wh("site-buy")
    assert stored == 400 and w.ledger.battery_state("site-buy") == (400, 2000)
    forecast = w.market.forecast(w.ledger.engine, "site-buy", t)
    smaller = 100 + max(0, 1000 - stored - forecast)
    assert smaller < 1100
    assert await engine.run_once() == 1 and engine.amended == 1
    resized = w.market.order_for_key(w.accounts["buyer"], key)
    assert resized is not None and resized.order_id == order_id
    assert resized.quantity_wh == smaller and resized.limit_price == 26
    assert resized.priority == priority  # a decrease keeps its time priority

    # A higher reserve asks for more: the same order grows (and loses its priority).
    body["min_soc_permille"] = 1000
    assert (await c.put(url, json=body, headers=h["buyer"])).status_code == 200
    assert await engine.run_once() == 1 and engine.amended == 2
    grown = w.market.order_for_key(w.accounts["buyer"], key)
    assert grown is not None and grown.order_id == order_id
    assert grown.quantity_wh == 100 + max(0, 2000 - stored - forecast) > smaller
    assert grown.priority > priority
    assert await engine.run_once() == 0
    stored_orders = await w.mstore.orders(interval_start=t)
    assert [(o.order_id, o.quantity_wh) for o in stored_orders] == [(order_id, grown.quantity_wh)]


async def test_the_policy_engine_leaves_its_own_offer_alone_when_nothing_changed(api: Api) -> None:
    from cloud.domain.policies import TradingPolicy
    from cloud.services.policies import PolicyEngine

    w = api.world
    t = w.market.next_interval()
    room = w.market.offer_room("site-sell", t)
    cap = room * 3 // 4  # more than half the room: what is left after the offer is less
    assert cap < w.market.forecast(w.ledger.engine, "site-sell", t)  # the cap binds
    await w.mstore.set_policy(
        TradingPolicy("site-sell", w.accounts["seller"], sell_min_price=12, sell_max_wh=cap), 0
    )
    engine = PolicyEngine(w.market, w.mstore)
    assert await engine.run_once() == 1
    key = f"policy:site-sell:{t}:sell"
    offer = w.market.order_for_key(w.accounts["seller"], key)
    assert offer is not None and offer.quantity_wh == cap
    assert w.market.offer_room("site-sell", t) == room - cap < cap
    # The room left is less than the offer, but the offer is the policy's own: no shrinking.
    assert await engine.run_once() == 0 and engine.amended == 0
    same = w.market.order_for_key(w.accounts["seller"], key)
    assert same is not None and same.quantity_wh == cap


async def test_policies_stored_before_the_minimum_state_of_charge_keep_no_reserve(
    db_url: str,
) -> None:
    from sqlalchemy import text

    from cloud.storage.market_store import MarketStore

    s = await Store.connect(db_url)
    try:
        await s.migrate("0009")
        async with s.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO market_policies (site_id, account_id, enabled, sell_min_price, "
                    "sell_max_wh, battery_reserve_permille, buy_max_price, buy_max_wh, "
                    "updated_ms) VALUES ('site-old', 'acct', 1, 12, 300, 250, NULL, 0, 1)"
                )
            )
        await s.migrate()
        (old,) = await MarketStore(s.engine).policies("site-old")
        assert old.min_soc_permille == 0
        assert (old.sell_max_wh, old.battery_reserve_permille) == (300, 250)
    finally:
        await s.close()
