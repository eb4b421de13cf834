"""A personal carbon footprint calculator and the footprint-vs-offsets dashboard: pure, integer.

Owns: the factors (each a data row naming its public source), the footprint of one set of
answers in whole kg CO2e a year, the forest comparison, and the month-by-month comparison of a
footprint with the kilograms an account had retired (docs/carbon-shop.md, "Footprint").

The model starts from the average: at the default answers (one car, no public transport, one
short-haul round trip, an average person's share of home electricity without solar, an average
diet) the total is the seed's average US footprint of 20 t CO2e a year. Each answer replaces the
average's share of one factor; what no question covers (heating, goods, services, government)
stays as the average's remainder. The figures are coarse public averages, good for "what moves
my footprint", not for an inventory.

Rounding: every factor is computed from integers and rounded half up to the kg once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cloud.domain.certificates import FOREST_G_CO2_PER_ACRE_YEAR, forest_milliacres

MODEL = "2026-12"  # stored with each footprint, so a later change of factors is visible
MONTHS_PER_YEAR = 12
MAX_DASHBOARD_MONTHS = 36


class FootprintError(ValueError):
    """An answer is out of its range or unknown; the message is a plain reason."""


@dataclass(frozen=True, slots=True)
class Factor:
    """One emission factor and where it comes from."""

    key: str
    value: int
    unit: str
    source: str


# The seed's average US footprint (the project's brief, issue 14): 20 t CO2e per person and
# year. Published US averages range from about 16 t (CO2 only, per capita) to 20 t and more
# (consumption-based CO2e); the default answers reproduce this figure exactly.
AVERAGE_US_KG = 20_000

FACTORS: tuple[Factor, ...] = (
    Factor(
        "average_us_kg",
        AVERAGE_US_KG,
        "kg CO2e / person / year",
        "seed figure of the project brief (issue 14): an average US footprint of about 20 t "
        "CO2e a year",
    ),
    Factor(
        "car_kg",
        4_600,
        "kg CO2 / car / year",
        "US EPA, 'Greenhouse Gas Emissions from a Typical Passenger Vehicle' (EPA-420-F-23-014, "
        "2023): about 4.6 t CO2 a year, 11,500 miles at 22.2 mpg",
    ),
    Factor(
        "transit_per_car_mile_pct",
        50,
        "% of a car's CO2 per passenger-mile",
        "US FTA, 'Public Transportation's Role in Responding to Climate Change' (2010): per "
        "passenger-mile, bus 0.64, light rail 0.36, heavy rail 0.22 lb CO2 against 0.96 lb for "
        "a single-occupant car; about half, taken as 50 %",
    ),
    Factor(
        "short_haul_round_trip_kg",
        490,
        "kg CO2e / round trip",
        "UK DESNZ/BEIS greenhouse gas conversion factors (2023), short-haul economy with "
        "radiative forcing, about 0.154 kg CO2e per passenger-km, times 2 x 1,600 km",
    ),
    Factor(
        "long_haul_round_trip_kg",
        2_070,
        "kg CO2e / round trip",
        "UK DESNZ/BEIS greenhouse gas conversion factors (2023), long-haul economy with "
        "radiative forcing, about 0.148 kg CO2e per passenger-km, times 2 x 7,000 km",
    ),
    Factor(
        "grid_g_per_kwh",
        373,
        "g CO2e / kWh",
        "US EPA eGRID2022, US average output emission rate, 823 lb CO2e per MWh (an average "
        "rate: a footprint shares the grid's mix; the certificates' 707 g/kWh is a marginal rate "
        "for avoided emissions, cloud.domain.certificates)",
    ),
    Factor(
        "average_kwh_per_month",
        360,
        "kWh / person / month",
        "US EIA, 'How much electricity does an American home use?' (2022): 10,791 kWh a year "
        "per home, about 899 kWh a month, shared by 2.5 people per household (US Census)",
    ),
    Factor(
        "rooftop_solar_g_per_kwh",
        41,
        "g CO2e / kWh",
        "IPCC AR5 WGIII Annex III (2014), life-cycle emissions of rooftop solar PV, median 41 g "
        "CO2e per kWh",
    ),
    Factor(
        "forest_kg_per_acre_year",
        FOREST_G_CO2_PER_ACRE_YEAR // 1000,
        "kg CO2 / acre / year",
        "the project brief: an acre of forest offsets about 2.5 t CO2 a year (US EPA's average "
        "US forest is lower, about 0.82 t; cloud.domain.certificates)",
    ),
)


class Diet(StrEnum):
    MEAT_LOVER = "meat_lover"
    AVERAGE = "average"
    NO_BEEF = "no_beef"
    VEGETARIAN = "vegetarian"
    VEGAN = "vegan"


# kg CO2e per person and year of food, by diet: Shrink That Footprint, 'Food's Carbon Footprint'
# (L. Wilson, 2014; from USDA ERS food availability and life-cycle studies), US figures.
DIET_KG: Mapping[Diet, int] = {
    Diet.MEAT_LOVER: 3_300,
    Diet.AVERAGE: 2_500,
    Diet.NO_BEEF: 1_900,
    Diet.VEGETARIAN: 1_700,
    Diet.VEGAN: 1_500,
}
DIET_SOURCE = (
    "Shrink That Footprint, 'Food's Carbon Footprint' (L. Wilson, 2014; USDA ERS data and "
    "life-cycle studies): meat lover 3.3, average 2.5, no beef 1.9, vegetarian 1.7, vegan 1.5 t"
)

_F = {f.key: f.value for f in FACTORS}
CAR_KG = _F["car_kg"]
TRANSIT_PCT = _F["transit_per_car_mile_pct"]
SHORT_HAUL_KG = _F["short_haul_round_trip_kg"]
LONG_HAUL_KG = _F["long_haul_round_trip_kg"]
GRID_G_PER_KWH = _F["grid_g_per_kwh"]
AVERAGE_KWH_PER_MONTH = _F["average_kwh_per_month"]
SOLAR_G_PER_KWH = _F["rooftop_solar_g_per_kwh"]


@dataclass(frozen=True, slots=True)
class Bound:
    """An answer's range and default (the page's slider uses the same numbers)."""

    key: str
    label: str
    low: int
    high: int
    default: int
    unit: str


BOUNDS: tuple[Bound, ...] = (
    Bound("cars", "cars in the household", 0, 5, 1, "cars"),
    Bound("public_transport_pct", "travel by public transport", 0, 100, 0, "%"),
    Bound("short_haul_flights", "short-haul round trips a year", 0, 50, 1, "flights"),
    Bound("long_haul_flights", "long-haul round trips a year", 0, 20, 0, "flights"),
    Bound(
        "electricity_kwh_month",
        "your home electricity",
        0,
        10_000,
        AVERAGE_KWH_PER_MONTH,
        "kWh/month",
    ),
    Bound("solar_pct", "of it from rooftop solar", 0, 100, 0, "%"),
)
_BOUND = {b.key: b for b in BOUNDS}


def _round_div(num: int, den: int) -> int:
    """num / den rounded half up (num, den >= 0)."""
    return (2 * num + den) // (2 * den)


@dataclass(frozen=True, slots=True)
class Answers:
    cars: int = 1
    public_transport_pct: int = 0
    short_haul_flights: int = 1
    long_haul_flights: int = 0
    electricity_kwh_month: int = AVERAGE_KWH_PER_MONTH
    solar_pct: int = 0
    diet: Diet = Diet.AVERAGE

    def as_dict(self) -> dict[str, Any]:
        return {
            "cars": self.cars,
            "public_transport_pct": self.public_transport_pct,
            "short_haul_flights": self.short_haul_flights,
            "long_haul_flights": self.long_haul_flights,
            "electricity_kwh_month": self.electricity_kwh_month,
            "solar_pct": self.solar_pct,
            "diet": self.diet.value,
        }


def answers(raw: Mapping[str, Any]) -> Answers:
    """Answers from a mapping (missing keys take the defaults); FootprintError names the first
    answer that is not a whole number in its range, or an unknown diet or key."""
    unknown = sorted(set(raw) - set(_BOUND) - {"diet"})
    if unknown:
        raise FootprintError(f"unknown answer {unknown[0]!r}")
    values: dict[str, int] = {}
    for b in BOUNDS:
        v = raw.get(b.key, b.default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise FootprintError(f"{b.key} must be a whole number from {b.low} to {b.high}")
        if not b.low <= v <= b.high:
            raise FootprintError(f"{b.key} must be from {b.low} to {b.high} (got {v})")
        values[b.key] = v
    diet_raw = raw.get("diet", Diet.AVERAGE.value)
    try:
        diet = Diet(diet_raw)
    except ValueError:
        raise FootprintError(
            f"diet must be one of {', '.join(d.value for d in Diet)} (got {diet_raw!r})"
        ) from None
    return Answers(diet=diet, **values)


@dataclass(frozen=True, slots=True)
class Line:
    key: str
    label: str
    kg: int
    average_kg: int
    source: str


@dataclass(frozen=True, slots=True)
class Footprint:
    answers: Answers
    lines: tuple[Line, ...]
    total_kg: int
    average_kg: int
    forest_milliacres: int  # acres (in thousandths) of forest that absorb total_kg in a year
    model: str = MODEL


def _car_kg(cars: int, transit_pct: int) -> int:
    # Miles moved to public transport emit TRANSIT_PCT % of a car's per passenger-mile.
    # x 10_000: the two percentages.
    return _round_div(
        cars * CAR_KG * ((100 - transit_pct) * 100 + transit_pct * TRANSIT_PCT), 10_000
    )


def _electricity_kg(kwh_month: int, solar_pct: int) -> int:
    year_kwh = kwh_month * MONTHS_PER_YEAR
    grams_x100 = year_kwh * ((100 - solar_pct) * GRID_G_PER_KWH + solar_pct * SOLAR_G_PER_KWH)
    return _round_div(grams_x100, 100 * 1000)


def _parts(a: Answers) -> list[tuple[str, str, int, str]]:
    return [
        (
            "cars",
            "cars and public transport",
            _car_kg(a.cars, a.public_transport_pct),
            f"{_source('car_kg')}; {_source('transit_per_car_mile_pct')}",
        ),
        (
            "flights",
            "flights",
            a.short_haul_flights * SHORT_HAUL_KG + a.long_haul_flights * LONG_HAUL_KG,
            f"{_source('short_haul_round_trip_kg')}; {_source('long_haul_round_trip_kg')}",
        ),
        (
            "electricity",
            "home electricity",
            _electricity_kg(a.electricity_kwh_month, a.solar_pct),
            f"{_source('grid_g_per_kwh')}; {_source('rooftop_solar_g_per_kwh')}",
        ),
        ("diet", "diet", DIET_KG[a.diet], DIET_SOURCE),
    ]


def _source(key: str) -> str:
    return next(f.source for f in FACTORS if f.key == key)


_AVERAGE_PARTS = {key: kg for key, _, kg, _ in _parts(Answers())}
# What no question covers: heating, goods, services, government, ... (the average's remainder).
REST_KG = AVERAGE_US_KG - sum(_AVERAGE_PARTS.values())


def compute(a: Answers) -> Footprint:
    """The footprint of `a`: one line per factor and the average's remainder, the total, and
    the acres of forest that would absorb it in a year."""
    lines = [
        Line(key, label, kg, _AVERAGE_PARTS[key], source) for key, label, kg, source in _parts(a)
    ]
    lines.append(
        Line(
            "rest",
            "everything else (heating, goods, services)",
            REST_KG,
            REST_KG,
            "the average US footprint minus the average of the factors above",
        )
    )
    total = sum(line.kg for line in lines)
    return Footprint(a, tuple(lines), total, AVERAGE_US_KG, forest_milliacres(total * 1000))


# ------------------------------------------------------------------------------------------
# The dashboard: a footprint in effect month by month against the kg retired for the account.


@dataclass(frozen=True, slots=True)
class Month:
    month: str  # YYYY-MM (UTC)
    footprint_kg: int  # the month's share of the footprint in effect (a twelfth, rounded)
    retired_kg: int
    cumulative_footprint_kg: int
    cumulative_retired_kg: int
    offset_permille: int  # cumulative retired / cumulative footprint, in thousandths
    forest_milliacres: int  # acres of forest a year of which equals the retired kg so far


def month_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def _next_month(m: str) -> str:
    y, mo = int(m[:4]), int(m[5:])
    return f"{y + mo // 12:04d}-{mo % 12 + 1:02d}"


def monthly(
    baselines: Sequence[tuple[int, int]],
    retirements: Iterable[tuple[int, int]],
    now_ms: int,
    max_months: int = MAX_DASHBOARD_MONTHS,
) -> list[Month]:
    """Month by month (UTC) from the first baseline or retirement to now's month (at most the
    last `max_months`): the footprint in effect (the newest baseline saved by the month's end;
    before the first one, the first one), the kg retired, and running totals.

    `baselines`: (saved_ms, total_kg); `retirements`: (retired_ms, kg)."""
    retired: dict[str, int] = {}
    for at_ms, kg in retirements:
        m = month_of(at_ms)
        retired[m] = retired.get(m, 0) + kg
    ordered = sorted(baselines)
    starts = [month_of(ms) for ms, _ in ordered] + list(retired)
    if not starts:
        return []
    last = month_of(now_ms)
    first = min(starts)
    months = []
    m = first
    while m <= last:
        months.append(m)
        m = _next_month(m)
    out: list[Month] = []
    cum_fp = cum_ret = 0
    for m in months:
        in_effect = [kg for ms, kg in ordered if month_of(ms) <= m]
        total = in_effect[-1] if in_effect else (ordered[0][1] if ordered else 0)
        fp = _round_div(total, MONTHS_PER_YEAR)
        got = retired.get(m, 0)
        cum_fp += fp
        cum_ret += got
        out.append(
            Month(
                month=m,
                footprint_kg=fp,
                retired_kg=got,
                cumulative_footprint_kg=cum_fp,
                cumulative_retired_kg=cum_ret,
                offset_permille=0 if cum_fp == 0 else cum_ret * 1000 // cum_fp,
                forest_milliacres=forest_milliacres(cum_ret * 1000),
            )
        )
    return out[-max_months:]
