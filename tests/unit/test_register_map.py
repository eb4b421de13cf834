"""Register maps: codecs against hand-computed words, shipped maps, fixture dumps, read planning.

Expected register words here were worked out by hand (IEEE 754 / two's complement) and are never
produced by the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edge.drivers.register_map import (
    Quantity,
    RegisterMap,
    RegisterMapError,
    decode,
    decode_block,
    encode,
    find_register_map,
    load_register_map,
    plan_reads,
    register_count,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "firmware-configs" / "fixtures"


def q(
    type_: str, order: str = "ABCD", scale: float = 1.0, address: int = 0, table: str = "input"
) -> Quantity:
    return Quantity(
        name="x",
        address=address,
        table=table,  # type: ignore[arg-type]
        type=type_,  # type: ignore[arg-type]
        scale=scale,
        unit="",
        word_order=order,  # type: ignore[arg-type]
    )


# (type, word order, scale, words on the wire, value)
CODEC_CASES = [
    # 230.0 = 1.796875 * 2^7 -> sign 0, exponent 0x86, fraction 0x660000 -> 0x43660000
    ("float32", "ABCD", 1.0, [0x4366, 0x0000], 230.0),
    ("float32", "CDAB", 1.0, [0x0000, 0x4366], 230.0),
    # -1207.5 = -1.00101101111b * 2^10 -> 0xC496F000
    ("float32", "ABCD", 1.0, [0xC496, 0xF000], -1207.5),
    ("float32", "CDAB", 1.0, [0xF000, 0xC496], -1207.5),
    # 1234.5 kWh = 10011010010.1b -> 0x449A5000
    ("float32", "ABCD", 1.0, [0x449A, 0x5000], 1234.5),
    ("float32", "ABCD", 1.0, [0x0000, 0x0000], 0.0),
    # 2300 = 0x08FC raw, 0.1 V per count
    ("uint16", "ABCD", 0.1, [0x08FC], 230.0),
    ("uint16", "CDAB", 0.1, [0x08FC], 230.0),  # word order is moot for one register
    ("uint16", "ABCD", 1.0, [0xFFFF], 65535.0),
    # -1234 = 65536 - 1234 = 64302 = 0xFB2E
    ("int16", "ABCD", 1.0, [0xFB2E], -1234.0),
    ("int16", "ABCD", 0.01, [0x0FA0], 40.0),  # 4000 = 0x0FA0
    # 123456789 = 0x075BCD15, 0.01 kWh per count
    ("uint32", "ABCD", 0.01, [0x075B, 0xCD15], 1234567.89),
    ("uint32", "CDAB", 0.01, [0xCD15, 0x075B], 1234567.89),
    ("uint32", "ABCD", 1.0, [0xFFFF, 0xFFFF], 4294967295.0),
    # -2 = 0xFFFFFFFE
    ("int32", "ABCD", 1.0, [0xFFFF, 0xFFFE], -2.0),
    ("int32", "CDAB", 1.0, [0xFFFE, 0xFFFF], -2.0),
    # -123456 = 2^32 - 123456 = 0xFFFE1DC0; 0.1 W per count (EM24-style, low word first)
    ("int32", "CDAB", 0.1, [0x1DC0, 0xFFFE], -12345.6),
    ("int32", "ABCD", 0.1, [0xFFFE, 0x1DC0], -12345.6),
    # 100000 = 0x000186A0
    ("int32", "ABCD", 1.0, [0x0001, 0x86A0], 100000.0),
]


@pytest.mark.parametrize(("type_", "order", "scale", "words", "value"), CODEC_CASES)
def test_decode_matches_hand_computed_words(
    type_: str, order: str, scale: float, words: list[int], value: float
) -> None:
    assert decode(q(type_, order, scale), words) == value


@pytest.mark.parametrize(("type_", "order", "scale", "words", "value"), CODEC_CASES)
def test_encode_produces_hand_computed_words(
    type_: str, order: str, scale: float, words: list[int], value: float
) -> None:
    assert encode(q(type_, order, scale), value) == words


def test_float32_rounds_to_nearest_representable_value() -> None:
    # 12345.678 kWh has no exact float32: the nearest is 0x4640E6B6 = 12345.677734375.
    assert encode(q("float32"), 12345.678) == [0x4640, 0xE6B6]
    assert decode(q("float32"), [0x4640, 0xE6B6]) == 12345.677734375


def test_float32_nan_is_passed_through() -> None:
    assert math.isnan(decode(q("float32"), [0x7FC0, 0x0000]))


def test_register_count() -> None:
    assert [register_count(t) for t in ("float32", "uint16", "int16", "uint32", "int32")] == [
        2,
        1,
        1,
        2,
        2,
    ]
    with pytest.raises(ValueError, match="float64"):
        register_count("float64")


@pytest.mark.parametrize(
    ("type_", "words"),
    [("float32", [0x4366]), ("uint16", [1, 2]), ("int32", []), ("uint16", [0x10000])],
)
def test_decode_rejects_wrong_words(type_: str, words: list[int]) -> None:
    with pytest.raises(ValueError, match="x:"):
        decode(q(type_), words)


@pytest.mark.parametrize(
    ("type_", "scale", "value"),
    [
        ("uint16", 1.0, 65536.0),
        ("uint16", 1.0, -1.0),
        ("int16", 1.0, 32768.0),
        ("uint16", 0.1, 6553.6),
        ("uint32", 1.0, 2.0**32),
        ("int32", 1.0, float("nan")),
        ("float32", 1.0, 1e39),
    ],
)
def test_encode_rejects_values_that_do_not_fit(type_: str, scale: float, value: float) -> None:
    with pytest.raises(ValueError, match="x:"):
        encode(q(type_, scale=scale), value)


# --------------------------------------------------------------------------- shipped maps


def test_sdm630_map_matches_reference_addresses() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    assert (m.vendor, m.model, m.default_unit, m.baudrate, m.parity, m.stopbits) == (
        "Eastron",
        "SDM630",
        1,
        9600,
        "N",
        1,
    )
    for ref in ("volkszaehler/mbmd", "nmakel/sdm_modbus", "evcc"):
        assert ref in m.source
    expected = {
        "voltage_l1": 0x0000,
        "voltage_l2": 0x0002,
        "voltage_l3": 0x0004,
        "current_l1": 0x0006,
        "current_l2": 0x0008,
        "current_l3": 0x000A,
        "power_l1": 0x000C,
        "power_l2": 0x000E,
        "power_l3": 0x0010,
        "total_power": 0x0034,
        "frequency": 0x0046,
        "import_energy": 0x0048,
        "export_energy": 0x004A,
        "total_energy": 0x0156,
    }
    assert {n: m.quantities[n].address for n in expected} == expected
    for name in expected:
        quantity = m.quantities[name]
        assert (quantity.table, quantity.type, quantity.word_order) == ("input", "float32", "ABCD")
    assert m.quantities["import_energy"].unit == "kWh"
    assert m.quantities["import_energy"].role == "energy_counter"
    assert m.quantities["export_energy"].role == "energy_counter"
    assert m.quantities["modbus_unit_id"].table == "holding"
    assert m.measurements() == list(expected)


def test_sdm120_map_has_l1_rows_and_same_names() -> None:
    m = load_register_map(find_register_map("eastron/sdm120"))
    assert m.model == "SDM120"
    assert m.quantities["total_power"].address == 0x000C
    assert m.quantities["power_l1"].address == 0x000C
    assert m.quantities["import_energy"].address == 0x0048
    assert m.quantities["export_energy"].address == 0x004A
    assert m.quantities["frequency"].address == 0x0046
    assert "voltage_l2" not in m.quantities


# --------------------------------------------------------------------------- fixture dumps


def _fixtures() -> list[Path]:
    # Only register-map dumps; SunSpec and VE.Direct fixtures have their own tests.
    return sorted(
        p for p in FIXTURES.rglob("*.json") if "register_map" in json.loads(p.read_text())
    )


def test_there_are_fixture_dumps() -> None:
    assert len(_fixtures()) >= 2


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.stem)
def test_fixture_dump_decodes_to_expected_values(path: Path) -> None:
    fixture = json.loads(path.read_text())
    m = load_register_map(find_register_map(fixture["register_map"]))
    expected: dict[str, float] = fixture["expected"]
    reads = {
        (r["table"], int(r["address"], 16)): [int(w, 16) for w in r["words"]]
        for r in fixture["reads"]
    }
    plan = plan_reads(m, list(expected))
    # The dump was taken with the reads the planner makes: same blocks, same sizes.
    assert {(b.table, b.address, b.count) for b in plan} == {
        (table, address, len(words)) for (table, address), words in reads.items()
    }
    decoded: dict[str, float] = {}
    for block in plan:
        decoded.update(decode_block(m, block, reads[(block.table, block.address)]))
    assert decoded == expected
    # And the encoder (what the simulator serves) reproduces the hand-made words.
    for block in plan:
        words = reads[(block.table, block.address)]
        for name in block.names:
            quantity = m.quantities[name]
            offset = quantity.address - block.address
            n = register_count(quantity.type)
            assert encode(quantity, expected[name]) == words[offset : offset + n], name


# --------------------------------------------------------------------------- read planning


def _map(quantities: dict[str, Quantity]) -> RegisterMap:
    return RegisterMap(
        vendor="Test",
        model="T1",
        products=("T1",),
        source="test",
        default_unit=1,
        baudrate=9600,
        parity="N",
        stopbits=1,
        quantities=quantities,
    )


def _qs(*specs: tuple[str, int, str, str]) -> dict[str, Quantity]:
    return {
        name: Quantity(name, address, table, type_, 1.0, "", "ABCD")  # type: ignore[arg-type]
        for name, address, table, type_ in specs
    }


def test_plan_reads_sdm630_polls_in_four_blocks() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    plan = plan_reads(m)
    assert [(b.table, b.address, b.count, b.function_code) for b in plan] == [
        ("input", 0x0000, 18, 4),
        ("input", 0x0034, 2, 4),
        ("input", 0x0046, 6, 4),
        ("input", 0x0156, 2, 4),
    ]
    assert plan[2].names == ("frequency", "import_energy", "export_energy")


def test_plan_reads_only_energy_reads_one_block() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    plan = plan_reads(m, ["export_energy", "import_energy", "export_energy"])
    assert [(b.table, b.address, b.count, b.names) for b in plan] == [
        ("input", 0x0048, 4, ("import_energy", "export_energy"))
    ]


def test_plan_reads_settings_use_holding_registers() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    plan = plan_reads(m, ["modbus_unit_id", "voltage_l1"])
    assert [(b.table, b.address, b.count, b.function_code) for b in plan] == [
        ("input", 0x0000, 2, 4),
        ("holding", 0x0014, 2, 3),
    ]


def test_plan_reads_joins_gaps_up_to_eight_registers() -> None:
    m = _map(
        _qs(
            ("a", 0, "input", "float32"),  # registers 0-1
            ("b", 10, "input", "float32"),  # gap of 8 (2..9): joined
            ("c", 21, "input", "uint16"),  # gap of 9 (12..20): new block
            ("d", 22, "input", "int16"),  # adjacent
            ("e", 0, "holding", "uint16"),  # other table: never joined
        )
    )
    plan = plan_reads(m, ["c", "a", "e", "b", "d"])
    assert [(b.table, b.address, b.count, b.names) for b in plan] == [
        ("input", 0, 12, ("a", "b")),
        ("input", 21, 2, ("c", "d")),
        ("holding", 0, 1, ("e",)),
    ]
    assert len(plan_reads(m, ["a", "b"], max_gap=7)) == 2


def test_plan_reads_never_exceeds_125_registers() -> None:
    m = _map(_qs(*((f"q{i}", i * 6, "input", "float32") for i in range(60))))
    plan = plan_reads(m, [f"q{i}" for i in range(60)])
    assert all(b.count <= 125 for b in plan)
    assert sum(len(b.names) for b in plan) == 60
    assert plan[0].address == 0
    assert plan[0].count == 122  # q0..q20 end at 20*6+2; q21 would end at 128
    assert plan[1].address == 126


def test_plan_reads_unknown_quantity() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    with pytest.raises(RegisterMapError, match="no quantity 'power_l4'"):
        plan_reads(m, ["power_l4"])


def test_decode_block_rejects_short_read() -> None:
    m = load_register_map(find_register_map("eastron/sdm630"))
    (block,) = plan_reads(m, ["import_energy"])
    with pytest.raises(ValueError, match="returned 1"):
        decode_block(m, block, [0x449A])


# --------------------------------------------------------------------------- bad map files

GOOD = """
vendor = "Test"
model = "T1"
products = ["T1"]
source = "hand written"

[transport]
default_unit = 1
baudrate = 9600
parity = "N"
stopbits = 1

[quantities.voltage_l1]
address = 0x0000
table = "input"
type = "float32"
unit = "V"

[quantities.energy]
address = 0x0010
table = "holding"
type = "uint32"
scale = 0.01
unit = "kWh"
word_order = "CDAB"
role = "energy_counter"
"""


def test_good_map_loads(tmp_path: Path) -> None:
    path = tmp_path / "t1.toml"
    path.write_text(GOOD)
    m = load_register_map(path)
    assert m.quantities["voltage_l1"].word_order == "ABCD"
    assert m.quantities["voltage_l1"].scale == 1.0
    assert m.quantities["energy"] == Quantity(
        "energy", 0x10, "holding", "uint32", 0.01, "kWh", "CDAB", "energy_counter"
    )


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("address = 0x0000", 'address = "0x0000"', "quantities.voltage_l1.address"),
        ("address = 0x0000\n", "", "quantities.voltage_l1.address"),
        ("address = 0x0010", "address = 0xFFFF", "quantities.energy.address"),
        ('type = "float32"', 'type = "float64"', "quantities.voltage_l1.type"),
        ('table = "input"', 'table = "coils"', "quantities.voltage_l1.table"),
        ('unit = "V"', 'unti = "V"', "quantities.voltage_l1.unti"),
        ('word_order = "CDAB"', 'word_order = "BADC"', "quantities.energy.word_order"),
        ("scale = 0.01", "scale = 0", "quantities.energy.scale"),
        ('role = "energy_counter"', 'role = "counter"', "quantities.energy.role"),
        ("default_unit = 1", "default_unit = 300", "transport.default_unit"),
        ('parity = "N"', 'parity = "X"', "transport.parity"),
        ('vendor = "Test"\n', "", "vendor"),
        ('products = ["T1"]', "products = []", "products"),
        ("[quantities.voltage_l1]", "[quantities.Voltage]", "quantities.Voltage"),
    ],
)
def test_bad_map_error_names_file_and_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(RegisterMapError) as info:
        load_register_map(path)
    assert str(path) in str(info.value)
    assert f": {field}:" in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("vendor = \n")
    with pytest.raises(RegisterMapError, match=r"broken\.toml: not valid TOML"):
        load_register_map(path)
    with pytest.raises(RegisterMapError, match=r"absent\.toml: cannot read"):
        load_register_map(tmp_path / "absent.toml")


# --------------------------------------------------------------------------- locating maps


def test_find_register_map_in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDMINT_FIRMWARE_CONFIGS", raising=False)
    path = find_register_map("eastron/sdm630")
    assert path == REPO / "firmware-configs" / "registers" / "eastron" / "sdm630.toml"
    assert find_register_map("eastron/sdm630.toml") == path


def test_find_register_map_prefers_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "registers" / "eastron" / "sdm630.toml"
    own.parent.mkdir(parents=True)
    own.write_text(GOOD)
    monkeypatch.setenv("GRIDMINT_FIRMWARE_CONFIGS", str(tmp_path))
    assert find_register_map("eastron/sdm630") == own
    # Maps the override lacks still come from the checkout.
    assert find_register_map("eastron/sdm120").parent.parent.parent == REPO / "firmware-configs"


@pytest.mark.parametrize("name", ["../../etc/passwd", "Eastron/SDM630", "/abs/path", ""])
def test_find_register_map_rejects_odd_names(name: str) -> None:
    with pytest.raises(RegisterMapError, match="vendor/model"):
        find_register_map(name)


def test_find_register_map_unknown_lists_searched_dirs() -> None:
    with pytest.raises(RegisterMapError, match=r"'acme/x1' not found \(searched .*registers"):
        find_register_map("acme/x1")
