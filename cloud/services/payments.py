"""Payments behind a port: the shop (and the market's credit top-ups) ask for money here and are
told of outcomes; which provider takes it (Stripe, or the embedded sandbox) is configuration.

Owns: the payment's life. `PaymentService.start` stores the payment before the provider is
called (nothing is acknowledged before it is stored), provider events are applied once (the
event id is stored with the status change in one transaction; a redelivery is a no-op), and
`PaymentOutcomes` is called only after that transaction committed. Fulfilment follows a
verified provider event, never the buyer's browser. Money that arrives after a payment was
given up (timed out, failed) is refunded, not fulfilled: the reservations are gone.

StripeProvider talks to the Stripe API over HTTP with httpx and checks webhook signatures itself
(cloud.domain.payments.verify_stripe_signature): the product has no Stripe library dependency.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

import httpx

from cloud.domain.payments import (
    LIVE_STATUSES,
    FxRate,
    Money,
    PaymentError,
    PaymentEvent,
    PaymentStatus,
    SignatureError,
    parse_stripe_event,
    verify_stripe_signature,
)
from cloud.storage.payments_store import (
    PaymentRow,
    PaymentStore,
    RefTaken,
    UnknownProviderPayment,
)

__all__ = [
    "EventResult",
    "NotFound",
    "PaymentOutcomes",
    "PaymentProvider",
    "PaymentService",
    "ProviderPayment",
    "SandboxProvider",
    "StartedPayment",
    "StripeProvider",
    "UnknownPayment",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    """The provider's view of a payment: its id there, status, and the secret the buyer's
    browser needs to pay (Stripe's PaymentIntent client_secret; None for the sandbox)."""

    provider_id: str
    status: PaymentStatus
    client_secret: str | None = None


class PaymentProvider(Protocol):
    """Who takes the money. Implementations raise PaymentError with a plain reason."""

    @property
    def name(self) -> str: ...

    async def create(
        self, ref: str, amount: Money, description: str, *, attempt: str = ""
    ) -> ProviderPayment:
        """`attempt` names this try (our payment id): a retry of the same try is the same
        payment at the provider, a new try after a failure is a new one."""
        ...

    async def refund(self, provider_id: str, amount: Money | None) -> ProviderPayment: ...

    async def payout(self, ref: str, amount: Money, destination: str, description: str) -> str:
        """Send `amount` to `destination` (a redemption of market credits); the provider's id
        of the transfer. Idempotent per `ref`: a retry of the same ref is the same transfer."""
        ...


class PaymentOutcomes(Protocol):
    """What the shop implements to hear how its payments ended. Called after the outcome is
    stored; normally once per payment (see PaymentService.resend_outcomes for the exception)."""

    async def succeeded(self, ref: str, payment_id: str) -> None: ...

    async def failed(self, ref: str, payment_id: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class StartedPayment:
    """A payment just opened: the buyer's page pays it with `client_secret` (Stripe.js
    confirms the PaymentIntent with it; not stored, so hand it on now) or, with the sandbox,
    with the sandbox's complete endpoint."""

    payment_id: str
    ref: str
    amount: Money
    status: PaymentStatus
    client_secret: str | None


class UnknownPayment(PaymentError):
    """A provider event about a payment that is not ours."""


class NotFound(PaymentError):
    """No such payment (or not the caller's)."""


@dataclass(frozen=True, slots=True)
class EventResult:
    """What a delivered event did: applied (status changed), duplicate (seen before),
    no_change, late_success (refunded), out_of_order, or ignored (a type we do not handle)."""

    outcome: str
    payment_id: str | None = None


class PaymentService:
    """The port's one implementation: payments stored, provider events applied idempotently,
    outcomes told to the shop."""

    def __init__(
        self,
        provider: PaymentProvider,
        store: PaymentStore,
        outcomes: PaymentOutcomes,
        *,
        owner_of: Callable[[str], Awaitable[str | None]] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.store = store
        self.outcomes = outcomes
        # Who may press the sandbox's "pay" button for a ref: the shop knows its buyers.
        self.owner_of = owner_of
        self.now = now
        # Webhooks and events by what became of them: ignored types, unknown payments, bad
        # signatures, duplicates (for /metrics and the operations page).
        self.counters: Counter[str] = Counter()

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    async def start(self, ref: str, amount: Money, description: str) -> StartedPayment:
        """Store a payment for `ref` and open it at the provider. PaymentError when the ref has
        a live payment already, the amount is not positive, or the provider refused."""
        if amount.amount_minor <= 0:
            raise PaymentError("a payment amount is positive")
        if not ref or len(ref) > 100:
            raise PaymentError("a payment ref is 1 to 100 characters")
        now_ms = self._now_ms()
        row = PaymentRow(
            payment_id="pay_" + secrets.token_hex(12),
            ref=ref,
            provider=self.provider.name,
            provider_id=None,
            amount_minor=amount.amount_minor,
            currency=amount.currency,
            status=PaymentStatus.CREATED,
            created_ms=now_ms,
            updated_ms=now_ms,
            detail="",
            refunded_minor=0,
            notified_ms=None,
        )
        try:
            await self.store.insert(row)
        except RefTaken:
            raise PaymentError(f"{ref} already has a payment in progress or paid") from None
        try:
            answer = await self.provider.create(ref, amount, description, attempt=row.payment_id)
        except PaymentError as exc:
            await self.store.set_status(
                row.payment_id, LIVE_STATUSES, PaymentStatus.FAILED, str(exc), self._now_ms()
            )
            # The shop hears of it from this exception, so no outcome is owed.
            await self.store.mark_notified(row.payment_id, self._now_ms())
            raise
        stored = await self.store.set_provider(
            row.payment_id, answer.provider_id, answer.status, "", self._now_ms()
        )
        got = stored or await self.store.get(row.payment_id)
        assert got is not None
        return StartedPayment(
            got.payment_id,
            got.ref,
            Money(got.amount_minor, got.currency),
            got.status,
            answer.client_secret,
        )

    async def get(self, payment_id: str) -> PaymentRow | None:
        return await self.store.get(payment_id)

    async def on_event(self, event: PaymentEvent) -> EventResult:
        """Apply a provider event once. UnknownPayment (nothing stored) when it is not about
        one of ours. The shop is told after the change is committed."""
        try:
            applied = await self.store.apply(event, self._now_ms())
        except UnknownProviderPayment:
            self.counters["unknown_payment"] += 1
            raise UnknownPayment("unknown payment intent") from None
        if applied is None:
            self.counters["duplicate"] += 1
            return EventResult("duplicate")
        p = applied.after
        if applied.outcome == "late_success":
            self.counters["late_success"] += 1
            log.warning("payment %s succeeded after it was %s: refunding", p.payment_id, p.status)
            try:
                await self.provider.refund(p.provider_id or "", None)
            except PaymentError as exc:
                log.error("refund of late payment %s failed: %s", p.payment_id, exc)
            return EventResult("late_success", p.payment_id)
        if applied.changed:
            await self._tell(p)
        return EventResult(applied.outcome, p.payment_id)

    async def _tell(self, p: PaymentRow) -> None:
        """Hand a final outcome to the shop and record that it was handed over. A shop that
        raises is told again by resend_outcomes."""
        try:
            if p.status is PaymentStatus.SUCCEEDED:
                await self.outcomes.succeeded(p.ref, p.payment_id)
            elif p.status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
                await self.outcomes.failed(p.ref, p.payment_id, p.detail or p.status.value)
            else:
                return
        except Exception:
            log.exception("payment outcomes for %s (%s) raised; kept owed", p.ref, p.payment_id)
            return
        await self.store.mark_notified(p.payment_id, self._now_ms())

    async def resend_outcomes(self) -> int:
        """Tell the shop the outcomes it has not acknowledged yet (its handler raised, or the
        process stopped between the commit and the call); how many were handed over. This is
        the one path that may tell the shop of an outcome twice, so its handlers are idempotent
        per ref."""
        sent = 0
        for p in await self.store.owed_outcomes():
            await self._tell(p)
            sent += 1
        return sent

    async def refund(self, payment_id: str, amount: Money | None = None) -> PaymentRow:
        """Refund a succeeded payment (all of it, or `amount`). PaymentError when it was not
        paid or the provider refused."""
        p = await self.store.get(payment_id)
        if p is None:
            raise NotFound("no such payment")
        if p.status is not PaymentStatus.SUCCEEDED or p.provider_id is None:
            raise PaymentError(f"only a succeeded payment can be refunded (this one is {p.status})")
        if amount is not None and (
            amount.currency != p.currency
            or not 0 < amount.amount_minor <= p.amount_minor - p.refunded_minor
        ):
            raise PaymentError(
                "a refund is positive, in the payment's currency, and not more than paid"
            )
        answer = await self.provider.refund(p.provider_id, amount)
        refunded = p.refunded_minor + (
            p.amount_minor - p.refunded_minor if amount is None else amount.amount_minor
        )
        if answer.status is PaymentStatus.REFUNDED:
            after = await self.store.mark_refunded(payment_id, refunded, self._now_ms())
            assert after is not None
            return after
        return p

    async def expire_stale(self, older_than_s: float) -> list[str]:
        """Fail payments still created or processing `older_than_s` after they were started,
        and tell the shop (it releases their reservations). The ids expired."""
        cutoff = self._now_ms() - int(older_than_s * 1000)
        expired: list[str] = []
        for p in await self.store.stale(cutoff):
            reason = f"not paid within {int(older_than_s)} s"
            moved = await self.store.set_status(
                p.payment_id,
                frozenset({PaymentStatus.CREATED, PaymentStatus.PROCESSING}),
                PaymentStatus.FAILED,
                reason,
                self._now_ms(),
            )
            if not moved:
                continue  # an event got there first
            expired.append(p.payment_id)
            after = await self.store.get(p.payment_id)
            assert after is not None
            await self._tell(after)
        return expired

    async def payout(self, ref: str, amount: Money, destination: str, description: str) -> str:
        """Pay money out (a market-credit redemption) to `destination`: the provider's transfer
        id. The caller stores what it pays out before it calls (credits_store); a retry with
        the same ref is the same transfer at the provider. PaymentError when refused."""
        if amount.amount_minor <= 0:
            raise PaymentError("a payout amount is positive")
        if not destination.strip():
            raise PaymentError("a payout names where the money goes")
        return await self.provider.payout(ref, amount, destination.strip(), description)

    async def put_rate(self, rate: FxRate) -> None:
        """Store an exchange rate (an admin's entry: pair, day, source)."""
        await self.store.put_rate(rate)

    async def rates(self, base: str | None = None, quote: str | None = None) -> list[FxRate]:
        return await self.store.rates(base, quote)

    async def rate_on(self, base: str, quote: str, day: date) -> FxRate | None:
        """The newest stored rate for the pair dated on or before `day`."""
        return await self.store.rate_on(base, quote, day)

    async def stripe_webhook(self, payload: bytes, signature: str | None) -> EventResult:
        """A Stripe webhook delivery: verified, then applied. SignatureError or PaymentError
        (a 400 with its message) when refused; nothing is stored then."""
        if not isinstance(self.provider, StripeProvider):
            raise NotFound("this aggregator takes no Stripe payments")
        try:
            event = self.provider.verify(payload, signature, self.now())
        except SignatureError:
            self.counters["bad_signature"] += 1
            raise
        if isinstance(event, str):
            self.counters[f"ignored:{event}"] += 1
            return EventResult("ignored")
        return await self.on_event(event)

    async def sandbox_complete(
        self, payment_id: str, succeed: bool, caller_account_id: str, caller_is_admin: bool
    ) -> EventResult:
        """The sandbox's "pay" button: the buyer who owns the payment's ref (or an admin)
        completes it, through the same event path as a webhook."""
        if not isinstance(self.provider, SandboxProvider):
            raise NotFound("the sandbox payment provider is not configured")
        p = await self.store.get(payment_id)
        if p is None or p.provider_id is None:
            raise NotFound("no such payment")
        if not caller_is_admin:
            owner = None if self.owner_of is None else await self.owner_of(p.ref)
            if owner is None or owner != caller_account_id:
                raise NotFound("no such payment")
        return await self.on_event(self.provider.complete(p.provider_id, succeed))


class SandboxProvider:
    """The embedded provider for the demo and tests: no network, no money. A payment is
    processing until `complete` says how it ended; that makes the same kind of event a webhook
    would, which the caller feeds to PaymentService.on_event."""

    name = "sandbox"

    def __init__(self) -> None:
        self.payments: dict[str, Money] = {}
        self.refunded: dict[str, int] = {}
        self.payouts: dict[str, tuple[str, Money, str]] = {}  # ref -> (id, amount, destination)
        # Destinations the sandbox refuses (a closed bank account, say), for tests and demos.
        self.refuse_destinations: set[str] = set()

    async def create(
        self, ref: str, amount: Money, description: str, *, attempt: str = ""
    ) -> ProviderPayment:
        provider_id = "sbx_" + secrets.token_hex(12)
        self.payments[provider_id] = amount
        return ProviderPayment(provider_id, PaymentStatus.PROCESSING, None)

    def complete(self, provider_id: str, succeed: bool) -> PaymentEvent:
        """The event of the payment's end. Its id is fixed per payment and outcome, so pressing
        the button twice delivers the same event twice (a no-op the second time)."""
        if provider_id not in self.payments:
            raise UnknownPayment("unknown sandbox payment")
        if succeed:
            return PaymentEvent(
                f"sbx_evt_{provider_id}_succeeded",
                self.name,
                "payment.succeeded",
                provider_id,
                PaymentStatus.SUCCEEDED,
            )
        return PaymentEvent(
            f"sbx_evt_{provider_id}_failed",
            self.name,
            "payment.failed",
            provider_id,
            PaymentStatus.FAILED,
            reason="the sandbox declined the payment",
        )

    async def refund(self, provider_id: str, amount: Money | None) -> ProviderPayment:
        paid = self.payments.get(provider_id)
        if paid is None:
            raise PaymentError("unknown sandbox payment")
        self.refunded[provider_id] = self.refunded.get(provider_id, 0) + (
            paid.amount_minor if amount is None else amount.amount_minor
        )
        return ProviderPayment(provider_id, PaymentStatus.REFUNDED, None)

    async def payout(self, ref: str, amount: Money, destination: str, description: str) -> str:
        if destination in self.refuse_destinations:
            raise PaymentError(f"the sandbox refused the payout to {destination}")
        done = self.payouts.get(ref)
        if done is None:
            done = ("sbx_po_" + secrets.token_hex(12), amount, destination)
            self.payouts[ref] = done
        return done[0]


# Stripe PaymentIntent statuses: waiting for the buyer (created) or settling (processing);
# requires_capture is treated as processing (we never ask for separate capture).
_STRIPE_STATUS = {
    "requires_payment_method": PaymentStatus.CREATED,
    "requires_confirmation": PaymentStatus.CREATED,
    "requires_action": PaymentStatus.CREATED,
    "processing": PaymentStatus.PROCESSING,
    "requires_capture": PaymentStatus.PROCESSING,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.CANCELED,
}


class StripeProvider:
    """Stripe's PaymentIntents over HTTP (form-encoded, bearer secret key). The statuses it
    returns are informative only: a payment succeeds for us on a verified
    payment_intent.succeeded webhook."""

    name = "stripe"

    def __init__(
        self, api_base: str, secret_key: str, webhook_secret: str, http: httpx.AsyncClient
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._secret_key = secret_key
        self._webhook_secret = webhook_secret
        self.http = http

    async def _post(
        self, path: str, form: dict[str, str], idempotency_key: str
    ) -> dict[str, object]:
        try:
            r = await self.http.post(
                f"{self.api_base}{path}",
                data=form,
                headers={
                    "Authorization": f"Bearer {self._secret_key}",
                    "Idempotency-Key": idempotency_key,
                },
            )
        except httpx.HTTPError as exc:
            raise PaymentError(
                f"the payment provider could not be reached ({type(exc).__name__})"
            ) from None
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise PaymentError(f"the payment provider answered {r.status_code} without JSON")
        if r.status_code >= 400:
            error = doc.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            raise PaymentError(f"the payment provider refused: {message or r.status_code}")
        return doc

    async def create(
        self, ref: str, amount: Money, description: str, *, attempt: str = ""
    ) -> ProviderPayment:
        doc = await self._post(
            "/v1/payment_intents",
            {
                "amount": str(amount.amount_minor),
                "currency": amount.currency.lower(),
                "description": description,
                "metadata[ref]": ref,
                "automatic_payment_methods[enabled]": "true",
            },
            # Stripe answers a retried create (a timeout on our side) with the same intent; a
            # new attempt after a failed one (same ref) must not get the old intent back (Stripe
            # keeps keys for 24 h), so the key names the attempt.
            idempotency_key=f"{ref}/{attempt}" if attempt else ref,
        )
        provider_id, status = doc.get("id"), doc.get("status")
        secret = doc.get("client_secret")
        if not isinstance(provider_id, str) or status not in _STRIPE_STATUS:
            raise PaymentError("the payment provider's answer has no payment intent")
        return ProviderPayment(
            provider_id,
            _STRIPE_STATUS[str(status)],
            secret if isinstance(secret, str) else None,
        )

    async def refund(self, provider_id: str, amount: Money | None) -> ProviderPayment:
        form = {"payment_intent": provider_id}
        if amount is not None:
            form["amount"] = str(amount.amount_minor)
        doc = await self._post(
            "/v1/refunds",
            form,
            idempotency_key=f"refund-{provider_id}-{form.get('amount', 'all')}",
        )
        status = doc.get("status")
        if status in ("succeeded", "pending"):
            return ProviderPayment(provider_id, PaymentStatus.REFUNDED, None)
        raise PaymentError(f"the refund was not made (status {status})")

    async def payout(self, ref: str, amount: Money, destination: str, description: str) -> str:
        """A Connect transfer to the homeowner's connected account (`acct_...`): Stripe pays
        out to bank accounts of connected accounts, not to a bank account we name."""
        if not destination.startswith("acct_"):
            raise PaymentError(
                "with Stripe, credits are paid out to the homeowner's connected Stripe account "
                "(an id starting acct_)"
            )
        doc = await self._post(
            "/v1/transfers",
            {
                "amount": str(amount.amount_minor),
                "currency": amount.currency.lower(),
                "destination": destination,
                "description": description,
                "transfer_group": ref,
                "metadata[ref]": ref,
            },
            idempotency_key=f"payout-{ref}",
        )
        transfer_id = doc.get("id")
        if not isinstance(transfer_id, str):
            raise PaymentError("the payment provider's answer has no transfer")
        return transfer_id

    def verify(self, payload: bytes, signature: str | None, now_s: float) -> PaymentEvent | str:
        """A webhook body checked against its Stripe-Signature header: the event, or the type
        (str) of an event we do not handle. SignatureError / PaymentError when refused."""
        verify_stripe_signature(payload, signature, self._webhook_secret, now_s)
        return parse_stripe_event(payload)
