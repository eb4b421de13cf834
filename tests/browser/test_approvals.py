"""The approval queue and device pages in headless Chromium, against a real aggregator on SQLite.

An approver logs in through the form, refuses to reject without a reason, approves an account
and a pending device (whose held tokens then count) and revokes another device with a reason
that its page then shows; homeowners see only their own devices' pages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from protocol import topics
from tests.helpers.records import FakeDevice

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"  # noqa: S105 - a test credential


async def log_in(page: Page, base: str, email: str) -> None:
    await page.goto(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")


async def test_approver_works_the_queue(
    cloud: CloudRuntime, browser: Browser, tmp_path: Path
) -> None:
    assert cloud.store is not None and cloud.ingest is not None
    store, base = cloud.store, cloud.url
    accounts = AccountStore(store.engine)
    await accounts.create_account("approver@example.org", "Ada", PASSWORD, "approver", "approved")
    home = await accounts.create_account(
        "home@example.org", "Hal", PASSWORD, "homeowner", "approved"
    )
    nextdoor = await accounts.create_account(
        "next@example.org", "Nia", PASSWORD, "homeowner", "approved"
    )
    newbie = await accounts.create_account("newbie@example.org", "Ned", PASSWORD, "installer")
    await accounts.create_site("site-home", home.account_id, "Home")
    await accounts.create_site("site-next", nextdoor.account_id, "Next door")

    waiting = FakeDevice("pi-waiting", site_id="site-home")
    await store.add_device(
        waiting.device_id, waiting.site_id, waiting.public_key, waiting.kid, 5000, status="pending"
    )
    old = FakeDevice("pi-old", site_id="site-next")
    await store.add_device(old.device_id, old.site_id, old.public_key, old.kid, 3000)
    for dev, whs in ((waiting, (400, 350)), (old, (90,))):
        topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
        for wh in whs:
            out = await cloud.ingest.handle(topic, dev.next_token(generated_wh=wh).envelope)
            assert out.receipt.status == "accepted"

    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    status_posts: list[str] = []
    page.on(
        "request",
        lambda req: (
            status_posts.append(req.url)
            if req.method == "POST" and req.url.endswith("/status")
            else None
        ),
    )

    # Not logged in: the queue sends the browser to the login form.
    await page.goto(base + "/approvals")
    await expect(page).to_have_url(base + "/login")
    await log_in(page, base, "approver@example.org")
    await page.click("#approvals-link")  # the dashboard links approvers to the queue
    await expect(page).to_have_url(base + "/approvals")

    accounts_table = page.locator("#pending-accounts")
    pending_table = page.locator("#pending-devices")
    device_row = pending_table.locator('tr[data-id="pi-waiting"]')
    await expect(device_row.locator("td.tokens")).to_have_text("2")  # held so far
    await expect(device_row.locator("td.gen")).to_have_text("750")
    await expect(device_row).to_contain_text(waiting.kid.hex())
    await expect(device_row).to_contain_text("home@example.org")

    # Reject with an empty reason: an error in the row, and no request at all.
    await device_row.locator("button[data-action=reject]").click()
    await expect(device_row.locator(".row-error")).to_have_text("a reason is required to reject")
    assert status_posts == []
    await page.screenshot(path=str(tmp_path / "approvals.png"), full_page=True)
    assert (await store.get_device("pi-waiting")).status == "pending"  # type: ignore[union-attr]

    # Approve the waiting account: its row goes and a message says so.
    account_row = accounts_table.locator(f'tr[data-id="{newbie.account_id}"]')
    await expect(account_row).to_contain_text("newbie@example.org")
    await account_row.locator("button[data-action=approve]").click()
    await expect(account_row).to_have_count(0)
    await expect(page.locator("#message")).to_have_text("account newbie@example.org approved")
    assert (await accounts.get_account_by_id(newbie.account_id)).status == "approved"  # type: ignore[union-attr]

    # Approve the device: its held tokens now count.
    await device_row.locator("button[data-action=approve]").click()
    await expect(device_row).to_have_count(0)
    await expect(page.locator("#message")).to_have_text("device pi-waiting approved")
    # Without a reload, the device moves under "approved devices" (with Revoke) and both
    # decisions appear in the logs, read back from the server.
    moved = page.locator('#approved-devices tr[data-id="pi-waiting"]')
    await expect(moved.locator("button[data-action=revoke]")).to_have_count(1)
    await expect(page.locator("#account-decisions")).to_contain_text("newbie@example.org")
    await expect(page.locator('#decisions tr[data-device="pi-waiting"]').first).to_contain_text(
        "approver@example.org"
    )
    stats = await (await page.request.get(base + "/api/v1/stats")).json()
    assert (stats["accepted"], stats["held"], stats["generated_wh"]) == (3, 0, 840)
    await page.goto(base + "/devices/pi-waiting")
    await expect(page.locator("#status")).to_have_text("approved")
    await expect(page.locator("#accepted")).to_have_text("2")
    await expect(page.locator("#tokens tbody tr")).to_have_count(2)

    # Revoke the other device with a reason; its page shows the reason.
    await page.goto(base + "/approvals")
    revoke_row = page.locator('#approved-devices tr[data-id="pi-old"]')
    await revoke_row.locator("button[data-action=revoke]").click()
    await expect(revoke_row.locator(".row-error")).to_have_text("a reason is required to revoke")
    assert status_posts == [
        base + "/api/v1/accounts/" + newbie.account_id + "/status",
        base + "/api/v1/admin/devices/pi-waiting/status",
    ]
    await revoke_row.locator("input.reason").fill("meter seal broken")
    await revoke_row.locator("button[data-action=revoke]").click()
    await expect(revoke_row).to_have_count(0)
    await expect(page.locator("#message")).to_have_text("device pi-old revoked: meter seal broken")
    await expect(page.locator("#decisions tbody tr").first).to_contain_text("meter seal broken")
    await page.reload()  # the decision is logged, not just drawn
    await expect(page.locator('#decisions tr[data-device="pi-old"]')).to_contain_text(
        "approver@example.org"
    )
    await page.goto(base + "/devices/pi-old")
    await expect(page.locator("#status")).to_have_text("revoked")
    await expect(page.locator("#decisions")).to_contain_text("approved → revoked")
    await expect(page.locator("#decisions")).to_contain_text("meter seal broken")
    await page.screenshot(path=str(tmp_path / "device.png"), full_page=True)
    assert errors == []
    await context.close()

    # A homeowner: their own device's page, but not the neighbour's (403), nor the queue.
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base + "/login")
    await page.fill("input[name=email]", "home@example.org")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    resp = await page.goto(base + "/devices/pi-waiting")
    assert resp is not None and resp.status == 200
    await expect(page.locator("#device-id")).to_have_text("pi-waiting")
    await expect(page.locator("#decisions")).to_contain_text("pending → approved")
    resp = await page.goto(base + "/devices/pi-old")
    assert resp is not None and resp.status == 403
    await expect(page.locator(".error")).to_contain_text("only view devices on their own sites")
    resp = await page.goto(base + "/approvals")
    assert resp is not None and resp.status == 403
    await context.close()


async def test_dashboard_links_devices_to_their_pages(
    cloud: CloudRuntime, browser: Browser
) -> None:
    assert cloud.store is not None and cloud.ingest is not None
    accounts = AccountStore(cloud.store.engine)
    await accounts.create_account("ops@example.org", "Olga", PASSWORD, "grid_operator", "approved")
    dev = FakeDevice("pi-linked", site_id="site-l")
    await cloud.store.add_device(dev.device_id, dev.site_id, dev.public_key, dev.kid, 5000)
    page = await browser.new_page()
    await log_in(page, cloud.url, "ops@example.org")
    await expect(page.locator("#approvals-link")).to_have_count(0)  # not an approver
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")  # redrawn by SSE
    await page.locator('#fleet tr[data-device="pi-linked"] a').click()
    await expect(page).to_have_url(cloud.url + "/devices/pi-linked")
    await expect(page.locator("#status")).to_have_text("approved")
    await expect(page.locator("#tokens")).to_contain_text("no tokens yet")
