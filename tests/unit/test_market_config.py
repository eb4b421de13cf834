"""The market's configuration refuses what the ledger could not settle."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud.domain.market_checks import MarketConfig
from cloud.settings import CloudSettings


def test_a_credit_limit_above_zero_is_refused_until_the_ledger_has_credit_lines() -> None:
    assert MarketConfig(credit_limit_minor=0).credit_limit_minor == 0
    with pytest.raises(ValueError, match="credit limit above 0"):
        MarketConfig(credit_limit_minor=1)
    with pytest.raises(ValidationError, match="market_credit_limit_minor"):
        CloudSettings(market_credit_limit_minor=100)


@pytest.mark.parametrize(
    "kw",
    [{"interval_s": 600}, {"tick": 0}, {"feed_in_price": 40}, {"forecast_share_permille": 1001}],
)
def test_impossible_markets_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        MarketConfig(**kw)  # type: ignore[arg-type]
