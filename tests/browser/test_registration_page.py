"""Registration in headless Chromium against a real aggregator whose mails go to a real SMTP
server (the runtime's SMTP settings): from the login page to the form, the business's fields
appearing only for a business, the "check your email" page, and the mailed link signing the
new buyer in."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, expect

from cloud.runtime import CloudRuntime
from tests.helpers.smtp import SmtpServer, verification_link

pytestmark = [pytest.mark.browser]


@pytest.fixture
def cloud_settings(smtp_server: SmtpServer) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_server.port,
        "smtp_from": "gridmint <no-reply@gridmint.test>",
    }


async def test_a_business_registers_and_the_mailed_link_signs_it_in(
    cloud: CloudRuntime, browser: Browser, smtp_server: SmtpServer
) -> None:
    base = cloud.url
    page = await browser.new_page()
    await page.goto(base + "/login")
    await page.click("text=Create an account")
    await page.wait_for_url(base + "/register")

    business = page.locator("#business-fields")
    await expect(business).to_be_hidden()
    await page.check("input[name=account_type][value=business]")
    await expect(business).to_be_visible()
    await page.fill("input[name=business_name]", "Acme Offsets Ltd")
    await page.fill("input[name=business_id]", "GB123456789")
    await page.select_option("select[name=affiliation]", "none")
    await page.fill("input[name=display_name]", "Ada Acme")
    await page.fill("input[name=email]", "ada@acme.example")
    await page.fill("input[name=password]", "a long password")
    await page.click("button[type=submit]")
    await expect(page.locator("h2")).to_have_text("Check your email")
    await expect(page.locator("main")).to_contain_text("ada@acme.example")

    link = verification_link(await smtp_server.wait_for_mail("ada@acme.example"))
    assert link.startswith(base + "/verify-email?token=")
    await page.goto(link)
    assert page.url == base + "/shop"
    me = await page.request.get(base + "/api/v1/me")
    assert me.ok, await me.text()
    got = await me.json()
    assert (got["email"], got["email_verified"]) == ("ada@acme.example", True)
    assert (got["account_type"], got["business_name"], got["business_id"]) == (
        "business",
        "Acme Offsets Ltd",
        "GB123456789",
    )
    assert (got["role"], got["affiliation"]) == ("buyer", "none")
