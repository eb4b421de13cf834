"""The live fleet page in headless Chromium, against a real aggregator, a real Mosquitto and
simulated Pis that send telemetry: every device has a row, the totals follow the fleet's values
over the stream without a reload, search and the state filter narrow the table, the map shows a
dot per site, and the grid operator acknowledges an alarm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.browser.derms import OPERATOR, Derms, N, log_in
from tests.helpers.waiting import until

pytestmark = [pytest.mark.browser, pytest.mark.broker]


async def test_operator_watches_the_fleet_live(
    derms: Derms, browser: Browser, tmp_path: Path
) -> None:
    base = derms.url
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/fleet")  # not logged in: the login form
    await expect(page).to_have_url(base + "/login")
    await log_in(page, base, OPERATOR, "/")
    await page.click("#fleet-link")
    await expect(page).to_have_url(base + "/fleet")

    rows = page.locator("#devices tbody tr[data-device]")
    await expect(rows).to_have_count(N)
    for d in derms.devices:
        row = page.locator(f'#devices tr[data-device="{d.device_id}"]')
        await expect(row.locator("td.state")).to_have_text("online")
        await expect(row.locator("td.pv")).to_have_text("3,000")
        await expect(row.locator("td.soc")).to_have_text(re.compile(r"^\d+\.\d %$"))
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # Every sim home makes 3000 W of PV and uses 800 W.
    await expect(page.locator('[data-total="pv_w"]')).to_have_text(f"{3000 * N:,}")
    await expect(page.locator('[data-total="export_w"]')).to_have_text(f"{2200 * N:,}")
    await expect(page.locator('[data-total="online"]').first).to_have_text(str(N))
    await expect(page.locator("#map circle")).to_have_count(N)
    await page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)

    # The fleet's values change: the stream brings them in without a reload.
    assert await page.evaluate("() => (window.__notReloaded = true)")
    sim = derms.fleet.sims[derms.devices[0].device_id]
    sim.home.pv_available_w = 1000
    await expect(page.locator('[data-total="pv_w"]')).to_have_text(f"{3000 * (N - 1) + 1000:,}")
    first = page.locator(f'#devices tr[data-device="{derms.devices[0].device_id}"]')
    await expect(first.locator("td.pv")).to_have_text("1,000")
    assert await page.evaluate("() => window.__notReloaded === true")

    # A group: the south zone's totals and rows only.
    await page.select_option("#group", "zone:south")
    await expect(page.locator('[data-total="pv_w"]')).to_have_text(f"{3000 * (N // 2):,}")
    await expect(page.locator("#devices tbody tr[data-device]:visible")).to_have_count(N // 2)
    await page.select_option("#group", "all")

    # Search and state filter.
    await page.fill("#search", derms.devices[2].device_id)
    await expect(page.locator("#devices tbody tr[data-device]:visible")).to_have_count(1)
    await page.fill("#search", "")
    # A dot on the map shows its site's devices.
    await page.click(f'#map circle[data-device="{derms.devices[4].device_id}"]')
    await expect(page.locator("#search")).to_have_value(derms.devices[4].site_id)
    await expect(page.locator("#devices tbody tr[data-device]:visible")).to_have_count(1)
    await page.fill("#search", "")
    await page.select_option("#state-filter", "offline")
    await expect(page.locator("#devices tbody tr[data-device]:visible")).to_have_count(0)

    # A device goes quiet: offline in the table and on the map, with an alarm to acknowledge.
    assert derms.runtime.fleet is not None
    derms.runtime.fleet.stale_ms = 1500
    gone = derms.devices[N - 1]
    del derms.fleet.sims[gone.device_id]  # the Pi stops sending
    quiet = page.locator(f'#devices tr[data-device="{gone.device_id}"]')
    await expect(quiet).to_be_visible(timeout=15_000)  # the offline filter now shows it
    await expect(quiet.locator("td.state")).to_have_text("offline")
    await expect(page.locator(f'#map circle[data-device="{gone.device_id}"]')).to_have_class(
        re.compile("state-offline")
    )
    await expect(page.locator('[data-total="online"]').first).to_have_text(str(N - 1))
    alarm = page.locator("#alarms tbody tr", has_text=gone.device_id)
    await expect(alarm).to_have_count(1, timeout=15_000)
    await expect(alarm).to_contain_text("offline")
    await page.select_option("#state-filter", "")
    await page.screenshot(path=str(tmp_path / "fleet-offline.png"), full_page=True)
    await alarm.locator("button[data-ack]").click()
    await expect(alarm.locator(".alarm-state")).to_contain_text("acknowledged")
    await expect(alarm.locator("button[data-ack]")).to_have_count(0)

    async def acked() -> bool:
        assert derms.runtime.fleet is not None
        rows = await derms.runtime.fleet.store.alarms(open_only=True)
        return any(a.device_id == gone.device_id and a.acked_by for a in rows)

    await until(acked, timeout_s=10)
    assert errors == []


async def test_homeowner_may_not_watch_the_fleet(derms: Derms, browser: Browser) -> None:
    page = await browser.new_page()
    await log_in(page, derms.url, "hal@example.org", "/home")
    resp = await page.goto(derms.url + "/fleet")
    assert resp is not None and resp.status == 403
    await expect(page.locator(".error")).to_contain_text("role homeowner may not watch the fleet")
