"""The sandbox provider through the payments port, on SQLite and PostgreSQL: a payment is
stored, completed through the same idempotent event path a webhook takes, the shop is told once,
stale payments expire as failed, refunds, and a shop that raised is told again later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date

import httpx
import pytest

from cloud.api.app import create_app
from cloud.domain.payments import Money, PaymentError, PaymentStatus
from cloud.services.payments import NotFound, PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store
from tests.helpers.payment_outcomes import RecordingOutcomes


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def owners(table: dict[str, str]) -> Callable[[str], Awaitable[str | None]]:
    async def owner_of(ref: str) -> str | None:
        return table.get(ref)

    return owner_of


@pytest.fixture
def parts(store: Store) -> tuple[PaymentService, SandboxProvider, RecordingOutcomes, Clock]:
    provider = SandboxProvider()
    outcomes = RecordingOutcomes()
    clock = Clock()
    service = PaymentService(
        provider,
        PaymentStore(store.engine),
        outcomes,
        owner_of=owners({"order-1": "acct-buyer"}),
        now=clock,
    )
    return service, provider, outcomes, clock


async def test_complete_succeeds_once(
    parts: tuple[PaymentService, SandboxProvider, RecordingOutcomes, Clock],
) -> None:
    service, _provider, outcomes, _clock = parts
    started = await service.start("order-1", Money(2_500, "EUR"), "2 t CO2e")
    assert started.status is PaymentStatus.PROCESSING
    assert started.amount == Money(2_500, "EUR")
    # Someone else may not press the buyer's button.
    with pytest.raises(NotFound):
        await service.sandbox_complete(started.payment_id, True, "acct-other", False)
    first = await service.sandbox_complete(started.payment_id, True, "acct-buyer", False)
    second = await service.sandbox_complete(started.payment_id, True, "acct-buyer", False)
    assert (first.outcome, second.outcome) == ("applied", "duplicate")
    assert outcomes.calls == [("succeeded", "order-1", started.payment_id, "")]
    got = await service.get(started.payment_id)
    assert got is not None and got.status is PaymentStatus.SUCCEEDED
    assert got.notified_ms is not None
    # A paid ref takes no second payment.
    with pytest.raises(PaymentError, match="already has a payment"):
        await service.start("order-1", Money(2_500, "EUR"), "again")
    # Failing it afterwards changes nothing (succeeded is not undone by a decline).
    late = await service.sandbox_complete(started.payment_id, False, "acct-buyer", True)
    assert late.outcome == "out_of_order"
    assert len(outcomes.calls) == 1
    refunded = await service.refund(started.payment_id)
    assert refunded.status is PaymentStatus.REFUNDED
    assert refunded.refunded_minor == 2_500


async def test_failed_payment_may_be_retried(
    parts: tuple[PaymentService, SandboxProvider, RecordingOutcomes, Clock],
) -> None:
    service, _provider, outcomes, _clock = parts
    first = await service.start("order-1", Money(900, "GBP"), "x")
    await service.sandbox_complete(first.payment_id, False, "acct-buyer", False)
    assert outcomes.calls == [
        ("failed", "order-1", first.payment_id, "the sandbox declined the payment")
    ]
    again = await service.start("order-1", Money(900, "GBP"), "x")
    assert again.payment_id != first.payment_id


async def test_stale_payments_expire_as_failed(
    parts: tuple[PaymentService, SandboxProvider, RecordingOutcomes, Clock],
) -> None:
    service, _provider, outcomes, clock = parts
    old = await service.start("order-1", Money(100, "JPY"), "x")
    clock.now += 600
    young = await service.start("order-2", Money(100, "JPY"), "x")
    clock.now += 301
    assert await service.expire_stale(900) == [old.payment_id]
    assert outcomes.calls == [("failed", "order-1", old.payment_id, "not paid within 900 s")]
    assert await service.expire_stale(900) == []
    got = await service.get(young.payment_id)
    assert got is not None and got.status is PaymentStatus.PROCESSING
    # The buyer pays after the timeout: not fulfilled, refunded at the provider instead.
    late = await service.sandbox_complete(old.payment_id, True, "acct-buyer", False)
    assert late.outcome == "late_success"
    assert len(outcomes.calls) == 1


async def test_a_shop_that_raised_is_told_again(
    parts: tuple[PaymentService, SandboxProvider, RecordingOutcomes, Clock],
) -> None:
    service, _provider, outcomes, _clock = parts
    p = await service.start("order-1", Money(100, "USD"), "x")
    outcomes.raise_next = True
    await service.sandbox_complete(p.payment_id, True, "acct-buyer", False)
    assert outcomes.calls == []
    # A redelivery does not tell it (the event is a duplicate); the owed-outcomes sweep does.
    await service.sandbox_complete(p.payment_id, True, "acct-buyer", False)
    assert outcomes.calls == []
    assert await service.resend_outcomes() == 1
    assert outcomes.calls == [("succeeded", "order-1", p.payment_id, "")]
    assert await service.resend_outcomes() == 0


async def test_pay_button_and_fx_rates_over_http(store: Store) -> None:
    accounts = AccountStore(store.engine)
    users: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}
    for name, role in (("buyer", "homeowner"), ("other", "homeowner"), ("admin", "admin")):
        a = await accounts.create_account(
            f"{name}@example.org", name, "a long password", role, "approved"
        )
        ids[name] = a.account_id
        users[name] = {"Authorization": f"Bearer {await accounts.issue_token(a.account_id, 3600)}"}
    outcomes = RecordingOutcomes()
    service = PaymentService(
        SandboxProvider(),
        PaymentStore(store.engine),
        outcomes,
        owner_of=owners({"order-9": ids["buyer"]}),
    )
    app = create_app(store, accounts=accounts, payments=service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        p = await service.start("order-9", Money(1_234, "SEK"), "x")
        url = f"/api/v1/payments/sandbox/{p.payment_id}/complete"
        r = await c.post(url, json={"succeed": True}, headers=users["other"])
        assert r.status_code == 404 and r.json() == {"detail": "no such payment"}
        r = await c.post(url, json={"succeed": True}, headers=users["buyer"])
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        r = await c.post(url, json={"succeed": True}, headers=users["admin"])
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        assert outcomes.calls == [("succeeded", "order-9", p.payment_id, "")]
        # The Stripe webhook is not there when the sandbox takes the payments.
        r = await c.post("/api/v1/payments/stripe/webhook", content=b"{}")
        assert r.status_code == 404

        rate = {
            "base": "EUR",
            "quote": "USD",
            "rate_ppm": 1_084_300,
            "as_of": "2026-03-02",
            "source": "ECB reference rate",
        }
        r = await c.put("/api/v1/fx-rates", json=rate, headers=users["buyer"])
        assert r.status_code == 403
        r = await c.put("/api/v1/fx-rates", json=rate, headers=users["admin"])
        assert r.status_code == 200
        r = await c.put(
            "/api/v1/fx-rates",
            json=dict(rate, as_of="2026-03-01", rate_ppm=1_080_000),
            headers=users["admin"],
        )
        assert r.status_code == 200
        r = await c.put("/api/v1/fx-rates", json=dict(rate, quote="EUR"), headers=users["admin"])
        assert r.status_code == 422
        assert r.json() == {"detail": "a rate converts between two different currencies"}
        r = await c.get("/api/v1/fx-rates", params={"base": "EUR"}, headers=users["buyer"])
        assert [(x["as_of"], x["rate_ppm"]) for x in r.json()] == [
            ("2026-03-02", 1_084_300),
            ("2026-03-01", 1_080_000),
        ]
        got = await service.rate_on("EUR", "USD", date(2026, 3, 1))
        assert got is not None and got.rate_ppm == 1_080_000
        assert await service.rate_on("EUR", "USD", date(2026, 2, 28)) is None
