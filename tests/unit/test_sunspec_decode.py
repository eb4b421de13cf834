"""SunSpec decoding and discovery against hand-built register dumps (no network).

The fixtures in firmware-configs/fixtures/sunspec/ were written register by register from the
SunSpec json model definitions, with the expected values worked out by hand in each file's
"how_derived"; the driver must reproduce them exactly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge.drivers.modbus_generic import DeviceUnavailableError
from edge.drivers.sunspec import (
    INVERTER_QUANTITIES,
    METER_QUANTITIES,
    Point,
    SunSpecDevice,
    SunSpecModelError,
    apply_sf,
    decode_point,
    decode_sf,
    decode_string,
    discover,
    load_model_defs,
)

FIXTURES = Path(__file__).resolve().parents[2] / "firmware-configs" / "fixtures" / "sunspec"
INVERTER = "fronius_like_inverter_103.json"
METER = "solaredge_like_meter_203.json"


def load_fixture(name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return fixture


def registers(fixture: dict[str, Any], shift: int = 0) -> dict[int, int]:
    """address -> word for every register of the dump, moved by `shift`."""
    out: dict[int, int] = {}
    for block in fixture["blocks"]:
        for i, word in enumerate(block["words"]):
            address = block["address"] + i + shift
            assert address not in out, f"fixture defines {address} twice"
            out[address] = int(word, 16)
    return out


class DumpReader:
    """A RegisterReader over a register dump: absent registers answer exception 2.

    `faults` maps a start address to "timeout" (never answers), "silent" (DeviceUnavailableError
    without an exception code, as a bus reports a timeout) or an exception code.
    """

    def __init__(self, regs: dict[int, int], faults: dict[int, str | int] | None = None) -> None:
        self.regs = regs
        self.faults = faults or {}
        self.requests: list[tuple[str, int, int, int]] = []

    async def read_registers(self, table: str, address: int, count: int, unit_id: int) -> list[int]:
        self.requests.append((table, address, count, unit_id))
        fault = self.faults.get(address)
        if fault == "timeout":
            await asyncio.sleep(30)
        if fault == "silent":
            raise DeviceUnavailableError(f"no response from unit {unit_id}")
        if isinstance(fault, int):
            raise DeviceUnavailableError(f"Modbus exception {fault}", exception_code=fault)
        if table != "holding":
            raise DeviceUnavailableError("illegal function", exception_code=1)
        try:
            return [self.regs[a] for a in range(address, address + count)]
        except KeyError:
            raise DeviceUnavailableError("illegal data address", exception_code=2) from None


# ------------------------------------------------------------------ the fixtures themselves


@pytest.mark.parametrize("name", [INVERTER, METER])
def test_fixture_blocks_are_contiguous(name: str) -> None:
    fixture = load_fixture(name)
    regs = registers(fixture)
    start, end = min(regs), max(regs) + 1
    assert sorted(regs) == list(range(start, end)), "holes in the dump"
    assert (regs[start], regs[start + 1]) == (0x5375, 0x6E53)
    for model_id, address, length in fixture["expected"]["models"]:
        assert (regs[address], regs[address + 1]) == (model_id, length)


# ------------------------------------------------------------------ pure decoders


def p(ptype: str, size: int = 1) -> Point:
    return Point("X", 2, ptype, size)


@pytest.mark.parametrize(
    ("ptype", "words"),
    [
        ("int16", [0x8000]),
        ("sunssf", [0x8000]),
        ("uint16", [0xFFFF]),
        ("enum16", [0xFFFF]),
        ("acc16", [0x0000]),
        ("acc32", [0x0000, 0x0000]),
        ("int32", [0x8000, 0x0000]),
        ("uint32", [0xFFFF, 0xFFFF]),
        ("bitfield32", [0xFFFF, 0xFFFF]),
        ("acc64", [0, 0, 0, 0]),
        ("float32", [0x7FC0, 0x0000]),
    ],
)
def test_not_implemented_values_are_none(ptype: str, words: list[int]) -> None:
    assert decode_point(p(ptype, len(words)), words) is None


def test_signed_and_unsigned_values() -> None:
    assert decode_point(p("int16"), [0xA460]) == -23456.0
    assert decode_point(p("int16"), [0x7FFF]) == 32767.0
    assert decode_point(p("uint16"), [0xFFFE]) == 65534.0
    assert decode_point(p("acc32", 2), [0x0052, 0xE32D]) == 5432109.0
    assert decode_point(p("acc32", 2), [0xFFFF, 0xFFFF]) == 4294967295.0  # valid for acc32
    assert decode_point(p("int32", 2), [0xFFFF, 0xFFFE]) == -2.0
    assert decode_point(p("uint32", 2), [0x0001, 0x0000]) == 65536.0
    assert decode_point(p("float32", 2), [0x4366, 0x0000]) == 230.0


def test_scale_factors() -> None:
    assert decode_sf(0xFFFF) == -1
    assert decode_sf(0xFFFE) == -2
    assert decode_sf(0x0003) == 3
    assert decode_sf(0x8000) is None  # not implemented
    assert decode_sf(0x000B) is None  # 11: outside -10..10, garbage
    assert decode_sf(0xFFF5) is None  # -11
    # Division for negative SFs gives the correctly rounded decimal.
    assert apply_sf(27731, -1) == 2773.1
    assert apply_sf(5002, -2) == 50.02
    assert apply_sf(-23456, -1) == -2345.6
    assert apply_sf(1234567, 1) == 12345670.0


def test_strings() -> None:
    assert decode_string([0x4672, 0x6F6E, 0x6975, 0x7300, 0, 0]) == "Fronius"
    assert decode_string([0x2041, 0x2020]) == "A"  # blank padding is cut too
    assert decode_string([0, 0, 0]) == ""


def test_rejects_bad_words() -> None:
    with pytest.raises(ValueError, match="expected 2 registers"):
        decode_point(p("acc32", 2), [1])
    with pytest.raises(ValueError, match="16-bit"):
        decode_point(p("uint16"), [0x10000])


# ------------------------------------------------------------------ model definitions


def test_model_tables_match_the_sunspec_definitions() -> None:
    defs = load_model_defs()
    assert set(defs) == {1, 101, 102, 103, 123, 124, 201, 202, 203, 204}
    assert (defs[1].length, defs[103].length, defs[203].length) == (66, 50, 105)
    inv = defs[103].points
    assert (inv["W"].offset, inv["W_SF"].offset, inv["WH"].offset, inv["WH_SF"].offset) == (
        14,
        15,
        24,
        26,
    )
    assert (inv["DCW"].offset, inv["St"].offset, inv["WH"].type) == (31, 38, "acc32")
    mtr = defs[203].points
    assert (mtr["W"].offset, mtr["W_SF"].offset, mtr["Hz"].offset) == (18, 22, 16)
    assert (mtr["TotWhExp"].offset, mtr["TotWhImp"].offset, mtr["TotWh_SF"].offset) == (
        38,
        46,
        54,
    )
    assert mtr["TotWhImp"].sf == "TotWh_SF"
    common = defs[1].points
    assert [(common[n].offset, common[n].size) for n in ("Mn", "Md", "Opt", "Vr", "SN")] == [
        (2, 16),
        (18, 16),
        (34, 8),
        (42, 8),
        (50, 16),
    ]


def test_bad_model_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text(
        "[models.9]\nname = 'x'\nlength = 2\nsource = 's'\npoints = [\n"
        "  { name = 'W', offset = 2, type = 'int16', sf = 'W_SF' },\n"
        "  { name = 'W_SF', offset = 3, type = 'uint16' },\n]\n"
    )
    with pytest.raises(SunSpecModelError, match="W_SF is not a sunssf point"):
        load_model_defs(bad)
    bad.write_text(
        "[models.9]\nname = 'x'\nlength = 1\nsource = 's'\n"
        "points = [{ name = 'W', offset = 2, type = 'acc32' }]\n"
    )
    with pytest.raises(SunSpecModelError, match="outside the model"):
        load_model_defs(bad)


# ------------------------------------------------------------------ discovery and reading


@pytest.mark.parametrize("name", [INVERTER, METER])
async def test_fixture_discovery_and_values(name: str) -> None:
    fixture = load_fixture(name)
    expected = fixture["expected"]
    reader = DumpReader(registers(fixture))
    device = SunSpecDevice(reader, fixture["unit_id"])
    layout = await device.discover()
    assert layout.base == expected["base"]
    assert [[m.id, m.address, m.length] for m in layout.models] == expected["models"]
    assert layout.end_marker is expected["end_marker"]
    assert (layout.manufacturer, layout.model, layout.options) == (
        expected["manufacturer"],
        expected["model"],
        expected["options"],
    )
    assert (layout.version, layout.serial_number) == (
        expected["version"],
        expected["serial_number"],
    )
    assert layout.device_address == expected["device_address"]

    reader.requests.clear()
    values = await device.read()
    assert (
        values == expected["values"]
    )  # exact: every expected value is a correctly rounded decimal
    for missing in expected["missing"]:
        assert missing in device.quantities, "a missing quantity is still one the device offers"
        assert missing not in values
    # One request for the model block, from its ID register, covering the SFs.
    assert len(reader.requests) == 1
    _table, address, count, unit = reader.requests[0]
    block = layout.inverter or layout.meter
    assert block is not None
    assert (address, unit) == (block.address, fixture["unit_id"])
    assert count <= 125


async def test_inverter_quantities_describe_units_and_counters() -> None:
    device = SunSpecDevice(DumpReader(registers(load_fixture(INVERTER))), 1)
    assert device.quantities == {}
    await device.discover()
    q = device.quantities
    assert set(q) == set(INVERTER_QUANTITIES)
    assert (q["ac_energy_wh"].unit, q["ac_energy_wh"].lifetime_energy) == ("Wh", True)
    assert (q["ac_power_w"].unit, q["ac_power_w"].lifetime_energy) == ("W", False)
    meter = SunSpecDevice(DumpReader(registers(load_fixture(METER))), 2)
    await meter.discover()
    assert set(meter.quantities) == set(METER_QUANTITIES)
    assert meter.quantities["import_energy_wh"].lifetime_energy


async def test_read_subset_and_unknown_names() -> None:
    reader = DumpReader(registers(load_fixture(INVERTER)))
    device = SunSpecDevice(reader, 1)
    assert await device.read(["ac_power_w"]) == {"ac_power_w": 2773.1}  # discovers first
    # Only the registers up to W_SF are read for W alone.
    assert reader.requests[-1] == ("holding", 40070, 16, 1)
    assert await device.read(["total_power_w"]) == {}  # a meter quantity on an inverter
    with pytest.raises(ValueError, match="unknown SunSpec quantities"):
        await device.read(["power"])


async def test_scale_factor_is_read_with_every_value() -> None:
    regs = registers(load_fixture(INVERTER))
    device = SunSpecDevice(DumpReader(regs), 1)
    assert (await device.read(["ac_power_w"]))["ac_power_w"] == 2773.1
    # The inverter switches to W_SF -2 at low power (Fronius does): 0x3039 = 12345 -> 123.45 W.
    regs[40084], regs[40085] = 0x3039, 0xFFFE
    assert (await device.read(["ac_power_w"]))["ac_power_w"] == 123.45
    regs[40085] = 0x8000  # SF not implemented: the value is unusable, not unscaled
    assert await device.read(["ac_power_w"]) == {}


async def test_base_zero_after_timeout_at_40000() -> None:
    fixture = load_fixture(INVERTER)
    regs = registers(fixture, shift=-40000)
    reader = DumpReader(regs, faults={40000: "timeout"})
    device = SunSpecDevice(reader, 1, timeout_s=0.05)
    layout = await device.discover()
    assert layout.base == 0
    assert [m.address for m in layout.models] == [2, 70]
    assert (await device.read())["ac_power_w"] == 2773.1


@pytest.mark.parametrize("fault", ["silent", 2, 4, 11])
async def test_base_50000_after_errors(fault: str | int) -> None:
    regs = registers(load_fixture(METER), shift=10000)
    reader = DumpReader(regs, faults={40000: fault, 0: fault})
    layout = await discover(reader, 2)
    assert layout.base == 50000
    assert layout.meter is not None and layout.meter.address == 50069


async def test_no_marker_anywhere() -> None:
    regs = {a: 0 for a in range(0, 10)} | {40000: 0x1234, 40001: 0x5678}
    reader = DumpReader(regs, faults={50000: "silent"})
    with pytest.raises(DeviceUnavailableError) as info:
        await discover(reader, 126)
    message = str(info.value)
    assert message.startswith("no SunSpec marker at 40000, 0 or 50000 on unit 126")
    assert "0x1234" in message  # says what was there instead


async def test_unknown_models_are_skipped_by_length() -> None:
    fixture = load_fixture(INVERTER)
    original = registers(fixture)
    # Insert a vendor model 64001 with L = 5 between the common model and model 103.
    regs = {a: w for a, w in original.items() if a < 40070}
    regs.update({40070: 64001, 40071: 5} | {40072 + i: 0xFFFF for i in range(5)})
    regs.update({a + 7: w for a, w in original.items() if a >= 40070})
    layout = await discover(DumpReader(regs), 1)
    assert layout.model_ids == (1, 64001, 103)
    assert layout.inverter is not None and layout.inverter.address == 40077
    device = SunSpecDevice(DumpReader(regs), 1)
    assert (await device.read())["ac_energy_wh"] == 12345670.0


async def test_map_without_end_marker() -> None:
    regs = registers(load_fixture(INVERTER))
    del regs[40122], regs[40123]
    layout = await discover(DumpReader(regs), 1)
    assert layout.model_ids == (1, 103)
    assert layout.end_marker is False


async def test_zero_filled_space_ends_the_chain() -> None:
    regs = registers(load_fixture(INVERTER))
    regs.update({40122 + i: 0 for i in range(300)})  # no end marker, zeros up to 40421
    reader = DumpReader(regs)
    layout = await discover(reader, 1)
    assert layout.model_ids == (1, 103)
    assert layout.end_marker is False
    assert len(reader.requests) < 10


class BrokenReader(DumpReader):
    async def read_registers(self, table: str, address: int, count: int, unit_id: int) -> list[int]:
        if address == 40000:
            raise RuntimeError("reader bug")
        return await super().read_registers(table, address, count, unit_id)


async def test_reader_breaking_its_contract_does_not_end_the_scan() -> None:
    reader = BrokenReader(registers(load_fixture(INVERTER), shift=-40000))
    layout = await discover(reader, 1)
    assert layout.base == 0


async def test_timeout_inside_the_chain_is_an_error() -> None:
    regs = registers(load_fixture(INVERTER))
    reader = DumpReader(regs, faults={40070: "silent"})
    with pytest.raises(DeviceUnavailableError, match="no response"):
        await discover(reader, 1)


async def test_moved_map_is_detected_and_rediscovered() -> None:
    regs = registers(load_fixture(INVERTER))
    device = SunSpecDevice(DumpReader(regs), 1)
    await device.discover()
    regs[40070] = 101  # firmware update: another model now sits there
    with pytest.raises(DeviceUnavailableError, match="map changed"):
        await device.read()
    assert device.layout is None
    values = await device.read()  # rediscovers: 101 has the same layout as 103
    assert device.layout is not None and device.layout.model_ids == (1, 101)
    assert values["ac_power_w"] == 2773.1
