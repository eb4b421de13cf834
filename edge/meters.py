"""Meters as the agent sees them: a driver, the channels it feeds, and its live values.

Owns: turning a driver's named quantities into channel readings (whole Wh lifetime totals, or
integrated power for devices without an energy register) and telemetry values. Drivers are
created from settings here; the register-map knowledge stays in firmware-configs/.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from edge.accounting import Channel, PowerIntegrator, Reading
from edge.settings import MeterSettings

WH_PER_UNIT = {"Wh": 1.0, "kWh": 1000.0, "MWh": 1_000_000.0}


class Driver(Protocol):
    """What every device driver offers (generic Modbus, SunSpec, VE.Direct)."""

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        """Read named quantities in their units; raise with a plain message on failure."""
        ...

    async def close(self) -> None:
        """Release the port or connection."""
        ...


@dataclass(frozen=True, slots=True)
class MeterPoll:
    """One poll of one meter."""

    values: dict[str, float]
    readings: dict[Channel, Reading]
    soc_permille: int | None = None


class MeterReader:
    """One configured device: reads it and maps its quantities onto site channels."""

    def __init__(self, settings: MeterSettings, driver: Driver, units: dict[str, str]):
        self.name = settings.name
        self.settings = settings
        self.driver = driver
        self.units = units
        self.source = settings.serial or f"{settings.name}@{settings.register_map}"
        # Integrated totals restart at zero with the process: a new segment, never a reset.
        self._run_id = uuid.uuid4().hex[:8]
        self._integrators = {ch: PowerIntegrator() for ch in settings.integrate}
        for ch, quantity in settings.channels.items():
            self._check(quantity, f"channel {ch.value}", energy=True)
        for ch, quantity in settings.integrate.items():
            self._check(quantity, f"integrated channel {ch.value}", energy=False)
        for flow, quantity in settings.flows.items():
            self._check(quantity.removeprefix("-"), f"flow {flow}", energy=False)
        if settings.soc and settings.soc not in units:
            raise ValueError(f"meter {self.name}: no quantity {settings.soc!r} for the SOC")

    def _check(self, quantity: str, what: str, energy: bool) -> None:
        unit = self.units.get(quantity)
        if unit is None:
            raise ValueError(f"meter {self.name}: no quantity {quantity!r} for {what}")
        if energy and unit not in WH_PER_UNIT:
            raise ValueError(f"meter {self.name}: {quantity} is in {unit}, not an energy unit")
        if not energy and unit != "W":
            raise ValueError(f"meter {self.name}: {quantity} is in {unit}, not W")

    async def poll(self, ts: float, all_values: bool = False) -> MeterPoll:
        """Read the meter now (`ts` is the clock time of the reading)."""
        wanted = None if all_values else self._needed()
        values = await self.driver.read(wanted)
        readings: dict[Channel, Reading] = {}
        for ch, quantity in self.settings.channels.items():
            if quantity not in values:
                continue  # reported missing by the driver (e.g. an all-ones register)
            # float32 kWh registers: scale in float64, keep whole Wh (devices.md).
            total = round(values[quantity] * WH_PER_UNIT[self.units[quantity]])
            readings[ch] = Reading(total, self.source)
        for ch, quantity in self.settings.integrate.items():
            if quantity in values:
                total = self._integrators[ch].add(ts, values[quantity])
                readings[ch] = Reading(total, f"{self.source}:integrated:{self._run_id}", True)
        soc = None
        if self.settings.soc and self.settings.soc in values:
            pct = values[self.settings.soc]
            unit = self.units[self.settings.soc]
            soc = round(pct * 10) if unit == "%" else round(pct)
            soc = max(0, min(1000, soc))
        return MeterPoll(values, readings, soc)

    def _needed(self) -> list[str]:
        names = [*self.settings.channels.values(), *self.settings.integrate.values()]
        if self.settings.soc:
            names.append(self.settings.soc)
        return list(dict.fromkeys(names))

    async def close(self) -> None:
        """Close the driver."""
        await self.driver.close()


class _BusOwned:
    """A driver that has no close() of its own: closing it closes its bus."""

    def __init__(self, device: Any, bus: Any):
        self.device, self.bus = device, bus

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        result: dict[str, float] = await self.device.read(names)
        return result

    async def close(self) -> None:
        await self.bus.close()


def _bus(settings: MeterSettings, baudrate: int, parity: str, stopbits: int):  # type: ignore[no-untyped-def]
    from edge.transports.modbus_bus import bus_for

    if settings.transport == "tcp":
        return bus_for(host=settings.host, port=settings.port, timeout_s=settings.timeout_s)
    return bus_for(
        serial_port=settings.serial_port,
        baudrate=settings.baudrate or baudrate,
        parity=settings.parity or parity,
        stopbits=settings.stopbits or stopbits,
        timeout_s=settings.timeout_s,
    )


def make_reader(settings: MeterSettings) -> MeterReader:
    """Build the driver a meter's settings ask for (inside the running event loop)."""
    if settings.driver == "modbus":
        from edge.drivers.modbus_generic import ModbusDevice
        from edge.drivers.register_map import find_register_map, load_register_map

        rmap = load_register_map(find_register_map(settings.register_map))
        bus = _bus(settings, rmap.baudrate, rmap.parity, rmap.stopbits)
        device = ModbusDevice(rmap, unit_id=settings.unit_id, timeout_s=settings.timeout_s, bus=bus)
        units = {name: q.unit for name, q in rmap.quantities.items()}
        return MeterReader(settings, device, units)
    if settings.driver == "sunspec":
        from edge.drivers.sunspec import (
            INVERTER_QUANTITIES,
            METER_QUANTITIES,
            STORAGE_QUANTITIES,
            SunSpecDevice,
        )

        bus = _bus(settings, 9600, "N", 1)
        sunspec = SunSpecDevice(bus, settings.unit_id, timeout_s=settings.timeout_s * 5)
        known = {**INVERTER_QUANTITIES, **METER_QUANTITIES, **STORAGE_QUANTITIES}
        units = {n: q.unit for n, q in known.items()}
        return MeterReader(settings, _BusOwned(sunspec, bus), units)
    from edge.drivers.vedirect import QUANTITIES, VeDirectDevice

    ve = VeDirectDevice(settings.serial_port, settings.baudrate or 19200)
    return MeterReader(settings, ve, {n: q.unit for n, q in QUANTITIES.items()})
