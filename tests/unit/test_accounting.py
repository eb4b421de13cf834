"""Interval accounting from cumulative counters (pure logic), including field faults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.accounting import (
    AccountantState,
    Channel,
    IntervalAccountant,
    PowerIntegrator,
    Reading,
    align_down,
)

G, I = Channel.GENERATED, Channel.IMPORTED
T0 = 1_800_000_000 - 1_800_000_000 % 300  # an aligned boundary


def r(**totals: int) -> dict[Channel, Reading]:
    names = {"g": G, "i": I}
    return {names[k]: Reading(v, "m1") for k, v in totals.items()}


def test_first_reading_only_sets_the_baseline() -> None:
    acc = IntervalAccountant(300, 5000)
    assert acc.observe(T0 + 1, r(g=1000)) is None
    assert acc.state.interval_start == T0


def test_boundary_crossing_closes_the_interval_with_the_counter_delta() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=1000, i=50))
    assert acc.observe(T0 + 200, r(g=1200, i=60)) is None  # same interval
    closed = acc.observe(T0 + 301, r(g=1300, i=70))
    assert closed is not None
    assert closed.interval_start == T0
    assert closed.energy_wh == {G: 300, I: 20}
    assert closed.totals_wh == {G: 1300, I: 70}
    assert closed.status == "G"
    assert not closed.estimated


def test_transient_zero_is_ignored_and_never_rebases() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=10_000))
    acc.observe(T0 + 100, r(g=0))  # a transient zero read (evcc-io/evcc#29286)
    closed = acc.observe(T0 + 301, r(g=10_300))  # back where it was, plus real energy
    assert closed is not None
    assert closed.energy_wh[G] == 300
    assert "R" in closed.flags
    nxt = acc.observe(T0 + 601, r(g=10_500))
    assert nxt is not None
    assert nxt.energy_wh[G] == 200
    assert nxt.flags == ()


def test_real_counter_reset_keeps_energy_before_and_after_and_never_counts_the_drop() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=50_000))
    acc.observe(T0 + 100, r(g=50_120))  # 120 Wh before the reset
    acc.observe(T0 + 150, r(g=0))  # reset (e.g. VE.Direct H19 cleared by the user)
    acc.observe(T0 + 200, r(g=40))  # rising from zero confirms it
    closed = acc.observe(T0 + 301, r(g=90))
    assert closed is not None
    assert closed.energy_wh[G] == 120 + 90
    assert "R" in closed.flags


def test_impossible_forward_jump_is_refused_then_taken_as_new_base_if_it_persists() -> None:
    acc = IntervalAccountant(300, 5000)  # 5 kW for 300 s is at most ~417 Wh (+50 % slack)
    acc.observe(T0 + 1, r(g=10_000))
    closed = acc.observe(T0 + 301, r(g=10_000 + 53_700_000))
    assert closed is not None
    assert closed.energy_wh[G] == 0
    assert "J" in closed.flags
    closed2 = acc.observe(T0 + 601, r(g=10_000 + 53_700_000 + 250))
    assert closed2 is not None
    assert closed2.energy_wh[G] == 250  # only what followed the jump


def test_meter_swap_mid_interval_keeps_both_meters_energy() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=80_000))
    acc.observe(T0 + 120, r(g=80_100))
    acc.observe(T0 + 180, {G: Reading(5, "new-meter")})
    closed = acc.observe(T0 + 301, {G: Reading(65, "new-meter")})
    assert closed is not None
    assert closed.energy_wh[G] == 100 + 60
    assert "SWAP" in closed.flags


def test_missed_boundaries_are_flagged_and_nothing_is_invented() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=1000))
    closed = acc.observe(T0 + 3 * 300 + 5, r(g=1900))
    assert closed is not None
    assert closed.interval_start == T0 + 2 * 300
    assert closed.energy_wh[G] == 900
    assert "GAP" in closed.flags
    assert closed.estimated


def test_clock_jumping_back_never_closes_an_interval_twice() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=1000))
    first = acc.observe(T0 + 301, r(g=1100))
    assert first is not None
    assert first.interval_start == T0
    # NTP steps the clock back by 20 minutes: readings land in intervals already closed.
    assert acc.observe(T0 - 900, r(g=1150)) is None
    assert acc.observe(T0 + 1, r(g=1170)) is None
    nxt = acc.observe(T0 + 601, r(g=1200))
    assert nxt is not None
    assert nxt.interval_start == T0 + 300  # the next interval not yet minted
    assert nxt.energy_wh[G] == 100  # nothing lost, nothing twice
    assert "CLOCK" in nxt.flags


def test_state_survives_a_restart_round_trip() -> None:
    acc = IntervalAccountant(300, 5000)
    acc.observe(T0 + 1, r(g=1000, i=7))
    acc.observe(T0 + 60, r(g=0))  # pending candidate must survive too
    restored = IntervalAccountant(300, 5000, AccountantState.from_json(acc.state.to_json()))
    assert restored.state == acc.state
    closed = restored.observe(T0 + 302, r(g=1100, i=9))
    assert closed is not None
    assert closed.energy_wh == {G: 100, I: 2}


def test_interval_length_must_be_5_or_15_minutes() -> None:
    with pytest.raises(ValueError, match="300 or 900"):
        IntervalAccountant(600, 5000)


def test_power_integration_trapezoid_and_gaps() -> None:
    pi = PowerIntegrator(max_gap_s=120)
    assert pi.add(0, 1000) == 0
    assert pi.add(60, 1000) == 16  # 1 kW for a minute = 16.67 Wh
    assert pi.add(120, 2000) == 41  # + 25 Wh
    assert pi.add(1000, 2000) == 41  # a gap longer than max_gap_s is not bridged
    assert pi.add(1060, -50) == 58  # clamped to 0 W: (2000 + 0) / 2 W for 60 s = 16.7 Wh


@given(
    steps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40),
    interval=st.sampled_from([300, 900]),
)
def test_energy_is_conserved_across_intervals(steps: list[int], interval: int) -> None:
    """Sum of interval energy equals the counter's total rise when every read is plausible."""
    acc = IntervalAccountant(interval, 5000)
    total = 5_000
    acc.observe(T0 + 1, r(g=total))
    booked = 0
    for k, step in enumerate(steps, start=1):
        total += step
        closed = acc.observe(T0 + k * interval + 1, r(g=total))
        assert closed is not None
        assert closed.interval_start == T0 + (k - 1) * interval
        booked += closed.energy_wh[G]
    assert booked == total - 5_000


@given(
    st.lists(
        st.tuples(st.integers(0, 299), st.integers(-50_000, 300), st.booleans()),
        min_size=1, max_size=60,
    )
)
def test_faults_never_inflate_energy(events: list[tuple[int, int, bool]]) -> None:
    """Whatever resets, drops and swaps happen, booked energy never exceeds real production."""
    acc = IntervalAccountant(300, 5000)
    true_total = 0
    counter, source, ts = 10_000, "a", T0 + 1
    acc.observe(ts, {G: Reading(counter, source)})
    booked = 0
    for dt, delta, swap in events:
        ts += dt + 1
        if delta >= 0:
            counter += delta
            true_total += delta
        else:
            counter = max(0, counter + delta)  # a drop: reset or glitch, no energy
        if swap:
            source = source + "x"
            counter = 0
        closed = acc.observe(ts, {G: Reading(counter, source)})
        if closed is not None:
            booked += closed.energy_wh[G]
            assert closed.energy_wh[G] >= 0
    assert booked <= true_total


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.sampled_from([300, 900]))
def test_align_down_gives_the_containing_boundary(ts: float, interval: int) -> None:
    b = align_down(ts, interval)
    assert b % interval == 0
    assert b <= ts < b + interval
