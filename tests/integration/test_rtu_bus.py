"""Modbus RTU over a real serial stack: pseudo-terminal pairs (socat), SerialBus, several units.

Each new device model is read over RTU with `SerialBus` + `ModbusDevice` and checked against
values this file computes itself from the physical model (HomeModel PV and load, its own
trapezoid integration), bounded by clock readings taken around each Modbus read; the simulator's
integrator is never asked. The shared-bus test puts SDM630 (unit 1), EPEver (unit 2) and Renogy
(unit 3) on ONE line at ONE baud rate (9600): real EPEver controllers run 115200 and could not
share a line with 9600-baud devices, but the point here is the bus discipline, not the baud.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.drivers.modbus_generic import DeviceUnavailableError, ModbusDevice
from edge.drivers.register_map import RegisterMap, find_register_map, load_register_map
from edge.transports.modbus_bus import SerialBus, TcpBus, bus_for
from protocol.clock import SimClock
from simulators.modbus_device import DeviceServer, SimulatedDevice, start_rtu_server
from simulators.models import HomeModel
from simulators.pty import PtyPair

# 21 June 2025, 09:00 UTC near Munich: the sun is well up.
ORIGIN = datetime(2025, 6, 21, 9, 0, tzinfo=UTC).timestamp()
SPEED = 600.0
LAT, LON = 48.14, 11.58
SEED = 5
# Charge controller physics, stated here and passed to the simulator explicitly.
CC = {
    "capacity_w": 800,
    "base_load_w": 40.0,
    "battery_wh": 5000.0,
    "start_soc": 30.0,
    "charge_efficiency": 0.96,
    "generated_kwh": 1234.56,
    "consumed_kwh": 654.32,
}


def load(name: str) -> RegisterMap:
    return load_register_map(find_register_map(name))


def integral_wh(power_w: Callable[[float], float], t0: float, t1: float) -> float:
    """Trapezoid rule with 1 s steps, independent of the simulator's integrator."""
    if t1 <= t0:
        return 0.0
    steps = max(1, int(t1 - t0))
    h = (t1 - t0) / steps
    return sum(power_w(t0 + i * h) + power_w(t0 + (i + 1) * h) for i in range(steps)) * h / 7200


@dataclass
class ChargeExpect:
    """What a charge controller built with CC must report, computed from the home model alone."""

    home: HomeModel
    t0: float  # simulated time the controller was created

    def pv(self, t: float) -> float:
        return self.home.pv_w(t)

    def charge(self, t: float) -> float:
        return CC["charge_efficiency"] * self.home.pv_w(t)

    def generated_wh(self, t: float) -> float:
        return 1000 * CC["generated_kwh"] + integral_wh(self.charge, self.t0, t)

    def consumed_wh(self, t: float) -> float:
        return 1000 * CC["consumed_kwh"] + integral_wh(self.home.load_w, self.t0, t)

    def soc(self, t: float) -> float:
        net = integral_wh(lambda s: self.charge(s) - self.home.load_w(s), self.t0, t)
        return CC["start_soc"] + 100 * net / CC["battery_wh"]

    def span(self, f: Callable[[float], float], a: float, b: float) -> tuple[float, float]:
        samples = [f(a + (b - a) * i / 10) for i in range(11)]
        return min(samples), max(samples)


def charge_controller(rmap: RegisterMap, clock: SimClock) -> tuple[SimulatedDevice, ChargeExpect]:
    home = HomeModel(CC["capacity_w"], LAT, LON, CC["base_load_w"], SEED)  # type: ignore[arg-type]
    t0 = clock.now()
    device = SimulatedDevice(
        rmap,
        "charge_controller",
        clock,
        SEED,
        latitude=LAT,
        longitude=LON,
        **CC,  # type: ignore[arg-type]
    )
    return device, ChargeExpect(home, t0)


async def timed_read(
    device: ModbusDevice, clock: SimClock, names: list[str] | None = None
) -> tuple[float, dict[str, float], float]:
    before = clock.now()
    values = await device.read(names)
    return before, values, clock.now()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[PtyPair]:
    p = PtyPair(tmp_path, "rs485").open()
    yield p
    p.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[DeviceServer]]:
    running: list[DeviceServer] = []
    yield running
    for server in running:
        await server.stop()


# --------------------------------------------------------------------------- one device per model


def check_charge_controller(
    values: dict[str, float], a: float, b: float, exp: ChargeExpect, energy_wh_per_count: float
) -> None:
    """Compare one full read (sampled somewhere in [a, b]) with the independent model."""
    pv_lo, pv_hi = exp.span(exp.pv, a, b)
    assert pv_lo * 0.95 - 1 <= values["pv_power"] <= pv_hi * 1.05 + 1
    assert values["pv_power"] > 100  # June morning, 800 W of panels
    # PV power, charge power and the currents come from one request: one sample.
    assert values["pv_voltage"] * values["pv_current"] == pytest.approx(
        values["pv_power"], rel=0.02
    )
    charge_w = CC["charge_efficiency"] * values["pv_power"]
    if "battery_charge_power" in values:  # EPEver reports it; Renogy does not
        assert values["battery_charge_power"] == pytest.approx(charge_w, abs=1.5)
    assert values["battery_charge_current"] == pytest.approx(
        charge_w / values["battery_voltage"], rel=0.02
    )
    assert 11.5 < values["battery_voltage"] < 14.6  # 12 V battery
    load_lo, load_hi = exp.span(exp.home.load_w, a, b)
    assert load_lo * 0.75 <= values["load_power"] <= load_hi * 1.25 + 1
    assert values["load_voltage"] == pytest.approx(values["battery_voltage"], abs=0.11)
    soc_lo, soc_hi = sorted((exp.soc(a), exp.soc(b)))
    assert soc_lo - 1 <= values["battery_soc"] <= soc_hi + 1  # integer percent
    # Lifetime counters at the read time, in the map's unit; one count of rounding either way.
    slack = energy_wh_per_count + 0.5
    gen = values["generated_energy"] * energy_wh_per_count
    assert exp.generated_wh(a) - slack <= gen <= exp.generated_wh(b) + slack
    used = values["consumed_energy"] * energy_wh_per_count
    assert exp.consumed_wh(a) - slack <= used <= exp.consumed_wh(b) + slack


@pytest.mark.serial
@pytest.mark.modbus
async def test_epever_over_rtu(pair: PtyPair, servers: list[DeviceServer]) -> None:
    rmap = load("epever/tracer-an")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sim, exp = charge_controller(rmap, clock)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 115200))
    bus = SerialBus(pair.device_path, 115200, "N", 1, timeout_s=0.5)
    device = ModbusDevice(rmap, bus=bus, unit_id=1)
    try:
        a1, v1, b1 = await timed_read(device, clock)
        await asyncio.sleep(1.0)  # ~600 simulated seconds
        a2, v2, b2 = await timed_read(device, clock)
    finally:
        await device.close()
    assert set(v1) == set(rmap.measurements())
    for a, values, b in ((a1, v1, b1), (a2, v2, b2)):
        check_charge_controller(values, a, b, exp, energy_wh_per_count=1000.0)  # kWh
        net_lo = min(exp.charge(a), exp.charge(b)) * 0.9 - 1.25 * exp.home.load_w(b)
        assert values["battery_current"] > 0  # charging at midday
        assert values["battery_current"] * values["battery_voltage"] >= net_lo
    # ~10 minutes of ~500 W: the 0.01 kWh counter moved by whole hundredths.
    assert v2["generated_energy"] - v1["generated_energy"] > 0.05
    assert sim.requests == 12  # 6 blocks per read (max_gap = 0), no retries


@pytest.mark.serial
@pytest.mark.modbus
async def test_renogy_over_rtu(pair: PtyPair, servers: list[DeviceServer]) -> None:
    rmap = load("renogy/rover")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sim, exp = charge_controller(rmap, clock)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 9600))
    device = ModbusDevice(rmap, bus=SerialBus(pair.device_path, 9600, timeout_s=0.5), unit_id=1)
    try:
        a1, v1, b1 = await timed_read(device, clock)
        await asyncio.sleep(0.5)
        a2, v2, b2 = await timed_read(device, clock)
    finally:
        await device.close()
    check_charge_controller(v1, a1, b1, exp, energy_wh_per_count=1.0)  # Wh
    check_charge_controller(v2, a2, b2, exp, energy_wh_per_count=1.0)
    assert v1["generated_energy"] > 1_234_560  # Wh, above 65535: both words in use
    assert v2["generated_energy"] > v1["generated_energy"]
    assert sim.requests == 4  # 2 blocks per read


@pytest.mark.serial
@pytest.mark.modbus
async def test_abb_b23_over_rtu_with_missing_export(
    pair: PtyPair, servers: list[DeviceServer]
) -> None:
    rmap = load("abb/b23")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    home = HomeModel(5000, LAT, LON, 400.0, SEED)
    sim = SimulatedDevice(rmap, "grid_meter", clock, SEED, home=home)
    servers.append(await start_rtu_server({2: sim}, pair.sim_path, 9600))
    device = ModbusDevice(rmap, bus=SerialBus(pair.device_path, 9600, timeout_s=0.5), unit_id=2)
    try:
        a, values, b = await timed_read(device, clock)
        model = await device.read(["model_id"])
        sim.set_invalid("export_energy")
        partial = await device.read(["import_energy", "export_energy", "total_power"])
        missing = device.last_missing
        sim.set_invalid("export_energy", False)
        whole = await device.read(["import_energy", "export_energy"])
    finally:
        await device.close()
    assert model == {"model_id": float(0x42323320)}  # "B23 "
    grid = [home.load_w(a) - home.pv_w(a), home.load_w(b) - home.pv_w(b)]
    assert max(grid) < -1000  # June morning: the home exports
    assert min(grid) * 1.1 - 200 <= values["total_power"] <= max(grid) * 0.9 + 200
    for phase in (1, 2, 3):
        assert values[f"voltage_l{phase}"] == pytest.approx(230.0, abs=3.0)
        assert values[f"current_l{phase}"] > 0
    assert values["frequency"] == pytest.approx(50.0, abs=0.1)
    assert values["import_energy"] == 4321.25  # exporting all along: import stays put
    assert values["export_energy"] >= 876.5
    assert set(partial) == {"import_energy", "total_power"}  # all-FF export: missing, not 1.8e17
    assert missing == ("export_energy",)
    assert whole["export_energy"] >= values["export_energy"]
    assert device.last_missing == ()


@pytest.mark.serial
@pytest.mark.modbus
async def test_sdm630_over_rtu(pair: PtyPair, servers: list[DeviceServer]) -> None:
    rmap = load("eastron/sdm630")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    home = HomeModel(5000, LAT, LON, 400.0, SEED)
    t0 = clock.now()
    sim = SimulatedDevice(rmap, "pv_meter", clock, SEED, home=home)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 9600))
    device = ModbusDevice(rmap, bus=SerialBus(pair.device_path, 9600, timeout_s=0.5))
    try:
        a, values, b = await timed_read(device, clock)
        settings = await device.read(["modbus_unit_id", "baud_code"])
    finally:
        await device.close()
    pv = sorted((home.pv_w(a), home.pv_w(b)))
    assert -pv[1] * 1.05 - 5 <= values["total_power"] <= -pv[0] * 0.95 + 5
    assert values["voltage_l1"] == pytest.approx(230.0, abs=3.0)
    step = 2.0**-13  # float32 step at 1024..2048 kWh
    exported = values["export_energy"]
    assert 1234.5 + integral_wh(home.pv_w, t0, a) / 1000 - step - 1e-4 <= exported
    assert exported <= 1234.5 + integral_wh(home.pv_w, t0, b) / 1000 + step + 1e-4
    assert values["import_energy"] == 2.5
    assert settings == {"modbus_unit_id": 1.0, "baud_code": 2.0}


@pytest.mark.serial
@pytest.mark.modbus
async def test_sdm120_over_rtu_at_its_factory_2400_baud(
    pair: PtyPair, servers: list[DeviceServer]
) -> None:
    rmap = load("eastron/sdm120")
    assert rmap.baudrate == 2400
    clock = SimClock.starting_at(ORIGIN, SPEED)
    home = HomeModel(3000, LAT, LON, 400.0, SEED)
    t0 = clock.now()
    sim = SimulatedDevice(rmap, "grid_meter", clock, SEED, home=home)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 2400))
    device = ModbusDevice(rmap, bus=SerialBus(pair.device_path, 2400, timeout_s=1.0))
    try:
        a, values, b = await timed_read(device, clock)
    finally:
        await device.close()
    net = sorted(
        (home.load_w(a) - home.pv_w(a), home.load_w(b) - home.pv_w(b))
    )  # single phase: positive = import
    # Load carries up to ~5 % jitter on the wire value; bounds widen by 10 % of the magnitude.
    assert net[0] - 0.1 * abs(net[0]) - 50 <= values["power_l1"]
    assert values["power_l1"] <= net[1] + 0.1 * abs(net[1]) + 50
    assert values["total_power"] == values["power_l1"]  # one register on the SDM120
    assert values["voltage_l1"] == pytest.approx(230.0, abs=3.0)
    assert values["frequency"] == pytest.approx(50.0, abs=0.2)
    assert values["import_energy"] >= 0
    assert values["export_energy"] >= 0
    # The registers come in separate requests at 2400 baud while the x600 clock runs on: allow
    # the energy that flowed while the read ran (at most the larger net power, plus margin).
    flowed_kwh = max(abs(n) for n in net) * 1.2 * (b - a) / 3.6e6
    assert values["total_energy"] == pytest.approx(
        values["import_energy"] + values["export_energy"], abs=0.01 + flowed_kwh
    )
    _ = t0


# --------------------------------------------------------------------------- one shared line


@pytest.mark.serial
@pytest.mark.modbus
@pytest.mark.slow  # ~7 s: it waits out a real 4 s backoff
async def test_three_units_on_one_line_with_a_dead_unit(
    pair: PtyPair, servers: list[DeviceServer]
) -> None:
    clock = SimClock.starting_at(ORIGIN, 120.0)
    sdm_map, epever_map, renogy_map = (
        load("eastron/sdm630"),
        load("epever/tracer-an"),
        load("renogy/rover"),
    )
    home = HomeModel(5000, LAT, LON, 400.0, SEED)
    t0 = clock.now()
    sdm = SimulatedDevice(sdm_map, "pv_meter", clock, SEED, home=home)
    epever = SimulatedDevice(epever_map, "charge_controller", clock, SEED + 1)
    renogy, renogy_exp = charge_controller(renogy_map, clock)
    # One line, one baud rate for everyone (see the module docstring).
    servers.append(await start_rtu_server({1: sdm, 2: epever, 3: renogy}, pair.sim_path, 9600))
    bus = bus_for(serial_port=pair.device_path, baudrate=9600, timeout_s=0.3, retries=1)
    assert isinstance(bus, SerialBus)
    assert bus.inter_frame_pause_s == 0.025 and bus.unit_switch_pause_s == 0.2
    meter = ModbusDevice(sdm_map, bus=bus, unit_id=1)
    dead = ModbusDevice(epever_map, bus=bus_for(serial_port=pair.device_path), unit_id=2)
    rover = ModbusDevice(renogy_map, bus=bus, unit_id=3, backoff_base_s=1.0)
    assert dead.bus is bus
    epever.fail_next(100_000, "timeout")  # off the bus for good

    errors: list[str] = []
    backing_off_read_s: list[float] = []
    last_export = last_generated = 0.0
    deadline = time.monotonic() + 4.0
    cycles = 0
    try:
        while time.monotonic() < deadline:
            cycles += 1
            a, m, b = await timed_read(meter, clock, ["total_power", "export_energy"])
            exported = m["export_energy"]
            assert 1234.5 + integral_wh(home.pv_w, t0, a) / 1000 - 2e-3 <= exported
            assert exported <= 1234.5 + integral_wh(home.pv_w, t0, b) / 1000 + 2e-3
            assert exported >= last_export
            last_export = exported
            assert m["total_power"] < -1000

            started = time.monotonic()
            with pytest.raises(DeviceUnavailableError) as info:
                await dead.read()
            errors.append(info.value.reason)
            if "backing off" in info.value.reason:
                backing_off_read_s.append(time.monotonic() - started)

            a, r, b = await timed_read(rover, clock)
            check_charge_controller(r, a, b, renogy_exp, energy_wh_per_count=1.0)
            assert r["generated_energy"] >= last_generated
            last_generated = r["generated_energy"]
        tried = [e for e in errors if "backing off" not in e]
        assert tried[:2] == [f"no response from {pair.device_path} unit 2 within 0.3 s"] * 2
        assert all(e.startswith("no response") for e in tried)
        # After two failures it backs off 4 s: the rest of the run costs the line nothing.
        assert len(tried) == 2 and cycles >= 4
        backoff = re.compile(
            rf"{re.escape(str(pair.device_path))} unit 2 failed 2 times in a row "
            r"\(last: no response .*\); backing off for [1-4] s"
        )
        assert all(backoff.fullmatch(e) for e in errors[2:]), errors
        assert epever.requests == 2 * len(tried)  # request + one retry per real attempt
        assert max(backing_off_read_s) < 0.01  # answered at once, no bus time
        assert meter.consecutive_failures == rover.consecutive_failures == 0

        # The unit comes back: after the backoff it reads again, without new objects.
        epever.clear_faults()
        await asyncio.sleep(dead.backoff_remaining_s + 0.05)
        values = await dead.read(["battery_soc", "generated_energy"])
        assert values["generated_energy"] >= 1234.56
        assert dead.consecutive_failures == 0

        # An absent unit id on the line is silent (no exception answer) and harms nobody.
        ghost = ModbusDevice(renogy_map, bus=bus, unit_id=9)
        with pytest.raises(DeviceUnavailableError, match="no response from .* unit 9"):
            await ghost.read(["battery_soc"])
        assert (await rover.read(["battery_soc"]))["battery_soc"] > 0
    finally:
        await bus.close()


# --------------------------------------------------------------------------- faults on the wire


@pytest.mark.serial
@pytest.mark.modbus
async def test_garbled_frames_exceptions_and_resets(
    pair: PtyPair, servers: list[DeviceServer]
) -> None:
    rmap = load("renogy/rover")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sim, _ = charge_controller(rmap, clock)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 9600))
    bus = SerialBus(pair.device_path, 9600, timeout_s=0.3, retries=1)
    device = ModbusDevice(rmap, bus=bus)
    names = ["generated_energy", "consumed_energy"]
    try:
        for kind in ("crc", "garbage"):
            sim.fail_next(2, kind)  # the request and its retry come back damaged
            with pytest.raises(DeviceUnavailableError) as info:
                await device.read(names)
            assert info.value.reason.startswith(
                f"garbled answer from {pair.device_path} unit 1: no valid frame within 0.3 s"
            )
            assert info.value.exception_code is None
            assert device.consecutive_failures == 1  # within the grace: next read tries
            assert (await device.read(names))["generated_energy"] > 1_234_560
            sim.fail_next(1, kind)  # one damaged frame is absorbed by the retry
            assert (await device.read(names))["generated_energy"] > 1_234_560

        sim.fail_next(1, "exception")
        with pytest.raises(DeviceUnavailableError, match=r"Modbus exception 4 \(device failure\)"):
            await device.read(names)
        assert device.consecutive_failures == 0  # it answered: not a reason to back off

        sim.reset_counters({"generated_energy": 0.0, "consumed_energy": 10.0})
        reset = await device.read(names)
        assert 0 <= reset["generated_energy"] < 100  # Wh since the reset
        assert 10 <= reset["consumed_energy"] < 20
    finally:
        await device.close()


@pytest.mark.serial
@pytest.mark.modbus
async def test_reboot_is_silence_then_counters_continue(
    pair: PtyPair, servers: list[DeviceServer]
) -> None:
    rmap = load("renogy/rover")
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sim, exp = charge_controller(rmap, clock)
    servers.append(await start_rtu_server({1: sim}, pair.sim_path, 9600))
    device = ModbusDevice(
        rmap, bus=SerialBus(pair.device_path, 9600, timeout_s=0.2, retries=0), backoff_grace=5
    )
    names = ["generated_energy"]
    try:
        a0, before, _ = await timed_read(device, clock, names)
        reboot_start = clock.now()
        sim.reboot(0.8)  # 0.8 real seconds = 480 simulated seconds of silence
        reboot_end = clock.now() + 0.8 * SPEED
        with pytest.raises(DeviceUnavailableError, match="no response"):
            await device.read(names)
        await asyncio.sleep(0.85)
        assert not sim.rebooting
        a2, after, b2 = await timed_read(device, clock, names)
    finally:
        await device.close()
    gained = after["generated_energy"] - before["generated_energy"]
    assert gained >= 0  # continues, not reset
    # No energy is booked for the reboot: the gain is what the controller produced before it
    # (from the first read on) and after it booted, far less than over the whole span.
    before_wh = integral_wh(exp.charge, a0, reboot_start)
    after_wh = integral_wh(exp.charge, reboot_end, b2)
    assert gained <= before_wh + after_wh + 4  # 1 Wh rounding per reading, timing slack
    assert gained >= integral_wh(exp.charge, b2 - (b2 - reboot_end) * 0.5, b2) - 2
    assert gained < integral_wh(exp.charge, a0, a2) - 40


# --------------------------------------------------------------------------- adapter loss


@pytest.mark.serial
@pytest.mark.modbus
async def test_adapter_unplugged_then_back(pair: PtyPair, servers: list[DeviceServer]) -> None:
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sdm_map, renogy_map = load("eastron/sdm630"), load("renogy/rover")
    sdm = SimulatedDevice(sdm_map, "pv_meter", clock, SEED)
    renogy, _ = charge_controller(renogy_map, clock)
    devices = {1: sdm, 2: renogy}
    servers.append(await start_rtu_server(devices, pair.sim_path, 9600))
    bus = SerialBus(pair.device_path, 9600, timeout_s=0.3)
    meter = ModbusDevice(sdm_map, bus=bus, unit_id=1)
    rover = ModbusDevice(renogy_map, bus=bus, unit_id=2)
    gone = f"serial port {pair.device_path} is gone"
    try:
        first_export = (await meter.read(["export_energy"]))["export_energy"]
        first_gen = (await rover.read(["generated_energy"]))["generated_energy"]

        pair.unplug()  # the USB adapter is pulled: both pty ends vanish
        await servers.pop().stop()
        assert not pair.device_path.exists()
        for device in (meter, rover):
            with pytest.raises(DeviceUnavailableError) as info:
                await device.read()
            assert info.value.reason == gone
        with pytest.raises(DeviceUnavailableError) as info:  # the bus says it too, each time
            await bus.read_registers("input", 0x0048, 2, 1)
        assert info.value.reason == gone
        assert not bus.connected

        # Plugged back in: same path, a new pty. The same objects read again.
        replugged = PtyPair(pair.device_path.parent, "rs485").open()
        try:
            assert replugged.device_path == pair.device_path
            servers.append(await start_rtu_server(devices, replugged.sim_path, 9600))
            export = (await meter.read(["export_energy"]))["export_energy"]
            generated = (await rover.read(["generated_energy"]))["generated_energy"]
        finally:
            await bus.close()
            for server in servers:
                await server.stop()
            servers.clear()
            replugged.close()
    finally:
        await bus.close()
    assert export >= first_export
    assert generated > first_gen


# --------------------------------------------------------------------------- bus objects, backoff


async def test_bus_for_shares_one_bus_per_port_and_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "ttyUSB0"
    a = bus_for(serial_port=path, baudrate=115200)
    assert bus_for(serial_port=str(path), baudrate=115200) is a
    assert isinstance(a, SerialBus) and a.framing == "115200 8N1"
    assert a.inter_frame_pause_s == 0.025  # 3.5 chars at 115200 is 0.33 ms: the floor wins
    with pytest.raises(ValueError, match=r"already used at 115200 8N1; .* cannot use 9600 8N1"):
        bus_for(serial_port=path, baudrate=9600)
    slow = SerialBus(tmp_path / "x", baudrate=1200)
    assert slow.inter_frame_pause_s == pytest.approx(3.5 * 10 / 1200)  # 29 ms
    tcp = bus_for(host="127.0.0.1", port=1502)
    assert isinstance(tcp, TcpBus) and bus_for(host="127.0.0.1", port=1502) is tcp
    sdm = load("eastron/sdm630")
    one, two = ModbusDevice(sdm, "127.0.0.1", 1502, 1), ModbusDevice(sdm, "127.0.0.1", 1502, 2)
    assert one.bus is two.bus is tcp  # two meters behind one gateway: one TCP connection
    with pytest.raises(ValueError, match="exactly one"):
        bus_for()
    with pytest.raises(DeviceUnavailableError) as info:
        await a.read_registers("input", 0, 2, 1)
    assert info.value.reason == f"serial port {path} is gone"


class FakeBus:
    """Records requests; fails while `failing` is set."""

    name = "/dev/ttyFAKE"
    connected = True

    def __init__(self) -> None:
        self.calls = 0
        self.failing: DeviceUnavailableError | None = None

    async def read_registers(self, table: str, address: int, count: int, unit_id: int) -> list[int]:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        return [0] * count

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_backoff_is_min_two_seconds_times_failures_capped_at_300() -> None:
    now = [1000.0]
    bus = FakeBus()
    device = ModbusDevice(load("renogy/rover"), bus=bus, monotonic=lambda: now[0])
    names = ["battery_soc"]
    assert await device.read(names) == {"battery_soc": 0.0}
    bus.failing = DeviceUnavailableError("no response from /dev/ttyFAKE unit 1 within 1 s")
    waits = []
    for failures in range(1, 200):
        with pytest.raises(DeviceUnavailableError, match="no response"):
            await device.read(names)
        assert device.consecutive_failures == failures
        waits.append(device.backoff_remaining_s)
        if waits[-1]:
            calls = bus.calls
            with pytest.raises(DeviceUnavailableError) as info:
                await device.read(names)
            assert bus.calls == calls  # refused without touching the bus
            assert info.value.reason == (
                f"/dev/ttyFAKE unit 1 failed {failures} times in a row (last: no response from "
                f"/dev/ttyFAKE unit 1 within 1 s); backing off for {waits[-1]:.0f} s"
            )
        now[0] += waits[-1]
    assert waits[:4] == [0.0, 4.0, 6.0, 8.0]  # one failure is free, then min(2 s x n, 300 s)
    assert waits[149] == 300.0 and waits[-1] == 300.0
    # A Modbus exception is an answer: it ends the streak.
    bus.failing = DeviceUnavailableError("Modbus exception 2", exception_code=2)
    with pytest.raises(DeviceUnavailableError):
        await device.read(names)
    assert device.consecutive_failures == 0 and device.backoff_remaining_s == 0
    bus.failing = None
    assert await device.read(names) == {"battery_soc": 0.0}


async def test_legacy_tcp_constructor_does_not_back_off() -> None:
    device = ModbusDevice(load("eastron/sdm630"), "127.0.0.1", 1503, 1, timeout_s=0.2)
    assert device.backoff_for(50) == 0.0
    assert ModbusDevice(load("eastron/sdm630"), bus=FakeBus()).backoff_for(2) == 4.0
