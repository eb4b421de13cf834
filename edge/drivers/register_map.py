"""Register maps: which Modbus registers hold which quantity, and how to turn words into numbers.

Owns: the TOML register-map format (firmware-configs/registers/schema.md), its loader and
validator, the pure word codecs (`decode`, `encode`) and read planning (`plan_reads`).

Why a data file instead of a driver class per meter: the differences between meters are addresses,
types, scales and word orders, which are data. Keeping them in TOML lets a field engineer add a
meter without touching code, and lets the simulator serve exactly the map the edge reads.

Missing values: a quantity may declare `invalid` raw patterns (e.g. "all_ones" for an ABB
uint64 energy register that reads 0xFFFF... when the value is not available). `decode` returns
None for such a pattern, never a huge number; `ModbusDevice.read` then leaves the quantity out of
its result (and lists it in `ModbusDevice.last_missing`), so a missing total can never be booked
as energy.

This module does no network I/O (it only reads map files), so the codecs can be tested against
hand-computed register dumps without a device.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, get_args

Table = Literal["input", "holding"]
ValueType = Literal["float32", "uint16", "int16", "uint32", "int32", "uint64", "int64"]
WordOrder = Literal["ABCD", "CDAB"]
Role = Literal["energy_counter", "setting", "info"]

#: struct format (big-endian) and register count per value type.
_FORMATS: Final[dict[str, tuple[str, int]]] = {
    "float32": (">f", 2),
    "uint16": (">H", 1),
    "int16": (">h", 1),
    "uint32": (">I", 2),
    "int32": (">i", 2),
    "uint64": (">Q", 4),
    "int64": (">q", 4),
}

#: Units an energy counter may declare, with their size in Wh (the agent converts with these).
ENERGY_UNITS_WH: Final[dict[str, float]] = {"Wh": 1.0, "kWh": 1000.0, "MWh": 1_000_000.0}
#: Roles that are not polled by default (read only when asked for by name).
_NOT_POLLED: Final = frozenset({"setting", "info"})

#: Largest block one Modbus read may ask for (FC03/FC04 limit in the Modbus spec).
MAX_READ_REGISTERS: Final = 125
#: Unused registers a read may span to join two neighbours. Holes can time out on some devices
#: (influxdata/telegraf#9253), so keep this small.
DEFAULT_MAX_GAP: Final = 8

ENV_FIRMWARE_CONFIGS: Final = "GRIDMINT_FIRMWARE_CONFIGS"
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")


class RegisterMapError(ValueError):
    """A register-map file (or a request against a map) is not usable; the message says where."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """One measured or configured value on a device.

    `address` is the 0-based wire address; `value = raw * scale`; `word_order` is already resolved
    from the map default, so codecs need nothing but the quantity. `invalid` holds raw bit
    patterns (the registers joined high word first, as an unsigned integer) that mean "no value".
    """

    name: str
    address: int
    table: Table
    type: ValueType
    scale: float
    unit: str
    word_order: WordOrder
    role: Role | None = None
    invalid: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A device's register map as loaded from TOML."""

    vendor: str
    model: str
    products: tuple[str, ...]
    source: str
    default_unit: int
    baudrate: int
    parity: str
    stopbits: int
    quantities: dict[str, Quantity]
    max_gap: int = DEFAULT_MAX_GAP

    def measurements(self) -> list[str]:
        """Names polled by default: everything except settings and identification registers.

        Settings (unit id, baud code, role "setting") and identification registers (model code,
        role "info") do not change between polls; reading them on every poll would cost bus
        time, so they are read only when asked for by name.
        """
        return [n for n, q in self.quantities.items() if q.role not in _NOT_POLLED]

    def energy_counters(self) -> list[str]:
        """Names of the lifetime energy totals (role "energy_counter")."""
        return [n for n, q in self.quantities.items() if q.role == "energy_counter"]


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read: `count` registers from `address` in `table`, covering `names`."""

    table: Table
    address: int
    count: int
    names: tuple[str, ...]

    @property
    def function_code(self) -> int:
        """FC04 for input registers, FC03 for holding registers."""
        return 4 if self.table == "input" else 3


def register_count(value_type: str) -> int:
    """Number of 16-bit registers a value of `value_type` occupies."""
    try:
        return _FORMATS[value_type][1]
    except KeyError:
        raise ValueError(f"unknown register type {value_type!r}") from None


def _integer_divisor(scale: float) -> int | None:
    """Return n when scale == 1/n for an integer n > 1 (e.g. 0.1 -> 10), else None.

    Dividing by 10 gives correctly rounded results (2300 / 10 == 230.0) where multiplying by 0.1
    does not (2300 * 0.1 == 230.00000000000003).
    """
    if not 0 < abs(scale) < 1:
        return None
    inverse = 1.0 / scale
    rounded = round(inverse)
    return rounded if abs(inverse - rounded) < 1e-9 * abs(inverse) else None


def all_ones(value_type: str) -> int:
    """The all-ones raw pattern of `value_type` (0xFFFF, 0xFFFFFFFF, ...)."""
    return (1 << (16 * register_count(value_type))) - 1


def decode(quantity: Quantity, words: Sequence[int]) -> float | None:
    """Turn the registers of one quantity, in wire order, into its scaled value.

    ABCD means the high word comes first on the wire; CDAB means the low word comes first (for
    64-bit values: the four words in reverse order). Returns None when the raw pattern is one of
    the quantity's declared `invalid` patterns ("value not available"). A float32 NaN that is not
    declared invalid is returned as NaN: deciding that it means "missing" is the caller's business.
    """
    fmt, count = _FORMATS[quantity.type]
    if len(words) != count:
        raise ValueError(f"{quantity.name}: expected {count} registers, got {len(words)}")
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"{quantity.name}: register value {word!r} is not a 16-bit word")
    ordered = list(words) if quantity.word_order == "ABCD" else list(reversed(words))
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    if quantity.invalid and int.from_bytes(data, "big") in quantity.invalid:
        return None
    raw = struct.unpack(fmt, data)[0]
    divisor = _integer_divisor(quantity.scale)
    if divisor is not None:
        return float(raw) / divisor
    return float(raw) * quantity.scale


def encode(quantity: Quantity, value: float | None) -> list[int]:
    """Turn a scaled value into the registers a device would send (inverse of `decode`).

    Integer types round to the nearest raw count; values outside the type's range raise
    ValueError rather than wrapping, because a wrapped counter would look like a reset.
    None encodes the quantity's first `invalid` pattern (what a device sends for "no value");
    a quantity without one cannot encode None.
    """
    fmt, count = _FORMATS[quantity.type]
    if value is None:
        if not quantity.invalid:
            raise ValueError(f"{quantity.name}: no invalid pattern declared to encode None")
        data = quantity.invalid[0].to_bytes(2 * count, "big")
    else:
        data = _pack(quantity, fmt, value)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if quantity.word_order == "ABCD" else words[::-1]


def _pack(quantity: Quantity, fmt: str, value: float) -> bytes:
    """Scale `value` to its raw count and pack it big-endian (before word reordering)."""
    divisor = _integer_divisor(quantity.scale)
    raw = value * divisor if divisor is not None else value / quantity.scale
    packed_value: float | int
    if quantity.type == "float32":
        packed_value = raw
    else:
        if not math.isfinite(raw):
            raise ValueError(f"{quantity.name}: cannot encode {value!r} as {quantity.type}")
        packed_value = round(raw)
    try:
        return struct.pack(fmt, packed_value)
    except (struct.error, OverflowError) as exc:
        raise ValueError(
            f"{quantity.name}: {value!r} does not fit {quantity.type} (scale {quantity.scale})"
        ) from exc


def plan_reads(
    register_map: RegisterMap,
    names: Iterable[str] | None = None,
    *,
    max_gap: int | None = None,
    max_count: int = MAX_READ_REGISTERS,
) -> list[ReadBlock]:
    """Group the wanted quantities into few reads.

    Quantities of the same table join one block when the hole between them is at most `max_gap`
    registers (default: the map's `max_gap`, 8 unless the file says otherwise) and the block
    stays within `max_count` registers. Fewer reads means fewer round trips on a slow RS-485
    bus; small holes keep devices that reject unmapped registers happy.
    `names=None` plans `register_map.measurements()`.
    """
    if max_gap is None:
        max_gap = register_map.max_gap
    if not 1 <= max_count <= MAX_READ_REGISTERS:
        raise ValueError(f"max_count must be 1..{MAX_READ_REGISTERS}")
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    wanted = register_map.measurements() if names is None else list(dict.fromkeys(names))
    quantities = [_lookup(register_map, name) for name in wanted]
    blocks: list[ReadBlock] = []
    for table in ("input", "holding"):
        members = sorted(
            (q for q in quantities if q.table == table), key=lambda q: (q.address, q.name)
        )
        start = end = 0
        group: list[str] = []
        for q in members:
            q_end = q.address + register_count(q.type)
            if group and q.address - end <= max_gap and max(end, q_end) - start <= max_count:
                group.append(q.name)
                end = max(end, q_end)
                continue
            if group:
                blocks.append(ReadBlock(table, start, end - start, tuple(group)))
            start, end, group = q.address, q_end, [q.name]
        if group:
            blocks.append(ReadBlock(table, start, end - start, tuple(group)))
    return blocks


def decode_block(
    register_map: RegisterMap, block: ReadBlock, words: Sequence[int]
) -> dict[str, float | None]:
    """Decode every quantity of `block` from the words one read returned (None = invalid)."""
    if len(words) != block.count:
        raise ValueError(
            f"read of {block.count} registers at 0x{block.address:04X} returned {len(words)}"
        )
    values: dict[str, float | None] = {}
    for name in block.names:
        q = register_map.quantities[name]
        offset = q.address - block.address
        values[name] = decode(q, words[offset : offset + register_count(q.type)])
    return values


def _lookup(register_map: RegisterMap, name: str) -> Quantity:
    try:
        return register_map.quantities[name]
    except KeyError:
        known = ", ".join(sorted(register_map.quantities))
        raise RegisterMapError(
            f"{register_map.vendor} {register_map.model} has no quantity {name!r} (known: {known})"
        ) from None


# --------------------------------------------------------------------------------------------
# Locating and loading map files
# --------------------------------------------------------------------------------------------


def registers_dirs() -> list[Path]:
    """Directories searched for register maps, in order.

    1. $GRIDMINT_FIRMWARE_CONFIGS/registers (deployments that keep configs elsewhere),
    2. <checkout>/firmware-configs/registers (repo checkout or editable install),
    3. <site-packages>/gridmint/firmware-configs/registers (wheel install: the wheel force-includes
       firmware-configs there, and edge/ sits next to gridmint/ in site-packages).
    """
    dirs: list[Path] = []
    env = os.environ.get(ENV_FIRMWARE_CONFIGS)
    if env:
        dirs.append(Path(env) / "registers")
    root = Path(__file__).resolve().parents[2]
    dirs.append(root / "firmware-configs" / "registers")
    dirs.append(root / "gridmint" / "firmware-configs" / "registers")
    return dirs


def find_register_map(name: str) -> Path:
    """Resolve a map name such as "eastron/sdm630" to its TOML file.

    Names are lower-case path segments without ".."; this keeps a name from an edge config from
    pointing outside the registers directory.
    """
    stem = name.removesuffix(".toml")
    if not _NAME_RE.match(stem) or ".." in stem:
        raise RegisterMapError(
            f"register map name {name!r} is not of the form 'vendor/model' (lower case)"
        )
    searched = registers_dirs()
    for directory in searched:
        candidate = directory / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in searched)
    raise RegisterMapError(f"register map {name!r} not found (searched {where})")


def load_register_map(path: str | os.PathLike[str]) -> RegisterMap:
    """Read and validate a register-map TOML file.

    Every problem raises RegisterMapError naming the file and the field, because a typo in a map
    would otherwise show up as wrong numbers on a live meter.
    """
    file = Path(path)
    try:
        with file.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise RegisterMapError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(f"{file}: not valid TOML: {exc}") from exc
    return _parse(file, doc)


_TOP_KEYS: Final = {
    "vendor",
    "model",
    "products",
    "source",
    "transport",
    "word_order",
    "max_gap",
    "quantities",
}
_TRANSPORT_KEYS: Final = {"default_unit", "baudrate", "parity", "stopbits"}
_QUANTITY_KEYS: Final = {
    "address",
    "table",
    "type",
    "scale",
    "unit",
    "word_order",
    "role",
    "invalid",
}
_REQUIRED: Final[Any] = object()


class _Fields:
    """Typed access to one TOML table, with errors that name the file and the field."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, Any], allowed: set[str]) -> None:
        self.file, self.prefix, self.data = file, prefix, data
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str) -> NoReturn:
        raise RegisterMapError(f"{self.file}: {self.prefix}{key}: {problem}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            self.fail(key, "missing")
        return default

    def text(self, key: str, default: Any = _REQUIRED, *, allow_empty: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not (allow_empty or value.strip()):
            self.fail(key, f"expected {'' if allow_empty else 'non-empty '}text, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int, default: Any = _REQUIRED) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, f"expected an integer {low}..{high}, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {value!r}")
        if not math.isfinite(value) or value == 0:
            self.fail(key, f"expected a finite non-zero number, got {value!r}")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is not None and value not in options:
            self.fail(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def invalid_patterns(self, key: str, value_type: str) -> tuple[int, ...]:
        """`invalid = "all_ones"`, a raw integer, or a list of those -> raw patterns."""
        value = self._get(key, [])
        items = value if isinstance(value, list) else [value]
        top = all_ones(value_type)
        patterns: list[int] = []
        for item in items:
            if item == "all_ones":
                patterns.append(top)
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= top:
                patterns.append(item)
            else:
                self.fail(
                    key,
                    f'expected "all_ones" or a raw pattern 0..0x{top:X} (or a list), got {item!r}',
                )
        return tuple(dict.fromkeys(patterns))

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, _REQUIRED)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            self.fail(key, f"expected a non-empty list of text, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self._get(key, _REQUIRED)
        if not isinstance(value, dict) or not value:
            self.fail(key, "expected a non-empty table")
        return value


def _parse(file: Path, doc: Mapping[str, Any]) -> RegisterMap:
    top = _Fields(file, "", doc, _TOP_KEYS)
    transport = _Fields(file, "transport.", top.table("transport"), _TRANSPORT_KEYS)
    default_order: WordOrder = top.choice("word_order", get_args(WordOrder), default="ABCD")
    quantities: dict[str, Quantity] = {}
    for name, raw in top.table("quantities").items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            top.fail(f"quantities.{name}", "name must be lower_snake_case")
        if not isinstance(raw, dict):
            top.fail(f"quantities.{name}", "expected a table")
        q = _Fields(file, f"quantities.{name}.", raw, _QUANTITY_KEYS)
        value_type: ValueType = q.choice("type", get_args(ValueType))
        role: Role | None = q.choice("role", get_args(Role), default=None)
        unit = q.text("unit", default="", allow_empty=True)
        if role == "energy_counter" and unit not in ENERGY_UNITS_WH:
            q.fail("unit", f"an energy_counter needs one of {', '.join(ENERGY_UNITS_WH)}")
        quantities[name] = Quantity(
            name=name,
            address=q.integer("address", 0, 0x10000 - register_count(value_type)),
            table=q.choice("table", get_args(Table)),
            type=value_type,
            scale=q.number("scale", 1.0),
            unit=unit,
            word_order=q.choice("word_order", get_args(WordOrder), default=default_order),
            role=role,
            invalid=q.invalid_patterns("invalid", value_type),
        )
    return RegisterMap(
        vendor=top.text("vendor"),
        model=top.text("model"),
        products=top.text_list("products"),
        source=top.text("source"),
        default_unit=transport.integer("default_unit", 1, 247),
        baudrate=transport.integer("baudrate", 300, 1_000_000),
        parity=transport.choice("parity", ("N", "E", "O")),
        stopbits=transport.integer("stopbits", 1, 2),
        quantities=quantities,
        max_gap=top.integer("max_gap", 0, MAX_READ_REGISTERS, default=DEFAULT_MAX_GAP),
    )
