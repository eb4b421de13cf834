"""The sandbox provider through the payments port, on SQLite and PostgreSQL: a payment is
stored, completed through the same idempotent event path a webhook takes, the shop is told once,
stale payments expire as failed, refunds, and a shop that raised is told again later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from cloud.domain.payments import Money, PaymentError, PaymentStatus
from cloud.services.payments import NotFound, PaymentService, SandboxProvider
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
