"""The fleet simulator against a real aggregator (Mosquitto, SQLite and PostgreSQL): a few hundred
edge identities minted by the edge's own code, published over shared connections, every record
held by the cloud exactly once and the reconciliation saying so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.fleet import make_fleet, run_fleet
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.services import Mosquitto

pytestmark = [pytest.mark.broker]

DEPLOYMENT = "gridmint-test"


async def test_a_fleet_of_200_devices_is_held_whole_and_once(
    mosquitto: Mosquitto, db_url: str
) -> None:
    runtime = aggregator_runtime(db_url, mosquitto.url, DEPLOYMENT)
    await runtime.start(serve_http=False)
    try:
        assert runtime.store is not None
        assert runtime.mqtt is not None
        fleet = make_fleet(200, sites=50)
        for d in fleet:
            await runtime.store.add_device(
                d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w
            )
        assert await runtime.mqtt.wait_ready(10)

        report = await run_fleet(
            fleet, mosquitto.url, intervals=3, deployment=DEPLOYMENT.encode(), connections=4
        )

        assert (report.minted, report.published, report.accepted) == (600, 600, 600)
        assert (report.lost, sum(report.rejected.values()), report.resent) == (0, 0, 0)
        stats = await runtime.store.stats()
        assert (stats.accepted, stats.rejected) == (600, 0)
        for d in fleet[:5]:
            rows = await runtime.store.list_tokens(device_id=d.device_id)
            assert sorted(r.seq for r in rows) == [1, 2, 3]
    finally:
        await runtime.stop()


async def test_the_fleet_command_registers_publishes_and_reconciles(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/cloud.sqlite"
    runtime = aggregator_runtime(db, mosquitto.url, DEPLOYMENT)
    await runtime.start(serve_http=False)
    try:
        assert runtime.mqtt is not None
        assert await runtime.mqtt.wait_ready(10)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridmint", "sim", "fleet", "--devices", "60",
            "--intervals", "2", "--broker", mosquitto.url, "--database-url", db,
            "--deployment", DEPLOYMENT, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, errs = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, errs.decode()
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert (report["minted"], report["held"], report["lost"]) == (120, 120, 0)
        assert report["rejected"] == {}
        assert runtime.store is not None
        assert (await runtime.store.stats()).accepted == 120
    finally:
        await runtime.stop()


def test_the_fleet_command_refuses_a_bad_broker_url_plainly(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gridmint", "sim", "fleet", "--devices", "2", "--broker",
         "http://nowhere", "--database-url", f"sqlite:///{tmp_path}/c.sqlite"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert "mqtt://host:1883" in run.stderr
    assert "Traceback" not in run.stderr
