"""Edge settings without pydantic: the same fields, defaults, limits and plain messages.

Every problem of a file is named with its location (`meters.0.port: ...`); environment
variables fill only the fields the file leaves out; the agent's process never imports pydantic.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.accounting import Channel
from edge.settings import (
    ConfigError,
    EdgeSettings,
    GpioSettings,
    MeterSettings,
    SettingsError,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
BASE = 'device_id = "pi-1"\nsite_id = "site-1"\nkey_file = "device.key"\nstate_db = "edge.sqlite"\n'
METER = '[[meters]]\nname = "pv"\nregister_map = "eastron/sdm630"\n'


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> EdgeSettings:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    return load_settings(cfg, environ or {})


def _problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc_info:
        _load(tmp_path, text)
    return str(exc_info.value)


def test_the_example_config_loads_with_its_defaults(tmp_path: Path) -> None:
    s = load_settings(REPO / "firmware-configs/edge/example.toml", {})
    assert s.interval_s in (300, 900) and s.meters
    s = _load(tmp_path, BASE + METER)
    assert s.key_file == tmp_path / "device.key" and s.state_db == tmp_path / "edge.sqlite"
    assert (s.deployment, s.broker_url, s.capacity_w, s.telemetry_interval_s) == (
        "gridmint-dev", "mqtt://127.0.0.1:1883", 5000, 10.0
    )
    m = s.meters[0]
    assert (m.driver, m.transport, m.host, m.port, m.unit_id, m.timeout_s) == (
        "modbus", "tcp", "127.0.0.1", 502, 1, 1.0
    )
    assert s.gpio is None and m.channels == {} and m.baudrate is None


def test_values_are_coerced_like_before(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + 'interval_s = 900\ntls_ca_file = "/etc/ca.crt"\n' + METER
              + 'channels = { generated = "export_energy" }\ntimeout_s = 2\n'
              + "[gpio]\nrelays = { boiler = 22 }\n")
    assert s.interval_s == 900 and s.tls_ca_file == Path("/etc/ca.crt")
    assert s.meters[0].channels == {Channel.GENERATED: "export_energy"}
    assert isinstance(s.meters[0].timeout_s, float)
    assert s.gpio == GpioSettings(relays={"boiler": 22})
    direct = EdgeSettings(device_id="pi-2", site_id="s", key_file="k", state_db="d",  # type: ignore[arg-type]
                          meters=[MeterSettings(name="pv", register_map="x")])
    assert direct.key_file == Path("k")


def test_every_problem_is_named_with_its_location(tmp_path: Path) -> None:
    text = _problems(
        tmp_path,
        'device_id = "a/b"\nsite_id = "s"\nkey_file = "k"\ninterval_s = 600\nbogus = 1\n'
        '[[meters]]\nname = "pv"\nport = 0\nchannels = { nope = "x" }\n[gpio]\nled_pin = 99\n',
    )
    for expected in (
        "bogus: Extra inputs are not permitted",
        "state_db: Field required",
        "device_id: id 'a/b' is not a valid id",
        "interval_s: Input should be 300 or 900",
        "meters.0.port: Input should be greater than or equal to 1",
        "meters.0.channels.nope: Input should be 'generated', 'imported'",
        "gpio.led_pin: Input should be less than or equal to 27",
    ):
        assert expected in text, (expected, text)
    assert text.startswith(f"config file {tmp_path / 'edge.toml'}: ")


def test_rules_across_fields(tmp_path: Path) -> None:
    no_map = BASE + '[[meters]]\nname = "x"\n'
    assert "a modbus meter needs register_map" in _problems(tmp_path, no_map)
    assert "meter names must be unique" in _problems(tmp_path, BASE + METER + METER)
    assert "an mqtts:// broker needs tls_ca_file" in _problems(
        tmp_path, BASE + 'broker_url = "mqtts://h:8883"\n' + METER
    )
    assert "tls_cert_file and tls_key_file go together" in _problems(
        tmp_path, BASE + 'tls_cert_file = "c"\n' + METER
    )
    assert "serial_port is required for vedirect" in _problems(
        tmp_path, BASE + '[[meters]]\nname = "v"\ndriver = "vedirect"\n'
    )
    assert "ledger_key is not a verifier key" in _problems(
        tmp_path, BASE + 'ledger_key = "nope"\n' + METER
    )
    with pytest.raises(SettingsError, match="capacity_w: Input should be greater than 0"):
        EdgeSettings(device_id="p", site_id="s", key_file=Path("k"), state_db=Path("d"),
                     meters=[], capacity_w=0)


def test_environment_fills_only_what_the_file_leaves_out(tmp_path: Path) -> None:
    env = {"GRIDMINT_EDGE_ZONE": "from-env", "gridmint_edge_capacity_w": "7000",
           "GRIDMINT_EDGE_TELEMETRY_INTERVAL_S": "0.5", "GRIDMINT_EDGE_DEVICE_ID": "ignored",
           "GRIDMINT_EDGE_GPIO": '{"led_pin": 5}'}
    s = _load(tmp_path, BASE + 'zone = "from-file"\n' + METER, env)
    assert (s.zone, s.capacity_w, s.telemetry_interval_s, s.device_id) == (
        "from-file", 7000, 0.5, "pi-1"
    )
    assert s.gpio is not None and s.gpio.led_pin == 5
    with pytest.raises(ConfigError, match="GRIDMINT_EDGE_CAPACITY_W|capacity_w"):
        _load(tmp_path, BASE + METER, {"GRIDMINT_EDGE_CAPACITY_W": "lots"})


def test_the_agent_modules_do_not_import_pydantic() -> None:
    code = (
        "import sys, edge.settings, edge.agent, edge.meters, edge.outbox\n"
        "print('pydantic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"


def test_dispatch_settings_and_telemetry_flows(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + METER)
    assert s.dispatch_key == "" and s.dispatch_silence_revert_s == 900.0
    assert s.meters[0].flows == {}
    key = "AB" * 32
    s = _load(
        tmp_path,
        BASE
        + f'dispatch_key = "{key}"\ndispatch_silence_revert_s = "600"\n'
        + METER
        + 'flows = { pv = "-total_power", grid = "total_power" }\n',
    )
    assert s.dispatch_key == key.lower() and s.dispatch_silence_revert_s == 600.0
    assert s.meters[0].flows == {"pv": "-total_power", "grid": "total_power"}
    assert "dispatch_key: dispatch_key should be 64 hex digits" in _problems(
        tmp_path, BASE + 'dispatch_key = "abcd"\n' + METER
    )
    assert "dispatch_key: dispatch_key should be 64 hex digits" in _problems(
        tmp_path, BASE + f'dispatch_key = "{"zz" * 32}"\n' + METER
    )
    assert "dispatch_silence_revert_s: Input should be greater than 0" in _problems(
        tmp_path, BASE + "dispatch_silence_revert_s = 0\n" + METER
    )
    assert "meters.0.flows: flow 'load' should be 'pv', 'battery' or 'grid'" in _problems(
        tmp_path, BASE + METER + 'flows = { load = "total_power" }\n'
    )
    assert "meters.0.flows: flow 'pv' should name a power quantity" in _problems(
        tmp_path, BASE + METER + 'flows = { pv = "-" }\n'
    )
