"""Dispatch events: create, modify and cancel; sign and send commands; track responses.

Owns: an event's life in the aggregator. Creating one checks the request, allocates the
group's target across its live devices (cloud/domain/dispatch_events.py), stores the event and
every device's signed command in one transaction, then publishes the commands (QoS 1 on each
device's commands topic; the broker keeps them in an offline Pi's persistent session). A
modification or a cancellation is a new modification number sent the same way. Signed
acknowledgements are verified against the device's registered keys, stored with the command
row they answer, and a FAILED (251) answer raises an alarm. A sampler records requested versus
measured power for the event board.

The commands are signed with the dispatch key, a separate Ed25519 key from the ledger's
(protocol/dispatch.py explains why); the Pis pin its public half at enrollment.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.domain.dispatch_events import (
    Allocation,
    DeviceCapability,
    EventPerformance,
    EventRequest,
    EventRequestError,
    EventView,
    SitePerformance,
    allocate,
    check_request,
    event_status,
    largest_remainder,
    measured_flow,
    ramped,
    requested_flow_w,
)
from cloud.domain.fleet_state import DeviceLive
from cloud.services.fleet import FleetService
from cloud.services.ledger import LedgerService
from cloud.storage.dispatch_store import CommandRow, DispatchStore, EventRow, ResponseRow
from protocol import cose, dispatch, topics
from protocol.dispatch import ControlMode, DispatchCommand, EventStatus, ResponseStatus

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]
# After the end, the board keeps sampling this long (the devices' way back to normal).
TAIL_S = 60
# Unanswered commands are resent only once an event's answers have paused this long.
ANSWERS_QUIET_S = 5.0
# Batches of at least this many signatures to make or check go to a thread (below it, the
# hop costs more than it frees).
OFF_LOOP_FROM = 32


@dataclass(slots=True)
class DispatchCounters:
    """Since the process started."""

    events: int = 0
    commands_sent: int = 0
    responses: Counter[str] = field(default_factory=Counter)  # status name -> acks
    acks_refused: int = 0
    ack_latency_ms: list[int] = field(default_factory=list)  # first answers, newest 10,000


@dataclass(slots=True)
class _Live:
    """An event the sampler follows, cached with its commands."""

    row: EventRow
    commands: list[CommandRow]
    baselined_at_start: bool = False
    resent_at: float = 0.0
    # flexibility delivered so far per device, W·s against the baseline (capped at what was
    # asked: over-delivery earns nothing), and when it was last added to
    delivered_ws: dict[str, int] = field(default_factory=dict)
    accounted_at: float | None = None
    last_flex: dict[str, int] = field(default_factory=dict)  # W, at the last tick
    rewarded: bool = False
    answered_at: float = 0.0  # when the last acknowledgement for it came (clock s)
    # device id -> its index in `commands` (an ack finds its command without a scan: a scan
    # per ack made a 10,000-device event's acks cost 10,000 x 10,000 comparisons)
    index: dict[str, int] = field(default_factory=dict)

    def find(self, device_id: str, modification: int) -> int | None:
        """Index in `commands` of the device's command of this modification, or None."""
        i = self.index.get(device_id)
        if i is None or i >= len(self.commands) or self.commands[i].device_id != device_id:
            self.index = {c.device_id: k for k, c in enumerate(self.commands)}
            i = self.index.get(device_id)
        if i is None or self.commands[i].modification != modification:
            return None
        return i


def status_name(status: int | None) -> str:
    if status is None:
        return "sent"
    try:
        return ResponseStatus(status).name.lower()
    except ValueError:
        return str(status)


class DispatchService:
    """Dispatch events for the operator's page, the API and the OpenADR 3 VTN."""

    def __init__(
        self,
        store: DispatchStore,
        fleet: FleetService,
        key: Ed25519PrivateKey,
        deployment: bytes,
        publish: Publish,
        now: Callable[[], float] = time.time,
        resend_after_s: float = 30.0,
        ledger: LedgerService | None = None,
        reward_minor_per_kwh: int = 0,
        max_gap_s: float = 5.0,
    ) -> None:
        """`max_gap_s`: the longest clock span one tick may count as delivered (a stalled
        loop earns nothing for the time nobody measured); on a faster-than-real clock, scale it
        with the clock's speed."""
        self.store = store
        self.fleet = fleet
        self.key = key
        self.deployment = deployment
        self.publish = publish
        self._keys: dict[str, list[bytes]] = {}
        self.now = now
        self.resend_after_s = resend_after_s
        self.ledger = ledger
        self.reward_minor_per_kwh = reward_minor_per_kwh
        self.max_gap_s = max_gap_s
        self.counters = DispatchCounters()
        self._live: dict[str, _Live] = {}
        # One modification or cancellation at a time: each reads the event's current
        # modification number and signs in a thread, so two at once could both take N + 1.
        self._changing = asyncio.Lock()

    @property
    def public_key(self) -> bytes:
        """The raw Ed25519 key the Pis pin."""
        return cose.public_bytes(self.key.public_key())

    async def load(self) -> None:
        """Follow the events still running (after a restart)."""
        self._keys = await self.store.device_public_keys()
        now_s = int(self.now())
        for row in await self.store.live_events(now_s - TAIL_S):
            self._live[row.event_id] = _Live(row, await self.store.commands(row.event_id))

    # operator actions

    def _capability(self, d: DeviceLive) -> DeviceCapability:
        t = d.telemetry
        return DeviceCapability(
            d.device_id,
            d.site_id,
            d.rating_w,
            d.battery_max_w if t is not None and t.battery_w is not None else 0,
            t.soc_permille if t is not None else None,
            online=d.connected,
        )

    def _commands(
        self,
        row: EventRow,
        req: EventRequest,
        status: EventStatus,
        old: Sequence[CommandRow],
    ) -> list[tuple[CommandRow, DispatchCommand]]:
        """Allocate; devices of an older modification left out now get a cancel. The rows'
        envelopes are signed by `_signed`."""
        members = list(self.fleet.state.members(req.group))
        now_ms = int(self.now() * 1000)
        if status.runs:
            shares = allocate(req, [self._capability(d) for d in members])
            if not shares:
                raise EventRequestError(
                    f"no device in {req.group} can take a share now (offline, no battery, or "
                    "its battery is at its limit)"
                )
        else:
            shares = []
        by_device = {d.device_id: d for d in members}
        baselines = {c.device_id: c.baseline_w for c in old}
        rows = []
        plan = [(a.device_id, a.site_id, a.value, a.expected_w, status) for a in shares]
        taken = {a.device_id for a in shares}
        # Everyone who had a command and has none now is told the event is off for them.
        plan += [
            (c.device_id, c.site_id, c.value, 0, EventStatus.CANCELLED)
            for c in old
            if c.device_id not in taken
        ]
        for device_id, site_id, value, expected, st in plan:
            cmd = DispatchCommand(
                event_id=row.event_id,
                modification=row.modification,
                device_id=device_id,
                site_id=site_id,
                control=req.control,
                value=value,
                start=req.start,
                duration_s=req.duration_s,
                expiry=req.start + req.duration_s,
                issued_ms=now_ms,
                status=st,
                ramp_s=req.ramp_s,
                randomize_start_s=req.randomize_start_s,
            )
            baseline = baselines.get(device_id)
            if baseline is None and device_id in by_device:
                t = by_device[device_id].telemetry
                if t is not None:
                    baseline = measured_flow(req.control, t.pv_w, t.battery_w, t.grid_w)
            rows.append(
                (
                    CommandRow(
                        row.event_id,
                        device_id,
                        site_id,
                        row.modification,
                        value,
                        expected,
                        baseline,
                        now_ms,
                    ),
                    cmd,
                )
            )
        return rows

    async def _signed(self, plan: Sequence[tuple[CommandRow, DispatchCommand]]) -> list[CommandRow]:
        """The rows with their signed envelopes. A big event is signed in a thread: the
        signatures (OpenSSL, which lets go of the GIL) no longer hold the event loop, so the
        API and the telemetry go on while 10,000 commands are signed."""

        def sign() -> list[CommandRow]:
            return [
                replace(r, envelope=dispatch.sign_command(c, self.key, self.deployment))
                for r, c in plan
            ]

        if len(plan) < OFF_LOOP_FROM:
            return sign()
        return await asyncio.to_thread(sign)

    def _send(self, commands: Sequence[CommandRow]) -> int:
        sent = 0
        for c in commands:
            topic = topics.topic(c.site_id, c.device_id, topics.Channel.COMMANDS)
            sent += bool(self.publish(topic, c.envelope))
        self.counters.commands_sent += sent
        return sent

    async def create_event(self, req: EventRequest, *, by: str) -> EventView:
        """Check, allocate, store and send; raises EventRequestError with a plain message."""
        now = self.now()
        check_request(req, int(now))
        ms = int(now * 1000)
        row = EventRow(
            event_id=f"ev-{secrets.token_hex(6)}",
            modification=1,
            group=req.group,
            control=int(req.control),
            value=req.value,
            start=req.start,
            duration_s=req.duration_s,
            ramp_s=req.ramp_s,
            randomize_s=req.randomize_start_s,
            name=req.name,
            source=req.source,
            cancelled=False,
            created_ms=ms,
            created_by=by,
            modified_ms=ms,
        )
        commands = await self._signed(self._commands(row, req, EventStatus.SCHEDULED, []))
        await self.store.save_event(row, commands)  # stored before anything is sent
        self._live[row.event_id] = _Live(row, commands)
        self._send(commands)
        self.counters.events += 1
        log.info("dispatch event %s for %s: %d device(s)", row.event_id, req.group, len(commands))
        return await self._view(row, commands)

    async def _current(self, event_id: str) -> tuple[EventRow, list[CommandRow]]:
        live = self._live.get(event_id)
        if live is not None:
            return live.row, live.commands
        row = await self.store.event(event_id)
        if row is None:
            raise KeyError(event_id)
        return row, await self.store.commands(event_id)

    async def modify_event(self, event_id: str, req: EventRequest, *, by: str) -> EventView:
        """A new modification: re-allocated and sent to the group as it is now.
        Raises KeyError (no such event) or EventRequestError."""
        async with self._changing:
            return await self._modify_event(event_id, req, by=by)

    async def _modify_event(self, event_id: str, req: EventRequest, *, by: str) -> EventView:
        row, old = await self._current(event_id)
        now = self.now()
        if (
            row.cancelled
            or event_status(row.start, row.start + row.duration_s, False, int(now)) == "completed"
        ):
            raise EventRequestError(f"event {event_id} is over; create a new one")
        check_request(req, int(now))
        new = replace(
            row,
            modification=row.modification + 1,
            group=req.group,
            control=int(req.control),
            value=req.value,
            start=req.start,
            duration_s=req.duration_s,
            ramp_s=req.ramp_s,
            randomize_s=req.randomize_start_s,
            name=req.name or row.name,
            modified_ms=int(now * 1000),
        )
        commands = await self._signed(self._commands(new, req, EventStatus.SCHEDULED, old))
        await self.store.save_event(new, commands)
        self._live[event_id] = _Live(new, commands)
        self._send(commands)
        log.info(
            "dispatch event %s modified by %s (modification %d)", event_id, by, new.modification
        )
        return await self._view(new, commands)

    async def cancel_event(self, event_id: str, *, by: str) -> EventView:
        """Send every device of the event a cancellation (a new modification)."""
        async with self._changing:
            return await self._cancel_event(event_id, by=by)

    async def _cancel_event(self, event_id: str, *, by: str) -> EventView:
        row, old = await self._current(event_id)
        if row.cancelled:
            return await self._view(row, old)
        new = replace(
            row,
            modification=row.modification + 1,
            cancelled=True,
            modified_ms=int(self.now() * 1000),
        )
        commands = await self._signed(
            self._commands(new, _request(new), EventStatus.CANCELLED, old)
        )
        await self.store.save_event(new, commands)
        live = self._live.pop(event_id, None)
        self._send(commands)
        if live is not None and live.delivered_ws:
            # what was delivered before the cancellation earns its reward
            try:
                await self._reward(live)
            except Exception as exc:
                log.error("dispatch event %s: rewarding failed: %s", event_id, exc)
        log.info("dispatch event %s cancelled by %s", event_id, by)
        return await self._view(new, commands)

    # views

    async def _view(self, row: EventRow, commands: Sequence[CommandRow]) -> EventView:
        counts = Counter(status_name(c.status) for c in commands)
        return EventView(
            event_id=row.event_id,
            modification=row.modification,
            status=event_status(
                row.start, row.start + row.duration_s, row.cancelled, int(self.now())
            ),
            request=_request(row),
            devices=len(commands),
            responses=dict(counts),
            created_ms=row.created_ms,
            created_by=row.created_by,
        )

    async def get_event(self, event_id: str) -> EventView | None:
        row = await self.store.event(event_id)
        if row is None:
            return None
        counts = await self.store.status_counts(event_id)
        return EventView(
            event_id=row.event_id,
            modification=row.modification,
            status=event_status(
                row.start, row.start + row.duration_s, row.cancelled, int(self.now())
            ),
            request=_request(row),
            devices=sum(counts.values()),
            responses={status_name(s): n for s, n in counts.items()},
            created_ms=row.created_ms,
            created_by=row.created_by,
        )

    async def list_events(self, limit: int = 100) -> list[EventView]:
        out = []
        for row in await self.store.events(limit):
            view = await self.get_event(row.event_id)
            if view is not None:
                out.append(view)
        return out

    async def site_events(
        self, site_id: str, limit: int = 20
    ) -> list[tuple[EventView, list[CommandRow]]]:
        """The newest events that reached a site's devices, with those devices' rows."""
        by_event: dict[str, list[CommandRow]] = {}
        for c in await self.store.site_commands(site_id, limit * 8):
            by_event.setdefault(c.event_id, []).append(c)
        out = []
        for event_id, rows in list(by_event.items())[:limit]:
            view = await self.get_event(event_id)
            if view is not None:
                out.append((view, rows))
        return out

    async def device_responses(self, event_id: str) -> list[CommandRow]:
        return await self.store.commands(event_id)

    async def performance(self, event_id: str) -> EventPerformance | None:
        """Requested versus delivered now (from live telemetry) and over time (samples)."""
        row = await self.store.event(event_id)
        if row is None:
            return None
        commands = await self.store.commands(event_id)
        control = ControlMode(row.control)
        now = int(self.now())
        running = not row.cancelled and row.start <= now < row.start + row.duration_s
        sites: dict[str, list[int]] = {}
        socs: dict[str, int | None] = {}
        for c in commands:
            d = self.fleet.state.devices.get(c.device_id)
            t = d.telemetry if d is not None else None
            measured = measured_flow(control, t.pv_w, t.battery_w, t.grid_w) if t else None
            base = c.baseline_w if c.baseline_w is not None else (measured or 0)
            req = requested_flow_w(control, _allocation(c), base) if running else base
            acc = sites.setdefault(c.site_id, [0, 0, 0])
            acc[0] += req
            acc[1] += measured if measured is not None else base
            acc[2] += base
            socs[c.site_id] = t.soc_permille if t is not None else None
        per_site = [
            SitePerformance(s, v[0], v[1], v[2], socs.get(s)) for s, v in sorted(sites.items())
        ]
        series = [(at, req, meas) for at, req, meas, _b in await self.store.samples(event_id)]
        return EventPerformance(
            event_id=event_id,
            requested_w=sum(p.requested_w for p in per_site),
            delivered_w=sum(p.delivered_w for p in per_site),
            baseline_w=sum(p.baseline_w for p in per_site),
            sites=per_site,
            series=series,
        )

    # acknowledgements

    async def handle_acks(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Verify and store a batch of acknowledgements (stored before the broker gets its
        PUBACK: mqttlink acks the batch when this returns)."""
        received_ms = int(self.now() * 1000)
        rows: list[ResponseRow] = []
        if len(messages) < OFF_LOOP_FROM:
            checked = self._verify_all(messages)
        else:  # the signature checks let go of the GIL: the loop serves the API meanwhile
            checked = await asyncio.to_thread(self._verify_all, messages)
        for device_id, payload, ack, error in checked:
            if device_id is None:
                self.counters.acks_refused += 1
                continue
            if ack is None:  # a key registered or rotated since they were loaded?
                self._keys.update(await self.store.device_public_keys(device_id))
                ack, error = self._verify(payload, device_id)
            if ack is None:
                self.counters.acks_refused += 1
                log.warning("acknowledgement from %s refused: %s", device_id, error)
                continue
            rows.append(
                ResponseRow(
                    ack.event_id,
                    device_id,
                    ack.modification,
                    int(ack.status),
                    ack.at_ms,
                    received_ms,
                    ack.measured_w,
                    ack.detail,
                    payload,
                )
            )
        await self.store.record_responses(rows)
        for r in rows:
            status = ResponseStatus(r.status)
            self.counters.responses[status.name.lower()] += 1
            if status is ResponseStatus.FAILED or status.is_rejection:
                self.fleet.raise_alarm(
                    "failed_command",
                    r.device_id,
                    f"event {r.event_id} modification {r.modification}: "
                    f"{status.name.lower()} {r.detail}".strip(),
                )
            live = self._live.get(r.event_id)
            if live is None:
                continue
            live.answered_at = received_ms / 1000
            i = live.find(r.device_id, r.modification)
            if i is not None:
                c = live.commands[i]
                if c.first_ack_ms is None:
                    self._latency(received_ms - c.sent_ms)
                live.commands[i] = replace(
                    c,
                    status=r.status,
                    status_ms=received_ms,
                    first_ack_ms=c.first_ack_ms or received_ms,
                    measured_w=r.measured_w if r.measured_w is not None else c.measured_w,
                    detail=r.detail,
                )
        await self.fleet.flush_alarms()

    def _verify_all(
        self, messages: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str | None, bytes, dispatch.DispatchAck | None, str]]:
        """(device id or None for a topic naming none, payload, ack or None, why not)."""
        out: list[tuple[str | None, bytes, dispatch.DispatchAck | None, str]] = []
        for topic, payload in messages:
            try:
                device_id = topics.parse(topic).device_id
            except topics.TopicError:
                out.append((None, payload, None, "not a device topic"))
                continue
            ack, error = self._verify(payload, device_id)
            out.append((device_id, payload, ack, error))
        return out

    def _verify(self, payload: bytes, device_id: str) -> tuple[dispatch.DispatchAck | None, str]:
        error = "no registered key"
        for key in self._keys.get(device_id, []):
            try:
                return dispatch.check_ack(payload, key, self.deployment, device_id), ""
            except dispatch.AckRejected as exc:
                error = str(exc)
        return None, error

    def _latency(self, ms: int) -> None:
        lat = self.counters.ack_latency_ms
        lat.append(ms)
        if len(lat) > 10_000:
            del lat[: len(lat) - 10_000]

    # periodic work

    async def tick(self) -> None:
        """Sample the live events for the board; resend unanswered commands; forget ended
        events. Called every second or so."""
        now = self.now()
        now_s = int(now)
        samples = []
        for event_id, live in list(self._live.items()):
            row = live.row
            end = row.start + row.duration_s
            if now_s >= end and not live.rewarded:
                # the stretch from the last tick to the end, at the last measured rate
                if live.accounted_at is not None and live.accounted_at < end:
                    dt_end = min(end - live.accounted_at, self.max_gap_s)
                    for device_id, flex in live.last_flex.items():
                        acc = live.delivered_ws
                        acc[device_id] = acc.get(device_id, 0) + int(flex * dt_end)
                    live.accounted_at = float(end)
                await self._reward(live)
            if now_s > end + TAIL_S:
                self._live.pop(event_id, None)
                continue
            control = ControlMode(row.control)
            if now_s >= row.start and not live.baselined_at_start:
                # The baseline is the last reading before the start ("the last intervals
                # before the event"); commands created ahead of time are re-baselined here.
                live.baselined_at_start = True
                fresh = self._measured(control, live.commands)
                if row.start > row.created_ms // 1000 and fresh:
                    live.commands = [
                        replace(c, baseline_w=fresh.get(c.device_id, c.baseline_w))
                        for c in live.commands
                    ]
                    await self.store.set_baselines(event_id, fresh)
            measured = self._measured(control, live.commands)
            running = row.start <= now_s < end
            dt = 0.0
            if running:
                dt = (
                    min(now - live.accounted_at, self.max_gap_s)
                    if live.accounted_at is not None
                    else 0.0
                )
                live.accounted_at = now
            req_total = meas_total = base_total = 0
            for c in live.commands:
                base = c.baseline_w if c.baseline_w is not None else measured.get(c.device_id, 0)
                want = base
                if row.start <= now_s < end:
                    want = ramped(
                        requested_flow_w(control, _allocation(c), base),
                        base,
                        now_s,
                        row.start,
                        row.ramp_s,
                    )
                req_total += want
                meas_total += measured.get(c.device_id, base)
                base_total += base
                if running and c.device_id in measured:
                    flex = flex_delivered_w(want, measured[c.device_id], base)
                    live.last_flex[c.device_id] = flex
                    if flex and dt > 0:
                        acc = live.delivered_ws
                        acc[c.device_id] = acc.get(c.device_id, 0) + int(flex * dt)
            samples.append((event_id, now_s, req_total, meas_total, base_total, len(measured)))
            # Not while answers are still coming in: a big event's first answers can take
            # longer than resend_after_s, and resending then only doubles the work on both
            # sides (every copy is verified and answered again).
            if (
                now_s < end
                and now - live.resent_at > self.resend_after_s
                and now - live.answered_at > ANSWERS_QUIET_S
            ):
                live.resent_at = now
                self._resend(live)
        await self.store.add_samples(samples)

    async def _reward(self, live: _Live) -> None:
        """Write each site's reward credits for the flexibility it delivered (FLEX_REWARD
        ledger entries) and the per-device Wh, once per event, in one unit of work."""
        row = live.row
        if self.ledger is None or self.reward_minor_per_kwh <= 0:
            live.rewarded = True
            return
        if not self.ledger.writable:
            return  # the sequencer does it
        if await self.store.rewarded(row.event_id):
            live.rewarded = True
            return
        by_site: dict[str, list[tuple[str, int]]] = {}
        for c in live.commands:
            by_site.setdefault(c.site_id, []).append(
                (c.device_id, live.delivered_ws.get(c.device_id, 0) // 3600)
            )
        site_wh = {s: sum(wh for _d, wh in devs) for s, devs in by_site.items()}
        rate = self.reward_minor_per_kwh
        entries = await self.ledger.append(
            lambda engine: [
                engine.flex_reward(site, row.start, row.event_id, wh, rate)
                for site, wh in sorted(site_wh.items())
                if wh > 0
            ],
            also=lambda conn: self._mark_rewarded(conn, row.event_id, by_site),
        )
        paid = {e.site: sum(p.credit for p in e.postings) for e in entries}
        if paid:  # the per-device split of each site's credits, for the homeowner's page
            await self.store.set_rewards(row.event_id, _split(by_site, paid))
        live.rewarded = True
        log.info(
            "dispatch event %s: %d Wh of flexibility rewarded to %d site(s)",
            row.event_id,
            sum(site_wh.values()),
            len(paid),
        )

    async def _mark_rewarded(
        self,
        conn: AsyncConnection,
        event_id: str,
        by_site: dict[str, list[tuple[str, int]]],
    ) -> None:
        rows = [(d, wh, 0) for devs in by_site.values() for d, wh in devs]
        await self.store.mark_rewarded(conn, event_id, rows, int(self.now() * 1000))

    def _measured(self, control: ControlMode, commands: Sequence[CommandRow]) -> dict[str, int]:
        out = {}
        for c in commands:
            d = self.fleet.state.devices.get(c.device_id)
            if d is None or d.telemetry is None or not d.connected:
                continue
            t = d.telemetry
            m = measured_flow(control, t.pv_w, t.battery_w, t.grid_w)
            if m is not None:
                out[c.device_id] = m
        return out

    def _resend(self, live: _Live) -> None:
        """Send unanswered commands again (at most every resend_after_s): covers a command
        published while the aggregator's broker link was down. A Pi that got it already
        answers the duplicate with its current status."""
        due = [
            c
            for c in live.commands
            if c.status is None and self.now() * 1000 - c.sent_ms > self.resend_after_s * 1000
        ]
        if not due:
            return
        self._send(due)


def flex_delivered_w(requested: int, measured: int, baseline: int) -> int:
    """Flexibility a device delivers now: its move from the baseline in the direction asked,
    no more than asked (W, >= 0)."""
    asked = requested - baseline
    if asked == 0:
        return 0
    moved = measured - baseline if asked > 0 else baseline - measured
    return max(0, min(moved, abs(asked)))


def _split(
    by_site: dict[str, list[tuple[str, int]]], paid: dict[str, int]
) -> list[tuple[str, int]]:
    """Each device's share of its site's credits, by its Wh (largest remainder: they add up)."""
    out = []
    for site, amount in paid.items():
        devs = by_site.get(site, [])
        total = sum(wh for _d, wh in devs)
        if not devs or total <= 0:
            continue
        shares = largest_remainder(amount, [wh for _d, wh in devs])
        out += [(d, s) for (d, _wh), s in zip(devs, shares, strict=True)]
    return out


def _request(row: EventRow) -> EventRequest:
    return EventRequest(
        group=row.group,
        control=ControlMode(row.control),
        value=row.value,
        start=row.start,
        duration_s=row.duration_s,
        ramp_s=row.ramp_s,
        randomize_start_s=row.randomize_s,
        name=row.name,
        source=row.source,
    )


def _allocation(c: CommandRow) -> Allocation:
    return Allocation(c.device_id, c.site_id, c.value, c.expected_w)
