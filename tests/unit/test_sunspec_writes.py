"""SunSpec writes by name, in process: the driver's `write_points` / `read_points` and the
actuators against the simulator's register image, through a bus double (no sockets), on a
`ManualClock` so the physics can be checked to the watt-hour."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from edge.actuators import SunSpecInverterControl, SunSpecStorageControl
from edge.controls import ActuatorError
from edge.drivers.modbus_generic import DeviceUnavailableError
from edge.drivers.sunspec import SunSpecDevice
from protocol.clock import ManualClock
from protocol.dispatch import ControlMode
from simulators import sunspec_device as sim
from simulators.models import BatteryModel, HomeModel

MIDDAY = datetime(2025, 6, 21, 10, 0, tzinfo=UTC).timestamp()


class SimBus:
    """Reads the simulator's register image and hands writes to it, as the wire would."""

    def __init__(self, device: sim.SimulatedSunSpec) -> None:
        self.device = device
        self.writes: list[tuple[int, list[int]]] = []

    async def read_registers(self, table: str, address: int, count: int, unit_id: int) -> list[int]:
        image = self.device.registers_at(self.device.clock.now())
        offset = address - self.device.base
        if offset < 0 or offset + count > len(image):
            raise DeviceUnavailableError("illegal data address", exception_code=2)
        return image[offset : offset + count]

    async def write_registers(self, address: int, values: Sequence[int], unit_id: int) -> None:
        self.writes.append((address, list(values)))
        code = self.device.write(address, values)
        if code is not None:
            raise DeviceUnavailableError(f"Modbus exception {int(code)}", exception_code=int(code))


def _home(battery: BatteryModel | None = None) -> HomeModel:
    return HomeModel(5000, 48.14, 11.58, 400.0, 7, mean_cloudiness=0.0, battery=battery)


@pytest.mark.parametrize("sf", [0, -1, -2])
async def test_limit_is_written_at_the_device_scale_factor(sf: int) -> None:
    clock = ManualClock(MIDDAY)
    inverter = sim.SimulatedSunSpec(clock, home=_home(), controls=True, limit_pct_sf=sf)
    bus = SimBus(inverter)
    control = SunSpecInverterControl(
        "inv", SunSpecDevice(bus, 1), frozenset({ControlMode.OP_MOD_MAX_LIM_W})
    )
    await control.apply(ControlMode.OP_MOD_MAX_LIM_W, 4200)  # 42.00 %
    assert inverter.controls_address is not None
    pct_at = inverter.controls_address + sim.CTL["WMaxLimPct"]
    ena_at = inverter.controls_address + sim.CTL["WMaxLim_Ena"]
    assert bus.writes == [(pct_at, [round(42 / 10.0**sf)]), (ena_at, [1])]  # limit, then enable
    assert inverter.home.generation_limit == pytest.approx(0.42)
    assert await control.measure_w(ControlMode.OP_MOD_MAX_LIM_W) == 2100


async def test_a_scale_factor_the_device_does_not_implement_stops_the_write() -> None:
    clock = ManualClock(MIDDAY)
    inverter = sim.SimulatedSunSpec(clock, home=_home(), controls=True)
    inverter.limit_pct_sf = -32768  # WMaxLimPct_SF reads 0x8000, "not implemented"
    device = SunSpecDevice(SimBus(inverter), 1)
    with pytest.raises(
        DeviceUnavailableError, match="WMaxLimPct_SF of model 123 is not implemented"
    ):
        await device.write_point(123, "WMaxLimPct", 50.0)
    with pytest.raises(ValueError, match="has no point 'WMaxLim'"):
        await device.write_point(123, "WMaxLim", 1.0)


async def test_battery_soc_follows_the_setpoint_on_the_clock() -> None:
    clock = ManualClock(MIDDAY)
    battery = BatteryModel(10_000.0, 3000.0, 4000.0, soc=0.5, min_soc=0.1, start_ts=MIDDAY)
    unit = sim.SimulatedSunSpec(clock, home=_home(battery), inverter_role="battery")
    device = SunSpecDevice(SimBus(unit), 2)
    storage = SunSpecStorageControl("bat", device, frozenset({ControlMode.OP_MOD_FIXED_W}))
    await storage.apply(ControlMode.OP_MOD_FIXED_W, 2500)  # 25 % of 4 kW = 1 kW
    assert await storage.measure_w(ControlMode.OP_MOD_FIXED_W) == 1000
    clock.advance(1800)
    points = await device.read_points(124, ["ChaState", "ChaSt", "StorAval", "InBatV"])
    assert points["ChaState"] == pytest.approx(45.0)  # 0.5 kWh of 10 kWh
    assert points["ChaSt"] == sim.CHA_DISCHARGING
    assert points["StorAval"] == pytest.approx(3500 / points["InBatV"], abs=0.1)
    clock.advance(4 * 3600)  # long past the reserve: it stops there
    assert await storage.measure_w(ControlMode.OP_MOD_FIXED_W) == 0
    assert (await device.read_points(124, ["ChaState"]))["ChaState"] == pytest.approx(10.0)
    # Energy delivered = 4 kWh above the reserve, on the battery inverter's WH counter (the
    # simulator integrates in 30 s trapezoids: the step to 0 W costs up to 1 kW * 15 s).
    wh = (await device.read(["ac_energy_wh"]))["ac_energy_wh"]
    assert wh - 12_345_678 == pytest.approx(4000, abs=5)
    await storage.apply(ControlMode.OP_MOD_FIXED_W, -5000)  # charge at 1.5 kW
    clock.advance(3600)
    assert (await device.read_points(124, ["ChaState"]))["ChaState"] == pytest.approx(25.0)


async def test_refused_writes_name_the_device_and_change_nothing() -> None:
    clock = ManualClock(MIDDAY)
    battery = BatteryModel(10_000.0, 3000.0, 4000.0, start_ts=MIDDAY)
    unit = sim.SimulatedSunSpec(clock, home=_home(battery), inverter_role="battery")
    device = SunSpecDevice(SimBus(unit), 2)
    with pytest.raises(DeviceUnavailableError, match="unit 2 refused the write of 124.StorCtl_Mod"):
        await device.write_point(124, "StorCtl_Mod", 7)  # bits above DISCHARGE: exception 3
    with pytest.raises(ValueError, match="unit 2: OutWRte: 400 Pct is outside"):
        await device.write_point(124, "OutWRte", 400.0)  # does not fit int16 at SF -2
    storage = SunSpecStorageControl("bat", device, frozenset({ControlMode.OP_MOD_FIXED_W}))
    with pytest.raises(ActuatorError, match="^bat: "):
        await storage.apply(ControlMode.OP_MOD_FIXED_W, -10001)
    assert battery.setpoint_w == 0.0


async def test_revert_timeouts_end_a_setting_on_their_own() -> None:
    clock = ManualClock(MIDDAY)
    battery = BatteryModel(10_000.0, 3000.0, 4000.0, soc=0.5, start_ts=MIDDAY)
    home = _home(battery)
    inverter = sim.SimulatedSunSpec(clock, home=home, controls=True)
    storage_unit = sim.SimulatedSunSpec(clock, home=home, inverter_role="battery")
    inv, bat = SunSpecDevice(SimBus(inverter), 1), SunSpecDevice(SimBus(storage_unit), 2)
    await inv.write_points(123, {"WMaxLimPct_RvrtTms": 600})
    await bat.write_points(124, {"InOutWRte_RvrtTms": 900})
    await SunSpecInverterControl("inv", inv, frozenset({ControlMode.OP_MOD_MAX_LIM_W})).apply(
        ControlMode.OP_MOD_MAX_LIM_W, 1000
    )
    await SunSpecStorageControl("bat", bat, frozenset({ControlMode.OP_MOD_FIXED_W})).apply(
        ControlMode.OP_MOD_FIXED_W, 5000
    )
    clock.advance(599)
    assert (await inv.read(["ac_power_w"]))["ac_power_w"] == 500
    clock.advance(2)
    assert (await inv.read_points(123, ["WMaxLim_Ena"]))["WMaxLim_Ena"] == 0
    assert home.generation_limit is None and (await inv.read(["ac_power_w"]))["ac_power_w"] > 500
    assert home.limit_at(MIDDAY + 300) == pytest.approx(0.1)  # the past keeps its limit
    clock.advance(600)
    assert (await bat.read_points(124, ["StorCtl_Mod"]))["StorCtl_Mod"] == 0
    assert (await bat.read(["ac_power_w"]))["ac_power_w"] == 0
    # 2 kW for exactly the 900 s before the revert: 0.5 kWh of 10 kWh
    assert battery.soc_at(clock.now()) == pytest.approx(0.45)
