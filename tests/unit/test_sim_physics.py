"""The simulators' controllable physics: a generation limit on the home's PV and a battery
that follows a setpoint (simulators/models.py). Pure: timestamps are passed in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from simulators.models import BatteryModel, EnergyIntegrator, HomeModel

MIDDAY = datetime(2025, 6, 21, 10, 0, tzinfo=UTC).timestamp()


def _home(**kwargs: object) -> HomeModel:
    return HomeModel(5000, 48.14, 11.58, 400.0, 7, mean_cloudiness=0.0, **kwargs)  # type: ignore[arg-type]


def test_generation_limit_caps_pv_and_none_restores_it() -> None:
    home = _home()
    available = home.pv_w(MIDDAY)
    assert available > 0.4 * 5000  # the sun gives more than the cap below
    home.set_generation_limit(0.3)
    assert home.pv_w(MIDDAY) == pytest.approx(0.3 * 5000)
    assert home.pv_available_w(MIDDAY) == available
    home.set_generation_limit(1.0)
    assert home.pv_w(MIDDAY) == available  # a cap above the output changes nothing
    home.set_generation_limit(None)
    assert home.pv_w(MIDDAY) == available


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_generation_limit_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        _home().set_generation_limit(bad)


def test_battery_discharge_integrates_and_stops_at_the_reserve() -> None:
    battery = BatteryModel(10_000.0, 3000.0, 4000.0, soc=0.5, min_soc=0.1, start_ts=0.0)
    assert battery.power_w(100.0) == 0.0  # idle by default
    battery.set_setpoint(0.0, 2000.0)
    assert battery.power_w(1800.0) == 2000.0
    # 2 kW for half an hour = 1 kWh = 10 % of 10 kWh
    assert battery.soc_at(1800.0) == pytest.approx(0.4)
    # 4 kWh above the reserve last 2 h at 2 kW; then 0 W and the soc stays at the reserve
    assert battery.power_w(7199.0) == 2000.0
    assert battery.power_w(7201.0) == 0.0
    assert battery.soc_at(10_000.0) == pytest.approx(0.1)


def test_battery_charge_uses_efficiency_and_stops_full() -> None:
    battery = BatteryModel(10_000.0, 3000.0, 4000.0, soc=0.9, efficiency=0.5, start_ts=0.0)
    battery.set_setpoint(0.0, -9999.0)  # clipped to the 3 kW charge limit
    assert battery.power_w(10.0) == -3000.0
    # 3 kW for 20 min = 1 kWh AC, 0.5 kWh stored = 5 %
    assert battery.soc_at(1200.0) == pytest.approx(0.95)
    assert battery.power_w(2399.0) == -3000.0
    assert battery.power_w(2401.0) == 0.0
    assert battery.soc_at(5000.0) == pytest.approx(1.0)


def test_battery_state_is_a_function_of_time_not_of_reads() -> None:
    a = BatteryModel(5000.0, 2000.0, 2000.0, soc=0.5, start_ts=0.0)
    b = BatteryModel(5000.0, 2000.0, 2000.0, soc=0.5, start_ts=0.0)
    a.set_setpoint(0.0, 1000.0)
    b.set_setpoint(0.0, 1000.0)
    for t in range(0, 3600, 7):
        a.soc_at(float(t))
        a.power_w(float(t))
    assert a.soc_at(3600.0) == b.soc_at(3600.0) == pytest.approx(0.3)
    a.set_setpoint(3600.0, 0.0)
    assert a.soc_at(9000.0) == pytest.approx(0.3)


def test_raising_the_reserve_above_the_soc_stops_discharge_without_a_jump() -> None:
    battery = BatteryModel(10_000.0, 3000.0, 3000.0, soc=0.2, start_ts=0.0)
    battery.set_setpoint(0.0, 1000.0)
    battery.set_reserve(0.0, 0.5)
    assert battery.power_w(60.0) == 0.0
    assert battery.soc_at(60.0) == pytest.approx(0.2)


def test_grid_power_includes_the_battery() -> None:
    home = _home(battery=BatteryModel(10_000.0, 3000.0, 3000.0, soc=0.5, start_ts=MIDDAY))
    before = home.grid_w(MIDDAY + 60)
    assert before == pytest.approx(home.load_w(MIDDAY + 60) - home.pv_w(MIDDAY + 60))
    assert home.battery is not None
    home.battery.set_setpoint(MIDDAY, 1500.0)
    assert home.grid_w(MIDDAY + 60) == pytest.approx(before - 1500.0)
    home.battery.set_setpoint(MIDDAY + 60, -1000.0)
    assert home.grid_w(MIDDAY + 120) == pytest.approx(
        home.load_w(MIDDAY + 120) - home.pv_w(MIDDAY + 120) + 1000.0
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity_wh": 0.0},
        {"efficiency": 1.5},
        {"min_soc": 1.0},
        {"soc": 1.2},
        {"max_charge_w": -1.0},
    ],
)
def test_battery_parameters_are_checked(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {
        "capacity_wh": 1000.0,
        "max_charge_w": 500.0,
        "max_discharge_w": 500.0,
        **kwargs,
    }
    with pytest.raises(ValueError):
        BatteryModel(**args)  # type: ignore[arg-type]


def test_a_dated_limit_keeps_the_past_as_it_was() -> None:
    home = _home()
    free = _home()
    home.set_generation_limit(0.2, MIDDAY)
    assert home.limit_at(MIDDAY - 1) is None and home.limit_at(MIDDAY) == 0.2
    assert home.pv_w(MIDDAY - 60) == free.pv_w(MIDDAY - 60)
    assert home.pv_w(MIDDAY + 60) == pytest.approx(1000.0)
    home.set_generation_limit(None, MIDDAY + 600)
    assert home.pv_w(MIDDAY + 300) == pytest.approx(1000.0)
    assert home.pv_w(MIDDAY + 900) == free.pv_w(MIDDAY + 900)
    # A meter that integrates only afterwards books the curtailed energy all the same.
    late, reference = EnergyIntegrator(), EnergyIntegrator()
    late.integrate(home.pv_w, MIDDAY - 600, MIDDAY + 1200, max_step_s=10.0)
    reference.integrate(free.pv_w, MIDDAY - 600, MIDDAY, max_step_s=10.0)
    reference.integrate(lambda t: 1000.0, MIDDAY, MIDDAY + 600, max_step_s=10.0)
    reference.integrate(free.pv_w, MIDDAY + 600, MIDDAY + 1200, max_step_s=10.0)
    assert late.import_wh == pytest.approx(reference.import_wh, abs=2.0)
    # An undated limit holds for all times.
    home.set_generation_limit(0.1)
    assert home.pv_w(MIDDAY - 3600) == pytest.approx(500.0)


def test_battery_answers_past_times_with_the_setpoint_then_in_force() -> None:
    battery = BatteryModel(10_000.0, 3000.0, 3000.0, soc=0.5, start_ts=0.0)
    battery.set_setpoint(3600.0, 1000.0)
    battery.set_setpoint(7200.0, -2000.0)
    assert battery.power_w(1800.0) == 0.0
    assert battery.power_w(5400.0) == 1000.0
    assert battery.power_w(9000.0) == -2000.0
    assert battery.soc_at(3600.0) == pytest.approx(0.5)
    assert battery.soc_at(7200.0) == pytest.approx(0.4)
    assert battery.soc_at(9000.0) == pytest.approx(0.5)  # 2 kW for half an hour = +10 %
    battery.set_setpoint(100.0, 0.0)  # dated before the last change: takes effect then
    assert battery.power_w(7300.0) == 0.0 and battery.power_w(5400.0) == 1000.0
