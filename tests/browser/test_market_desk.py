"""The trading desk (/market) in headless Chromium, against a real app with a market.

Two homeowners in two browser contexts trade through the page's form: the seller's offers (one
placed with a double click, which places it once; one too big, refused in the API's words) and
the buyer's crossing bid show up as trades on both pages without a reload (the market stream);
the buyer amends the rest of the bid from its row. The buyer's "my orders" never lists the
seller's orders, which the buyer sees only as anonymous price levels in the book. Then the world
moves past the gate, the seller's record is delivered and closed into the ledger, settlement
runs, and both pages show the settled quantities and the fees, and the under-delivered marker
on the trade the seller fell short of, again without a reload (the trades poll: settlement sends
no market event). The grid operator sees the desk read-only: every order and trade, no form.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from cloud.api.app import create_app
from cloud.runtime import free_port
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store
from edge.accounting import Channel
from tests.integration.test_market import T, World, make_world

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - make_world's test credential
LIVE_MS = 10_000  # a market event reaches the other page through the stream
POLL_MS = 15_000  # settlement reaches the pages through the 5 s trades poll
SHOTS = Path("/tmp")


@dataclass
class Desk:
    world: World
    base: str


@pytest.fixture
async def desk(store: Store) -> AsyncIterator[Desk]:
    """make_world's two homes (and a grid operator) behind the real app, served by uvicorn."""
    w = await make_world(store)
    accounts = AccountStore(store.engine)
    await accounts.create_account("ops@example.org", "Olga", PASSWORD, "grid_operator", "approved")
    app = create_app(store, accounts=accounts, ledger=w.ledger, market=w.market, now=w.clock.now)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,  # the pages' event streams stay open until closed
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the app did not start")
        await asyncio.sleep(0.02)
    try:
        yield Desk(w, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def open_desk(
    browser: Browser, base: str, email: str, landing: str
) -> tuple[BrowserContext, Page, list[str]]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/market")  # not logged in: the login form
    await expect(page).to_have_url(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + landing)
    await page.click("#market-link")  # the navigation leads to the desk
    await expect(page).to_have_url(base + "/market")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    return context, page, errors


async def choose_interval(page: Page) -> None:
    await page.select_option("#interval", str(T))
    await expect(page.locator("#interval-window")).to_contain_text("12:00:00 – 12:05:00 UTC")
    await expect(page.locator("#gate")).to_have_attribute("data-state", "open")
    await expect(page.locator("#gate")).to_contain_text("gate closes in")


async def place(page: Page, side: str, wh: int, price: int, *, double: bool = False) -> None:
    await expect(page.locator("#order-site")).to_be_enabled()
    await page.check(f"#order-form input[name=side][value={side}]")
    await page.fill("#order-qty", str(wh))
    await page.fill("#order-price", str(price))
    if double:
        await page.dblclick("#order-submit")
    else:
        await page.click("#order-submit")


def level(table: Locator, price: int) -> Locator:
    return table.locator(f'tbody tr[data-price="{price}"]')


async def expect_level(table: Locator, price: int, wh: int, orders: int) -> None:
    row = level(table, price)
    await expect(row.locator("td.qty")).to_have_text(f"{wh:,}")
    await expect(row.locator("td.count")).to_have_text(str(orders))


async def api(page: Page, path: str) -> Any:
    r = await page.request.get(page.url.split("/market")[0] + path)
    assert r.ok, (path, r.status, await r.text())
    return await r.json()


def money(minor: int | None) -> str:
    assert minor is not None
    return f"{minor:,} c"


async def expect_settled_like_the_api(page: Page) -> list[dict[str, Any]]:
    """The page's trade rows show what GET /api/v1/market/trades says, once settled."""
    trades = await api(page, "/api/v1/market/trades")
    assert len(trades) == 2 and all(t["settled_wh"] is not None for t in trades)
    for t in trades:
        row = page.locator(f'#trades tr[data-trade="{t["trade_id"]}"]')
        field = row.locator
        await expect(row).to_have_attribute("data-status", t["status"], timeout=POLL_MS)
        await expect(field('[data-field="settled"]')).to_have_text(f"{t['settled_wh']:,}")
        await expect(field('[data-field="platform_fee"]')).to_have_text(
            money(t["platform_fee_minor"])
        )
        await expect(field('[data-field="dso_fee"]')).to_have_text(money(t["dso_fee_minor"]))
        amount = (
            f"paid {money(t['buyer_paid_minor'])}"
            if t["side"] == "buy"
            else f"recv. {money(t['seller_received_minor'])}"
        )
        await expect(field('[data-field="amount"]')).to_have_text(amount)
        await expect(field('[data-field="shortfall"]')).to_contain_text(f"{t['shortfall_wh']:,}")
        proof = field('[data-field="entry"]')
        await expect(proof).to_have_text(f"#{t['entry_seq']}")
        await expect(proof).to_have_attribute(
            "href", f"/api/v1/market/trades/{t['trade_id']}/proof"
        )
        marker = field(".under-delivered")
        await expect(marker).to_have_count(1 if t["status"] == "short" else 0)
    return trades


async def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"market-desk-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, SHOTS / path.name)


async def test_two_homeowners_trade_and_settle_on_the_desk(
    desk: Desk, browser: Browser, tmp_path: Path
) -> None:
    w, base = desk.world, desk.base
    s_ctx, seller, s_errors = await open_desk(browser, base, "seller@example.org", "/home")
    b_ctx, buyer, b_errors = await open_desk(browser, base, "buyer@example.org", "/home")
    for page in (seller, buyer):
        await choose_interval(page)
        await expect(page.locator("#bids tbody")).to_contain_text("no bids")
        await expect(page.locator("#trades tbody")).to_contain_text("no trades yet")
        assert await page.evaluate("() => (window.__notReloaded = true)")

    # The seller offers 300 Wh at 18 with a double click: one order.
    await place(seller, "sell", 300, 18, double=True)
    await expect(seller.locator("#order-message")).to_contain_text("Placed: sell 300 Wh at 18")
    await expect(seller.locator("#orders tbody tr[data-order]")).to_have_count(1)
    assert len(await api(seller, "/api/v1/market/orders")) == 1
    # Too much: the API's refusal, plainly.
    await place(seller, "sell", 5_000, 20)
    await expect(seller.locator("#order-error")).to_contain_text(
        "insufficient_tokens: site 'site-sell' may offer"
    )
    await place(seller, "sell", 140, 20)
    await expect(seller.locator("#order-message")).to_contain_text("Placed: sell 140 Wh at 20")
    await expect(seller.locator("#order-error")).to_be_empty()
    await expect(seller.locator("#orders tbody tr[data-order]")).to_have_count(2)
    seller_orders = {o["order_id"] for o in await api(seller, "/api/v1/market/orders")}

    # The buyer sees the offers only as anonymous price levels, best offer highlighted.
    offers = buyer.locator("#offers")
    await expect_level(offers, 18, 300, 1)
    await expect_level(offers, 20, 140, 1)
    await expect(level(offers, 18)).to_have_class("best")
    await expect(buyer.locator("#best-ask")).to_have_text("18")
    await expect(buyer.locator("#orders tbody")).to_contain_text("no orders yet")
    await expect(buyer.locator("#book")).not_to_contain_text("site-sell")
    await shoot(buyer, tmp_path, "buyer-book")

    # A crossing bid: two trades at the offers' prices, 60 Wh left resting.
    await place(buyer, "buy", 500, 25)
    await expect(buyer.locator("#order-message")).to_contain_text("2 trades matched")
    mine = buyer.locator("#orders tbody tr[data-order]")
    await expect(mine).to_have_count(1)
    await expect(mine.locator('[data-field="filled"]')).to_have_text("440 / 500")
    await expect(mine.locator('[data-field="avg"]')).to_have_text("18")  # (300x18 + 140x20) / 440
    await expect(mine.locator('[data-field="status"]')).to_contain_text("partially filled")
    await expect(buyer.locator("#offers tbody")).to_contain_text("no offers")
    await expect_level(buyer.locator("#bids"), 25, 60, 1)
    for page, side in ((buyer, "buy"), (seller, "sell")):  # the seller's page without a reload
        rows = page.locator("#trades tbody tr[data-trade]")
        await expect(rows).to_have_count(2, timeout=LIVE_MS)
        await expect(rows.locator('[data-field="side"]')).to_have_text([side, side])
        await expect(rows.locator('[data-field="status"]')).to_have_text(["matched", "matched"])
        await expect(rows.locator('[data-field="settled"]')).to_have_text(["—", "—"])
    await expect(seller.locator('#orders [data-field="status"]')).to_have_text(
        ["filled", "filled"], timeout=LIVE_MS
    )
    await expect(seller.locator("#bids tbody tr.best td.price")).to_have_text("25")

    # The buyer amends the rest's price from its row; the book follows on both pages.
    await mine.locator('button[data-action="amend"]').click()
    await mine.locator("input.amend-price").fill("22")
    await shoot(buyer, tmp_path, "buyer-amend")
    await mine.locator('button[data-action="save"]').click()
    await expect(mine.locator('[data-field="limit"]')).to_have_text("22")
    for page in (buyer, seller):
        await expect_level(page.locator("#bids"), 22, 60, 1)
        await expect(page.locator("#bids tbody tr[data-price]")).to_have_count(1)

    # Never the seller's orders among the buyer's own.
    buyer_rows = await buyer.locator("#orders tbody tr[data-order]").evaluate_all(
        "rows => rows.map(r => r.dataset.order)"
    )
    assert len(buyer_rows) == 1 and not seller_orders & set(buyer_rows)
    await expect(buyer.locator("#orders")).not_to_contain_text("site-sell")
    await shoot(seller, tmp_path, "seller-matched")
    await shoot(buyer, tmp_path, "buyer-matched")

    # Gate closure (a market event): the rest expires, the interval closes for orders.
    w.clock.t = T - 300
    assert await w.market.close_due_gates() == 1
    await expect(mine.locator('[data-field="status"]')).to_contain_text("expired", timeout=LIVE_MS)
    await expect(buyer.locator("#gate")).to_have_attribute("data-state", "closed")
    await expect(buyer.locator("#order-submit")).to_be_disabled()
    # The seller's record for the interval: 350 Wh exported of the 440 sold. Settlement in the
    # ledger loop: the first trade in full, the second short by 90 Wh.
    w.clock.t = T + 300 + 61
    await w.deliver(w.seller_dev, T, {Channel.GENERATED: 900, Channel.EXPORTED: 350})
    await w.ledger.close_due()
    assert await w.settlement.settle_due() == 2
    for page in (buyer, seller):
        trades = await expect_settled_like_the_api(page)
        assert sorted((t["status"], t["settled_wh"]) for t in trades) == [
            ("settled", 300),
            ("short", 50),
        ]
        short = page.locator('#trades tr[data-status="short"]')
        await expect(short.locator(".under-delivered")).to_be_visible()
        await expect(short.locator('[data-field="shortfall"]')).to_contain_text("90")
        assert await page.evaluate("() => window.__notReloaded === true")  # no reload happened
    buyer_short = buyer.locator('#trades tr[data-status="short"] [data-field="shortfall"]')
    await expect(buyer_short).to_contain_text("grid")  # the buyer's grid purchase for the rest
    history = buyer.locator("#history circle.price-dot")
    await expect(history).to_have_count(1)
    await expect(buyer.locator("#history")).to_contain_text("18 c/kWh")  # volume-weighted, down
    href = await buyer.locator('#trades [data-field="entry"]').first.get_attribute("href")
    proof = await buyer.request.get(base + (href or ""))
    assert proof.ok and isinstance(await proof.json(), list)
    await shoot(seller, tmp_path, "seller-settled")
    await shoot(buyer, tmp_path, "buyer-settled")

    # The grid operator: read-only, everyone's orders and trades, no form, no controls.
    o_ctx, ops, o_errors = await open_desk(browser, base, "ops@example.org", "/")
    await expect(ops.locator("#order-form")).to_have_count(0)
    await expect(ops.locator("#orders tbody tr[data-order]")).to_have_count(3)
    await expect(ops.locator("#orders button")).to_have_count(0)
    await expect(ops.locator("#trades tbody tr[data-trade]")).to_have_count(2)
    sites = ops.locator('#trades tr[data-trade] [data-field="side"]')
    await expect(sites).to_have_text(["site-sell→ site-buy"] * 2)  # seller, then → buyer
    await shoot(ops, tmp_path, "operator")

    assert s_errors == [] and b_errors == [] and o_errors == []
    for context in (s_ctx, b_ctx, o_ctx):
        await context.close()
