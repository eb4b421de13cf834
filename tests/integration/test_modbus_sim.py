"""The simulated SDM630 meters read over real Modbus TCP by the generic driver.

Energy expectations are recomputed here from the home model with the test's own integration, and
bounded by clock readings taken around each Modbus read.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from edge.drivers.modbus_generic import DeviceUnavailableError, ModbusDevice
from edge.drivers.register_map import RegisterMap, find_register_map, load_register_map
from protocol.clock import SimClock
from simulators.modbus_meter import MeterServer, SimulatedMeter, start_meter_server
from simulators.models import CloudCover, EnergyIntegrator, HomeModel, pv_power_w

# 21 June 2025, 09:00 UTC near Munich: the sun is well up, PV output far exceeds the load.
ORIGIN = datetime(2025, 6, 21, 9, 0, tzinfo=UTC).timestamp()
SPEED = 600.0
HOME = {"capacity_w": 5000, "latitude": 48.14, "longitude": 11.58, "base_load_w": 400.0}
SEED = 11
# One float32 step at 1024..2048 kWh is 2^-13 kWh; allow one step of rounding per reading.
F32_STEP_KWH = 2.0**-13


@dataclass
class Site:
    server: MeterServer
    clock: SimClock
    pv: SimulatedMeter
    grid: SimulatedMeter
    map: RegisterMap

    def device(self, unit_id: int, timeout_s: float = 0.3, retries: int = 1) -> ModbusDevice:
        return ModbusDevice(
            self.map, "127.0.0.1", self.server.port, unit_id, timeout_s=timeout_s, retries=retries
        )


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    sdm630 = load_register_map(find_register_map("eastron/sdm630"))
    clock = SimClock.starting_at(ORIGIN, SPEED)
    pv = SimulatedMeter(sdm630, "pv", clock, seed=SEED, **HOME)  # type: ignore[arg-type]
    grid = SimulatedMeter(sdm630, "grid", clock, seed=SEED, **HOME)  # type: ignore[arg-type]
    server = await start_meter_server({1: pv, 2: grid})
    try:
        yield Site(server, clock, pv, grid, sdm630)
    finally:
        await server.stop()


def integral_kwh(power_w: Callable[[float], float], t0: float, t1: float) -> float:
    """Trapezoid rule with 1 s steps, independent of the simulator's integrator."""
    if t1 <= t0:
        return 0.0
    steps = max(1, int(t1 - t0))
    h = (t1 - t0) / steps
    total = sum(power_w(t0 + i * h) + power_w(t0 + (i + 1) * h) for i in range(steps)) * h / 2
    return total / 3.6e6


async def timed_read(
    device: ModbusDevice, clock: SimClock, names: list[str] | None = None
) -> tuple[float, dict[str, float], float]:
    before = clock.now()
    values = await device.read(names)
    return before, values, clock.now()


@pytest.mark.modbus
async def test_pv_meter_reads_plausible_values(site: Site) -> None:
    device = site.device(1)
    try:
        before, values, after = await timed_read(device, site.clock)
    finally:
        await device.close()
    assert set(values) == set(site.map.measurements())
    for phase in (1, 2, 3):
        assert values[f"voltage_l{phase}"] == pytest.approx(230.0, abs=5.0)
        assert values[f"power_l{phase}"] < 0  # PV output is export
        assert values[f"current_l{phase}"] > 0
    assert values["frequency"] == pytest.approx(50.0, abs=0.1)
    # Phase powers and total power come from two requests a few simulated seconds apart, each
    # with its own 1 % jitter: close, not equal (as on a real meter).
    assert values["total_power"] == pytest.approx(
        sum(values[f"power_l{p}"] for p in (1, 2, 3)), rel=0.05
    )
    assert -5000 < values["total_power"] < -1000
    assert values["import_energy"] == 2.5  # a PV meter never imports in this model
    assert values["export_energy"] >= 1234.5
    # Total and export energy come from different requests too: on a busy machine the clock
    # (x600) runs on between them, so allow the energy that can be exported in the read.
    during_kwh = 5000 * (after - before) / 3.6e6
    assert values["total_energy"] == pytest.approx(
        values["import_energy"] + values["export_energy"], abs=2 * F32_STEP_KWH + during_kwh
    )


@pytest.mark.modbus
async def test_energy_grows_as_the_model_says(site: Site) -> None:
    home = HomeModel(
        capacity_w=5000, latitude_deg=48.14, longitude_deg=11.58, base_load_w=400.0, seed=SEED
    )
    names = ["import_energy", "export_energy"]
    pv_dev, grid_dev = site.device(1), site.device(2)
    try:
        a1, pv1, _ = await timed_read(pv_dev, site.clock, names)
        _, grid1, b1 = await timed_read(grid_dev, site.clock, names)
        await asyncio.sleep(1.0)  # ~600 simulated seconds
        a2, pv2, _ = await timed_read(pv_dev, site.clock, names)
        _, grid2, b2 = await timed_read(grid_dev, site.clock, names)
    finally:
        await pv_dev.close()
        await grid_dev.close()

    # Each meter sampled its totals somewhere inside [a1, b1] and [a2, b2]; the energy flows
    # one way during the whole span, so the delta lies between the inner and outer integrals.
    def pv_w(t: float) -> float:
        return home.pv_w(t)

    def grid_export_w(t: float) -> float:
        return home.pv_w(t) - home.load_w(t)

    assert min(grid_export_w(a1 + i * (b2 - a1) / 50) for i in range(51)) > 0
    tolerance = 2 * F32_STEP_KWH + 1e-4

    pv_delta = pv2["export_energy"] - pv1["export_energy"]
    assert integral_kwh(pv_w, b1, a2) - tolerance <= pv_delta
    assert pv_delta <= integral_kwh(pv_w, a1, b2) + tolerance
    assert pv_delta > 0.2  # ~3-4 kW for ~10 minutes
    assert pv2["import_energy"] == pv1["import_energy"]

    grid_delta = grid2["export_energy"] - grid1["export_energy"]
    assert integral_kwh(grid_export_w, b1, a2) - tolerance <= grid_delta
    assert grid_delta <= integral_kwh(grid_export_w, a1, b2) + tolerance
    assert grid_delta < pv_delta  # the home used part of its PV output itself
    assert grid2["import_energy"] == grid1["import_energy"]


@pytest.mark.modbus
async def test_grid_meter_is_unit_two_and_exports_less_than_pv(site: Site) -> None:
    pv_dev, grid_dev = site.device(1), site.device(2)
    try:
        settings = await grid_dev.read(["modbus_unit_id", "baud_code", "parity_stop_code"])
        pv = await pv_dev.read(["total_power"])
        grid = await grid_dev.read(["total_power"])
    finally:
        await pv_dev.close()
        await grid_dev.close()
    assert settings == {"modbus_unit_id": 2.0, "baud_code": 2.0, "parity_stop_code": 0.0}
    assert pv["total_power"] < grid["total_power"] < 0  # grid = load - pv, load > 0


@pytest.mark.modbus
async def test_timeout_fault_then_recovery(site: Site) -> None:
    device = site.device(1, timeout_s=0.3, retries=1)
    try:
        await device.read(["voltage_l1"])
        site.pv.fail_next(2, "timeout")  # the request and its one retry go unanswered
        with pytest.raises(DeviceUnavailableError) as info:
            await device.read()
        assert str(info.value) == (
            f"no response from 127.0.0.1:{site.server.port} unit 1 within 0.3 s"
        )
        assert info.value.exception_code is None
        values = await device.read()  # reconnects and reads normally
        assert values["voltage_l1"] == pytest.approx(230.0, abs=5.0)

        site.pv.fail_next(1, "timeout")  # a single lost answer is absorbed by the retry
        requests = site.pv.requests
        values = await device.read()
        assert values["voltage_l1"] == pytest.approx(230.0, abs=5.0)
        assert site.pv.requests == requests + 5  # 4 blocks + 1 retry
    finally:
        await device.close()


@pytest.mark.modbus
async def test_exception_fault_then_recovery(site: Site) -> None:
    device = site.device(1)
    try:
        site.pv.fail_next(1, "exception")
        with pytest.raises(DeviceUnavailableError) as info:
            await device.read(["import_energy", "export_energy"])
        assert str(info.value) == (
            "Modbus exception 4 (device failure) at address 0x0048 (FC04, 4 registers) "
            f"from 127.0.0.1:{site.server.port} unit 1"
        )
        assert info.value.exception_code == 4
        values = await device.read(["import_energy", "export_energy"])
        assert values["export_energy"] >= 1234.5
    finally:
        await device.close()


@pytest.mark.modbus
async def test_absent_unit_times_out_without_disturbing_others(site: Site) -> None:
    absent, present = site.device(9, retries=0), site.device(1)
    try:
        with pytest.raises(DeviceUnavailableError, match="no response from .* unit 9"):
            await absent.read(["voltage_l1"])
        assert (await present.read(["voltage_l1"]))["voltage_l1"] > 200
    finally:
        await absent.close()
        await present.close()


@pytest.mark.modbus
async def test_counter_reset_is_visible(site: Site) -> None:
    device = site.device(1)
    try:
        site.pv.reset_counters()
        values = await device.read(["import_energy", "export_energy"])
    finally:
        await device.close()
    assert values["import_energy"] == 0.0
    assert 0.0 <= values["export_energy"] < 0.1


@pytest.mark.modbus
async def test_unreachable_device_is_a_plain_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the connect: nobody listens
    sdm630 = load_register_map(find_register_map("eastron/sdm630"))
    device = ModbusDevice(sdm630, "127.0.0.1", port, 1, timeout_s=0.3)
    with pytest.raises(DeviceUnavailableError, match=f"cannot connect to 127.0.0.1:{port}"):
        await device.read()
    await device.close()


@pytest.mark.modbus
async def test_several_homes_in_one_loop() -> None:
    sdm630 = load_register_map(find_register_map("eastron/sdm630"))
    clock = SimClock.starting_at(ORIGIN, SPEED)
    servers = [
        await start_meter_server({1: SimulatedMeter(sdm630, "pv", clock, 3000 + 1000 * i, seed=i)})
        for i in range(3)
    ]
    try:
        assert len({s.port for s in servers}) == 3
        for server in servers:
            device = ModbusDevice(sdm630, "127.0.0.1", server.port, 1, timeout_s=0.5)
            try:
                assert (await device.read(["total_power"]))["total_power"] < 0
            finally:
                await device.close()
        with pytest.raises(OSError, match="cannot listen"):
            await start_meter_server({1: servers[0].meters[1]}, port=servers[0].port)
    finally:
        for server in servers:
            await server.stop()


# --------------------------------------------------------------------------- pure models


def test_energy_integrator_splits_at_zero_crossing() -> None:
    energy = EnergyIntegrator(import_wh=100.0, export_wh=50.0)
    energy.add_segment(1000.0, -1000.0, 3600.0)  # 1 kW falling linearly to -1 kW over 1 h
    assert energy.import_wh == pytest.approx(100.0 + 250.0)
    assert energy.export_wh == pytest.approx(50.0 + 250.0)
    energy.integrate(lambda t: -600.0, 0.0, 60.0)  # 600 W export for a minute = 10 Wh
    assert energy.export_wh == pytest.approx(310.0)


def test_cloud_cover_is_smooth_and_independent_of_call_history() -> None:
    a, b = CloudCover(5), CloudCover(5)
    times = [ORIGIN + 37.0 * i for i in range(500)]
    forward = [a.at(t) for t in times]
    backward = [b.at(t) for t in reversed(times)][::-1]
    assert forward == backward
    assert all(0.0 <= c <= 1.0 for c in forward)
    assert max(abs(x - y) for x, y in zip(forward, forward[1:], strict=False)) < 0.1
    assert CloudCover(6).at(ORIGIN) != forward[0]


def test_pv_model_night_zero_and_noon_bounded() -> None:
    midnight_munich = datetime(2025, 6, 21, 23, 0, tzinfo=UTC).timestamp()
    assert pv_power_w(midnight_munich, 48.14, 11.58, 5000, 0.0, None) == 0.0
    noon_munich = datetime(2025, 6, 21, 11, 14, tzinfo=UTC).timestamp()
    clear = pv_power_w(noon_munich, 48.14, 11.58, 5000, 0.0, None)
    assert 4000 < clear < 5000  # sun at ~65 degrees: sin^1.15 ~ 0.89
    assert pv_power_w(noon_munich, 48.14, 11.58, 5000, 1.0, None) == pytest.approx(0.25 * clear)
    jittered = pv_power_w(noon_munich, 48.14, 11.58, 5000, 0.0, random.Random(1))
    assert jittered == pytest.approx(clear, rel=0.05)
