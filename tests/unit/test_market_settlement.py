"""Settlement conserves energy and money exactly: random markets matched by rules.market, random
deliveries, every trade settled through the ledger rules (as cloud.services.settlement does)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.ledger import (
    DSO_FEE_ACCOUNT,
    GRID_ACCOUNT,
    PLATFORM_FEE_ACCOUNT,
    LedgerEngine,
    TradeTerms,
    check_conservation,
    replay,
    site_account,
)
from rules.market import Market, Place, Side
from tests.unit.test_ledger_rules import T0, flows

SITES = ("a", "b", "c")
orders = st.lists(
    st.tuples(
        st.sampled_from(SITES), st.sampled_from(Side), st.integers(1, 400), st.integers(8, 32)
    ),
    min_size=2,
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders, st.lists(st.integers(0, 600), min_size=3, max_size=3), st.integers(0, 8))
def test_settlement_conserves_energy_and_money(
    stream: list[tuple[str, Side, int, int]], exports: list[int], fee: int
) -> None:
    market = Market()
    trades = []
    for k, (site, side, wh, price) in enumerate(stream, start=1):
        trades += market.apply(Place(k, f"o{k}", site, site, side, T0, wh, price))
    eng = LedgerEngine()
    for site, exported in zip(SITES, exports, strict=True):
        eng.close_interval(site, flows(T0, g=exported + 50, e=exported, device=f"pv-{site}"), None)
        eng.deposit(site, T0, 1_000_000)
    before = {s: eng.state.balance(site_account(s)) for s in SITES}
    settled_wh = 0
    for t in trades:
        terms = TradeTerms(t.price, fee, 2 * fee)
        e = eng.settle_trade(
            t.seller_site_id, t.buyer_site_id, (T0, T0 + 300), t.quantity_wh, terms, t.trade_id
        )
        delivered = 0 if e is None else e.burned_wh
        assert delivered <= t.quantity_wh
        settled_wh += delivered
        if t.quantity_wh - delivered:
            eng.grid_purchase(t.buyer_site_id, T0, t.quantity_wh - delivered, 32)
    # No seller delivers more than it exported (its tradable Tgen of the interval).
    for site, exported in zip(SITES, exports, strict=True):
        sold = sum(
            e.burned_wh for e in eng.entries if e.kind.name == "P2P_TRADE" and e.site == site
        )
        assert sold <= exported
    assert check_conservation(eng.entries) == []
    assert replay(eng.entries).snapshot() == eng.state.snapshot()
    # Money: what the sites paid went to sellers, the two fee accounts and the grid, exactly.
    paid = sum(before[s] - eng.state.balance(site_account(s)) for s in SITES)
    fees = eng.state.balance(PLATFORM_FEE_ACCOUNT) + eng.state.balance(DSO_FEE_ACCOUNT)
    grid = eng.state.balance(GRID_ACCOUNT) + 3 * 1_000_000  # the deposits came from the grid
    assert paid == fees + grid
