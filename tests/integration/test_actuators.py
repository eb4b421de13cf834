"""Actuators (edge/actuators.py) against the SunSpec simulator over real Modbus TCP.

One simulated home: a PV inverter with model 123 (unit 1), a battery inverter with model 124
(unit 2), a grid meter (unit 3) and a plain inverter without controls (unit 4), all on one
listener and all following one `HomeModel`. The edge side is built as the agent builds it:
settings -> `make_reader` -> `make_actuators`, so reads and writes share one bus. Expected
values come from an independent copy of the home model (no limit, no battery) on the same
`SimClock`, bounded over the clock readings taken around each request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from edge.actuators import (
    SunSpecInverterControl,
    SunSpecStorageControl,
    make_actuators,
    prepare_actuators,
)
from edge.controls import Actuator, ActuatorError
from edge.drivers.modbus_generic import DeviceUnavailableError
from edge.meters import MeterReader, make_reader
from edge.settings import EdgeSettings, MeterSettings
from edge.transports.modbus_bus import bus_for, close_buses
from protocol.clock import SimClock
from protocol.dispatch import ControlMode
from simulators.models import BatteryModel, HomeModel
from simulators.pty import PtyPair
from simulators.sunspec_device import (
    CTL,
    STO,
    SimulatedSunSpec,
    SunSpecServer,
    start_sunspec_rtu_server,
    start_sunspec_tcp_server,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.modbus

# 21 June 2025 near Munich, 10:00 UTC, no clouds: PV near 4 kW of 5 kW, far above 30 %.
MIDDAY = datetime(2025, 6, 21, 10, 0, tzinfo=UTC).timestamp()
CAPACITY_W = 5000
BATTERY_WH = 10_000.0
MAX_CHARGE_W = 3000.0
MAX_DISCHARGE_W = 4000.0
PV, BATTERY, GRID, PLAIN = 1, 2, 3, 4
MAX_LIM = ControlMode.OP_MOD_MAX_LIM_W
FIXED = ControlMode.OP_MOD_FIXED_W
CONNECT = ControlMode.OP_MOD_CONNECT


def reference_home() -> HomeModel:
    """The site's home without limit or battery: what the sun and the load alone give."""
    return HomeModel(CAPACITY_W, 48.14, 11.58, 400.0, 7, mean_cloudiness=0.0)


@dataclass
class Site:
    clock: SimClock
    home: HomeModel
    server: SunSpecServer
    sims: dict[int, SimulatedSunSpec]
    readers: dict[str, MeterReader]
    actuators: dict[str, Actuator]

    def span(self, power_w: Callable[[float], float], t0: float, t1: float) -> tuple[float, float]:
        samples = [power_w(t0 + i * (t1 - t0) / 20) for i in range(21)]
        return min(samples), max(samples)

    async def read(self, meter: str, quantity: str) -> tuple[float, float, float]:
        """(clock before, value, clock after) of one quantity read through the agent's reader."""
        before = self.clock.now()
        values = await self.readers[meter].driver.read([quantity])
        return before, values[quantity], self.clock.now()


StartSite = Callable[[float], Awaitable[Site]]


@pytest.fixture
async def site_factory(tmp_path: Path) -> AsyncIterator[StartSite]:
    started: list[Site] = []

    async def start(speed: float) -> Site:
        clock = SimClock.starting_at(MIDDAY, speed)
        battery = BatteryModel(
            BATTERY_WH, MAX_CHARGE_W, MAX_DISCHARGE_W, soc=0.6, start_ts=clock.now()
        )
        home = HomeModel(CAPACITY_W, 48.14, 11.58, 400.0, 7, mean_cloudiness=0.0, battery=battery)
        common: dict[str, Any] = {"home": home, "jitter": False}
        sims = {
            PV: SimulatedSunSpec(clock, inverter_model=103, controls=True, **common),
            BATTERY: SimulatedSunSpec(
                clock, inverter_model=103, inverter_role="battery", serial_number="BAT1", **common
            ),
            GRID: SimulatedSunSpec(clock, inverter_model=None, meter_model=203, **common),
            PLAIN: SimulatedSunSpec(clock, inverter_model=103, **common),
        }
        server = await start_sunspec_tcp_server(sims)

        def meter(name: str, unit: int, controls: list[str]) -> MeterSettings:
            return MeterSettings(
                name=name,
                driver="sunspec",
                host="127.0.0.1",
                port=server.port,
                unit_id=unit,
                controls=controls,
            )

        settings = EdgeSettings(
            device_id="dev-1",
            site_id="site-1",
            key_file=tmp_path / "device.key",
            state_db=tmp_path / "state.db",
            meters=[
                meter("pv", PV, ["opModMaxLimW", "opModConnect"]),
                meter("battery", BATTERY, ["opModFixedW"]),
                meter("grid", GRID, []),
                meter("plain", PLAIN, ["opModMaxLimW"]),
            ],
        )
        readers = {m.name: make_reader(m) for m in settings.meters}
        actuators = make_actuators(settings, list(readers.values()))
        site = Site(clock, home, server, sims, readers, {a.name: a for a in actuators})
        started.append(site)
        return site

    yield start
    for site in started:
        await close_buses()
        await site.server.stop()


async def test_make_actuators_builds_on_the_readers_drivers(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    pv, battery = site.actuators["pv"], site.actuators["battery"]
    assert isinstance(pv, SunSpecInverterControl)
    assert isinstance(battery, SunSpecStorageControl)
    assert pv.controls == {MAX_LIM, CONNECT}
    assert battery.controls == {FIXED}
    # Same driver object as the meter reader: one lock, one bus.
    assert pv.device is site.readers["pv"].driver.device  # type: ignore[attr-defined]
    assert site.readers["pv"].driver.bus is bus_for(host="127.0.0.1", port=site.server.port)  # type: ignore[attr-defined]
    # The plain inverter has no model 123: discovery takes its control away.
    kept = await prepare_actuators(list(site.actuators.values()))
    assert [a.name for a in kept] == ["pv", "battery"]
    assert site.actuators["plain"].controls == frozenset()


async def test_a_device_without_model_123_refuses_in_plain_words(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    with pytest.raises(ActuatorError, match=r"^plain: .*has no SunSpec model 123"):
        await site.actuators["plain"].apply(MAX_LIM, 3000)


async def test_generation_limit_caps_output_and_release_lifts_it(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    ref = reference_home()
    pv = site.actuators["pv"]
    before, power, after = site.clock.now(), await pv.measure_w(MAX_LIM), site.clock.now()
    low, high = site.span(ref.pv_w, before, after)
    assert power is not None and low - 1 <= power <= high + 1
    assert low > 0.5 * CAPACITY_W  # the sun gives clearly more than the limit below

    await pv.apply(MAX_LIM, 3000)  # 30.00 %
    assert site.home.generation_limit == pytest.approx(0.30)
    device = site.readers["pv"].driver.device  # type: ignore[attr-defined]
    points = await device.read_points(123, ["WMaxLimPct", "WMaxLim_Ena"])
    assert points == {"WMaxLimPct": pytest.approx(30.0), "WMaxLim_Ena": 1.0}
    limited = await pv.measure_w(MAX_LIM)
    assert limited is not None and limited <= 0.30 * CAPACITY_W + 0.5
    assert limited >= 0.30 * CAPACITY_W - 0.5  # the sun still gives more than the cap

    # The PV energy counter now grows at most at the capped rate.
    t0, e0, _ = await site.read("pv", "ac_energy_wh")
    await until(lambda: _past(site.clock, t0 + 600))
    _, e1, t1 = await site.read("pv", "ac_energy_wh")
    assert e1 - e0 <= 0.30 * CAPACITY_W * (t1 - t0) / 3600 + 2
    assert e1 - e0 >= 0.30 * CAPACITY_W * 590 / 3600 - 2

    # The grid meter sees the lost PV as less export (more import).
    before, grid, after = await site.read("grid", "total_power_w")
    low, high = site.span(lambda t: ref.load_w(t) - 0.30 * CAPACITY_W, before, after)
    assert low - 1 <= grid <= high + 1

    await pv.release(MAX_LIM)
    assert site.home.generation_limit is None
    before, power, after = site.clock.now(), await pv.measure_w(MAX_LIM), site.clock.now()
    low, high = site.span(ref.pv_w, before, after)
    assert power is not None and low - 1 <= power <= high + 1


async def test_disconnect_stops_the_output_and_release_reconnects(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    pv = site.actuators["pv"]
    await pv.apply(MAX_LIM, 8000)
    await pv.apply(CONNECT, 0)
    assert await pv.measure_w(CONNECT) == 0
    await pv.release(CONNECT)
    power = await pv.measure_w(CONNECT)
    assert power is not None and 0.5 * CAPACITY_W < power <= 0.8 * CAPACITY_W + 0.5


async def test_battery_discharge_charge_hold_and_release(site_factory: StartSite) -> None:
    site: Site = await site_factory(1200.0)  # 20 simulated minutes per real second
    ref = reference_home()
    battery = site.actuators["battery"]
    device = site.readers["battery"].driver.device  # type: ignore[attr-defined]
    assert await battery.measure_w(FIXED) == 0  # idle until told otherwise

    await battery.apply(FIXED, 5000)  # discharge at 50 % of 4 kW
    assert await battery.measure_w(FIXED) == 2000
    state = await device.read_points(124, ["ChaState", "StorCtl_Mod", "OutWRte", "ChaSt"])
    assert state["StorCtl_Mod"] == 2 and state["OutWRte"] == pytest.approx(50.0)
    assert state["ChaSt"] == 3  # DISCHARGING
    start_soc = state["ChaState"]
    assert start_soc <= 60.0

    async def soc_fell() -> bool:
        soc = (await device.read_points(124, ["ChaState"]))["ChaState"]
        return bool(soc <= start_soc - 3.0)

    await until(soc_fell, timeout_s=30)
    # 2 kW for t hours out of 10 kWh: the soc falls 20 % per simulated hour.
    t_soc = site.clock.now()
    soc = (await device.read_points(124, ["ChaState"]))["ChaState"]
    expected = 60.0 - 20.0 * (t_soc - site.sims[BATTERY].start_ts) / 3600
    assert soc == pytest.approx(expected, abs=1.5)

    # The grid meter: the battery covers 2 kW of what the home would import.
    before, grid, after = await site.read("grid", "total_power_w")
    low, high = site.span(lambda t: ref.load_w(t) - ref.pv_w(t) - 2000.0, before, after)
    assert low - 1 <= grid <= high + 1

    await battery.apply(FIXED, -2500)  # charge at 25 % of WChaMax (3 kW)
    assert await battery.measure_w(FIXED) == -750
    assert (await device.read_points(124, ["ChaSt"]))["ChaSt"] == 4  # CHARGING

    await battery.apply(FIXED, 0)
    assert await battery.measure_w(FIXED) == 0
    assert (await device.read_points(124, ["StorCtl_Mod"]))["StorCtl_Mod"] == 3

    await battery.apply(FIXED, 10000)
    assert await battery.measure_w(FIXED) == 4000
    await battery.release(FIXED)
    assert (await device.read_points(124, ["StorCtl_Mod"]))["StorCtl_Mod"] == 0
    assert await battery.measure_w(FIXED) == 0


async def test_bad_values_and_read_only_points_are_refused(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    pv, battery = site.actuators["pv"], site.actuators["battery"]
    with pytest.raises(ActuatorError, match=r"^pv: opModMaxLimW value 10001 is outside 0..10000"):
        await pv.apply(MAX_LIM, 10001)
    with pytest.raises(ActuatorError, match="^pv does not take opModFixedW"):
        await pv.apply(FIXED, 100)
    with pytest.raises(ActuatorError, match="^battery does not take opModMaxLimW"):
        await battery.apply(MAX_LIM, 100)
    assert site.home.generation_limit is None

    device = site.readers["battery"].driver.device  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"124\.ChaState is read-only"):
        await device.write_point(124, "ChaState", 10.0)

    # What the simulated device answers on the wire, as a real one would.
    bus = bus_for(host="127.0.0.1", port=site.server.port)
    storage = site.sims[BATTERY].storage_address
    controls = site.sims[PV].controls_address
    assert storage is not None and controls is not None
    with pytest.raises(DeviceUnavailableError) as read_only:
        await bus.write_registers(storage + STO["ChaState"], [100], BATTERY)
    assert read_only.value.exception_code == 2
    with pytest.raises(DeviceUnavailableError) as too_much:
        await bus.write_registers(controls + CTL["WMaxLimPct"], [20_000], PV)  # 200 % at SF -2
    assert too_much.value.exception_code == 3
    with pytest.raises(DeviceUnavailableError) as header:
        await bus.write_registers(controls, [1], PV)  # the model ID
    assert header.value.exception_code == 2
    assert site.home.generation_limit is None  # nothing of a refused write was applied


async def test_a_lost_write_is_retried_on_the_bus(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    bus = bus_for(host="127.0.0.1", port=site.server.port)
    pv = site.actuators["pv"]
    await pv.measure_w(MAX_LIM)  # discovery done
    site.sims[PV].fail_next(1, "timeout")
    sent = bus.requests
    await pv.apply(MAX_LIM, 5000)
    assert site.home.generation_limit == pytest.approx(0.5)
    assert bus.requests >= sent + 3  # SF read, the lost write, its retry, the enable


async def test_an_unreachable_device_is_a_plain_actuator_error(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    await site.server.stop()
    with pytest.raises(ActuatorError, match=r"^pv: ") as failed:
        await site.actuators["pv"].apply(MAX_LIM, 3000)
    assert "Traceback" not in str(failed.value)


async def _past(clock: SimClock, when: float) -> bool:
    return clock.now() >= when


async def test_the_simulator_takes_single_register_writes(site_factory: StartSite) -> None:
    site: Site = await site_factory(60.0)
    controls = site.sims[PV].controls_address
    assert controls is not None
    client = AsyncModbusTcpClient("127.0.0.1", port=site.server.port, timeout=1, retries=0)
    assert await client.connect()
    try:
        ok = await client.write_register(controls + CTL["WMaxLimPct"], 4000, device_id=PV)  # FC06
        assert not ok.isError()
        ok = await client.write_register(controls + CTL["WMaxLim_Ena"], 1, device_id=PV)
        assert not ok.isError()
        assert site.home.generation_limit == pytest.approx(0.40)
        bad = await client.write_coil(0, True, device_id=PV)  # FC05: SunSpec has no coils
        assert bad.isError() and bad.exception_code in (1, 2)
    finally:
        client.close()


@pytest.mark.serial
async def test_battery_setpoint_over_rtu_on_a_pty_pair(tmp_path: Path) -> None:
    clock = SimClock.starting_at(MIDDAY, 60.0)
    battery = BatteryModel(BATTERY_WH, MAX_CHARGE_W, MAX_DISCHARGE_W, soc=0.5)
    home = HomeModel(CAPACITY_W, 48.14, 11.58, 400.0, 7, battery=battery)
    sim = SimulatedSunSpec(clock, home=home, inverter_model=101, inverter_role="battery")
    with PtyPair(tmp_path, "rs485") as pty:
        server = await start_sunspec_rtu_server({7: sim}, str(pty.sim_path))
        settings = MeterSettings(
            name="bat",
            driver="sunspec",
            transport="rtu",
            serial_port=str(pty.device_path),
            unit_id=7,
            controls=["opModFixedW"],
        )
        edge = EdgeSettings(
            device_id="dev-1",
            site_id="site-1",
            key_file=tmp_path / "k",
            state_db=tmp_path / "s",
            meters=[settings],
        )
        try:
            reader = make_reader(settings)
            (actuator,) = await prepare_actuators(make_actuators(edge, [reader]))
            await actuator.apply(FIXED, -10000)  # charge at the full 3 kW
            assert await actuator.measure_w(FIXED) == -3000
            assert battery.setpoint_w == -3000.0
            await actuator.release(FIXED)
            assert await actuator.measure_w(FIXED) == 0
        finally:
            await close_buses()
            await server.stop()
