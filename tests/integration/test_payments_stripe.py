"""Stripe through the payments port on SQLite and PostgreSQL, all over real HTTP: the app served
by uvicorn, the adapter calling an in-repo fake of Stripe's API (tests/helpers/fake_stripe.py),
the fake sending webhooks signed by the stripe package's own signer. Fulfilment happens once per
verified payment_intent.succeeded however often it is delivered; forged, stale and foreign
events are refused and change nothing; a failure releases; refunds go through."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from cloud.api.app import create_app
from cloud.domain.payments import Money, PaymentError, PaymentStatus
from cloud.services.payments import PaymentService, StripeProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store
from cloud.storage.tables import payment_events
from tests.helpers.fake_stripe import FakeStripe, fake_stripe, serve
from tests.helpers.payment_outcomes import RecordingOutcomes
from tests.helpers.waiting import until

SECRET_KEY = "sk_test_fake"  # noqa: S105 - test credentials
WEBHOOK_SECRET = "whsec_fake"  # noqa: S105


@dataclass
class World:
    store: Store
    fake: FakeStripe
    service: PaymentService
    outcomes: RecordingOutcomes
    app_url: str
    http: httpx.AsyncClient
    buyer: dict[str, str]

    @property
    def webhook(self) -> str:
        return f"{self.app_url}/api/v1/payments/stripe/webhook"

    async def event_count(self) -> int:
        async with self.store.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(payment_events)) or 0)


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    accounts = AccountStore(store.engine)
    buyer = await accounts.create_account(
        "buyer@example.org", "Buyer", "a long password", "homeowner", "approved"
    )
    token = await accounts.issue_token(buyer.account_id, 3600)
    outcomes = RecordingOutcomes()
    async with (
        fake_stripe(SECRET_KEY, WEBHOOK_SECRET) as fake,
        httpx.AsyncClient(timeout=10) as http,
    ):
        provider = StripeProvider(fake.base_url, SECRET_KEY, WEBHOOK_SECRET, http)
        service = PaymentService(provider, PaymentStore(store.engine), outcomes)
        app = create_app(store, accounts=accounts, payments=service)
        async with serve(app) as app_url:
            fake.webhook_url = f"{app_url}/api/v1/payments/stripe/webhook"
            yield World(
                store,
                fake,
                service,
                outcomes,
                app_url,
                http,
                {"Authorization": f"Bearer {token}"},
            )


async def test_succeeded_webhook_fulfils_once(world: World) -> None:
    started = await world.service.start("order-1", Money(1_999, "EUR"), "1 t CO2e, vintage 2025")
    assert started.status is PaymentStatus.CREATED  # waiting for the buyer
    assert started.client_secret is not None and started.client_secret.startswith("pi_")
    kind, form, headers = world.fake.requests[-1]
    assert kind == "payment_intents"
    assert form["amount"] == "1999" and form["currency"] == "eur"
    assert form["metadata[ref]"] == "order-1"
    assert form["automatic_payment_methods[enabled]"] == "true"
    assert headers["idempotency-key"] == f"order-1/{started.payment_id}"  # one key a try
    row = await world.service.get(started.payment_id)
    assert row is not None and row.provider_id in world.fake.intents
    # The client's word is not a payment: the sandbox button does not exist with Stripe.
    r = await world.http.post(
        f"{world.app_url}/api/v1/payments/sandbox/{started.payment_id}/complete",
        json={"succeed": True},
        headers=world.buyer,
    )
    assert r.status_code == 404
    assert world.outcomes.calls == []

    r = await world.http.post(f"{world.fake.base_url}/_test/succeed/{row.provider_id}?times=3")
    assert r.json() == [200, 200, 200]
    assert world.outcomes.calls == [("succeeded", "order-1", started.payment_id, "")]
    assert await world.event_count() == 1
    row = await world.service.get(started.payment_id)
    assert row is not None and row.status is PaymentStatus.SUCCEEDED
    assert world.service.counters["duplicate"] == 2


async def test_forged_stale_and_foreign_events_are_refused(world: World) -> None:
    started = await world.service.start("order-2", Money(500, "USD"), "x")
    row = await world.service.get(started.payment_id)
    assert row is not None and row.provider_id is not None
    event = world.fake.event(
        "payment_intent.succeeded", dict(world.fake.intents[row.provider_id], status="succeeded")
    )
    payload = json.dumps(event)
    tampered = payload.replace('"amount": 500', '"amount": 5')
    foreign = json.dumps(
        world.fake.event("payment_intent.succeeded", {"id": "pi_not_ours", "status": "succeeded"})
    )
    cases = [
        (payload, {}, "no signature"),
        (tampered, {"Stripe-Signature": world.fake.sign(payload)}, "bad signature"),
        (
            payload,
            {"Stripe-Signature": world.fake.sign(payload, secret="whsec_x")},
            "bad signature",
        ),
        (
            payload,
            {"Stripe-Signature": world.fake.sign(payload, timestamp=int(time.time()) - 400)},
            "timestamp outside the tolerance",
        ),
        (foreign, {"Stripe-Signature": world.fake.sign(foreign)}, "unknown payment intent"),
    ]
    for body, headers, reason in cases:
        r = await world.http.post(world.webhook, content=body.encode(), headers=headers)
        assert r.status_code == 400, (reason, r.text)
        assert r.json() == {"detail": reason}
    assert world.outcomes.calls == []
    assert await world.event_count() == 0
    row = await world.service.get(started.payment_id)
    assert row is not None and row.status is PaymentStatus.CREATED
    assert world.service.counters["bad_signature"] == 4
    assert world.service.counters["unknown_payment"] == 1
    # A type we do not handle is acknowledged, counted and ignored.
    other = json.dumps(world.fake.event("customer.created", {"id": "cus_1"}))
    r = await world.http.post(
        world.webhook, content=other.encode(), headers={"Stripe-Signature": world.fake.sign(other)}
    )
    assert r.status_code == 200 and r.json()["outcome"] == "ignored"
    assert world.service.counters["ignored:customer.created"] == 1
    # The genuine event still works afterwards.
    r = await world.http.post(
        world.webhook,
        content=payload.encode(),
        headers={"Stripe-Signature": world.fake.sign(payload)},
    )
    assert r.status_code == 200 and r.json()["outcome"] == "applied"
    assert world.outcomes.calls == [("succeeded", "order-2", started.payment_id, "")]


async def test_failed_payment_releases(world: World) -> None:
    started = await world.service.start("order-3", Money(700, "GBP"), "x")
    row = await world.service.get(started.payment_id)
    assert row is not None
    r = await world.http.post(f"{world.fake.base_url}/_test/fail/{row.provider_id}?times=2")
    assert r.json() == [200, 200]
    assert world.outcomes.calls == [
        ("failed", "order-3", started.payment_id, "Your card was declined.")
    ]
    row = await world.service.get(started.payment_id)
    assert row is not None and row.status is PaymentStatus.FAILED


async def test_refund(world: World) -> None:
    started = await world.service.start("order-4", Money(1_000, "CHF"), "x")
    row = await world.service.get(started.payment_id)
    assert row is not None and row.provider_id is not None
    await world.http.post(f"{world.fake.base_url}/_test/succeed/{row.provider_id}")
    part = await world.service.refund(started.payment_id, Money(400, "CHF"))
    assert part.status is PaymentStatus.SUCCEEDED  # a partial refund keeps it paid
    assert world.fake.refunds[-1]["amount"] == 400
    rest = await world.service.refund(started.payment_id)
    assert rest.status is PaymentStatus.REFUNDED and rest.refunded_minor == 1_000
    assert world.fake.refunds[-1]["amount"] == 600
    # Stripe's charge.refunded webhooks arrive afterwards and are recorded, changing nothing.
    await until(lambda: len([s for e, s in world.fake.sent if e["type"] == "charge.refunded"]) == 2)
    assert all(s == 200 for _e, s in world.fake.sent)
    events = await world.service.store.events(started.payment_id)
    assert [t for _i, t, _o in events].count("charge.refunded") == 2
    assert world.outcomes.calls == [("succeeded", "order-4", started.payment_id, "")]


async def test_payout_is_a_connect_transfer_once_per_ref(world: World) -> None:
    """A market-credit redemption is paid out as a Connect transfer to the homeowner's
    connected account; a retry of the same redemption is the same transfer (idempotency key),
    and a destination that is not a connected account is refused before Stripe is asked."""
    first = await world.service.payout("crd_1", Money(950, "EUR"), "acct_home1", "redeem")
    again = await world.service.payout("crd_1", Money(950, "EUR"), "acct_home1", "redeem")
    assert first == again and first.startswith("tr_")
    assert [t["id"] for t in world.fake.transfers] == [first]
    kind, form, headers = world.fake.requests[-1]
    assert kind == "transfers" and headers["idempotency-key"] == "payout-crd_1"
    assert form["amount"] == "950" and form["currency"] == "eur"
    assert form["destination"] == "acct_home1" and form["transfer_group"] == "crd_1"
    asked = len(world.fake.requests)
    with pytest.raises(PaymentError, match="connected Stripe account"):
        await world.service.payout("crd_2", Money(950, "EUR"), "DE89370400440532013000", "x")
    assert len(world.fake.requests) == asked
