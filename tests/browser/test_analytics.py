"""The homeowner's meter analytics page in headless Chromium, against a real aggregator on SQLite.

A homeowner with two sites (and a neighbour) has three days of 5-minute records on one site,
with one interval never sent, accepted and closed by the ledger. The page, in a browser set to
another time zone than the site's, shows the month of the latest data: its totals, ratios and
per-day table equal the meter API's numbers for the same local month (and what the device
sent), the missing interval is marked on its day, and the CSV link downloads the same days.
Drilling into the day with the gap shows its hours; the year view sums the days into months.
The page's local-period arithmetic agrees with the server's zoneinfo across DST changes.
Screenshots: analytics-month.png, analytics-day.png, analytics-year.png in the test's tmp_path.
"""

from __future__ import annotations

import calendar
import csv
import io
import math
import random
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, expect

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from edge.accounting import Channel
from protocol import topics
from tests.helpers.records import FakeDevice

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - a test credential
TZ = "America/New_York"
BROWSER_TZ = "Asia/Tokyo"  # the page must use the site's zone, not the browser's
DAYS = 3
STEP = 300
QUANTITIES = (
    "generated_wh",
    "load_wh",
    "imported_wh",
    "exported_wh",
    "self_consumed_wh",
    "charged_wh",
    "discharged_wh",
)
FIELDS = {
    Channel.GENERATED: "generated_wh",
    Channel.IMPORTED: "imported_wh",
    Channel.EXPORTED: "exported_wh",
    Channel.CHARGED: "charged_wh",
    Channel.DISCHARGED: "discharged_wh",
}


@pytest.fixture
def cloud_settings() -> dict[str, Any]:
    return {"ledger_grace_s": 0, "ledger_close_every_s": 3600}  # the test closes intervals


def kwh1(wh: int | None) -> str:
    """As the page prints it: kWh, one decimal, half up, thousands separated."""
    if wh is None:
        return "—"
    tenths = (abs(wh) + 50) // 100
    sign = "-" if wh < 0 and tenths else ""
    return f"{sign}{tenths // 10:,}.{tenths % 10}"


def pct1(num: int, den: int) -> str:
    if den <= 0:
        return "—"
    permille = min(max((2 * num * 1000 + den) // (2 * den), 0), 1000)
    return f"{permille // 10}.{permille % 10} %"


def midnight(tz: ZoneInfo, y: int, m: int, d: int) -> int:
    return int(datetime(y, m, d, tzinfo=tz).timestamp())


def local_day(tz: ZoneInfo, s: int) -> tuple[int, int, int]:
    t = datetime.fromtimestamp(s, UTC).astimezone(tz)
    return t.year, t.month, t.day


def month_bounds(tz: ZoneInfo, y: int, m: int) -> tuple[int, int]:
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return midnight(tz, y, m, 1), midnight(tz, ny, nm, 1)


def day_bounds(tz: ZoneInfo, y: int, m: int, d: int) -> tuple[int, int]:
    n = date(y, m, d) + timedelta(days=1)
    return midnight(tz, y, m, d), midnight(tz, n.year, n.month, n.day)


def iso(s: int) -> str:
    return datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z")


def home_flows(local_hour: float, rng: random.Random) -> dict[Channel, int]:
    """A day of a home with PV and a battery: surplus is split between battery and export,
    evening deficits come from the battery first, the rest from the grid."""
    sun = max(0.0, math.sin(math.pi * (local_hour - 6) / 12))
    gen = int(sun * 320) + (rng.randrange(0, 20) if sun > 0 else 0)
    load = 50 + rng.randrange(0, 60) + (80 if 17 <= local_hour < 22 else 0)
    out = dict.fromkeys(FIELDS, 0)
    out[Channel.GENERATED] = gen
    if gen >= load:
        out[Channel.CHARGED] = (gen - load) // 3
        out[Channel.EXPORTED] = gen - load - out[Channel.CHARGED]
    else:
        deficit = load - gen
        out[Channel.DISCHARGED] = min(deficit, 40) if local_hour >= 17 else 0
        out[Channel.IMPORTED] = deficit - out[Channel.DISCHARGED]
    return out


async def ready(page: Page, view: str) -> None:
    main = page.locator("main#analytics")
    await expect(main).to_have_attribute("data-view", view)
    await expect(main).to_have_attribute("data-state", "ready")


async def shown_period(page: Page) -> tuple[int, int]:
    main = page.locator("main#analytics")
    return int(await main.get_attribute("data-start") or 0), int(
        await main.get_attribute("data-end") or 0
    )


async def api_rows(page: Page, base: str, start: int, end: int, interval: str) -> list[Any]:
    resp = await page.request.get(
        f"{base}/api/v1/sites/site-roof/meter/intervals",
        params={"start": iso(start), "end": iso(end), "interval": interval},
    )
    assert resp.ok, await resp.text()
    rows: list[Any] = (await resp.json())["intervals"]
    return rows


def totals(rows: list[Any]) -> dict[str, int]:
    return {q: sum(r[q] for r in rows if r[q] is not None) for q in QUANTITIES}


async def check_totals(page: Page, rows: list[Any]) -> dict[str, int]:
    """The totals cards and the table's total row equal the API rows' sums."""
    want = totals(rows)
    for q, wh in want.items():
        await expect(page.locator(f'[data-total="{q}"]')).to_have_text(kwh1(wh))
        await expect(page.locator(f'[data-total="{q}"]')).to_have_attribute("data-wh", str(wh))
        cell = page.locator(f'#an-table tfoot td[data-q="{q}"]')
        await expect(cell).to_have_text(kwh1(wh))
        await expect(cell).to_have_attribute("data-wh", str(wh))
    load, gen = want["load_wh"], want["generated_wh"]
    await expect(page.locator('[data-ratio="self_sufficiency"]')).to_have_text(
        pct1(load - want["imported_wh"], load)
    )
    await expect(page.locator('[data-ratio="self_consumption"]')).to_have_text(
        pct1(want["self_consumed_wh"], gen)
    )
    return want


async def test_homeowner_meter_analytics(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    assert cloud.store is not None and cloud.ledger is not None and cloud.ingest is not None
    store, base = cloud.store, cloud.url
    tz = ZoneInfo(TZ)
    accounts = AccountStore(store.engine)
    hal = await accounts.create_account("hal@example.org", "Hal", PASSWORD, "homeowner", "approved")
    nia = await accounts.create_account("nia@example.org", "Nia", PASSWORD, "homeowner", "approved")
    await accounts.create_site("site-roof", hal.account_id, "Hal's roof")
    await accounts.create_site("site-cabin", hal.account_id, "Hal's cabin")
    await accounts.create_site("site-next", nia.account_id, "Next door")
    dev = FakeDevice("pi-roof", site_id="site-roof", capacity_w=100_000)
    await store.add_device(
        dev.device_id, dev.site_id, dev.public_key, dev.kid, dev.capacity_w, status="approved"
    )

    # Three days of 5-minute records up to 10 minutes ago; one interval, 30 hours before the
    # end, is never sent (a gap).
    now = int(time.time())
    last = now - now % STEP - 2 * STEP
    n = DAYS * 86400 // STEP
    first = last - (n - 1) * STEP
    gap = last - 30 * 12 * STEP
    rng = random.Random(11)
    sent: dict[int, dict[str, int]] = {}
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    for start in range(first, last + STEP, STEP):
        if start == gap:
            continue
        local = datetime.fromtimestamp(start, UTC).astimezone(tz)
        energy = home_flows(local.hour + local.minute / 60, rng)
        dev.next_start = start
        out = await cloud.ingest.handle(topic, dev.sign(energy).envelope)
        assert out.receipt.status == "accepted", out.receipt
        sent[start] = {FIELDS[ch]: wh for ch, wh in energy.items()}
    while await cloud.ledger.close_due() > 0:
        pass

    context = await browser.new_context(
        viewport={"width": 1300, "height": 1000}, timezone_id=BROWSER_TZ, locale="en-US"
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/login")
    await page.fill("input[name=email]", "hal@example.org")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base + "/home")
    for site in ("site-roof", "site-cabin"):
        r = await page.request.put(f"{base}/api/v1/sites/{site}/time-zone", data={"time_zone": TZ})
        assert r.ok, await r.text()

    # From "My home" to the analytics page: the month of the latest data, the site's month.
    await page.click("#analytics-link")
    await expect(page).to_have_url(re.compile(re.escape(base + "/home/analytics") + r"(\?.*)?$"))
    await ready(page, "month")
    await expect(page.locator("#an-site option")).to_have_count(2)  # Hal's two sites only
    await expect(page.locator("main#analytics")).to_have_attribute("data-site", "site-cabin")
    await page.select_option("#an-site", "site-roof")  # the one with data
    await expect(page.locator("main#analytics")).to_have_attribute("data-site", "site-roof")
    await ready(page, "month")
    await expect(page.locator("main")).not_to_contain_text("Next door")
    assert await page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone") == (
        BROWSER_TZ
    )
    # show the month with the gap (the previous one if the data crosses a month's end)
    gy, gm, gd = local_day(tz, gap)
    ly, lm, _ = local_day(tz, last)
    if (gy, gm) != (ly, lm):
        await page.click("#an-prev")
        await ready(page, "month")
    m_start, m_end = month_bounds(tz, gy, gm)
    assert await shown_period(page) == (m_start, m_end)
    await expect(page.locator("#an-period")).to_have_text(date(gy, gm, 1).strftime("%B %Y"))

    rows = await api_rows(page, base, m_start, m_end, "day")
    assert rows and all(r["interval_s"] in (82800, 86400, 90000) for r in rows)
    want = await check_totals(page, rows)
    in_month = [v for s, v in sent.items() if m_start <= s < m_end]
    for q in ("generated_wh", "imported_wh", "exported_wh", "charged_wh", "discharged_wh"):
        assert want[q] == sum(v[q] for v in in_month), q  # Wh for Wh what the device sent
    assert want["load_wh"] > 0 and want["generated_wh"] > 0

    body_rows = page.locator("#an-table tbody tr")
    await expect(body_rows).to_have_count(calendar.monthrange(gy, gm)[1])
    for r in rows:  # each day's row: the API's numbers
        tr = page.locator(f'#an-table tbody tr[data-start="{r["start"]}"]')
        for q in QUANTITIES:
            await expect(tr.locator(f'td[data-q="{q}"]')).to_have_text(kwh1(r[q]))
    gap_day = midnight(tz, gy, gm, gd)
    gap_row = page.locator(f'#an-table tbody tr[data-start="{gap_day}"]')
    await expect(gap_row).to_have_class("state-partial")
    await expect(gap_row.locator("td.state")).to_have_text("1 interval missing")
    await expect(page.locator("#an-gaps")).to_have_text(
        "1 interval missing in 1 day (hatched, with a dot): its values are the sum of the "
        "intervals that were read."
    )
    end_local = datetime.fromtimestamp(last + STEP, UTC).astimezone(tz)
    if (ly, lm) == (gy, gm) and (end_local.hour, end_local.minute) != (0, 0):
        # the day the data ends in (so far)
        last_day = midnight(tz, *local_day(tz, last))
        last_row = page.locator(f'#an-table tbody tr[data-start="{last_day}"]')
        await expect(last_row.locator("td.state")).to_have_text(f"so far: to {end_local:%H:%M}")
    await expect(page.locator("#an-svg .gap-dot")).to_have_count(1)
    await expect(
        page.locator(f'#an-svg .slot.state-partial[data-i="{gd - 1}"] rect.gap')
    ).to_have_count(1)
    await expect(page.locator("#an-svg rect.bar.prod")).to_have_count(
        sum(1 for r in rows if r["generated_wh"])
    )
    await expect(page.locator("#an-legend")).to_contain_text("production")
    await expect(page.locator("#an-legend")).to_contain_text("intervals missing")
    await expect(page.locator("#an-meta")).to_contain_text(TZ)
    await page.screenshot(path=str(tmp_path / "analytics-month.png"), full_page=True)

    # The CSV link: the same days as the API's JSON, as a file.
    href = await page.locator("#an-csv").get_attribute("href")
    assert href is not None and "format=csv" in href and "interval=day" in href
    async with page.expect_download() as got:
        await page.click("#an-csv")
    download = await got.value
    assert download.suggested_filename == "site-roof-day.csv"
    text = Path(await download.path()).read_text()
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:4] == ["start_iso", "interval_s", "state", "generated_wh"]
    assert len(table) == 1 + len(rows)
    assert [line[0] for line in table[1:]] == [r["start_iso"] for r in rows]

    # The series toggle: import and export bars instead.
    await page.check('input[name="an-series"][value="grid"]')
    await expect(page.locator("#an-svg rect.bar.exp").first).to_be_visible()
    await expect(page.locator("#an-svg rect.bar.prod")).to_have_count(0)
    await expect(page.locator("#an-legend")).to_contain_text("grid export")
    await page.check('input[name="an-series"][value="use"]')

    # The day with the gap, from its row: its hours, the API's 60-minute buckets.
    await gap_row.locator("th button").click()
    await ready(page, "day")
    d_start, d_end = day_bounds(tz, gy, gm, gd)
    assert await shown_period(page) == (d_start, d_end)
    hours = await api_rows(page, base, d_start, d_end, "60min")
    await check_totals(page, hours)
    await expect(page.locator("#an-table tbody tr")).to_have_count((d_end - d_start) // 3600)
    gap_hour = gap - (gap - d_start) % 3600
    hour_row = page.locator(f'#an-table tbody tr[data-start="{gap_hour}"]')
    await expect(hour_row.locator("td.state")).to_have_text("1 interval missing")
    await expect(page.locator("#an-svg .gap-dot")).to_have_count(1)
    await expect(page.locator("#an-gaps")).to_contain_text("1 interval missing in 1 hour")
    await expect(page.locator("#an-svg text.axis-title").last).to_have_text(
        f"hour of the day ({TZ})"
    )
    href = await page.locator("#an-csv").get_attribute("href")
    assert href is not None and "interval=60min" in href
    csv_resp = await page.request.get(base + href)
    assert csv_resp.ok
    assert len((await csv_resp.text()).strip().splitlines()) == 1 + len(hours)
    await page.screenshot(path=str(tmp_path / "analytics-day.png"), full_page=True)

    # Previous and next move by a local day.
    await page.click("#an-next")
    await ready(page, "day")
    nxt = await shown_period(page)
    assert nxt[0] == d_end
    await page.click("#an-prev")
    await ready(page, "day")
    assert await shown_period(page) == (d_start, d_end)

    # The year: the days summed into local months.
    await page.click('.an-views button[data-view="year"]')
    await ready(page, "year")
    y_start, y_end = midnight(tz, gy, 1, 1), midnight(tz, gy + 1, 1, 1)
    assert await shown_period(page) == (y_start, y_end)
    year_days = await api_rows(page, base, y_start, y_end, "day")
    await check_totals(page, year_days)
    await expect(page.locator("#an-table tbody tr")).to_have_count(12)
    for month in {local_day(tz, r["start"])[1] for r in year_days}:
        days = [r for r in year_days if local_day(tz, r["start"])[1] == month]
        tr = page.locator(f'#an-table tbody tr[data-start="{midnight(tz, gy, month, 1)}"]')
        await expect(tr.locator('td[data-q="generated_wh"]')).to_have_text(
            kwh1(sum(r["generated_wh"] or 0 for r in days))
        )
    await expect(page.locator("#an-svg .gap-dot")).to_have_count(1)
    await page.screenshot(path=str(tmp_path / "analytics-year.png"), full_page=True)

    # The other site has no data yet: an empty chart, not zeros.
    await page.select_option("#an-site", "site-cabin")
    await expect(page.locator("main#analytics")).to_have_attribute("data-site", "site-cabin")
    await ready(page, "year")
    await expect(page.locator("#an-svg .empty-chart")).to_have_text("No meter data for this period")
    await expect(page.locator('[data-total="generated_wh"]')).to_have_text("—")

    # The page's local periods agree with zoneinfo across DST changes (and a zone whose
    # clocks change at midnight).
    for zone, (y, m, d) in (
        ("Europe/Berlin", (2026, 3, 29)),
        ("Europe/Berlin", (2026, 10, 25)),
        ("America/New_York", (2026, 11, 1)),
        ("America/Havana", (2026, 3, 8)),  # 00:00 does not happen: the day starts at 01:00
        ("America/Havana", (2026, 10, 31)),
        ("America/Havana", (2026, 11, 1)),  # 00:00 happens twice: the first
        ("America/Santiago", (2026, 4, 4)),
        ("America/Santiago", (2026, 9, 6)),
        ("Australia/Lord_Howe", (2026, 4, 5)),  # half an hour back
        ("Asia/Kolkata", (2026, 12, 7)),
    ):
        got_day = await page.evaluate(
            "([z, y, m, d]) => gridmintAnalytics.periodBounds(z, 'day', {y, m, d})",
            [zone, y, m, d],
        )
        assert tuple(got_day) == day_bounds(ZoneInfo(zone), y, m, d), zone
        got_month = await page.evaluate(
            "([z, y, m, d]) => gridmintAnalytics.periodBounds(z, 'month', {y, m, d})",
            [zone, y, m, d],
        )
        assert tuple(got_month) == month_bounds(ZoneInfo(zone), y, m), zone
    berlin = ZoneInfo("Europe/Berlin")
    assert day_bounds(berlin, 2026, 3, 29)[1] - day_bounds(berlin, 2026, 3, 29)[0] == 23 * 3600

    # The page on the day New York's clocks go back: 25 hours, 01:00 twice.
    await page.goto(f"{base}/home/analytics?site=site-roof&view=day&date=2026-11-01")
    await ready(page, "day")
    assert await shown_period(page) == day_bounds(tz, 2026, 11, 1)
    await expect(page.locator("#an-period")).to_have_text(
        re.compile(r"^Sunday,? 1 November 2026 \(25 hours: the clocks changed\)$")
    )
    labels = await page.locator("#an-table tbody th").all_inner_texts()
    assert len(labels) == 25
    assert labels[:3] == ["00:00–01:00 (UTC−4)", "01:00–02:00 (UTC−4)", "01:00–02:00 (UTC−5)"]
    assert labels[-1] == "23:00–24:00 (UTC−5)"

    assert errors == []
    await context.close()
