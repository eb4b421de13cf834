"""Self-registration with email verification over HTTP, on both backends, with the mails going
through a real SMTP server (aiosmtpd, tests/helpers/smtp.py): a buyer registers, gets the link
by mail, cannot buy until it is opened, then buys (sandbox payments); business details are
required; expired, altered and used links are refused with the reason; a provider waits for an
approver and then lists projects; a mail server that is down loses no registration, and the
resend delivers once it is back; the link key survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from cloud.api.app import create_app
from cloud.services.mailer import SmtpMailer
from cloud.services.payments import PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store
from tests.helpers.smtp import SmtpServer, mail_text, verification_link, verification_token

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()
PW = "a long password"
TTL_S = 24 * 3600
BASE = "http://shop.example"
HOST = "127.0.0.1"

PROJECT = {
    "name": "Kasigau Corridor",
    "kind": "forestry",
    "country": "KE",
    "standard": "Verra VCS",
    "verifier": "Epic Sustainability",
    "serial_prefix": "VCS-612",
    "vintage": 2023,
}


@dataclass
class Shop:
    client: httpx.AsyncClient
    app: FastAPI
    accounts: AccountStore
    clock: list[float]
    smtp: SmtpServer

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def login(self, email: str, password: str = PW) -> httpx.Response:
        r = await self.client.post("/api/v1/login", json={"email": email, "password": password})
        self.client.cookies.clear()  # each request says who it is
        return r

    async def token(self, email: str) -> str:
        r = await self.login(email)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


def _app(store: Store, accounts: AccountStore, smtp: SmtpServer, clock: list[float]) -> FastAPI:
    payments = PaymentService(
        SandboxProvider(),
        PaymentStore(store.engine),
        outcomes=None,  # type: ignore[arg-type]  # create_app makes the shop its outcomes
        now=lambda: clock[0],
    )
    mailer = SmtpMailer(HOST, smtp.port, "gridmint <no-reply@gridmint.test>", timeout_s=5.0)
    return create_app(
        store,
        accounts=accounts,
        payments=payments,
        now=lambda: clock[0],
        mailer=mailer,
        public_base_url=BASE,
        email_link_ttl_s=TTL_S,
    )


@pytest.fixture
async def shop(store: Store, smtp_server: SmtpServer) -> AsyncIterator[Shop]:
    accounts = AccountStore(store.engine)
    clock = [NOW]
    app = _app(store, accounts, smtp_server, clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield Shop(client, app, accounts, clock, smtp_server)


async def _lot_on_sale(shop: Shop) -> str:
    """A provider (made by an operator: verified) with a project and a 100 kg lot."""
    prov = await shop.accounts.create_account("seller@x.org", "Seller", PW, "provider", "approved")
    h = shop.bearer(await shop.accounts.issue_token(prov.account_id, 3600))
    r = await shop.client.post("/api/v1/shop/projects", json=PROJECT, headers=h)
    assert r.status_code == 201, r.text
    lot = {"serials": "VCS-612-1..100", "price_minor_per_t": 15_000, "currency": "USD"}
    r = await shop.client.post(
        f"/api/v1/shop/projects/{r.json()['project_id']}/lots", json=lot, headers=h
    )
    assert r.status_code == 201, r.text
    return str(r.json()["lot_id"])


def _buyer(email: str, **kw: str) -> dict[str, str]:
    return {
        "email": email,
        "display_name": "Ana Buyer",
        "password": PW,
        "account_type": "individual",
        "affiliation": "none",
        **kw,
    }


async def test_a_buyer_verifies_by_mail_before_buying(shop: Shop) -> None:
    lot = await _lot_on_sale(shop)
    c = shop.client
    r = await c.post("/api/v1/register", json=_buyer(" Ana@Example.org "))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["mail_sent"] is True
    assert "we sent a verification link to ana@example.org" in body["message"]
    acct = body["account"]
    assert (acct["role"], acct["status"], acct["email_verified"]) == ("buyer", "approved", False)
    assert (acct["account_type"], acct["affiliation"]) == ("individual", "none")

    mail = await shop.smtp.wait_for_mail("ana@example.org")
    assert mail["To"] == "ana@example.org"
    assert mail["From"] == "gridmint <no-reply@gridmint.test>"
    assert mail["Subject"] == "Confirm your email address for gridmint"
    link = verification_link(mail)
    assert link.startswith(f"{BASE}/verify-email?token=")
    assert "Ana Buyer" in mail_text(mail) and "24 hours" in mail_text(mail)

    # approved at once: the buyer signs in, browses, but may not buy yet
    h = shop.bearer(await shop.token("ana@example.org"))
    r = await c.get("/api/v1/me", headers=h)
    assert r.json()["email_verified"] is False
    order = {"lines": [{"lot_id": lot, "kg": 10}], "currency": "USD", "beneficiary": "Ana"}
    r = await c.post("/api/v1/shop/orders", json=order, headers=h)
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith(
        "verify your email address before buying: we sent a link to ana@example.org"
    )
    r = await c.get("/api/v1/shop/projects", headers=h)
    assert r.json()[0]["available_kg"] == 100  # the refusal reserved nothing

    # the link signs the buyer in and sends them to the shop
    r = await c.get(link.removeprefix(BASE), follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/shop"
    session = r.cookies.get("gridmint_session")
    assert session
    c.cookies.clear()
    c.cookies.set("gridmint_session", session)
    r = await c.get("/api/v1/me")
    assert r.status_code == 200, r.text
    assert (r.json()["email"], r.json()["email_verified"]) == ("ana@example.org", True)
    c.cookies.clear()

    r = await c.post("/api/v1/shop/orders", json=order, headers=h)
    assert r.status_code == 201, r.text
    o = r.json()
    r = await c.post(
        f"/api/v1/payments/sandbox/{o['payment_id']}/complete", json={"succeed": True}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await c.get(f"/api/v1/shop/orders/{o['order_id']}", headers=h)
    assert r.json()["state"] == "complete"

    # a link works once
    r = await c.get(link.removeprefix(BASE), follow_redirects=False)
    assert r.status_code == 400
    assert "already used" in r.text
    r = await c.post("/api/v1/verify-email", json={"token": verification_token(mail)})
    assert r.status_code == 400 and "already used" in r.json()["detail"]


async def test_business_details_duplicates_and_bad_input(shop: Shop) -> None:
    c = shop.client
    business = _buyer("acme@x.org", account_type="business")
    for body, text in (
        (business, "business's name"),
        ({**business, "business_name": "Acme Ltd"}, "VAT number"),
        ({**business, "business_id": "GB123"}, "business's name"),
        (_buyer("ind@x.org", business_name="Acme"), "for business accounts only"),
    ):
        r = await c.post("/api/v1/register", json=body)
        assert r.status_code == 422, r.text
        assert text in r.json()["detail"]
    r = await c.post("/api/v1/register", json={**_buyer("short@x.org"), "password": "1234567"})
    assert r.status_code == 422
    r = await c.post("/api/v1/register", json={**_buyer("x@x.org"), "affiliation": "installer"})
    assert r.status_code == 422
    r = await c.post("/api/v1/register", json=_buyer("x@x.org\r\nBcc: many@x.org"))
    assert r.status_code == 422 and "is not an email address" in r.json()["detail"]
    assert shop.smtp.messages == []  # nothing refused was stored, so nothing was mailed
    assert await shop.accounts.get_account_by_email("acme@x.org") is None

    ok = {**business, "business_name": "Acme Ltd", "business_id": "GB123456789"}
    r = await c.post("/api/v1/register", json=ok)
    assert r.status_code == 201, r.text
    a = r.json()["account"]
    assert (a["account_type"], a["business_name"], a["business_id"]) == (
        "business",
        "Acme Ltd",
        "GB123456789",
    )
    r = await c.post("/api/v1/register", json={**ok, "email": "ACME@x.org"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert len(shop.smtp.mails_to("acme@x.org")) == 1

    # the form says the same
    r = await c.post(
        "/register",
        data={k: v for k, v in business.items() if k != "business_name"} | {"email": "f@x.org"},
    )
    assert r.status_code == 422 and "business&#39;s name" in r.text
    assert 'value="f@x.org"' in r.text  # what was typed stays (never the password)
    r = await c.post("/register", data=ok)
    assert r.status_code == 409 and "already exists" in r.text


async def test_the_registration_form(shop: Shop) -> None:
    c = shop.client
    r = await c.get("/login")
    assert 'href="/register"' in r.text and "Create an account" in r.text
    r = await c.get("/register")
    assert r.status_code == 200
    for text in ("I am", "an individual", "a business", "No affiliation", "project provider"):
        assert text in r.text
    r = await c.post("/register", data=_buyer("form@x.org"))
    assert r.status_code == 200, r.text
    assert "Check your email" in r.text and "form@x.org" in r.text
    mail = await shop.smtp.wait_for_mail("form@x.org")
    r = await c.post("/register/resend", data={"email": "form@x.org"})
    assert r.status_code == 200 and "a new link is on its way" in r.text
    # at most one mail a minute per address: the second press sent nothing
    assert len(shop.smtp.mails_to("form@x.org")) == 1
    r = await c.post("/api/v1/verify-email", json={"token": verification_token(mail)})
    assert r.status_code == 200, r.text
    assert r.json()["email_verified"] is True


async def test_expired_and_altered_links_are_refused(shop: Shop) -> None:
    c = shop.client
    r = await c.post("/api/v1/register", json=_buyer("late@x.org"))
    assert r.status_code == 201, r.text
    token = verification_token(await shop.smtp.wait_for_mail("late@x.org"))
    account_id, expires, mac = token.split(".")

    for forged in (
        f"{account_id}.{int(expires) + 3_600_000}.{mac}",  # a longer life
        f"{account_id}.{expires}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}",
        f"{'0' * 32}.{expires}.{mac}",  # someone else's account
    ):
        r = await c.get(f"/verify-email?token={quote(forged)}")
        assert r.status_code == 400, (forged, r.text)
        assert "not valid" in r.text
    for junk in ("", "nonsense"):
        r = await c.get("/verify-email", params={"token": junk})
        assert r.status_code == 400 and "malformed" in r.text
        r = await c.post("/api/v1/verify-email", json={"token": junk})
        assert r.status_code == 400 and "malformed" in r.json()["detail"]

    shop.clock[0] += TTL_S  # the link's last moment has passed
    r = await c.get(f"/verify-email?token={quote(token)}")
    assert r.status_code == 400 and "has expired" in r.text
    r = await c.post("/api/v1/verify-email", json={"token": token})
    assert r.status_code == 400 and "has expired" in r.json()["detail"]
    assert (await shop.accounts.get_account_by_email("late@x.org")).email_verified is False  # type: ignore[union-attr]

    # a new link works
    r = await c.post("/api/v1/register/resend", json={"email": "late@x.org"})
    assert r.status_code == 202
    fresh = verification_token(await shop.smtp.wait_for_mail("late@x.org", count=2))
    r = await c.post("/api/v1/verify-email", json={"token": fresh})
    assert r.status_code == 200 and r.json()["email_verified"] is True


async def test_a_provider_waits_for_an_approver(shop: Shop) -> None:
    c = shop.client
    approver = await shop.accounts.create_account("appr@x.org", "Appr", PW, "approver", "approved")
    ha = shop.bearer(await shop.accounts.issue_token(approver.account_id, 3600))
    body = _buyer(
        "green@x.org",
        account_type="business",
        business_name="Green Forests GmbH",
        business_id="DE811907980",
        affiliation="provider",
    )
    r = await c.post("/api/v1/register", json=body)
    assert r.status_code == 201, r.text
    a = r.json()["account"]
    assert (a["role"], a["status"], a["affiliation"]) == ("provider", "pending", "provider")
    assert "an approver will then review" in r.json()["message"]

    r = await shop.login("green@x.org")
    assert r.status_code == 401 and "waiting for approval" in r.json()["detail"]
    # the link verifies the address but signs nobody in
    link = verification_link(await shop.smtp.wait_for_mail("green@x.org"))
    r = await c.get(link.removeprefix(BASE), follow_redirects=False)
    assert r.status_code == 200, r.text
    assert "An approver will review your account" in r.text
    assert "gridmint_session" not in r.cookies

    r = await c.get("/api/v1/accounts", params={"status": "pending"}, headers=ha)
    (waiting,) = r.json()
    assert waiting["email"] == "green@x.org"
    assert (waiting["business_name"], waiting["business_id"]) == (
        "Green Forests GmbH",
        "DE811907980",
    )
    assert (waiting["affiliation"], waiting["email_verified"]) == ("provider", True)
    r = await c.get("/approvals", headers=ha)
    assert "Green Forests GmbH" in r.text and "DE811907980" in r.text
    assert "offset project provider" in r.text

    r = await c.post(
        f"/api/v1/accounts/{waiting['account_id']}/status",
        json={"status": "approved"},
        headers=ha,
    )
    assert r.status_code == 200, r.text
    h = shop.bearer(await shop.token("green@x.org"))
    r = await c.post("/api/v1/shop/projects", json=PROJECT, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["provider_account_id"] == waiting["account_id"]


async def test_mail_server_down_loses_no_registration(shop: Shop) -> None:
    c = shop.client
    shop.smtp.stop()
    r = await c.post("/api/v1/register", json=_buyer("patient@x.org"))
    assert r.status_code == 201, r.text
    assert r.json()["mail_sent"] is False
    assert "could not be sent" in r.json()["message"]
    assert f"127.0.0.1:{shop.smtp.port}" in r.json()["message"]
    r = await c.post("/api/v1/register", json=_buyer("patient@x.org"))
    assert r.status_code == 409  # it exists
    r = await c.post("/register", data=_buyer("patient2@x.org"))
    assert r.status_code == 200 and "the email did not go out" in r.text

    shop.smtp.start()
    for email in ("nobody@x.org", "patient@x.org"):  # the same answer for both
        r = await c.post("/api/v1/register/resend", json={"email": email})
        assert r.status_code == 202
        assert r.json()["message"].startswith("if an account with that address is waiting")
    token = verification_token(await shop.smtp.wait_for_mail("patient@x.org"))
    # the mail was delivered before the answer: nothing went to the unknown address
    assert shop.smtp.mails_to("nobody@x.org") == []
    r = await c.post("/api/v1/verify-email", json={"token": token})
    assert r.status_code == 200 and r.json()["email_verified"] is True
    # a verified address gets no more links
    shop.clock[0] += 3600
    r = await c.post("/api/v1/register/resend", json={"email": "patient@x.org"})
    assert r.status_code == 202
    assert len(shop.smtp.mails_to("patient@x.org")) == 1


async def test_links_outlive_a_restart(store: Store, smtp_server: SmtpServer) -> None:
    """The link key is the deployment's (kept in the database): a link mailed before a
    restart verifies after it."""
    clock = [NOW]
    first = _app(store, AccountStore(store.engine), smtp_server, clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=first), base_url="http://t"
    ) as c:
        r = await c.post("/api/v1/register", json=_buyer("again@x.org"))
        assert r.status_code == 201, r.text
    token = verification_token(await smtp_server.wait_for_mail("again@x.org"))
    second = _app(store, AccountStore(store.engine), smtp_server, clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=second), base_url="http://t"
    ) as c:
        r = await c.post("/api/v1/verify-email", json={"token": token})
        assert r.status_code == 200, r.text
