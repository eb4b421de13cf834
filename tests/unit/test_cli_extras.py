"""A command whose extra is not installed says which one to install, in one plain line.

`gridmint.cli.EXTRAS` must list what pyproject.toml's extras install, and the CLI's module-level
imports must stay within the base install (no Modbus, MQTT, database or web libraries).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gridmint import cli

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return name.group(0).lower().replace("_", "-")


def _extras_from_pyproject() -> dict[str, set[str]]:
    optional = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        out: set[str] = set()
        for req in optional[extra]:
            if req.startswith("gridmint["):
                for inner in req[len("gridmint[") : req.index("]")].split(","):
                    out |= expand(inner.strip())
            else:
                out.add(_distribution(req))
        return out

    return {extra: expand(extra) for extra in ("edge", "cloud", "demo")}


def test_the_cli_knows_what_each_extra_installs() -> None:
    assert {k: set(v) for k, v in cli.EXTRAS.items()} == _extras_from_pyproject()


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("fastapi", ["cloud", "serve"], "cloud"),
        ("sqlalchemy.ext.asyncio", ["cloud", "add-device", "--device-id", "x"], "cloud"),
        ("pymodbus", ["provision", "scan"], "edge"),
        ("serial", ["sim", "meter"], "edge"),
        ("paho", ["edge", "run", "--config", "f"], "edge"),
        ("paho", ["cloud", "serve"], "cloud"),  # in both extras: the command decides
        ("aiosqlite", ["cloud", "serve"], "cloud"),
        ("amqtt.broker", ["demo", "--homes", "2"], "demo"),
        ("fastapi", ["demo"], "demo"),
        ("gpiozero", ["edge", "run"], "edge"),
        ("argon2", ["cloud", "serve"], "cloud"),
    ],
)
def test_a_missing_module_maps_to_its_extra(module: str, argv: list[str], extra: str) -> None:
    assert cli.missing_extra(module, argv) == extra


def test_modules_that_no_extra_installs_are_not_mapped() -> None:
    for module in ("mqttlink", "cloud.domain", "cbor2", "no_such_module", None):
        assert cli.missing_extra(module, ["edge", "run"]) is None


def test_command_name() -> None:
    assert cli.command_name(["cloud", "serve", "--port", "1"]) == "gridmint cloud serve"
    assert cli.command_name(["demo", "--homes", "2"]) == "gridmint demo"
    assert cli.command_name(["-v"]) == "gridmint"


def test_main_prints_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def app() -> None:
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["gridmint", "cloud", "serve", "--port", "8000"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: 'gridmint cloud serve' needs the aggregator's packages: "
        "pip install 'gridmint[cloud]'\n"
    )


def test_main_keeps_the_traceback_for_a_broken_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def app() -> None:
        raise ModuleNotFoundError("No module named 'mqttlink'", name="mqttlink")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["gridmint", "edge", "run"])
    with pytest.raises(ModuleNotFoundError):
        cli.main()


def test_the_cli_imports_only_base_packages_until_a_command_runs() -> None:
    code = (
        "import sys, gridmint.cli\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    heavy = {"pydantic", "pydantic_core", "pymodbus", "serial", "paho", "aiosqlite", "sqlalchemy",
             "fastapi", "uvicorn", "alembic", "amqtt", "gpiozero", "cryptography", "cbor2",
             "rich", "cloud", "edge", "simulators"}
    assert not loaded & heavy, sorted(loaded & heavy)
