"""Dispatch commands end to end through a real Mosquitto: the cloud side signs and publishes
commands, the edge agent's runner executes them on a (recording) actuator and answers with
signed acknowledgements; an offline Pi gets its queued commands from its broker session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import EdgeAgent
from edge.controls import ActuatorError
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import cose, topics
from protocol.clock import SimClock
from protocol.dispatch import (
    ControlMode,
    DispatchAck,
    DispatchCommand,
    EventStatus,
    ResponseStatus,
    check_ack,
    sign_command,
)
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import until

pytestmark = [pytest.mark.broker]

SITE, DEVICE, DEPLOYMENT = "site-disp", "pi-disp", "gridmint-dispatch-it"
FIXED = ControlMode.OP_MOD_FIXED_W
RS = ResponseStatus


class RecordingActuator:
    name = "battery"
    controls = frozenset({FIXED})

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.refuse = ""

    async def apply(self, control: ControlMode, value: int) -> None:
        self.calls.append(("apply", value))
        if self.refuse:
            raise ActuatorError(self.refuse)

    async def release(self, control: ControlMode) -> None:
        self.calls.append(("release", None))

    async def measure_w(self, control: ControlMode) -> int | None:
        return -2500


class Cloud:
    """The aggregator's side: publishes signed commands, collects the device's acks."""

    def __init__(self, url: str, device_pub: bytes) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.device_pub = device_pub
        self.acks: list[DispatchAck] = []
        self.link = MqttLink(
            BrokerAddress.parse(url),
            "cloud-dispatch",
            clean_session=True,
            subscriptions=[Subscription(topics.topic(SITE, DEVICE, topics.Channel.ACKS), self._on)],
        )

    async def _on(self, _topic: str, payload: bytes) -> None:
        # check_ack raises on a bad signature: the handler fails and the test sees no ack.
        self.acks.append(check_ack(payload, self.device_pub, DEPLOYMENT.encode(), DEVICE))

    async def send(self, command: DispatchCommand) -> None:
        envelope = sign_command(command, self.key, DEPLOYMENT.encode())
        topic = topics.topic(SITE, DEVICE, topics.Channel.COMMANDS)
        assert await self.link.publish(topic, envelope, qos=1)

    def statuses(self, event_id: str) -> list[tuple[int, ResponseStatus]]:
        return [(a.modification, a.status) for a in self.acks if a.event_id == event_id]


def _command(
    clock: SimClock, event_id: str, start: int, duration_s: int, **kw: int
) -> DispatchCommand:
    return DispatchCommand(
        event_id=event_id,
        modification=kw.pop("modification", 1),
        device_id=DEVICE,
        site_id=SITE,
        control=FIXED,
        value=kw.pop("value", 5000),
        start=start,
        duration_s=duration_s,
        expiry=start + duration_s,
        issued_ms=int(clock.now() * 1000),
        status=EventStatus(kw.pop("status", 0)),
    )


async def _true(value: bool) -> bool:
    return value


async def _run_agent(
    settings: EdgeSettings, key: Ed25519PrivateKey, clock: SimClock, act: RecordingActuator
) -> tuple[EdgeAgent, Outbox, asyncio.Event, asyncio.Task[None]]:
    outbox = await Outbox.open(settings.state_db)
    agent = EdgeAgent(settings, key, clock, [], outbox, actuators=[act])
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await agent.started.wait()
    assert await agent.link.wait_ready(10)
    return agent, outbox, stop, task


async def test_commands_run_and_are_acknowledged_through_mosquitto(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    clock = SimClock.starting_at(1_782_039_600, 60.0)  # one real second is a minute
    key = Ed25519PrivateKey.generate()
    cloud = Cloud(mosquitto.url, cose.public_bytes(key.public_key()))
    settings = EdgeSettings(
        device_id=DEVICE,
        site_id=SITE,
        deployment=DEPLOYMENT,
        key_file=tmp_path / "k",
        state_db=tmp_path / "edge.sqlite",
        broker_url=mosquitto.url,
        dispatch_key=cose.public_bytes(cloud.key.public_key()).hex(),
        meters=[],
    )
    act = RecordingActuator()
    await cloud.link.start()
    assert await cloud.link.wait_ready(10)
    agent, outbox, stop, task = await _run_agent(settings, key, clock, act)
    try:
        now = int(clock.now())
        # Starts two simulated minutes from now, runs five.
        await cloud.send(_command(clock, "ev-run", now + 120, 300))
        await until(lambda: _true(cloud.statuses("ev-run") == [(1, RS.RECEIVED)]), 10)
        await until(lambda: _true((1, RS.STARTED) in cloud.statuses("ev-run")), 10)
        assert act.calls == [("apply", 5000)]
        started = next(a for a in cloud.acks if a.status is RS.STARTED)
        assert started.measured_w == -2500
        await until(lambda: _true((1, RS.COMPLETED) in cloud.statuses("ev-run")), 15)
        assert act.calls == [("apply", 5000), ("release", None)]

        # Cancelled while running.
        now = int(clock.now())
        await cloud.send(_command(clock, "ev-cancel", now, 3600, value=-4000))
        await until(lambda: _true((1, RS.STARTED) in cloud.statuses("ev-cancel")), 10)
        await cloud.send(_command(clock, "ev-cancel", now, 3600, modification=2, status=2))
        await until(lambda: _true((2, RS.CANCELLED) in cloud.statuses("ev-cancel")), 10)
        assert act.calls[-2:] == [("apply", -4000), ("release", None)]

        # The equipment refuses: released, FAILED with the plain message.
        act.refuse = "battery inverter refused the setpoint"
        await cloud.send(_command(clock, "ev-fail", int(clock.now()), 3600))
        await until(lambda: _true((1, RS.FAILED) in cloud.statuses("ev-fail")), 10)
        failed = next(a for a in cloud.acks if a.status is RS.FAILED)
        assert failed.detail == "battery inverter refused the setpoint"
        act.refuse = ""

        # A forged command (another key) is refused and never executed.
        calls = len(act.calls)
        forged = sign_command(
            _command(clock, "ev-forged", int(clock.now()), 3600),
            Ed25519PrivateKey.generate(),
            DEPLOYMENT.encode(),
        )
        topic = topics.topic(SITE, DEVICE, topics.Channel.COMMANDS)
        assert await cloud.link.publish(topic, forged, qos=1)
        await until(lambda: _true((1, RS.REJECTED_INVALID) in cloud.statuses("ev-forged")), 10)
        assert len(act.calls) == calls
        assert agent.stats.commands_accepted == 4  # the cancel is a modification too
        assert agent.stats.commands_rejected == 1
        assert agent.stats.commands_failed == 1

        # Offline: the Pi stops; the cloud queues a long command and one that ends meanwhile.
        stop.set()
        await task
        await outbox.close()
        now = int(clock.now())
        await cloud.send(_command(clock, "ev-long", now, 36_000))
        await cloud.send(_command(clock, "ev-short", now, 60))
        await until(lambda: _true(clock.now() > now + 60), 10)
        act.calls.clear()
        agent, outbox, stop, task = await _run_agent(settings, key, clock, act)
        await until(lambda: _true((1, RS.STARTED) in cloud.statuses("ev-long")), 10)
        await until(lambda: _true(cloud.statuses("ev-short") == [(1, RS.REJECTED_LATE)]), 10)
        assert act.calls == [("apply", 5000)]
    finally:
        stop.set()
        await task
        await outbox.close()
        await cloud.link.stop()


async def test_without_a_dispatch_key_the_agent_takes_no_commands(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = EdgeSettings(
        device_id=DEVICE,
        site_id=SITE,
        key_file=tmp_path / "k",
        state_db=tmp_path / "edge.sqlite",
        broker_url=mosquitto.url,
        meters=[],
    )
    outbox = await Outbox.open(settings.state_db)
    try:
        agent = EdgeAgent(
            settings, Ed25519PrivateKey.generate(), SimClock.starting_at(0, 1), [], outbox
        )
        assert agent.runner is None
        assert all("commands" not in s.topic_filter for s in agent.link._subs)
    finally:
        await outbox.close()
