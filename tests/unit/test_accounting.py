"""Interval accounting from cumulative counters (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.accounting import AccountantState, Channel, IntervalAccountant, align_down

G, I = Channel.GENERATED, Channel.IMPORTED
T0 = 1_800_000_000 - 1_800_000_000 % 300  # an aligned boundary


def test_first_reading_only_sets_the_baseline() -> None:
    acc = IntervalAccountant(300, 5000)
    assert acc.observe(T0 + 1, {G: 1000}) is None
    assert acc.state.interval_start == T0


def test_boundary_crossing_closes_the_interval_with_the_counter_delta() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, {G: 1000, I: 50})
    assert acc.observe(T0 + 200, {G: 1200, I: 60}) is None  # same interval
    closed = acc.observe(T0 + 301, {G: 1300, I: 70})
    assert closed is not None
    assert closed.interval_start == T0
    assert closed.energy_wh == {G: 300, I: 20}
    assert closed.totals_wh == {G: 1300, I: 70}
    assert closed.status == "G"
    assert not closed.estimated


def test_counter_going_backwards_is_never_a_new_baseline() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, {G: 10_000})
    closed = acc.observe(T0 + 301, {G: 0})  # a transient zero read
    assert closed is not None
    assert closed.energy_wh[G] == 0
    assert "R" in closed.flags
    # the next good reading measures from the last good total, not from the zero
    closed2 = acc.observe(T0 + 601, {G: 10_300})
    assert closed2 is not None
    assert closed2.energy_wh[G] == 300


def test_impossible_forward_jump_is_refused() -> None:
    acc = IntervalAccountant(300, 5000)  # 5 kW for 300 s is at most ~417 Wh
    acc.observe(T0 + 1, {G: 10_000})
    closed = acc.observe(T0 + 301, {G: 10_000 + 53_700_000})
    assert closed is not None
    assert closed.energy_wh[G] == 0
    assert "J" in closed.flags


def test_missed_boundaries_are_flagged_and_nothing_is_invented() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, {G: 1000})
    closed = acc.observe(T0 + 3 * 300 + 5, {G: 1900})
    assert closed is not None
    assert closed.interval_start == T0 + 2 * 300
    assert closed.energy_wh[G] == 900
    assert "GAP" in closed.flags
    assert closed.estimated


def test_state_survives_a_restart_round_trip() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, {G: 1000, I: 7})
    restored = IntervalAccountant(300, 5000, AccountantState.from_json(acc.state.to_json()))
    closed = restored.observe(T0 + 302, {G: 1100, I: 9})
    assert closed is not None
    assert closed.energy_wh == {G: 100, I: 2}


def test_interval_length_must_be_5_or_15_minutes() -> None:
    with pytest.raises(ValueError, match="300 or 900"):
        IntervalAccountant(600, 5000)


@given(
    steps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40),
    interval=st.sampled_from([300, 900]),
)
def test_energy_is_conserved_across_intervals(steps: list[int], interval: int) -> None:
    """Sum of interval energy equals the counter's total rise when every read is plausible."""
    acc = IntervalAccountant(interval, 5000)
    total = 5_000
    acc.observe(T0 + 1, {G: total})
    booked = 0
    for k, step in enumerate(steps, start=1):
        total += step
        closed = acc.observe(T0 + k * interval + 1, {G: total})
        assert closed is not None
        assert closed.interval_start == T0 + (k - 1) * interval
        booked += closed.energy_wh[G]
    assert booked == total - 5_000


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.sampled_from([300, 900]))
def test_align_down_gives_the_containing_boundary(ts: float, interval: int) -> None:
    b = align_down(ts, interval)
    assert b % interval == 0
    assert b <= ts < b + interval
