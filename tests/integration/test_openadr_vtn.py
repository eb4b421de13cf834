"""Acceptance: a utility's standard OpenADR 3.0.1 client (openadr3-client, business-logic role)
creates a program and an event on gridmint's VTN over real HTTP; the event becomes a dispatch
event that the DERMS sends to the zone's Pis, a PUT modifies it, a DELETE cancels it, and
gridmint's reports are readable by the same client.

Real parts: the aggregator (CloudRuntime: its HTTP server, store on SQLite and PostgreSQL, DERMS
dispatch service), Mosquitto, and simulated Pis that check and answer dispatch commands. The
client runs in its own Python 3.12 environment (openadr3-client needs 3.12+): scripts/test
makes `.venv-openadr`, or set GRIDMINT_OPENADR_PYTHON. The runtime serves plain HTTP (TLS ends
in front of it in production), so the client is told OAUTHLIB_INSECURE_TRANSPORT=1: oauthlib
otherwise refuses a token URL that is not https.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.domain.openadr import BASE_PATH
from cloud.runtime import CloudRuntime
from protocol.dispatch import ControlMode
from simulators.fleet import make_fleet
from simulators.fleet_derms import DermsFleet
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import until

pytestmark = [pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "helpers" / "openadr_bl_driver.py"
PYTHON = Path(os.environ.get("GRIDMINT_OPENADR_PYTHON", ROOT / ".venv-openadr" / "bin" / "python"))
DEPLOYMENT = "gridmint-vtn-test"
CLIENTS = json.dumps(
    [
        {"client_id": "utility-bl", "client_secret": "utility-secret",
         "scopes": ["read_all", "write_programs", "write_events"]},
        {"client_id": "auditor", "client_secret": "auditor-secret", "scopes": ["read_all"]},
    ]
)

if not PYTHON.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{PYTHON} is missing: scripts/test makes it (3.12 + openadr3-client)")
    pytest.skip(f"no openadr3-client environment at {PYTHON}", allow_module_level=True)


@dataclass
class Vtn:
    runtime: CloudRuntime
    base: str
    zone_sites: set[str]


@pytest.fixture
async def vtn(mosquitto: Mosquitto, db_url: str) -> AsyncIterator[Vtn]:
    runtime = aggregator_runtime(
        db_url, mosquitto.url, DEPLOYMENT, openadr_clients=CLIENTS, dispatch_tick_s=0.2
    )
    await runtime.start()
    assert runtime.store is not None and runtime.fleet is not None
    assert runtime.dispatch is not None and runtime.mqtt is not None
    assert runtime.openadr is not None
    devices = make_fleet(4, prefix="vtn")
    for i, d in enumerate(devices):
        zone = "demo-zone-1" if i < 2 else "demo-zone-2"
        await runtime.store.add_device(
            d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w, zone=zone
        )
    assert await runtime.fleet.load() == 4
    assert await runtime.mqtt.wait_ready(10)
    fleet = DermsFleet(
        devices, mosquitto.url, DEPLOYMENT.encode(), runtime.dispatch.public_key,
        telemetry_every_s=0.2,
    )
    await fleet.start()
    try:
        await until(
            lambda: runtime.fleet is not None and runtime.fleet.state.totals["all"].online == 4,
            timeout_s=20,
        )
        yield Vtn(runtime, runtime.url + BASE_PATH, {d.site_id for d in devices[:2]})
    finally:
        await fleet.stop()
        await runtime.stop()


async def bl(vtn: Vtn, step: str, *args: str, client: str = "utility-bl",
             secret: str = "utility-secret",
             scopes: str = "read_all write_programs write_events") -> Any:
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON), str(DRIVER), vtn.base, client, secret, step, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OAUTHLIB_INSECURE_TRANSPORT": "1", "OPENADR_SCOPES": scopes},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_utility_bl_client_drives_dispatch_and_reads_reports(vtn: Vtn) -> None:
    openadr, dispatch = vtn.runtime.openadr, vtn.runtime.dispatch
    assert openadr is not None and dispatch is not None
    start = int(time.time())  # now: the zone's batteries are asked at once
    start_iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start))

    created = await bl(vtn, "create", start_iso)
    program, event = created["program"], created["event"]
    assert program["programName"] == "gridmint-peak" and program["id"]
    assert event["programID"] == program["id"] and event["id"]

    # The event became one dispatch event with the mapped control, value, times and group.
    dispatch_id = await openadr.dispatch_event_id(event["id"])
    assert dispatch_id is not None
    view = await dispatch.get_event(dispatch_id)
    assert view is not None
    req = view.request
    assert req.group == "zone:demo-zone-1"
    assert (req.control, req.value) == (ControlMode.OP_MOD_FIXED_W, 2500)
    assert (req.start, req.duration_s, req.randomize_start_s) == (start, 3600, 300)
    assert req.source == f"openadr:{program['id']}/{event['id']}"
    assert view.devices == 2 and view.status == "active"
    first_modification = view.modification

    modified = await bl(vtn, "modify", event["id"])
    assert modified["intervals"][0]["payloads"][0]["values"] == [3.0]
    view = await dispatch.get_event(dispatch_id)
    assert view is not None and view.modification > first_modification
    assert view.request.value == 3000
    assert await openadr.dispatch_event_id(event["id"]) == dispatch_id  # the same event

    listed = await bl(vtn, "events", program["id"])
    assert [e["id"] for e in listed] == [event["id"]]

    reports = await bl(vtn, "reports", program["id"], event["id"])
    assert len(reports) == 1
    [report] = reports
    assert (report["programID"], report["eventID"], report["clientName"]) == (
        program["id"], event["id"], "gridmint")
    sites = {r["resourceName"]: r for r in report["resources"]}
    assert set(sites) == {"AGGREGATED_REPORT", *vtn.zone_sites}
    requested_kw = 0.0
    for site in vtn.zone_sites:
        payloads = {p["type"]: p["values"] for p in sites[site]["intervals"][0]["payloads"]}
        assert {"SETPOINT", "BASELINE", "DEMAND", "STORAGE_CHARGE_LEVEL"} <= set(payloads)
        requested_kw += payloads["SETPOINT"][0]
    assert requested_kw == pytest.approx(3.0)  # the modified setpoint, shared by the two sites

    deleted = await bl(vtn, "delete", event["id"])
    assert deleted["id"] == event["id"]
    view = await dispatch.get_event(dispatch_id)
    assert view is not None and view.status == "cancelled"
    assert await bl(vtn, "events", program["id"]) == []
    # The cancelled event's report stays readable.
    after = await bl(vtn, "reports", program["id"], event["id"])
    assert [r["id"] for r in after] == [report["id"]]

    # A client without write_programs is refused (403, problem+json).
    refused = await bl(vtn, "try-create", client="auditor", secret="auditor-secret",
                       scopes="read_all")
    assert refused["status"] == 403 and "write_programs" in refused["body"]["detail"]
