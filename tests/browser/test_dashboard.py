"""The dashboard in headless Chromium: fleet table, counters, chart, live updates over SSE."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from protocol import topics
from tests.helpers.records import FakeDevice

pytestmark = [pytest.mark.browser]


async def test_dashboard_shows_fleet_and_updates_live(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    assert cloud.store is not None and cloud.ingest is not None
    accounts = AccountStore(cloud.store.engine)
    await accounts.create_account(
        "operator@example.org", "Olga", "correct horse battery", "grid_operator", "approved"
    )
    dev = FakeDevice("pi-browser", site_id="site-b")
    await cloud.store.add_device(dev.device_id, dev.site_id, dev.public_key, dev.kid, 5000)
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    for _ in range(2):
        out = await cloud.ingest.handle(topic, dev.next_token(generated_wh=300).envelope)
        assert out.receipt.status == "accepted"

    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(cloud.url + "/")  # not logged in: the login form
    await expect(page).to_have_url(cloud.url + "/login")
    await page.fill("input[name=email]", "operator@example.org")
    await page.fill("input[name=password]", "wrong password")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("email or password is wrong")
    await page.fill("input[name=email]", "operator@example.org")
    await page.fill("input[name=password]", "correct horse battery")
    await page.click("button[type=submit]")
    await expect(page).to_have_url(cloud.url + "/")
    row = page.locator('#fleet tr[data-device="pi-browser"]')
    await expect(row.locator("td.tokens")).to_have_text("2")
    await expect(page.locator("#accepted")).to_have_text("2")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await expect(page.locator("#chart rect.bar")).to_have_count(2)

    # New tokens and a rejection arrive: the page follows without a reload.
    for _ in range(3):
        await cloud.ingest.handle(topic, dev.next_token(generated_wh=100).envelope)
    await cloud.ingest.handle(topic, b"garbage")
    await expect(page.locator("#accepted")).to_have_text("5", timeout=10_000)
    await expect(row.locator("td.tokens")).to_have_text("5")
    await expect(row.locator("td.gen")).to_have_text("900")
    await expect(page.locator("#rejected")).to_have_text("1")
    await expect(page.locator("#reasons")).to_contain_text("malformed: 1")
    await expect(page.locator("#chart rect.bar")).to_have_count(5)
    # The ledger closes the five intervals and signs a checkpoint over every entry.
    await expect(page.locator("#ledger")).to_have_text(
        re.compile(r"^(\d+) / \1 / 5$"), timeout=15_000
    )
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert errors == []


async def test_openapi_lists_the_api(cloud: CloudRuntime, browser: Browser) -> None:
    page = await browser.new_page()
    resp = await page.goto(cloud.url + "/openapi.json")
    assert resp is not None and resp.ok
    spec = await resp.json()
    for path in ("/api/v1/devices", "/api/v1/tokens", "/api/v1/stats", "/healthz"):
        assert path in spec["paths"]
