"""The OpenADR 3.0.1 VTN's HTTP face on both storage backends: OAuth2 client credentials, scopes,
problem+json errors, programs, events that become dispatch events, and reports."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cloud.api.app import create_app
from cloud.domain.dispatch_events import SitePerformance
from cloud.domain.openadr import BASE_PATH, parse_clients
from cloud.services.openadr import OpenAdrService
from cloud.storage.openadr_store import OpenAdrStore
from cloud.storage.store import Store
from protocol.dispatch import ControlMode
from tests.helpers.dispatch_double import DispatchDouble

CLIENTS = json.dumps(
    [
        {"client_id": "bl", "client_secret": "bl-secret-1", "scopes": [
            "read_all", "write_programs", "write_events"]},
        {"client_id": "reader", "client_secret": "reader-secret", "scopes": ["read_all"]},
        {"client_id": "ven", "client_secret": "ven-secret-1", "scopes": [
            "read_all", "write_reports"]},
    ]
)
T0 = 1_800_000_000  # 2027-01-15T08:00:00Z


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def iso(s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))


@pytest.fixture
async def vtn(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, DispatchDouble, Clock]]:
    clock = Clock()
    dispatch = DispatchDouble(clock)
    service = OpenAdrService(OpenAdrStore(store.engine), dispatch, parse_clients(CLIENTS), clock)
    app = create_app(store, openadr=service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t" + BASE_PATH) as c:
        yield c, dispatch, clock


async def bearer(c: httpx.AsyncClient, client_id: str, secret: str, **form: str) -> dict[str, str]:
    r = await c.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id,
              "client_secret": secret, **form},
    )
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer"
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def program(**over: Any) -> dict[str, Any]:
    return {
        "programName": "peak-shave",
        "targets": [{"type": "GROUP", "values": ["zone:demo-zone-1"]}],
        "payloadDescriptors": [{"payloadType": "DISPATCH_SETPOINT", "units": "KW"}],
        **over,
    }


def event(program_id: str, ptype: str = "DISPATCH_SETPOINT", value: Any = 2.5,
          **over: Any) -> dict[str, Any]:
    return {
        "programID": program_id,
        "eventName": "evening peak",
        "intervalPeriod": {"start": iso(T0 + 600), "duration": "PT1H",
                           "randomizeStart": "PT5M"},
        "intervals": [{"id": 0, "payloads": [{"type": ptype, "values": [value]}]}],
        **over,
    }


def assert_problem(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"]
    assert words in body["detail"], body


async def test_token_endpoint(vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock]) -> None:
    c, _, _ = vtn
    r = await c.post("/auth/token", data={"grant_type": "client_credentials",
                                          "client_id": "bl", "client_secret": "wrong-secret"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await c.post("/auth/token", data={"grant_type": "password", "client_id": "bl",
                                          "client_secret": "bl-secret-1"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    # HTTP Basic client authentication (how requests-oauthlib sends it) and a narrowed scope.
    basic = base64.b64encode(b"bl:bl-secret-1").decode()
    r = await c.post("/auth/token", data={"grant_type": "client_credentials",
                                          "scope": "read_all write_vens"},
                     headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "read_all"  # write_vens is not the client's
    narrowed = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (await c.get("/programs", headers=narrowed)).status_code == 200
    assert_problem(await c.post("/programs", json=program(), headers=narrowed), 403,
                   "write_programs")


async def test_auth_errors(vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock]) -> None:
    c, _, clock = vtn
    assert_problem(await c.get("/programs"), 401, "access token")
    assert_problem(await c.get("/programs", headers={"Authorization": "Bearer oa3.x.y"}), 401,
                   "not valid")
    reader = await bearer(c, "reader", "reader-secret")
    assert_problem(await c.post("/programs", json=program(), headers=reader), 403,
                   "write_programs")
    # No token is checked before the body: a bad body without a token is still 401.
    assert_problem(await c.post("/programs", json={"nope": 1}), 401, "access token")
    clock.now += 3601  # tokens live an hour
    assert_problem(await c.get("/programs", headers=reader), 401, "expired")


async def test_programs_crud_and_bad_input(
    vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock],
) -> None:
    c, _, _ = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    r = await c.post("/programs", json=program(), headers=bl)
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["objectType"] == "PROGRAM" and p["programName"] == "peak-shave"
    assert p["createdDateTime"].endswith("Z") and p["id"]
    assert_problem(await c.post("/programs", json=program(), headers=bl), 409, "exists")
    assert_problem(await c.post("/programs", json={"programName": ""}, headers=bl), 400,
                   "programName")
    assert_problem(
        await c.post("/programs", json=program(programName="x", targets=[
            {"type": "GROUP", "values": ["street:9"]}]), headers=bl), 400, "group")
    assert_problem(
        await c.post("/programs", json=program(programName="y", intervalPeriod={
            "start": "tomorrow", "duration": "PT1H"}), headers=bl), 400, "RFC 3339")
    r = await c.put(f"/programs/{p['id']}", json=program(programLongName="Peak shaving"),
                    headers=bl)
    assert r.status_code == 200 and r.json()["programLongName"] == "Peak shaving"
    assert [x["id"] for x in (await c.get("/programs", headers=bl)).json()] == [p["id"]]
    got = await c.get("/programs", params={"targetType": "GROUP",
                                           "targetValues": "zone:other"}, headers=bl)
    assert got.json() == []
    assert_problem(await c.get("/programs/nope", headers=bl), 404, "no program")
    assert_problem(await c.get("/subscriptions", headers=bl), 404, "Not Found")
    assert_problem(await c.patch(f"/programs/{p['id']}", headers=bl), 405, "Not Allowed")
    r = await c.delete(f"/programs/{p['id']}", headers=bl)
    assert r.status_code == 200 and r.json()["id"] == p["id"]
    assert (await c.get("/programs", headers=bl)).json() == []


async def test_event_becomes_a_dispatch_event(
    vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock],
) -> None:
    c, dispatch, clock = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    p = (await c.post("/programs", json=program(), headers=bl)).json()
    r = await c.post("/events", json=event(p["id"]), headers=bl)
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["objectType"] == "EVENT" and e["programID"] == p["id"]
    [d] = dispatch.events.values()
    req = d.history[0]
    assert (req.group, req.control, req.value) == ("zone:demo-zone-1",
                                                   ControlMode.OP_MOD_FIXED_W, 2500)
    assert (req.start, req.duration_s, req.randomize_start_s) == (T0 + 600, 3600, 300)
    assert req.source == f"openadr:{p['id']}/{e['id']}" and req.name == "evening peak"

    # PUT: the same dispatch event, modified; an event GROUP target overrides the program's.
    changed = event(p["id"], value=-1.5, targets=[{"type": "GROUP", "values": ["site:s-1"]}])
    r = await c.put(f"/events/{e['id']}", json=changed, headers=bl)
    assert r.status_code == 200, r.text
    assert len(dispatch.events) == 1 and d.view.modification == 1
    assert (d.view.request.value, d.view.request.group) == (-1500, "site:s-1")

    # Filters: programID, active.
    assert len((await c.get("/events", params={"programID": p["id"]}, headers=bl)).json()) == 1
    assert (await c.get("/events", params={"programID": "other"}, headers=bl)).json() == []
    clock.now = T0 + 600 + 3600
    bl = await bearer(c, "bl", "bl-secret-1")
    assert (await c.get("/events", params={"active": "true"}, headers=bl)).json() == []
    assert len((await c.get("/events", params={"active": "false"}, headers=bl)).json()) == 1
    clock.now = T0

    # A program with events is not deleted.
    assert_problem(await c.delete(f"/programs/{p['id']}", headers=bl), 409, "events")
    r = await c.delete(f"/events/{e['id']}", headers=bl)
    assert r.status_code == 200 and r.json()["id"] == e["id"]
    assert (await dispatch.get_event(d.view.event_id)).status == "cancelled"  # type: ignore[union-attr]
    assert_problem(await c.get(f"/events/{e['id']}", headers=bl), 404, "no event")
    assert (await c.delete(f"/programs/{p['id']}", headers=bl)).status_code == 200


@pytest.mark.parametrize(
    ("ptype", "value", "units", "control", "want"),
    [
        ("EXPORT_CAPACITY_LIMIT", 5, "KW", ControlMode.OP_MOD_EXP_LIM_W, 5000),
        ("IMPORT_CAPACITY_LIMIT", 3200, "W", ControlMode.OP_MOD_IMP_LIM_W, 3200),
        ("SIMPLE", 2, None, ControlMode.OP_MOD_IMP_LIM_W, 2000),
        ("DISPATCH_SETPOINT", 0.0015, "MW", ControlMode.OP_MOD_FIXED_W, 1500),
    ],
)
async def test_payload_types_map_to_controls(
    vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock],
    ptype: str, value: float, units: str | None, control: ControlMode, want: int,
) -> None:
    c, dispatch, _ = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    p = (await c.post("/programs", json=program(targets=None), headers=bl)).json()
    descriptors = [{"payloadType": ptype, "units": units}] if units else None
    r = await c.post("/events", json=event(p["id"], ptype, value,
                                           payloadDescriptors=descriptors), headers=bl)
    assert r.status_code == 201, r.text
    [d] = dispatch.events.values()
    assert (d.view.request.group, d.view.request.control, d.view.request.value) == (
        "all", control, want)


async def test_simple_level_zero_dispatches_nothing_until_raised(
    vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock],
) -> None:
    c, dispatch, _ = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    p = (await c.post("/programs", json=program(), headers=bl)).json()
    e = (await c.post("/events", json=event(p["id"], "SIMPLE", 0), headers=bl)).json()
    assert dispatch.events == {}
    await c.put(f"/events/{e['id']}", json=event(p["id"], "SIMPLE", 3), headers=bl)
    [d] = dispatch.events.values()
    assert d.view.request.value == 0 and not d.cancelled
    await c.put(f"/events/{e['id']}", json=event(p["id"], "SIMPLE", 0), headers=bl)
    assert d.cancelled


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"intervals": []}, "exactly one interval"),
        ({"intervalPeriod": {"start": "2027-01-15T08:10:00Z", "duration": "P1M"}},
         "ISO 8601 duration"),
        ({"intervalPeriod": {"start": "2027-01-15T08:10:00", "duration": "PT1H"}}, "offset"),
        ({"intervalPeriod": {"start": "2027-01-15T08:10:00Z", "duration": "PT0S"}}, "PT0S"),
        ({"intervalPeriod": {"duration": "PT1H"}}, "no start"),
        ({"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [0.3]}]}]},
         "not one gridmint dispatches"),
        ({"intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [7]}]}]},
         "SIMPLE level"),
        ({"intervals": [{"id": 0, "payloads": [
            {"type": "EXPORT_CAPACITY_LIMIT", "values": [-1]}]}]}, "negative"),
        ({"intervals": [{"id": 0, "payloads": [
            {"type": "DISPATCH_SETPOINT", "values": ["lots"]}]}]}, "number"),
        ({"intervals": [{"id": 0, "payloads": [
            {"type": "DISPATCH_SETPOINT", "values": [1, 2]}]}]}, "exactly one value"),
        ({"payloadDescriptors": [{"payloadType": "DISPATCH_SETPOINT", "units": "KWH"}]},
         "units"),
        ({"intervalPeriod": {"start": "2020-01-01T00:00:00Z", "duration": "PT1H"}},
         "already be over"),  # the dispatch service's own refusal
        ({"programID": "no-such-program"}, "no program"),
        ({"priority": -1}, "priority"),
    ],
)
async def test_bad_events_are_400_with_a_plain_detail(
    vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock], change: dict[str, Any], words: str,
) -> None:
    c, dispatch, _ = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    p = (await c.post("/programs", json=program(), headers=bl)).json()
    assert_problem(await c.post("/events", json={**event(p["id"]), **change}, headers=bl), 400,
                   words)
    assert dispatch.events == {}
    assert (await c.get("/events", headers=bl)).json() == []


async def test_reports(vtn: tuple[httpx.AsyncClient, DispatchDouble, Clock]) -> None:
    c, dispatch, clock = vtn
    bl = await bearer(c, "bl", "bl-secret-1")
    p = (await c.post("/programs", json=program(), headers=bl)).json()
    e = (await c.post("/events", json=event(p["id"]), headers=bl)).json()
    r = await c.get("/reports", params={"eventID": e["id"]}, headers=bl)
    assert r.status_code == 200, r.text
    [rep] = r.json()
    assert (rep["objectType"], rep["programID"], rep["eventID"], rep["clientName"]) == (
        "REPORT", p["id"], e["id"], "gridmint")
    resources = {x["resourceName"]: x for x in rep["resources"]}
    assert set(resources) == {"AGGREGATED_REPORT", "site-a", "site-b"}
    site_a = {x["type"]: x["values"][0] for x in resources["site-a"]["intervals"][0]["payloads"]}
    assert site_a == {"SETPOINT": 2.0, "BASELINE": 0.1, "DEMAND": 1.8,
                      "STORAGE_CHARGE_LEVEL": 64.0}
    assert "STORAGE_CHARGE_LEVEL" not in {
        x["type"] for x in resources["site-b"]["intervals"][0]["payloads"]}
    assert len(resources["AGGREGATED_REPORT"]["intervals"]) == 2
    # Reading again does not make another report; the same id and created time.
    again = (await c.get("/reports", params={"programID": p["id"]}, headers=bl)).json()
    assert [(x["id"], x["createdDateTime"]) for x in again] == [(rep["id"],
                                                                 rep["createdDateTime"])]
    # A VEN posts its own; the BL client may not.
    ven = await bearer(c, "ven", "ven-secret-1")
    mine = {"programID": p["id"], "eventID": e["id"], "clientName": "ven-1",
            "resources": [{"resourceName": "meter", "intervals": [
                {"id": 0, "payloads": [{"type": "USAGE", "values": [1.2]}]}]}]}
    assert_problem(await c.post("/reports", json=mine, headers=bl), 403, "write_reports")
    r = await c.post("/reports", json=mine, headers=ven)
    assert r.status_code == 201, r.text
    got = (await c.get("/reports", params={"clientName": "ven-1"}, headers=bl)).json()
    assert [x["id"] for x in got] == [r.json()["id"]]
    assert_problem(await c.post("/reports", json={**mine, "eventID": "nope"}, headers=ven),
                   400, "no event")
    # Reports of a deleted event stay readable.
    await c.delete(f"/events/{e['id']}", headers=bl)
    after = (await c.get("/reports", params={"eventID": e["id"],
                                             "clientName": "gridmint"}, headers=bl)).json()
    assert [x["id"] for x in after] == [rep["id"]]
    assert "cancelled" in after[0]["reportName"]

    # Until the event has settled, a read brings the report up to date ...
    gridmint = {"eventID": e["id"], "clientName": "gridmint"}
    dispatch.sites = [SitePerformance("site-c", 700, 650, 0, 500)]
    [now] = (await c.get("/reports", params=gridmint, headers=bl)).json()
    assert {x["resourceName"] for x in now["resources"]} == {"AGGREGATED_REPORT", "site-c"}
    # ... it is made once more after, then left as it is.
    clock.now = T0 + 600 + 3600 + 300
    bl = await bearer(c, "bl", "bl-secret-1")
    [settled] = (await c.get("/reports", params=gridmint, headers=bl)).json()
    dispatch.sites = [SitePerformance("site-d", 1, 1, 1, None)]
    [later] = (await c.get("/reports", params=gridmint, headers=bl)).json()
    assert later == settled
    assert {x["resourceName"] for x in later["resources"]} == {"AGGREGATED_REPORT", "site-c"}


async def test_no_vtn_configured_is_404(store: Store) -> None:
    app = create_app(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert_problem(await c.get(f"{BASE_PATH}/programs"), 404, "no OpenADR VTN")
