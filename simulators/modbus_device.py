"""Generic simulated Modbus device: serves ANY register map, over Modbus TCP or RTU on a pty.

Owns: `SimulatedDevice` (register values computed on every access from a physical model on a
clock, plus fault injection), `ChargeControllerModel` (PV -> battery with state of charge, a DC
load, lifetime generation and consumption counters), `start_tcp_server` and `start_rtu_server`
(several unit ids on one listener or one RS-485 line; RTU runs on the sim end of a
`simulators.pty.PtyPair`, the edge opens `pair.device_path`).

Profiles pick the physics; the register map only decides where the numbers go:
- "pv_meter" / "grid_meter": the meter behaviour of `simulators.modbus_meter.SimulatedMeter`
  (PV inverter output meter / grid connection meter of one `HomeModel`), served through any
  meter map (Eastron SDM630/SDM120, ABB B23).
- "charge_controller": an off-grid MPPT controller (EPEver Tracer, Renogy Rover). PV from
  `HomeModel.pv_w`, conversion efficiency `charge_efficiency`, a DC load shaped like the
  household profile, a battery of `battery_wh` whose state of charge integrates
  charge - load. When the battery is full the charger only covers the load (curtailment); when
  it is empty the load output is switched off.

Values are looked up by quantity name (`voltage_l1`, `pv_power`, `generated_energy`, ...); names
the profile does not know read as 0, like an unused register. Energy totals are converted to
each quantity's `unit` (Wh, kWh, MWh), so one profile serves a kWh map and a Wh map alike.

Fault injection (`fail_next`): "timeout" swallows the answer, "exception" answers Modbus
exception 4, "garbage" replaces the answer bytes on the wire with random bytes and "crc" sends a
correct RTU frame with a broken CRC (Modbus TCP frames carry no CRC: there "crc" acts like
"garbage", so every injected fault ends in an error rather than in silently wrong numbers).
`reboot(seconds)` makes the device silent for that many real seconds; its counters then
continue from where they were (no energy is booked for the time it was off).
`set_invalid(name)` serves a quantity's declared invalid pattern (e.g. all-FF on ABB export
energy).
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from pymodbus.constants import ExcCodes
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import SimDevice

from edge.drivers.register_map import ENERGY_UNITS_WH, RegisterMap
from protocol.clock import Clock
from simulators._modbus_server import (
    ActionHook,
    TracePacket,
    Writes,
    map_sim_device,
    serve_rtu,
    serve_tcp,
    shutdown,
    unit_sims,
    unit_tracer,
    write_quantities,
)
from simulators.modbus_meter import SimulatedMeter
from simulators.models import HomeModel

Profile = Literal["pv_meter", "grid_meter", "charge_controller"]
FaultKind = Literal["timeout", "exception", "garbage", "crc"]
Framing = Literal["rtu", "tcp"]

PROFILES: Final = ("pv_meter", "grid_meter", "charge_controller")
FAULT_KINDS: Final = ("timeout", "exception", "garbage", "crc")
#: Identification registers some maps declare (role "info"), keyed by (vendor, model).
MODEL_IDS: Final[dict[tuple[str, str], dict[str, float]]] = {
    ("ABB", "B23"): {"model_id": float(0x42323320)},  # "B23 "
}
#: Meter energy quantities and whether they hold import, export or both (total).
_METER_ENERGY: Final = ("import_energy", "export_energy", "total_energy")
_CC_ENERGY: Final = ("generated_energy", "consumed_energy")


class ChargeControllerModel:
    """PV -> MPPT charger -> battery and DC load, integrated on a clock.

    Smooth (jitter-free) power is integrated between accesses in steps of at most `max_step_s`,
    so totals do not depend on the polling rate. Energy: `generated_wh` = charger output
    (PV x efficiency, or just the load when the battery is full), `consumed_wh` = load output.
    """

    def __init__(
        self,
        home: HomeModel,
        start_ts: float,
        *,
        battery_wh: float = 2400.0,
        start_soc: float = 50.0,
        nominal_battery_v: float = 12.0,
        pv_vmp: float = 36.0,
        charge_efficiency: float = 0.96,
        generated_wh: float = 1_234_560.0,
        consumed_wh: float = 654_320.0,
        max_step_s: float = 30.0,
    ) -> None:
        if battery_wh <= 0 or not 0 <= start_soc <= 100 or not 0 < charge_efficiency <= 1:
            raise ValueError("battery_wh > 0, start_soc 0..100 and efficiency 0..1 are needed")
        self.home = home
        self.battery_wh = battery_wh
        self.soc_wh = battery_wh * start_soc / 100.0
        self.nominal_battery_v = nominal_battery_v
        self.pv_vmp = pv_vmp
        self.charge_efficiency = charge_efficiency
        self.generated_wh = generated_wh
        self.consumed_wh = consumed_wh
        self.max_step_s = max_step_s
        self._last_ts = start_ts

    # ------------------------------------------------------------------ physics

    def flows_w(self, ts: float, rng: random.Random | None = None) -> tuple[float, float, float]:
        """(pv input, charger output, load) in W at `ts` for the current state of charge."""
        pv_available = self.home.pv_w(ts, rng)
        load = self.home.load_w(ts, rng) if self.soc_wh > 0.0 else 0.0
        charge = pv_available * self.charge_efficiency
        if self.soc_wh >= self.battery_wh:
            charge = min(charge, load)  # full: the charger only covers the load
        return charge / self.charge_efficiency, charge, load

    def advance(self, ts: float) -> None:
        """Integrate up to `ts` (trapezoid rule); a clock that steps back is ignored."""
        if ts <= self._last_ts:
            return
        t0 = self._last_ts
        steps = max(1, int((ts - t0) // self.max_step_s) + 1)
        h = (ts - t0) / steps
        _, c0, l0 = self.flows_w(t0)
        for i in range(1, steps + 1):
            t = ts if i == steps else t0 + i * h
            _, c1, l1 = self.flows_w(t)
            charge_wh = (c0 + c1) / 2.0 * h / 3600.0
            load_wh = (l0 + l1) / 2.0 * h / 3600.0
            self.generated_wh += charge_wh
            self.consumed_wh += load_wh
            self.soc_wh = min(self.battery_wh, max(0.0, self.soc_wh + charge_wh - load_wh))
            c0, l0 = c1, l1
        self._last_ts = ts

    def skip_to(self, ts: float) -> None:
        """Move to `ts` without integrating (the controller was off)."""
        self._last_ts = max(self._last_ts, ts)

    def battery_voltage(self, charging: bool) -> float:
        """Resting voltage rises with state of charge; charging lifts it a little."""
        scale = self.nominal_battery_v / 12.0
        rest = self.nominal_battery_v * (0.98 + 0.12 * self.soc_wh / self.battery_wh)
        return rest + (0.4 * scale if charging else 0.0)

    def values_at(self, ts: float, rng: random.Random | None = None) -> dict[str, float]:
        """Everything a charge controller reports at `ts` (energy in Wh, SOC in %)."""
        self.advance(ts)
        pv, charge, load = self.flows_w(ts, rng)
        battery_v = self.battery_voltage(charge > 1.0)
        capacity = max(1.0, float(self.home.capacity_w))
        pv_v = self.pv_vmp * (0.9 + 0.1 * min(1.0, pv / capacity)) if pv > 1.0 else 0.0
        return {
            "pv_voltage": pv_v,
            "pv_current": pv / pv_v if pv_v > 0 else 0.0,
            "pv_power": pv,
            "battery_voltage": battery_v,
            "battery_charge_current": charge / battery_v,
            "battery_charge_power": charge,
            "battery_current": (charge - load) / battery_v,
            "battery_soc": 100.0 * self.soc_wh / self.battery_wh,
            "load_voltage": battery_v if load > 0 else 0.0,
            "load_current": load / battery_v,
            "load_power": load,
            "generated_energy": self.generated_wh,
            "consumed_energy": self.consumed_wh,
        }


class SimulatedDevice(ActionHook):
    """One simulated Modbus unit serving `register_map` with the physics of `profile`.

    `seed` fixes clouds and jitter; pass `home=` to share one `HomeModel` between devices of a
    site (meters) so their numbers agree. Defaults: meters 5 kW PV / 400 W base load (as
    `SimulatedMeter`); charge controllers 800 W PV / 40 W base DC load. `fixed_values`
    overrides quantities by name (in the map's units), e.g. a model code.
    """

    def __init__(
        self,
        register_map: RegisterMap,
        profile: Profile,
        clock: Clock,
        seed: int = 0,
        *,
        home: HomeModel | None = None,
        capacity_w: int | None = None,
        base_load_w: float | None = None,
        latitude: float = 48.14,
        longitude: float = 11.58,
        fixed_values: Mapping[str, float] | None = None,
        strict_holes: bool = False,
        start_import_kwh: float | None = None,
        start_export_kwh: float | None = None,
        battery_wh: float = 2400.0,
        start_soc: float = 50.0,
        nominal_battery_v: float = 12.0,
        charge_efficiency: float = 0.96,
        generated_kwh: float = 1234.56,
        consumed_kwh: float = 654.32,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        self.register_map = register_map
        self.profile: Profile = profile
        self.clock = clock
        self.seed = seed
        self.strict_holes = strict_holes
        is_meter = profile != "charge_controller"
        if home is None:
            home = HomeModel(
                capacity_w if capacity_w is not None else (5000 if is_meter else 800),
                latitude,
                longitude,
                base_load_w if base_load_w is not None else (400.0 if is_meter else 40.0),
                seed,
            )
        self.home = home
        self.unit_id = register_map.default_unit
        self._meter: SimulatedMeter | None = None
        self._cc: ChargeControllerModel | None = None
        if is_meter:
            self._meter = SimulatedMeter(
                register_map,
                "pv" if profile == "pv_meter" else "grid",
                clock,
                seed=seed,
                home=home,
                start_import_kwh=start_import_kwh,
                start_export_kwh=start_export_kwh,
            )
        else:
            self._cc = ChargeControllerModel(
                home,
                clock.now(),
                battery_wh=battery_wh,
                start_soc=start_soc,
                nominal_battery_v=nominal_battery_v,
                charge_efficiency=charge_efficiency,
                generated_wh=1000.0 * generated_kwh,
                consumed_wh=1000.0 * consumed_kwh,
            )
        self._rng = random.Random(f"{seed}:{profile}:device-jitter")
        self._wire_rng = random.Random(f"{seed}:{profile}:garbage")
        self._fixed = dict(MODEL_IDS.get((register_map.vendor, register_map.model), {}))
        self._fixed.update(fixed_values or {})
        self._invalid: set[str] = set()
        self._faults: deque[FaultKind] = deque()
        self._wire_faults: deque[Literal["drop", "garbage", "crc"]] = deque()
        self._down_until = 0.0
        self._skip_after_reboot = False
        #: Requests that reached this unit (including ones it did not answer).
        self.requests = 0

    # ------------------------------------------------------------------ model

    @property
    def meter(self) -> SimulatedMeter | None:
        """The meter physics (profiles pv_meter and grid_meter), else None."""
        return self._meter

    @property
    def charge_controller(self) -> ChargeControllerModel | None:
        """The charge-controller physics (profile charge_controller), else None."""
        return self._cc

    def energy_wh(self) -> dict[str, float]:
        """Lifetime totals in Wh (float64) at the clock's current time, by quantity name."""
        now = self.clock.now()
        self._account_for_reboot(now)
        if self._meter is not None:
            imported, exported = self._meter.energy_kwh()
            return {
                "import_energy": 1000.0 * imported,
                "export_energy": 1000.0 * exported,
                "total_energy": 1000.0 * (imported + exported),
            }
        assert self._cc is not None
        self._cc.advance(now)
        return {"generated_energy": self._cc.generated_wh, "consumed_energy": self._cc.consumed_wh}

    def values_at(self, ts: float) -> dict[str, float | None]:
        """Every quantity of the map as the device would report it at `ts` (None = invalid)."""
        self._account_for_reboot(ts)
        if self._meter is not None:
            raw = self._meter.values_at(ts)
            for name in _METER_ENERGY:
                if name in raw:
                    raw[name] *= 1000.0  # kWh -> Wh
            energy_names: tuple[str, ...] = _METER_ENERGY
        else:
            assert self._cc is not None
            raw = self._cc.values_at(ts, self._rng)
            energy_names = _CC_ENERGY
        raw["modbus_unit_id"] = float(self.unit_id)
        values: dict[str, float | None] = {}
        for name, q in self.register_map.quantities.items():
            value = raw.get(name, 0.0)
            if name in energy_names and q.unit in ENERGY_UNITS_WH:
                value = value / ENERGY_UNITS_WH[q.unit]
            values[name] = value
        values.update(self._fixed)
        for name in self._invalid:
            values[name] = None
        return values

    def _account_for_reboot(self, ts: float) -> None:
        """Book no energy while rebooting: skip the model from the reboot to the boot time."""
        if not self._skip_after_reboot:
            return
        if self.rebooting:
            self._skip_to(ts)
            return
        self._skip_after_reboot = False
        # The device booted `late` real seconds ago; on a SimClock that is `late * speed`
        # simulated seconds, from which it has been counting again.
        late = time.monotonic() - self._down_until
        speed = float(getattr(self.clock, "speed", 0.0) or 0.0)
        self._skip_to(ts - late * speed if speed > 0 else ts)

    def _skip_to(self, ts: float) -> None:
        if self._meter is not None:
            self._meter.skip_to(ts)
        if self._cc is not None:
            self._cc.skip_to(ts)

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, kind: FaultKind = "timeout") -> None:
        """Make the next `n` requests to this unit fail in the way `kind` says.

        Each request counts, including client retries of a failed request.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        self._faults.extend([kind] * n)

    def clear_faults(self) -> None:
        """Forget faults that have not happened yet (a reboot in progress continues)."""
        self._faults.clear()

    def reboot(self, seconds: float) -> None:
        """Stop answering for `seconds` real seconds; counters then continue where they were."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._advance_now()
        self._down_until = time.monotonic() + seconds
        self._skip_after_reboot = True

    @property
    def rebooting(self) -> bool:
        """Whether the device is silent because of `reboot`."""
        return time.monotonic() < self._down_until

    def reset_counters(self, totals: Mapping[str, float] | None = None) -> None:
        """Set lifetime totals (by quantity name, in the map's unit; default all 0).

        What a meter swap, a firmware reset or a user clearing the counters does in the field.
        """
        wanted = dict(totals or {})
        units = {n: q.unit for n, q in self.register_map.quantities.items()}
        self._advance_now()

        def wh(name: str) -> float:
            return wanted.get(name, 0.0) * ENERGY_UNITS_WH.get(units.get(name, "Wh"), 1.0)

        if self._meter is not None:
            self._meter.reset_counters(wh("import_energy") / 1000.0, wh("export_energy") / 1000.0)
        if self._cc is not None:
            self._cc.generated_wh = wh("generated_energy")
            self._cc.consumed_wh = wh("consumed_energy")

    def set_invalid(self, name: str, invalid: bool = True) -> None:
        """Serve `name` as its declared invalid pattern ("not available") or stop doing so."""
        q = self.register_map.quantities.get(name)
        if q is None or not q.invalid:
            raise ValueError(f"{name!r} has no invalid pattern in {self.register_map.model}")
        if invalid:
            self._invalid.add(name)
        else:
            self._invalid.discard(name)

    def _advance_now(self) -> None:
        now = self.clock.now()
        if self._meter is not None:
            self._meter.energy_kwh()
        if self._cc is not None:
            self._cc.advance(now)

    # ------------------------------------------------------------------ wire

    def outgoing(self, data: bytes, framing: Framing) -> bytes:
        """Called for every answer of this unit before it goes on the wire (b"" = silence)."""
        if self.rebooting:
            return b""
        if not self._wire_faults:
            return data
        fault = self._wire_faults.popleft()
        if fault == "drop":
            return b""
        if fault == "garbage":
            return bytes(self._wire_rng.randrange(256) for _ in data)
        if framing == "rtu":  # "crc": the frame is right, its 2-byte CRC is not
            return data[:-2] + bytes(b ^ 0xFF for b in data[-2:])
        return bytes(self._wire_rng.randrange(256) for _ in data)  # TCP has no CRC: garbage

    def sim_device(self, unit_id: int) -> SimDevice:
        """A pymodbus SimDevice serving this map as unit `unit_id` (input/holding apart)."""
        self.unit_id = unit_id
        return map_sim_device(self.register_map, unit_id, self._action, self.strict_holes)

    def _answer(
        self, function_code: int, start_address: int, registers: list[int], writes: Writes
    ) -> ExcCodes | None:
        if self.rebooting:
            return None  # the answer is dropped in `outgoing`
        if self._faults:
            kind = self._faults.popleft()
            if kind == "exception":
                return ExcCodes.DEVICE_FAILURE
            if kind == "timeout":
                self._wire_faults.append("drop")
                return None
            self._wire_faults.append(kind)
        if writes is not None:
            return ExcCodes.ILLEGAL_ADDRESS  # read-only device
        values = self.values_at(self.clock.now())
        write_quantities(self.register_map, function_code, start_address, registers, values)
        return None


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class DeviceServer:
    """A running simulator: a TCP listener (`host`, `port`) or an RTU line (`serial_path`)."""

    devices: dict[int, SimulatedDevice]
    host: str | None = None
    port: int | None = None
    serial_path: str | None = None
    _server: ModbusBaseServer | None = field(default=None, repr=False)

    async def stop(self) -> None:
        """Stop answering and release the socket or serial port."""
        if self._server is not None:
            await shutdown(self._server)
            self._server = None


def _tracer(devices: Mapping[int, SimulatedDevice], framing: Framing) -> TracePacket:
    # RTU: the unit id is the first byte; TCP: it follows the 6-byte MBAP head.
    return unit_tracer(
        devices, 0 if framing == "rtu" else 6, lambda device, data: device.outgoing(data, framing)
    )


async def start_tcp_server(
    devices: dict[int, SimulatedDevice], host: str = "127.0.0.1", port: int = 0
) -> DeviceServer:
    """Serve `devices` (unit id -> device) on one Modbus TCP port; port 0 picks a free one."""
    sims = unit_sims(devices)
    server, bound = await serve_tcp(sims, host, port, "Modbus server", _tracer(devices, "tcp"))
    return DeviceServer(dict(devices), host=host, port=bound, _server=server)


async def start_rtu_server(
    devices: dict[int, SimulatedDevice],
    serial_path: str | os.PathLike[str],
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
) -> DeviceServer:
    """Serve `devices` as units on one RS-485 line at `serial_path` (e.g. `PtyPair.sim_path`).

    Units not in `devices` stay silent, as on a real line. On a pty the baud rate is not
    enforced; it is passed on so the settings read like the real line's.
    """
    sims = unit_sims(devices)
    path = os.fspath(serial_path)
    server = await serve_rtu(
        sims,
        path,
        "Modbus RTU simulator",
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        reconnect_delay=0,
        trace_packet=_tracer(devices, "rtu"),
    )
    return DeviceServer(dict(devices), serial_path=path, _server=server)
