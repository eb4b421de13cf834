"""Edge agent footprint: resident memory and CPU share while polling three devices once a second.

Runs the real agent (`gridmint edge run`) as its own process against three simulated SDM630
meters on Modbus TCP (served by this script's process) and a real Mosquitto, then samples the
agent's /proc entries. A measurement, not a test: it prints figures and asserts nothing about them.

    .venv/bin/python -m benchmarks.edge --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
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

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
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


async def run(seconds: float, warmup: float) -> dict[str, float]:
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
    agent = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gridmint", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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
        "modbus_requests_per_s": requests / (t1 - t0),
    }


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    args = ap.parse_args()
    res = asyncio.run(run(args.seconds, args.warmup))
    m = machine_facts()
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['python']}")
    print("agent polling 3 Modbus TCP meters every 1 s (telemetry + accounting), real broker")
    print(f"  measured over       {res['seconds']:.0f} s after {args.warmup:.0f} s warm-up")
    print(f"  CPU                 {res['cpu_percent_one_core']:.2f} % of one core")
    print(f"  RSS mean / peak     {res['rss_mib_mean']:.1f} / {res['rss_mib_peak']:.1f} MiB")
    print(f"  Modbus requests/s   {res['modbus_requests_per_s']:.1f}")


if __name__ == "__main__":
    main()
