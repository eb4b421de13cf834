"""The monthly subscription rules: months in UTC, the amount's bounds, and which lot a month
buys from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.domain.shop_subscriptions import (
    LotOffer,
    SubscriptionError,
    check_kg_per_month,
    next_period_start_ms,
    packages,
    period_of,
    pick_lot,
)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def test_months_are_utc_calendar_months() -> None:
    assert period_of(ms(2026, 12, 31, 23, 59, 59)) == "2026-12"
    assert period_of(ms(2027, 1, 1)) == "2027-01"
    assert next_period_start_ms(ms(2026, 12, 15)) == ms(2027, 1, 1)
    assert next_period_start_ms(ms(2026, 2, 1)) == ms(2026, 3, 1)


@pytest.mark.parametrize("kg", [0, -1, True, 1.5, 1_000_001])
def test_a_monthly_amount_is_a_positive_bounded_whole_number(kg: object) -> None:
    with pytest.raises(SubscriptionError):
        check_kg_per_month(kg)  # type: ignore[arg-type]


def test_the_cheapest_lot_in_the_currency_with_the_kg_left_older_first() -> None:
    lots = [
        LotOffer("dear", "EUR", 20_000, 500, 1),
        LotOffer("cheap-small", "EUR", 9_000, 10, 2),
        LotOffer("cheap-new", "EUR", 12_000, 500, 5),
        LotOffer("cheap-old", "EUR", 12_000, 500, 3),
        LotOffer("dollars", "USD", 1_000, 500, 0),
    ]
    assert pick_lot(lots, 100, "EUR").lot_id == "cheap-old"
    assert pick_lot(lots, 10, "EUR").lot_id == "cheap-small"
    assert pick_lot(lots, 100, "USD").lot_id == "dollars"
    with pytest.raises(SubscriptionError, match="no lot priced in GBP"):
        pick_lot(lots, 1, "GBP")
    with pytest.raises(SubscriptionError, match="at most 500 kg"):
        pick_lot(lots, 501, "EUR")


def test_packages_cover_a_share_of_the_yearly_footprint_in_twelve_months() -> None:
    got = packages(20_000)
    assert [(p.share_pct, p.kg_per_month) for p in got] == [(25, 417), (50, 834), (100, 1667)]
    assert all(p.kg_per_month * 12 * 100 >= 20_000 * p.share_pct for p in got)
    assert [p.kg_per_month for p in packages(0)] == [1, 1, 1]
    with pytest.raises(SubscriptionError):
        packages(-1)
