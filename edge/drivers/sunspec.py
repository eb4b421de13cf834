"""SunSpec devices (inverters 101-103, meters 201-204, controls 123, storage 124): discovery,
reading and writing.

Owns: `discover` (find the "SunS" marker, walk the model chain, read the common model),
`SunSpecDevice` (read named quantities in plain units, read and write points by name), the
point tables loaded from firmware-configs/sunspec/models.toml, and the pure decoders and
encoders for SunSpec point types.

A SunSpec device describes its own register map: a marker at a base address, then a chain of
models, each a header (ID, L) followed by L registers. The driver therefore needs no per-vendor
map, only the model definitions, and must walk by each model's L as the device announces it:
SolarEdge's common model has L = 65 instead of 66, which moves every later model by one.

Reads go through a `RegisterReader` (one async method), so the same driver runs over Modbus
TCP, RTU or a test double. Each model's points are read in one request together with their
scale factors, and a scale factor is never cached: devices change them with the value (Fronius
changes W_SF/DCW_SF with power; a stale SF is off by a factor of ten, sunspec/pysunspec2#42).
"Not implemented" sentinels make a quantity missing (left out of the result), never zero.

Writes (`SunSpecDevice.write_points`) need a reader that can also write (`RegisterWriter`, which
edge/transports/modbus_bus.py's buses are). A value in engineering units is turned into a raw
count with the scale factor the device announces at that moment (read just before the write),
and only points marked `access = "RW"` in models.toml are written.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

from edge.drivers.modbus_generic import DeviceUnavailableError

Table = Literal["holding", "input"]
Family = Literal["inverter", "meter", "storage"]


class RegisterReader(Protocol):
    """The one bus operation the driver needs (a Modbus TCP or RTU bus implements it).

    Reads `count` registers from `address` (0-based wire address) of `unit_id`; raises
    DeviceUnavailableError on a timeout, a lost connection or a Modbus exception response
    (with `exception_code` set for the latter).
    """

    async def read_registers(
        self, table: Table, address: int, count: int, unit_id: int
    ) -> list[int]: ...


@runtime_checkable
class RegisterWriter(Protocol):
    """What a write needs on top of reading: FC16 to holding registers of `unit_id`; raises
    DeviceUnavailableError (with `exception_code` for a Modbus exception answer)."""

    async def write_registers(self, address: int, values: Sequence[int], unit_id: int) -> None: ...


#: "SunS" as two big-endian registers.
SUNS_MARKER: Final = (0x5375, 0x6E53)
#: Base addresses to probe, in order (wire addresses; "40001" in 1-based documentation).
DEFAULT_BASES: Final = (40000, 0, 50000)
END_MODEL_ID: Final = 0xFFFF
INVERTER_MODELS: Final = (101, 102, 103)
METER_MODELS: Final = (201, 202, 203, 204)
#: FC03 limit per request.
MAX_READ_REGISTERS: Final = 125
#: More models than this in one chain means the walk is going in circles or reading garbage.
MAX_MODELS: Final = 100
#: Scale factors outside this range are treated as invalid (the spec allows -10..10).
SF_RANGE: Final = range(-10, 11)
_POW10: Final[dict[int, int]] = {k: 10**k for k in range(11)}
#: Exception 2 (illegal data address): the register does not exist (or is not writable).
_ILLEGAL_ADDRESS: Final = 2
#: Exception 3 (illegal data value): the device refuses the value written.
_ILLEGAL_VALUE: Final = 3


class SunSpecModelError(ValueError):
    """The model-definition file is unusable; the message names the file and the point."""


# --------------------------------------------------------------------------------------------
# Model definitions (firmware-configs/sunspec/models.toml)
# --------------------------------------------------------------------------------------------

#: Registers per point type; None = given per point (strings).
_TYPE_SIZES: Final[dict[str, int | None]] = {
    "uint16": 1,
    "int16": 1,
    "acc16": 1,
    "enum16": 1,
    "bitfield16": 1,
    "sunssf": 1,
    "pad": 1,
    "uint32": 2,
    "int32": 2,
    "acc32": 2,
    "enum32": 2,
    "bitfield32": 2,
    "float32": 2,
    "acc64": 4,
    "string": None,
}


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a model; `offset` counts from the model's ID register (ID = 0, L = 1)."""

    name: str
    offset: int
    type: str
    size: int
    sf: str | None = None
    units: str = ""
    writable: bool = False


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A SunSpec model as defined by the SunSpec Alliance (not as a device implements it)."""

    id: int
    name: str
    length: int
    source: str
    points: Mapping[str, Point]


def sunspec_models_path() -> Path:
    """Where models.toml is: $GRIDMINT_FIRMWARE_CONFIGS/sunspec, the checkout, or the wheel."""
    candidates: list[Path] = []
    env = os.environ.get("GRIDMINT_FIRMWARE_CONFIGS")
    if env:
        candidates.append(Path(env) / "sunspec" / "models.toml")
    root = Path(__file__).resolve().parents[2]
    candidates.append(root / "firmware-configs" / "sunspec" / "models.toml")
    candidates.append(root / "gridmint" / "firmware-configs" / "sunspec" / "models.toml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(c) for c in candidates)
    raise SunSpecModelError(f"SunSpec model definitions not found (searched {where})")


def load_model_defs(path: str | os.PathLike[str] | None = None) -> dict[int, ModelDef]:
    """Load and check the point tables; the default file is loaded once per process."""
    if path is None:
        return _default_model_defs()
    return _load_model_defs(Path(path))


@cache
def _default_model_defs() -> dict[int, ModelDef]:
    return _load_model_defs(sunspec_models_path())


def _load_model_defs(file: Path) -> dict[int, ModelDef]:
    try:
        with file.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise SunSpecModelError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SunSpecModelError(f"{file}: not valid TOML: {exc}") from exc
    raw_models = doc.get("models")
    if not isinstance(raw_models, dict) or not raw_models:
        raise SunSpecModelError(f"{file}: models: expected a non-empty table")
    tables: dict[int, list[Point]] = {}
    for key, raw in raw_models.items():
        if isinstance(raw, dict) and "points" in raw:
            tables[_model_id(file, key)] = _parse_points(file, key, raw["points"])
    models: dict[int, ModelDef] = {}
    for key, raw in raw_models.items():
        model_id = _model_id(file, key)
        where = f"{file}: models.{key}"
        if not isinstance(raw, dict):
            raise SunSpecModelError(f"{where}: expected a table")
        length, name, source = raw.get("length"), raw.get("name"), raw.get("source")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length < 0xFFFF:
            raise SunSpecModelError(f"{where}.length: expected a positive integer")
        if not isinstance(name, str) or not isinstance(source, str):
            raise SunSpecModelError(f"{where}: name and source must be text")
        if "points" in raw:
            points = tables[model_id]
        else:
            layout = raw.get("layout")
            if not isinstance(layout, int) or layout not in tables:
                raise SunSpecModelError(
                    f"{where}: needs points or a layout naming a model that has points"
                )
            points = tables[layout]
        _check_points(where, points, length)
        models[model_id] = ModelDef(model_id, name, length, source, {p.name: p for p in points})
    return models


def _model_id(file: Path, key: str) -> int:
    try:
        model_id = int(key)
    except ValueError:
        raise SunSpecModelError(f"{file}: models.{key}: model ids must be integers") from None
    if not 1 <= model_id < END_MODEL_ID:
        raise SunSpecModelError(f"{file}: models.{key}: model id out of range")
    return model_id


def _parse_points(file: Path, key: str, raw_points: Any) -> list[Point]:
    where = f"{file}: models.{key}.points"
    if not isinstance(raw_points, list) or not raw_points:
        raise SunSpecModelError(f"{where}: expected a non-empty list")
    points: list[Point] = []
    for raw in raw_points:
        if not isinstance(raw, dict):
            raise SunSpecModelError(f"{where}: every point must be a table")
        unknown = set(raw) - {"name", "offset", "type", "size", "sf", "units", "access"}
        name, offset, ptype = raw.get("name"), raw.get("offset"), raw.get("type")
        if unknown or not isinstance(name, str) or not isinstance(offset, int):
            raise SunSpecModelError(f"{where}: bad point {raw!r}")
        if ptype not in _TYPE_SIZES:
            raise SunSpecModelError(f"{where}: {name}: unknown type {ptype!r}")
        size = _TYPE_SIZES[ptype]
        if size is None:
            size = raw.get("size")
            if not isinstance(size, int) or size < 1:
                raise SunSpecModelError(f"{where}: {name}: strings need a size in registers")
        elif "size" in raw and raw["size"] != size:
            raise SunSpecModelError(f"{where}: {name}: {ptype} has {size} registers")
        sf, units = raw.get("sf"), raw.get("units", "")
        if (sf is not None and not isinstance(sf, str)) or not isinstance(units, str):
            raise SunSpecModelError(f"{where}: {name}: sf and units must be text")
        access = raw.get("access", "R")
        if access not in ("R", "RW"):
            raise SunSpecModelError(f'{where}: {name}: access must be "R" or "RW"')
        points.append(Point(name, offset, ptype, size, sf, units, access == "RW"))
    return points


def _check_points(where: str, points: list[Point], length: int) -> None:
    by_name: dict[str, Point] = {}
    used: set[int] = set()
    for p in points:
        if p.name in by_name:
            raise SunSpecModelError(f"{where}: point {p.name} defined twice")
        by_name[p.name] = p
        span = set(range(p.offset, p.offset + p.size))
        if p.offset < 0 or p.offset + p.size > 2 + length or span & used:
            raise SunSpecModelError(f"{where}: point {p.name} overlaps or is outside the model")
        used |= span
    for p in points:
        if p.sf is not None and (p.sf not in by_name or by_name[p.sf].type != "sunssf"):
            raise SunSpecModelError(f"{where}: {p.name}: sf {p.sf} is not a sunssf point")


# --------------------------------------------------------------------------------------------
# Pure decoders
# --------------------------------------------------------------------------------------------


def _check_words(words: Sequence[int], count: int) -> None:
    if len(words) != count:
        raise ValueError(f"expected {count} registers, got {len(words)}")
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"register value {w!r} is not a 16-bit word")


def decode_point(point: Point, words: Sequence[int]) -> float | None:
    """The raw (unscaled) value of a numeric point, or None when it reads "not implemented".

    Multi-register values are big-endian, high word first, as SunSpec requires.
    """
    _check_words(words, point.size)
    raw = 0
    for w in words:
        raw = (raw << 16) | w
    t = point.type
    if t in ("uint16", "enum16", "bitfield16"):
        return None if raw == 0xFFFF else float(raw)
    if t in ("int16", "sunssf"):
        return None if raw == 0x8000 else float(raw - 0x10000 if raw & 0x8000 else raw)
    if t in ("uint32", "enum32", "bitfield32"):
        return None if raw == 0xFFFFFFFF else float(raw)
    if t == "int32":
        return None if raw == 0x80000000 else float(raw - (1 << 32) if raw >> 31 else raw)
    if t in ("acc16", "acc32", "acc64"):
        return None if raw == 0 else float(raw)
    if t == "float32":
        value = struct.unpack(">f", raw.to_bytes(4, "big"))[0]
        return None if math.isnan(value) else float(value)
    raise ValueError(f"{point.name}: {t} is not a numeric point type")


def decode_sf(word: int) -> int | None:
    """A sunssf register as a power of ten, or None when not implemented or out of range."""
    _check_words([word], 1)
    if word == 0x8000:
        return None
    sf = word - 0x10000 if word & 0x8000 else word
    return sf if sf in SF_RANGE else None


def decode_string(words: Sequence[int]) -> str:
    """A SunSpec string: two ASCII characters per register, NUL-padded; trailing blanks cut."""
    _check_words(words, len(words))
    data = b"".join(w.to_bytes(2, "big") for w in words)
    return data.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()


def apply_sf(raw: float, sf: int) -> float:
    """raw * 10^sf, dividing for negative sf so 2305 with sf -1 gives exactly 230.5."""
    return raw / _POW10[-sf] if sf < 0 else raw * _POW10[sf]


#: Raw ranges a written value must fit, per type (the "not implemented" patterns excluded).
_WRITE_RANGES: Final[dict[str, tuple[int, int]]] = {
    "uint16": (0, 0xFFFE),
    "enum16": (0, 0xFFFE),
    "bitfield16": (0, 0x7FFF),
    "int16": (-0x7FFF, 0x7FFF),
}


def encode_point(point: Point, value: float, sf: int | None) -> list[int]:
    """The register words that make `point` read `value` (engineering units) at scale factor
    `sf` (None for a point without one). Raises ValueError with a plain message when the value
    does not fit the point's type, or the point's type cannot be written here."""
    limits = _WRITE_RANGES.get(point.type)
    if limits is None:
        raise ValueError(f"{point.name}: writing {point.type} points is not supported")
    if not math.isfinite(value):
        raise ValueError(f"{point.name}: {value} is not a number")
    raw = round(value / 10.0**sf) if sf is not None else round(value)
    low, high = limits
    if not low <= raw <= high:
        unit = f" {point.units}" if point.units else ""
        shown = (
            f"{apply_sf(low, sf):g}..{apply_sf(high, sf):g}"
            if sf is not None
            else (f"{low}..{high}")
        )
        raise ValueError(f"{point.name}: {value:g}{unit} is outside {shown}")
    return [raw & 0xFFFF]


def scaled_value(model: ModelDef, point_name: str, body: Sequence[int]) -> float | None:
    """Decode `point_name` (with its scale factor) from the registers of a model read.

    `body` holds the model's registers from the ID register on (body[0] = ID), possibly fewer
    than the definition if the device's L is shorter: points past the end are missing.
    """
    point = model.points[point_name]
    if point.offset + point.size > len(body):
        return None
    raw = decode_point(point, body[point.offset : point.offset + point.size])
    if raw is None:
        return None
    if point.sf is None:
        return raw
    sf_point = model.points[point.sf]
    if sf_point.offset >= len(body):
        return None
    sf = decode_sf(body[sf_point.offset])
    return None if sf is None else apply_sf(raw, sf)


# --------------------------------------------------------------------------------------------
# Quantities: what the agent asks for, in plain units
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuantityInfo:
    """A named quantity: its unit, whether it is a lifetime energy counter, and its source.

    `points` are tried in order; the first one the device implements gives the value.
    """

    unit: str
    lifetime_energy: bool
    family: Family
    points: tuple[str, ...]
    description: str


INVERTER_QUANTITIES: Final[dict[str, QuantityInfo]] = {
    "ac_power_w": QuantityInfo("W", False, "inverter", ("W",), "AC output power"),
    "ac_energy_wh": QuantityInfo(
        "Wh", True, "inverter", ("WH",), "lifetime AC energy produced (acc32, WH_SF)"
    ),
    "dc_power_w": QuantityInfo("W", False, "inverter", ("DCW",), "DC input power"),
    "ac_voltage_v": QuantityInfo("V", False, "inverter", ("PhVphA",), "AC voltage, phase A-N"),
    "frequency_hz": QuantityInfo("Hz", False, "inverter", ("Hz",), "grid frequency"),
    "status": QuantityInfo(
        "", False, "inverter", ("St",), "operating state: 1 off, 2 sleeping, 4 MPPT, 7 fault ..."
    ),
}
METER_QUANTITIES: Final[dict[str, QuantityInfo]] = {
    "total_power_w": QuantityInfo("W", False, "meter", ("W",), "total real power"),
    "import_energy_wh": QuantityInfo(
        "Wh", True, "meter", ("TotWhImp",), "lifetime energy imported (TotWhImp)"
    ),
    "export_energy_wh": QuantityInfo(
        "Wh", True, "meter", ("TotWhExp",), "lifetime energy exported (TotWhExp)"
    ),
    "frequency_hz": QuantityInfo("Hz", False, "meter", ("Hz",), "grid frequency"),
    "voltage_v": QuantityInfo(
        "V", False, "meter", ("PhV", "PhVphA"), "line-to-neutral voltage (average, else A-N)"
    ),
}
#: Model 124 (basic storage controls) on a battery inverter.
STORAGE_MODEL: Final = 124
STORAGE_QUANTITIES: Final[dict[str, QuantityInfo]] = {
    "state_of_charge_pct": QuantityInfo(
        "%", False, "storage", ("ChaState",), "battery state of charge, % of capacity (ChaState)"
    ),
}
KNOWN_QUANTITIES: Final = (
    frozenset(INVERTER_QUANTITIES) | frozenset(METER_QUANTITIES) | frozenset(STORAGE_QUANTITIES)
)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelBlock:
    """One model as a device lays it out: ID register at `address`, `length` registers after
    the two-register header."""

    id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """Address of the next model's header."""
        return self.address + 2 + self.length


@dataclass(frozen=True, slots=True)
class SunSpecLayout:
    """What discovery found on one unit: where the map starts, its models, its identity."""

    unit_id: int
    base: int
    models: tuple[ModelBlock, ...]
    manufacturer: str = ""
    model: str = ""
    options: str = ""
    version: str = ""
    serial_number: str = ""
    device_address: int | None = None
    end_marker: bool = True

    @property
    def model_ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.models)

    def first(self, model_ids: Iterable[int]) -> ModelBlock | None:
        """The first model in the chain whose id is one of `model_ids`."""
        wanted = set(model_ids)
        return next((m for m in self.models if m.id in wanted), None)

    @property
    def inverter(self) -> ModelBlock | None:
        return self.first(INVERTER_MODELS)

    @property
    def meter(self) -> ModelBlock | None:
        return self.first(METER_MODELS)

    def describe(self) -> str:
        """One line for logs: "Fronius Symo 8.2-3-M (SN 123) at 40000: models 1, 103, 160"."""
        who = " ".join(s for s in (self.manufacturer, self.model) if s) or "unknown device"
        serial = f" (SN {self.serial_number})" if self.serial_number else ""
        ids = ", ".join(str(i) for i in self.model_ids)
        return f"{who}{serial} at {self.base} on unit {self.unit_id}: models {ids}"


class _Bus:
    """The reader plus the unit id, the outer timeout and plain-language errors."""

    def __init__(self, reader: RegisterReader, unit_id: int, timeout_s: float | None) -> None:
        self.reader, self.unit_id, self.timeout_s = reader, unit_id, timeout_s

    async def read(self, address: int, count: int) -> list[int]:
        try:
            async with asyncio.timeout(self.timeout_s):
                words = await self.reader.read_registers("holding", address, count, self.unit_id)
        except TimeoutError as exc:
            raise DeviceUnavailableError(
                f"no answer from unit {self.unit_id} within {self.timeout_s:g} s "
                f"(read of {count} at {address})"
            ) from exc
        except OSError as exc:
            raise DeviceUnavailableError(
                f"read of {count} at {address} from unit {self.unit_id} failed: {exc}"
            ) from exc
        words = list(words)
        if len(words) != count or not all(0 <= w <= 0xFFFF for w in words):
            raise DeviceUnavailableError(
                f"unit {self.unit_id} returned {len(words)} registers for a read of {count} "
                f"at {address}"
            )
        return words

    async def write(self, address: int, words: Sequence[int], what: str) -> None:
        writer = self.reader
        if not isinstance(writer, RegisterWriter):
            raise DeviceUnavailableError(f"unit {self.unit_id}: this connection cannot write")
        try:
            async with asyncio.timeout(self.timeout_s):
                await writer.write_registers(address, list(words), self.unit_id)
        except TimeoutError as exc:
            raise DeviceUnavailableError(
                f"no answer from unit {self.unit_id} within {self.timeout_s:g} s (write of {what})"
            ) from exc
        except OSError as exc:
            raise DeviceUnavailableError(
                f"write of {what} to unit {self.unit_id} failed: {exc}"
            ) from exc
        except DeviceUnavailableError as exc:
            code = _exception_code(exc)
            if code == _ILLEGAL_ADDRESS:
                reason = f"unit {self.unit_id} refused the write of {what}: not writable here"
            elif code == _ILLEGAL_VALUE:
                reason = f"unit {self.unit_id} refused the write of {what}: value not accepted"
            else:
                reason = f"write of {what} to unit {self.unit_id} failed: {exc.reason}"
            raise DeviceUnavailableError(reason, exception_code=code) from exc

    async def read_span(self, address: int, count: int) -> list[int]:
        """Read `count` registers in requests of at most 125."""
        words: list[int] = []
        while len(words) < count:
            n = min(MAX_READ_REGISTERS, count - len(words))
            words += await self.read(address + len(words), n)
        return words


def _exception_code(exc: DeviceUnavailableError) -> int | None:
    code = getattr(exc, "exception_code", None)
    return code if isinstance(code, int) else None


async def discover(
    reader: RegisterReader,
    unit_id: int,
    *,
    bases: Sequence[int] = DEFAULT_BASES,
    timeout_s: float | None = 5.0,
    model_defs: Mapping[int, ModelDef] | None = None,
) -> SunSpecLayout:
    """Find the SunSpec map of `unit_id` and return its layout.

    Probes each base in order for the "SunS" marker; a timeout or error at one base only moves
    on to the next. Then walks the model chain by each model's own L until the end marker
    0xFFFF (whose L may be missing), the end of the readable registers or a zero model ID
    (zero-filled space), skipping models it has no definition for, and reads the common model
    (1) for identification. Raises DeviceUnavailableError when no base has the marker or
    the chain cannot be read.
    """
    bus = _Bus(reader, unit_id, timeout_s)
    defs = model_defs if model_defs is not None else load_model_defs()
    problems: list[str] = []
    for base in bases:
        try:
            marker = await bus.read(base, 2)
        except DeviceUnavailableError as exc:
            problems.append(f"{base}: {exc.reason}")
            continue
        except Exception as exc:  # a reader that breaks its contract still must not end the scan
            problems.append(f"{base}: {type(exc).__name__}: {exc}")
            continue
        if tuple(marker) != SUNS_MARKER:
            problems.append(f"{base}: read 0x{marker[0]:04X} 0x{marker[1]:04X}")
            continue
        models, end_marker = await _walk(bus, base)
        return await _identify(bus, base, tuple(models), end_marker, defs)
    where = ", ".join(str(b) for b in bases[:-1]) + " or " if len(bases) > 1 else ""
    where += str(bases[-1]) if bases else "no base"
    raise DeviceUnavailableError(
        f"no SunSpec marker at {where} on unit {unit_id} ({'; '.join(problems)})"
    )


async def _walk(bus: _Bus, base: int) -> tuple[list[ModelBlock], bool]:
    """Follow the model chain from `base`; returns the models and whether 0xFFFF ended it."""
    models: list[ModelBlock] = []
    address = base + 2
    while len(models) <= MAX_MODELS:
        if address > 0xFFFF:
            return models, False
        header = await _read_header(bus, address, have_models=bool(models))
        if header is None:  # readable registers end without an end marker
            return models, False
        model_id, length = header
        if model_id == END_MODEL_ID:
            return models, True
        if model_id == 0:  # zero-filled space after the last model: there is no model 0
            return models, False
        if length is None or address + 2 + length > 0x10000:
            raise DeviceUnavailableError(
                f"SunSpec map at {base} on unit {bus.unit_id}: model {model_id} at {address} "
                f"has no usable length"
            )
        models.append(ModelBlock(model_id, address, length))
        address += 2 + length
    raise DeviceUnavailableError(
        f"SunSpec map at {base} on unit {bus.unit_id}: more than {MAX_MODELS} models "
        "(the chain does not end)"
    )


async def _read_header(
    bus: _Bus, address: int, *, have_models: bool
) -> tuple[int, int | None] | None:
    """(ID, L) at `address`; L is None at an end marker that lacks it; None if nothing is there.

    Some devices stop the register space right after the 0xFFFF end marker (no L), others end
    the map without any marker (SMA, per OpenEMS): both answer the two-register read with
    exception 2, so a one-register read decides.
    """
    try:
        model_id, length = await bus.read(address, 2)
        return model_id, length
    except DeviceUnavailableError as exc:
        if _exception_code(exc) is None:
            raise
        first_error = exc
    try:
        (model_id,) = await bus.read(address, 1)
    except DeviceUnavailableError as exc:
        if have_models and _exception_code(exc) == _ILLEGAL_ADDRESS:
            return None
        raise first_error from exc
    if model_id == END_MODEL_ID:
        return model_id, None
    raise first_error


async def _identify(
    bus: _Bus,
    base: int,
    models: tuple[ModelBlock, ...],
    end_marker: bool,
    defs: Mapping[int, ModelDef],
) -> SunSpecLayout:
    common = next((m for m in models if m.id == 1), None)
    layout = SunSpecLayout(bus.unit_id, base, models, end_marker=end_marker)
    if common is None or 1 not in defs:
        return layout
    body = [common.id, common.length] + await bus.read_span(common.address + 2, common.length)
    info = identify_common(defs[1], body)
    return SunSpecLayout(
        bus.unit_id,
        base,
        models,
        manufacturer=info["Mn"],
        model=info["Md"],
        options=info["Opt"],
        version=info["Vr"],
        serial_number=info["SN"],
        device_address=_int_or_none(scaled_value(defs[1], "DA", body)),
        end_marker=end_marker,
    )


def identify_common(common: ModelDef, body: Sequence[int]) -> dict[str, str]:
    """The strings of the common model (Mn, Md, Opt, Vr, SN); "" for those past the end."""
    out: dict[str, str] = {}
    for name in ("Mn", "Md", "Opt", "Vr", "SN"):
        p = common.points[name]
        end = p.offset + p.size
        out[name] = decode_string(body[p.offset : end]) if end <= len(body) else ""
    return out


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


# --------------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    block: ModelBlock
    model: ModelDef
    quantities: tuple[tuple[str, QuantityInfo], ...]
    count: int  # registers to read from the ID register on


@dataclass
class SunSpecDevice:
    """A SunSpec inverter and/or meter on one unit id.

    `discover()` finds the layout (also done by the first `read()`). `read(names)` returns the
    asked-for quantities (default: all the device offers) in plain units; a quantity the device
    reports as "not implemented" is left out. When a device has both an inverter and a meter
    model, the first of each is used and `frequency_hz` comes from the inverter. A read raises
    DeviceUnavailableError when any needed request fails: no partial results.
    """

    reader: RegisterReader
    unit_id: int
    timeout_s: float | None = 5.0
    bases: Sequence[int] = DEFAULT_BASES
    model_defs: Mapping[int, ModelDef] | None = None
    layout: SunSpecLayout | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.unit_id <= 255:
            raise ValueError(f"unit id {self.unit_id} is outside 0..255")

    @property
    def _defs(self) -> Mapping[int, ModelDef]:
        return self.model_defs if self.model_defs is not None else load_model_defs()

    async def discover(self) -> SunSpecLayout:
        """(Re)discover the map; raises DeviceUnavailableError if there is none."""
        async with self._lock:
            return await self._discover()

    async def _discover(self) -> SunSpecLayout:
        self.layout = await discover(
            self.reader,
            self.unit_id,
            bases=self.bases,
            timeout_s=self.timeout_s,
            model_defs=self._defs,
        )
        return self.layout

    @property
    def quantities(self) -> dict[str, QuantityInfo]:
        """Name -> unit, lifetime-counter flag and source of what this device can report.

        Empty before discovery. A listed quantity may still be missing from a read when the
        device marks it "not implemented" at that moment.
        """
        if self.layout is None:
            return {}
        out: dict[str, QuantityInfo] = {}
        if self.layout.meter is not None and self.layout.meter.id in self._defs:
            out.update(METER_QUANTITIES)
        if self.layout.inverter is not None and self.layout.inverter.id in self._defs:
            out.update(INVERTER_QUANTITIES)  # inverter wins for frequency_hz
        if STORAGE_MODEL in self._defs and self.layout.first([STORAGE_MODEL]) is not None:
            out.update(STORAGE_QUANTITIES)
        return out

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        """Read `names` (default: all of `quantities`); see the class docstring."""
        if names is not None:
            unknown = [n for n in names if n not in KNOWN_QUANTITIES]
            if unknown:
                known = ", ".join(sorted(KNOWN_QUANTITIES))
                raise ValueError(f"unknown SunSpec quantities {unknown} (known: {known})")
        async with self._lock:
            layout = self.layout or await self._discover()
            values: dict[str, float] = {}
            bus = _Bus(self.reader, self.unit_id, self.timeout_s)
            for plan in self._plan(layout, names):
                body = await bus.read_span(plan.block.address, plan.count)
                if body[0] != plan.block.id:
                    self.layout = None  # rediscover on the next read
                    raise DeviceUnavailableError(
                        f"unit {self.unit_id}: expected model {plan.block.id} at "
                        f"{plan.block.address} but found id {body[0]}; the SunSpec map changed, "
                        "it is rediscovered on the next read"
                    )
                for name, info in plan.quantities:
                    value = self._value(plan.model, info, body)
                    if value is not None:
                        values[name] = value
        return values

    def _plan(self, layout: SunSpecLayout, names: list[str] | None) -> list[_Plan]:
        available = self.quantities
        wanted = list(available) if names is None else [n for n in names if n in available]
        plans: list[_Plan] = []
        for block in (layout.inverter, layout.meter, layout.first([STORAGE_MODEL])):
            if block is None or block.id not in self._defs:
                continue
            model = self._defs[block.id]
            family: Family = (
                "inverter"
                if block.id in INVERTER_MODELS
                else "storage"
                if block.id == STORAGE_MODEL
                else "meter"
            )
            mine = tuple(
                (n, available[n]) for n in dict.fromkeys(wanted) if available[n].family == family
            )
            if not mine:
                continue
            end = 2
            for _name, info in mine:
                for point_name in info.points:
                    point = model.points[point_name]
                    end = max(end, point.offset + point.size)
                    if point.sf is not None:
                        end = max(end, model.points[point.sf].offset + 1)
            # Read from the ID register (to check the map has not moved) up to the last point
            # needed, but never past what the device says the model holds.
            plans.append(_Plan(block, model, mine, min(end, 2 + block.length)))
        return plans

    # ------------------------------------------------------------------ points by name

    def has_model(self, model_id: int) -> bool:
        """Whether discovery found `model_id` on this unit (False before discovery)."""
        return self.layout is not None and self.layout.first([model_id]) is not None

    async def _model_body(
        self, bus: _Bus, model_id: int, names: Iterable[str]
    ) -> tuple[ModelDef, ModelBlock, list[int]]:
        """The model's registers from its ID register up to the last point of `names` and
        their scale factors (one read; checked to still be `model_id`)."""
        model = self._defs.get(model_id)
        if model is None:
            raise ValueError(f"SunSpec model {model_id} is not defined in models.toml")
        end = 2
        for name in names:
            point = model.points.get(name)
            if point is None:
                raise ValueError(f"SunSpec model {model_id} has no point {name!r}")
            end = max(end, point.offset + point.size)
            if point.sf is not None:
                end = max(end, model.points[point.sf].offset + 1)
        layout = self.layout or await self._discover()
        block = layout.first([model_id])
        if block is None:
            raise DeviceUnavailableError(
                f"unit {self.unit_id} ({layout.describe()}) has no SunSpec model {model_id}"
            )
        if end > 2 + block.length:
            raise DeviceUnavailableError(
                f"unit {self.unit_id}: model {model_id} is {block.length} registers long, too "
                f"short for the points asked for"
            )
        body = await bus.read_span(block.address, end)
        if body[0] != model_id:
            self.layout = None
            raise DeviceUnavailableError(
                f"unit {self.unit_id}: expected model {model_id} at {block.address} but found "
                f"id {body[0]}; the SunSpec map changed, it is rediscovered on the next request"
            )
        return model, block, body

    async def read_points(self, model_id: int, names: Sequence[str]) -> dict[str, float]:
        """Read points of `model_id` by name, scaled to engineering units; a point the device
        reports as not implemented is left out."""
        async with self._lock:
            bus = _Bus(self.reader, self.unit_id, self.timeout_s)
            model, _block, body = await self._model_body(bus, model_id, names)
            out: dict[str, float] = {}
            for name in names:
                value = scaled_value(model, name, body)
                if value is not None:
                    out[name] = value
            return out

    async def write_point(self, model_id: int, point: str, value: float) -> None:
        """Write one point of `model_id` in engineering units (see `write_points`)."""
        await self.write_points(model_id, {point: value})

    async def write_points(self, model_id: int, values: Mapping[str, float]) -> None:
        """Write points of `model_id` by name, in engineering units, in the mapping's order.

        The scale factors are read right before (devices may change them) and each value is
        converted with its point's SF; one FC16 request per point, so the order is the
        caller's (e.g. a limit before its enable flag). Raises ValueError for a point that is
        not defined or not writable (`access = "RW"` in models.toml) and for a value that does
        not fit; DeviceUnavailableError when the device lacks the model, has no usable scale
        factor, or refuses or misses the write. Nothing is written unless every value encodes.
        """
        if not values:
            return
        model = self._defs.get(model_id)
        if model is None:
            raise ValueError(f"SunSpec model {model_id} is not defined in models.toml")
        for name in values:
            point = model.points.get(name)
            if point is None:
                raise ValueError(f"SunSpec model {model_id} has no point {name!r}")
            if not point.writable:
                raise ValueError(f"SunSpec point {model_id}.{name} is read-only")
        async with self._lock:
            bus = _Bus(self.reader, self.unit_id, self.timeout_s)
            model, block, body = await self._model_body(bus, model_id, values)
            writes: list[tuple[Point, list[int], float]] = []
            for name, value in values.items():
                point = model.points[name]
                sf: int | None = None
                if point.sf is not None:
                    sf = decode_sf(body[model.points[point.sf].offset])
                    if sf is None:
                        raise DeviceUnavailableError(
                            f"unit {self.unit_id}: {point.sf} of model {model_id} is not "
                            f"implemented, so {name} cannot be written in units"
                        )
                try:
                    words = encode_point(point, value, sf)
                except ValueError as exc:
                    raise ValueError(f"unit {self.unit_id}: {exc}") from None
                writes.append((point, words, value))
            for point, words, value in writes:
                await bus.write(
                    block.address + point.offset, words, f"{model_id}.{point.name} = {value:g}"
                )

    @staticmethod
    def _value(model: ModelDef, info: QuantityInfo, body: Sequence[int]) -> float | None:
        for point_name in info.points:
            value = scaled_value(model, point_name, body)
            if value is not None:
                return value
        return None
