"""Monthly offset subscriptions of the carbon shop: the rules, pure and integer-only.

A subscription buys `kg_per_month` of one project every calendar month (UTC), retired for its
beneficiary. Each month's purchase is an ordinary shop order (reserved, paid, retired); the
month is its key, so a month is bought at most once however often the renewal runs. The lot is
chosen at renewal: the cheapest lot of the project in the subscription's currency that still
has the kilograms (older lot first on a tie), so the price follows what is on offer that month.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_KG_PER_MONTH = 1_000_000  # a kilotonne a month: far beyond a retail subscription


class SubscriptionError(ValueError):
    """A subscription rule is broken; the message is a plain reason."""


def check_kg_per_month(kg: int) -> int:
    if isinstance(kg, bool) or not isinstance(kg, int) or kg <= 0:
        raise SubscriptionError(f"a monthly amount is a positive whole number of kg, not {kg!r}")
    if kg > MAX_KG_PER_MONTH:
        raise SubscriptionError(f"a monthly amount is at most {MAX_KG_PER_MONTH} kg")
    return kg


def period_of(ms: int) -> str:
    """The calendar month (UTC) of a Unix-ms time, as `YYYY-MM`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


def next_period_start_ms(ms: int) -> int:
    """The first instant (UTC) of the month after the one `ms` falls in."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class LotOffer:
    """A lot as renewal sees it."""

    lot_id: str
    currency: str
    price_minor_per_t: int
    available_kg: int
    created_ms: int


def pick_lot(lots: Sequence[LotOffer], kg: int, currency: str) -> LotOffer:
    """The cheapest lot in `currency` with `kg` left (older first on a tie); SubscriptionError
    naming what is missing otherwise."""
    check_kg_per_month(kg)
    in_currency = [lot for lot in lots if lot.currency == currency]
    if not in_currency:
        raise SubscriptionError(f"the project has no lot priced in {currency}")
    enough = [lot for lot in in_currency if lot.available_kg >= kg]
    if not enough:
        most = max(lot.available_kg for lot in in_currency)
        raise SubscriptionError(
            f"no lot of the project has {kg} kg left in {currency} (at most {most} kg)"
        )
    return min(enough, key=lambda lot: (lot.price_minor_per_t, lot.created_ms, lot.lot_id))


# Packages: monthly amounts sized to a share of the buyer's yearly footprint (their saved
# baseline, else the calculator's 20 t average), so "cover half my footprint" is one choice.
PACKAGE_SHARES_PCT = (25, 50, 100)


@dataclass(frozen=True, slots=True)
class Package:
    key: str
    label: str
    share_pct: int
    kg_per_month: int


def packages(footprint_kg_per_year: int) -> list[Package]:
    """A package per share of the yearly footprint: its twelfth, rounded up to whole kg (at
    least 1 kg), so twelve months cover at least the share."""
    if isinstance(footprint_kg_per_year, bool) or footprint_kg_per_year < 0:
        raise SubscriptionError("a footprint is a non-negative number of kg a year")
    out = []
    for pct in PACKAGE_SHARES_PCT:
        kg = max(1, -(-footprint_kg_per_year * pct // (100 * 12)))
        label = "all of my footprint" if pct == 100 else f"{pct} % of my footprint"
        out.append(Package(f"footprint-{pct}", label, pct, check_kg_per_month(kg)))
    return out
