"""Simulated SunSpec devices (inverter 101/103, meter 201/203) over Modbus TCP or RTU.

Owns: `SimulatedSunSpec` (one unit's SunSpec map: "SunS" marker at a chosen base, common model,
inverter and/or meter model, end marker; live values from a `HomeModel` on a clock, computed in
the pymodbus action hook on every request), `start_sunspec_tcp_server` and
`start_sunspec_rtu_server` (the latter on the simulator end of a `PtyPair`).

Layout quirks of real devices are options, because the driver must survive them:
- base 40000 (default), 0 or 50000; nothing answers at the other bases (exception 2);
- `common_length=65`: SolarEdge's common model without Pad, so every later model starts one
  register earlier (`SimulatedSunSpec.solaredge_like`);
- `end_length=False`: the 0xFFFF end marker without its L register (the register space ends);
- `dynamic_w_sf=True`: W_SF and DCW_SF follow the power, as Fronius does, so a reader that
  caches scale factors is off by a factor of ten;
- `extra_models`: models the driver does not know, to be skipped by their L;
- `silent_addresses`: requests starting there get no answer (a timeout, not an exception).

The register offsets below were typed from the SunSpec Alliance json model definitions
(sunspec/models: json/model_1.json, model_101.json, model_103.json, model_201.json,
model_203.json), independently of firmware-configs/sunspec/models.toml, so the driver's tables
and this simulator check each other.

Sign convention of the meter (as simulators/modbus_meter.py): W > 0 = import through the meter.
Role "grid": the meter is at the grid connection (W = load - pv); role "pv": on the PV output
(W = -pv, the PV yield lands in TotWhExp).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimDevice

from protocol.clock import Clock
from simulators._modbus_server import (
    ActionHook,
    Writes,
    register_block,
    serve_rtu,
    serve_tcp,
    shutdown,
    unit_sims,
)
from simulators.models import EnergyIntegrator, HomeModel

InverterModel = Literal[101, 103]
MeterModel = Literal[201, 203]
MeterRole = Literal["grid", "pv"]
FaultKind = Literal["timeout", "exception"]

MARKER: Final = (0x5375, 0x6E53)  # "SunS"
END_ID: Final = 0xFFFF
#: "Not implemented" values per type (SunSpec): int16/sunssf, uint16/enum16, acc32.
NI_INT16: Final = 0x8000
NI_UINT16: Final = 0xFFFF
NI_ACC32: Final = 0

#: Model lengths (L) from the json definitions.
COMMON_LENGTH: Final = 66
INVERTER_LENGTH: Final = 50
METER_LENGTH: Final = 105

#: Common model (json/model_1.json): string offsets and sizes in registers.
_COMMON_STRINGS: Final = {
    "Mn": (2, 16),
    "Md": (18, 16),
    "Opt": (34, 8),
    "Vr": (42, 8),
    "SN": (50, 16),
}
_COMMON_DA: Final = 66

#: Inverter models 101/103 (json/model_101.json, model_103.json): offset from the ID register.
INV: Final = {
    "A": 2, "AphA": 3, "AphB": 4, "AphC": 5, "A_SF": 6,
    "PPVphAB": 7, "PPVphBC": 8, "PPVphCA": 9, "PhVphA": 10, "PhVphB": 11, "PhVphC": 12, "V_SF": 13,
    "W": 14, "W_SF": 15, "Hz": 16, "Hz_SF": 17, "VA": 18, "VA_SF": 19, "VAr": 20, "VAr_SF": 21,
    "PF": 22, "PF_SF": 23, "WH": 24, "WH_SF": 26, "DCA": 27, "DCA_SF": 28, "DCV": 29,
    "DCV_SF": 30, "DCW": 31, "DCW_SF": 32, "TmpCab": 33, "TmpSnk": 34, "TmpTrns": 35, "TmpOt": 36,
    "Tmp_SF": 37, "St": 38, "StVnd": 39, "Evt1": 40, "Evt2": 42, "EvtVnd1": 44, "EvtVnd2": 46,
    "EvtVnd3": 48, "EvtVnd4": 50,
}  # fmt: skip
#: Meter models 201/203 (json/model_201.json, model_203.json).
MTR: Final = {
    "A": 2, "AphA": 3, "AphB": 4, "AphC": 5, "A_SF": 6, "PhV": 7, "PhVphA": 8, "PhVphB": 9,
    "PhVphC": 10, "PPV": 11, "PhVphAB": 12, "PhVphBC": 13, "PhVphCA": 14, "V_SF": 15, "Hz": 16,
    "Hz_SF": 17, "W": 18, "WphA": 19, "WphB": 20, "WphC": 21, "W_SF": 22, "VA": 23, "VA_SF": 27,
    "VAR": 28, "VAR_SF": 32, "PF": 33, "PF_SF": 37, "TotWhExp": 38, "TotWhImp": 46,
    "TotWh_SF": 54, "TotVAh_SF": 71, "TotVArh_SF": 104, "Evt": 105,
}  # fmt: skip

#: Operating states (enum16 St): 2 SLEEPING at night, 4 MPPT while producing.
ST_SLEEPING: Final = 2
ST_MPPT: Final = 4
_LOAD_SHARES: Final = (0.45, 0.35, 0.20)
_VOLTAGE_OFFSETS: Final = (0.4, -0.6, 0.9)
_DC_EFFICIENCY: Final = 0.97


def fronius_like_sf(value: float) -> int:
    """The smallest scale factor in -2..2 whose int16 raw value holds `value`.

    Fronius inverters pick the scale factor by magnitude (abeggled/openbridgeserver#1255), so
    the SF moves with the power and has to be read with every value.
    """
    for sf in (-2, -1, 0, 1, 2):
        if abs(round(value / 10.0**sf)) <= 0x7FFF:
            return sf
    return 2


def _s16(value: float, sf: int) -> int:
    """Encode `value` as an int16 raw count at scale factor `sf` (two's complement word)."""
    raw = round(value / 10.0**sf)
    if not -0x7FFF <= raw <= 0x7FFF:
        raise ValueError(f"{value} does not fit int16 at scale factor {sf}")
    return raw & 0xFFFF


def _u16(value: float, sf: int) -> int:
    raw = round(value / 10.0**sf)
    if not 0 <= raw < 0xFFFF:
        raise ValueError(f"{value} does not fit uint16 at scale factor {sf}")
    return raw


def _acc32(value: float, sf: int) -> list[int]:
    """An acc32 counter (truncated, wraps at 2^32 as the type name says), high word first."""
    raw = math.floor(value / 10.0**sf) % (1 << 32)
    return [raw >> 16, raw & 0xFFFF]


def _sf(sf: int) -> int:
    return sf & 0xFFFF


def _string(text: str, registers: int) -> list[int]:
    data = text.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\x00")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class SimulatedSunSpec(ActionHook):
    """One SunSpec unit: an inverter and/or a meter whose registers follow a home model.

    Addresses: marker at `base`, common model at base + 2, then the inverter model, the
    `extra_models` (id, length; filled with zeros), the meter model and the end marker; each
    model's wire address is exposed (`inverter_address`, `meter_address`) for tests.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        home: HomeModel | None = None,
        capacity_w: int = 5000,
        latitude: float = 48.14,
        longitude: float = 11.58,
        base_load_w: float = 400.0,
        seed: int = 0,
        base: int = 40000,
        inverter_model: InverterModel | None = 103,
        meter_model: MeterModel | None = None,
        meter_role: MeterRole = "grid",
        common_length: Literal[65, 66] = COMMON_LENGTH,
        end_length: bool = True,
        extra_models: Sequence[tuple[int, int]] = (),
        dynamic_w_sf: bool = False,
        w_sf: int = 0,
        wh_sf: int = 0,
        start_energy_wh: float = 12_345_678.0,
        start_import_wh: float = 4_321_250.0,
        start_export_wh: float = 876_500.0,
        manufacturer: str = "Gridmint",
        model_name: str = "SimInverter 5000",
        options: str = "sim",
        version: str = "1.0.0",
        serial_number: str = "SIM0001",
        jitter: bool = True,
        silent_addresses: Sequence[int] = (),
    ) -> None:
        if inverter_model is None and meter_model is None:
            raise ValueError("a SunSpec device needs an inverter or a meter model")
        if inverter_model not in (None, 101, 103) or meter_model not in (None, 201, 203):
            raise ValueError("inverter_model must be 101 or 103, meter_model 201 or 203")
        if common_length not in (65, 66):
            raise ValueError("common_length must be 66 (standard) or 65 (SolarEdge)")
        if meter_role not in ("grid", "pv"):
            raise ValueError(f"meter_role must be 'grid' or 'pv', not {meter_role!r}")
        self.clock = clock
        self.home = home or HomeModel(capacity_w, latitude, longitude, base_load_w, seed)
        self.base = base
        self.inverter_model = inverter_model
        self.meter_model = meter_model
        self.meter_role: MeterRole = meter_role
        self.common_length = common_length
        self.end_length = end_length
        self.extra_models = tuple(extra_models)
        self.dynamic_w_sf = dynamic_w_sf
        self.w_sf = w_sf
        self.wh_sf = wh_sf
        self.identity = {
            "Mn": manufacturer,
            "Md": model_name,
            "Opt": options,
            "Vr": version,
            "SN": serial_number,
        }
        self.jitter = jitter
        self.silent_addresses = frozenset(silent_addresses)
        self._rng = random.Random(f"{seed}:sunspec:jitter")
        self.start_ts = clock.now()
        self._last_ts = self.start_ts
        self._pv_energy = EnergyIntegrator(import_wh=start_energy_wh)
        self._grid_energy = EnergyIntegrator(start_import_wh, start_export_wh)
        self._faults: deque[FaultKind] = deque()
        self.unit_id = 0
        self.requests = 0
        # Layout
        address = base + 2
        self.common_address = address
        address += 2 + common_length
        self.inverter_address: int | None = None
        if inverter_model is not None:
            self.inverter_address = address
            address += 2 + INVERTER_LENGTH
        self.extra_addresses: list[int] = []
        for _model_id, length in self.extra_models:
            self.extra_addresses.append(address)
            address += 2 + length
        self.meter_address: int | None = None
        if meter_model is not None:
            self.meter_address = address
            address += 2 + METER_LENGTH
        self.end_address = address
        self.register_count = address + (2 if end_length else 1) - base
        if base + self.register_count > 0x10000:
            raise ValueError(f"a map at base {base} does not fit the 16-bit address space")

    @classmethod
    def solaredge_like(cls, clock: Clock, **kwargs: Any) -> SimulatedSunSpec:
        """SolarEdge's layout: common model L = 65 (no Pad), inverter 103 at 40069."""
        kwargs.setdefault("manufacturer", "SolarEdge")
        kwargs.setdefault("model_name", "SE5000H-sim")
        kwargs.setdefault("inverter_model", 103)
        return cls(clock, common_length=65, **kwargs)

    # ------------------------------------------------------------------ model

    def grid_power_w(self, ts: float) -> float:
        """Smooth power through the meter at `ts` (W; > 0 import, < 0 export)."""
        if self.meter_role == "pv":
            return -self.home.pv_w(ts)
        return self.home.load_w(ts) - self.home.pv_w(ts)

    def _advance(self, ts: float) -> None:
        """Integrate energy up to `ts`; a clock that steps back is ignored."""
        if ts > self._last_ts:
            self._pv_energy.integrate(self.home.pv_w, self._last_ts, ts)
            self._grid_energy.integrate(self.grid_power_w, self._last_ts, ts)
            self._last_ts = ts

    def energy_wh(self) -> dict[str, float]:
        """Float64 totals at the clock's current time: inverter, meter import, meter export."""
        self._advance(self.clock.now())
        return {
            "ac_energy_wh": self._pv_energy.import_wh,
            "import_energy_wh": self._grid_energy.import_wh,
            "export_energy_wh": self._grid_energy.export_wh,
        }

    def _power_sf(self, value: float) -> int:
        return fronius_like_sf(value) if self.dynamic_w_sf else self.w_sf

    def registers_at(self, ts: float) -> list[int]:
        """The whole map from `base` on, as the device would serve it at `ts`."""
        self._advance(ts)
        rng = self._rng if self.jitter else None
        regs = [0] * self.register_count

        def put(address: int, words: Sequence[int]) -> None:
            offset = address - self.base
            regs[offset : offset + len(words)] = list(words)

        put(self.base, MARKER)
        put(self.common_address, [1, self.common_length])
        for name, (offset, size) in _COMMON_STRINGS.items():
            put(self.common_address + offset, _string(self.identity[name], size))
        put(self.common_address + _COMMON_DA, [self.unit_id])
        # A 66-register common model ends with Pad (0); a 65-register one stops after DA.
        pv = self.home.pv_w(ts, rng)
        hz = 50.0 + (rng.gauss(0.0, 0.01) if rng else 0.0)
        volts = [
            230.0 + _VOLTAGE_OFFSETS[i] + (rng.gauss(0.0, 0.3) if rng else 0.0) for i in range(3)
        ]
        if self.inverter_address is not None and self.inverter_model is not None:
            self._put_inverter(put, self.inverter_address, self.inverter_model, pv, hz, volts)
        for (model_id, length), address in zip(
            self.extra_models, self.extra_addresses, strict=True
        ):
            put(address, [model_id, length])
        if self.meter_address is not None and self.meter_model is not None:
            load = self.home.load_w(ts, rng)
            self._put_meter(put, self.meter_address, self.meter_model, pv, load, hz, volts)
        put(self.end_address, [END_ID, 0] if self.end_length else [END_ID])
        return regs

    def _put_inverter(
        self, put: Any, at: int, model: int, pv: float, hz: float, volts: list[float]
    ) -> None:
        phases = 3 if model == 103 else 1
        w_sf = self._power_sf(pv)
        dc_w = pv / _DC_EFFICIENCY if pv > 0 else 0.0
        dcw_sf = self._power_sf(dc_w)
        dc_v = 380.0 + 20.0 * min(1.0, pv / max(1.0, self.home.capacity_w))
        amps = [pv / phases / volts[i] for i in range(phases)]
        block = [NI_UINT16] * (2 + INVERTER_LENGTH)
        block[0], block[1] = model, INVERTER_LENGTH

        def at_(name: str, *words: int) -> None:
            block[INV[name] : INV[name] + len(words)] = list(words)

        at_("A", _u16(sum(amps), -2))
        for i, ph in enumerate("ABC"):
            at_(f"Aph{ph}", _u16(amps[i], -2) if i < phases else NI_UINT16)
            at_(f"PhVph{ph}", _u16(volts[i], -1) if i < phases else NI_UINT16)
        at_("A_SF", _sf(-2))
        line = [volts[0] * math.sqrt(3.0), volts[1] * math.sqrt(3.0), volts[2] * math.sqrt(3.0)]
        for i, pair in enumerate(("AB", "BC", "CA")):
            at_(f"PPVph{pair}", _u16(line[i], -1) if phases == 3 else NI_UINT16)
        at_("V_SF", _sf(-1))
        at_("W", _s16(pv, w_sf), _sf(w_sf))
        at_("Hz", _u16(hz, -2), _sf(-2))
        for name in ("VA", "VAr", "PF"):  # not implemented: int16 and its sunssf 0x8000
            at_(name, NI_INT16, NI_INT16)
        at_("WH", *_acc32(self._pv_energy.import_wh, self.wh_sf))
        at_("WH_SF", _sf(self.wh_sf))
        at_("DCA", _u16(dc_w / dc_v, -2), _sf(-2))
        at_("DCV", _u16(dc_v, -1), _sf(-1))
        at_("DCW", _s16(dc_w, dcw_sf), _sf(dcw_sf))
        at_("TmpCab", _s16(30.0 + 15.0 * pv / max(1.0, self.home.capacity_w), -1))
        at_("TmpSnk", NI_INT16, NI_INT16, NI_INT16)
        at_("Tmp_SF", _sf(-1))
        at_("St", ST_MPPT if pv > 0 else ST_SLEEPING, NI_UINT16)
        at_("Evt1", *([0] * 12))
        put(at, block)

    def _put_meter(
        self,
        put: Any,
        at: int,
        model: int,
        pv: float,
        load: float,
        hz: float,
        volts: list[float],
    ) -> None:
        phases = 3 if model == 203 else 1
        shares = _LOAD_SHARES if phases == 3 else (1.0,)
        if self.meter_role == "pv":
            power = [-pv / phases] * phases
        else:
            power = [load * shares[i] - pv / phases for i in range(phases)]
        total = sum(power)
        w_sf = self._power_sf(max(abs(total), *(abs(p) for p in power)))
        amps = [abs(power[i]) / volts[i] for i in range(phases)]
        block = [NI_INT16] * (2 + METER_LENGTH)
        block[0], block[1] = model, METER_LENGTH

        def at_(name: str, *words: int) -> None:
            block[MTR[name] : MTR[name] + len(words)] = list(words)

        at_("A", _s16(sum(amps), -2))
        at_("PhV", _s16(sum(volts[:phases]) / phases, -1))
        for i, ph in enumerate("ABC"):
            at_(f"Aph{ph}", _s16(amps[i], -2) if i < phases else NI_INT16)
            at_(f"PhVph{ph}", _s16(volts[i], -1) if i < phases else NI_INT16)
            at_(f"Wph{ph}", _s16(power[i], w_sf) if i < phases else NI_INT16)
        at_("A_SF", _sf(-2))
        if phases == 3:
            at_("PPV", _s16(sum(volts) / 3 * math.sqrt(3.0), -1))
            for i, pair in enumerate(("AB", "BC", "CA")):
                at_(f"PhVph{pair}", _s16(volts[i] * math.sqrt(3.0), -1))
        at_("V_SF", _sf(-1))
        at_("Hz", _s16(hz, -2), _sf(-2))
        at_("W", _s16(total, w_sf))
        at_("W_SF", _sf(w_sf))
        # VA/VAR/PF groups and their SFs stay 0x8000 (not implemented). Energy: acc32, 0 = n/i.
        block[MTR["TotWhExp"] : MTR["TotWh_SF"]] = [NI_ACC32] * (MTR["TotWh_SF"] - MTR["TotWhExp"])
        at_("TotWhExp", *_acc32(self._grid_energy.export_wh, self.wh_sf))
        at_("TotWhImp", *_acc32(self._grid_energy.import_wh, self.wh_sf))
        at_("TotWh_SF", _sf(self.wh_sf))
        block[MTR["TotWh_SF"] + 1 : MTR["TotVAh_SF"]] = [NI_ACC32] * 16
        block[MTR["TotVAh_SF"] + 1 : MTR["TotVArh_SF"]] = [NI_ACC32] * 32
        at_("Evt", 0, 0)
        put(at, block)

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, kind: FaultKind = "timeout") -> None:
        """Make the next `n` requests fail: no answer ("timeout") or exception 4."""
        if kind not in ("timeout", "exception"):
            raise ValueError(f"kind must be 'timeout' or 'exception', not {kind!r}")
        self._faults.extend([kind] * n)

    def _drop_request(self, address: int) -> bool:
        """Called for each incoming request: whether its answer is to be swallowed."""
        if address in self.silent_addresses:
            return True
        if self._faults and self._faults[0] == "timeout":
            self._faults.popleft()
            return True
        return False

    # ------------------------------------------------------------------ pymodbus glue

    def sim_device(self, unit_id: int) -> SimDevice:
        """A pymodbus SimDevice serving this map as `unit_id` (FC03; read-only)."""
        self.unit_id = unit_id
        holding = [register_block(self.base, self.register_count)]
        return SimDevice(id=unit_id, simdata=holding, action=self._action)

    def _answer(
        self, function_code: int, start_address: int, registers: list[int], writes: Writes
    ) -> ExcCodes | None:
        if self._faults and self._faults[0] == "exception":
            self._faults.popleft()
            return ExcCodes.DEVICE_FAILURE
        image = self.registers_at(self.clock.now())
        offset = self.base - start_address
        registers[offset : offset + len(image)] = image
        return None


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


class _Tracer:
    """Swallows answers that a real bus would not give: unknown unit ids, injected timeouts.

    pymodbus answers an unknown unit id with exception 4, and our devices can only return
    exception codes from the action hook; a request decides here (trace_pdu, receiving) whether
    its answer is dropped, and the answer is then replaced by nothing (trace_packet, sending).
    """

    def __init__(self, devices: dict[int, SimulatedSunSpec]) -> None:
        self.devices = devices
        self._drop: set[tuple[int, int]] = set()
        self._drop_packet = False

    def trace_pdu(self, sending: bool, pdu: Any) -> Any:
        key = (int(pdu.dev_id), int(pdu.transaction_id))
        if not sending:
            device = self.devices.get(key[0])
            if device is None or device._drop_request(int(getattr(pdu, "address", -1))):
                self._drop.add(key)
        elif key in self._drop:
            self._drop.discard(key)
            self._drop_packet = True
        return pdu

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self._drop_packet:
            self._drop_packet = False
            return b""
        return data


@dataclass
class SunSpecServer:
    """A running simulator: `port` is the TCP port bound (0 for RTU), `serial_path` the pty."""

    devices: dict[int, SimulatedSunSpec]
    host: str = ""
    port: int = 0
    serial_path: str = ""
    _server: ModbusTcpServer | ModbusSerialServer | None = field(default=None, repr=False)

    async def stop(self) -> None:
        """Close the listener or the serial port."""
        if self._server is not None:
            await shutdown(self._server)
            self._server = None


async def start_sunspec_tcp_server(
    devices: dict[int, SimulatedSunSpec], host: str = "127.0.0.1", port: int = 0
) -> SunSpecServer:
    """Serve `devices` (unit id -> device) over Modbus TCP; port 0 picks a free port."""
    tracer = _Tracer(dict(devices))
    server, bound = await serve_tcp(
        unit_sims(devices), host, port, "SunSpec simulator", tracer.trace_packet, tracer.trace_pdu
    )
    return SunSpecServer(dict(devices), host=host, port=bound, _server=server)


async def start_sunspec_rtu_server(
    devices: dict[int, SimulatedSunSpec], serial_path: str, baudrate: int = 9600
) -> SunSpecServer:
    """Serve `devices` as Modbus RTU units on `serial_path` (the sim end of a PtyPair), 8N1."""
    tracer = _Tracer(dict(devices))
    server = await serve_rtu(
        unit_sims(devices),
        str(serial_path),
        "SunSpec simulator",
        baudrate=baudrate,
        bytesize=8,
        parity="N",
        stopbits=1,
        trace_packet=tracer.trace_packet,
        trace_pdu=tracer.trace_pdu,
    )
    return SunSpecServer(dict(devices), serial_path=str(serial_path), _server=server)
