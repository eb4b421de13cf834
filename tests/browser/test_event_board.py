"""The event board in headless Chromium, against a real aggregator, a real Mosquitto and
simulated Pis that check and answer signed commands: the form shows the API's plain errors,
an event created from it reaches every device of its group (responses say "started", with a
latency), the batteries deliver what was asked (the chart's lines have points, the numbers
match), a modification supersedes, and cancelling tells every device."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.browser.derms import OPERATOR, Derms, N, log_in
from tests.helpers.waiting import at_least, until

pytestmark = [pytest.mark.browser, pytest.mark.broker]


async def test_operator_creates_follows_modifies_and_cancels_an_event(
    derms: Derms, browser: Browser, tmp_path: Path
) -> None:
    base = derms.url
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await log_in(page, base, OPERATOR, "/")
    await page.click("#events-link")
    await expect(page).to_have_url(base + "/events")
    await expect(page.locator("#events tbody")).to_contain_text("no events yet")

    # The API's own messages are shown as they are.
    await page.select_option("#ev-control", label="Generation limit")
    await expect(page.locator("#ev-unit")).to_contain_text("hundredths of a percent")
    await page.fill("#ev-value", "20000")
    await page.click("#ev-submit")
    await expect(page.locator("#event-error")).to_have_text(
        "opModMaxLimW value 20000 is not in 0..10000"
    )
    await page.fill("#ev-value", "")
    await page.click("#ev-submit")
    await expect(page.locator("#event-error")).to_have_text("value: a whole number is required")

    # 3 north devices x 5000 W: 6 kW is 40 % of each battery's rate.
    north = [d.device_id for d in derms.devices[: N // 2]]
    await page.select_option("#ev-group", "zone:north")
    await page.select_option("#ev-control", label="Battery power")
    await page.fill("#ev-value", "6000")
    await page.fill("#ev-duration", "10")
    await page.fill("#ev-name", "evening <peak>")
    await page.click("#ev-submit")
    await expect(page).to_have_url(re.compile(re.escape(base) + r"/events/ev-[0-9a-f]+$"))
    event_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("h2").first).to_contain_text("evening <peak>")  # text, not HTML

    rows = page.locator("#responses tbody tr[data-device]")
    await expect(rows).to_have_count(N // 2)
    for device_id in north:
        row = page.locator(f'#responses tr[data-device="{device_id}"]')
        await expect(row.locator("td.status")).to_have_text("started", timeout=20_000)
        await expect(row.locator("td.latency")).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(page.locator("#status")).to_have_text("active")
    await expect(page.locator("#delivered")).to_have_text("6,000", timeout=20_000)
    await expect(page.locator("#requested")).to_have_text("6,000")
    await expect(page.locator("#sites tbody tr[data-site]")).to_have_count(N // 2)

    async def points(cls: str) -> int:
        got = await page.get_attribute(f"#perf-chart polyline.{cls}", "points")
        return len((got or "").split())

    await expect(page.locator("#perf-chart polyline.delivered")).to_have_count(1)
    await until(lambda: at_least(lambda: points("delivered"), 3), timeout_s=20)
    assert await points("requested") == await points("delivered")
    await page.screenshot(path=str(tmp_path / "event.png"), full_page=True)

    # A modification: half the power; the devices take modification 2.
    await page.click("#modify-open")
    await page.fill("#m-value", "3000")
    await page.click("#modify-submit")
    await expect(page.locator("#f-modification")).to_have_text("2")
    await expect(page.locator("#action-message")).to_have_text("modification 2 sent")
    await expect(page.locator("#delivered")).to_have_text("3,000", timeout=20_000)
    assert derms.runtime.fleet is not None
    assert derms.runtime.fleet.state.group_totals("zone:north").battery_w == 3000

    # Cancel: every device is told, and says so.
    await page.click("#cancel")
    await expect(page.locator("#status")).to_have_text("cancelled")
    for device_id in north:
        row = page.locator(f'#responses tr[data-device="{device_id}"]')
        await expect(row.locator("td.status")).to_have_text("cancelled", timeout=20_000)
    await expect(page.locator("#cancel")).to_be_disabled()
    await expect(page.locator("#delivered")).to_have_text("0", timeout=20_000)
    await page.screenshot(path=str(tmp_path / "event-cancelled.png"), full_page=True)

    # The board lists it with its responses.
    await page.click("#events-link")
    row = page.locator(f'#events tr[data-event="{event_id}"]')
    await expect(row.locator("td.status")).to_have_text("cancelled")
    await expect(row.locator("td.devices")).to_have_text(str(N // 2))
    await expect(row.locator('[data-status="cancelled"]')).to_have_text(f"cancelled {N // 2}")
    await expect(row).to_contain_text("Battery power")
    await page.screenshot(path=str(tmp_path / "events.png"), full_page=True)

    # An event at a set time (UTC): scheduled, and the devices have it ahead of time.
    at = datetime.fromtimestamp(int(time.time()) + 3600, UTC).replace(microsecond=0)
    await page.select_option("#ev-group", "zone:south")
    await page.select_option("#ev-control", label="Generation limit")
    await page.fill("#ev-value", "5000")
    await page.check('input[name="when"][value="at"]')
    await page.fill("#ev-start", at.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.click("#ev-submit")
    await expect(page).to_have_url(re.compile(r"/events/ev-[0-9a-f]+$"))
    await expect(page.locator("#status")).to_have_text("scheduled")
    await expect(page.locator("#f-window")).to_contain_text(at.strftime("%Y-%m-%d %H:%M:%S") + " –")
    for d in derms.devices[N // 2 :]:
        row = page.locator(f'#responses tr[data-device="{d.device_id}"]')
        await expect(row.locator("td.status")).to_have_text("received", timeout=20_000)
    assert errors == []


async def test_an_installer_watches_events_without_controls(derms: Derms, browser: Browser) -> None:
    assert derms.runtime.store is not None
    from cloud.storage.accounts import AccountStore
    from tests.browser.derms import PASSWORD

    accounts = AccountStore(derms.runtime.store.engine)
    await accounts.create_account("ian@example.org", "Ian", PASSWORD, "installer", "approved")
    page = await browser.new_page()
    await log_in(page, derms.url, "ian@example.org", "/")
    await page.goto(derms.url + "/events")
    await expect(page.locator("#events tbody")).to_contain_text("no events yet")
    await expect(page.locator("#event-form")).to_have_count(0)
    resp = await page.goto(derms.url + "/events/ev-nope")
    assert resp is not None and resp.status == 404
