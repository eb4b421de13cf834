"""gridmint installed from its wheel, the way the installer guide installs it on a Pi.

The wheel is built once per session from this checkout and installed (not editable) into fresh
virtualenvs: `gridmint[edge]` as on a Pi, `gridmint[cloud]` as on the aggregator. Every command
runs from a folder outside the source tree with no PYTHONPATH, so only what the wheel ships and
what the extra pulls in is importable.

Edge: no aggregator library is installed; the installed agent reads a simulated meter over
Modbus TCP (register map from the wheel), mints on a fast simulated clock shared with this
test's aggregator, and its token is accepted; `gridmint cloud serve` names the missing extra in
one plain line. Cloud: the aggregator migrates its database (Alembic scripts from the wheel)
and serves its pages and static files; no Modbus stack is installed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from edge.drivers.register_map import find_register_map, load_register_map
from protocol.clock import SimClock
from simulators.modbus_meter import SimulatedMeter, start_meter_server
from tests.helpers.services import Mosquitto, free_port
from tests.helpers.venv import REPO, build_wheel, clean_env, make_venv

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEPLOYMENT = "gridmint-wheel-test"
SPEED = 300.0  # one 5-minute interval per real second

CLOUD_ONLY = ("fastapi", "sqlalchemy", "asyncpg", "alembic", "uvicorn", "amqtt", "jinja2", "argon2")
EDGE_ONLY = ("pymodbus", "serial", "gpiozero", "amqtt")

EDGE_CONFIG = """
device_id = "pi-wheel"
site_id = "site-wheel"
deployment = "{deployment}"
key_file = "device.key"
state_db = "edge.sqlite"
broker_url = "{broker}"
interval_s = 300
telemetry_interval_s = 0.5
resend_after_s = 2.0

[[meters]]
name = "pv"
register_map = "eastron/sdm630"
port = {port}
unit_id = 1
channels = {{ generated = "export_energy" }}

[[meters]]
name = "grid"
register_map = "eastron/sdm630"
port = {port}
unit_id = 2
channels = {{ imported = "import_energy", exported = "export_energy" }}
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gridmint's wheel, built once per session."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def edge_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with gridmint[edge] installed from the wheel."""
    venv = tmp_path_factory.mktemp("edge-venv") / "venv"
    return make_venv(venv, f"{wheel}[edge]", compile_bytecode=False).parent


@pytest.fixture(scope="session")
def cloud_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with gridmint[cloud] installed from the wheel."""
    venv = tmp_path_factory.mktemp("cloud-venv") / "venv"
    return make_venv(venv, f"{wheel}[cloud]", compile_bytecode=False).parent


def test_the_wheel_ships_every_package_and_the_files_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.name for p in REPO.glob("*/__init__.py"))
    packages = [p for p in packages if p not in ("tests", "benchmarks")]
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"not in the wheel: {missing} (pyproject [tool.hatch.build.targets.wheel])"
    skip = (".pyc", ".sqlite", ".sqlite-wal", ".sqlite-shm")
    wanted = {  # templates, static files, Alembic scripts, vectors: every file of each package
        f.relative_to(REPO).as_posix()
        for p in packages
        for f in (REPO / p).rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(skip)
    }
    wanted |= {  # register maps, SunSpec models, systemd unit, udev rules
        "gridmint/" + f.relative_to(REPO).as_posix()
        for f in (REPO / "firmware-configs").rglob("*")
        if f.is_file()
    }
    assert not wanted - names, sorted(wanted - names)


def _run(cmd: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the venv's own executables
        cmd, cwd=cwd, env=clean_env(COLUMNS="200"), capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def _installed(python: Path, modules: tuple[str, ...], cwd: Path) -> dict[str, str | None]:
    """Where each module would be imported from in that interpreter (None: not importable)."""
    code = (
        "import importlib.util, json, sys\n"
        "specs = {m: importlib.util.find_spec(m) for m in sys.argv[1:]}\n"
        "print(json.dumps({m: s and s.origin for m, s in specs.items()}))\n"
    )
    done = _run([str(python), "-c", code, *modules], cwd)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _assert_names_extra(done: subprocess.CompletedProcess[str], command: str, extra: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"'{command}'" in lines[0] and f"pip install 'gridmint[{extra}]'" in lines[0], lines


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_edge_install_mints_a_token_the_aggregator_accepts(
    edge_bin: Path, mosquitto: Mosquitto, db_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "pi"
    site.mkdir()
    assert not site.is_relative_to(REPO)
    python = edge_bin / "python"

    where = _installed(python, (*CLOUD_ONLY, "mqttlink", "edge", "gridmint", "pymodbus"), site)
    assert {m: where[m] for m in CLOUD_ONLY} == dict.fromkeys(CLOUD_ONLY), where
    for ours in ("mqttlink", "edge", "gridmint", "pymodbus"):
        assert where[ours] is not None and where[ours].startswith(str(edge_bin.parent)), where

    _assert_names_extra(
        _run([str(edge_bin / "gridmint"), "cloud", "serve"], site), "gridmint cloud serve", "cloud"
    )
    # the systemd unit and udev rules come from the wheel's firmware-configs
    done = _run([str(edge_bin / "gridmint"), "provision", "install", "--root",
                 str(tmp_path / "root"), "--no-reload"], site)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "root/etc/systemd/system/gridmint-edge.service").is_file()

    done = _run([str(edge_bin / "gridmint"), "edge", "pubkey", "--key-file", "device.key"], site)
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)

    # One simulated clock for the meters, the aggregator and the agent's process.
    start = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    start -= timedelta(days=1, seconds=3)
    origin = time.time()
    clock = SimClock(origin_sim=start.timestamp(), speed=SPEED, origin_real=origin)
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    server = await start_meter_server(
        {1: SimulatedMeter(rmap, "pv", clock, seed=11), 2: SimulatedMeter(rmap, "grid", clock)},
        port=0,
    )
    runtime = CloudRuntime(
        CloudSettings(
            database_url=db_url,
            broker_url=mosquitto.url,
            deployment=DEPLOYMENT,
            http_port=0,
            client_id=f"agg-wheel-{time.monotonic_ns()}",
        ),
        clock,
    )
    agent: subprocess.Popen[bytes] | None = None
    log = site / "agent.log"
    try:
        await runtime.start(serve_http=False)
        store = runtime.store
        assert store is not None
        public = bytes.fromhex(key["public_key"])
        await store.add_device("pi-wheel", "site-wheel", public, bytes.fromhex(key["kid"]), 5000)
        cfg = site / "edge.toml"
        cfg.write_text(
            EDGE_CONFIG.format(deployment=DEPLOYMENT, broker=mosquitto.url, port=server.port)
        )
        with log.open("wb") as out:
            agent = subprocess.Popen(  # noqa: S603 - the venv's gridmint
                [str(edge_bin / "gridmint"), "edge", "run", "--config", str(cfg),
                 "--speed", str(SPEED), "--start", start.isoformat(), "--origin", repr(origin)],
                cwd=site, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while (stats := await store.stats()).accepted < 1:
            assert agent.poll() is None, f"agent exited {agent.returncode}:\n{_tail(log)}"
            assert stats.rejected == 0, (stats.rejected_by_reason, _tail(log))
            assert time.monotonic() < deadline, f"no token accepted in 90 s:\n{_tail(log)}"
            await asyncio.sleep(0.2)
        assert stats.rejected_by_reason == {}, stats
        [token] = await store.list_tokens(device_id="pi-wheel", limit=1)
        assert token.interval_start % 300 == 0 and token.interval_start >= start.timestamp()
    finally:
        if agent is not None:
            _stop(agent)
        await runtime.stop()
        await server.stop()
    assert "Traceback" not in _tail(log), _tail(log)


async def test_cloud_install_migrates_and_serves_its_pages(
    cloud_bin: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    host = tmp_path / "aggregator"
    host.mkdir()
    python = cloud_bin / "python"
    where = _installed(python, (*EDGE_ONLY, "cloud", "fastapi"), host)
    assert {m: where[m] for m in EDGE_ONLY} == dict.fromkeys(EDGE_ONLY), where
    assert where["cloud"] is not None and where["cloud"].startswith(str(cloud_bin.parent))

    _assert_names_extra(
        _run([str(cloud_bin / "gridmint"), "provision", "scan", "--port", "/dev/null"], host),
        "gridmint provision scan",
        "edge",
    )
    db = host / "cloud.sqlite"
    port = free_port()
    log = host / "cloud.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(  # noqa: S603 - the venv's gridmint
            [str(cloud_bin / "gridmint"), "cloud", "serve", "--database-url", f"sqlite:///{db}",
             "--broker", mosquitto.url, "--port", str(port), "--deployment", DEPLOYMENT],
            cwd=host, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                assert serve.poll() is None, f"aggregator exited {serve.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"aggregator not up in 60 s:\n{_tail(log)}"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            login = await http.get("/login")  # a Jinja2 template from the wheel
            assert login.status_code == 200 and "<form" in login.text, login.text[:500]
            css = await http.get("/static/style.css")  # a static file from the wheel
            assert css.status_code == 200 and css.text.strip()
    finally:
        _stop(serve)
    with sqlite3.connect(db) as conn:  # the Alembic migrations from the wheel ran
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision
    assert "Traceback" not in _tail(log), _tail(log)
