"""A buyer's journey through the carbon shop's pages in headless Chromium, against the real
aggregator (CloudRuntime on SQLite, the embedded sandbox payment provider, real HTTP).

A provider's three projects are on sale (two in USD, one in EUR) and an admin has stored a
USD->EUR rate. A new individual registers on /register with no affiliation; the verification
mail goes through a real SMTP server (aiosmtpd); before the link is opened a checkout is refused
(the email is not verified); the link read from the mail signs the buyer in. The buyer computes
a footprint and saves it as the baseline, searches
the shop with filters, sees a price in EUR naming the rate, its date and source, opens a
project's chain-of-custody report, tries to buy more kilograms than are left (the API's reason
is shown) and a lot in another currency (the basket refuses), then buys 120 kg, pays with the
sandbox provider, sees the order complete, opens the printable statement (serials and
beneficiary), sees the inventory reduced on the shop page and the retired kilograms on the
footprint dashboard.

Screenshots of every step go to tmp_path and to $GRIDMINT_ARTIFACTS (default:
artifacts/shop-journey/ in the repository).
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from cloud.domain.footprint import answers, compute
from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from tests.helpers.smtp import SmtpServer, verification_link

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - a test credential
REPO = Path(__file__).resolve().parents[2]
BUYER_NAME = "Bea Buyer"
BUYER_EMAIL = "bea@example.org"


def artifacts_dir() -> Path:
    return Path(os.environ.get("GRIDMINT_ARTIFACTS") or REPO / "artifacts" / "shop-journey")


class Shots:
    """Numbered screenshots to tmp_path and the artifacts directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.dirs = [tmp_path / "shots", artifacts_dir()]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        for old in self.dirs[1].glob("*.png"):  # an earlier run's, which may be numbered apart
            old.unlink()
        self.n = 0

    async def take(self, page: Page, name: str) -> None:
        self.n += 1
        first = self.dirs[0] / f"{self.n:02d}-{name}.png"
        await page.screenshot(path=str(first), full_page=True)
        for d in self.dirs[1:]:
            shutil.copyfile(first, d / first.name)


@pytest.fixture
def cloud_settings(smtp_server: SmtpServer) -> dict[str, Any]:
    """The aggregator mails through the test's SMTP server."""
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_server.port,
        "smtp_from": "gridmint <no-reply@gridmint.test>",
    }


# -------------------------------------------------------------------------------------------
# Sign-up. The journey registers on the page (`register_on_the_page`); the API-only test below
# makes its buyer through the accounts store.


async def register_on_the_page(
    page: Page, base: str, smtp_server: SmtpServer, shots: Shots
) -> None:
    """A new individual registers with no affiliation; checkout is refused until the mailed
    link (read from the SMTP server) is opened, which signs the buyer in on /shop."""
    await page.goto(base + "/login")
    await page.click("text=Create an account")
    await expect(page).to_have_url(base + "/register")
    await page.check("input[name=account_type][value=individual]")
    await expect(page.locator("#business-fields")).to_be_hidden()
    await page.select_option("select[name=affiliation]", "none")
    await page.fill("input[name=display_name]", BUYER_NAME)
    await page.fill("input[name=email]", BUYER_EMAIL)
    await page.fill("input[name=password]", PASSWORD)
    await shots.take(page, "register")
    await page.click("button[type=submit]")
    await expect(page.locator("h2")).to_have_text("Check your email")
    await shots.take(page, "check-your-email")
    mail = await smtp_server.wait_for_mail(BUYER_EMAIL)

    # Signed in before verifying, the buyer may browse but not pay.
    r = await page.request.post(
        base + "/api/v1/login", data={"email": BUYER_EMAIL, "password": PASSWORD}
    )
    assert r.ok, await r.text()
    r = await page.request.post(
        base + "/api/v1/shop/orders",
        data={"lines": [{"lot_id": "lot_x", "kg": 1}], "currency": "USD", "beneficiary": "x"},
    )
    assert r.status == 403 and "verify your email address" in (await r.json())["detail"]

    link = verification_link(mail)
    assert link.startswith(base + "/verify-email?token=")
    await page.goto(link)
    await expect(page).to_have_url(base + "/shop")
    me = await (await page.request.get(base + "/api/v1/me")).json()
    assert (me["email"], me["email_verified"], me["role"]) == (BUYER_EMAIL, True, "buyer")


async def sign_up_buyer(cloud: CloudRuntime) -> tuple[str, str]:
    """An approved buyer account; returns (email, password)."""
    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    await accounts.create_account(BUYER_EMAIL, BUYER_NAME, PASSWORD, "buyer", "approved")
    return BUYER_EMAIL, PASSWORD


# -------------------------------------------------------------------------------------------
# The shop's stock, through the JSON API as a provider and an admin would make it.


async def token_for(cloud: CloudRuntime, email: str, name: str, role: str) -> str:
    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    a = await accounts.create_account(email, name, PASSWORD, role, "approved")
    return await accounts.issue_token(a.account_id, 3600)


PROJECTS: list[dict[str, Any]] = [
    {
        "name": "Amazon Rainforest Restoration",
        "kind": "forestry",
        "country": "BR",
        "standard": "Verra VCS",
        "verifier": "SCS Global Services",
        "serial_prefix": "VCS-1234-2024",
        "vintage": 2024,
        "start_date": "2022-01-01",
        "end_date": "2031-12-31",
        "description": "Native tree planting on degraded pasture in Pará.",
        "lot": ("VCS-1234-2024-1..300", 1850, "USD"),
    },
    {
        "name": "Vermont Landfill Gas Capture",
        "kind": "methane_capture",
        "country": "US",
        "standard": "Climate Action Reserve",
        "verifier": "Ruby Canyon Environmental",
        "serial_prefix": "CAR-889-2023",
        "vintage": 2023,
        "lot": ("CAR-889-2023-1..5000", 1200, "USD"),
    },
    {
        "name": "Baltic Wind Park",
        "kind": "renewable_energy",
        "country": "LT",
        "standard": "Gold Standard",
        "verifier": "TÜV SÜD",
        "serial_prefix": "GS-5521-2024",
        "vintage": 2024,
        "lot": ("GS-5521-2024-1..2000", 900, "EUR"),
    },
]


async def stock_the_shop(cloud: CloudRuntime) -> dict[str, dict[str, Any]]:
    provider = await token_for(cloud, "provider@example.org", "Pia Provider", "provider")
    admin = await token_for(cloud, "admin@example.org", "Ada Admin", "admin")
    out: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=cloud.url, timeout=10) as client:
        for spec in PROJECTS:
            body = {k: v for k, v in spec.items() if k != "lot"}
            r = await client.post(
                "/api/v1/shop/projects",
                json=body,
                headers={"Authorization": f"Bearer {provider}"},
            )
            assert r.status_code == 201, r.text
            project = r.json()
            serials, price, currency = spec["lot"]
            r = await client.post(
                f"/api/v1/shop/projects/{project['project_id']}/lots",
                json={"serials": serials, "price_minor_per_t": price, "currency": currency},
                headers={"Authorization": f"Bearer {provider}"},
            )
            assert r.status_code == 201, r.text
            out[spec["kind"]] = {"project": project, "lot": r.json()}
        r = await client.put(
            "/api/v1/fx-rates",
            json={
                "base": "USD",
                "quote": "EUR",
                "rate_ppm": 921_500,
                "as_of": datetime.now(UTC).date().isoformat(),
                "source": "ECB reference rate",
            },
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200, r.text
    return out


async def set_range(page: Page, selector: str, value: int) -> None:
    """Move a slider the way a user's drag ends: the value, then an input event."""
    await page.eval_on_selector(
        selector,
        "(el, v) => { el.value = String(v);"
        " el.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )


async def test_buyer_journey(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    stock = await stock_the_shop(cloud)
    forest = stock["forestry"]
    forest_lot = forest["lot"]["lot_id"]
    shots = Shots(tmp_path)
    base = cloud.url

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Register, verify the email through the mailed link: the new buyer lands in the shop.
    await register_on_the_page(page, base, smtp_server, shots)
    await expect(page.locator("section.project")).to_have_count(3)
    await shots.take(page, "shop")

    # 1. The footprint: the calculator's live total is the server's, and it is saved.
    await page.click("#footprint-link")
    await expect(page).to_have_url(base + "/footprint")
    await expect(page.locator("#fp-total")).to_have_text("20,000")  # the average's answers
    await expect(page.locator("#fp-acres")).to_have_text("8.00")
    await set_range(page, "#fp-cars", 2)
    await set_range(page, "#fp-public_transport_pct", 25)
    await set_range(page, "#fp-short_haul_flights", 3)
    await page.select_option("#fp-diet", "vegetarian")
    mine = compute(
        answers(
            {"cars": 2, "public_transport_pct": 25, "short_haul_flights": 3, "diet": "vegetarian"}
        )
    )
    await expect(page.locator("#fp-total")).to_have_text(f"{mine.total_kg:,}")
    await expect(page.locator("#fp-cars-out")).to_have_text("2")
    await expect(page.locator('#fp-lines tr[data-key="cars"] td.num').first).to_have_text(
        f"{mine.lines[0].kg:,}"
    )
    await page.click("#fp-save")
    await expect(page.locator("#fp-message")).to_contain_text(
        f"Saved as your baseline: {mine.total_kg:,} kg"
    )
    await expect(page.locator("#fp-baseline")).to_contain_text(f"Your baseline: {mine.total_kg:,}")
    month = datetime.now(UTC).strftime("%Y-%m")
    await expect(page.locator(f'#fp-months tr[data-month="{month}"]')).to_have_count(1)
    await expect(page.locator(f'#fp-chart rect.bar[data-month="{month}"]')).to_have_count(2)
    await shots.take(page, "footprint-saved")

    # 2. Search with filters: forestry in Brazil.
    await page.click("#shop-link")
    await page.select_option("#f-kind", "forestry")
    await page.fill("#f-country", "br")
    await page.fill("#f-max-price", "20")
    await page.click("#f-search")
    await expect(page).to_have_url(re.compile(r"/shop\?kind=forestry&country=br"))
    await expect(page.locator("section.project")).to_have_count(1)
    card = page.locator(f'section.project[data-project="{forest["project"]["project_id"]}"]')
    await expect(card.locator("h2")).to_contain_text("Amazon Rainforest Restoration")
    await expect(card).to_contain_text("BR · Verra VCS · vintage 2024")
    await expect(card.locator(".available")).to_have_text("300 kg available")
    # The price also in EUR with the newest stored rate, named with its date and source.
    await page.select_option("#display-currency", "EUR")
    row = card.locator(f'tr.lot[data-lot="{forest_lot}"]')
    await expect(row.locator("td.fx")).to_have_text("≈ 17.05 EUR")  # 18.50 x 0.9215 = 17.04775
    await expect(page.locator("#fx-note")).to_contain_text(
        "1 USD = 0.9215 EUR (ECB reference rate, "
    )
    await shots.take(page, "search-forestry-br")

    # A filter that fits nothing, and a bad one, say so.
    await page.goto(base + "/shop?kind=forestry&country=US")
    await expect(page.locator("p.empty")).to_have_text("No project fits these filters.")
    await page.goto(base + "/shop?vintage=old")
    await expect(page.locator("p.error")).to_have_text("vintage must be a whole number")
    await page.goto(base + "/shop?kind=forestry&country=br")

    # 3. The project's chain-of-custody report.
    await page.click(
        f'section.project[data-project="{forest["project"]["project_id"]}"] a.project-link'
    )
    await expect(page).to_have_url(base + f"/shop/projects/{forest['project']['project_id']}")
    await expect(page.locator("#project-name")).to_contain_text("Amazon Rainforest Restoration")
    custody = page.locator("#custody")
    await expect(custody.locator("#custody-registration")).to_contain_text("SCS Global Services")
    await expect(custody.locator(".custody-lot h4")).to_have_text("VCS-1234-2024-1..300")
    await expect(
        custody.locator('#custody-events tr.event[data-kind="project_registered"]')
    ).to_have_count(1)
    await expect(custody.locator('#custody-events tr.event[data-kind="lot_added"]')).to_have_count(
        1
    )
    await expect(custody.locator("#custody-retirements")).to_contain_text("None of this project")
    await shots.take(page, "custody-before")

    # 4. Bad paths: more kg than are left (the API's reason), and a lot in another currency.
    lot_row = page.locator(f'tr.lot[data-lot="{forest_lot}"]')
    await lot_row.locator("input.add-kg").fill("500")
    await lot_row.locator("button.add-lot").click()
    await expect(page.locator("#basket-message")).to_contain_text("Added 500 kg")
    await expect(page.locator("#basket-count")).to_have_text("1")
    await page.click("#basket-link")
    await expect(page).to_have_url(base + "/shop/checkout")
    await page.click("#retire-now")
    await expect(page.locator("#checkout-error")).to_have_text(
        f"The shop refused the order: lot {forest_lot} has only 300 kg left (500 kg were asked for)"
    )
    await shots.take(page, "checkout-not-enough-units")
    await page.locator(f'#basket tr[data-lot="{forest_lot}"] button.remove').click()
    await expect(page.locator("#basket tr.empty")).to_have_count(1)

    await page.goto(base + f"/shop/projects/{forest['project']['project_id']}")
    await lot_row.locator("input.add-kg").fill("120")
    await lot_row.locator("button.add-lot").click()
    await expect(page.locator("#basket-message")).to_contain_text("Added 120 kg")
    wind = stock["renewable_energy"]
    await page.goto(base + "/shop?kind=renewable_energy")
    await page.locator(f'tr.lot[data-lot="{wind["lot"]["lot_id"]}"] button.add-lot').click()
    await expect(page.locator("#basket-message")).to_contain_text(
        "Your basket is in USD and this lot is priced in EUR"
    )
    await expect(page.locator("#basket-count")).to_have_text("1")

    # 5. Checkout: the beneficiary defaults to the account's name; pay with the sandbox.
    await page.click("#basket-link")
    await expect(page.locator("#beneficiary")).to_have_value(BUYER_NAME)
    await expect(page.locator("#basket-total")).to_have_text("2.22 USD")  # 120 x 18.50 / 1000
    await page.fill("#reason", "Offsetting my 2026 flights")
    await shots.take(page, "checkout")
    await page.click("#retire-now")
    await expect(page.locator("#pay")).to_be_visible()
    await expect(page.locator("#pay-total")).to_have_text("2.22 USD")
    await expect(page.locator("#pay-kg")).to_have_text("120")
    await expect(page.locator("#pay-beneficiary")).to_have_text(BUYER_NAME)
    await expect(page.locator("#pay-lines")).to_contain_text(
        "120 kg of Amazon Rainforest Restoration, serials VCS-1234-2024-1..120: 2.22 USD"
    )
    await expect(page.locator("#checkout-form")).to_be_hidden()
    await expect(page.locator("#basket-count")).to_have_text("0")
    await shots.take(page, "payment-step")
    # The order's own page, open in another tab before the payment, follows it to complete.
    pending_url = await page.locator("#pay-order").get_attribute("href")
    assert pending_url is not None
    watcher = await context.new_page()
    watcher.on("pageerror", lambda e: errors.append(str(e)))
    await watcher.goto(base + pending_url)
    await expect(watcher.locator("#order-state")).to_have_text("reserved")
    await shots.take(watcher, "order-reserved")
    await page.click("#pay-sandbox")
    await expect(watcher.locator("#order-state")).to_have_text("complete")
    await expect(watcher.locator("#statement-link")).to_be_visible()
    await watcher.close()

    # 6. The order completes; its statement names serials and beneficiary.
    await expect(page).to_have_url(re.compile(r"/shop/orders/ord_[0-9a-f]+$"))
    order_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#order-state")).to_have_text("complete")
    await expect(page.locator("#order-beneficiary")).to_have_text(BUYER_NAME)
    await expect(page.locator("#statement-link")).to_be_visible()
    await shots.take(page, "order-complete")
    await page.click("#statement-link")
    await expect(page).to_have_url(base + f"/shop/orders/{order_id}/statement")
    await expect(page.locator("#st-beneficiary")).to_have_text(BUYER_NAME)
    await expect(page.locator("#st-reason")).to_have_text("Offsetting my 2026 flights")
    await expect(page.locator("#st-retirements td.serials")).to_have_text(["VCS-1234-2024-1..120"])
    await expect(page.locator("#st-retirements")).to_contain_text("Amazon Rainforest Restoration")
    await expect(page.locator("#st-kg")).to_have_text("120 kg CO2e")
    await expect(page.locator("#st-paid")).to_contain_text("2.22 USD via sandbox")
    await expect(page.locator("#print")).to_have_text("Print / save as PDF")
    # the retirement is a leaf of the signed ledger: its proof is on the statement
    proof = page.locator("div#ledger-proof")
    await expect(proof.locator("#statement-leaves tr.leaf")).to_have_count(2)
    await expect(proof.locator("#statement-leaves")).to_contain_text("OrderPaid")
    await expect(proof.locator("#statement-leaves")).to_contain_text("Retired")
    await expect(proof).to_contain_text("in the checkpoint of")
    await expect(proof.locator("#retirement-leaf-hash")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    await shots.take(page, "statement")
    await page.emulate_media(media="print")
    await expect(page.locator("#print")).to_be_hidden()
    await shots.take(page, "statement-print")
    await page.emulate_media(media="screen")

    # 7. The inventory is reduced on the shop page, the custody report shows the retirement.
    await page.click("#shop-link")
    card = page.locator(f'section.project[data-project="{forest["project"]["project_id"]}"]')
    await expect(card.locator(".available")).to_have_text("180 kg available")
    await expect(card.locator(f'tr.lot[data-lot="{forest_lot}"] td.lot-available')).to_have_text(
        "180 kg"
    )
    # The chosen display currency stays chosen; a lot already in it shows its own price.
    methane, wind_lot = stock["methane_capture"]["lot"]["lot_id"], wind["lot"]["lot_id"]
    await expect(page.locator("#display-currency")).to_have_value("EUR")
    await expect(page.locator(f'tr.lot[data-lot="{methane}"] td.fx')).to_have_text("≈ 11.06 EUR")
    await expect(page.locator(f'tr.lot[data-lot="{wind_lot}"] td.fx')).to_have_text("9.00 EUR")
    await shots.take(page, "shop-after")
    await card.locator("a.project-link").click()
    await expect(page.locator("#custody-retirements")).to_contain_text("VCS-1234-2024-1..120")
    await expect(page.locator('#custody-events tr.event[data-kind="retired"]')).to_have_count(1)
    await shots.take(page, "custody-after")

    # 8. Order history and the footprint dashboard count the retired kilograms.
    await page.click("#orders-link")
    order_row = page.locator(f'#orders tr[data-order="{order_id}"]')
    await expect(order_row.locator(".badge")).to_have_text("complete")
    await expect(order_row).to_contain_text("2.22 USD")
    await shots.take(page, "orders")
    await page.click("#footprint-link")
    this_month = page.locator(f'#fp-months tr[data-month="{month}"] td')
    await expect(this_month.nth(2)).to_have_text("120")
    await expect(page.locator("#fp-baseline")).to_contain_text("Offsets retired for you: 120 kg")
    await expect(page.locator("#fp-total")).to_have_text(f"{mine.total_kg:,}")  # the baseline
    await expect(page.locator("#fp-cars")).to_have_value("2")
    await shots.take(page, "footprint-dashboard")

    assert errors == []
    await context.close()


async def test_footprint_api_refuses_bad_answers(cloud: CloudRuntime) -> None:
    """422 with the calculator's plain reason; nothing is saved."""
    email, password = await sign_up_buyer(cloud)
    async with httpx.AsyncClient(base_url=cloud.url, timeout=10) as client:
        r = await client.post("/api/v1/login", json={"email": email, "password": password})
        token = r.json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        r = await client.post("/api/v1/footprint", json={"cars": 7}, headers=h)
        assert r.status_code == 422
        assert r.json()["detail"] == "cars must be from 0 to 5 (got 7)"
        r = await client.get("/api/v1/footprint", headers=h)
        assert r.json()["baseline"] is None and r.json()["history"] == []
        r = await client.post("/api/v1/footprint", json={"cars": 0, "diet": "vegan"}, headers=h)
        assert r.status_code == 201 and r.json()["total_kg"] == 20_000 - 4_600 - 1_000
        r = await client.get("/api/v1/footprint", headers=h)
        assert r.json()["baseline"]["total_kg"] == 14_400
        assert len(r.json()["months"]) == 1


async def test_pay_now_retire_later_from_the_order_page(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    """ "Pay now, retire later": after the sandbox payment the order page shows the units as
    the buyer's, not retired, with a retirement form; retiring names the beneficiary chosen
    then, and the statement says so."""
    stock = await stock_the_shop(cloud)
    forest = stock["forestry"]
    email, password = await sign_up_buyer(cloud)
    base = cloud.url
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.goto(base + f"/shop/projects/{forest['project']['project_id']}")
    row = page.locator(f'tr.lot[data-lot="{forest["lot"]["lot_id"]}"]')
    await row.locator("input.add-kg").fill("40")
    await row.locator("button.add-lot").click()
    await expect(page.locator("#basket-message")).to_contain_text("Added 40 kg")
    await page.goto(base + "/shop/checkout")
    await page.check("#retire-later")
    await page.click("#retire-now")
    await expect(page.locator("#pay")).to_be_visible()
    await page.click("#pay-sandbox")
    await expect(page).to_have_url(re.compile(r"/shop/orders/ord_[0-9a-f]+$"))
    await expect(page.locator("#order-state")).to_have_text("placed")
    await expect(page.locator("#order-explain")).to_contain_text("not yet retired")
    await expect(page.locator("#retire-form")).to_be_visible()
    await expect(page.locator("#statement-box")).to_be_hidden()
    await page.screenshot(path=str(tmp_path / "retire-later.png"), full_page=True)
    await page.fill("#retire-beneficiary", "Acme Ltd")
    await page.fill("#retire-reason", "FY2026 travel")
    await page.click("#retire-order")
    await expect(page.locator("#order-state")).to_have_text("complete")
    await expect(page.locator("#order-beneficiary")).to_have_text("Acme Ltd")
    await expect(page.locator("#retire-form")).to_be_hidden()
    await page.click("#statement-link")
    await expect(page.locator("#st-beneficiary")).to_have_text("Acme Ltd")
    await expect(page.locator("#st-reason")).to_have_text("FY2026 travel")
    await expect(page.locator("#st-retirements td.serials")).to_have_text(["VCS-1234-2024-1..40"])
    assert errors == []


async def test_a_monthly_subscription_from_the_project_page(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    """A package sized to the buyer's footprint (no baseline: the 20 t average, so a quarter
    is 417 kg a month), subscribed on the project page: this month's order is made at once
    and paid on its page; the orders page lists the subscription with its month, and
    cancelling it there stops it."""
    stock = await stock_the_shop(cloud)
    gas = stock["methane_capture"]
    email, password = await sign_up_buyer(cloud)
    base = cloud.url
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.goto(base + f"/shop/projects/{gas['project']['project_id']}")
    await expect(page.locator("#subscribe-kg option")).to_have_text(
        [
            "25 % of my footprint: 417 kg a month",
            "50 % of my footprint: 834 kg a month",
            "all of my footprint: 1667 kg a month",
        ]
    )
    await page.select_option("#subscribe-kg", "417")
    await page.click("#subscribe")
    await expect(page.locator("#subscribe-result")).to_contain_text("This month's order")
    await page.screenshot(path=str(tmp_path / "subscribed.png"), full_page=True)
    await page.click("#subscription-order")
    await expect(page.locator("#order-state")).to_have_text("reserved")
    await page.click("#pay-sandbox")
    await expect(page.locator("#order-state")).to_have_text("complete")
    await page.goto(base + "/shop/orders")
    row = page.locator("#subscriptions tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("Vermont Landfill Gas Capture")
    await expect(row).to_contain_text("417 (USD)")
    await expect(row.locator("a.mono")).to_have_count(1)  # this month's order
    await row.locator("button.cancel-subscription").click()
    await expect(page.locator("#subscriptions tbody tr")).to_contain_text("cancelled")
    assert errors == []
