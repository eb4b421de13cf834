"""The carbon shop's pure rules: listing checks, prices, states, expiry, search, serials."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.carbon_shop import (
    Offer,
    OrderState,
    ProjectFilter,
    ProjectKind,
    ProjectStatus,
    SerialBook,
    ShopError,
    allocate,
    can_transition,
    check_currency,
    check_kg,
    check_listing,
    check_vintage,
    free_spans,
    is_expired,
    matches,
    parse_serials,
    price_minor,
    reservation_expiry,
    spans_overlap,
)


def test_listing_is_checked() -> None:
    lst = check_listing("VCS-1234-2021-1..5000", 1500, "EUR")
    assert (lst.serials.prefix, lst.serials.start, lst.serials.end, lst.kg) == (
        "VCS-1234-2021",
        1,
        5000,
        5000,
    )
    assert str(lst.serials) == "VCS-1234-2021-1..5000"
    for bad in ("VCS-10..1", "VCS-1-5", "-1..5", "VCS 1..5", "VCS-a..b"):
        with pytest.raises(ShopError):
            parse_serials(bad)
    with pytest.raises(ShopError, match="ISO 4217"):
        check_listing("A-1..2", 100, "eur")
    with pytest.raises(ShopError, match="ISO 4217"):
        check_currency("EURO")
    with pytest.raises(ShopError, match="price"):
        check_listing("A-1..2", 0, "EUR")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ShopError, match="positive whole"):
            check_kg(bad)  # type: ignore[arg-type]
    with pytest.raises(ShopError, match="vintage"):
        check_vintage(2031, 2026)
    with pytest.raises(ShopError, match="vintage"):
        check_vintage(1980, 2026)
    assert check_vintage(2026, 2026) == 2026


def test_price_rounds_half_up_per_line() -> None:
    assert price_minor(1000, 1500) == 1500  # a tonne at 15.00
    assert price_minor(1, 1500) == 2  # 1.5 -> 2
    assert price_minor(1, 1499) == 1  # 1.499 -> 1
    assert price_minor(3, 333) == 1  # 0.999 -> 1
    assert price_minor(1, 499) == 0  # 0.499 -> 0: a gift under half a minor unit
    assert price_minor(123_457, 2_750) == 339_507  # 339506.75 -> 339507


def test_states_and_expiry() -> None:
    assert can_transition(OrderState.RESERVED, OrderState.PLACED)
    assert can_transition(OrderState.RESERVED, OrderState.EXPIRED)
    assert can_transition(OrderState.PLACED, OrderState.COMPLETE)
    assert not can_transition(OrderState.COMPLETE, OrderState.CANCELLED)
    assert not can_transition(OrderState.EXPIRED, OrderState.PLACED)
    exp = reservation_expiry(1_000, 60)
    assert exp == 61_000
    assert not is_expired(OrderState.RESERVED, exp, 60_999)
    assert is_expired(OrderState.RESERVED, exp, 61_000)
    assert not is_expired(OrderState.COMPLETE, exp, 99_000)
    with pytest.raises(ShopError):
        reservation_expiry(0, 0)


def test_search_predicate() -> None:
    o = Offer(ProjectKind.FORESTRY, "BR", 2022, "Verra VCS", ProjectStatus.ACTIVE, (1500, 900))
    solar = Offer(ProjectKind.GRIDMINT_SOLAR, "DE", 2026, "gridmint", ProjectStatus.ACTIVE, (800,))
    assert matches(ProjectFilter(), o)
    assert matches(ProjectFilter(kind=ProjectKind.FORESTRY, country="br", vintage=2022), o)
    assert not matches(ProjectFilter(kind=ProjectKind.COOKSTOVES), o)
    assert matches(ProjectFilter(max_price_minor=900), o)
    assert not matches(ProjectFilter(max_price_minor=899), o)
    assert matches(ProjectFilter(standard="verra vcs"), o)
    assert not matches(ProjectFilter(own_solar=True), o)
    assert matches(ProjectFilter(own_solar=True), solar)
    assert not matches(ProjectFilter(own_solar=False), solar)
    withdrawn = Offer(ProjectKind.FORESTRY, "BR", 2022, "V", ProjectStatus.WITHDRAWN, (1,))
    assert not matches(ProjectFilter(), withdrawn)
    sold_out = Offer(ProjectKind.FORESTRY, "BR", 2022, "V", ProjectStatus.ACTIVE, ())
    assert matches(ProjectFilter(), sold_out)
    assert not matches(ProjectFilter(max_price_minor=10**6), sold_out)


def test_allocation_takes_lowest_free_and_splits() -> None:
    assert allocate((1, 10), [], 3) == [(1, 3)]
    assert allocate((1, 10), [(1, 3), (6, 7)], 4) == [(4, 5), (8, 9)]
    assert free_spans((1, 10), [(6, 7), (1, 3)]) == [(4, 5), (8, 10)]
    with pytest.raises(ShopError, match="only 5 kg are left"):
        allocate((1, 10), [(1, 5)], 6)
    with pytest.raises(ShopError, match="overlap"):
        free_spans((1, 10), [(1, 5), (5, 6)])
    assert spans_overlap([(1, 5)], [(5, 9)])
    assert not spans_overlap([(1, 5)], [(6, 9)])


ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "release", "retire"]), st.integers(0, 7), st.integers(1, 9)
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 40), steps=ops)
def test_serials_never_handed_out_or_retired_twice(
    size: int, steps: list[tuple[str, int, int]]
) -> None:
    book = SerialBook((100, 100 + size - 1))
    ever_retired: list[tuple[int, int]] = []
    for op, who, kg in steps:
        order = f"o{who}"
        if op == "reserve":
            before = book.available
            try:
                spans = book.reserve(order, kg)
            except ShopError:
                assert order in book.held or order in book.retired or before < kg
                continue
            assert sum(b - a + 1 for a, b in spans) == kg
            assert book.available == before - kg
        elif op == "release":
            book.release(order)
        else:
            try:
                spans = book.retire(order)
            except ShopError:
                assert order not in book.held
                continue
            assert not spans_overlap(spans, ever_retired)  # never retired twice
            ever_retired += spans
        taken = sorted(book.taken())
        for (_, b0), (a1, _) in zip(taken, taken[1:], strict=False):
            assert b0 < a1  # no serial held by two orders
        assert all(100 <= a <= b <= 100 + size - 1 for a, b in taken)
        assert book.available + sum(b - a + 1 for a, b in taken) == size
        assert sorted(ever_retired) == sorted(s for v in book.retired.values() for s in v)


def test_project_status_only_moves_towards_the_end() -> None:
    from cloud.domain.carbon_shop import ProjectStatus as S
    from cloud.domain.carbon_shop import check_project_transition

    check_project_transition(S.ACTIVE, S.RETIRED)
    check_project_transition(S.ACTIVE, S.WITHDRAWN)
    check_project_transition(S.RETIRED, S.WITHDRAWN)
    for old, new in (
        (S.RETIRED, S.ACTIVE),
        (S.WITHDRAWN, S.ACTIVE),
        (S.WITHDRAWN, S.RETIRED),
        (S.ACTIVE, S.ACTIVE),
    ):
        with pytest.raises(ShopError, match="cannot become"):
            check_project_transition(old, new)
