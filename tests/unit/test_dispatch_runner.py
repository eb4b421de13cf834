"""The device's dispatch command runner: every status path, over a manual clock and a recording
actuator (the runner's decisions are under test, not the equipment)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.controls import ActuatorError
from edge.dispatch_runner import (
    Ack,
    Apply,
    CommandRunner,
    DispatchBook,
    Entry,
    Release,
)
from edge.outbox import Outbox
from protocol import cose
from protocol.clock import ManualClock
from protocol.dispatch import (
    ControlMode,
    DispatchAck,
    DispatchCommand,
    EventStatus,
    ResponseStatus,
    check_ack,
    sign_command,
)
from tests.helpers.waiting import until

DISPATCH_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
DISPATCH_PUB = cose.public_bytes(DISPATCH_KEY.public_key())
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
DEVICE_PUB = cose.public_bytes(DEVICE_KEY.public_key())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
DEPLOYMENT = b"gridmint-runner-tests"
DEVICE = "pi-7"
T0 = 1_800_000_000
ACKS = "gridmint/v1/sites/s/devices/pi-7/acks"
FIXED = ControlMode.OP_MOD_FIXED_W
LIMIT = ControlMode.OP_MOD_MAX_LIM_W
RS = ResponseStatus

BASE = DispatchCommand(
    event_id="ev-1",
    modification=1,
    device_id=DEVICE,
    site_id="s",
    control=FIXED,
    value=5000,
    start=T0 + 60,
    duration_s=600,
    expiry=T0 + 3600,
    issued_ms=T0 * 1000,
)


def cmd(**changes: Any) -> DispatchCommand:
    return dataclasses.replace(BASE, **changes)


def signed(c: DispatchCommand, key: Ed25519PrivateKey = DISPATCH_KEY) -> bytes:
    return sign_command(c, key, DEPLOYMENT)


class RecordingActuator:
    """Records every call; `fail_apply` / `fail_release` make the next such call raise."""

    def __init__(self, controls: frozenset[ControlMode] = frozenset({FIXED, LIMIT})) -> None:
        self.name = "test"
        self.controls = controls
        self.calls: list[tuple[str, ControlMode, int | None]] = []
        self.fail_apply = ""
        self.fail_release = ""
        self.measured = 1234

    async def apply(self, control: ControlMode, value: int) -> None:
        self.calls.append(("apply", control, value))
        if self.fail_apply:
            raise ActuatorError(self.fail_apply)

    async def release(self, control: ControlMode) -> None:
        self.calls.append(("release", control, None))
        if self.fail_release:
            raise ActuatorError(self.fail_release)

    async def measure_w(self, control: ControlMode) -> int | None:
        return self.measured


class FakeLink:
    def __init__(self, connected: bool = True) -> None:
        self.connected = asyncio.Event()
        if connected:
            self.connected.set()
        self.published: list[tuple[str, bytes]] = []

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        if not self.connected.is_set():
            return False
        self.published.append((topic, payload))
        return True


class Rig:
    def __init__(
        self,
        actuators: list[RecordingActuator] | None = None,
        outbox: Outbox | None = None,
        connected: bool = True,
        delay: float = 0.0,
        start: float = T0,
    ) -> None:
        self.clock = ManualClock(start)
        self.link = FakeLink(connected)
        self.act = RecordingActuator()
        self.delays: list[tuple[float, float]] = []

        def rng(lo: float, hi: float) -> float:
            self.delays.append((lo, hi))
            return delay

        self.runner = CommandRunner(
            device_id=DEVICE,
            deployment=DEPLOYMENT,
            dispatch_key=DISPATCH_PUB,
            device_key=DEVICE_KEY,
            clock=self.clock,
            link=self.link,
            acks_topic=ACKS,
            actuators=[self.act] if actuators is None else actuators,
            outbox=outbox,
            silence_revert_s=900,
            rng=rng,
        )
        self._seen_acks = 0

    async def send(self, *commands: DispatchCommand | bytes) -> None:
        envs = [c if isinstance(c, bytes) else signed(c) for c in commands]
        await self.runner.on_commands([("t", e) for e in envs])

    async def at(self, t: float) -> None:
        self.clock.set(t)
        await self.runner.step()

    def acks(self) -> list[tuple[str, int, ResponseStatus]]:
        """The acks queued since the last call: (event, modification, status)."""
        new = self.runner.unsent_acks[self._seen_acks :]
        self._seen_acks += len(new)
        return [(a.event_id, a.modification, a.status) for a in new]

    def all_acks(self) -> list[DispatchAck]:
        return self.runner.unsent_acks


# --- the normal life of an event ------------------------------------------------------------


async def test_received_started_completed() -> None:
    rig = Rig()
    await rig.send(cmd())
    assert rig.acks() == [("ev-1", 1, RS.RECEIVED)]
    assert rig.act.calls == []
    await rig.at(T0 + 59)
    assert rig.act.calls == [] and rig.acks() == []
    await rig.at(T0 + 60)
    assert rig.act.calls == [("apply", FIXED, 5000)]
    assert rig.acks() == [("ev-1", 1, RS.STARTED)]
    assert rig.all_acks()[-1].measured_w == 1234
    assert rig.all_acks()[-1].at_ms == (T0 + 60) * 1000
    await rig.at(T0 + 659)
    assert rig.acks() == []
    await rig.at(T0 + 660)
    assert rig.act.calls[-1] == ("release", FIXED, None)
    assert rig.acks() == [("ev-1", 1, RS.COMPLETED)]
    assert rig.runner.stats.commands_accepted == 1
    assert rig.runner.book.active == {}
    assert rig.runner.book.next_due() is None


async def test_expiry_before_the_end_of_the_duration_ends_it() -> None:
    rig = Rig()
    await rig.send(cmd(expiry=T0 + 100))
    await rig.at(T0 + 60)
    await rig.at(T0 + 100)
    assert rig.act.calls == [("apply", FIXED, 5000), ("release", FIXED, None)]
    assert rig.acks()[-1] == ("ev-1", 1, RS.COMPLETED)


async def test_random_start_delay_is_drawn_from_the_command_s_window() -> None:
    rig = Rig(delay=42.5)
    await rig.send(cmd(randomize_start_s=120))
    assert rig.delays == [(0.0, 120.0)]
    await rig.at(T0 + 102)
    assert rig.act.calls == []
    await rig.at(T0 + 102.5)
    assert rig.act.calls == [("apply", FIXED, 5000)]


async def test_no_random_delay_without_a_window() -> None:
    rig = Rig(delay=99)
    await rig.send(cmd())
    assert rig.delays == []


async def test_a_command_already_running_when_it_arrives_starts_at_once() -> None:
    rig = Rig(start=T0 + 300)
    await rig.send(cmd())
    assert rig.act.calls == [("apply", FIXED, 5000)]
    assert rig.acks() == [("ev-1", 1, RS.RECEIVED), ("ev-1", 1, RS.STARTED)]


async def test_ramp_steps_linearly_from_the_default() -> None:
    rig = Rig()
    await rig.send(cmd(control=LIMIT, value=4000, ramp_s=100))
    await rig.at(T0 + 60)
    assert rig.act.calls == [("apply", LIMIT, 10000)]  # the inverter's own default: 100 %
    assert rig.acks()[-1] == ("ev-1", 1, RS.STARTED)
    for t in (80, 100, 120, 140, 160):
        await rig.at(T0 + t)
    assert [c[2] for c in rig.act.calls] == [10000, 8800, 7600, 6400, 5200, 4000]
    await rig.at(T0 + 200)
    assert len(rig.act.calls) == 6  # held, not applied again


async def test_a_late_ramp_step_jumps_to_the_value_due() -> None:
    rig = Rig()
    await rig.send(cmd(control=LIMIT, value=4000, ramp_s=100))
    await rig.at(T0 + 60)
    await rig.at(T0 + 130)  # steps at 80, 100, 120 passed: only the newest is applied
    assert [c[2] for c in rig.act.calls] == [10000, 6400]
    assert rig.runner.book.next_due() == T0 + 140


async def test_a_ramp_without_a_known_origin_goes_straight_to_the_value() -> None:
    rig = Rig(actuators=[RecordingActuator(frozenset({ControlMode.OP_MOD_EXP_LIM_W}))])
    await rig.send(cmd(control=ControlMode.OP_MOD_EXP_LIM_W, value=3000, ramp_s=100))
    await rig.at(T0 + 60)
    assert rig.runner.actuators[0].calls == [("apply", ControlMode.OP_MOD_EXP_LIM_W, 3000)]  # type: ignore[attr-defined]


# --- cancel and supersede ---------------------------------------------------------------------


async def test_cancel_of_a_running_event_releases_and_answers_cancelled() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.at(T0 + 100)
    rig.acks()
    rig.clock.set(T0 + 200)
    await rig.send(cmd(modification=2, status=EventStatus.CANCELLED))
    assert rig.act.calls[-1] == ("release", FIXED, None)
    assert rig.acks() == [("ev-1", 2, RS.CANCELLED)]
    await rig.at(T0 + 700)
    assert rig.acks() == [] and len(rig.act.calls) == 2


async def test_cancel_before_the_start_never_applies() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.send(cmd(modification=2, status=EventStatus.CANCELLED))
    assert rig.acks() == [("ev-1", 1, RS.RECEIVED), ("ev-1", 2, RS.CANCELLED)]
    await rig.at(T0 + 100)
    assert rig.act.calls == []


async def test_cancel_with_randomization_releases_after_the_random_delay() -> None:
    rig = Rig(delay=30)
    await rig.send(cmd())
    await rig.at(T0 + 100)
    rig.acks()
    rig.clock.set(T0 + 200)
    await rig.send(
        cmd(modification=2, status=EventStatus.CANCELLED_WITH_RANDOMIZATION, randomize_start_s=60)
    )
    assert rig.acks() == [] and rig.act.calls[-1][0] == "apply"
    await rig.at(T0 + 229)
    assert rig.acks() == []
    await rig.at(T0 + 230)
    assert rig.act.calls[-1] == ("release", FIXED, None)
    assert rig.acks() == [("ev-1", 2, RS.CANCELLED)]


async def test_a_newer_modification_supersedes_a_running_event_without_a_release() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.at(T0 + 100)
    rig.acks()
    rig.clock.set(T0 + 200)
    await rig.send(cmd(modification=2, value=-3000, start=T0 + 200))
    assert rig.acks() == [
        ("ev-1", 1, RS.SUPERSEDED),
        ("ev-1", 2, RS.RECEIVED),
        ("ev-1", 2, RS.STARTED),
    ]
    assert rig.act.calls == [("apply", FIXED, 5000), ("apply", FIXED, -3000)]
    await rig.at(T0 + 800)
    assert rig.act.calls[-1] == ("release", FIXED, None)
    assert rig.acks() == [("ev-1", 2, RS.COMPLETED)]


async def test_a_superseding_ramp_starts_from_the_value_it_takes_over() -> None:
    rig = Rig()
    await rig.send(cmd(control=LIMIT, value=6000))
    await rig.at(T0 + 100)
    rig.clock.set(T0 + 200)
    await rig.send(cmd(modification=2, control=LIMIT, value=2000, start=T0 + 200, ramp_s=40))
    await rig.at(T0 + 240)
    assert [c[2] for c in rig.act.calls] == [6000, 6000, 2000]


async def test_a_newer_modification_with_another_control_releases_the_old_one() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.at(T0 + 100)
    rig.clock.set(T0 + 200)
    await rig.send(cmd(modification=2, control=LIMIT, value=5000, start=T0 + 300))
    assert rig.act.calls[-1] == ("release", FIXED, None)
    await rig.at(T0 + 300)
    assert rig.act.calls == [
        ("apply", FIXED, 5000),
        ("release", FIXED, None),
        ("apply", LIMIT, 5000),
    ]


async def test_a_second_event_on_the_same_control_supersedes_the_first() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.at(T0 + 100)
    await rig.send(cmd(event_id="ev-2", value=-2000, start=T0 + 200))
    rig.acks()
    await rig.at(T0 + 200)
    assert rig.acks() == [("ev-1", 1, RS.SUPERSEDED), ("ev-2", 1, RS.STARTED)]
    assert rig.act.calls == [("apply", FIXED, 5000), ("apply", FIXED, -2000)]
    await rig.at(T0 + 660)  # ev-1's end: nothing, it was superseded
    assert rig.acks() == []
    await rig.at(T0 + 800)
    assert rig.acks() == [("ev-2", 1, RS.COMPLETED)]


# --- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "status"),
    [
        (signed(cmd(device_id="pi-8")), RS.REJECTED_INVALID),
        (signed(cmd(), OTHER_KEY), RS.REJECTED_INVALID),
        (b"\x84junk", RS.REJECTED_INVALID),
        (signed(cmd(start=T0 - 700)), RS.REJECTED_LATE),
        (signed(cmd(control=ControlMode.OP_MOD_CONNECT, value=0)), RS.REJECTED_NOT_APPLICABLE),
    ],
    ids=["other-device", "bad-signature", "malformed", "late", "unsupported"],
)
async def test_rejections_are_answered_and_never_executed(
    envelope: bytes, status: ResponseStatus
) -> None:
    rig = Rig()
    await rig.send(envelope)
    (ack,) = rig.all_acks()
    assert ack.status is status and ack.detail and ack.device_id == DEVICE
    await rig.at(T0 + 300)
    assert rig.act.calls == []
    assert rig.runner.stats.commands_rejected == 1
    assert rig.runner.stats.commands_accepted == 0
    assert rig.runner.book.seen == {}


async def test_without_actuators_every_control_is_not_applicable() -> None:
    rig = Rig(actuators=[])
    await rig.send(cmd(), cmd(event_id="ev-2", control=LIMIT, value=1))
    assert [s for _e, _m, s in rig.acks()] == [RS.REJECTED_NOT_APPLICABLE] * 2


async def test_a_stale_modification_is_rejected_and_changes_nothing() -> None:
    rig = Rig()
    await rig.send(cmd(modification=5))
    await rig.send(cmd(modification=4, value=-100))
    assert rig.acks() == [("ev-1", 5, RS.RECEIVED), ("ev-1", 4, RS.REJECTED_INVALID)]
    await rig.at(T0 + 60)
    assert rig.act.calls == [("apply", FIXED, 5000)]


async def test_the_same_modification_with_other_content_is_rejected() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.send(cmd(value=1))
    assert rig.acks()[-1] == ("ev-1", 1, RS.REJECTED_INVALID)


async def test_a_duplicate_resends_the_current_status_and_does_not_restart() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.send(cmd())
    assert rig.acks() == [("ev-1", 1, RS.RECEIVED), ("ev-1", 1, RS.RECEIVED)]
    await rig.at(T0 + 60)
    rig.acks()
    await rig.send(cmd())
    assert rig.acks() == [("ev-1", 1, RS.STARTED)]
    assert rig.all_acks()[-1].measured_w == 1234
    assert rig.act.calls == [("apply", FIXED, 5000)]
    assert rig.runner.stats.commands_accepted == 1


# --- failures and reverts ---------------------------------------------------------------------


async def test_an_actuator_error_releases_and_answers_failed() -> None:
    rig = Rig()
    rig.act.fail_apply = "inverter 1 refused the write to register 40236"
    await rig.send(cmd())
    await rig.at(T0 + 60)
    assert rig.act.calls == [("apply", FIXED, 5000), ("release", FIXED, None)]
    assert rig.acks() == [("ev-1", 1, RS.RECEIVED), ("ev-1", 1, RS.FAILED)]
    assert rig.all_acks()[-1].detail == "inverter 1 refused the write to register 40236"
    assert rig.runner.stats.commands_failed == 1
    await rig.at(T0 + 700)
    assert rig.acks() == []  # no COMPLETED after FAILED


async def test_a_failed_release_at_the_end_answers_failed() -> None:
    rig = Rig()
    await rig.send(cmd())
    await rig.at(T0 + 60)
    rig.acks()
    rig.act.fail_release = "relay 2 is stuck"
    await rig.at(T0 + 660)
    assert rig.acks() == [("ev-1", 1, RS.FAILED)]
    assert rig.all_acks()[-1].detail == "relay 2 is stuck"


async def test_silence_past_the_limit_reverts_to_defaults() -> None:
    rig = Rig()
    await rig.send(
        cmd(duration_s=3000),
        cmd(event_id="ev-2", control=LIMIT, value=3000, start=T0 + 5000, expiry=T0 + 9000),
    )
    await rig.at(T0 + 100)
    rig.acks()
    rig.link.connected.clear()
    await rig.at(T0 + 150)  # silent from here
    await rig.at(T0 + 1049)
    assert rig.act.calls == [("apply", FIXED, 5000)]
    await rig.at(T0 + 1050)
    assert rig.act.calls[-1] == ("release", FIXED, None)
    acks = rig.acks()
    assert acks == [("ev-1", 1, RS.FAILED), ("ev-2", 1, RS.FAILED)]
    assert "no contact with the cloud" in rig.all_acks()[-1].detail
    await rig.at(T0 + 5000)  # the scheduled one does not start either
    assert len(rig.act.calls) == 2


async def test_a_short_outage_does_not_revert() -> None:
    rig = Rig()
    await rig.send(cmd(duration_s=3000))
    await rig.at(T0 + 100)
    rig.link.connected.clear()
    await rig.at(T0 + 200)
    await rig.at(T0 + 1000)
    rig.link.connected.set()
    await rig.at(T0 + 1001)
    rig.link.connected.clear()
    await rig.at(T0 + 1100)  # 100 s silent again, not 900 in one stretch
    assert rig.act.calls == [("apply", FIXED, 5000)]
    assert rig.runner.book.active


# --- restarts ---------------------------------------------------------------------------------


async def test_a_restart_reapplies_an_event_still_in_its_window(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd(control=LIMIT, value=4000, ramp_s=100))
        await rig.at(T0 + 60)
        await rig.at(T0 + 90)
        # The agent restarts at T0 + 130: a new runner over the same database.
        again = Rig(outbox=outbox, start=T0 + 130)
        await again.at(T0 + 130)
        assert again.act.calls == [("apply", LIMIT, 6400)]  # where the ramp is now
        assert again.acks() == []  # STARTED was answered by the last run
        await again.send(cmd(control=LIMIT, value=4000, ramp_s=100))  # the broker's replay
        assert again.acks() == [("ev-1", 1, RS.STARTED)]
        assert again.runner.stats.commands_accepted == 0
        await again.at(T0 + 660)
        assert again.act.calls[-1] == ("release", LIMIT, None)
        assert again.acks() == [("ev-1", 1, RS.COMPLETED)]
    finally:
        await outbox.close()


async def test_a_restart_sets_a_held_value_again(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd())
        await rig.at(T0 + 60)
        again = Rig(outbox=outbox, start=T0 + 300)  # the inverter may have rebooted too
        await again.at(T0 + 300)
        assert again.act.calls == [("apply", FIXED, 5000)]
        await again.at(T0 + 400)
        assert again.act.calls == [("apply", FIXED, 5000)]  # once
    finally:
        await outbox.close()


async def test_a_restart_after_the_end_releases_and_does_not_reapply(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd())
        await rig.at(T0 + 100)
        again = Rig(outbox=outbox, start=T0 + 700)
        await again.at(T0 + 700)
        assert again.act.calls == [("release", FIXED, None)]
        assert again.acks() == [("ev-1", 1, RS.COMPLETED)]
    finally:
        await outbox.close()


async def test_a_restart_remembers_modifications(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd(modification=3))
        again = Rig(outbox=outbox)
        await again.send(cmd(modification=2))
        assert again.acks() == [("ev-1", 2, RS.REJECTED_INVALID)]
        await again.at(T0 + 60)
        assert again.act.calls == [("apply", FIXED, 5000)]
    finally:
        await outbox.close()


async def test_a_restart_keeps_a_cancelled_event_cancelled(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd(), cmd(modification=2, status=EventStatus.CANCELLED))
        again = Rig(outbox=outbox)
        await again.at(T0 + 100)
        assert again.act.calls == []
        await again.send(cmd())  # the old modification, replayed
        assert again.acks() == [("ev-1", 1, RS.REJECTED_INVALID)]
    finally:
        await outbox.close()


async def test_finished_events_are_forgotten_a_day_after_their_end(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "edge.sqlite")
    try:
        rig = Rig(outbox=outbox)
        await rig.send(cmd())
        await rig.at(T0 + 660)
        assert len(await outbox.load_dispatch()) == 1
        await rig.at(T0 + 660 + 86_401)
        assert await outbox.load_dispatch() == []
        assert rig.runner.book.seen == {}
    finally:
        await outbox.close()


# --- the pure book ----------------------------------------------------------------------------


def test_book_entry_round_trips_through_json() -> None:
    book = DispatchBook()
    actions = book.accept(cmd(ramp_s=30), T0 + 60, 0.0)
    assert actions[0] == Ack("ev-1", 1, RS.RECEIVED)
    assert isinstance(actions[1], Apply) and actions[-1].status is RS.STARTED  # type: ignore[union-attr]
    entry = book.entries["ev-1"]
    assert Entry.from_json(entry.to_json()) == entry


def test_book_next_due_tracks_starts_steps_and_ends() -> None:
    book = DispatchBook()
    book.accept(cmd(control=LIMIT, value=0, ramp_s=10), T0, 5.0)
    assert book.next_due() == T0 + 65
    book.tick(T0 + 65)
    assert book.next_due() == T0 + 67
    assert book.tick(T0 + 10_000)[-2:] == [Release("ev-1", LIMIT), Ack("ev-1", 1, RS.COMPLETED)]
    assert book.next_due() is None


def test_book_fail_of_an_unknown_event_does_nothing() -> None:
    assert DispatchBook().fail("nope", "x") == []


# --- the running task: signed acks on the wire -----------------------------------------------


async def test_run_publishes_signed_acks_in_order_once_connected() -> None:
    rig = Rig(connected=False, start=T0 + 60)
    stop = asyncio.Event()
    task = asyncio.create_task(rig.runner.run(stop))
    try:
        await rig.send(cmd())
        await until(lambda: _true(len(rig.runner.unsent_acks) == 2), 5)
        assert rig.link.published == []  # offline: kept
        rig.link.connected.set()
        await until(lambda: _true(len(rig.link.published) == 2), 5)
        rig.clock.set(T0 + 660)
        await until(lambda: _true(len(rig.link.published) == 3), 5)
    finally:
        stop.set()
        await task
    acks = [check_ack(p, DEVICE_PUB, DEPLOYMENT, DEVICE) for t, p in rig.link.published]
    assert all(t == ACKS for t, _p in rig.link.published)
    assert [a.status for a in acks] == [RS.RECEIVED, RS.STARTED, RS.COMPLETED]
    assert rig.runner.unsent_acks == []


async def _true(value: bool) -> bool:
    return value
