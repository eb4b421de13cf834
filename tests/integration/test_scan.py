"""`gridmint provision scan` against simulators on real serial stacks and real TCP.

One RS-485 line (a socat pty pair) carries an SDM630 (unit 1) and an EPEver Tracer (unit 2) at
9600 baud; a SunSpec inverter listens on Modbus TCP; a Victron MPPT sends VE.Direct on a second
pty pair. The scan must name each device, its transport and unit, and `--write` must give a TOML
that the edge agent's own loader accepts. Bauds and units are restricted to keep this short (a
pty does not enforce the baud rate, so every baud would "answer").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edge.drivers.register_map import find_register_map, load_register_map
from edge.settings import load_settings
from protocol.clock import SimClock
from provisioning.cli import provision_app
from provisioning.scan import ScanOptions, scan, write_config
from simulators.modbus_device import SimulatedDevice, start_rtu_server
from simulators.pty import PtyPair
from simulators.sunspec_device import SimulatedSunSpec, start_sunspec_tcp_server
from simulators.vedirect_device import SimulatedMppt

ORIGIN = datetime(2025, 6, 21, 10, 0, tzinfo=UTC).timestamp()
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.serial, pytest.mark.modbus]


@pytest.fixture
def rs485(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path, "rs485").open()
    yield pair
    pair.close()


@pytest.fixture
def ve_port(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path, "vedirect").open()
    yield pair
    pair.close()


@pytest.fixture
async def site(rs485: PtyPair, ve_port: PtyPair) -> AsyncIterator[dict[str, Any]]:
    """All simulators running; yields where they are."""
    clock = SimClock.starting_at(ORIGIN, 60.0)
    sdm = SimulatedDevice(load_register_map(find_register_map("eastron/sdm630")), "pv_meter", clock)
    epever = SimulatedDevice(
        load_register_map(find_register_map("epever/tracer-an")), "charge_controller", clock
    )
    rtu = await start_rtu_server({1: sdm, 2: epever}, rs485.sim_path, 9600)
    inverter = SimulatedSunSpec(clock, serial_number="INV-0042", model_name="SimInverter 5000")
    tcp = await start_sunspec_tcp_server({1: inverter})
    mppt = SimulatedMppt(clock, serial_number="HQ2231SIM01", port_path=ve_port.sim_path)
    await mppt.start()
    try:
        yield {
            "rs485": str(rs485.device_path),
            "vedirect": str(ve_port.device_path),
            "host": "127.0.0.1",
            "port": tcp.port,
        }
    finally:
        await mppt.stop()
        await tcp.stop()
        await rtu.stop()


FAST = ScanOptions(
    bauds=(9600,),
    units=(1, 2, 3),
    sunspec_units=(),
    tcp_units=(1, 2),
    timeout_s=0.25,
    tcp_timeout_s=0.5,
)


def _args(site: dict[str, Any]) -> list[str]:
    return [
        "scan",
        "--port",
        site["rs485"],
        "--port",
        site["vedirect"],
        "--host",
        f"{site['host']}:{site['port']}",
        "--bauds",
        "9600",
        "--units",
        "1-3",
        "--sunspec-units",
        "",
        "--tcp-units",
        "1,2",
        "--tcp-timeout",
        "0.5",
    ]


async def test_scan_finds_every_device_and_writes_a_loadable_config(
    site: dict[str, Any], tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    missing = str(tmp_path / "no-such-tty")
    report = await scan(
        [site["rs485"], site["vedirect"], missing],
        [(site["host"], site["port"]), ("127.0.0.1", 1)],  # port 1: connection refused
        FAST,
        lambda done, total, _label: seen.append((done, total)),
    )
    by_where = {(f.serial_port or f.host, f.unit_id): f for f in report.found}
    assert len(report.found) == 4, report

    sdm = by_where[(site["rs485"], 1)]
    assert (sdm.vendor, sdm.model, sdm.register_map) == ("Eastron", "SDM630", "eastron/sdm630")
    assert (sdm.transport, sdm.baudrate, sdm.parity, sdm.kind) == ("rtu", 9600, "N", "meter")
    assert 200 < sdm.details["voltage_l1"] < 260

    epever = by_where[(site["rs485"], 2)]
    assert (epever.vendor, epever.register_map, epever.transport) == (
        "EPEver",
        "epever/tracer-an",
        "rtu",
    )
    assert epever.kind == "charge_controller"

    inverter = by_where[(site["host"], 1)]
    assert (inverter.driver, inverter.transport, inverter.port) == ("sunspec", "tcp", site["port"])
    assert (inverter.kind, inverter.model, inverter.serial_number) == (
        "inverter",
        "SimInverter 5000",
        "INV-0042",
    )

    victron = by_where[(site["vedirect"], None)]
    assert (victron.driver, victron.transport, victron.vendor) == (
        "vedirect",
        "vedirect",
        "Victron",
    )
    assert victron.model == "SmartSolar MPPT 75/15"  # PID 0xA053
    assert victron.serial_number == "HQ2231SIM01"

    # Failures are reported, not fatal; progress reached its total.
    problems = {issue.where: issue.message for issue in report.issues if issue.level == "error"}
    assert "does not exist" in problems[missing]
    assert "127.0.0.1:1" in problems
    assert seen and seen[-1][0] == seen[-1][1] == report.probes

    # --write: a new file with placeholders, loadable by the agent; a second write adds nothing.
    config = tmp_path / "edge.toml"
    result = write_config(config, report.found)
    assert result.created and len(result.added) == 4
    settings = load_settings(config)
    meters = {m.name: m for m in settings.meters}
    assert set(meters) == {"sdm630-1", "epever-2", "inverter-1", "victron"}
    assert meters["sdm630-1"].serial_port == site["rs485"] and meters["sdm630-1"].unit_id == 1
    assert meters["epever-2"].baudrate == 9600 and meters["epever-2"].soc == "battery_soc"
    assert meters["inverter-1"].driver == "sunspec"
    assert meters["inverter-1"].port == site["port"]
    assert meters["inverter-1"].serial == "INV-0042"
    assert meters["victron"].driver == "vedirect"
    assert {str(c) for c in meters["victron"].channels} == {"generated"}
    before = config.read_text()
    again = write_config(config, report.found)
    assert again.added == [] and len(again.skipped) == 4
    assert config.read_text() == before


async def test_write_keeps_existing_content_and_makes_names_unique(
    site: dict[str, Any], tmp_path: Path
) -> None:
    report = await scan([site["rs485"]], [], dataclasses.replace(FAST, vedirect=False))
    assert [f.model for f in report.found] == ["SDM630", "Tracer AN"]
    example = (ROOT / "firmware-configs" / "edge" / "example.toml").read_text()
    config = tmp_path / "edge.toml"
    # The example already has a meter named like the one we would add, on another endpoint.
    config.write_text(example.replace('name = "pv"', 'name = "sdm630-1"'))
    result = write_config(config, report.found)
    assert result.added == ["sdm630-1-2", "epever-2"]
    text = config.read_text()
    assert text.startswith(example.replace('name = "pv"', 'name = "sdm630-1"'))
    names = [m["name"] for m in tomllib.loads(text)["meters"]]
    assert names == ["sdm630-1", "grid", "sdm630-1-2", "epever-2"]
    load_settings(config)  # still a valid agent config


async def test_cli_output_and_write(site: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, provision_app, [*_args(site), "--json", "--write", str(config)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    models = sorted(f["model"] for f in data["found"])
    assert models == ["SDM630", "SimInverter 5000", "SmartSolar MPPT 75/15", "Tracer AN"]
    assert sorted(data["written"]["added"]) == ["epever-2", "inverter-1", "sdm630-1", "victron"]
    assert len(load_settings(config).meters) == 4

    table = await asyncio.to_thread(
        runner.invoke, provision_app, [*_args(site), "--no-vedirect"], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    assert "Eastron SDM630" in table.stdout and "EPEver Tracer AN" in table.stdout
    assert "eastron/sdm630" in table.stdout and "SimInverter 5000" in table.stdout


def test_cli_plain_errors_and_nothing_found(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(provision_app, ["scan", "--units", "1-x", "--port", "/dev/null"])
    assert bad.exit_code == 1
    assert "--units" in bad.stderr and "Traceback" not in bad.output
    assert len(bad.stderr.strip().splitlines()) == 1
    bad_host = runner.invoke(provision_app, ["scan", "--host", "192.0.2.1:99999"])
    assert bad_host.exit_code == 1 and "port must be 1..65535" in bad_host.stderr
    nothing = runner.invoke(
        provision_app,
        ["scan", "--port", str(tmp_path / "ttyUSB9"), "--units", "1", "--sunspec-units", ""],
    )
    assert nothing.exit_code == 0
    assert "does not exist" in nothing.stderr and "no supported device found" in nothing.stderr


def test_module_runs_as_a_script() -> None:
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "provisioning.cli", "scan", "--units", "300"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --units: '300' is outside 1..247"
