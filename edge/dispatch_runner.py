"""Executing the cloud's signed dispatch commands on site, and answering each with a signed ack.

Owns: `DispatchBook`, the pure decision logic (a state machine per event that takes `now` and
returns actions), and `CommandRunner`, which feeds it commands from the device's commands topic
and the clock, drives the actuators (edge/controls.py), publishes the acknowledgements and keeps
the book in the agent's SQLite (edge/outbox.py). See docs/tokens.md, "How a device runs
commands".

Lifecycle of one event (the newest accepted modification of it):

    RECEIVED (1) on acceptance
    STARTED (2) at start + a random 0..randomize_start_s delay: the control is applied (ramped
                linearly over ramp_s in a few steps)
    COMPLETED (3) at end_s: the control is released
    CANCELLED (6) a newer modification with status cancelled: released (after a random delay
                for "cancelled with randomization")
    SUPERSEDED (7) a newer modification (or another event taking the same control) replaces it
    FAILED (251) the equipment refused (ActuatorError), or the device reverted to its defaults
                because the cloud was silent too long
    252/253/254 rejected by `check_command`: never executed
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.controls import Actuator, ActuatorError
from protocol.clock import Clock
from protocol.dispatch import (
    FULL_SCALE,
    Accepted,
    ControlMode,
    DispatchAck,
    DispatchCommand,
    EventStatus,
    Rejected,
    ResponseStatus,
    check_command,
    decode_command,
    encode_command,
    reject_ack,
    remember,
    sign_ack,
)

if TYPE_CHECKING:
    from edge.outbox import Outbox

log = logging.getLogger(__name__)

TERMINAL = frozenset(
    {
        ResponseStatus.COMPLETED,
        ResponseStatus.CANCELLED,
        ResponseStatus.SUPERSEDED,
        ResponseStatus.FAILED,
    }
)
RAMP_STEPS = 5  # a ramp is applied in at most this many steps after its first value
KEEP_AFTER_END_S = 86_400  # an event's row is kept this long after its last end (replays: 254)
# Where a ramp starts when nothing of ours set the control before: the equipment's default.
_RAMP_ORIGIN = {ControlMode.OP_MOD_MAX_LIM_W: FULL_SCALE, ControlMode.OP_MOD_FIXED_W: 0}


# --- actions the book asks for ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    """Set `control` to `value` on the equipment, for event `event_id`."""

    event_id: str
    control: ControlMode
    value: int


@dataclass(frozen=True, slots=True)
class Release:
    """Return `control` to the equipment's default, for event `event_id`."""

    event_id: str
    control: ControlMode


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer `status` for one modification of an event. `measure`: the control whose measured
    power goes into the answer (STARTED), None for none."""

    event_id: str
    modification: int
    status: ResponseStatus
    detail: str = ""
    measure: ControlMode | None = None


Action = Apply | Release | Ack


# --- the book -------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """What the device holds of one event: its newest accepted modification and how far it got.

    `applied` is the control this event has set on the equipment (None: nothing), `value` the
    value it last applied (None after a restart, until it is applied again), `steps` the ramp
    steps (time, value) still to come, `final` what is answered at `stop_at`.
    """

    command: DispatchCommand
    start_at: float
    stop_at: float
    status: ResponseStatus = ResponseStatus.RECEIVED
    final: ResponseStatus = ResponseStatus.COMPLETED
    applied: ControlMode | None = None
    value: int | None = None
    steps: list[tuple[float, int]] = field(default_factory=list)
    keep_until: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def starts(self) -> bool:
        """Waiting for its start (a cancellation never starts)."""
        return self.status is ResponseStatus.RECEIVED and self.command.status.runs

    def to_json(self) -> str:
        return json.dumps(
            {
                "command": encode_command(self.command).hex(),
                "start_at": self.start_at,
                "stop_at": self.stop_at,
                "status": int(self.status),
                "final": int(self.final),
                "applied": None if self.applied is None else int(self.applied),
                "value": self.value,
                "steps": [[t, v] for t, v in self.steps],
                "keep_until": self.keep_until,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Entry:
        d = json.loads(text)
        return cls(
            command=decode_command(bytes.fromhex(d["command"])),
            start_at=float(d["start_at"]),
            stop_at=float(d["stop_at"]),
            status=ResponseStatus(d["status"]),
            final=ResponseStatus(d["final"]),
            applied=None if d["applied"] is None else ControlMode(d["applied"]),
            value=d["value"],
            steps=[(float(t), int(v)) for t, v in d["steps"]],
            keep_until=int(d["keep_until"]),
        )


class DispatchBook:
    """The device's dispatch state and decisions. Pure: no I/O and no clock; every method takes
    `now` (Unix seconds) where time matters and returns the actions to carry out, in order.

    `seen` is `check_command`'s memory (event id -> (modification, digest)); `dirty` names the
    events changed since the caller last saved them (`take_dirty`).
    """

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, bytes]] = {}
        self.entries: dict[str, Entry] = {}
        self.dirty: set[str] = set()

    # -- commands

    def accept(self, command: DispatchCommand, now: float, delay_s: float) -> list[Action]:
        """A new command (or a newer modification) that `check_command` accepted. `delay_s`
        is the random start delay (or cancellation delay), 0..randomize_start_s."""
        remember(self.seen, command)
        eid = command.event_id
        old = self.entries.get(eid)
        live = old is not None and not old.done
        keep = max(command.end_s, old.keep_until if old else 0) + KEEP_AFTER_END_S
        self.dirty.add(eid)
        out: list[Action] = []
        if not command.status.runs:  # cancelled, cancelled with randomization, superseded
            final = (
                ResponseStatus.SUPERSEDED
                if command.status is EventStatus.SUPERSEDED
                else ResponseStatus.CANCELLED
            )
            wait = delay_s if command.status is EventStatus.CANCELLED_WITH_RANDOMIZATION else 0.0
            entry = Entry(command, math.inf, now + wait, final=final, keep_until=keep)
            if live and old is not None:
                entry.applied, entry.value = old.applied, old.value
            self.entries[eid] = entry
            return out + self.tick(now)
        entry = Entry(command, command.start + delay_s, float(command.end_s), keep_until=keep)
        if live and old is not None:
            out.append(Ack(eid, old.command.modification, ResponseStatus.SUPERSEDED))
            if old.applied is not None:
                if old.applied == command.control and entry.start_at <= now:
                    entry.applied, entry.value = old.applied, old.value  # taken over, no blip
                else:
                    out.append(Release(eid, old.applied))
        self.entries[eid] = entry
        out.append(Ack(eid, command.modification, ResponseStatus.RECEIVED))
        return out + self.tick(now)

    def duplicate(self, command: DispatchCommand) -> list[Action]:
        """The exact command again (QoS 1 redelivery, a replayed session): answer the event's
        current status once more, change nothing."""
        entry = self.entries.get(command.event_id)
        if entry is None or entry.command.modification != command.modification:
            return [Ack(command.event_id, command.modification, ResponseStatus.RECEIVED)]
        measure = entry.applied if entry.status is ResponseStatus.STARTED else None
        return [Ack(command.event_id, command.modification, entry.status, measure=measure)]

    # -- time

    def tick(self, now: float) -> list[Action]:
        """Everything due at `now`: ends, starts, ramp steps, re-applies after a restart."""
        out: list[Action] = []
        for entry in sorted(self._live(), key=lambda e: (e.start_at, e.command.event_id)):
            if entry.done:  # superseded by an entry started earlier in this loop
                continue
            eid, cmd = entry.command.event_id, entry.command
            if now >= entry.stop_at:
                if entry.applied is not None:
                    out.append(Release(eid, entry.applied))
                out.append(Ack(eid, cmd.modification, entry.final))
                self._finish(entry, entry.final)
            elif entry.starts and now >= entry.start_at:
                out += self._start(entry, now)
            elif entry.status is ResponseStatus.STARTED:
                due = [s for s in entry.steps if s[0] <= now]
                entry.steps = [s for s in entry.steps if s[0] > now]
                if due or entry.value is None:
                    value = due[-1][1] if due else self._current_target(entry)
                    entry.applied, entry.value = cmd.control, value
                    out.append(Apply(eid, cmd.control, value))
                    self.dirty.add(eid)
        return out

    def _start(self, entry: Entry, now: float) -> list[Action]:
        cmd = entry.command
        out: list[Action] = []
        origin = entry.value if entry.applied == cmd.control else None
        for other in self._live():
            if other is not entry and other.applied == cmd.control:
                # Two events on one control: the one starting now takes over (2030.5: the
                # newer event supersedes an overlapping one).
                if origin is None:
                    origin = other.value
                out.append(
                    Ack(
                        other.command.event_id,
                        other.command.modification,
                        ResponseStatus.SUPERSEDED,
                    )
                )
                other.applied = None
                self._finish(other, ResponseStatus.SUPERSEDED)
        if origin is None:
            origin = _RAMP_ORIGIN.get(cmd.control)
        entry.steps = _ramp(origin, cmd.value, now, cmd.ramp_s)
        first = entry.steps.pop(0)[1]
        entry.applied, entry.value = cmd.control, first
        entry.status = ResponseStatus.STARTED
        self.dirty.add(cmd.event_id)
        out.append(Apply(cmd.event_id, cmd.control, first))
        out.append(Ack(cmd.event_id, cmd.modification, ResponseStatus.STARTED, measure=cmd.control))
        return out

    @staticmethod
    def _current_target(entry: Entry) -> int:
        """The value a started event should hold now (after a restart): the last ramp step
        passed, or the command's value."""
        return entry.steps[0][1] if entry.steps else entry.command.value

    def next_due(self) -> float | None:
        """The earliest time `tick` has something to do, None if nothing is pending."""
        times: list[float] = []
        for e in self._live():
            times.append(e.stop_at)
            if e.starts:
                times.append(e.start_at)
            if e.steps:
                times.append(e.steps[0][0])
        return min(times) if times else None

    # -- failures and reverts

    def fail(self, event_id: str, detail: str) -> list[Action]:
        """The equipment refused a setting of `event_id`: release it (best effort) and answer
        FAILED with the plain message."""
        entry = self.entries.get(event_id)
        if entry is None:
            return []
        out: list[Action] = []
        if entry.applied is not None:
            out.append(Release(event_id, entry.applied))
        out.append(Ack(event_id, entry.command.modification, ResponseStatus.FAILED, detail))
        entry.applied = None
        self._finish(entry, ResponseStatus.FAILED)
        return out

    def revert_all(self, detail: str) -> list[Action]:
        """Back to the equipment's defaults: every live event is released and answered FAILED
        (the cloud silent too long; it sends a new modification to resume)."""
        out: list[Action] = []
        for entry in list(self._live()):
            out += self.fail(entry.command.event_id, detail)
        return out

    def restore(self, rows: Iterable[tuple[str, int, bytes, str | None]], now: float) -> None:
        """Load what `rows` (from the outbox) held before a restart. A started event is applied
        again by the next `tick` if it is still within its window; one that ended meanwhile is
        released and answered then."""
        for event_id, modification, digest, state in rows:
            self.seen[event_id] = (modification, digest)
            if state is None:
                continue
            entry = Entry.from_json(state)
            if entry.status is ResponseStatus.STARTED:
                entry.value = None  # the equipment may have rebooted too: set it again
            self.entries[event_id] = entry

    # -- persistence

    def take_dirty(self) -> list[tuple[str, int, bytes, str | None, int]]:
        """Rows to save (event id, modification, digest, entry or None, keep until) for the
        events changed since the last call."""
        rows: list[tuple[str, int, bytes, str | None, int]] = []
        for eid in sorted(self.dirty):
            if eid not in self.seen:  # pruned: delete the row
                rows.append((eid, 0, b"", None, 0))
                continue
            modification, digest = self.seen[eid]
            entry = self.entries.get(eid)
            state = None if entry is None else entry.to_json()
            rows.append((eid, modification, digest, state, entry.keep_until if entry else 0))
        self.dirty.clear()
        return rows

    def prune(self, now: float) -> None:
        """Forget finished events well past their end (a replay of them is then answered 254
        by `check_command` anyway)."""
        for eid, entry in list(self.entries.items()):
            if entry.done and now > entry.keep_until:
                del self.entries[eid]
                self.seen.pop(eid, None)
                self.dirty.add(eid)

    # -- helpers

    def _live(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.done]

    def _finish(self, entry: Entry, status: ResponseStatus) -> None:
        entry.status = status
        entry.applied = None
        entry.steps = []
        self.dirty.add(entry.command.event_id)

    @property
    def active(self) -> dict[str, Entry]:
        """Events not finished yet, by id."""
        return {e.command.event_id: e for e in self._live()}


def _ramp(origin: int | None, target: int, now: float, ramp_s: int) -> list[tuple[float, int]]:
    """The (time, value) steps from `origin` to `target` over `ramp_s`, the first at `now`
    (at `origin`); just the target when there is no ramp or no known origin."""
    if ramp_s <= 0 or origin is None or origin == target:
        return [(now, target)]
    n = max(1, min(RAMP_STEPS, ramp_s))
    return [(now + ramp_s * k / n, origin + round((target - origin) * k / n)) for k in range(n + 1)]


# --- the runner -----------------------------------------------------------------------------


class Publisher(Protocol):
    """What the runner needs of the MQTT link (mqttlink.MqttLink has it)."""

    connected: asyncio.Event

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...


@dataclass(slots=True)
class RunnerStats:
    """Counters (the agent passes its AgentStats, which has the same fields)."""

    commands_accepted: int = 0  # new modifications accepted
    commands_rejected: int = 0  # 252, 253, 254
    commands_failed: int = 0  # 251


MAX_UNSENT_ACKS = 1000


class CommandRunner:
    """Runs the device's dispatch commands: `await on_commands(messages)` for each batch from
    the commands topic, `await run(stop)` for the timing (starts, ends, ramps, silence).

    `dispatch_key` is the pinned raw Ed25519 key (32 bytes); `outbox` may be None (nothing
    survives a restart: tests). `rng(lo, hi)` draws the random start delay.
    """

    def __init__(
        self,
        *,
        device_id: str,
        deployment: bytes,
        dispatch_key: bytes,
        device_key: Ed25519PrivateKey,
        clock: Clock,
        link: Publisher,
        acks_topic: str,
        actuators: Sequence[Actuator] = (),
        outbox: Outbox | None = None,
        silence_revert_s: float = 900.0,
        rng: Callable[[float, float], float] | None = None,
        stats: Any = None,
    ) -> None:
        self.device_id = device_id
        self.deployment = deployment
        self.dispatch_key = dispatch_key
        self.device_key = device_key
        self.clock = clock
        self.link = link
        self.acks_topic = acks_topic
        self.actuators = list(actuators)
        self.outbox = outbox
        self.silence_revert_s = silence_revert_s
        self.rng = rng or random.SystemRandom().uniform
        self.book = DispatchBook()
        self.stats = stats if stats is not None else RunnerStats()
        self.supported = frozenset(c for a in self.actuators for c in a.controls)
        self._by_control: dict[ControlMode, Actuator] = {}
        for a in self.actuators:
            for c in a.controls:
                self._by_control.setdefault(c, a)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._unsent: deque[DispatchAck] = deque(maxlen=MAX_UNSENT_ACKS)
        self._ack_ready = asyncio.Event()
        self._silent_since: float | None = None
        self._reverted = False
        self.loaded = False

    # -- commands from the cloud

    async def on_commands(self, messages: list[tuple[str, bytes]]) -> None:
        """A batch from the commands topic. Returns once every decision is stored, so the
        MQTT acknowledgement means the command will not be lost or run twice."""
        await self.load()
        async with self._lock:
            for _topic, envelope in messages:
                now = self.clock.now()
                result = check_command(
                    envelope,
                    self.dispatch_key,
                    self.deployment,
                    self.device_id,
                    self.book.seen,
                    int(now),
                    self.supported,
                )
                if isinstance(result, Rejected):
                    self.stats.commands_rejected += 1
                    log.warning("dispatch command rejected (%d): %s", result.status, result.detail)
                    self._queue_ack(reject_ack(result, self.device_id, int(now * 1000)))
                    continue
                await self._accepted(result, now)
            await self._save()
        self._wake.set()

    async def _accepted(self, result: Accepted, now: float) -> None:
        cmd = result.command
        if result.duplicate:
            await self._execute(self.book.duplicate(cmd))
            return
        self.stats.commands_accepted += 1
        log.info(
            "dispatch: event %s modification %d accepted: %s %s = %d from %d for %d s",
            cmd.event_id,
            cmd.modification,
            cmd.status.name.lower(),
            cmd.control.wire_name,
            cmd.value,
            cmd.start,
            cmd.duration_s,
        )
        delay = self.rng(0.0, float(cmd.randomize_start_s)) if cmd.randomize_start_s else 0.0
        await self._execute(self.book.accept(cmd, now, delay))

    # -- time

    async def load(self) -> None:
        """Pick up the book the last run left (once)."""
        if self.loaded:
            return
        self.loaded = True
        if self.outbox is not None:
            rows = await self.outbox.load_dispatch()
            self.book.restore(rows, self.clock.now())
            if self.book.active:
                log.info("dispatch: %d event(s) from the last run", len(self.book.active))

    async def step(self) -> None:
        """Do what is due now: the silence check, starts, ends, ramp steps."""
        await self.load()
        async with self._lock:
            now = self.clock.now()
            if self.link.connected.is_set():
                self._silent_since = None
                self._reverted = False
            elif self._silent_since is None:
                self._silent_since = now
            if (
                self._silent_since is not None
                and not self._reverted
                and now - self._silent_since >= self.silence_revert_s
            ):
                self._reverted = True
                if self.book.active:
                    log.warning(
                        "dispatch: no contact with the cloud for %.0f s, reverting to defaults",
                        now - self._silent_since,
                    )
                await self._execute(
                    self.book.revert_all(
                        f"reverted to defaults: no contact with the cloud for "
                        f"{self.silence_revert_s:.0f} s"
                    )
                )
            await self._execute(self.book.tick(now))
            self.book.prune(now)
            await self._save()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: act when something is due, on a new command, and at least every
        second (real time) to watch the link."""
        sender = asyncio.create_task(self._send_acks(stop), name="dispatch-acks")
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.step()
                except Exception as exc:  # storage trouble: keep running, try again
                    log.error("dispatch step failed: %s", exc)
                due = self.book.next_due()
                if self._silent_since is not None and not self._reverted:
                    revert_at = self._silent_since + self.silence_revert_s
                    due = revert_at if due is None else min(due, revert_at)
                waits: list[asyncio.Task[object]] = [
                    asyncio.create_task(self._wake.wait()),
                    asyncio.create_task(stop.wait()),
                ]
                if due is not None:
                    waits.append(asyncio.create_task(self.clock.sleep_until(due)))
                try:
                    await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in waits:
                        t.cancel()
                    for t in waits:
                        with contextlib.suppress(asyncio.CancelledError):
                            await t
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    # -- carrying out

    async def _execute(self, actions: list[Action]) -> None:
        """Carry out the book's actions in order. A setting the equipment refuses fails its
        event: the rest of that event's actions are dropped for the book's FAILED answer."""
        queue = deque(actions)
        failing: set[str] = set()
        while queue:
            action = queue.popleft()
            if isinstance(action, Ack):
                await self._ack(action)
                continue
            actuator = self._by_control.get(action.control)
            try:
                if actuator is None:
                    raise ActuatorError(f"no actuator offers {action.control.wire_name}")
                if isinstance(action, Apply):
                    await actuator.apply(action.control, action.value)
                else:
                    await actuator.release(action.control)
            except Exception as exc:  # whatever the equipment raised: the event failed
                msg = str(exc) or type(exc).__name__
                eid = action.event_id
                if eid in failing:  # the best-effort release after a failure
                    log.warning("dispatch: releasing %s after a failure: %s", eid, msg)
                    continue
                failing.add(eid)
                self.stats.commands_failed += 1
                log.error("dispatch: event %s failed: %s", eid, msg)
                queue = deque(a for a in queue if a.event_id != eid)
                queue.extendleft(reversed(self.book.fail(eid, msg)))

    async def _ack(self, action: Ack) -> None:
        measured = None
        if action.measure is not None:
            actuator = self._by_control.get(action.measure)
            if actuator is not None:
                try:
                    measured = await actuator.measure_w(action.measure)
                except Exception as exc:
                    log.info("dispatch: no measurement for the ack: %s", exc)
        self._queue_ack(
            DispatchAck(
                action.event_id,
                action.modification,
                self.device_id,
                action.status,
                int(self.clock.now() * 1000),
                measured_w=None if measured is None else int(measured),
                detail=action.detail[:128],
            )
        )

    def _queue_ack(self, ack: DispatchAck) -> None:
        self._unsent.append(ack)
        self._ack_ready.set()

    async def _send_acks(self, stop: asyncio.Event) -> None:
        """Publish acks in order; one that cannot go out now waits for the link."""
        while not stop.is_set():
            if not self._unsent:
                self._ack_ready.clear()
                await self._ack_ready.wait()
                continue
            ack = self._unsent[0]
            try:
                payload = sign_ack(ack, self.device_key, self.deployment)
            except ValueError as exc:  # cannot happen for what the book answers; never stall
                log.error("dispatch: dropping an ack that cannot be encoded: %s", exc)
                self._unsent.popleft()
                continue
            try:
                sent = await self.link.publish(self.acks_topic, payload, qos=1)
            except Exception as exc:
                log.warning("dispatch: publishing an ack failed: %s", exc)
                sent = False
            if sent:
                if self._unsent and self._unsent[0] is ack:
                    self._unsent.popleft()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.connected.wait(), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    @property
    def unsent_acks(self) -> list[DispatchAck]:
        """Acks waiting to be published (for status and tests)."""
        return list(self._unsent)

    async def _save(self) -> None:
        rows = self.book.take_dirty()
        if rows and self.outbox is not None:
            await self.outbox.save_dispatch(rows)
