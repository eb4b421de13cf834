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
