"""Automated trading policies: what a homeowner's standing instructions ask for in one delivery
interval. Pure: the policy engine (cloud.services.policies) gathers the facts and places, amends
or leaves the orders this decides.

A policy has three halves:

* sell: offer the site's surplus at no less than `sell_min_price`, keeping `battery_reserve`
  of the forecast for the home (the battery's share it charges from solar before anything is
  sold), at most `sell_max_wh` per interval;
* buy: bid for up to `buy_max_wh` per interval at no more than `buy_max_price`;
* keep the battery above a state of charge: `min_soc_permille` of its usable capacity (the
  reserve) stays stored. While the stored energy (live, from the ledger's Tstorage) is below
  the reserve, the deficit comes out of the surplus first (solar refills the battery before
  anything is sold), and whatever the forecast will not cover is added to the bid, at no more
  than `buy_max_price` (a top-up needs a price cap: without one nothing is bought).

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
    min_soc_permille: int = 0  # of the battery's usable capacity; 0: no reserve kept

    def __post_init__(self) -> None:
        if min(self.sell_max_wh, self.buy_max_wh) < 0:
            raise ValueError("policy quantities are not negative")
        if not 0 <= self.battery_reserve_permille <= PERMILLE:
            raise ValueError("the battery reserve is 0..1000 permille of the forecast")
        if not 0 <= self.min_soc_permille <= PERMILLE:
            raise ValueError("the minimum state of charge is 0..1000 permille of the capacity")
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


def intents(
    policy: TradingPolicy,
    *,
    offer_room_wh: int,
    forecast_wh: int,
    stored_wh: int = 0,
    capacity_wh: int = 0,
) -> list[Intent]:
    """The orders `policy` wants for one interval.

    `offer_room_wh` is what the market still lets the site offer for it (tradable Tgen plus the
    forecast share, minus what it already offered); `forecast_wh` its expected generation;
    `stored_wh` the energy in its battery and `capacity_wh` the battery's usable capacity (0:
    no battery, so no state of charge to keep).
    """
    if not policy.enabled:
        return []
    reserve = capacity_wh * policy.min_soc_permille // PERMILLE
    deficit = max(0, reserve - stored_wh)
    out: list[Intent] = []
    if policy.sell_min_price is not None and policy.sell_max_wh > 0:
        surplus = forecast_wh * (PERMILLE - policy.battery_reserve_permille) // PERMILLE
        wh = min(policy.sell_max_wh, surplus - deficit, offer_room_wh)
        if wh > 0:
            out.append(Intent(Side.SELL, wh, policy.sell_min_price))
    if policy.buy_max_price is not None:
        wh = policy.buy_max_wh + max(0, deficit - forecast_wh)
        if wh > 0:
            out.append(Intent(Side.BUY, wh, policy.buy_max_price))
    return out
