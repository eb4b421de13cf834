"""The homeowner's "Who can read my meter data" on /home, in headless Chromium against a real
aggregator on SQLite: the homeowner grants a utility client their site from the directory, the
client then reads it through the Connect API; the homeowner revokes it and the client's very
next request is refused; the recent log shows both, by "you". A grant the API refuses (a client
revoked since the page loaded) shows the API's own message. Screenshots: the test's tmp_path,
copied to /tmp (home-access-*.png) like the trading desk's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - a test credential
SHOTS = Path("/tmp")


async def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"home-access-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, SHOTS / path.name)


async def test_homeowner_grants_and_revokes_meter_access(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    assert cloud.store is not None
    base = cloud.url
    accounts = AccountStore(cloud.store.engine)
    hal = await accounts.create_account(
        "home@example.org", "Hal", PASSWORD, "homeowner", "approved"
    )
    nia = await accounts.create_account(
        "next@example.org", "Nia", PASSWORD, "homeowner", "approved"
    )
    admin = await accounts.create_account("root@example.org", "Ada", PASSWORD, "admin", "approved")
    await accounts.create_site("site-home", hal.account_id, "Hal's roof")
    await accounts.create_site("site-next", nia.account_id, "Next door")
    as_admin = {"Authorization": f"Bearer {await accounts.issue_token(admin.account_id)}"}

    async with httpx.AsyncClient(base_url=base) as http:
        clients = {}
        for name in ("Northgrid Utility", "Southern Power"):
            r = await http.post("/api/v1/utility-clients", json={"name": name}, headers=as_admin)
            assert r.status_code == 201, r.text
            clients[name] = r.json()
        north = clients["Northgrid Utility"]
        r = await http.post(
            "/api/v1/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": north["client_id"],
                "client_secret": north["client_secret"],
            },
        )
        assert r.status_code == 200, r.text
        as_north = {"Authorization": f"Bearer {r.json()['access_token']}"}

        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(base + "/login")
        await page.fill("input[name=email]", "home@example.org")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await expect(page).to_have_url(base + "/home")

        box = page.locator('.meter-access[data-site="site-home"]')
        await expect(box.locator("h3")).to_have_text("Who can read my meter data")
        await expect(box.locator("table.grants tbody")).to_contain_text(
            "No utility can read this site's meter data."
        )
        await expect(box.locator("ul.grant-log")).to_contain_text("No grants yet.")
        options = box.locator("select[name=client_id] option")
        await expect(options).to_have_text(
            [f"{n} ({clients[n]['client_id']})" for n in ("Northgrid Utility", "Southern Power")]
        )
        await expect(page.locator(".meter-access")).to_have_count(1)  # not the neighbour's
        await shoot(page, tmp_path, "empty")

        # Grant Northgrid.
        await box.locator("select[name=client_id]").select_option(north["client_id"])
        await box.locator("form.grant-form button[type=submit]").click()
        row = box.locator(f'table.grants tr[data-client="{north["client_id"]}"]')
        await expect(row.locator("td.name")).to_have_text("Northgrid Utility")
        await expect(box.locator("ul.grant-log li")).to_have_count(1)
        first = box.locator("ul.grant-log li").first
        await expect(first).to_have_attribute("data-action", "granted")
        await expect(first).to_contain_text("granted Northgrid Utility by you")
        # Granted clients are not offered again.
        await expect(options.nth(0)).to_be_disabled()
        await expect(options.nth(1)).to_be_enabled()
        r = await http.get("/api/v1/connect/sites", headers=as_north)
        assert r.json() == [{"site_id": "site-home", "name": "Hal's roof"}]
        await shoot(page, tmp_path, "granted")

        # The admin revokes Southern Power after the page loaded: the grant is refused and the
        # page says why.
        south = clients["Southern Power"]
        r = await http.post(
            f"/api/v1/utility-clients/{south['client_id']}/revoke", headers=as_admin
        )
        assert r.status_code == 200
        await box.locator("select[name=client_id]").select_option(south["client_id"])
        await box.locator("form.grant-form button[type=submit]").click()
        await expect(box.locator(".grant-error")).to_have_text(
            f"utility client '{south['client_id']}' does not exist or was revoked"
        )
        await expect(box.locator("table.grants tr[data-client]")).to_have_count(1)
        # ...and offers what is true now: Southern Power is gone, Northgrid is granted already.
        await expect(options).to_have_count(1)
        await expect(options.nth(0)).to_be_disabled()
        submit = box.locator("form.grant-form button[type=submit]")
        await expect(submit).to_be_disabled()
        await expect(box.locator("select[name=client_id]")).to_be_disabled()
        await expect(box.locator("select[name=client_id]")).to_have_value(north["client_id"])
        await shoot(page, tmp_path, "refused")

        # Revoke Northgrid: its very next request is refused.
        await row.locator("button[data-action=revoke]").click()
        await expect(box.locator("table.grants tr[data-client]")).to_have_count(0)
        await expect(box.locator("table.grants tbody")).to_contain_text(
            "No utility can read this site's meter data."
        )
        await expect(box.locator("ul.grant-log li")).to_have_count(2)
        await expect(box.locator("ul.grant-log li").first).to_contain_text(
            "revoked Northgrid Utility by you"
        )
        await expect(box.locator(".grant-error")).to_have_text("")
        await expect(options.nth(0)).to_be_enabled()
        await expect(submit).to_be_enabled()
        r = await http.get("/api/v1/connect/sites/site-home", headers=as_north)
        assert r.status_code == 404
        await shoot(page, tmp_path, "revoked")

        # After a reload the server draws the same.
        await page.reload()
        await expect(box.locator("table.grants tr[data-client]")).to_have_count(0)
        await expect(box.locator("ul.grant-log li")).to_have_count(2)
        await expect(options).to_have_count(1)  # the revoked client is not offered
        log = await box.locator("ul.grant-log li").all_text_contents()
        assert [line.split(" ", 2)[2] for line in log] == [
            "revoked Northgrid Utility by you",
            "granted Northgrid Utility by you",
        ]
        assert errors == []
        await context.close()
