"""Money, currencies, FX conversion, the bank-transfer fee and Stripe webhook signatures
(signed with the stripe package's own helper, so our verifier agrees with Stripe's signer)."""

from __future__ import annotations

import json
import time
from datetime import date

import pytest
import stripe

from cloud.domain.payments import (
    FxRate,
    Money,
    PaymentError,
    PaymentStatus,
    SignatureError,
    bank_transfer,
    can_move,
    convert,
    parse_stripe_event,
    verify_stripe_signature,
)

SECRET = "whsec_test_secret"


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("CHF", 2),
        ("JPY", 0),
        ("SEK", 2),
        ("AUD", 2),
        ("CAD", 2),
    ],
)
def test_exponents(currency: str, exponent: int) -> None:
    assert Money(100, currency).exponent == exponent


@pytest.mark.parametrize(
    ("currency", "message"),
    [
        ("usd", "upper case"),
        ("US", "three letters"),
        ("U$D", "three letters"),
        ("XYZ", "not supported"),
        ("", "three letters"),
    ],
)
def test_bad_currencies(currency: str, message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        Money(1, currency)


def test_amounts_are_integers() -> None:
    with pytest.raises(PaymentError):
        Money(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(PaymentError):
        Money(True, "EUR")
    assert str(Money(12345, "EUR")) == "123.45 EUR"
    assert str(Money(-5, "USD")) == "-0.05 USD"
    assert str(Money(500, "JPY")) == "500 JPY"


def rate(base: str, quote: str, ppm: int) -> FxRate:
    return FxRate(base, quote, ppm, date(2026, 3, 1), "ECB")


def test_convert_direction_and_exponents() -> None:
    eur_usd = rate("EUR", "USD", 1_084_300)
    assert convert(Money(10_000, "EUR"), eur_usd) == Money(10_843, "USD")
    with pytest.raises(PaymentError, match="converts EUR to USD"):
        convert(Money(10_000, "USD"), eur_usd)
    # 0-decimal quote: 1.00 EUR at 161.23 JPY/EUR is 161 JPY; 0-decimal base: 1000 JPY at
    # 0.0062 EUR/JPY is 6.20 EUR.
    assert convert(Money(100, "EUR"), rate("EUR", "JPY", 161_230_000)) == Money(161, "JPY")
    assert convert(Money(1000, "JPY"), rate("JPY", "EUR", 6_200)) == Money(620, "EUR")


def test_convert_rounds_half_to_even() -> None:
    half = rate("USD", "EUR", 500_000)  # 0.5: odd cents land exactly on a half
    assert convert(Money(1, "USD"), half) == Money(0, "EUR")  # 0.5 -> 0
    assert convert(Money(3, "USD"), half) == Money(2, "EUR")  # 1.5 -> 2
    assert convert(Money(5, "USD"), half) == Money(2, "EUR")  # 2.5 -> 2
    assert convert(Money(-3, "USD"), half) == Money(-2, "EUR")  # -1.5 -> -2
    assert convert(Money(-5, "USD"), half) == Money(-2, "EUR")  # -2.5 -> -2
    assert convert(Money(7, "USD"), rate("USD", "EUR", 900_000)) == Money(6, "EUR")  # 6.3
    assert convert(Money(7, "USD"), rate("USD", "EUR", 950_000)) == Money(7, "EUR")  # 6.65


def test_rates_are_checked() -> None:
    for bad in (
        lambda: rate("EUR", "EUR", 1_000_000),
        lambda: rate("EUR", "USD", 0),
        lambda: FxRate("EUR", "USD", 1, date(2026, 1, 1), " "),
    ):
        with pytest.raises(PaymentError):
            bad()


def test_bank_transfer_fee() -> None:
    t = bank_transfer(Money(10_000, "EUR"), 150)
    assert (t.gross, t.fee, t.net) == (Money(10_000, "EUR"), Money(150, "EUR"), Money(9_850, "EUR"))
    assert bank_transfer(Money(1, "JPY"), 0).net == Money(1, "JPY")
    with pytest.raises(PaymentError, match="more than the transfer fee of 1.50 EUR"):
        bank_transfer(Money(150, "EUR"), 150)
    with pytest.raises(PaymentError):
        bank_transfer(Money(-100, "EUR"), 0)
    with pytest.raises(PaymentError):
        bank_transfer(Money(100, "EUR"), -1)


def test_status_moves() -> None:
    assert can_move(PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED)
    assert can_move(PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED)
    assert not can_move(PaymentStatus.FAILED, PaymentStatus.SUCCEEDED)
    assert not can_move(PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    assert not can_move(PaymentStatus.REFUNDED, PaymentStatus.SUCCEEDED)


def body(type_: str = "payment_intent.succeeded", obj: dict[str, object] | None = None) -> bytes:
    obj = obj if obj is not None else {"id": "pi_1", "object": "payment_intent"}
    return json.dumps({"id": "evt_1", "type": type_, "data": {"object": obj}}).encode()


def header(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=timestamp
    )


def test_signature_from_stripes_signer_verifies() -> None:
    payload = body()
    verify_stripe_signature(payload, header(payload), SECRET, time.time())


def test_refused_signatures() -> None:
    payload = body()
    now = time.time()
    good = header(payload)
    cases = [
        (payload, None, "no signature"),
        (payload, "", "no signature"),
        (payload, "t=123", "no signature"),
        (payload.replace(b"pi_1", b"pi_2"), good, "bad signature"),  # tampered body
        (payload, header(payload, "whsec_other"), "bad signature"),  # wrong secret
        (payload, header(payload, timestamp=int(now) - 400), "timestamp outside the tolerance"),
        (payload, header(payload, timestamp=int(now) + 400), "timestamp outside the tolerance"),
        (payload, "t=abc,v1=00", "bad signature"),
    ]
    for p, h, reason in cases:
        with pytest.raises(SignatureError) as got:
            verify_stripe_signature(p, h, SECRET, now)
        assert str(got.value) == reason, (h, reason)
    # Inside the tolerance still passes.
    verify_stripe_signature(payload, header(payload, timestamp=int(now) - 290), SECRET, now)


def test_any_of_several_v1_entries() -> None:
    payload = body()
    now = int(time.time())
    good = header(payload, timestamp=now)
    other = header(payload, "whsec_old", timestamp=now)
    good_v1 = good.split("v1=")[1]
    other_v1 = other.split("v1=")[1]
    both = f"t={now},v1={other_v1},v1={good_v1},v0=ignored"
    verify_stripe_signature(payload, both, SECRET, now)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_stripe_signature(payload, f"t={now},v1={other_v1},v1=deadbeef", SECRET, now)


def test_parse_stripe_events() -> None:
    e = parse_stripe_event(body())
    assert not isinstance(e, str)
    assert (e.event_id, e.provider_id, e.status) == ("evt_1", "pi_1", PaymentStatus.SUCCEEDED)
    failed = parse_stripe_event(
        body(
            "payment_intent.payment_failed",
            {"id": "pi_1", "last_payment_error": {"message": "Your card was declined."}},
        )
    )
    assert not isinstance(failed, str)
    assert (failed.status, failed.reason) == (PaymentStatus.FAILED, "Your card was declined.")
    refunded = parse_stripe_event(
        body("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1", "amount_refunded": 300})
    )
    assert not isinstance(refunded, str)
    assert (refunded.provider_id, refunded.refunded_minor) == ("pi_1", 300)
    assert parse_stripe_event(body("customer.created", {"id": "cus_1"})) == "customer.created"
    with pytest.raises(PaymentError, match="not a Stripe event"):
        parse_stripe_event(b"[]")
