"""The homeowner's "My home" page in headless Chromium, against a real aggregator on SQLite.

A homeowner logs in through the form and lands on /home (via "/"): their site's minted
generation, CO2 avoided and forest equivalent match the ledger and the formulas, their device is
listed with its status, the neighbour's site is not shown, and after more tokens are closed into
the ledger the page updates without a reload (its 10 s poll, driven by Playwright's clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from cloud.domain.certificates import DEFAULT_GRID_G_CO2_PER_KWH, avoided_co2_g, forest_milliacres
from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from protocol import topics
from tests.helpers.records import FakeDevice

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - a test credential
CAPACITY_W = 100_000  # up to ~9 kWh in a 5-minute interval, so the carbon figures are not zero


@pytest.fixture
def cloud_settings() -> dict[str, Any]:
    return {
        "ledger_grace_s": 0,
        "ledger_close_every_s": 3600,  # the test closes intervals itself
    }


def kg_1(grams: int) -> str:
    tenths = (grams + 50) // 100
    return f"{tenths // 10}.{tenths % 10}"


async def send(cloud: CloudRuntime, dev: FakeDevice, whs: tuple[int, ...]) -> None:
    assert cloud.ingest is not None
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    for wh in whs:
        out = await cloud.ingest.handle(topic, dev.next_token(generated_wh=wh).envelope)
        assert out.receipt.status == "accepted"


async def test_homeowner_sees_their_home_and_it_updates(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    assert cloud.store is not None and cloud.ledger is not None
    store, base = cloud.store, cloud.url
    accounts = AccountStore(store.engine)
    home = await accounts.create_account(
        "home@example.org", "Hal", PASSWORD, "homeowner", "approved"
    )
    nextdoor = await accounts.create_account(
        "next@example.org", "Nia", PASSWORD, "homeowner", "approved"
    )
    await accounts.create_site("site-home", home.account_id, "Hal's roof")
    await accounts.create_site("site-next", nextdoor.account_id, "Next door")
    mine = FakeDevice("pi-home", site_id="site-home", capacity_w=CAPACITY_W)
    theirs = FakeDevice("pi-next", site_id="site-next", capacity_w=CAPACITY_W)
    for dev in (mine, theirs):
        await store.add_device(
            dev.device_id, dev.site_id, dev.public_key, dev.kid, CAPACITY_W, status="approved"
        )
    first = (8000, 7500, 6250)
    await send(cloud, mine, first)
    await send(cloud, theirs, (5000, 5000))
    assert await cloud.ledger.close_due() == 5

    context = await browser.new_context()
    page = await context.new_page()
    await page.clock.install()  # the page's 10 s poll runs on this clock
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/home")  # not logged in: the login form
    await expect(page).to_have_url(base + "/login")
    await page.fill("input[name=email]", "home@example.org")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")  # -> "/" -> 303 -> /home
    await expect(page).to_have_url(base + "/home")
    await expect(page.locator("#home-link")).to_have_attribute("href", "/home")

    sites = page.locator("section.site")
    await expect(sites).to_have_count(1)  # the neighbour's site is not shown
    await expect(page.locator('section.site[data-site="site-next"]')).to_have_count(0)
    await expect(page.locator("main")).not_to_contain_text("Next door")
    await expect(page.locator("main")).not_to_contain_text("pi-next")
    site = page.locator('section.site[data-site="site-home"]')
    await expect(site.locator("h2")).to_contain_text("Hal's roof")

    def field(name: str):  # type: ignore[no-untyped-def]
        return site.locator(f'[data-field="{name}"]')

    async def expect_figures(generated_wh: int) -> None:
        co2 = avoided_co2_g(generated_wh, DEFAULT_GRID_G_CO2_PER_KWH)
        milliacres = forest_milliacres(co2)
        assert milliacres > 0
        await expect(field("generated_kwh")).to_have_text(
            f"{generated_wh // 1000}.{generated_wh % 1000:03d}"
        )
        await expect(field("co2_kg")).to_have_text(kg_1(co2))
        await expect(field("forest_acres")).to_have_text(
            f"{milliacres // 1000}.{milliacres % 1000:03d}"
        )

    await expect_figures(sum(first))  # 21.750 kWh, 15.4 kg, 0.006 acres
    await expect(field("generated_kwh")).to_have_text("21.750")
    await expect(field("co2_kg")).to_have_text("15.4")
    await expect(site.locator(".forest")).to_have_text("like 0.006 acres of forest for a year")
    await expect(field("credits")).to_have_text("0.00")
    await expect(page.locator("#factor-note")).to_contain_text(
        f"{DEFAULT_GRID_G_CO2_PER_KWH} g CO₂/kWh"
    )
    await expect(page.locator("#factor-note")).to_contain_text("EPA")

    summary = await (await page.request.get(base + "/api/v1/ledger/summary")).json()
    assert [s["site_id"] for s in summary["sites"]] == ["site-home"]
    own = summary["sites"][0]
    assert own["generated_wh"] == sum(first)
    for name in ("tradable_wh", "tgen_wh", "tstorage_wh", "set_aside_wh"):
        await expect(field(name)).to_have_text(str(own[name]))
    checkpoint = summary["checkpoint_size"]
    assert checkpoint > 0
    await expect(page.locator("#checkpoint-size")).to_have_text(str(checkpoint))

    row = site.locator('tr[data-device="pi-home"]')
    await expect(row.locator(".badge")).to_have_text("approved")
    await expect(row.locator("td.tokens")).to_have_text("3")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.screenshot(path=str(tmp_path / "home.png"), full_page=True)

    # More generation is closed into the ledger: the next poll updates the page in place.
    more = (6000, 4000)
    await send(cloud, mine, more)
    await send(cloud, theirs, (9000,))
    assert await cloud.ledger.close_due() == 3
    marker = await page.evaluate("() => (window.__notReloaded = true)")
    assert marker is True
    await page.clock.fast_forward(10_000)
    await expect_figures(sum(first) + sum(more))  # 31.750 kWh
    await expect(row.locator("td.tokens")).to_have_text("5")
    summary = await (await page.request.get(base + "/api/v1/ledger/summary")).json()
    assert summary["checkpoint_size"] > checkpoint
    await expect(page.locator("#checkpoint-size")).to_have_text(str(summary["checkpoint_size"]))
    assert await page.evaluate("() => window.__notReloaded === true")  # no reload happened
    await expect(page.locator('section.site[data-site="site-next"]')).to_have_count(0)

    # The device link leads to the device's page.
    await row.locator("a").click()
    await expect(page).to_have_url(base + "/devices/pi-home")
    assert errors == []
    await context.close()


async def test_fleet_roles_get_a_403_page_and_keep_their_dashboard(
    cloud: CloudRuntime, browser: Browser
) -> None:
    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    await accounts.create_account("ops@example.org", "Olga", PASSWORD, "grid_operator", "approved")
    page = await browser.new_page()
    await page.goto(cloud.url + "/login")
    await page.fill("input[name=email]", "ops@example.org")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(cloud.url + "/")  # the fleet dashboard, as before
    resp = await page.goto(cloud.url + "/home")
    assert resp is not None and resp.status == 403
    await expect(page.locator(".error")).to_contain_text("role grid_operator may not")
