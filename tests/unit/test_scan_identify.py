"""Identification rules of `gridmint provision scan`, on register words (no I/O), and the
config writer's TOML on its own."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import pytest

from edge.settings import load_settings
from provisioning.scan import (
    ConfigWriteError,
    FoundDevice,
    Kind,
    ScanOptions,
    identify_abb,
    identify_eastron,
    identify_epever,
    identify_renogy,
    identify_vedirect,
    is_printable_model,
    is_sunspec_marker,
    parse_host,
    parse_int_list,
    render_meter,
    to_meter_settings,
    toml_string,
    write_config,
)


def f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def text_words(text: str, registers: int) -> list[int]:
    data = text.encode("ascii").ljust(2 * registers, b"\x00")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# ------------------------------------------------------------------------------ Eastron


def test_sdm630_has_three_plausible_phase_voltages() -> None:
    ident = identify_eastron(f32(231.2), f32(50.01), f32(229.8) + f32(232.4))
    assert ident is not None
    assert (ident.vendor, ident.model, ident.register_map) == (
        "Eastron",
        "SDM630",
        "eastron/sdm630",
    )
    assert ident.details["voltage_l2"] == 229.8


@pytest.mark.parametrize("l2_l3", [None, [0, 0, 0, 0], f32(231.0) + f32(0.0)])
def test_sdm120_refuses_or_reads_zero_on_l2_l3(l2_l3: list[int] | None) -> None:
    ident = identify_eastron(f32(121.0), f32(60.0), l2_l3)
    assert ident is not None and ident.model == "SDM120"
    assert ident.register_map == "eastron/sdm120"


@pytest.mark.parametrize(
    ("volts", "hz"),
    [(0.0, 50.0), (400.0, 50.0), (230.0, 0.0), (230.0, 70.0), (float("nan"), 50.0)],
)
def test_eastron_needs_plausible_voltage_and_frequency(volts: float, hz: float) -> None:
    assert identify_eastron(f32(volts), f32(hz), None) is None


def test_a_sunspec_marker_is_not_an_eastron_voltage() -> None:
    assert identify_eastron([0x5375, 0x6E53], f32(50.0), None) is None
    assert identify_eastron(None, f32(50.0), None) is None


# ------------------------------------------------------------------------------ ABB


def test_abb_model_id() -> None:
    ident = identify_abb([0x4232, 0x3320])  # "B23 "
    assert ident is not None and (ident.model, ident.register_map) == ("B23", "abb/b23")
    assert ident.details["model_id"] == "0x42323320"
    b24 = identify_abb([0x4232, 0x3420])
    assert b24 is not None and b24.model == "B24" and b24.register_map == "abb/b23"


@pytest.mark.parametrize("words", [None, [0, 0], [0x4132, 0x3320], [0x4232, 0x3520], [0x4232]])
def test_abb_rejects_other_ids(words: list[int] | None) -> None:
    assert identify_abb(words) is None


# ------------------------------------------------------------------------------ EPEver


def test_epever_pv_and_battery_voltage_and_soc() -> None:
    # 0x3100 PV 36.5 V, 0x3101 2.1 A, 0x3102/03 power (CDAB), 0x3104 battery 13.2 V; SOC 87 %.
    ident = identify_epever([3650, 210, 7665, 0, 1320], [87])
    assert ident is not None
    assert (ident.vendor, ident.register_map, ident.kind) == (
        "EPEver",
        "epever/tracer-an",
        "charge_controller",
    )
    assert ident.details == {"pv_voltage": 36.5, "battery_voltage": 13.2, "battery_soc": 87}
    assert identify_epever([0, 0, 0, 0, 2650], [0]) is not None  # night, 24 V battery, empty


@pytest.mark.parametrize(
    ("block", "soc"),
    [
        ([3650, 0, 0, 0, 1320], [101]),  # SOC above 100
        ([3650, 0, 0, 0, 300], [50]),  # battery 3 V
        ([30000, 0, 0, 0, 1320], [50]),  # PV 300 V
        ([3650, 0, 0, 0, 1320], None),  # SOC refused
        (None, [50]),
    ],
)
def test_epever_rejects_implausible(block: list[int] | None, soc: list[int] | None) -> None:
    assert identify_epever(block, soc) is None


# ------------------------------------------------------------------------------ Renogy


def test_renogy_with_model_string() -> None:
    ident = identify_renogy(text_words("  RNG-CTRL-RVR40", 8), [76, 134])
    assert ident is not None
    assert (ident.model, ident.register_map) == ("RNG-CTRL-RVR40", "renogy/rover")
    assert ident.details["battery_voltage"] == 13.4


def test_renogy_without_model_string_falls_back_to_soc_and_voltage() -> None:
    ident = identify_renogy(None, [55, 128])
    assert ident is not None and ident.model == "Rover"
    assert "no model string" in ident.details["note"]
    garbage = identify_renogy([0xFFFF] * 8, [55, 128])
    assert garbage is not None and garbage.model == "Rover"


@pytest.mark.parametrize("soc_voltage", [None, [150, 128], [50, 20], [50, 900], [50]])
def test_renogy_rejects_implausible(soc_voltage: list[int] | None) -> None:
    assert identify_renogy(text_words("RNG-CTRL-RVR40", 8), soc_voltage) is None


def test_printable_model_string() -> None:
    assert is_printable_model(text_words("ML2430", 8))
    assert not is_printable_model([0] * 8)
    assert not is_printable_model([0x4142, 0x0143] + [0] * 6)  # control byte inside
    assert not is_printable_model(text_words("--", 8))


# ------------------------------------------------------------------------------ SunSpec, VE.Direct


def test_sunspec_marker() -> None:
    assert is_sunspec_marker([0x5375, 0x6E53])
    assert not is_sunspec_marker([0x6E53, 0x5375])
    assert not is_sunspec_marker(None)


def test_vedirect_mppt_and_battery_monitor() -> None:
    mppt = identify_vedirect({"PID": "0xA053", "SER#": "HQ2231ABCDE", "V": "13280", "H19": "123"})
    assert mppt is not None
    assert (mppt.model, mppt.serial_number, mppt.kind) == (
        "SmartSolar MPPT 75/15",
        "HQ2231ABCDE",
        "charge_controller",
    )
    unknown = identify_vedirect({"PID": "0xBEEF", "PPV": "10"})
    assert unknown is not None and unknown.model == "PID 0xBEEF"
    bmv = identify_vedirect({"PID": "0x203", "SOC": "876", "V": "12800"})
    assert bmv is not None and bmv.kind == "battery_monitor" and bmv.model == "BMV-700"
    assert identify_vedirect({}) is None


# ------------------------------------------------------------------------------ arguments


def test_parse_int_list() -> None:
    assert parse_int_list("1-3, 126,2", "--units", 1, 247) == (1, 2, 3, 126)
    assert parse_int_list("", "--units", 1, 247) == ()
    for bad, message in [("1-x", "not a number"), ("5-2", "backwards"), ("0-3", "outside")]:
        with pytest.raises(ValueError, match=message):
            parse_int_list(bad, "--units", 1, 247)


def test_parse_host() -> None:
    assert parse_host("192.0.2.10") == ("192.0.2.10", 502)
    assert parse_host("192.0.2.10:1502") == ("192.0.2.10", 1502)
    assert parse_host("[2001:db8::1]:503") == ("2001:db8::1", 503)
    assert parse_host("inverter.local") == ("inverter.local", 502)
    for bad in ("192.0.2.10:0", "host:port", "", "a b"):
        with pytest.raises(ValueError):
            parse_host(bad)


def test_options_plan_sunspec_only_units() -> None:
    plan = ScanOptions(units=(1, 2), sunspec_units=(2, 126)).serial_plan()
    assert [u for u, _ in plan] == [1, 2, 126]
    assert plan[-1][1] == ("sunspec",)
    assert plan[0][1][:3] == ("abb", "eastron", "epever")  # ID register first
    assert plan[0][1].index("sunspec") < plan[0][1].index("renogy")
    with pytest.raises(ValueError):
        ScanOptions(units=(0,))


# ------------------------------------------------------------------------------ config


def _rtu(model: str, rmap: str, unit: int, kind: Kind = "meter") -> FoundDevice:
    return FoundDevice(
        kind=kind,
        vendor="V",
        model=model,
        driver="modbus",
        register_map=rmap,
        transport="rtu",
        serial_port="/dev/ttyUSB0",
        baudrate=9600,
        parity="N",
        unit_id=unit,
    )


def test_meter_settings_channels() -> None:
    sdm = to_meter_settings(_rtu("SDM630", "eastron/sdm630", 1))
    assert sdm["channels"] == {"imported": "import_energy", "exported": "export_energy"}
    assert (sdm["transport"], sdm["baudrate"], sdm["unit_id"]) == ("rtu", 9600, 1)
    cc = to_meter_settings(_rtu("Rover", "renogy/rover", 3, "charge_controller"))
    assert cc["channels"] == {"generated": "generated_energy"} and cc["soc"] == "battery_soc"
    inverter = FoundDevice(
        "inverter", "Fronius", "Symo", "sunspec", "", "tcp", host="192.0.2.10", port=502, unit_id=1
    )
    entry = to_meter_settings(inverter)
    assert entry["channels"] == {"generated": "ac_energy_wh"} and "register_map" not in entry
    victron = FoundDevice(
        "charge_controller", "Victron", "MPPT", "vedirect", "", "vedirect", serial_port="/dev/x"
    )
    assert to_meter_settings(victron)["channels"] == {"generated": "yield_total_wh"}


def test_toml_strings_survive_odd_serial_numbers() -> None:
    odd = 'A"B\\C\x01\x7fé\n'
    assert tomllib.loads(f"x = {toml_string(odd)}")["x"] == odd
    text = render_meter({"name": "m", "channels": {}, "unit_id": 2}, "line one\nline two")
    assert tomllib.loads(text)["meters"] == [{"name": "m", "channels": {}, "unit_id": 2}]


def test_write_config_creates_minimal_file_and_skips_duplicates(tmp_path: Path) -> None:
    config = tmp_path / "sub" / "edge.toml"
    first = write_config(config, [_rtu("SDM630", "eastron/sdm630", 1)])
    assert first.created and first.added == ["sdm630-1"]
    settings = load_settings(config)
    assert settings.device_id == "CHANGE-ME-device"
    assert settings.key_file == config.parent / "device.key"
    # Same port and unit again (even under another model) is skipped; unit 2 is added.
    second = write_config(
        config, [_rtu("SDM120", "eastron/sdm120", 1), _rtu("SDM630", "eastron/sdm630", 2)]
    )
    assert second.added == ["sdm630-2"] and len(second.skipped) == 1
    assert [m.unit_id for m in load_settings(config).meters] == [1, 2]


def test_write_config_refuses_an_inline_meters_array(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    original = 'device_id = "d"\nmeters = [{ name = "x", register_map = "eastron/sdm630" }]\n'
    config.write_text(original)
    with pytest.raises(ConfigWriteError, match="not changed"):
        write_config(config, [_rtu("SDM630", "eastron/sdm630", 1)])
    assert config.read_text() == original
