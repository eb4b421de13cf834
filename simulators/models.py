"""Physical models behind the simulated meters: PV output, household load, a home battery,
energy integration.

Owns: a simple clear-sky PV model with smooth random clouds, a household load profile, a
battery driven by a power setpoint (`BatteryModel`), the home that combines them with an
optional generation limit (`HomeModel`), and an integrator that turns power over time into
import/export energy. Pure: no I/O, and never the wall clock; every function takes the (possibly
simulated) timestamp it should evaluate.

The random parts are functions of (seed, timestamp) rather than of how often they are called.
That way two meters of one home, an edge agent polling at any rate and a test that recomputes
the expected energy all see the same sky.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

#: Clear-sky irradiance ~ 1000 W/m2 * sin(elevation)^1.15 (a common air-mass approximation).
CLEAR_SKY_EXPONENT: Final = 1.15
#: Kasten & Czeplak (1980): G = G_clear * (1 - 0.75 * N^3.4) for cloud cover N in [0, 1].
_KC_A: Final = 0.75
_KC_B: Final = 3.4
#: Relative standard deviation of the uncorrelated jitter added when an rng is given.
PV_JITTER: Final = 0.01
LOAD_JITTER: Final = 0.05


def solar_hour(ts: float, longitude_deg: float) -> float:
    """Local mean solar time in hours [0, 24): UTC hour + longitude / 15.

    The equation of time (up to ~16 minutes) is ignored; the simulation does not need it.
    """
    return ((ts % 86400.0) / 3600.0 + longitude_deg / 15.0) % 24.0


def solar_declination_deg(ts: float) -> float:
    """Solar declination from the day of year (Cooper's approximation)."""
    day = datetime.fromtimestamp(ts, UTC).timetuple().tm_yday
    return 23.44 * math.sin(math.radians(360.0 / 365.0 * (284 + day)))


def solar_elevation_deg(ts: float, latitude_deg: float, longitude_deg: float) -> float:
    """Sun elevation above the horizon in degrees (negative at night)."""
    hour_angle = math.radians(15.0 * (solar_hour(ts, longitude_deg) - 12.0))
    lat = math.radians(latitude_deg)
    dec = math.radians(solar_declination_deg(ts))
    sin_elevation = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(
        hour_angle
    )
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_elevation))))


def cloud_factor(cloudiness: float) -> float:
    """Fraction of clear-sky irradiance left under cloud cover `cloudiness` in [0, 1]."""
    n = max(0.0, min(1.0, cloudiness))
    return 1.0 - _KC_A * math.pow(n, _KC_B)


def pv_power_w(
    ts: float,
    latitude_deg: float,
    longitude_deg: float,
    capacity_w: int,
    cloudiness: float,
    rng: random.Random | None = None,
) -> float:
    """AC output of a PV system of `capacity_w` (W, >= 0; 0 at night).

    capacity * sin(elevation)^1.15 * cloud factor; panels are treated as horizontal with the
    rated power reached at 1000 W/m2. `cloudiness` is the current cloud cover (see CloudCover).
    With `rng`, a small uncorrelated jitter (1 %) imitates inverter ripple; without it the
    result is deterministic, which is what energy integration uses.
    """
    elevation = solar_elevation_deg(ts, latitude_deg, longitude_deg)
    if elevation <= 0.0:
        return 0.0
    power = capacity_w * math.pow(math.sin(math.radians(elevation)), CLEAR_SKY_EXPONENT)
    power *= cloud_factor(cloudiness)
    if rng is not None:
        power *= max(0.0, 1.0 + rng.gauss(0.0, PV_JITTER))
    return power


def _bump(hour: float, centre: float, width_h: float) -> float:
    """Gaussian bump on the 24-hour circle."""
    distance = abs(hour - centre) % 24.0
    distance = min(distance, 24.0 - distance)
    return math.exp(-0.5 * (distance / width_h) ** 2)


def household_load_w(
    ts: float,
    base_w: float,
    rng: random.Random | None = None,
    *,
    longitude_deg: float = 0.0,
) -> float:
    """Household consumption: base load plus a morning (~07:30) and an evening (~19:00) peak.

    Hours are local solar hours (UTC + longitude / 15), so homes east of Greenwich peak earlier
    in UTC. With `rng`, 5 % uncorrelated jitter is added.
    """
    hour = solar_hour(ts, longitude_deg)
    shape = 1.0 + 1.2 * _bump(hour, 7.5, 1.0) + 2.0 * _bump(hour, 19.0, 1.5)
    power = base_w * shape
    if rng is not None:
        power *= max(0.0, 1.0 + rng.gauss(0.0, LOAD_JITTER))
    return power


class SmoothNoise:
    """A smooth random signal in [0, 1] that is a pure function of (seed, time).

    Random values sit on knots every `step_s` seconds and are joined with smoothstep, so
    consecutive samples are correlated like a slow random walk, but a sample does not depend on
    how many samples came before: any process with the same seed sees the same signal.
    """

    def __init__(self, seed: int | str, step_s: float) -> None:
        if step_s <= 0:
            raise ValueError("step_s must be positive")
        self.seed = seed
        self.step_s = step_s
        self._knots: dict[int, float] = {}

    def _knot(self, k: int) -> float:
        value = self._knots.get(k)
        if value is None:
            if len(self._knots) > 256:
                self._knots.clear()
            # A str seed is hashed with SHA-512 by random.Random: stable across processes.
            value = random.Random(f"{self.seed}:{self.step_s}:{k}").random()
            self._knots[k] = value
        return value

    def at(self, ts: float) -> float:
        """Signal value at time `ts`."""
        position = ts / self.step_s
        k = math.floor(position)
        f = position - k
        s = f * f * (3.0 - 2.0 * f)
        a = self._knot(k)
        return a + (self._knot(k + 1) - a) * s


class CloudCover:
    """Cloud cover in [0, 1] drifting around `mean`: slow weather plus faster passing clouds.

    Deterministic for a seed, correlated from one call to the next, independent of call rate.
    """

    def __init__(self, seed: int | str, mean: float = 0.3, variability: float = 0.3) -> None:
        self.mean = mean
        self.variability = variability
        self._weather = SmoothNoise(f"{seed}:weather", 1800.0)
        self._passing = SmoothNoise(f"{seed}:passing", 240.0)

    def at(self, ts: float) -> float:
        """Cloud cover at time `ts`."""
        swing = 0.7 * (2.0 * self._weather.at(ts) - 1.0) + 0.3 * (2.0 * self._passing.at(ts) - 1.0)
        return max(0.0, min(1.0, self.mean + self.variability * swing))


#: Changes a model remembers (older ones are forgotten: times before them read the oldest kept).
HISTORY: Final = 256


@dataclass(frozen=True, slots=True)
class _Segment:
    """A battery from `since` on: state of charge then, setpoint and reserve held until the
    next segment."""

    since: float
    soc: float
    setpoint_w: float
    min_soc: float


class BatteryModel:
    """A home battery that follows a power setpoint (W, + discharge, - charge).

    The setpoint is clipped to `max_discharge_w` / `max_charge_w` and held until the next
    `set_setpoint`; the battery then delivers exactly that power until it is empty (state of
    charge down to `min_soc`, the reserve) or full (soc 1.0), and 0 W from that moment on.
    Default setpoint: idle (0 W); the model never decides on its own, so a test can predict it.

    Energy: charging stores `efficiency` of the AC energy taken in, discharging takes the AC
    energy from the store 1:1 (so `efficiency` is the round-trip efficiency).

    Because the power is constant between setpoint changes, the state at any time is a closed
    form of the change in force then: `soc_at` and `power_w` are functions of the timestamp,
    not of how often they are called, and a meter that integrates up to a time before the last
    change still sees the setpoint that was in force (the last `HISTORY` changes are kept). A
    change dated before the previous one (a clock that stepped back) takes effect at the
    previous one's time.
    """

    def __init__(
        self,
        capacity_wh: float,
        max_charge_w: float,
        max_discharge_w: float,
        soc: float = 0.5,
        *,
        efficiency: float = 1.0,
        min_soc: float = 0.0,
        start_ts: float | None = None,
    ) -> None:
        if capacity_wh <= 0:
            raise ValueError("capacity_wh must be positive")
        if max_charge_w < 0 or max_discharge_w < 0:
            raise ValueError("max_charge_w and max_discharge_w must be >= 0")
        if not 0.0 < efficiency <= 1.0:
            raise ValueError("efficiency must be in (0, 1]")
        if not 0.0 <= min_soc < 1.0:
            raise ValueError("min_soc must be in [0, 1)")
        if not 0.0 <= soc <= 1.0:
            raise ValueError("soc must be in [0, 1]")
        self.capacity_wh = capacity_wh
        self.max_charge_w = max_charge_w
        self.max_discharge_w = max_discharge_w
        self.efficiency = efficiency
        since = -math.inf if start_ts is None else start_ts
        self._segments: list[_Segment] = [_Segment(since, soc, 0.0, min_soc)]

    @property
    def setpoint_w(self) -> float:
        """The setpoint in force since the last change (W, clipped)."""
        return self._segments[-1].setpoint_w

    @property
    def min_soc(self) -> float:
        """The reserve in force since the last change (0..1)."""
        return self._segments[-1].min_soc

    def _segment(self, ts: float) -> _Segment:
        i = bisect.bisect_right([seg.since for seg in self._segments], ts) - 1
        return self._segments[max(0, i)]

    def _seconds_left(self, seg: _Segment) -> float:
        """Seconds `seg`'s setpoint can be held from its start (inf if forever)."""
        p = seg.setpoint_w
        if p > 0:
            stored = max(0.0, seg.soc - seg.min_soc) * self.capacity_wh
            return stored * 3600.0 / p
        if p < 0:
            room = max(0.0, 1.0 - seg.soc) * self.capacity_wh
            return room * 3600.0 / (-p * self.efficiency)
        return math.inf

    def soc_at(self, ts: float) -> float:
        """State of charge (0..1) at `ts`."""
        seg = self._segment(ts)
        p = seg.setpoint_w
        if p == 0.0:
            return seg.soc
        dt = min(max(0.0, ts - seg.since), self._seconds_left(seg))
        if p > 0:
            floor = min(seg.soc, seg.min_soc)  # already below a newly raised reserve
            return max(floor, seg.soc - p * dt / 3600.0 / self.capacity_wh)
        return min(1.0, seg.soc - p * self.efficiency * dt / 3600.0 / self.capacity_wh)

    def power_w(self, ts: float) -> float:
        """AC power at `ts` (W, + discharge, - charge): the setpoint until empty or full."""
        seg = self._segment(ts)
        if seg.setpoint_w == 0.0 or ts - seg.since >= self._seconds_left(seg):
            return 0.0
        return seg.setpoint_w

    def set_reserve(self, ts: float, min_soc: float) -> None:
        """From `ts` on, keep `min_soc` (0..1) in reserve: discharging stops there."""
        if not 0.0 <= min_soc < 1.0:
            raise ValueError("min_soc must be in [0, 1)")
        self._change(ts, self.setpoint_w, min_soc)

    def set_setpoint(self, ts: float, power_w: float) -> None:
        """From `ts` on, deliver `power_w` (+ discharge, - charge), clipped to the limits."""
        if not math.isfinite(power_w):
            raise ValueError("power_w must be finite")
        clipped = max(-self.max_charge_w, min(self.max_discharge_w, power_w))
        self._change(ts, clipped, self.min_soc)

    def _change(self, ts: float, setpoint_w: float, min_soc: float) -> None:
        last = self._segments[-1]
        ts = max(ts, last.since)
        segment = _Segment(ts, self.soc_at(ts), setpoint_w, min_soc)
        if ts == last.since:
            self._segments[-1] = segment  # two changes at one instant: the later one holds
        else:
            self._segments.append(segment)
        del self._segments[:-HISTORY]


@dataclass
class HomeModel:
    """One home's PV system, consumption and (optionally) battery; shared by that home's meters
    so they agree.

    `generation_limit` (fraction of `capacity_w`, None = no limit) curtails the PV output, as an
    inverter's power limit does: `pv_w` = min(available, limit * capacity). Set with a
    timestamp (`set_generation_limit(f, ts)`, what the simulated inverter does), a change takes
    effect from `ts` on and earlier times keep the limit they had, so every meter of the home
    integrates the same energy whenever it gets round to it; set without one, the limit holds
    for all times. `generation_limit` itself is the latest value.
    """

    capacity_w: int
    latitude_deg: float
    longitude_deg: float
    base_load_w: float
    seed: int
    mean_cloudiness: float = 0.3
    generation_limit: float | None = None
    battery: BatteryModel | None = None
    clouds: CloudCover = field(init=False)
    #: (from, limit) changes dated by `set_generation_limit(..., ts)`, oldest first.
    _limits: list[tuple[float, float | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.clouds = CloudCover(self.seed, mean=self.mean_cloudiness)
        self.set_generation_limit(self.generation_limit)

    def set_generation_limit(self, fraction: float | None, ts: float | None = None) -> None:
        """Cap PV output at `fraction` (0..1) of the capacity from `ts` on (None: for all
        times); `fraction` None removes the cap. A `ts` before the previous change counts as
        that change's time."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError("the generation limit must be a fraction in 0..1 (or None)")
        if ts is None:
            self._limits = [(-math.inf, fraction)]
        else:
            ts = max(ts, self._limits[-1][0])
            if ts == self._limits[-1][0]:
                self._limits[-1] = (ts, fraction)
            else:
                self._limits.append((ts, fraction))
            del self._limits[:-HISTORY]
        self.generation_limit = fraction

    def limit_at(self, ts: float) -> float | None:
        """The generation limit in force at `ts` (fraction of capacity, None = no limit)."""
        i = bisect.bisect_right([since for since, _ in self._limits], ts) - 1
        return self._limits[max(0, i)][1]

    def pv_available_w(self, ts: float, rng: random.Random | None = None) -> float:
        """What the sun would give at `ts` without a limit (W, >= 0)."""
        return pv_power_w(
            ts,
            self.latitude_deg,
            self.longitude_deg,
            self.capacity_w,
            self.clouds.at(ts),
            rng,
        )

    def pv_w(self, ts: float, rng: random.Random | None = None) -> float:
        """PV output at `ts` (W, >= 0), after the generation limit; deterministic unless `rng`
        adds jitter."""
        available = self.pv_available_w(ts, rng)
        limit = self.limit_at(ts)
        if limit is None:
            return available
        return min(available, limit * self.capacity_w)

    def load_w(self, ts: float, rng: random.Random | None = None) -> float:
        """Household consumption at `ts` (W, >= 0); deterministic unless `rng` adds jitter."""
        return household_load_w(ts, self.base_load_w, rng, longitude_deg=self.longitude_deg)

    def battery_w(self, ts: float) -> float:
        """Battery AC power at `ts` (W, + discharge, - charge); 0 without a battery."""
        return 0.0 if self.battery is None else self.battery.power_w(ts)

    def grid_w(self, ts: float) -> float:
        """Smooth power at the grid connection (W; > 0 import): load - pv - battery."""
        return self.load_w(ts) - self.pv_w(ts) - self.battery_w(ts)


class EnergyIntegrator:
    """Integrates power over time into import (power > 0) and export (power < 0) energy.

    Totals are float Wh in float64; the meter rounds them to float32 kWh only when it puts them
    into registers, as a real meter does.
    """

    def __init__(self, import_wh: float = 0.0, export_wh: float = 0.0) -> None:
        self.import_wh = import_wh
        self.export_wh = export_wh

    def add_segment(self, p0_w: float, p1_w: float, dt_s: float) -> None:
        """Add a span of `dt_s` seconds over which power moves linearly from p0 to p1.

        A sign change inside the span is split at the zero crossing, so a grid meter that goes
        from import to export books each part on the right counter.
        """
        if dt_s < 0:
            raise ValueError("dt_s must be >= 0")
        if p0_w >= 0.0 and p1_w >= 0.0:
            self.import_wh += (p0_w + p1_w) / 2.0 * dt_s / 3600.0
        elif p0_w <= 0.0 and p1_w <= 0.0:
            self.export_wh -= (p0_w + p1_w) / 2.0 * dt_s / 3600.0
        else:
            t_zero = dt_s * p0_w / (p0_w - p1_w)
            first = p0_w * t_zero / 2.0 / 3600.0
            second = p1_w * (dt_s - t_zero) / 2.0 / 3600.0
            for area in (first, second):
                if area > 0:
                    self.import_wh += area
                else:
                    self.export_wh -= area

    def integrate(
        self,
        power_w: Callable[[float], float],
        t0: float,
        t1: float,
        max_step_s: float = 30.0,
    ) -> None:
        """Integrate `power_w(t)` from t0 to t1 with the trapezoid rule in steps <= max_step_s."""
        if t1 <= t0:
            return
        steps = max(1, math.ceil((t1 - t0) / max_step_s))
        h = (t1 - t0) / steps
        previous = power_w(t0)
        for i in range(1, steps + 1):
            current = power_w(t0 + i * h) if i < steps else power_w(t1)
            self.add_segment(previous, current, h)
            previous = current
