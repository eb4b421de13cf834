"""Simulated Modbus TCP energy meters (Eastron SDM630 map) driven by the home models.

Owns: `SimulatedMeter` (one meter: register values computed on every access from a PV/load model
on a clock, energy integrated between accesses, injectable faults) and `start_meter_server`
(one Modbus TCP listener hosting several unit ids, e.g. unit 1 = PV meter, unit 2 = grid meter).

Built on pymodbus 3.16's simulator API (`SimDevice` with an async `action` hook) rather than the
deprecated datastore: the hook runs on every request, so each read sees the state at
`clock.now()`, and returning an exception code from it is how faults are injected.

Sign convention (same as the register map): power > 0 = import through the meter, < 0 = export.
- role "pv": the meter sits on the PV inverter output. It reports generation as negative power
  and its export_energy grows with the PV yield; import_energy stays put.
- role "grid": the meter sits at the grid connection. Net power = load - pv - battery (the
  home's battery, + discharging, if it has one); import_energy grows while the home draws from
  the grid, export_energy while it feeds in.
Two meters of one home share one `HomeModel`, so grid = load - pv - battery holds between them;
a generation limit on the home (`HomeModel.set_generation_limit`) lowers the PV meter too.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from edge.drivers.register_map import RegisterMap
from protocol.clock import Clock
from simulators._modbus_server import (
    ActionHook,
    Writes,
    map_sim_device,
    serve_tcp,
    shutdown,
    unit_sims,
    unit_tracer,
    write_quantities,
)
from simulators.models import EnergyIntegrator, HomeModel

Role = Literal["pv", "grid"]
FaultKind = Literal["timeout", "exception"]

#: Starting totals (import kWh, export kWh): non-trivial, so float32 rounding shows in tests.
DEFAULT_START_KWH: Final[dict[str, tuple[float, float]]] = {
    "pv": (2.5, 1234.5),
    "grid": (4321.25, 876.5),
}
#: How a home's load spreads over the phases (PV inverters feed all phases equally).
_LOAD_SHARES: Final[dict[int, tuple[float, ...]]] = {1: (1.0,), 3: (0.45, 0.35, 0.20)}
_VOLTAGE_OFFSETS: Final = (0.4, -0.6, 0.9)
#: Eastron baud-rate codes (holding 0x001C); 1200 is SDM120-only.
_BAUD_CODES: Final = {2400: 0.0, 4800: 1.0, 9600: 2.0, 19200: 3.0, 38400: 4.0, 1200: 5.0}


class SimulatedMeter(ActionHook):
    """One simulated meter whose registers follow a home model on a (simulated) clock.

    Energy totals are integrated from the smooth (jitter-free) model between accesses, so they
    do not depend on how often the meter is polled; instantaneous values (power, voltage) carry
    a little random jitter like a real meter.
    """

    def __init__(
        self,
        register_map: RegisterMap,
        role: Role,
        clock: Clock,
        capacity_w: int = 5000,
        latitude: float = 48.14,
        longitude: float = 11.58,
        base_load_w: float = 400.0,
        seed: int = 0,
        *,
        home: HomeModel | None = None,
        start_import_kwh: float | None = None,
        start_export_kwh: float | None = None,
    ) -> None:
        if role not in ("pv", "grid"):
            raise ValueError(f"role must be 'pv' or 'grid', not {role!r}")
        self.register_map = register_map
        self.role: Role = role
        self.clock = clock
        self.home = home or HomeModel(capacity_w, latitude, longitude, base_load_w, seed)
        self.unit_id: int = register_map.default_unit
        self.phases = (
            3
            if any(f"{k}_l3" in register_map.quantities for k in ("power", "voltage", "current"))
            else 1
        )
        self._rng = random.Random(f"{seed}:{role}:jitter")
        start_import, start_export = DEFAULT_START_KWH[role]
        self._energy = EnergyIntegrator(
            1000.0 * (start_import if start_import_kwh is None else start_import_kwh),
            1000.0 * (start_export if start_export_kwh is None else start_export_kwh),
        )
        self._last_ts = clock.now()
        self._faults: deque[FaultKind] = deque()
        self._drops_pending = 0
        self.requests = 0

    # ------------------------------------------------------------------ model

    def net_power_w(self, ts: float) -> float:
        """Smooth power through this meter at `ts` (W; > 0 import, < 0 export)."""
        if self.role == "pv":
            return -self.home.pv_w(ts)
        return self.home.grid_w(ts)

    def _advance(self, ts: float) -> None:
        """Integrate energy up to `ts`; a clock that steps back is ignored (totals never fall)."""
        if ts > self._last_ts:
            self._energy.integrate(self.net_power_w, self._last_ts, ts)
            self._last_ts = ts

    def skip_to(self, ts: float) -> None:
        """Move the meter's time to `ts` without booking energy (it was off, e.g. rebooting)."""
        self._last_ts = max(self._last_ts, ts)

    def energy_kwh(self) -> tuple[float, float]:
        """(import, export) totals in kWh (float64) at the clock's current time."""
        self._advance(self.clock.now())
        return self._energy.import_wh / 1000.0, self._energy.export_wh / 1000.0

    def values_at(self, ts: float) -> dict[str, float]:
        """Every quantity of the map as the meter would report it at `ts`."""
        self._advance(ts)
        rng = self._rng
        pv = self.home.pv_w(ts, rng)
        if self.role == "pv":
            phase_power = [-pv / self.phases] * self.phases
        else:
            load = self.home.load_w(ts, rng)
            # The battery inverter feeds all phases alike, like the PV inverter.
            own = (pv + self.home.battery_w(ts)) / self.phases
            phase_power = [load * s - own for s in _LOAD_SHARES[self.phases]]
        voltages = [230.0 + _VOLTAGE_OFFSETS[i] + rng.gauss(0.0, 0.3) for i in range(self.phases)]
        imported = self._energy.import_wh / 1000.0
        exported = self._energy.export_wh / 1000.0
        values = {
            "total_power": sum(phase_power),
            "frequency": 50.0 + rng.gauss(0.0, 0.01),
            "import_energy": imported,
            "export_energy": exported,
            "total_energy": imported + exported,
            "parity_stop_code": 0.0,
            "modbus_unit_id": float(self.unit_id),
            "baud_code": _BAUD_CODES.get(self.register_map.baudrate, 2.0),
        }
        for i in range(self.phases):
            values[f"voltage_l{i + 1}"] = voltages[i]
            values[f"current_l{i + 1}"] = abs(phase_power[i]) / voltages[i]
            values[f"power_l{i + 1}"] = phase_power[i]
        # Quantities this simulator knows nothing about read as 0, like an unused register.
        return {name: values.get(name, 0.0) for name in self.register_map.quantities}

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, kind: FaultKind = "timeout") -> None:
        """Make the next `n` requests to this meter fail.

        "timeout": the request is swallowed and no response is sent, as a meter that is off the
        bus. "exception": the meter answers with Modbus exception 4 (device failure). Each
        request counts, including pymodbus client retries of a timed-out request.
        """
        if kind not in ("timeout", "exception"):
            raise ValueError(f"kind must be 'timeout' or 'exception', not {kind!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        self._faults.extend([kind] * n)

    def reset_counters(self, import_kwh: float = 0.0, export_kwh: float = 0.0) -> None:
        """Set the energy totals, as a meter swap or a counter reset in the field would."""
        self._advance(self.clock.now())
        self._energy.import_wh = 1000.0 * import_kwh
        self._energy.export_wh = 1000.0 * export_kwh

    def _take_drop(self) -> bool:
        if self._drops_pending:
            self._drops_pending -= 1
            return True
        return False

    # ------------------------------------------------------------------ pymodbus glue

    def sim_device(self, unit_id: int) -> SimDevice:
        """A pymodbus SimDevice serving this meter's map as unit `unit_id`.

        Input and holding registers are separate tables (the 4-tuple form), as on Eastron
        meters. Registers between mapped quantities read as 0; everything is read-only.
        """
        self.unit_id = unit_id
        return map_sim_device(self.register_map, unit_id, self._action)

    def _answer(
        self, function_code: int, start_address: int, registers: list[int], writes: Writes
    ) -> ExcCodes | None:
        if self._faults:
            kind = self._faults.popleft()
            if kind == "exception":
                return ExcCodes.DEVICE_FAILURE
            self._drops_pending += 1
            return None
        values = self.values_at(self.clock.now())
        write_quantities(self.register_map, function_code, start_address, registers, values)
        return None


@dataclass
class MeterServer:
    """A running Modbus TCP listener; `port` is the port actually bound."""

    host: str
    port: int
    meters: dict[int, SimulatedMeter]
    _server: ModbusTcpServer = field(repr=False)

    async def stop(self) -> None:
        """Close the listener and all client connections."""
        await shutdown(self._server)


async def start_meter_server(
    meters: dict[int, SimulatedMeter], host: str = "127.0.0.1", port: int = 0
) -> MeterServer:
    """Serve `meters` (unit id -> meter) on one Modbus TCP port; port 0 picks a free one.

    Several servers can run in one event loop (one per simulated home). Requests for a unit id
    not in `meters` get no answer, as on an RS-485 line (pymodbus alone would answer them with
    exception 4). Raises OSError when the address cannot be bound.
    """
    # Outgoing Modbus TCP frames carry the unit id at byte 6 (MBAP header). Returning b""
    # sends nothing: the client times out, as with a meter that is off the bus.
    trace_packet = unit_tracer(meters, 6, lambda meter, data: b"" if meter._take_drop() else data)
    server, bound_port = await serve_tcp(
        unit_sims(meters, "meter"), host, port, "Modbus server", trace_packet
    )
    return MeterServer(host=host, port=bound_port, meters=dict(meters), _server=server)
