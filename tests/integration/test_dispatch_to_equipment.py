"""Dispatch from the operator's API to simulated equipment, every part real: the aggregator
(its dispatch service and key), Mosquitto, an edge agent with its SunSpec actuators, and a
SunSpec PV inverter (model 123) and battery inverter (model 124) over Modbus TCP on one home
model. What the issue's second acceptance item asks: an ended command reverts the equipment;
a command for another device, with a bad signature or a stale modification is answered with
its rejection code and never executed; an offline Pi runs a still-valid command when it is
back, and answers a command that ended meanwhile as late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.runtime import CloudRuntime
from edge.actuators import make_actuators, prepare_actuators
from edge.agent import EdgeAgent
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from protocol import cose, topics
from protocol.clock import SimClock
from protocol.dispatch import ControlMode, DispatchCommand, ResponseStatus, sign_command
from simulators.models import BatteryModel, HomeModel
from simulators.sunspec_device import SimulatedSunSpec, SunSpecServer, start_sunspec_tcp_server
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import until

pytestmark = [pytest.mark.broker, pytest.mark.modbus]

DEPLOYMENT, ADMIN = "gridmint-equipment", "equipment-admin"
SITE, DEVICE = "site-eq", "pi-eq"
NOON = 1_782_043_200  # 2026-06-21 12:00 UTC: the sun is up over longitude 0
SPEED = 10.0  # one real second is ten simulated seconds


@dataclass
class Rig:
    clock: SimClock
    cloud: CloudRuntime
    http: httpx.AsyncClient
    home: HomeModel
    server: SunSpecServer
    settings: EdgeSettings
    key: Ed25519PrivateKey
    agent: EdgeAgent | None = None
    outbox: Outbox | None = None
    stop: asyncio.Event | None = None
    task: asyncio.Task[None] | None = None

    async def start_pi(self) -> EdgeAgent:
        readers = [make_reader(m) for m in self.settings.meters]
        actuators = await prepare_actuators(make_actuators(self.settings, readers))
        assert {c for a in actuators for c in a.controls} == {
            ControlMode.OP_MOD_MAX_LIM_W,
            ControlMode.OP_MOD_FIXED_W,
        }
        self.outbox = await Outbox.open(self.settings.state_db)
        self.agent = EdgeAgent(
            self.settings, self.key, self.clock, readers, self.outbox, actuators=actuators
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self.stop))
        await self.agent.started.wait()
        assert await self.agent.link.wait_ready(10)
        return self.agent

    async def stop_pi(self) -> None:
        if self.stop is not None and self.task is not None:
            self.stop.set()
            await self.task
        if self.outbox is not None:
            await self.outbox.close()
        self.task = None

    def battery_w(self) -> float:
        return self.home.battery_w(self.clock.now())

    async def statuses(self, event_id: str) -> list[tuple[int, int]]:
        assert self.cloud.dispatch is not None
        return [
            (r.modification, r.status) for r in await self.cloud.dispatch.store.responses(event_id)
        ]

    async def event(self, **body: object) -> str:
        r = await self.http.post("/api/v1/dispatch/events", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["event_id"])

    async def publish_command(self, envelope: bytes, device: str = DEVICE) -> None:
        assert self.cloud.mqtt is not None
        topic = topics.topic(SITE, device, topics.Channel.COMMANDS)
        assert await self.cloud.mqtt.link.publish(topic, envelope, qos=1)


@pytest.fixture
async def rig(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Rig]:
    clock = SimClock.starting_at(NOON, SPEED)
    cloud = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        mosquitto.url,
        DEPLOYMENT,
        clock=clock,
        admin_token=ADMIN,
        dispatch_tick_s=0.2,
        fleet_stale_s=600,
    )
    await cloud.start()
    home = HomeModel(5000, 48.0, 0.0, 400.0, seed=7, mean_cloudiness=0.0)
    home.battery = BatteryModel(10_000, 5000, 5000, soc=0.6, start_ts=clock.now())
    server = await start_sunspec_tcp_server(
        {
            3: SimulatedSunSpec(clock, home=home, controls=True, jitter=False),
            4: SimulatedSunSpec(clock, home=home, inverter_role="battery", jitter=False),
        }
    )
    key = Ed25519PrivateKey.generate()
    public = cose.public_bytes(key.public_key())
    assert cloud.store is not None and cloud.fleet is not None and cloud.dispatch is not None
    await cloud.store.add_device(DEVICE, SITE, public, cose.key_id(public), 5000, "eq-zone")
    await cloud.fleet.load()
    settings = EdgeSettings(
        device_id=DEVICE,
        site_id=SITE,
        deployment=DEPLOYMENT,
        key_file=tmp_path / "device.key",
        state_db=tmp_path / "edge.sqlite",
        broker_url=mosquitto.url,
        capacity_w=5000,
        telemetry_interval_s=0.3,
        dispatch_key=cloud.dispatch.public_key.hex(),
        meters=[
            MeterSettings(
                name="inverter",
                driver="sunspec",
                port=server.port,
                unit_id=3,
                controls=["opModMaxLimW"],
                flows={"pv": "ac_power_w"},
            ),
            MeterSettings(
                name="battery",
                driver="sunspec",
                port=server.port,
                unit_id=4,
                controls=["opModFixedW"],
                flows={"battery": "ac_power_w"},
                soc="state_of_charge_pct",
            ),
        ],
    )
    http = httpx.AsyncClient(base_url=cloud.url, headers={"Authorization": f"Bearer {ADMIN}"})
    r = Rig(clock, cloud, http, home, server, settings, key)
    try:
        await r.start_pi()
        yield r
    finally:
        await r.stop_pi()
        await http.aclose()
        await server.stop()
        await cloud.stop()


async def test_the_equipment_follows_the_event_and_reverts_when_it_ends(rig: Rig) -> None:
    fleet = rig.cloud.fleet
    assert fleet is not None
    await until(lambda: fleet.state.devices[DEVICE].telemetry is not None, 20)

    # Battery: 2 kW (40 % of 5 kW) for 3 simulated minutes.
    ev = await rig.event(
        group=f"device:{DEVICE}", control="opModFixedW", value=2000, duration_s=180
    )
    await until(lambda: abs(rig.battery_w() - 2000) < 1, 20)
    await until(lambda: _has(rig, ev, ResponseStatus.STARTED), 20)
    soc_then = rig.home.battery.soc_at(rig.clock.now())  # type: ignore[union-attr]
    # ... and when the command ends the device reverts: the battery goes idle, COMPLETED.
    await until(lambda: _has(rig, ev, ResponseStatus.COMPLETED), 60)
    assert rig.battery_w() == 0
    assert rig.home.battery.soc_at(rig.clock.now()) < soc_then  # type: ignore[union-attr]

    # PV curtailment to 30 % of 5 kW lowers the inverter's measured output.
    before = rig.home.pv_w(rig.clock.now())
    assert before > 2000
    ev = await rig.event(
        group=f"device:{DEVICE}", control="opModMaxLimW", value=3000, duration_s=120
    )
    await until(lambda: rig.home.pv_w(rig.clock.now()) <= 1500.5, 20)

    async def telemetry_shows_it() -> bool:
        t = fleet.state.devices[DEVICE].telemetry
        return t is not None and t.pv_w is not None and t.pv_w <= 1501

    await until(telemetry_shows_it, 20)
    await until(lambda: _has(rig, ev, ResponseStatus.COMPLETED), 60)
    assert rig.home.pv_w(rig.clock.now()) > 2000  # the limit is lifted


async def _has(rig: Rig, event_id: str, status: ResponseStatus) -> bool:
    return any(s == status for _m, s in await rig.statuses(event_id))


def _command(
    rig: Rig, event_id: str, modification: int, device: str = DEVICE, value: int = 8000
) -> DispatchCommand:
    now = int(rig.clock.now())
    return DispatchCommand(
        event_id=event_id,
        modification=modification,
        device_id=device,
        site_id=SITE,
        control=ControlMode.OP_MOD_FIXED_W,
        value=value,
        start=now,
        duration_s=600,
        expiry=now + 600,
        issued_ms=now * 1000,
    )


async def test_commands_the_pi_must_refuse_are_answered_and_never_executed(rig: Rig) -> None:
    assert rig.cloud.dispatch is not None
    dkey = rig.cloud.dispatch.key  # the aggregator's own dispatch key: only content is wrong
    deployment = DEPLOYMENT.encode()

    # For another device (signed by the dispatch key, delivered on this Pi's topic).
    await rig.publish_command(
        sign_command(_command(rig, "ev-other", 1, "pi-other"), dkey, deployment)
    )
    # Signed by a key that is not the pinned dispatch key.
    forged = sign_command(_command(rig, "ev-forged", 1), Ed25519PrivateKey.generate(), deployment)
    await rig.publish_command(forged)
    await until(lambda: _has(rig, "ev-other", ResponseStatus.REJECTED_INVALID), 20)
    await until(lambda: _has(rig, "ev-forged", ResponseStatus.REJECTED_INVALID), 20)
    assert rig.battery_w() == 0

    # A stale modification: modification 2 runs, then modification 1 arrives late.
    await rig.publish_command(sign_command(_command(rig, "ev-stale", 2), dkey, deployment))
    await until(lambda: _has(rig, "ev-stale", ResponseStatus.STARTED), 20)
    stale = _command(rig, "ev-stale", 1, value=2000)  # would be 1 kW: must not happen
    await rig.publish_command(sign_command(stale, dkey, deployment))

    async def stale_refused() -> bool:
        return (1, ResponseStatus.REJECTED_INVALID) in await rig.statuses("ev-stale")

    await until(stale_refused, 20)
    assert abs(rig.battery_w() - 4000) < 1  # still modification 2's 80 %, nothing else ran
    assert rig.agent is not None
    assert rig.agent.stats.commands_rejected == 3

    # Rejections raise the operator's failed-command alarm.
    alarms = (await rig.http.get("/api/v1/alarms", params={"open": "true"})).json()
    assert any(a["kind"] == "failed_command" for a in alarms)


async def test_an_offline_pi_runs_a_valid_command_when_back_and_refuses_an_ended_one(
    rig: Rig,
) -> None:
    fleet = rig.cloud.fleet
    assert fleet is not None
    await until(lambda: fleet.state.devices[DEVICE].telemetry is not None, 20)
    await rig.stop_pi()
    # The allocation needs the device online: the fleet still has its last sample (the
    # broker's last will is not sent on a clean stop), as after a short outage.
    short = await rig.event(
        group=f"device:{DEVICE}", control="opModFixedW", value=1000, duration_s=30
    )
    long = await rig.event(
        group=f"device:{DEVICE}", control="opModFixedW", value=3000, duration_s=3600
    )
    end = rig.clock.now() + 30
    await until(lambda: rig.clock.now() > end + 1, 20)
    assert rig.battery_w() == 0  # nobody was there to act

    await rig.start_pi()
    await until(lambda: _has(rig, long, ResponseStatus.STARTED), 30)
    await until(lambda: _has(rig, short, ResponseStatus.REJECTED_LATE), 30)
    assert abs(rig.battery_w() - 3000) < 1
    assert not await _has(rig, short, ResponseStatus.STARTED)
