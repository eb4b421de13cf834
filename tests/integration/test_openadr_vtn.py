"""Acceptance: a utility's standard OpenADR 3.0.1 client (openadr3-client, business-logic role)
creates a program and an event on gridmint's VTN over real HTTP; the event becomes a dispatch
event, a PUT modifies it, a DELETE cancels it, and gridmint's reports are readable by the same
client.

The aggregator app (create_app on a migrated store) is served by uvicorn on a free port over
HTTPS (oauthlib refuses a token URL over plain HTTP) with a self-signed certificate the client
trusts through REQUESTS_CA_BUNDLE. The client runs in its own Python 3.12 environment
(openadr3-client needs 3.12+): scripts/test makes `.venv-openadr`, or set
GRIDMINT_OPENADR_PYTHON.

Until the lead's DispatchService is on this branch, dispatch is tests/helpers/dispatch_double.py
(the real request checks, in memory).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.api.app import create_app
from cloud.domain.openadr import BASE_PATH, parse_clients
from cloud.services.openadr import OpenAdrService
from cloud.storage.openadr_store import OpenAdrStore
from cloud.storage.store import Store
from protocol.dispatch import ControlMode
from tests.helpers.dispatch_double import DispatchDouble
from tests.helpers.services import free_port
from tests.helpers.waiting import until

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "helpers" / "openadr_bl_driver.py"
PYTHON = Path(os.environ.get("GRIDMINT_OPENADR_PYTHON", ROOT / ".venv-openadr" / "bin" / "python"))
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


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "vtn.crt", tmp / "vtn.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
async def served(
    store: Store, tmp_path: Path
) -> AsyncIterator[tuple[str, DispatchDouble, Path]]:
    dispatch = DispatchDouble()
    service = OpenAdrService(OpenAdrStore(store.engine), dispatch, parse_clients(CLIENTS))
    port = free_port()
    cert, key = self_signed(tmp_path)
    server = uvicorn.Server(
        uvicorn.Config(create_app(store, openadr=service), host="127.0.0.1", port=port,
                       log_level="warning", lifespan="off", ssl_certfile=str(cert),
                       ssl_keyfile=str(key))
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await until(started, 30)
    try:
        yield f"https://127.0.0.1:{port}{BASE_PATH}", dispatch, cert
    finally:
        server.should_exit = True
        await task


async def bl(vtn: tuple[str, DispatchDouble, Path], step: str, *args: str,
             client: str = "utility-bl", secret: str = "utility-secret",
             scopes: str = "read_all write_programs write_events") -> Any:
    base, _, cert = vtn
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON), str(DRIVER), base, client, secret, step, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(cert), "OPENADR_SCOPES": scopes},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_utility_bl_client_drives_dispatch_and_reads_reports(
    served: tuple[str, DispatchDouble, Path],
) -> None:
    _, dispatch, _ = served
    start = int(time.time()) + 600
    start_iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start))

    created = await bl(served, "create", start_iso)
    program, event = created["program"], created["event"]
    assert program["programName"] == "gridmint-peak" and program["id"]
    assert event["programID"] == program["id"] and event["id"]

    # The event became one dispatch event with the mapped control, value, times and group.
    [d] = dispatch.events.values()
    req = d.view.request
    assert req.group == "zone:demo-zone-1"
    assert (req.control, req.value) == (ControlMode.OP_MOD_FIXED_W, 2500)
    assert (req.start, req.duration_s, req.randomize_start_s) == (start, 3600, 300)
    assert req.source == f"openadr:{program['id']}/{event['id']}"
    assert d.view.modification == 0

    modified = await bl(served, "modify", event["id"])
    assert modified["intervals"][0]["payloads"][0]["values"] == [3.0]
    view = await dispatch.get_event(d.view.event_id)
    assert view is not None and view.modification == 1 and view.request.value == 3000
    assert len(dispatch.events) == 1

    listed = await bl(served, "events", program["id"])
    assert [e["id"] for e in listed] == [event["id"]]

    reports = await bl(served, "reports", program["id"], event["id"])
    assert len(reports) == 1
    [report] = reports
    assert (report["programID"], report["eventID"], report["clientName"]) == (
        program["id"], event["id"], "gridmint")
    names = {r["resourceName"] for r in report["resources"]}
    assert names == {"AGGREGATED_REPORT", "site-a", "site-b"}
    site_a = next(r for r in report["resources"] if r["resourceName"] == "site-a")
    payloads = {p["type"]: p["values"] for p in site_a["intervals"][0]["payloads"]}
    assert payloads["SETPOINT"] == [2.0] and payloads["STORAGE_CHARGE_LEVEL"] == [64.0]

    deleted = await bl(served, "delete", event["id"])
    assert deleted["id"] == event["id"]
    view = await dispatch.get_event(d.view.event_id)
    assert view is not None and view.status == "cancelled"
    assert await bl(served, "events", program["id"]) == []
    # The cancelled event's report stays readable.
    after = await bl(served, "reports", program["id"], event["id"])
    assert [r["id"] for r in after] == [report["id"]]

    # A client without write_programs is refused (403, problem+json).
    refused = await bl(served, "try-create", client="auditor", secret="auditor-secret",
                       scopes="read_all")
    assert refused["status"] == 403 and "write_programs" in refused["body"]["detail"]
