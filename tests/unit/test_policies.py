"""Automated trading policies: what they ask for, from the surplus, the room and their limits."""

from __future__ import annotations

import pytest

from cloud.domain.policies import Intent, TradingPolicy, intents
from rules.market import Side


def test_a_seller_offers_its_surplus_within_the_room_and_its_cap() -> None:
    p = TradingPolicy("s", "a", sell_min_price=12, sell_max_wh=400, battery_reserve_permille=250)
    assert intents(p, offer_room_wh=1000, forecast_wh=400) == [Intent(Side.SELL, 300, 12)]
    assert intents(p, offer_room_wh=120, forecast_wh=400) == [Intent(Side.SELL, 120, 12)]
    assert intents(p, offer_room_wh=1000, forecast_wh=2000) == [Intent(Side.SELL, 400, 12)]
    assert intents(p, offer_room_wh=0, forecast_wh=400) == []  # nothing left to offer


def test_a_buyer_bids_its_quantity_and_off_means_off() -> None:
    p = TradingPolicy("s", "a", buy_max_price=26, buy_max_wh=250)
    assert intents(p, offer_room_wh=0, forecast_wh=0) == [Intent(Side.BUY, 250, 26)]
    off = TradingPolicy("s", "a", enabled=False, buy_max_price=26, buy_max_wh=250)
    assert intents(off, offer_room_wh=0, forecast_wh=0) == []
    both = TradingPolicy(
        "s", "a", sell_min_price=10, sell_max_wh=100, buy_max_price=20, buy_max_wh=50
    )
    assert [i.side for i in intents(both, offer_room_wh=500, forecast_wh=500)] == [
        Side.SELL,
        Side.BUY,
    ]
    assert p.source == "policy:s"


@pytest.mark.parametrize(
    "kw", [{"sell_max_wh": -1}, {"battery_reserve_permille": 1001}, {"buy_max_price": -5}]
)
def test_bad_policies_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TradingPolicy("s", "a", **kw)  # type: ignore[arg-type]


def battery(
    p: TradingPolicy, *, room: int, forecast: int, stored: int, capacity: int
) -> list[Intent]:
    return intents(
        p, offer_room_wh=room, forecast_wh=forecast, stored_wh=stored, capacity_wh=capacity
    )


def test_a_battery_below_its_reserve_sells_less_and_buys_what_the_sun_will_not_cover() -> None:
    # 10 kWh usable, keep 40 %: a reserve of 4000 Wh.
    seller = TradingPolicy(
        "s",
        "a",
        sell_min_price=12,
        sell_max_wh=900,
        battery_reserve_permille=100,
        min_soc_permille=400,
    )
    # 3800 Wh stored: 200 Wh short; of the 900 Wh surplus (1000 forecast less 10 %), 700 remain.
    assert battery(seller, room=5000, forecast=1000, stored=3800, capacity=10_000) == [
        Intent(Side.SELL, 700, 12)
    ]
    # A deficit as large as the surplus: nothing is sold, and the sun will refill it: no bid.
    assert battery(seller, room=5000, forecast=1000, stored=3100, capacity=10_000) == []
    buyer = TradingPolicy("s", "a", buy_max_price=26, buy_max_wh=250, min_soc_permille=400)
    # 1000 Wh stored, 3000 short; the forecast covers 400 of it: bid 250 + 2600.
    assert battery(buyer, room=0, forecast=400, stored=1000, capacity=10_000) == [
        Intent(Side.BUY, 2850, 26)
    ]
    # A top-up alone, with no standing bid quantity.
    topup = TradingPolicy("s", "a", buy_max_price=26, min_soc_permille=400)
    assert battery(topup, room=0, forecast=0, stored=3500, capacity=10_000) == [
        Intent(Side.BUY, 500, 26)
    ]
    # Both halves: the deficit first eats the surplus, the rest the forecast cannot cover is bid.
    both = TradingPolicy(
        "s",
        "a",
        sell_min_price=12,
        sell_max_wh=900,
        buy_max_price=26,
        buy_max_wh=100,
        min_soc_permille=500,
    )
    assert battery(both, room=5000, forecast=300, stored=4000, capacity=10_000) == [
        Intent(Side.BUY, 100 + 700, 26)
    ]


def test_a_battery_at_or_above_its_reserve_changes_nothing() -> None:
    p = TradingPolicy(
        "s",
        "a",
        sell_min_price=12,
        sell_max_wh=400,
        battery_reserve_permille=250,
        buy_max_price=26,
        buy_max_wh=250,
        min_soc_permille=400,
    )
    plain = [Intent(Side.SELL, 300, 12), Intent(Side.BUY, 250, 26)]
    for stored in (4000, 4001, 10_000):
        assert battery(p, room=1000, forecast=400, stored=stored, capacity=10_000) == plain
    # No battery (capacity 0): no reserve, whatever the policy asks.
    assert intents(p, offer_room_wh=1000, forecast_wh=400) == plain
    # The reserve is integer permille of the capacity, rounded down: 333 of 1001 Wh is 333 Wh.
    q = TradingPolicy("s", "a", buy_max_price=26, min_soc_permille=333)
    assert battery(q, room=0, forecast=0, stored=333, capacity=1001) == []
    assert battery(q, room=0, forecast=0, stored=332, capacity=1001) == [Intent(Side.BUY, 1, 26)]


def test_without_a_buy_price_a_deficit_buys_nothing() -> None:
    p = TradingPolicy("s", "a", buy_max_wh=250, min_soc_permille=1000)
    assert battery(p, room=0, forecast=0, stored=0, capacity=10_000) == []
    # A zero-Wh bid is no intent: a buy price, no quantity, no deficit.
    q = TradingPolicy("s", "a", buy_max_price=26, min_soc_permille=1000)
    assert battery(q, room=0, forecast=0, stored=10_000, capacity=10_000) == []


@pytest.mark.parametrize("permille", [-1, 1001])
def test_the_minimum_state_of_charge_is_permille(permille: int) -> None:
    with pytest.raises(ValueError, match="state of charge"):
        TradingPolicy("s", "a", min_soc_permille=permille)
    assert TradingPolicy("s", "a", min_soc_permille=1000).min_soc_permille == 1000
