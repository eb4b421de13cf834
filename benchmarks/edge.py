"""Edge agent footprint: resident memory and CPU share while polling three devices once a second.

Runs the real agent (`gridmint edge run`) as its own process against three simulated SDM630
meters on Modbus TCP (served by this script's process) and a real Mosquitto, then samples the
agent's /proc entries. A measurement, not a test: it prints figures and asserts nothing about them.

    .venv/bin/python -m benchmarks.edge --seconds 60
    .venv/bin/python -m benchmarks.edge --seconds 60 --fresh-venv --breakdown

By default the agent runs on this interpreter (the dev venv: every extra installed). As on a Pi,
`--fresh-venv` builds the wheel and installs `gridmint[edge]` into a new venv, and `--python P`
uses an interpreter that has gridmint installed; either way the agent starts outside the source
tree with no PYTHONPATH, so it imports the installed package. `--breakdown` also imports the
agent's modules one step at a time in that interpreter, in the agent's order, and prints how
much resident memory each step adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_facts
from edge.drivers.register_map import find_register_map, load_register_map
from protocol.clock import SystemClock
from simulators.modbus_meter import SimulatedMeter, start_meter_server
from tests.helpers.services import Mosquitto
from tests.helpers.venv import build_wheel, clean_env, installed_versions, make_venv

#: Distributions whose versions the report shows for the agent's interpreter.
REPORTED = (
    "cryptography", "cbor2", "pymodbus", "paho-mqtt", "aiosqlite", "typer", "rich", "pydantic",
    "fastapi", "sqlalchemy", "asyncpg",
)

#: The agent's imports in the order `gridmint edge run` makes them: (label, modules).
BREAKDOWN_STEPS: list[tuple[str, list[str]]] = [
    ("asyncio (+ ssl, OpenSSL libs, concurrent.futures)", ["asyncio", "logging"]),
    ("typer (its vendored click, shellingham)", ["typer"]),
    ("gridmint.cli + provisioning.cli (typer apps; rich stays unloaded)", ["gridmint.cli"]),
    ("typer's parameter coercion (pydantic, typer >= 0.29)", ["typer._adapters"]),
    ("cryptography (Rust extension with OpenSSL)", [
        "cryptography.hazmat.primitives.asymmetric.ed25519",
        "cryptography.hazmat.primitives.serialization",
    ]),
    ("cbor2", ["cbor2"]),
    ("protocol/ (record, COSE, checkpoint, merkle, ...)", [
        "protocol.cose", "protocol.checkpoint", "protocol.statements", "protocol.receipts",
        "protocol.ledger_leaf", "protocol.merkle", "protocol.topics",
    ]),
    ("paho-mqtt + mqttlink", ["mqttlink"]),
    ("pymodbus (+ pyserial) and edge drivers", ["edge.meters", "edge.drivers.modbus_generic",
                                              "edge.drivers.sunspec", "edge.drivers.vedirect"]),
    ("aiosqlite + sqlite3 (outbox)", ["edge.outbox"]),
    ("edge agent, settings, keys, proofs", ["edge.agent", "edge.settings", "edge.keys"]),
]

_BREAKDOWN_CODE = """
import importlib, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
rows = [['interpreter (python -c, site)', rss()]]
for label, modules in json.loads(sys.argv[1]):
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            pass
    rows.append([label, rss()])
print(json.dumps({'rows': rows, 'pydantic': 'pydantic' in sys.modules}))
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB; with smaps_rollup also Pss and Anonymous."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if key in ("Pss", "Anonymous"):
                out[key] = int(value.split()[0])
    return out


CONFIG = """
device_id = "pi-bench"
site_id = "site-bench"
key_file = "device.key"
state_db = "edge.sqlite"
broker_url = "{broker}"
interval_s = 300
telemetry_interval_s = 1.0

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

[[meters]]
name = "sub"
register_map = "eastron/sdm630"
port = {port}
unit_id = 3
channels = {{ }}
"""


def import_breakdown(python: str, cwd: Path) -> tuple[list[tuple[str, float, float]], bool]:
    """(step, RSS MiB after it, MiB it added) for BREAKDOWN_STEPS, in a fresh `python`, and
    whether pydantic ended up imported."""
    done = subprocess.run(  # noqa: S603 - the interpreter under test, our own code
        [python, "-c", _BREAKDOWN_CODE, json.dumps(BREAKDOWN_STEPS)],
        check=True, capture_output=True, text=True, timeout=120, cwd=cwd,
        env=clean_env(),
    )
    result = json.loads(done.stdout)
    out, prev = [], 0
    for label, kib in result["rows"]:
        out.append((label, kib / 1024, (kib - prev) / 1024))
        prev = kib
    return out, bool(result["pydantic"])


async def run(seconds: float, warmup: float, python: str = sys.executable) -> dict[str, float]:
    """Start everything, measure the agent, stop everything."""
    tmp = Path(tempfile.mkdtemp(prefix="gridmint-edge-bench-"))
    broker = Mosquitto(tmp)
    broker.start()
    clock = SystemClock()
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    meters = {
        1: SimulatedMeter(rmap, "pv", clock, seed=1),
        2: SimulatedMeter(rmap, "grid", clock, seed=1),
        3: SimulatedMeter(rmap, "grid", clock, seed=2),
    }
    server = await start_meter_server(meters, port=0)
    cfg = tmp / "edge.toml"
    cfg.write_text(CONFIG.format(broker=broker.url, port=server.port))
    agent = subprocess.Popen(  # noqa: S603 - the interpreter under test and our module
        [python, "-m", "gridmint", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp,  # not the checkout: `-m` puts the cwd first on sys.path
        env=clean_env(),
    )
    try:
        await asyncio.sleep(warmup)
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited: {agent.stderr.read().decode()}")  # type: ignore[union-attr]
        requests0 = sum(m.requests for m in meters.values())
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(1.0)
            rss_samples.append(memory_kib(agent.pid)["VmRSS"])
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        mem = memory_kib(agent.pid)
        requests = sum(m.requests for m in meters.values()) - requests0
    finally:
        agent.terminate()
        agent.wait(10)
        await server.stop()
        broker.stop()
    return {
        "seconds": t1 - t0,
        "cpu_percent_one_core": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mib_mean": sum(rss_samples) / len(rss_samples) / 1024,
        "rss_mib_peak": mem["VmHWM"] / 1024,
        "pss_mib": mem.get("Pss", 0) / 1024,
        "anon_mib": mem.get("Anonymous", 0) / 1024,
        "modbus_requests_per_s": requests / (t1 - t0),
    }


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--python", help="run the agent on this interpreter (gridmint installed)")
    where.add_argument(
        "--fresh-venv", action="store_true",
        help="build the wheel and run the agent from a new venv with only gridmint[edge]",
    )
    ap.add_argument("--extra", default="edge", help="extra to install with --fresh-venv")
    ap.add_argument("--breakdown", action="store_true", help="RSS added by each import step")
    args = ap.parse_args()
    python = args.python or sys.executable
    if args.fresh_venv:
        tmp = Path(tempfile.mkdtemp(prefix="gridmint-edge-venv-"))
        t0 = time.monotonic()
        wheel = build_wheel(tmp / "dist")
        python = str(make_venv(tmp / "venv", f"{wheel}[{args.extra}]"))
        print(f"fresh venv: {python} with {wheel.name}[{args.extra}] "
              f"({time.monotonic() - t0:.0f} s to build and install)")
    res = asyncio.run(run(args.seconds, args.warmup, python))
    m = machine_facts()
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['python']}")
    versions = installed_versions(Path(python), REPORTED)
    print(f"agent interpreter: {python}")
    print("  " + ", ".join(f"{d} {v}" for d, v in versions.items()))
    print("agent polling 3 Modbus TCP meters every 1 s (telemetry + accounting), real broker")
    print(f"  measured over       {res['seconds']:.0f} s after {args.warmup:.0f} s warm-up")
    print(f"  CPU                 {res['cpu_percent_one_core']:.2f} % of one core")
    print(f"  RSS mean / peak     {res['rss_mib_mean']:.1f} / {res['rss_mib_peak']:.1f} MiB")
    print(f"  RSS anonymous       {res['anon_mib']:.1f} MiB (rest: mapped files, mostly .so)")
    print(f"  PSS                 {res['pss_mib']:.1f} MiB")
    print(f"  Modbus requests/s   {res['modbus_requests_per_s']:.1f}")
    if args.breakdown:
        rows, pydantic = import_breakdown(python, Path(tempfile.gettempdir()))
        print("import breakdown (a fresh process importing the agent's modules in its order; "
              f"pydantic {'imported' if pydantic else 'not imported'}):")
        for label, total, added in rows:
            print(f"  {label:66s} {total:6.1f} MiB  +{added:5.1f}")
        print(f"  {'running agent (measured above, mean)':66s} {res['rss_mib_mean']:6.1f} MiB  "
              f"+{res['rss_mib_mean'] - rows[-1][1]:5.1f}")


if __name__ == "__main__":
    main()
