"""Money, currencies, exchange rates, payment statuses and the rules around them (pure).

Owns: amounts as integers in minor units with an ISO 4217 code, conversion by a stored rate
(round half to even, in minor units of the target currency), the statuses a payment moves
through, the flat bank-transfer fee for market credits, and checking a Stripe webhook signature
(HMAC-SHA256 over "{t}.{body}"; no Stripe library: the product talks HTTP).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

__all__ = [
    "CURRENCY_EXPONENTS",
    "LIVE_STATUSES",
    "STRIPE_TOLERANCE_S",
    "BankTransfer",
    "FxRate",
    "Money",
    "PaymentError",
    "PaymentEvent",
    "PaymentStatus",
    "SignatureError",
    "bank_transfer",
    "can_move",
    "convert",
    "parse_stripe_event",
    "verify_stripe_signature",
]


class PaymentError(ValueError):
    """A payment request or event that cannot be accepted; the message is for people."""


class SignatureError(PaymentError):
    """A webhook whose signature does not prove it came from the provider."""


# ISO 4217 minor-unit exponents of the currencies we take. A code not listed here is refused
# rather than guessed: a wrong exponent is a hundredfold mistake in an amount.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2,
    "CAD": 2,
    "CHF": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "JPY": 0,
    "KRW": 0,
    "NOK": 2,
    "NZD": 2,
    "PLN": 2,
    "SEK": 2,
    "USD": 2,
}


def _exponent(currency: str) -> int:
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        raise PaymentError(f"{currency!r} is not an ISO 4217 currency code (three letters)")
    if not currency.isupper():
        raise PaymentError(f"currency codes are upper case: {currency.upper()}, not {currency}")
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise PaymentError(f"currency {currency} is not supported") from None


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in the currency's minor units (cents, pence; yen have none)."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass: Money(True, "USD") is a bug, not one cent.
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise PaymentError("amounts are whole minor units (an integer)")
        _exponent(self.currency)

    @property
    def exponent(self) -> int:
        """Decimal places of the currency (2 for EUR, 0 for JPY)."""
        return _exponent(self.currency)

    def __str__(self) -> str:
        e = self.exponent
        sign = "-" if self.amount_minor < 0 else ""
        whole, part = divmod(abs(self.amount_minor), 10**e)
        return (
            f"{sign}{whole}.{part:0{e}d} {self.currency}" if e else f"{sign}{whole} {self.currency}"
        )


@dataclass(frozen=True, slots=True)
class FxRate:
    """`rate_ppm` millionths of a `quote` unit per one `base` unit (whole units, not minor):
    EUR→USD at 1.0843 is FxRate("EUR", "USD", 1_084_300, ...). It converts base into quote only;
    the other way needs its own stored rate (a bank's buy and sell rates differ)."""

    base: str
    quote: str
    rate_ppm: int
    as_of: date
    source: str

    def __post_init__(self) -> None:
        _exponent(self.base)
        _exponent(self.quote)
        if self.base == self.quote:
            raise PaymentError("a rate converts between two different currencies")
        if isinstance(self.rate_ppm, bool) or not isinstance(self.rate_ppm, int):
            raise PaymentError("rate_ppm is an integer (millionths)")
        if self.rate_ppm <= 0:
            raise PaymentError("a rate is positive")
        if not self.source.strip():
            raise PaymentError("a rate says where it came from (source)")


def _div_half_even(numerator: int, denominator: int) -> int:
    # Floor division leaves a remainder in [0, denominator) for negatives too, so one rule
    # rounds both signs symmetrically.
    q, r = divmod(numerator, denominator)
    twice = 2 * r
    if twice > denominator or (twice == denominator and q % 2 == 1):
        q += 1
    return q


def convert(money: Money, rate: FxRate) -> Money:
    """`money` (in the rate's base currency) in the quote currency, rounded half to even in the
    quote's minor units. Money in any other currency is refused, not silently inverted."""
    if money.currency != rate.base:
        raise PaymentError(
            f"the rate converts {rate.base} to {rate.quote}; this amount is in {money.currency}"
        )
    numerator = money.amount_minor * rate.rate_ppm * 10 ** _exponent(rate.quote)
    denominator = 1_000_000 * 10 ** _exponent(rate.base)
    return Money(_div_half_even(numerator, denominator), rate.quote)


class PaymentStatus(StrEnum):
    """created: stored, the payer has not paid yet; processing: the provider is settling it;
    succeeded: paid (the only status that fulfils); failed, canceled: no money taken;
    refunded: paid and (fully) given back."""

    CREATED = "created"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"


# A ref may have one payment in these statuses at a time: one that can still take money, or
# has taken it. After failed or canceled the buyer may try again under the same ref.
LIVE_STATUSES = frozenset(
    {PaymentStatus.CREATED, PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED}
)

_MOVES: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.CREATED: frozenset(
        {
            PaymentStatus.PROCESSING,
            PaymentStatus.SUCCEEDED,
            PaymentStatus.FAILED,
            PaymentStatus.CANCELED,
        }
    ),
    PaymentStatus.PROCESSING: frozenset(
        {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED}
    ),
    PaymentStatus.SUCCEEDED: frozenset({PaymentStatus.REFUNDED}),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CANCELED: frozenset(),
    PaymentStatus.REFUNDED: frozenset(),
}


def can_move(current: PaymentStatus, to: PaymentStatus) -> bool:
    """Whether a payment in `current` may become `to`. Failed and canceled are final: money
    that arrives after them is a late success, refunded rather than fulfilled (the order's
    reservations were already released)."""
    return to in _MOVES[current]


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What a provider says happened to one of its payments (a verified webhook, or the
    sandbox's equivalent). `status` is the status it moves the payment to; `refunded_minor` is
    the total refunded so far, for refund events."""

    event_id: str
    provider: str
    type: str
    provider_id: str
    status: PaymentStatus
    reason: str = ""
    refunded_minor: int | None = None


@dataclass(frozen=True, slots=True)
class BankTransfer:
    """A top-up or redemption of market credits by bank transfer: `gross` moves on one side,
    `fee` is kept, `net` arrives on the other (credits for a top-up, the bank for a redemption)."""

    gross: Money
    fee: Money
    net: Money


def bank_transfer(gross: Money, fee_minor: int) -> BankTransfer:
    """The flat bank-transfer fee rule: the configured fee (minor units of the transfer's
    currency) comes off the amount, the same way for topping up and for redeeming. An amount
    the fee would eat entirely is refused."""
    if isinstance(fee_minor, bool) or not isinstance(fee_minor, int) or fee_minor < 0:
        raise PaymentError("the transfer fee is a non-negative integer in minor units")
    if gross.amount_minor <= 0:
        raise PaymentError("a transfer amount is positive")
    if gross.amount_minor <= fee_minor:
        fee = Money(fee_minor, gross.currency)
        raise PaymentError(f"the amount must be more than the transfer fee of {fee}")
    return BankTransfer(
        gross,
        Money(fee_minor, gross.currency),
        Money(gross.amount_minor - fee_minor, gross.currency),
    )


# Stripe's default: a signature whose timestamp is older (or newer) than this is refused, so a
# captured webhook cannot be replayed later.
STRIPE_TOLERANCE_S = 300


def verify_stripe_signature(
    payload: bytes,
    header: str | None,
    secret: str,
    now_s: float,
    tolerance_s: int = STRIPE_TOLERANCE_S,
) -> None:
    """Raise SignatureError unless `header` ("t=<unix>,v1=<hex>[,v1=...]") signs `payload` with
    `secret` at a time within `tolerance_s` of `now_s`. Any one v1 entry may match (Stripe sends
    several while an endpoint's secret is being rolled)."""
    if not header:
        raise SignatureError("no signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("bad signature") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("no signature")
    signed = str(timestamp).encode() + b"." + payload
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    # Compare against every entry (no early exit), in constant time each.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureError("bad signature")
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance")


# Stripe event types that change a payment, and the status each one moves it to.
_STRIPE_TYPES: dict[str, PaymentStatus] = {
    "payment_intent.succeeded": PaymentStatus.SUCCEEDED,
    "payment_intent.payment_failed": PaymentStatus.FAILED,
    "payment_intent.canceled": PaymentStatus.CANCELED,
    "charge.refunded": PaymentStatus.REFUNDED,
}


def parse_stripe_event(payload: bytes) -> PaymentEvent | str:
    """A verified webhook body as a PaymentEvent, or the event type (a str) when it is a type we
    do not handle. PaymentError when the body is not a Stripe event."""
    try:
        doc = json.loads(payload)
        event_id = doc["id"]
        type_ = doc["type"]
        obj = doc["data"]["object"]
    except (ValueError, KeyError, TypeError):
        raise PaymentError("not a Stripe event") from None
    if not isinstance(event_id, str) or not isinstance(type_, str) or not isinstance(obj, dict):
        raise PaymentError("not a Stripe event")
    status = _STRIPE_TYPES.get(type_)
    if status is None:
        return type_
    if type_ == "charge.refunded":
        intent = obj.get("payment_intent")
        refunded = obj.get("amount_refunded")
        if not isinstance(refunded, int) or isinstance(refunded, bool):
            raise PaymentError("charge.refunded without amount_refunded")
        if not isinstance(intent, str):
            raise PaymentError("charge.refunded without its payment_intent")
        return PaymentEvent(event_id, "stripe", type_, intent, status, refunded_minor=refunded)
    intent = obj.get("id")
    if not isinstance(intent, str):
        raise PaymentError(f"{type_} without the payment intent's id")
    reason = ""
    if status is PaymentStatus.FAILED:
        error = obj.get("last_payment_error")
        message = error.get("message") if isinstance(error, dict) else None
        reason = message if isinstance(message, str) else "the payment failed"
    elif status is PaymentStatus.CANCELED:
        why = obj.get("cancellation_reason")
        reason = f"canceled: {why}" if isinstance(why, str) else "canceled"
    return PaymentEvent(event_id, "stripe", type_, intent, status, reason=reason)
