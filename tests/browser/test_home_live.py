"""The homeowner's page, DERMS part, in headless Chromium against a real aggregator, a real
Mosquitto and simulated Pis: their home's live power flow follows the Pi's telemetry without a
reload, today's and this month's energy sum their tokens, and a grid event their battery took
part in is listed with what it was asked and delivered. The neighbour's site stays hidden."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from cloud.domain.dispatch_events import EventRequest
from protocol import topics
from protocol.dispatch import ControlMode
from simulators.fleet import first_interval
from tests.browser.derms import DEPLOYMENT, HOMEOWNER, Derms, N, log_in

pytestmark = [pytest.mark.browser, pytest.mark.broker]


async def test_homeowner_sees_live_flow_energy_and_their_event(
    derms: Derms, browser: Browser, tmp_path: Path
) -> None:
    rt = derms.runtime
    assert rt.ingest is not None and rt.dispatch is not None
    mine, theirs = derms.devices[0], derms.devices[1]

    # Three intervals of generation from the homeowner's Pi, closed before now.
    first = first_interval(3)
    whs = (200, 300, 400)  # a 5 kW inverter makes at most 416 Wh in 5 minutes
    topic = topics.topic(mine.site_id, mine.device_id, topics.Channel.TOKENS)
    for k, wh in enumerate(whs):
        token = mine.mint(first + k * 300, wh, DEPLOYMENT.encode())
        out = await rt.ingest.handle(topic, token.envelope)
        assert out.receipt.status == "accepted", out.receipt
    now = datetime.now(UTC)
    day = int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    month = int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())
    today_wh = sum(wh for k, wh in enumerate(whs) if first + k * 300 >= day)
    month_wh = sum(wh for k, wh in enumerate(whs) if first + k * 300 >= month)

    page = await browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await log_in(page, derms.url, HOMEOWNER, "/home")
    await expect(page.locator("section.site")).to_have_count(1)
    site = page.locator(f'section.site[data-site="{mine.site_id}"]')

    def live(name: str):  # type: ignore[no-untyped-def]
        return site.locator(f'[data-live="{name}"]')

    # The sim home: 3000 W of PV, 800 W of load, the battery idle at 60 %.
    await expect(live("pv_w")).to_have_text("3,000")
    await expect(live("load_w")).to_have_text("800")
    await expect(live("grid_w")).to_have_text("2,200")
    await expect(live("grid_dir")).to_have_text("exporting")
    await expect(live("battery_dir")).to_have_text("idle")
    await expect(live("soc")).to_have_text("60.0 %")
    await expect(live("state")).to_have_text("1 of 1 devices online")
    await expect(site.locator('[data-energy="today.generated_wh"]')).to_have_text(f"{today_wh:,}")
    await expect(site.locator('[data-energy="month.generated_wh"]')).to_have_text(f"{month_wh:,}")
    await expect(site.locator("table.site-events tbody")).to_contain_text("none yet")

    # A cloud passes: the page follows the Pi's telemetry without a reload.
    assert await page.evaluate("() => (window.__notReloaded = true)")
    derms.fleet.sims[mine.device_id].home.pv_available_w = 500
    await expect(live("pv_w")).to_have_text("500")
    await expect(live("grid_w")).to_have_text("300")
    await expect(live("grid_dir")).to_have_text("importing")

    # The grid operator calls on the north zone's batteries: 3 kW over 3 homes.
    await rt.dispatch.create_event(
        EventRequest(
            group="zone:north",
            control=ControlMode.OP_MOD_FIXED_W,
            value=3000,
            start=int(time.time()),
            duration_s=600,
            name="evening peak",
        ),
        by="test-operator",
    )
    await expect(live("battery_w")).to_have_text("1,000", timeout=20_000)
    await expect(live("battery_dir")).to_have_text("discharging")
    await expect(live("grid_dir")).to_have_text("exporting")  # 500 + 1000 - 800 out
    row = site.locator("table.site-events tbody tr[data-event]")
    await expect(row).to_have_count(1, timeout=15_000)
    await expect(row).to_contain_text("evening peak")
    await expect(row).to_contain_text("Battery power")
    await expect(row.locator("td.status")).to_have_text("active")
    await expect(row.locator("td.asked")).to_have_text("1,000")
    await expect(row.locator("td.delivered")).to_have_text("1,000", timeout=15_000)
    await expect(row.locator("td.responses")).to_have_text("started", timeout=15_000)
    assert await page.evaluate("() => window.__notReloaded === true")
    await page.screenshot(path=str(tmp_path / "home-live.png"), full_page=True)

    # The neighbour's home is not on the page, and its API answers as if it did not exist.
    await expect(page.locator("main")).not_to_contain_text(theirs.site_id)
    for what in ("live", "energy", "events"):
        resp = await page.request.get(f"{derms.url}/api/v1/sites/{theirs.site_id}/{what}")
        assert resp.status == 404, what
    assert N > 1 and errors == []
