"""Every shipped register map: loads, is sane, and decodes its fixture dumps.

Fixture words were worked out by hand from vendor-document style examples (see each file's
`how_derived`); they are checked two ways here: with the production codec and with a small
struct-based reference decoder in this file, so a wrong codec and a wrong fixture cannot agree by
accident. Nothing here is produced by the simulator. Also: hand-computed codec cases for the
64-bit types and invalid sentinels, and the schema additions (invalid, max_gap, role info,
energy-counter units).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from edge.drivers.register_map import (
    ENERGY_UNITS_WH,
    Quantity,
    RegisterMapError,
    all_ones,
    decode,
    decode_block,
    encode,
    find_register_map,
    load_register_map,
    plan_reads,
    register_count,
)

REPO = Path(__file__).resolve().parents[2]
REGISTERS = REPO / "firmware-configs" / "registers"
FIXTURES = REPO / "firmware-configs" / "fixtures"
MAP_NAMES = sorted(str(p.relative_to(REGISTERS).with_suffix("")) for p in REGISTERS.rglob("*.toml"))
#: Maps shipped without a register dump yet. Adding a map without a fixture fails the test below.
MAPS_WITHOUT_FIXTURES: set[str] = set()


def _register_fixtures() -> list[Path]:
    """Register-map dumps only (other drivers keep their own fixtures in the same tree)."""
    out = []
    for path in sorted(FIXTURES.rglob("*.json")):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "register_map" in doc:
            out.append(path)
    return out


FIXTURE_FILES = _register_fixtures()


def _fixture_id(path: Path) -> str:
    return str(path.relative_to(FIXTURES).with_suffix(""))


# --------------------------------------------------------------------------- every map


def test_all_expected_maps_are_shipped() -> None:
    assert {"eastron/sdm630", "eastron/sdm120", "epever/tracer-an", "renogy/rover", "abb/b23"} <= (
        set(MAP_NAMES)
    )


@pytest.mark.parametrize("name", MAP_NAMES)
def test_map_loads_and_is_sane(name: str) -> None:
    m = load_register_map(find_register_map(name))
    assert m.source.strip() and m.products
    assert 1 <= m.default_unit <= 247
    counters = m.energy_counters()
    assert counters, f"{name} has no lifetime energy counter"
    for counter in counters:
        assert m.quantities[counter].unit in ENERGY_UNITS_WH
    # Quantities either share exactly one register range (an alias such as the SDM120's
    # total_power = power_l1) or do not overlap at all.
    spans = {
        (q.table, q.address, q.address + register_count(q.type)) for q in m.quantities.values()
    }
    for table, start, end in spans:
        for table2, start2, end2 in spans:
            if table == table2 and (start, end) != (start2, end2):
                assert end <= start2 or end2 <= start, f"{name}: overlap at 0x{start:04X}"
    plan = plan_reads(m)
    assert all(1 <= b.count <= 125 for b in plan)
    assert sorted(n for b in plan for n in b.names) == sorted(m.measurements())
    for block in plan:  # a planned read never spans a hole larger than the map allows
        ends = sorted(
            (
                m.quantities[n].address,
                m.quantities[n].address + register_count(m.quantities[n].type),
            )
            for n in block.names
        )
        for (_, end), (start, _) in zip(ends, ends[1:], strict=False):
            assert start - end <= m.max_gap


def test_every_map_has_a_fixture_dump_unless_listed() -> None:
    covered = {json.loads(p.read_text())["register_map"] for p in FIXTURE_FILES}
    assert covered <= set(MAP_NAMES)
    assert set(MAP_NAMES) - covered == MAPS_WITHOUT_FIXTURES


# --------------------------------------------------------------------------- fixture dumps


_STRUCT = {
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "float32": ">f",
    "uint64": ">Q",
    "int64": ">q",
}


def reference_decode(q: Quantity, words: list[int]) -> float | None:
    """Independent of the production codec: struct on the words put high word first."""
    ordered = words if q.word_order == "ABCD" or len(words) == 1 else words[::-1]
    data = b"".join(struct.pack(">H", w) for w in ordered)
    if int.from_bytes(data, "big") in q.invalid:
        return None
    raw = struct.unpack(_STRUCT[q.type], data)[0]
    if q.scale == 1.0:
        return float(raw)
    return float(raw) / round(1 / q.scale)  # every shipped scale is 1/10^k


def _load(path: Path) -> tuple[Any, dict[tuple[str, int], list[int]]]:
    doc = json.loads(path.read_text())
    reads = {
        (r["table"], int(r["address"], 16)): [int(w, 16) for w in r["words"]] for r in doc["reads"]
    }
    return doc, reads


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=_fixture_id)
def test_fixture_decodes_to_hand_computed_values(path: Path) -> None:
    doc, reads = _load(path)
    assert doc["how_derived"], "say how the words were worked out"
    m = load_register_map(find_register_map(doc["register_map"]))
    expected: dict[str, float | None] = doc["expected"]
    plan = plan_reads(m, list(expected))
    assert {(b.table, b.address, b.count) for b in plan} == {
        (table, address, len(words)) for (table, address), words in reads.items()
    }
    decoded: dict[str, float | None] = {}
    for block in plan:
        words = reads[(block.table, block.address)]
        decoded.update(decode_block(m, block, words))
        for name in block.names:
            q = m.quantities[name]
            offset = q.address - block.address
            chunk = words[offset : offset + register_count(q.type)]
            assert reference_decode(q, chunk) == expected[name], name
            assert encode(q, expected[name]) == chunk, name
    assert decoded == expected


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=_fixture_id)
def test_fixture_sits_under_its_map(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert path.parent.relative_to(FIXTURES).as_posix() == doc["register_map"]


# --------------------------------------------------------------------------- shipped maps


def test_epever_map_matches_reference() -> None:
    m = load_register_map(find_register_map("epever/tracer-an"))
    assert (m.baudrate, m.parity, m.stopbits, m.default_unit, m.max_gap) == (115200, "N", 1, 1, 0)
    expected = {
        "pv_voltage": (0x3100, "uint16", 0.01),
        "pv_current": (0x3101, "uint16", 0.01),
        "pv_power": (0x3102, "uint32", 0.01),
        "battery_voltage": (0x3104, "uint16", 0.01),
        "battery_charge_current": (0x3105, "uint16", 0.01),
        "battery_charge_power": (0x3106, "uint32", 0.01),
        "load_voltage": (0x310C, "uint16", 0.01),
        "load_current": (0x310D, "uint16", 0.01),
        "load_power": (0x310E, "uint32", 0.01),
        "battery_soc": (0x311A, "uint16", 1.0),
        "consumed_energy": (0x330A, "uint32", 0.01),
        "generated_energy": (0x3312, "uint32", 0.01),
        "battery_current": (0x331B, "int32", 0.01),
    }
    assert {n: (q.address, q.type, q.scale) for n, q in m.quantities.items()} == expected
    assert {q.table for q in m.quantities.values()} == {"input"}  # FC04
    assert {q.word_order for q in m.quantities.values()} == {"CDAB"}
    assert m.energy_counters() == ["consumed_energy", "generated_energy"]
    assert m.quantities["generated_energy"].unit == "kWh"
    assert "kasbert/epsolar-tracer" in m.source


def test_renogy_map_matches_reference() -> None:
    m = load_register_map(find_register_map("renogy/rover"))
    assert (m.baudrate, m.parity, m.stopbits, m.default_unit) == (9600, "N", 1, 1)
    assert {q.table for q in m.quantities.values()} == {"holding"}  # FC03
    assert {q.word_order for q in m.quantities.values()} == {"ABCD"}
    addresses = {n: q.address for n, q in m.quantities.items()}
    assert addresses == {
        "battery_soc": 0x0100,
        "battery_voltage": 0x0101,
        "battery_charge_current": 0x0102,
        "load_voltage": 0x0104,
        "load_current": 0x0105,
        "load_power": 0x0106,
        "pv_voltage": 0x0107,
        "pv_current": 0x0108,
        "pv_power": 0x0109,
        "generated_energy": 0x011C,
        "consumed_energy": 0x011E,
    }
    gen = m.quantities["generated_energy"]
    assert (gen.type, gen.scale, gen.unit, gen.role) == ("uint32", 1.0, "Wh", "energy_counter")
    assert [(b.address, b.count) for b in plan_reads(m)] == [(0x0100, 10), (0x011C, 4)]


def test_abb_map_matches_reference() -> None:
    m = load_register_map(find_register_map("abb/b23"))
    assert {q.table for q in m.quantities.values()} == {"holding"}
    for name, address in (("import_energy", 0x5000), ("export_energy", 0x5004)):
        q = m.quantities[name]
        assert (q.address, q.type, q.scale, q.unit, q.role) == (
            address,
            "uint64",
            0.01,
            "kWh",
            "energy_counter",
        )
        assert q.invalid == (0xFFFF_FFFF_FFFF_FFFF,)
    assert (m.quantities["total_power"].address, m.quantities["total_power"].type) == (
        0x5B14,
        "int32",
    )
    assert m.quantities["frequency"].address == 0x5B2C
    assert m.quantities["model_id"].role == "info"
    assert "model_id" not in m.measurements()  # identification: read only when asked


# --------------------------------------------------------------------------- 64-bit and invalid


def q64(
    type_: str, order: str = "ABCD", scale: float = 1.0, invalid: tuple[int, ...] = ()
) -> Quantity:
    return Quantity("x", 0, "holding", type_, scale, "", order, None, invalid)  # type: ignore[arg-type]


CODEC_64 = [
    # 12345.67 kWh in 0.01 kWh = 1234567 = 0x12D687
    ("uint64", "ABCD", 0.01, [0x0000, 0x0000, 0x0012, 0xD687], 12345.67),
    ("uint64", "CDAB", 0.01, [0xD687, 0x0012, 0x0000, 0x0000], 12345.67),
    # 2^40 + 5 = 0x0000_0100_0000_0005
    ("uint64", "ABCD", 1.0, [0x0000, 0x0100, 0x0000, 0x0005], 1099511627781.0),
    # -2 = 0xFFFF_FFFF_FFFF_FFFE
    ("int64", "ABCD", 1.0, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2.0),
    ("int64", "CDAB", 1.0, [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2.0),
    # -150025 * 0.01 = -1500.25; 150025 = 0x24A09 -> two's complement 0x...FFFD_B5F7
    ("int64", "ABCD", 0.01, [0xFFFF, 0xFFFF, 0xFFFD, 0xB5F7], -1500.25),
]


@pytest.mark.parametrize(("type_", "order", "scale", "words", "value"), CODEC_64)
def test_64_bit_decode_and_encode(
    type_: str, order: str, scale: float, words: list[int], value: float
) -> None:
    q = q64(type_, order, scale)
    assert register_count(type_) == 4
    assert decode(q, words) == value
    assert encode(q, value) == words


def test_all_ones_is_missing_only_when_declared() -> None:
    words = [0xFFFF] * 4
    assert decode(q64("uint64", scale=0.01), words) == 184467440737095516.15
    declared = q64("uint64", scale=0.01, invalid=(all_ones("uint64"),))
    assert decode(declared, words) is None
    assert decode(declared, [0, 0, 0, 1]) == 0.01
    assert encode(declared, None) == words
    with pytest.raises(ValueError, match="no invalid pattern"):
        encode(q64("uint64"), None)


def test_declared_raw_patterns() -> None:
    sunspec_int16 = Quantity("w", 0, "holding", "int16", 1.0, "W", "ABCD", None, (0x8000,))
    assert decode(sunspec_int16, [0x8000]) is None
    assert decode(sunspec_int16, [0x8001]) == -32767.0
    nan = Quantity("e", 0, "input", "float32", 1.0, "kWh", "CDAB", None, (0x7FC00000,))
    assert decode(nan, [0x0000, 0x7FC0]) is None  # raw pattern is compared high word first
    assert decode(nan, [0x0000, 0x4366]) == 230.0


# --------------------------------------------------------------------------- schema additions

BASE = """
vendor = "Test"
model = "T2"
products = ["T2"]
source = "hand written"
{top}
[transport]
default_unit = 1
baudrate = 9600
parity = "N"
stopbits = 1

[quantities.energy]
address = 0x5000
table = "holding"
type = "uint64"
scale = 0.01
unit = "kWh"
role = "energy_counter"
{extra}

[quantities.serial_no]
address = 0x8900
table = "holding"
type = "uint32"
role = "info"
"""


def _write(tmp_path: Path, top: str = "", extra: str = "") -> Path:
    path = tmp_path / "t2.toml"
    path.write_text(BASE.format(top=top, extra=extra))
    return path


@pytest.mark.parametrize(
    ("extra", "patterns"),
    [
        ("", ()),
        ('invalid = "all_ones"', (0xFFFF_FFFF_FFFF_FFFF,)),
        ("invalid = 0", (0,)),
        ('invalid = ["all_ones", 0, "all_ones"]', (0xFFFF_FFFF_FFFF_FFFF, 0)),
    ],
)
def test_invalid_field(tmp_path: Path, extra: str, patterns: tuple[int, ...]) -> None:
    m = load_register_map(_write(tmp_path, extra=extra))
    assert m.quantities["energy"].invalid == patterns
    assert m.measurements() == ["energy"]  # info is not polled
    assert m.max_gap == 8


@pytest.mark.parametrize(
    ("top", "extra", "field"),
    [
        ("", 'invalid = "nan"', "quantities.energy.invalid"),
        ("", "invalid = -1", "quantities.energy.invalid"),
        ("", "invalid = true", "quantities.energy.invalid"),
        ("max_gap = -1", "", "max_gap"),
        ("max_gap = 200", "", "max_gap"),
    ],
)
def test_bad_schema_additions(tmp_path: Path, top: str, extra: str, field: str) -> None:
    with pytest.raises(RegisterMapError) as info:
        load_register_map(_write(tmp_path, top=top, extra=extra))
    assert f": {field}:" in str(info.value)


def test_energy_counter_needs_an_energy_unit(tmp_path: Path) -> None:
    path = tmp_path / "t3.toml"
    path.write_text(BASE.format(top="", extra="").replace('unit = "kWh"', 'unit = "kW"'))
    with pytest.raises(RegisterMapError, match=r"quantities\.energy\.unit: an energy_counter"):
        load_register_map(path)


def test_max_gap_zero_reads_only_mapped_registers(tmp_path: Path) -> None:
    m = load_register_map(_write(tmp_path, top="max_gap = 0"))
    assert m.max_gap == 0
    both = plan_reads(m, ["energy", "serial_no"])
    assert [(b.address, b.count) for b in both] == [(0x5000, 4), (0x8900, 2)]
