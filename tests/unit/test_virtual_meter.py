"""The virtual meter's rules (pure): gaps, estimates, roll-ups to local days, registers."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.virtual_meter import (
    DAY,
    MeterError,
    MeterInterval,
    State,
    history,
    registers,
    roll_up,
    status_flags,
    with_gaps,
    zone,
)

T0 = int(datetime(2026, 10, 24, 22, 0, tzinfo=UTC).timestamp())  # Berlin: 25 Oct has 25 h
BERLIN = ZoneInfo("Europe/Berlin")


def iv(i: int, gen: int = 100, step: int = 300, **kw: object) -> MeterInterval:
    return MeterInterval(T0 + i * step, step, gen, 10, 5, 0, 0, records=1, **kw)  # type: ignore[arg-type]


def test_gaps_are_missing_never_zero_and_estimates_are_the_stated_mean() -> None:
    data = [iv(0, 100), iv(3, 300)]
    got = list(with_gaps(data, T0, T0 + 5 * 300, 300, estimate=False))
    assert [g.state for g in got] == [
        State.MEASURED,
        State.MISSING,
        State.MISSING,
        State.MEASURED,
        State.MISSING,
    ]
    assert got[1].generated_wh is None and got[1].load_wh is None and got[1].net_wh is None
    est = list(with_gaps(data, T0, T0 + 5 * 300, 300, estimate=True))
    assert [e.generated_wh for e in est] == [100, 200, 200, 300, 300]  # the tail: one neighbour
    assert [e.state for e in est][1:3] == [State.ESTIMATED, State.ESTIMATED]
    assert est[1].records == 0 and est[1].estimated == 1
    # no data at all: nothing to estimate from
    assert [g.state for g in with_gaps([], T0, T0 + 600, 300, estimate=True)] == [State.MISSING] * 2


def test_derived_quantities() -> None:
    x = MeterInterval(T0, 300, 500, 100, 300, 50, 20)
    assert x.load_wh == 500 + 100 + 20 - 300 - 50
    assert x.self_consumed_wh == 200 and x.net_wh == -200
    assert MeterInterval(T0, 300, 100, 0, 300, 0, 0).self_consumed_wh == 0


def test_local_days_have_23_24_or_25_hours_and_partial_days_say_so() -> None:
    data = [iv(i, 1, step=900) for i in range(0, 3 * 96) if i != 5]
    days = list(roll_up(with_gaps(data, T0, T0 + 3 * 96 * 900, 900, estimate=False), DAY, BERLIN))
    lengths = [d.interval_s // 3600 for d in days]
    assert lengths == [25, 24, 24]  # T0 is 25 Oct 00:00 local, the day DST ends
    assert days[0].state is State.PARTIAL and days[0].missing == 1
    assert days[1].state is State.MEASURED
    assert days[2].state is State.MEASURED  # what is there of it; the period ends inside it
    assert sum(d.generated_wh or 0 for d in days) == len(data)
    hours = list(roll_up(data[:8], 3600, BERLIN))
    assert [h.generated_wh for h in hours] == [4, 3, 1]  # quarter 5 is the gap
    with pytest.raises(MeterError, match="roll-ups"):
        list(roll_up(data, 600, BERLIN))
    with pytest.raises(MeterError, match="cannot roll"):
        list(roll_up([iv(0, step=3600)], 900, BERLIN))


def test_half_hour_zone_aligns_hours_locally() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30
    data = [MeterInterval(T0 + i * 900, 900, 1, 0, 0, 0, 0) for i in range(8)]
    hours = list(roll_up(data, 3600, kolkata))
    # T0 is 03:30 local: the first local hour 03:00-04:00 holds two quarters
    assert [h.generated_wh for h in hours] == [2, 4, 2]


def test_registers_history_and_flags() -> None:
    data = [iv(0), iv(1, flags=frozenset({"R"})), iv(2, flags=frozenset({"SWAP", "GAP"}))]
    r = registers(data, T0 + 2 * 300)
    assert (r.generated_wh, r.imported_wh, r.intervals) == (200, 20, 2)
    assert [(e.flag, e.what) for e in history(data)] == [
        ("R", "counter reset"),
        ("SWAP", "meter swap"),
    ]
    assert status_flags("G,R,GAP") == {"R", "GAP"} and status_flags("G") == frozenset()
    with pytest.raises(MeterError, match="unknown time zone"):
        zone("Nowhere/Special")


@given(st.lists(st.integers(0, 50), min_size=1, max_size=60, unique=True), st.booleans())
def test_rolling_up_keeps_every_wh(present: list[int], estimate: bool) -> None:
    data = [iv(i, gen=i + 1) for i in sorted(present)]
    full = list(with_gaps(data, T0, T0 + 51 * 300, 300, estimate=estimate))
    assert len(full) == 51
    for length in (900, 3600, DAY):
        rolled = list(roll_up(full, length, BERLIN))
        assert sum(r.generated_wh or 0 for r in rolled) == sum(f.generated_wh or 0 for f in full)
        assert sum(r.missing for r in rolled) == sum(f.state is State.MISSING for f in full)


@given(st.lists(st.integers(0, 40), max_size=40, unique=True), st.booleans(), st.integers(1, 7))
def test_feeding_a_chunk_at_once_gives_what_feeding_one_by_one_does(
    present: list[int], estimate: bool, chunk: int
) -> None:
    from cloud.domain.virtual_meter import Gaps

    data = [iv(i, gen=i * 3) for i in sorted(present)]
    one = list(with_gaps(data, T0, T0 + 41 * 300, 300, estimate=estimate))
    g = Gaps(T0, T0 + 41 * 300, 300, estimate=estimate)
    got: list[MeterInterval] = []
    for k in range(0, len(data), chunk):
        got += g.feed_all(data[k : k + chunk])
    got += g.close()
    assert got == one
