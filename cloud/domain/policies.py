"""Automated trading policies: what a homeowner's standing instructions ask for in one delivery
interval. Pure: the policy engine (cloud.services.policies) gathers the facts and places, amends
or leaves the orders this decides.

A policy has two independent halves:

* sell: offer the site's surplus at no less than `sell_min_price`, keeping `battery_reserve`
  of the forecast for the home (the battery's share it charges from solar before anything is
  sold), at most `sell_max_wh` per interval;
* buy: bid for up to `buy_max_wh` per interval at no more than `buy_max_price`.

The quantities are integers (Wh), prices whole minor units per kWh. The order service still runs
every pre-trade check: a policy never gets past what a manual order could not.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.market import Side

PERMILLE = 1_000


@dataclass(frozen=True, slots=True)
class TradingPolicy:
    """A homeowner's standing instructions for one site."""

    site_id: str
    account_id: str
    enabled: bool = True
    sell_min_price: int | None = None  # None: never sell
    sell_max_wh: int = 0
    battery_reserve_permille: int = 0
    buy_max_price: int | None = None  # None: never buy
    buy_max_wh: int = 0

    def __post_init__(self) -> None:
        if min(self.sell_max_wh, self.buy_max_wh) < 0:
            raise ValueError("policy quantities are not negative")
        if not 0 <= self.battery_reserve_permille <= PERMILLE:
            raise ValueError("the battery reserve is 0..1000 permille of the forecast")
        for p in (self.sell_min_price, self.buy_max_price):
            if p is not None and p < 0:
                raise ValueError("policy prices are not negative")

    @property
    def source(self) -> str:
        """The `source` every order of this policy carries."""
        return f"policy:{self.site_id}"


@dataclass(frozen=True, slots=True)
class Intent:
    """One order a policy wants resting for an interval."""

    side: Side
    quantity_wh: int
    limit_price: int


def intents(policy: TradingPolicy, *, offer_room_wh: int, forecast_wh: int) -> list[Intent]:
    """The orders `policy` wants for one interval.

    `offer_room_wh` is what the market still lets the site offer for it (tradable Tgen plus the
    forecast share, minus what it already offered); `forecast_wh` its expected generation.
    """
    if not policy.enabled:
        return []
    out: list[Intent] = []
    if policy.sell_min_price is not None and policy.sell_max_wh > 0:
        surplus = forecast_wh * (PERMILLE - policy.battery_reserve_permille) // PERMILLE
        wh = min(policy.sell_max_wh, surplus, offer_room_wh)
        if wh > 0:
            out.append(Intent(Side.SELL, wh, policy.sell_min_price))
    if policy.buy_max_price is not None and policy.buy_max_wh > 0:
        out.append(Intent(Side.BUY, policy.buy_max_wh, policy.buy_max_price))
    return out
