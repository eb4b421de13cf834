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
