"""The DERMS end to end over real parts: Mosquitto, the aggregator (SQLite and PostgreSQL), its
HTTP API, and simulated Pis that run the protocol's own command checks and sign their answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from protocol import dispatch, topics
from protocol.dispatch import ControlMode, DispatchAck, ResponseStatus
from protocol.ledger_leaf import decode_leaf
from rules.ledger import Entry, EntryKind, replay
from simulators.fleet import FleetDevice, make_fleet
from simulators.fleet_derms import DermsFleet
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import at_least, until

pytestmark = [pytest.mark.broker]

DEPLOYMENT = "gridmint-test"
ADMIN = "derms-admin"
N = 12


@dataclass
class Derms:
    runtime: CloudRuntime
    http: httpx.AsyncClient
    fleet: DermsFleet
    devices: list[FleetDevice]


@pytest.fixture(name="d")
async def derms(mosquitto: Mosquitto, db_url: str) -> AsyncIterator[Derms]:
    runtime = aggregator_runtime(
        db_url,
        mosquitto.url,
        DEPLOYMENT,
        admin_token=ADMIN,
        dispatch_tick_s=0.2,
        dispatch_reward_per_kwh=10_000,  # large, so seconds of flexibility earn whole credits
    )
    await runtime.start()
    assert runtime.store is not None and runtime.fleet is not None
    assert runtime.dispatch is not None and runtime.mqtt is not None
    devices = make_fleet(N, prefix="derms")
    for i, d in enumerate(devices):
        zone = "north" if i < N // 2 else "south"
        await runtime.store.add_device(
            d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w, zone=zone
        )
    assert await runtime.fleet.load() == N
    assert await runtime.mqtt.wait_ready(10)
    fleet = DermsFleet(
        devices,
        mosquitto.url,
        DEPLOYMENT.encode(),
        runtime.dispatch.public_key,
        telemetry_every_s=0.2,
    )
    await fleet.start()
    http = httpx.AsyncClient(base_url=runtime.url, headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        await until(
            lambda: runtime.fleet is not None and runtime.fleet.state.totals["all"].online == N,
            timeout_s=20,
        )
        yield Derms(runtime, http, fleet, devices)
    finally:
        await http.aclose()
        await fleet.stop()
        await runtime.stop()


async def _devices(d: Derms, event_id: str) -> list[dict[str, Any]]:
    r = await d.http.get(f"/api/v1/dispatch/events/{event_id}/devices")
    assert r.status_code == 200, r.text
    return list(r.json())


async def _all_say(d: Derms, event_id: str, status: str) -> bool:
    rows = await _devices(d, event_id)
    return len(rows) > 0 and all(row["status"] == status for row in rows)


async def test_a_battery_event_reaches_every_device_and_the_batteries_deliver(d: Derms) -> None:
    live = (await d.http.get("/api/v1/fleet/live", params={"group": "zone:north"})).json()
    assert live["total"] == N // 2
    assert all(x["state"] == "online" and x["soc_permille"] == 600 for x in live["devices"])

    # 6 devices x 5000 W max: 12 kW is 40 % of each one's rate
    body = {"group": "zone:north", "control": "opModFixedW", "value": 12_000, "duration_s": 60}
    r = await d.http.post("/api/v1/dispatch/events", json=body)
    assert r.status_code == 201, r.text
    event = r.json()
    assert (event["devices"], event["modification"], event["status"]) == (N // 2, 1, "active")

    await until(lambda: _all_say(d, event["event_id"], "started"), timeout_s=20)
    rows = await _devices(d, event["event_id"])
    assert {row["value"] for row in rows} == {4000}  # hundredths of a percent
    assert all(row["latency_ms"] is not None and row["latency_ms"] >= 0 for row in rows)
    north = {x.device_id for x in d.devices[: N // 2]}
    assert {row["device_id"] for row in rows} == north

    # The simulated batteries discharge: the zone's measured battery power follows.
    async def zone_delivers() -> bool:
        t = (await d.http.get("/api/v1/fleet/totals", params={"group": "zone:north"})).json()
        return bool(t["battery_w"] == 12_000)

    await until(zone_delivers, timeout_s=20)
    south = (await d.http.get("/api/v1/fleet/totals", params={"group": "zone:south"})).json()
    assert south["battery_w"] == 0

    async def board_shows_it() -> bool:
        p = (await d.http.get(f"/api/v1/dispatch/events/{event['event_id']}/performance")).json()
        return bool(
            p["requested_w"] == 12_000
            and p["delivered_w"] == 12_000
            and any(req == 12_000 and got == 12_000 for _t, req, got in p["series"])
        )

    await until(board_shows_it, timeout_s=20)

    r = await d.http.post(f"/api/v1/dispatch/events/{event['event_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["modification"] == 2
    await until(lambda: _all_say(d, event["event_id"], "cancelled"), timeout_s=20)
    await until(
        lambda: (
            d.runtime.fleet is not None
            and d.runtime.fleet.state.group_totals("zone:north").battery_w == 0
        ),
        timeout_s=20,
    )


async def test_a_curtailment_lowers_pv_and_a_modification_supersedes(d: Derms) -> None:
    body = {"group": "all", "control": "opModMaxLimW", "value": 3000, "duration_s": 120}
    event = (await d.http.post("/api/v1/dispatch/events", json=body)).json()
    await until(lambda: _all_say(d, event["event_id"], "started"), timeout_s=20)
    # 30 % of a 5000 W rating: 1500 W from 3000 W available
    await until(
        lambda: (
            d.runtime.fleet is not None
            and d.runtime.fleet.state.group_totals("all").pv_w == 1500 * N
        ),
        timeout_s=20,
    )
    body["value"] = 5000
    r = await d.http.put(f"/api/v1/dispatch/events/{event['event_id']}", json=body)
    assert r.status_code == 200 and r.json()["modification"] == 2
    await until(
        lambda: (
            d.runtime.fleet is not None
            and d.runtime.fleet.state.group_totals("all").pv_w == 2500 * N
        ),
        timeout_s=20,
    )
    assert d.fleet.report.acks["superseded"] == N
    metrics = (await d.http.get("/metrics")).text
    assert 'gridmint_fleet_devices{state="online"} 12' in metrics
    assert 'gridmint_dispatch_responses_total{status="superseded"} 12' in metrics
    assert "gridmint_dispatch_ack_latency_ms_count" in metrics


async def test_modifications_sent_at_once_each_get_their_own_number(d: Derms) -> None:
    """Two operators change the same event at the same moment: each change is its own
    modification (2 and 3), and the devices end on the last one."""
    body = {"group": "all", "control": "opModMaxLimW", "value": 3000, "duration_s": 120}
    event = (await d.http.post("/api/v1/dispatch/events", json=body)).json()
    url = f"/api/v1/dispatch/events/{event['event_id']}"
    a, b = await asyncio.gather(
        d.http.put(url, json={**body, "value": 4000}),
        d.http.put(url, json={**body, "value": 5000}),
    )
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert sorted([a.json()["modification"], b.json()["modification"]]) == [2, 3]
    last_value = 4000 if a.json()["modification"] == 3 else 5000
    rows = await _devices(d, event["event_id"])
    assert {(row["modification"], row["value"]) for row in rows} == {(3, last_value)}
    await until(lambda: _all_say(d, event["event_id"], "started"), timeout_s=20)
    assert {row["modification"] for row in await _devices(d, event["event_id"])} == {3}


async def test_delivered_flexibility_earns_reward_credits_in_the_ledger(d: Derms) -> None:
    # every device discharges 2500 W for 8 s: up to 5.5 Wh each (less the start's delay)
    body = {"group": "all", "control": "opModFixedW", "value": 2500 * N, "duration_s": 8}
    r = await d.http.post("/api/v1/dispatch/events", json=body)
    event = r.json()
    assert event["devices"] == N
    await until(lambda: _all_say(d, event["event_id"], "completed"), timeout_s=30)

    async def rewarded() -> list[dict[str, Any]]:
        rows = await _devices(d, event["event_id"])
        return rows if all(row["reward_minor"] is not None for row in rows) else []

    await until(rewarded, timeout_s=20)
    rows = await rewarded()
    assert all(3 <= row["delivered_wh"] <= 5 for row in rows), rows
    assert d.runtime.ledger is not None
    log = [
        Entry.from_bytes(decode_leaf(r.leaf).entry) for r in await d.runtime.ledger.store.leaves()
    ]
    entries = [e for e in log if e.kind is EntryKind.FLEX_REWARD]
    assert {e.site for e in entries} == {row["site_id"] for row in rows}
    assert all(e.ref == event["event_id"] for e in entries)
    # each site's credits: its Wh at 10,000 per kWh; the per-device view adds up to them
    for e in entries:
        credited = sum(p.credit for p in e.postings)
        assert credited == e.requested_wh * 10_000 // 1000
        assert credited == sum(row["reward_minor"] for row in rows if row["site_id"] == e.site)
    replay(log)  # the ledger's rules (what `gridmint verify` replays) accept them


async def test_bad_requests_and_forged_acks_are_refused_and_counted(d: Derms) -> None:
    r = await d.http.post(
        "/api/v1/dispatch/events",
        json={"group": "zone:nowhere", "control": "opModFixedW", "value": 1000, "duration_s": 60},
    )
    assert r.status_code == 422 and "no device" in r.json()["detail"]
    r = await d.http.post(
        "/api/v1/dispatch/events",
        json={"group": "all", "control": "opModWarp", "value": 1, "duration_s": 60},
    )
    assert r.status_code == 422 and "unknown control" in r.json()["detail"]
    r = await d.http.post(
        "/api/v1/dispatch/events",
        json={"group": "all", "control": "opModMaxLimW", "value": 20_000, "duration_s": 60},
    )
    assert r.status_code == 422 and "0..10000" in r.json()["detail"]
    assert (
        await d.http.get("/api/v1/dispatch/events", headers={"Authorization": ""})
    ).status_code == 401

    # An acknowledgement signed by another device's key is refused, not stored.
    assert d.runtime.dispatch is not None and d.runtime.mqtt is not None
    victim, forger = d.devices[0], d.devices[1]
    forged = dispatch.sign_ack(
        DispatchAck("ev-x", 1, victim.device_id, ResponseStatus.COMPLETED, int(time.time() * 1000)),
        forger.key,
        DEPLOYMENT.encode(),
    )
    before = d.runtime.dispatch.counters.acks_refused
    d.runtime.mqtt.link.publish_nowait(
        topics.topic(victim.site_id, victim.device_id, topics.Channel.ACKS), forged, qos=1
    )
    await until(
        lambda: (
            d.runtime.dispatch is not None
            and d.runtime.dispatch.counters.acks_refused == before + 1
        ),
        timeout_s=10,
    )


async def test_failed_and_rejected_answers_raise_alarms_the_operator_acknowledges(d: Derms) -> None:
    assert d.runtime.mqtt is not None
    dev = d.devices[2]
    failed = dispatch.sign_ack(
        DispatchAck(
            "ev-y",
            1,
            dev.device_id,
            ResponseStatus.FAILED,
            int(time.time() * 1000),
            detail="inverter refused the write",
        ),
        dev.key,
        DEPLOYMENT.encode(),
    )
    d.runtime.mqtt.link.publish_nowait(
        topics.topic(dev.site_id, dev.device_id, topics.Channel.ACKS), failed, qos=1
    )

    async def alarm() -> dict[str, object] | None:
        rows = (await d.http.get("/api/v1/alarms", params={"open": "true"})).json()
        return next((a for a in rows if a["kind"] == "failed_command"), None)

    await until(alarm, timeout_s=10)
    found = await alarm()
    assert found is not None and "inverter refused the write" in str(found["detail"])
    r = await d.http.post(f"/api/v1/alarms/{found['alarm_id']}/ack")
    assert r.status_code == 200 and r.json()["acked_by"]

    # Devices that go quiet are shown offline, each with an alarm.
    d.runtime.fleet.stale_ms = 500  # type: ignore[union-attr]
    await d.fleet.stop()
    await until(
        lambda: d.runtime.fleet is not None and d.runtime.fleet.state.totals["all"].online == 0,
        timeout_s=20,
    )

    async def offline_alarms() -> int:
        rows = (await d.http.get("/api/v1/alarms", params={"open": "true"})).json()
        return sum(a["kind"] == "offline" for a in rows)

    await until(lambda: at_least(offline_alarms, N), timeout_s=10)
    assert await offline_alarms() == N


def test_control_names_match_the_protocol() -> None:
    from cloud.api.dispatch_routes import CONTROLS

    assert CONTROLS["opModFixedW"] is ControlMode.OP_MOD_FIXED_W


async def test_feeder_tags_and_criteria_groups_over_the_api(d: Derms) -> None:
    """An installer tags sites with their feeder; the operator reads a feeder's totals and
    dispatches to a group picked by criteria."""
    tagged = d.devices[:3]
    assert d.runtime.store is not None
    accounts = AccountStore(d.runtime.store.engine)
    owner = await accounts.create_account("hal@example.org", "Hal", "pw-12345678", "homeowner")
    for dev in tagged:
        await accounts.create_site(dev.site_id, owner.account_id, "Home", zone="north")
        r = await d.http.put(f"/api/v1/sites/{dev.site_id}/feeder", json={"feeder": "F7"})
        assert r.status_code == 200, r.text
    bad = await d.http.put(f"/api/v1/sites/{tagged[0].site_id}/feeder", json={"feeder": "F 7"})
    assert bad.status_code == 422
    nowhere = await d.http.put("/api/v1/sites/nowhere/feeder", json={"feeder": "F7"})
    assert nowhere.status_code == 404

    groups = {g["group"]: g for g in (await d.http.get("/api/v1/fleet/groups")).json()}
    assert groups["feeder:F7"]["devices"] == 3
    live = (await d.http.get("/api/v1/fleet/live", params={"group": "feeder:F7"})).json()
    assert sorted(x["device_id"] for x in live["devices"]) == sorted(x.device_id for x in tagged)
    assert {x["feeder"] for x in live["devices"]} == {"F7"}

    r = await d.http.get("/api/v1/fleet/totals", params={"group": "where:colour=red"})
    assert r.status_code == 400 and "unknown key 'colour'" in r.json()["detail"]

    # every simulated battery starts at 60 %: soc>=60 on feeder F7 is the three tagged sites
    group = "where:feeder=F7,soc>=60,battery=yes"
    live = (await d.http.get("/api/v1/fleet/live", params={"group": group})).json()
    assert live["total"] == 3
    body = {"group": group, "control": "opModFixedW", "value": 3000, "duration_s": 60}
    r = await d.http.post("/api/v1/dispatch/events", json=body)
    assert r.status_code == 201, r.text
    event = r.json()
    assert event["devices"] == 3
    await until(lambda: _all_say(d, event["event_id"], "started"), timeout_s=20)
    rows = await _devices(d, event["event_id"])
    assert {row["device_id"] for row in rows} == {x.device_id for x in tagged}
    bad_event = await d.http.post("/api/v1/dispatch/events", json={**body, "group": "where:soc"})
    assert bad_event.status_code in (400, 422) and "where:soc" in bad_event.text
