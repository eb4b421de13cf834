"""Carbon figures and certificates (pure): worked numbers, lifecycle, and no Wh certified twice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.certificates import (
    DEFAULT_GRID_G_CO2_PER_KWH,
    REC_WH,
    CertificateError,
    CertificateRegistry,
    CertKind,
    CertStatus,
    EligibleEnergy,
    Slice,
    avoided_co2_g,
    eligible_from_ledger,
    forest_milliacres,
    plan_rec_bundles,
)
from protocol.record import token_id
from rules.ledger import (
    BatteryParams,
    EntryKind,
    IntervalFlows,
    LedgerEngine,
    RecordRef,
    TradeTerms,
)

T0 = 1_800_000_000 - 1_800_000_000 % 3600
DAY = 24 * 3600


def test_carbon_figures() -> None:
    assert DEFAULT_GRID_G_CO2_PER_KWH == 707  # EPA AVERT 1,559 lb/MWh
    assert avoided_co2_g(1000) == 707
    assert avoided_co2_g(REC_WH) == 707_000  # 707 kg per MWh
    assert avoided_co2_g(1500, g_per_kwh=233) == 349  # 349.5 g, rounded down
    assert forest_milliacres(2_500_000) == 1000  # 2.5 t: one acre for a year
    assert forest_milliacres(avoided_co2_g(REC_WH)) == 282
    assert forest_milliacres(820_000, g_per_acre_year=820_000) == 1000  # EPA average forest
    with pytest.raises(ValueError):
        avoided_co2_g(-1)


def ledger_day() -> LedgerEngine:
    """One home, an hour of 5-minute intervals, sells some export, keeps some in the battery."""
    eng = LedgerEngine()
    bat = BatteryParams(usable_capacity_wh=10_000, round_trip_efficiency_permille=900)
    for n in range(12):
        t = T0 + 300 * n
        g, load, c = 500, 200, 100
        refs = (RecordRef(token_id("pv", t), bytes(32), "pv", g, "solar", "DE-LU"),)
        f = IntervalFlows(t, 300, g, 0, g - load - c, c, 0, 100 + n, refs)
        eng.close_interval("home", f, bat)
    eng.deposit("neighbour", T0, 10_000)
    eng.settle_trade("home", "neighbour", (T0, T0 + 3600), 700, TradeTerms(200))
    eng.expire_unsold(T0 + 3600, 80)
    return eng


def test_eligible_ranges_follow_the_ledger() -> None:
    eng = ledger_day()
    items = eligible_from_ledger(eng.entries)
    # self-consumption burns each token's first 200 Wh; the rest went to storage or export
    assert len(items) == 12
    assert all(i.slice.start_wh == 0 and i.slice.end_wh == 200 for i in items)
    assert items[0].slice.token_id == token_id("pv", T0)
    assert (items[0].technology, items[0].market_zone, items[0].interval_s) == (
        "solar",
        "DE-LU",
        300,
    )
    with_sales = eligible_from_ledger(
        eng.entries, frozenset({EntryKind.BURN_SELF_CONSUMPTION, EntryKind.GRID_SALE})
    )
    sold = [i for i in with_sales if i.slice.start_wh >= 300]
    assert sum(i.slice.wh for i in sold) == 12 * 200 - 700  # export minus the P2P trade
    assert all(i.slice.end_wh <= 500 for i in sold)


def test_granular_certificate_fields_and_overlap() -> None:
    reg = CertificateRegistry(lifetime_s=DAY)
    reg.add_eligible(eligible_from_ledger(ledger_day().entries))
    tok = token_id("pv", T0)
    cert = reg.issue_granular(Slice(tok, 0, 120), "home", issued_at=T0 + 3600)
    assert cert.kind is CertKind.GRANULAR
    assert cert.device_ids == ("pv",)
    assert (cert.production_start, cert.production_end) == (T0, T0 + 300)
    assert (cert.energy_wh, cert.technology, cert.market_zone) == (120, "solar", "DE-LU")
    assert cert.status is CertStatus.ACTIVE and cert.expiry_time == T0 + 3600 + DAY
    with pytest.raises(CertificateError, match="overlaps"):
        reg.issue_granular(Slice(tok, 100, 150), "home", T0 + 3600)
    with pytest.raises(CertificateError, match="not eligible"):
        reg.issue_granular(Slice(tok, 150, 250), "home", T0 + 3600)  # 200.. was exported
    reg.issue_granular(Slice(tok, 120, 200), "home", T0 + 3600)
    assert reg.certified_wh(tok) == 200
    assert reg.uncertified()[0].slice.token_id != tok


def eligible(n_tokens: int, wh: int) -> list[EligibleEnergy]:
    return [
        EligibleEnergy(
            Slice(token_id("pv", T0 + 300 * k), 0, wh), "pv", T0 + 300 * k, 300, "solar", "DE-LU"
        )
        for k in range(n_tokens)
    ]


def test_rec_bundles_exactly_one_mwh_and_never_twice() -> None:
    reg = CertificateRegistry()
    reg.add_eligible(eligible(30, 70_000))  # 2.1 MWh
    bundles = plan_rec_bundles(reg.uncertified())
    assert len(bundles) == 2
    assert [sum(i.slice.wh for i in b) for b in bundles] == [REC_WH, REC_WH]
    split = bundles[0][-1].slice  # 1 MWh / 70 kWh = 14 tokens + 20 kWh of the 15th
    assert (split.start_wh, split.end_wh) == (0, 20_000)
    recs = [reg.issue_rec([i.slice for i in b], "home", T0 + DAY) for b in bundles]
    assert recs[0].slices[0].token_id == min(i.slice.token_id for i in bundles[0])
    assert recs[0].energy_wh == REC_WH and recs[0].kind is CertKind.REC
    assert sum(i.slice.wh for i in reg.uncertified()) == 100_000
    with pytest.raises(CertificateError, match="overlaps"):
        reg.issue_rec([i.slice for i in bundles[1]], "home", T0 + DAY)
    with pytest.raises(CertificateError, match="overlaps"):
        reg.issue_granular(bundles[0][0].slice, "home", T0 + DAY)
    with pytest.raises(CertificateError, match="exactly"):
        reg.issue_rec([reg.uncertified()[0].slice], "home", T0 + DAY)


def test_transfer_retire_expire() -> None:
    reg = CertificateRegistry(lifetime_s=DAY)
    reg.add_eligible(eligible(1, 500))
    c = reg.issue_granular(Slice(token_id("pv", T0), 0, 500), "home", T0)
    with pytest.raises(CertificateError, match="not owned"):
        reg.transfer(c.certificate_id, "mallory", "x", T0 + 1)
    c = reg.transfer(c.certificate_id, "home", "utility", T0 + 1)
    assert c.owner == "utility"
    c = reg.retire(c.certificate_id, "utility", "Acme GmbH 2026 claim", T0 + 2)
    assert (c.status, c.beneficiary, c.retirement_time) == (
        CertStatus.RETIRED,
        "Acme GmbH 2026 claim",
        T0 + 2,
    )
    with pytest.raises(CertificateError, match="not active"):
        reg.transfer(c.certificate_id, "utility", "home", T0 + 3)
    reg.add_eligible(eligible(2, 500))
    d = reg.issue_granular(Slice(token_id("pv", T0 + 300), 0, 500), "home", T0)
    assert reg.expire(T0 + DAY - 1) == []
    with pytest.raises(CertificateError, match="not active"):
        reg.retire(d.certificate_id, "home", "me", T0 + DAY)  # past its lifetime
    assert [x.certificate_id for x in reg.expire(T0 + DAY)] == [d.certificate_id]
    assert reg.certificates[d.certificate_id].status is CertStatus.EXPIRED
    with pytest.raises(CertificateError, match="overlaps"):  # expired Wh stay issued
        reg.issue_granular(Slice(token_id("pv", T0 + 300), 0, 500), "home", T0 + DAY)


W = 400_000  # Wh per token in the property test


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3), st.integers(0, W + W // 5), st.integers(1, W // 2), st.booleans()
        ),
        max_size=40,
    )
)
def test_no_wh_is_certified_twice(attempts: list[tuple[int, int, int, bool]]) -> None:
    reg = CertificateRegistry()
    reg.add_eligible(eligible(4, W))  # 1.6 MWh in all: room for one REC
    granted: list[Slice] = []
    for k, start, size, rec in attempts:
        s = Slice(token_id("pv", T0 + 300 * k), start, start + size)
        before = {t: reg.certified_wh(t) for t in reg._issued}
        try:
            if rec:
                # a REC from this slice plus whatever is still free elsewhere, if 1 MWh exists
                rest = [i for i in reg.uncertified() if i.slice.token_id != s.token_id]
                bundle = plan_rec_bundles(
                    [EligibleEnergy(s, "pv", T0, 300, "solar", "DE-LU"), *rest]
                )
                if not bundle:
                    continue
                cert = reg.issue_rec([i.slice for i in bundle[0]], "o", T0)
            else:
                cert = reg.issue_granular(s, "o", T0)
        except CertificateError:
            assert {t: reg.certified_wh(t) for t in reg._issued} == before  # nothing changed
            continue
        granted.extend(cert.slices)
    # pairwise disjoint per token, all inside the eligible 0..1000 Wh
    by_token: dict[str, list[Slice]] = {}
    for s in granted:
        by_token.setdefault(s.token_id, []).append(s)
    for slices in by_token.values():
        slices.sort()
        assert all(a.end_wh <= b.start_wh for a, b in zip(slices, slices[1:], strict=False))
        assert slices[0].start_wh >= 0 and slices[-1].end_wh <= W
    total = sum(s.wh for s in granted)
    assert total == sum(reg.certified_wh(t) for t in by_token)
    assert total + sum(i.slice.wh for i in reg.uncertified()) == 4 * W
