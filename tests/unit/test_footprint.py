"""The footprint calculator and its dashboard months (cloud.domain.footprint)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.domain.footprint import (
    AVERAGE_US_KG,
    BOUNDS,
    FACTORS,
    REST_KG,
    Answers,
    Diet,
    FootprintError,
    answers,
    compute,
    monthly,
)


def ms(y: int, m: int, d: int = 1) -> int:
    return int(datetime(y, m, d, 12, tzinfo=UTC).timestamp() * 1000)


def test_default_answers_are_the_average_us_footprint() -> None:
    fp = compute(answers({}))
    assert fp.total_kg == AVERAGE_US_KG == 20_000
    assert {line.key: line.kg for line in fp.lines} == {
        "cars": 4_600,
        "flights": 490,
        "electricity": 1_611,  # 360 kWh x 12 x 373 g = 1,611,360 g
        "diet": 2_500,
        "rest": REST_KG,
    }
    assert REST_KG == 10_799
    assert fp.forest_milliacres == 8_000  # 20 t / 2.5 t per acre = 8 acres
    assert all(line.average_kg == line.kg for line in fp.lines)


def test_every_factor_and_line_names_its_source() -> None:
    assert all(f.source and f.unit for f in FACTORS)
    assert all(line.source for line in compute(Answers()).lines)


def test_cars_and_public_transport() -> None:
    assert compute(answers({"cars": 0})).total_kg == 20_000 - 4_600
    assert compute(answers({"cars": 5})).total_kg == 20_000 + 4 * 4_600
    # Half the miles by public transport, which emits half a car's per passenger-mile.
    line = compute(answers({"cars": 2, "public_transport_pct": 50})).lines[0]
    assert line.kg == 2 * 4_600 * 3 // 4
    assert compute(answers({"cars": 1, "public_transport_pct": 100})).lines[0].kg == 2_300


def test_flights_electricity_solar_and_diet() -> None:
    fp = compute(
        answers(
            {
                "short_haul_flights": 2,
                "long_haul_flights": 1,
                "electricity_kwh_month": 1000,
                "solar_pct": 100,
                "diet": "vegan",
            }
        )
    )
    lines = {line.key: line.kg for line in fp.lines}
    assert lines["flights"] == 2 * 490 + 2_070
    assert lines["electricity"] == 492  # 12,000 kWh x 41 g, all from rooftop solar
    assert lines["diet"] == 1_500
    assert fp.answers.diet is Diet.VEGAN
    assert fp.total_kg == sum(lines.values())


def test_electricity_rounds_half_up_once() -> None:
    # 1 kWh/month, half solar: 12 x (50 x 373 + 50 x 41) / 100 = 2,484 g -> 2 kg
    assert compute(answers({"electricity_kwh_month": 1, "solar_pct": 50})).lines[2].kg == 2
    # 125 kWh/month without solar: 1,500 x 373 g = 559,500 g -> 560 kg (half up)
    assert compute(answers({"electricity_kwh_month": 125})).lines[2].kg == 560


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"cars": 6}, "cars must be from 0 to 5 (got 6)"),
        ({"cars": -1}, "cars must be from 0 to 5 (got -1)"),
        ({"cars": 1.5}, "cars must be a whole number from 0 to 5"),
        ({"cars": True}, "cars must be a whole number from 0 to 5"),
        ({"cars": "2"}, "cars must be a whole number from 0 to 5"),
        ({"public_transport_pct": 101}, "public_transport_pct must be from 0 to 100 (got 101)"),
        ({"solar_pct": -5}, "solar_pct must be from 0 to 100 (got -5)"),
        ({"long_haul_flights": 21}, "long_haul_flights must be from 0 to 20 (got 21)"),
        ({"diet": "carnivore"}, "diet must be one of meat_lover, average, no_beef"),
        ({"boats": 1}, "unknown answer 'boats'"),
    ],
)
def test_bad_answers_have_a_plain_reason(raw: dict[str, object], reason: str) -> None:
    with pytest.raises(FootprintError) as err:
        answers(raw)
    assert reason in str(err.value)


def test_bounds_are_inclusive() -> None:
    for b in BOUNDS:
        assert compute(answers({b.key: b.low})).total_kg >= 0
        assert compute(answers({b.key: b.high})).total_kg > 0


def test_monthly_dashboard() -> None:
    now = ms(2026, 4, 15)
    months = monthly(
        baselines=[(ms(2026, 1, 10), 24_000), (ms(2026, 3, 5), 12_000)],
        retirements=[(ms(2026, 2, 2), 500), (ms(2026, 2, 20), 250), (ms(2026, 4, 1), 1_000)],
        now_ms=now,
    )
    assert [m.month for m in months] == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert [m.footprint_kg for m in months] == [2_000, 2_000, 1_000, 1_000]
    assert [m.retired_kg for m in months] == [0, 750, 0, 1_000]
    assert [m.cumulative_footprint_kg for m in months] == [2_000, 4_000, 5_000, 6_000]
    assert [m.cumulative_retired_kg for m in months] == [0, 750, 750, 1_750]
    assert months[-1].offset_permille == 291  # 1,750 / 6,000
    assert months[-1].forest_milliacres == 700  # 1.75 t / 2.5 t per acre


def test_monthly_before_the_first_baseline_and_across_a_year() -> None:
    months = monthly([(ms(2026, 1, 3), 12_000)], [(ms(2025, 11, 30), 10)], ms(2026, 1, 4))
    assert [m.month for m in months] == ["2025-11", "2025-12", "2026-01"]
    assert [m.footprint_kg for m in months] == [1_000, 1_000, 1_000]  # the first one applies
    assert monthly([], [], ms(2026, 1, 1)) == []
    assert [m.footprint_kg for m in monthly([], [(ms(2026, 1, 1), 5)], ms(2026, 1, 2))] == [0]
    many = monthly([(ms(2020, 1, 1), 12_000)], [], ms(2026, 1, 1), max_months=36)
    assert len(many) == 36 and many[-1].month == "2026-01"
