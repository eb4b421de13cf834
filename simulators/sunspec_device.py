"""Simulated SunSpec devices (inverter 101/103, controls 123, storage 124, meter 201/203) over
Modbus TCP or RTU.

Owns: `SimulatedSunSpec` (one unit's SunSpec map: "SunS" marker at a chosen base, common model,
inverter and/or meter model, optional controls, end marker; live values from a `HomeModel` on a
clock, computed in the pymodbus action hook on every request; writes to the controls drive the
home's PV limit and battery), `start_sunspec_tcp_server` and
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
(sunspec/models: json/model_1.json, model_101.json, model_103.json, model_123.json,
model_124.json, model_201.json, model_203.json), independently of
firmware-configs/sunspec/models.toml, so the driver's tables and this simulator check each other.

Controls (writable over FC06/FC16; a coil write answers exception 1 inside the map, 2 outside):
- `controls=True` adds model 123 (immediate controls) after a PV inverter. WMaxLimPct (at
  WMaxLimPct_SF, `limit_pct_sf`, default -2 as Fronius) with WMaxLim_Ena = 1 caps the home's PV
  output at that percentage of `capacity_w` (`HomeModel.set_generation_limit`); WMaxLim_Ena = 0
  removes the cap; Conn = 0 (DISCONNECT) makes the output 0 W whatever the limit.
- `inverter_role="battery"` makes the unit a battery inverter: model 103 W is the AC power of
  `home.battery` (+ discharging, - charging), and model 124 (storage) follows the inverter.
  StorCtl_Mod bit 1 (DISCHARGE) discharges at OutWRte % of the battery's max discharge power,
  bit 0 (CHARGE) charges at InWRte % of WChaMax; both bits add up, 0 holds (idle). MinRsvPct
  sets the battery's reserve. ChaState is the state of charge (%), ChaSt its status.
- Revert timeouts: with WMaxLimPct_RvrtTms > 0 an enabled limit switches itself off (WMaxLim_Ena
  = 0) that many simulated seconds after it was written; Conn_RvrtTms reconnects after a
  disconnect; InOutWRte_RvrtTms sets StorCtl_Mod back to 0. The reverts are dated, so energy
  is integrated under the old setting up to the revert. The *_WinTms and *_RmpTms points and
  the power-factor / VAr points are stored and read back but have no effect: changes are
  immediate.
- A write to a read-only point (scale factors, ChaState, StorAval, InBatV, ChaSt, the
  inverter and meter models, the header) answers exception 2 (illegal data address): for a
  write, a register that cannot be written is not a valid address (our choice; SunSpec leaves
  the code to the device, and the driver treats 2 and 3 alike as a refusal); a value out of
  range (a percentage over 100, Conn or WMaxLim_Ena not 0/1, StorCtl_Mod > 3)
  answers exception 3 (illegal data value). Nothing of a refused write is applied. Without
  controls or storage the whole map is read-only (exception 2), as before.

Sign convention of the meter (as simulators/modbus_meter.py): W > 0 = import through the meter.
Role "grid": the meter is at the grid connection (W = load - pv - battery); role "pv": on the PV
output (W = -pv, the PV yield lands in TotWhExp).
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
from simulators.models import BatteryModel, EnergyIntegrator, HomeModel

InverterModel = Literal[101, 103]
InverterRole = Literal["pv", "battery"]
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
CONTROLS_LENGTH: Final = 24
STORAGE_LENGTH: Final = 24

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

#: Immediate controls, model 123 (json/model_123.json).
CTL: Final = {
    "Conn_WinTms": 2, "Conn_RvrtTms": 3, "Conn": 4, "WMaxLimPct": 5, "WMaxLimPct_WinTms": 6,
    "WMaxLimPct_RvrtTms": 7, "WMaxLimPct_RmpTms": 8, "WMaxLim_Ena": 9, "OutPFSet": 10,
    "OutPFSet_WinTms": 11, "OutPFSet_RvrtTms": 12, "OutPFSet_RmpTms": 13, "OutPFSet_Ena": 14,
    "VArWMaxPct": 15, "VArMaxPct": 16, "VArAvalPct": 17, "VArPct_WinTms": 18,
    "VArPct_RvrtTms": 19, "VArPct_RmpTms": 20, "VArPct_Mod": 21, "VArPct_Ena": 22,
    "WMaxLimPct_SF": 23, "OutPFSet_SF": 24, "VArPct_SF": 25,
}  # fmt: skip
#: Basic storage controls, model 124 (json/model_124.json).
STO: Final = {
    "WChaMax": 2, "WChaGra": 3, "WDisChaGra": 4, "StorCtl_Mod": 5, "VAChaMax": 6, "MinRsvPct": 7,
    "ChaState": 8, "StorAval": 9, "InBatV": 10, "ChaSt": 11, "OutWRte": 12, "InWRte": 13,
    "InOutWRte_WinTms": 14, "InOutWRte_RvrtTms": 15, "InOutWRte_RmpTms": 16, "ChaGriSet": 17,
    "WChaMax_SF": 18, "WChaDisChaGra_SF": 19, "VAChaMax_SF": 20, "MinRsvPct_SF": 21,
    "ChaState_SF": 22, "StorAval_SF": 23, "InBatV_SF": 24, "InOutWRte_SF": 25,
}  # fmt: skip
#: Points without "access": "RW" in the json definitions.
_CTL_READ_ONLY: Final = frozenset({"WMaxLimPct_SF", "OutPFSet_SF", "VArPct_SF"})
_STO_READ_ONLY: Final = frozenset(
    {"ChaState", "StorAval", "InBatV", "ChaSt"} | {n for n in STO if n.endswith("_SF")}
)
#: Scale factors the simulated storage model announces.
_STO_SF: Final = {
    "WChaMax_SF": 0, "WChaDisChaGra_SF": 0, "MinRsvPct_SF": 0, "ChaState_SF": -1,
    "StorAval_SF": -1, "InBatV_SF": -1, "InOutWRte_SF": -2,
}  # fmt: skip
#: What a point returns to when its *_RvrtTms runs out: limit off, connected, storage released.
_REVERTED: Final = {"WMaxLim_Ena": 0, "Conn": 1, "StorCtl_Mod": 0}
#: StorCtl_Mod bits (json/model_124.json symbols): bit 0 CHARGE, bit 1 DISCHARGE.
STOR_CHARGE: Final = 1
STOR_DISCHARGE: Final = 2
#: ChaSt (enum16): 2 EMPTY, 3 DISCHARGING, 4 CHARGING, 5 FULL, 6 HOLDING.
CHA_EMPTY, CHA_DISCHARGING, CHA_CHARGING, CHA_FULL, CHA_HOLDING = 2, 3, 4, 5, 6
#: Nominal battery voltage of the simulated storage (48 V class), + up to 6 V when full.
_BATTERY_V: Final = 48.0

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


def _signed(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


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
        controls: bool = False,
        limit_pct_sf: int = -2,
        inverter_role: InverterRole = "pv",
        battery: BatteryModel | None = None,
    ) -> None:
        if inverter_model is None and meter_model is None:
            raise ValueError("a SunSpec device needs an inverter or a meter model")
        if inverter_model not in (None, 101, 103) or meter_model not in (None, 201, 203):
            raise ValueError("inverter_model must be 101 or 103, meter_model 201 or 203")
        if common_length not in (65, 66):
            raise ValueError("common_length must be 66 (standard) or 65 (SolarEdge)")
        if meter_role not in ("grid", "pv"):
            raise ValueError(f"meter_role must be 'grid' or 'pv', not {meter_role!r}")
        if inverter_role not in ("pv", "battery"):
            raise ValueError(f"inverter_role must be 'pv' or 'battery', not {inverter_role!r}")
        if (controls or inverter_role == "battery") and inverter_model is None:
            raise ValueError("controls and storage need an inverter model")
        if controls and inverter_role == "battery":
            raise ValueError("model 123 (controls) is simulated on a PV inverter only")
        if not -10 <= limit_pct_sf <= 0:
            raise ValueError("limit_pct_sf must be in -10..0")
        self.clock = clock
        self.home = home or HomeModel(capacity_w, latitude, longitude, base_load_w, seed)
        if battery is not None:
            self.home.battery = battery
        if inverter_role == "battery" and self.home.battery is None:
            raise ValueError("a battery inverter needs a battery (battery= or home.battery)")
        self.inverter_role: InverterRole = inverter_role
        self.controls = controls
        self.limit_pct_sf = limit_pct_sf
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
        self.controls_address: int | None = None
        if controls:
            self.controls_address = address
            address += 2 + CONTROLS_LENGTH
        self.storage_address: int | None = None
        if inverter_role == "battery":
            self.storage_address = address
            address += 2 + STORAGE_LENGTH
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
        # Writable points as raw words, in the state a device leaves the factory: connected,
        # no limit (100 %, disabled), storage holding, no reserve.
        self._ctl: dict[str, int] = {}
        if controls:
            self._ctl = {n: 0 for n in CTL if n not in _CTL_READ_ONLY}
            self._ctl.update(
                Conn=1,
                WMaxLimPct=round(100 / 10.0**limit_pct_sf),
                OutPFSet=NI_INT16,
                VArWMaxPct=NI_INT16,
                VArMaxPct=NI_INT16,
                VArAvalPct=NI_INT16,
            )
        self._sto: dict[str, int] = {}
        if self.home.battery is not None and inverter_role == "battery":
            self._sto = {n: 0 for n in STO if n not in _STO_READ_ONLY}
            self._sto.update(
                WChaMax=round(self.home.battery.max_charge_w),
                WChaGra=100,
                WDisChaGra=100,
                VAChaMax=NI_UINT16,
                MinRsvPct=round(self.home.battery.min_soc * 100),
                ChaGriSet=1,
            )
        self._request_address = -1
        #: point -> simulated time at which it reverts to its default (`_REVERTED`)
        self._reverts: dict[str, float] = {}

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
        return self.home.grid_w(ts)

    def inverter_power_w(self, ts: float) -> float:
        """Smooth AC power of the inverter at `ts`: PV output, or the battery's (+ discharge)."""
        if self.inverter_role == "battery":
            return self.home.battery_w(ts)
        return self.home.pv_w(ts)

    def _advance(self, ts: float) -> None:
        """Integrate energy up to `ts`, applying the reverts that fall due on the way; a clock
        that steps back is ignored."""
        for point, due in sorted(self._reverts.items(), key=lambda item: item[1]):
            if due > ts:
                break
            self._integrate(due)
            del self._reverts[point]
            (self._sto if point == "StorCtl_Mod" else self._ctl)[point] = _REVERTED[point]
            self._apply_controls(due)
        self._integrate(ts)

    def _integrate(self, ts: float) -> None:
        if ts > self._last_ts:
            # A battery inverter's WH counts the energy it delivered (discharge) only.
            self._pv_energy.integrate(self.inverter_power_w, self._last_ts, ts)
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
            ac = pv if self.inverter_role == "pv" else self.home.battery_w(ts)
            self._put_inverter(put, self.inverter_address, self.inverter_model, ac, hz, volts)
        if self.controls_address is not None:
            self._put_controls(put, self.controls_address)
        if self.storage_address is not None:
            self._put_storage(put, self.storage_address, ts)
        for (model_id, length), address in zip(
            self.extra_models, self.extra_addresses, strict=True
        ):
            put(address, [model_id, length])
        if self.meter_address is not None and self.meter_model is not None:
            load = self.home.load_w(ts, rng)
            # Seen from the grid meter the battery inverter is one more source, like the PV.
            own = pv if self.meter_role == "pv" else pv + self.home.battery_w(ts)
            self._put_meter(put, self.meter_address, self.meter_model, own, load, hz, volts)
        put(self.end_address, [END_ID, 0] if self.end_length else [END_ID])
        return regs

    def _put_inverter(
        self, put: Any, at: int, model: int, pv: float, hz: float, volts: list[float]
    ) -> None:
        # `pv` is the AC power: the PV output, or a battery inverter's (negative = charging).
        phases = 3 if model == 103 else 1
        w_sf = self._power_sf(abs(pv))
        dc_w = pv / _DC_EFFICIENCY if pv > 0 else pv * _DC_EFFICIENCY
        dcw_sf = self._power_sf(abs(dc_w))
        dc_v = 380.0 + 20.0 * min(1.0, abs(pv) / max(1.0, self.home.capacity_w))
        amps = [abs(pv) / phases / volts[i] for i in range(phases)]
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
        at_("DCA", _u16(abs(dc_w) / dc_v, -2), _sf(-2))
        at_("DCV", _u16(dc_v, -1), _sf(-1))
        at_("DCW", _s16(dc_w, dcw_sf), _sf(dcw_sf))
        at_("TmpCab", _s16(30.0 + 15.0 * abs(pv) / max(1.0, self.home.capacity_w), -1))
        at_("TmpSnk", NI_INT16, NI_INT16, NI_INT16)
        at_("Tmp_SF", _sf(-1))
        at_("St", ST_MPPT if pv != 0 else ST_SLEEPING, NI_UINT16)
        at_("Evt1", *([0] * 12))
        put(at, block)

    def _put_controls(self, put: Any, at: int) -> None:
        block = [NI_UINT16] * (2 + CONTROLS_LENGTH)
        block[0], block[1] = 123, CONTROLS_LENGTH
        for name, word in self._ctl.items():
            block[CTL[name]] = word
        block[CTL["WMaxLimPct_SF"]] = _sf(self.limit_pct_sf)
        block[CTL["OutPFSet_SF"]] = NI_INT16
        block[CTL["VArPct_SF"]] = NI_INT16
        put(at, block)

    def _put_storage(self, put: Any, at: int, ts: float) -> None:
        battery = self.home.battery
        assert battery is not None
        soc = battery.soc_at(ts)
        power = battery.power_w(ts)
        volts = _BATTERY_V + 6.0 * soc
        if power > 0:
            state = CHA_DISCHARGING
        elif power < 0:
            state = CHA_CHARGING
        elif soc >= 1.0:
            state = CHA_FULL
        elif soc <= battery.min_soc:
            state = CHA_EMPTY
        else:
            state = CHA_HOLDING
        block = [NI_UINT16] * (2 + STORAGE_LENGTH)
        block[0], block[1] = 124, STORAGE_LENGTH
        for name, word in self._sto.items():
            block[STO[name]] = word
        for name, sf in _STO_SF.items():
            block[STO[name]] = _sf(sf)
        block[STO["VAChaMax_SF"]] = NI_INT16
        block[STO["ChaState"]] = _u16(soc * 100.0, _STO_SF["ChaState_SF"])
        available_ah = max(0.0, soc - battery.min_soc) * battery.capacity_wh / volts
        block[STO["StorAval"]] = _u16(available_ah, _STO_SF["StorAval_SF"])
        block[STO["InBatV"]] = _u16(volts, _STO_SF["InBatV_SF"])
        block[STO["ChaSt"]] = state
        put(at, block)

    # ------------------------------------------------------------------ writes

    def _point_at(self, address: int) -> tuple[int, str] | None:
        """(model id, point name) of a writable point at `address`, else None."""
        for model, at, table, read_only in (
            (123, self.controls_address, CTL, _CTL_READ_ONLY),
            (124, self.storage_address, STO, _STO_READ_ONLY),
        ):
            if at is None:
                continue
            for name, offset in table.items():
                if at + offset == address and name not in read_only:
                    return model, name
        return None

    def _valid(self, model: int, name: str, word: int) -> bool:
        """Whether `word` is a value the point accepts (the rest is stored as written)."""
        if model == 123:
            if name in ("Conn", "WMaxLim_Ena", "OutPFSet_Ena", "VArPct_Ena"):
                return word in (0, 1)
            if name == "WMaxLimPct":
                return word * 10.0**self.limit_pct_sf <= 100.0
            return True
        pct = 10.0 ** _STO_SF["InOutWRte_SF"]
        if name == "StorCtl_Mod":
            return word <= STOR_CHARGE | STOR_DISCHARGE
        if name in ("OutWRte", "InWRte"):
            return abs(_signed(word)) * pct <= 100.0
        if name == "MinRsvPct":
            return word < 100
        if name == "ChaGriSet":
            return word in (0, 1)
        return True

    def write(self, address: int, words: Sequence[int]) -> ExcCodes | None:
        """Apply a write of `words` from `address` (what FC06/FC16 do); an exception code when
        refused, in which case nothing is applied."""
        changes: list[tuple[int, str, int]] = []
        for i, word in enumerate(words):
            where = self._point_at(address + i)
            if where is None:
                return ExcCodes.ILLEGAL_ADDRESS
            changes.append((*where, int(word) & 0xFFFF))
        if not all(self._valid(model, name, word) for model, name, word in changes):
            return ExcCodes.ILLEGAL_VALUE
        now = self.clock.now()
        self._advance(now)  # energy so far was made under the old settings
        for model, name, word in changes:
            (self._ctl if model == 123 else self._sto)[name] = word
        written = {name for _model, name, _word in changes}
        if written & {"WMaxLimPct", "WMaxLim_Ena", "WMaxLimPct_RvrtTms"}:
            self._arm("WMaxLim_Ena", self._ctl["WMaxLim_Ena"] == 1, "WMaxLimPct_RvrtTms", now)
        if written & {"Conn", "Conn_RvrtTms"}:
            self._arm("Conn", self._ctl["Conn"] == 0, "Conn_RvrtTms", now)
        if written & {"OutWRte", "InWRte", "StorCtl_Mod", "InOutWRte_RvrtTms"}:
            self._arm("StorCtl_Mod", self._sto["StorCtl_Mod"] != 0, "InOutWRte_RvrtTms", now)
        self._apply_controls(now)
        return None

    def _arm(self, point: str, active: bool, timeout_point: str, now: float) -> None:
        """Start (or stop) the revert timer of `point` from `now`: a setting with a nonzero
        *_RvrtTms goes back to its default that many seconds after it was written."""
        seconds = (self._sto if point == "StorCtl_Mod" else self._ctl)[timeout_point]
        if active and seconds > 0:
            self._reverts[point] = now + seconds
        else:
            self._reverts.pop(point, None)

    def _apply_controls(self, ts: float) -> None:
        """Drive the physics from the written points."""
        if self._ctl:
            limit: float | None = None
            if self._ctl["Conn"] == 0:
                limit = 0.0
            elif self._ctl["WMaxLim_Ena"] == 1:
                limit = self._ctl["WMaxLimPct"] * 10.0**self.limit_pct_sf / 100.0
            self.home.set_generation_limit(limit, ts)
        battery = self.home.battery
        if self._sto and battery is not None:
            battery.set_reserve(ts, self._sto["MinRsvPct"] / 100.0)
            pct = 10.0 ** _STO_SF["InOutWRte_SF"] / 100.0
            mode = self._sto["StorCtl_Mod"]
            power = 0.0
            if mode & STOR_DISCHARGE:
                power += _signed(self._sto["OutWRte"]) * pct * battery.max_discharge_w
            if mode & STOR_CHARGE:
                power -= _signed(self._sto["InWRte"]) * pct * self._sto["WChaMax"]
            battery.set_setpoint(ts, power)

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
        """A pymodbus SimDevice serving this map as `unit_id` (FC03; FC06/FC16 to the control
        points when there are any, else read-only)."""
        self.unit_id = unit_id
        writable = bool(self._ctl or self._sto)
        holding = [register_block(self.base, self.register_count, readonly=not writable)]
        return SimDevice(id=unit_id, simdata=holding, action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: Writes,
    ) -> ExcCodes | None:
        # `_answer` sees the block, not the request; a write needs the request's address.
        self._request_address = address
        return await super()._action(
            function_code, start_address, address, count, current_registers, set_values
        )

    def _answer(
        self, function_code: int, start_address: int, registers: list[int], writes: Writes
    ) -> ExcCodes | None:
        if self._faults and self._faults[0] == "exception":
            self._faults.popleft()
            return ExcCodes.DEVICE_FAILURE
        if writes is not None:
            if function_code not in (6, 16):
                return ExcCodes.ILLEGAL_FUNCTION
            return self.write(self._request_address, [int(w) for w in writes])
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
