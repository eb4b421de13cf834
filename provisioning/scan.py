"""Find supported devices on serial ports and LAN hosts, and add them to an edge config.

Owns: the identification rules (pure functions on register words, no I/O), the probing of one
serial port or one Modbus TCP endpoint (`scan`), `FoundDevice`, `to_meter_settings` (a found
device as a `[[meters]]` entry of the edge TOML) and `write_config` (append those entries to an
edge TOML without touching what is already there).

How a port is probed (docs/devices.md, reference devices.md sections 2 and 4 "Scanning"):

1. VE.Direct first, because it is passive: open the port at 19200 8N1 and listen for a block
   with a valid checksum (`VeDirectParser`); Victron chargers send one about every second, so a
   port silent for `vedirect_quiet_s` is not VE.Direct. A VE.Direct port is not probed further
   (Modbus requests on it would only be noise to the charger). Bytes on a line where no valid
   block arrives are reported: an RS-485 slave never talks unasked, so another program is
   polling the line (the edge agent? scan on request, not while polling).
2. Modbus RTU for every framing (baud rate x parity) and unit id. Each unit is asked, in order,
   an identification register (ABB model id), the Eastron and EPEver measurement signatures
   (FC04), the SunSpec marker (FC03 40000/0/50000) and only then the Renogy registers, because a
   SunSpec map at base 0 has printable text where Renogy keeps its model string. A unit that
   gave no answer at all to the first `presence_probes` requests is taken as absent and costs
   no more bus time; an exception response is an answer (the unit exists, the register not).
   All units on one line share the line settings, so by default the framings after the first
   one that found something are skipped.
3. Modbus TCP hosts: SunSpec first, then the same Modbus signatures. Gateway exceptions 10/11
   mean "no such unit behind the gateway". A device that ignores the unit id answers on every
   id; it is reported once.

Nothing here stops at the first failure: a port that cannot be opened or a host that refuses
the connection becomes a `ScanIssue`, and the scan goes on.
"""

from __future__ import annotations

import asyncio
import glob
import math
import os
import re
import struct
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edge.drivers.sunspec import DEFAULT_BASES, SUNS_MARKER, discover
from edge.drivers.vedirect import VeDirectParser
from edge.transports.modbus_bus import DeviceUnavailableError, ModbusBus, SerialBus, TcpBus
from provisioning.scan_defaults import (  # re-exported: the defaults live apart for the CLI
    DEFAULT_BAUDS,
    DEFAULT_SERIAL_GLOBS,
    DEFAULT_SUNSPEC_UNITS,
    DEFAULT_TCP_PORT,
    DEFAULT_TCP_UNITS,
    DEFAULT_UNITS,
)

Kind = Literal["meter", "inverter", "charge_controller", "battery_monitor"]
Driver = Literal["modbus", "sunspec", "vedirect"]
Transport = Literal["rtu", "tcp", "vedirect"]
Level = Literal["error", "warning", "info"]
Words = list[int] | None
Progress = Callable[[int, int, str], None]

VEDIRECT_BAUD: Final = 19200
#: Gateway exceptions meaning "nothing answers behind me at this unit id".
_GATEWAY_CODES: Final = frozenset({10, 11})

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundDevice:
    """One identified device and where it answered."""

    kind: Kind
    vendor: str
    model: str
    driver: Driver
    register_map: str  # "vendor/model" for driver "modbus", else ""
    transport: Transport
    serial_port: str = ""
    host: str = ""
    port: int | None = None
    baudrate: int | None = None
    parity: str | None = None
    unit_id: int | None = None
    serial_number: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """Human form: "/dev/ttyUSB0 9600 8N1 unit 1", "192.0.2.10:502 unit 1"."""
        if self.transport == "tcp":
            return f"{self.host}:{self.port} unit {self.unit_id}"
        line = f"{self.serial_port} {self.baudrate} 8{self.parity}1"
        return line if self.unit_id is None else f"{line} unit {self.unit_id}"

    @property
    def description(self) -> str:
        """Vendor and model, e.g. "Eastron SDM630"."""
        return f"{self.vendor} {self.model}".strip()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        out = asdict(self)
        out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class ScanIssue:
    """Something the installer should know: a port that failed, noise, a skipped framing."""

    where: str
    message: str
    level: Level = "error"


@dataclass
class ScanReport:
    """Everything one scan found and every problem on the way."""

    found: list[FoundDevice] = field(default_factory=list)
    issues: list[ScanIssue] = field(default_factory=list)
    probes: int = 0
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "found": [f.to_json() for f in self.found],
            "issues": [asdict(i) for i in self.issues],
            "probes": self.probes,
            "elapsed_s": round(self.elapsed_s, 2),
        }


@dataclass(frozen=True)
class ScanOptions:
    """What to probe and how long to wait. Defaults suit a Pi with a few RS-485 devices."""

    bauds: tuple[int, ...] = DEFAULT_BAUDS
    parities: tuple[str, ...] = ("N",)
    units: tuple[int, ...] = DEFAULT_UNITS
    sunspec_units: tuple[int, ...] = DEFAULT_SUNSPEC_UNITS
    tcp_units: tuple[int, ...] = DEFAULT_TCP_UNITS
    timeout_s: float = 0.25
    tcp_timeout_s: float = 1.0
    vedirect: bool = True
    vedirect_listen_s: float = 2.5
    vedirect_quiet_s: float = 1.5
    #: Requests without any answer after which a unit counts as absent (0 = try every rule).
    presence_probes_serial: int = 3
    presence_probes_tcp: int = 4
    #: Probe every framing even after one found devices (a line should have only one).
    all_framings: bool = False
    unit_switch_pause_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.bauds or any(b <= 0 for b in self.bauds):
            raise ValueError("baud rates must be positive")
        if not self.parities or any(p not in ("N", "E", "O") for p in self.parities):
            raise ValueError("parity must be N, E or O")
        for unit in (*self.units, *self.sunspec_units, *self.tcp_units):
            if not 1 <= unit <= 247:
                raise ValueError(f"unit id {unit} is outside 1..247")
        if self.timeout_s <= 0 or self.tcp_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    def serial_plan(self) -> list[tuple[int, tuple[str, ...]]]:
        """(unit id, rule families) per unit on a serial line, in probing order."""
        plan: list[tuple[int, tuple[str, ...]]] = [
            (u, SERIAL_ORDER) for u in dict.fromkeys(self.units)
        ]
        plan += [
            (u, ("sunspec",)) for u in dict.fromkeys(self.sunspec_units) if u not in self.units
        ]
        return plan

    def framings(self) -> list[tuple[int, str]]:
        return [(b, p) for p in dict.fromkeys(self.parities) for b in dict.fromkeys(self.bauds)]


# --------------------------------------------------------------------------------------------
# Pure identification rules (register words in, verdict out)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identification:
    """What a rule concluded about one unit."""

    kind: Kind
    vendor: str
    model: str
    driver: Driver
    register_map: str = ""
    serial_number: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def float32_abcd(words: Sequence[int]) -> float:
    """IEEE float from two registers, high word first (Eastron)."""
    return float(struct.unpack(">f", struct.pack(">HH", words[0], words[1]))[0])


def words_to_text(words: Sequence[int]) -> str:
    """Registers as ASCII, two characters each, high byte first; NULs and spaces stripped."""
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return raw.replace(b"\x00", b" ").decode("latin-1").strip()


def is_printable_model(words: Sequence[int]) -> bool:
    """Printable ASCII (NUL padding allowed) with at least 3 letters or digits."""
    raw = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\x00 ")
    if not raw or any(not (0x20 <= b < 0x7F) for b in raw):
        return False
    return sum(chr(b).isalnum() for b in raw) >= 3


def is_sunspec_marker(words: Words) -> bool:
    return words is not None and tuple(words[:2]) == SUNS_MARKER


def _plausible(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def identify_abb(model_id: Words) -> Identification | None:
    """ABB B23/B24: holding 0x8960 holds the model as four ASCII characters ("B23 ")."""
    if model_id is None or len(model_id) != 2:
        return None
    text = b"".join(w.to_bytes(2, "big") for w in model_id).decode("latin-1")
    if not re.fullmatch(r"B2[34][ \x00]", text):
        return None
    model = text.rstrip(" \x00")
    return Identification(
        "meter", "ABB", model, "modbus", "abb/b23", details={"model_id": f"0x{_u32(model_id):08X}"}
    )


def _u32(words: Sequence[int]) -> int:
    return (words[0] << 16) | words[1]


def identify_eastron(l1: Words, frequency: Words, l2_l3: Words) -> Identification | None:
    """Eastron SDM: FC04 0x0000 voltage 80-280 V and 0x0046 frequency 45-65 Hz (float32).

    SDM630 when L2 and L3 (0x0002, 0x0004) are plausible voltages too; SDM120 when they are
    refused (`l2_l3` None), zero or not voltages. An SDM630 wired single-phase looks like an
    SDM120; the details say so.
    """
    if l1 is None or frequency is None or len(l1) != 2 or len(frequency) != 2:
        return None
    volts, hz = float32_abcd(l1), float32_abcd(frequency)
    if not (_plausible(volts, 80.0, 280.0) and _plausible(hz, 45.0, 65.0)):
        return None
    details: dict[str, Any] = {"voltage_l1": round(volts, 1), "frequency": round(hz, 2)}
    three_phase = False
    if l2_l3 is not None and len(l2_l3) == 4:
        v2, v3 = float32_abcd(l2_l3[:2]), float32_abcd(l2_l3[2:])
        three_phase = _plausible(v2, 80.0, 280.0) and _plausible(v3, 80.0, 280.0)
        if three_phase:
            details.update(voltage_l2=round(v2, 1), voltage_l3=round(v3, 1))
    if three_phase:
        return Identification("meter", "Eastron", "SDM630", "modbus", "eastron/sdm630", "", details)
    details["note"] = "no L2/L3 voltage: SDM120 (or an SDM630 wired single-phase)"
    return Identification("meter", "Eastron", "SDM120", "modbus", "eastron/sdm120", "", details)


def identify_epever(pv_block: Words, soc: Words) -> Identification | None:
    """EPEver Tracer: FC04 0x3100.. PV voltage 0-200 V, battery voltage (0x3104) 8-70 V,
    SOC (0x311A) 0-100 %. `pv_block` is 5 registers from 0x3100."""
    if pv_block is None or soc is None or len(pv_block) < 5 or len(soc) != 1:
        return None
    pv_v, battery_v = pv_block[0] / 100, pv_block[4] / 100
    if not (0.0 <= pv_v <= 200.0 and 8.0 <= battery_v <= 70.0 and 0 <= soc[0] <= 100):
        return None
    details = {"pv_voltage": pv_v, "battery_voltage": battery_v, "battery_soc": soc[0]}
    return Identification(
        "charge_controller", "EPEver", "Tracer AN", "modbus", "epever/tracer-an", "", details
    )


def identify_renogy(model_string: Words, soc_voltage: Words) -> Identification | None:
    """Renogy Rover family: FC03 0x0100 SOC 0-100 % and 0x0101 battery voltage 8-70 V (0.1 V);
    the model string at 0x000C (16 bytes), when readable and printable, names the model."""
    if soc_voltage is None or len(soc_voltage) != 2:
        return None
    soc, battery_v = soc_voltage[0], soc_voltage[1] / 10
    if not (0 <= soc <= 100 and 8.0 <= battery_v <= 70.0):
        return None
    details: dict[str, Any] = {"battery_soc": soc, "battery_voltage": battery_v}
    model = "Rover"
    if model_string is not None and is_printable_model(model_string):
        model = words_to_text(model_string)
        details["model_string"] = model
    else:
        details["note"] = "no model string at 0x000C: identified by SOC and battery voltage"
    return Identification(
        "charge_controller", "Renogy", model, "modbus", "renogy/rover", "", details
    )


#: Victron product ids (VE.Direct protocol document, "PID"); unknown ids are shown as hex.
VICTRON_PIDS: Final[dict[int, str]] = {
    0x0203: "BMV-700",
    0x0204: "BMV-702",
    0x0205: "BMV-700H",
    0x0300: "BlueSolar MPPT 70/15",
    0xA042: "BlueSolar MPPT 75/15",
    0xA043: "BlueSolar MPPT 100/15",
    0xA053: "SmartSolar MPPT 75/15",
    0xA054: "SmartSolar MPPT 75/10",
    0xA055: "SmartSolar MPPT 100/15",
    0xA056: "SmartSolar MPPT 100/30",
    0xA389: "SmartShunt",
}


def identify_vedirect(fields: Mapping[str, str]) -> Identification | None:
    """A VE.Direct device from the fields of its checked blocks (PID, SER#, H19 ...)."""
    if not fields:
        return None
    pid_text = fields.get("PID", "")
    try:
        pid: int | None = int(pid_text, 16) if pid_text.lower().startswith("0x") else None
    except ValueError:
        pid = None
    model = VICTRON_PIDS.get(pid, f"PID 0x{pid:04X}") if pid is not None else "VE.Direct device"
    charger = "H19" in fields or "PPV" in fields or "VPV" in fields
    details: dict[str, Any] = {
        k: fields[k] for k in ("PID", "FW", "V", "PPV", "H19") if k in fields
    }
    if not charger:
        details["note"] = "no solar yield (H19): a battery monitor, not a generation source"
    return Identification(
        "charge_controller" if charger else "battery_monitor",
        "Victron",
        model,
        "vedirect",
        serial_number=fields.get("SER#", ""),
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Argument parsing helpers (shared with the CLI; pure)
# --------------------------------------------------------------------------------------------


def parse_int_list(text: str, what: str, low: int, high: int) -> tuple[int, ...]:
    """Parse `1-10,126,247` into (1, ..., 10, 126, 247); ValueError with a plain message."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise ValueError(f"{what}: {part!r} is not a number or a range like 1-10")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if first > last:
            raise ValueError(f"{what}: range {part!r} runs backwards")
        if first < low or last > high:
            raise ValueError(f"{what}: {part!r} is outside {low}..{high}")
        out.extend(range(first, last + 1))
    return tuple(dict.fromkeys(out))


def parse_host(text: str, default_port: int = DEFAULT_TCP_PORT) -> tuple[str, int]:
    """Parse `192.0.2.10`, `192.0.2.10:1502`, `[2001:db8::1]:502` or `inverter.local`."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if m:
        host, port_text = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    if not host or not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise ValueError(f"host {text!r} is not a host name or address")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"host {text!r}: port must be 1..65535")
        port = int(port_text)
    return host, port


def default_serial_ports(patterns: Iterable[str] = DEFAULT_SERIAL_GLOBS) -> list[str]:
    """Existing serial ports, one name per device: a stable /dev/gridmint-* alias wins over the
    /dev/ttyUSB* it points to (it survives replugging, so it belongs in the config)."""
    seen: dict[str, str] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            seen.setdefault(real, path)
    return list(seen.values())


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


class _Absent(Exception):
    """The unit did not answer any of the presence probes."""


class _PortGone(Exception):
    """The serial port vanished or cannot be used any more."""


def _missing(path: str) -> bool:
    return not os.path.exists(path)


class _Prober:
    """Reads for one unit: remembers whether it ever answered; gives up on a silent unit."""

    def __init__(self, bus: ModbusBus, unit_id: int, presence_probes: int, port_path: str = ""):
        self.bus, self.unit_id = bus, unit_id
        self.presence_probes = presence_probes
        self.port_path = port_path
        self.reads = 0
        self.answered = False
        self.garbled = False

    async def read(self, table: Literal["input", "holding"], address: int, count: int) -> Words:
        """Words, or None when refused (exception) or unanswered."""
        self.reads += 1
        try:
            words = await self.bus.read_registers(table, address, count, self.unit_id)
        except DeviceUnavailableError as exc:
            code = exc.exception_code
            if code is not None and code not in _GATEWAY_CODES:
                self.answered = True
                return None
            if code is None:
                if "garbled" in exc.reason:
                    self.garbled = True
                if self.port_path and _missing(self.port_path):
                    raise _PortGone(f"serial port {self.port_path} is gone") from exc
                if "no permission" in exc.reason or "cannot open" in exc.reason:
                    raise _PortGone(exc.reason) from exc
            if 0 < self.presence_probes <= self.reads and not self.answered:
                raise _Absent from exc
            return None
        self.answered = True
        return words


async def _rule_abb(p: _Prober) -> Identification | None:
    return identify_abb(await p.read("holding", 0x8960, 2))


async def _rule_eastron(p: _Prober) -> Identification | None:
    l1 = await p.read("input", 0x0000, 2)
    if l1 is None or not _plausible(float32_abcd(l1), 80.0, 280.0):
        return None
    frequency = await p.read("input", 0x0046, 2)
    if frequency is None:
        return None
    return identify_eastron(l1, frequency, await p.read("input", 0x0002, 4))


async def _rule_epever(p: _Prober) -> Identification | None:
    pv_block = await p.read("input", 0x3100, 5)
    if pv_block is None:
        return None
    return identify_epever(pv_block, await p.read("input", 0x311A, 1))


async def _rule_renogy(p: _Prober) -> Identification | None:
    model_string = await p.read("holding", 0x000C, 8)
    return identify_renogy(model_string, await p.read("holding", 0x0100, 2))


async def _rule_sunspec(p: _Prober) -> Identification | None:
    for base in DEFAULT_BASES:
        if not is_sunspec_marker(await p.read("holding", base, 2)):
            continue
        try:
            layout = await discover(p.bus, p.unit_id, bases=(base,), timeout_s=None)
        except DeviceUnavailableError as exc:
            return Identification(
                "inverter", "SunSpec", "(unreadable map)", "sunspec", details={"error": exc.reason}
            )
        kind: Kind = "inverter" if layout.inverter is not None else "meter"
        return Identification(
            kind,
            layout.manufacturer or "SunSpec",
            layout.model or f"models {layout.model_ids}",
            "sunspec",
            serial_number=layout.serial_number,
            details={"base": base, "models": list(layout.model_ids), "version": layout.version},
        )
    return None


_RULES: Final = {
    "abb": _rule_abb,
    "eastron": _rule_eastron,
    "epever": _rule_epever,
    "sunspec": _rule_sunspec,
    "renogy": _rule_renogy,
}
#: Serial order: identification register, strong FC04 signatures, SunSpec, then Renogy (whose
#: model-string address holds printable text on a SunSpec map at base 0).
SERIAL_ORDER: Final = ("abb", "eastron", "epever", "sunspec", "renogy")
TCP_ORDER: Final = ("sunspec", "abb", "eastron", "epever", "renogy")


async def identify_unit(
    bus: ModbusBus,
    unit_id: int,
    order: Sequence[str],
    presence_probes: int,
    port_path: str = "",
) -> tuple[Identification | None, bool, bool]:
    """Run the rules in `order` on one unit: (identification, answered at all, garbled seen)."""
    p = _Prober(bus, unit_id, presence_probes, port_path)
    try:
        for family in order:
            ident = await _RULES[family](p)
            if ident is not None:
                return ident, True, p.garbled
    except _Absent:
        return None, False, p.garbled
    return None, p.answered, p.garbled


@dataclass(frozen=True)
class VeDirectListen:
    """What listening on a port at 19200 baud gave."""

    fields: dict[str, str]
    blocks: int
    bytes_seen: int
    checksum_errors: int


def listen_vedirect(path: str, listen_s: float, quiet_s: float) -> VeDirectListen:
    """Blocking: listen on `path` at 19200 8N1 (DTR/RTS high, as the VE.Direct-USB cable
    needs) for up to `listen_s`, or `quiet_s` if no byte at all arrives. Raises OSError with a
    plain message when the port cannot be opened."""
    import serial  # pyserial

    port = serial.Serial()
    port.port = path
    port.baudrate = VEDIRECT_BAUD
    port.timeout = 0.1
    port.dtr = True
    port.rts = True
    try:
        port.open()
    except (serial.SerialException, OSError) as exc:
        raise OSError(_open_error(path, exc)) from exc
    parser = VeDirectParser()
    fields: dict[str, str] = {}
    seen = 0
    start = time.monotonic()
    try:
        port.reset_input_buffer()
        while (elapsed := time.monotonic() - start) < listen_s:
            if seen == 0 and elapsed >= quiet_s:
                break
            data = port.read(max(1, port.in_waiting))
            seen += len(data)
            for block in parser.feed(data):
                fields.update(block.fields)
            if parser.stats.blocks and "PID" in fields and "SER#" in fields:
                break
            if parser.stats.blocks >= 2:
                break
    except (serial.SerialException, OSError) as exc:
        raise OSError(f"serial port {path} failed while listening: {exc}") from exc
    finally:
        port.close()
    return VeDirectListen(fields, parser.stats.blocks, seen, parser.stats.checksum_errors)


def _open_error(path: str, exc: BaseException) -> str:
    if not os.path.exists(path):
        return f"serial port {path} does not exist"
    if isinstance(exc, PermissionError) or "Permission denied" in str(exc):
        return f"no permission to open {path} (is the user in the dialout group?)"
    if "busy" in str(exc).lower():
        return f"serial port {path} is in use by another program (stop the edge agent first)"
    return f"cannot open serial port {path}: {exc}"


class _Ticker:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, n: int, label: str) -> None:
        self.done += n
        if self.progress is not None and n:
            self.progress(self.done, self.total, label)


def _found(ident: Identification, **where: Any) -> FoundDevice:
    return FoundDevice(
        kind=ident.kind,
        vendor=ident.vendor,
        model=ident.model,
        driver=ident.driver,
        register_map=ident.register_map,
        serial_number=ident.serial_number,
        details=dict(ident.details),
        **where,
    )


async def _scan_serial(path: str, opts: ScanOptions, report: ScanReport, tick: _Ticker) -> None:
    plan = opts.serial_plan()
    framings = opts.framings()
    remaining = (1 if opts.vedirect else 0) + len(plan) * len(framings)
    if opts.vedirect:
        try:
            heard = await asyncio.to_thread(
                listen_vedirect, path, opts.vedirect_listen_s, opts.vedirect_quiet_s
            )
        except OSError as exc:
            report.issues.append(ScanIssue(path, str(exc)))
            tick(remaining, f"{path}: cannot open")
            return
        remaining -= 1
        ident = identify_vedirect(heard.fields) if heard.blocks else None
        if ident is not None:
            report.found.append(
                _found(
                    ident,
                    transport="vedirect",
                    serial_port=path,
                    baudrate=VEDIRECT_BAUD,
                    parity="N",
                )
            )
            tick(remaining + 1, f"{path}: VE.Direct {ident.model}")
            return
        tick(1, f"{path}: no VE.Direct")
        if heard.bytes_seen:
            report.issues.append(
                ScanIssue(
                    path,
                    f"{heard.bytes_seen} bytes arrived at 19200 baud without a valid VE.Direct "
                    f"block ({heard.checksum_errors} failed checksums): another program may be "
                    "polling this line; stop the edge agent while scanning",
                    "warning",
                )
            )
    for index, (baud, parity) in enumerate(framings):
        framing = f"{baud} 8{parity}1"
        bus = SerialBus(
            path,
            baud,
            parity,
            1,
            timeout_s=opts.timeout_s,
            retries=0,
            unit_switch_pause_s=opts.unit_switch_pause_s,
        )
        hits = 0
        garbled: list[int] = []
        try:
            try:
                await bus.connect()
            except DeviceUnavailableError as exc:
                report.issues.append(ScanIssue(path, exc.reason))
                tick(remaining, f"{path}: cannot open")
                return
            for unit_id, order in plan:
                try:
                    ident, _answered, noisy = await identify_unit(
                        bus, unit_id, order, opts.presence_probes_serial, path
                    )
                except _PortGone as exc:
                    report.issues.append(ScanIssue(path, str(exc)))
                    tick(remaining, f"{path}: gone")
                    return
                remaining -= 1
                if noisy:
                    garbled.append(unit_id)
                if ident is not None:
                    hits += 1
                    report.found.append(
                        _found(
                            ident,
                            transport="rtu",
                            serial_port=path,
                            baudrate=baud,
                            parity=parity,
                            unit_id=unit_id,
                        )
                    )
                label = f"{path} {framing} unit {unit_id}"
                tick(1, f"{label}: {ident.vendor} {ident.model}" if ident else label)
        finally:
            await bus.close()
        if garbled:
            units = ", ".join(str(u) for u in garbled)
            report.issues.append(
                ScanIssue(
                    f"{path} {framing}",
                    f"garbled answers from unit(s) {units}: wrong baud rate or parity, noise, "
                    "or a missing termination resistor",
                    "warning",
                )
            )
        if hits and not opts.all_framings and index + 1 < len(framings):
            skipped = len(plan) * (len(framings) - index - 1)
            remaining -= skipped
            tick(skipped, f"{path}: devices found at {framing}")
            report.issues.append(
                ScanIssue(
                    path,
                    f"devices answered at {framing}; other line settings were not probed "
                    "(every unit on one line shares them)",
                    "info",
                )
            )
            return


async def _scan_host(
    host: str, port: int, opts: ScanOptions, report: ScanReport, tick: _Ticker
) -> None:
    where = f"{host}:{port}"
    units = list(dict.fromkeys(opts.tcp_units))
    bus = TcpBus(host, port, timeout_s=opts.tcp_timeout_s, retries=0)
    seen: set[tuple[str, str, str]] = set()
    try:
        try:
            await bus.connect()
        except DeviceUnavailableError as exc:
            report.issues.append(ScanIssue(where, exc.reason))
            tick(len(units), f"{where}: no connection")
            return
        for unit_id in units:
            ident, _answered, _noisy = await identify_unit(
                bus, unit_id, TCP_ORDER, opts.presence_probes_tcp
            )
            if ident is not None:
                key = (ident.vendor, ident.model, ident.serial_number)
                if ident.serial_number and key in seen:
                    report.issues.append(
                        ScanIssue(
                            f"{where} unit {unit_id}",
                            f"same {ident.vendor} {ident.model} ({ident.serial_number}) as on "
                            "an earlier unit id: the device ignores the unit id",
                            "info",
                        )
                    )
                else:
                    seen.add(key)
                    report.found.append(
                        _found(ident, transport="tcp", host=host, port=port, unit_id=unit_id)
                    )
            label = f"{where} unit {unit_id}"
            tick(1, f"{label}: {ident.vendor} {ident.model}" if ident else label)
    finally:
        await bus.close()


def count_probes(ports: Sequence[str], hosts: Sequence[tuple[str, int]], opts: ScanOptions) -> int:
    """Progress steps a scan of `ports` and `hosts` takes (one per unit and framing)."""
    per_port = (1 if opts.vedirect else 0) + len(opts.serial_plan()) * len(opts.framings())
    return len(ports) * per_port + len(hosts) * len(dict.fromkeys(opts.tcp_units))


async def scan(
    ports: Sequence[str] = (),
    hosts: Sequence[tuple[str, int]] = (),
    options: ScanOptions | None = None,
    progress: Progress | None = None,
) -> ScanReport:
    """Probe every serial port and (host, port) concurrently; one task per port or host, the
    requests on one port strictly one after the other. `progress(done, total, label)` is called
    after every unit probe."""
    opts = options or ScanOptions()
    report = ScanReport()
    ports = list(dict.fromkeys(os.fspath(p) for p in ports))
    hosts = list(dict.fromkeys(hosts))
    tick = _Ticker(count_probes(ports, hosts, opts), progress)
    started = time.monotonic()
    jobs = [_scan_serial(p, opts, report, tick) for p in ports]
    jobs += [_scan_host(h, port, opts, report, tick) for h, port in hosts]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    targets = [*ports, *(f"{h}:{p}" for h, p in hosts)]
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError | KeyboardInterrupt):
                raise result
            report.issues.append(
                ScanIssue(target, f"scan failed: {type(result).__name__}: {result}")
            )
    report.probes = tick.done
    report.elapsed_s = time.monotonic() - started
    order = {t: i for i, t in enumerate(targets)}
    report.found.sort(
        key=lambda f: (
            order.get(f.serial_port or f"{f.host}:{f.port}", 0),
            f.unit_id or 0,
        )
    )
    return report


# --------------------------------------------------------------------------------------------
# Edge config
# --------------------------------------------------------------------------------------------

_SHORT_NAMES: Final = {
    "eastron/sdm630": "sdm630",
    "eastron/sdm120": "sdm120",
    "abb/b23": "abb",
    "epever/tracer-an": "epever",
    "renogy/rover": "renogy",
}


def suggested_name(found: FoundDevice) -> str:
    """A short meter name: "sdm630-1", "epever-2", "inverter-1", "victron"."""
    if found.driver == "vedirect":
        return "victron"
    base = _SHORT_NAMES.get(found.register_map) or (
        "inverter" if found.kind == "inverter" else "meter"
    )
    return f"{base}-{found.unit_id}" if found.unit_id is not None else base


def to_meter_settings(found: FoundDevice, name: str | None = None) -> dict[str, Any]:
    """The `[[meters]]` entry (MeterSettings fields) for a found device, with suggested
    channels: meters -> imported/exported, charge controllers -> generated (+ soc), SunSpec
    inverters -> generated from ac_energy_wh, VE.Direct -> generated from yield_total_wh.

    A meter on a PV inverter's output counts generation as export: change its channels to
    `{ generated = "export_energy" }` by hand (the scan cannot tell where a meter sits).
    """
    entry: dict[str, Any] = {"name": name or suggested_name(found), "driver": found.driver}
    if found.driver == "modbus":
        entry["register_map"] = found.register_map
    if found.driver == "vedirect":
        entry["serial_port"] = found.serial_port
    elif found.transport == "rtu":
        entry.update(
            transport="rtu",
            serial_port=found.serial_port,
            baudrate=found.baudrate,
            parity=found.parity,
            stopbits=1,
            unit_id=found.unit_id,
        )
    else:
        entry.update(transport="tcp", host=found.host, port=found.port, unit_id=found.unit_id)
    if found.serial_number:
        entry["serial"] = found.serial_number
    channels: dict[str, str] = {}
    soc = ""
    if found.driver == "vedirect":
        if found.kind == "charge_controller":
            channels = {"generated": "yield_total_wh"}
    elif found.driver == "sunspec":
        if found.kind == "inverter":
            channels = {"generated": "ac_energy_wh"}
        else:
            channels = {"imported": "import_energy_wh", "exported": "export_energy_wh"}
    elif found.kind == "meter":
        channels = {"imported": "import_energy", "exported": "export_energy"}
    elif found.kind == "charge_controller":
        channels = {"generated": "generated_energy"}
        soc = "battery_soc"
    entry["channels"] = channels
    if soc:
        entry["soc"] = soc
    return entry


class ConfigWriteError(ValueError):
    """The edge config cannot be updated; the file is left as it was."""


@dataclass
class WriteResult:
    """Names of the entries added, and the devices left out with the reason."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[FoundDevice, str]] = field(default_factory=list)
    created: bool = False


MINIMAL_CONFIG: Final = """\
# Edge agent configuration started by `gridmint provision scan --write`.
# Replace the placeholders before starting the agent (firmware-configs/edge/example.toml shows
# every setting). Paths are relative to this file.
device_id = "CHANGE-ME-device"
site_id = "CHANGE-ME-site"
key_file = "device.key"
state_db = "edge.sqlite"
"""


def _port_key(path: str) -> str:
    return os.path.realpath(path) if os.path.exists(path) else os.path.normpath(path)


def _entry_keys(entry: Mapping[str, Any]) -> set[tuple[str, ...]]:
    """What an entry occupies: a serial port + unit (or the whole port for VE.Direct), or a
    TCP endpoint + unit. MeterSettings defaults apply to absent fields."""
    driver = entry.get("driver", "modbus")
    unit = str(entry.get("unit_id", 1))
    if driver == "vedirect":
        return {("serial", _port_key(str(entry.get("serial_port", ""))), "*")}
    if entry.get("transport", "tcp") == "rtu":
        return {("serial", _port_key(str(entry.get("serial_port", ""))), unit)}
    host = str(entry.get("host", "127.0.0.1")).lower()
    return {("tcp", host, str(entry.get("port", 502)), unit)}


def _conflicts(keys: set[tuple[str, ...]], taken: set[tuple[str, ...]]) -> bool:
    for key in keys:
        if key in taken:
            return True
        # A VE.Direct port cannot also carry Modbus, nor the reverse.
        if key[0] == "serial" and any(
            t[0] == "serial" and t[1] == key[1] and "*" in (t[2], key[2]) for t in taken
        ):
            return True
    return False


def toml_string(value: str) -> str:
    """A TOML basic string with every character TOML requires escaped."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return toml_string(str(value))


def render_meter(entry: Mapping[str, Any], comment: str = "") -> str:
    """One `[[meters]]` table as TOML text."""
    lines = []
    if comment:
        lines += [f"# {line}" for line in comment.splitlines()]
    lines.append("[[meters]]")
    lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def _comment(found: FoundDevice) -> str:
    text = f"found by gridmint provision scan: {found.description} at {found.where}"
    if found.driver == "modbus" and found.kind == "meter":
        text += (
            "\nchannels: a meter on the PV inverter output counts generation as export;"
            '\nuse channels = { generated = "export_energy" } there'
        )
    return text


def write_config(path: str | os.PathLike[str], found_list: Iterable[FoundDevice]) -> WriteResult:
    """Append a `[[meters]]` entry per found device to the edge TOML at `path`.

    A missing file is created with placeholders for device_id, site_id, key_file and state_db.
    Existing text is kept byte for byte; a device whose serial port + unit id (or host, port
    and unit id) is already configured is skipped; names are made unique ("sdm630-1-2"). The
    result is checked to be valid TOML before the file is replaced (atomically).
    """
    file = Path(path)
    result = WriteResult()
    created = not file.exists()
    try:
        text = "" if created else file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigWriteError(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigWriteError(f"{file} is not valid TOML ({exc}); not changed") from exc
    meters = doc.get("meters", [])
    if not isinstance(meters, list):
        raise ConfigWriteError(f"{file}: meters is not a list of tables; not changed")
    names = {str(m.get("name", "")) for m in meters if isinstance(m, dict)}
    taken: set[tuple[str, ...]] = set()
    for m in meters:
        if isinstance(m, dict):
            taken |= _entry_keys(m)
    blocks: list[str] = []
    for found in found_list:
        entry = to_meter_settings(found)
        keys = _entry_keys(entry)
        if _conflicts(keys, taken):
            result.skipped.append((found, f"{found.where} is already in {file.name}"))
            continue
        name, n = entry["name"], 2
        while name in names:
            name, n = f"{entry['name']}-{n}", n + 1
        entry["name"] = name
        names.add(name)
        taken |= keys
        blocks.append(render_meter(entry, _comment(found)))
        result.added.append(name)
    if not blocks:
        return result
    base = MINIMAL_CONFIG if created else text
    if base and not base.endswith("\n"):
        base += "\n"
    new_text = base + "".join("\n" + block for block in blocks)
    try:
        tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:  # e.g. an inline `meters = [...]` array
        raise ConfigWriteError(
            f"{file}: appending [[meters]] tables would not be valid TOML ({exc}); not changed"
        ) from exc
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(new_text, encoding="utf-8")
        if not created:
            os.chmod(tmp, file.stat().st_mode & 0o7777)
        os.replace(tmp, file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigWriteError(f"cannot write {file}: {exc.strerror or exc}") from exc
    result.created = created
    return result
