"""Dispatch events, commands, responses, board samples and alarms (migration 0012).

Owns: every query of those tables. Callers pass and receive plain dataclasses. A write that
belongs together (an event and its commands, a batch of responses and the command rows they
update) is one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.storage.tables import (
    alarms,
    device_keys,
    devices,
    dispatch_commands,
    dispatch_events,
    dispatch_responses,
    dispatch_samples,
    rejections,
    sites,
)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event at its latest modification."""

    event_id: str
    modification: int
    group: str
    control: int
    value: int
    start: int
    duration_s: int
    ramp_s: int
    randomize_s: int
    name: str
    source: str
    cancelled: bool
    created_ms: int
    created_by: str
    modified_ms: int


@dataclass(frozen=True, slots=True)
class CommandRow:
    """What one device was sent for an event, and its latest response."""

    event_id: str
    device_id: str
    site_id: str
    modification: int
    value: int
    expected_w: int
    baseline_w: int | None
    sent_ms: int
    status: int | None = None
    status_ms: int | None = None
    first_ack_ms: int | None = None
    measured_w: int | None = None
    detail: str = ""
    envelope: bytes = b""
    delivered_wh: int | None = None
    reward_minor: int | None = None


@dataclass(frozen=True, slots=True)
class ResponseRow:
    """A verified acknowledgement, as stored."""

    event_id: str
    device_id: str
    modification: int
    status: int
    at_ms: int
    received_ms: int
    measured_w: int | None
    detail: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm: raised, maybe cleared (the condition ended), maybe acknowledged."""

    alarm_id: int
    kind: str
    device_id: str
    site_id: str
    detail: str
    raised_ms: int
    cleared_ms: int | None
    acked_by: str | None
    acked_ms: int | None


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """What the fleet shows of a device beyond its live state."""

    device_id: str
    site_id: str
    zone: str
    capacity_w: int
    status: str
    latitude: float | None
    longitude: float | None
    feeder: str


_EVENT_COLS = (
    dispatch_events.c.event_id,
    dispatch_events.c.modification,
    dispatch_events.c.group_name,
    dispatch_events.c.control,
    dispatch_events.c.value,
    dispatch_events.c.start_s,
    dispatch_events.c.duration_s,
    dispatch_events.c.ramp_s,
    dispatch_events.c.randomize_s,
    dispatch_events.c.name,
    dispatch_events.c.source,
    dispatch_events.c.cancelled,
    dispatch_events.c.created_ms,
    dispatch_events.c.created_by,
    dispatch_events.c.modified_ms,
)
_COMMAND_COLS = (
    dispatch_commands.c.event_id,
    dispatch_commands.c.device_id,
    dispatch_commands.c.site_id,
    dispatch_commands.c.modification,
    dispatch_commands.c.value,
    dispatch_commands.c.expected_w,
    dispatch_commands.c.baseline_w,
    dispatch_commands.c.sent_ms,
    dispatch_commands.c.status,
    dispatch_commands.c.status_ms,
    dispatch_commands.c.first_ack_ms,
    dispatch_commands.c.measured_w,
    dispatch_commands.c.detail,
    dispatch_commands.c.envelope,
    dispatch_commands.c.delivered_wh,
    dispatch_commands.c.reward_minor,
)


def _event(r: Sequence[object]) -> EventRow:
    row = list(r)
    row[11] = bool(row[11])
    return EventRow(*row)  # type: ignore[arg-type]


def _command(r: Sequence[object]) -> CommandRow:
    row = list(r)
    row[13] = bytes(row[13])  # type: ignore[call-overload]
    return CommandRow(*row)  # type: ignore[arg-type]


def _event_values(e: EventRow) -> dict[str, object]:
    return {
        "event_id": e.event_id,
        "modification": e.modification,
        "group_name": e.group,
        "control": e.control,
        "value": e.value,
        "start_s": e.start,
        "duration_s": e.duration_s,
        "ramp_s": e.ramp_s,
        "randomize_s": e.randomize_s,
        "name": e.name,
        "source": e.source,
        "cancelled": int(e.cancelled),
        "created_ms": e.created_ms,
        "created_by": e.created_by,
        "modified_ms": e.modified_ms,
    }


def _command_values(c: CommandRow) -> dict[str, object]:
    return {
        "event_id": c.event_id,
        "device_id": c.device_id,
        "site_id": c.site_id,
        "modification": c.modification,
        "value": c.value,
        "expected_w": c.expected_w,
        "baseline_w": c.baseline_w,
        "sent_ms": c.sent_ms,
        "status": c.status,
        "status_ms": c.status_ms,
        "first_ack_ms": c.first_ack_ms,
        "measured_w": c.measured_w,
        "detail": c.detail,
        "envelope": c.envelope,
        "delivered_wh": c.delivered_wh,
        "reward_minor": c.reward_minor,
    }


class DispatchStore:
    """The dispatch and alarm tables on the aggregator's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # events and commands

    async def save_event(self, event: EventRow, commands: Sequence[CommandRow]) -> None:
        """Store a new event or a new modification of one, with the commands it sent (which
        replace those of the previous modification: a device's row is its latest command)."""
        async with self.engine.begin() as conn:
            exists = await conn.scalar(
                select(func.count())
                .select_from(dispatch_events)
                .where(dispatch_events.c.event_id == event.event_id)
            )
            if exists:
                values = _event_values(event)
                del values["event_id"]
                await conn.execute(
                    update(dispatch_events)
                    .where(dispatch_events.c.event_id == event.event_id)
                    .values(**values)
                )
                await conn.execute(
                    delete(dispatch_commands).where(dispatch_commands.c.event_id == event.event_id)
                )
            else:
                await conn.execute(insert(dispatch_events).values(**_event_values(event)))
            if commands:
                await conn.execute(
                    insert(dispatch_commands), [_command_values(c) for c in commands]
                )

    async def event(self, event_id: str) -> EventRow | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(*_EVENT_COLS).where(dispatch_events.c.event_id == event_id)
                )
            ).first()
        return _event(r) if r is not None else None

    async def events(self, limit: int = 100, since_ms: int | None = None) -> list[EventRow]:
        """Newest first."""
        q = select(*_EVENT_COLS).order_by(dispatch_events.c.created_ms.desc()).limit(limit)
        if since_ms is not None:
            q = q.where(dispatch_events.c.created_ms >= since_ms)
        async with self.engine.connect() as conn:
            return [_event(r) for r in (await conn.execute(q)).all()]

    async def live_events(self, now_s: int) -> list[EventRow]:
        """Events not cancelled whose end is still ahead (or just behind: the board's tail)."""
        q = select(*_EVENT_COLS).where(
            dispatch_events.c.cancelled == 0,
            dispatch_events.c.start_s + dispatch_events.c.duration_s >= now_s,
        )
        async with self.engine.connect() as conn:
            return [_event(r) for r in (await conn.execute(q)).all()]

    async def commands(self, event_id: str) -> list[CommandRow]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*_COMMAND_COLS)
                    .where(dispatch_commands.c.event_id == event_id)
                    .order_by(dispatch_commands.c.device_id)
                )
            ).all()
        return [_command(r) for r in rows]

    async def status_counts(self, event_id: str) -> dict[int | None, int]:
        """Devices per latest response status (None: no response yet)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(dispatch_commands.c.status, func.count())
                    .where(dispatch_commands.c.event_id == event_id)
                    .group_by(dispatch_commands.c.status)
                )
            ).all()
        return {status: int(n) for status, n in rows}

    async def mark_rewarded(
        self, conn: AsyncConnection, event_id: str, rows: Sequence[tuple[str, int, int]], ms: int
    ) -> None:
        """Inside the ledger's unit of work: each device's (device, delivered Wh, reward) and
        the event's rewarded time, so an event is rewarded once."""
        await conn.execute(
            update(dispatch_events)
            .where(dispatch_events.c.event_id == event_id)
            .values(rewarded_ms=ms)
        )
        if rows:
            await conn.execute(
                update(dispatch_commands)
                .where(
                    dispatch_commands.c.event_id == bindparam("e"),
                    dispatch_commands.c.device_id == bindparam("d"),
                )
                .values(delivered_wh=bindparam("wh"), reward_minor=bindparam("r")),
                [{"e": event_id, "d": d, "wh": wh, "r": r} for d, wh, r in rows],
            )

    async def set_rewards(self, event_id: str, rows: Sequence[tuple[str, int]]) -> None:
        """Each device's share of its site's reward credits (minor units)."""
        if not rows:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dispatch_commands)
                .where(
                    dispatch_commands.c.event_id == bindparam("e"),
                    dispatch_commands.c.device_id == bindparam("d"),
                )
                .values(reward_minor=bindparam("r")),
                [{"e": event_id, "d": d, "r": r} for d, r in rows],
            )

    async def rewarded(self, event_id: str) -> bool:
        async with self.engine.connect() as conn:
            ms = await conn.scalar(
                select(dispatch_events.c.rewarded_ms).where(dispatch_events.c.event_id == event_id)
            )
        return ms is not None

    async def site_commands(self, site_id: str, limit: int = 50) -> list[CommandRow]:
        """A site's part in events, newest event first (the homeowner's page)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*_COMMAND_COLS)
                    .join(
                        dispatch_events,
                        dispatch_events.c.event_id == dispatch_commands.c.event_id,
                    )
                    .where(dispatch_commands.c.site_id == site_id)
                    .order_by(dispatch_events.c.created_ms.desc())
                    .limit(limit)
                )
            ).all()
        return [_command(r) for r in rows]

    async def set_baselines(self, event_id: str, baselines: dict[str, int]) -> None:
        if not baselines:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dispatch_commands)
                .where(
                    dispatch_commands.c.event_id == bindparam("e"),
                    dispatch_commands.c.device_id == bindparam("d"),
                )
                .values(baseline_w=bindparam("b")),
                [{"e": event_id, "d": d, "b": b} for d, b in baselines.items()],
            )

    # responses

    async def record_responses(self, responses: Sequence[ResponseRow]) -> None:
        """Store acknowledgements and update each device's latest status, in one transaction.

        Only a response to the device's current modification updates its row; one to an older
        modification (a late "completed" of a superseded command) is kept in the log only.
        """
        if not responses:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(dispatch_responses),
                [
                    {
                        "event_id": r.event_id,
                        "device_id": r.device_id,
                        "modification": r.modification,
                        "status": r.status,
                        "at_ms": r.at_ms,
                        "received_ms": r.received_ms,
                        "measured_w": r.measured_w,
                        "detail": r.detail,
                        "envelope": r.envelope,
                    }
                    for r in responses
                ],
            )
            c = dispatch_commands.c
            await conn.execute(
                update(dispatch_commands)
                .where(
                    c.event_id == bindparam("e"),
                    c.device_id == bindparam("d"),
                    c.modification == bindparam("m"),
                )
                .values(
                    status=bindparam("s"),
                    status_ms=bindparam("r"),
                    first_ack_ms=func.coalesce(c.first_ack_ms, bindparam("r")),
                    measured_w=func.coalesce(bindparam("w"), c.measured_w),
                    detail=bindparam("detail"),
                ),
                [
                    {
                        "e": r.event_id,
                        "d": r.device_id,
                        "m": r.modification,
                        "s": r.status,
                        "r": r.received_ms,
                        "w": r.measured_w,
                        "detail": r.detail,
                    }
                    for r in responses
                ],
            )

    async def responses(self, event_id: str, limit: int = 1000) -> list[ResponseRow]:
        c = dispatch_responses.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        c.event_id,
                        c.device_id,
                        c.modification,
                        c.status,
                        c.at_ms,
                        c.received_ms,
                        c.measured_w,
                        c.detail,
                        c.envelope,
                    )
                    .where(c.event_id == event_id)
                    .order_by(c.id)
                    .limit(limit)
                )
            ).all()
        return [ResponseRow(*r[:8], bytes(r[8])) for r in rows]

    # board samples

    async def add_samples(self, rows: Sequence[tuple[str, int, int, int, int, int]]) -> None:
        """(event, at_s, requested, measured, baseline, reporting) rows; a repeated (event,
        at_s) is skipped (two samples in the same second)."""
        if not rows:
            return
        async with self.engine.begin() as conn:
            for event_id, at_s, req, meas, base, rep in rows:
                held = await conn.scalar(
                    select(func.count())
                    .select_from(dispatch_samples)
                    .where(
                        and_(
                            dispatch_samples.c.event_id == event_id,
                            dispatch_samples.c.at_s == at_s,
                        )
                    )
                )
                if not held:
                    await conn.execute(
                        insert(dispatch_samples).values(
                            event_id=event_id,
                            at_s=at_s,
                            requested_w=req,
                            measured_w=meas,
                            baseline_w=base,
                            reporting=rep,
                        )
                    )

    async def samples(self, event_id: str) -> list[tuple[int, int, int, int]]:
        """(at_s, requested, measured, baseline), oldest first."""
        c = dispatch_samples.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(c.at_s, c.requested_w, c.measured_w, c.baseline_w)
                    .where(c.event_id == event_id)
                    .order_by(c.at_s)
                )
            ).all()
        return [(int(a), int(b), int(m), int(bl)) for a, b, m, bl in rows]

    # alarms

    async def raise_alarm(
        self, kind: str, device_id: str, site_id: str, detail: str, now_ms: int
    ) -> bool:
        """Open an alarm unless one of this kind is already open for the device."""
        c = alarms.c
        async with self.engine.begin() as conn:
            held = await conn.scalar(
                select(func.count())
                .select_from(alarms)
                .where(c.kind == kind, c.device_id == device_id, c.cleared_ms.is_(None))
            )
            if held:
                return False
            await conn.execute(
                insert(alarms).values(
                    kind=kind,
                    device_id=device_id,
                    site_id=site_id,
                    detail=detail[:500],
                    raised_ms=now_ms,
                )
            )
        return True

    async def apply_alarms(
        self, transitions: Sequence[tuple[str, str, str, str, bool]], now_ms: int
    ) -> list[str]:
        """Raise and clear alarms in one transaction: (kind, device, site, detail, up) in order,
        each as `raise_alarm` (up) or `clear_alarm` would; returns the kinds of the alarms
        opened. The open alarms of those kinds are read once, so a clear with nothing open (a
        device coming online for the first time) writes nothing, and the writes go in bulk:
        a fleet of 10,000 coming online is one read, not 10,000 transactions."""
        if not transitions:
            return []
        c = alarms.c
        kinds = sorted({t[0] for t in transitions})
        raised: list[str] = []
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                select(c.kind, c.device_id).where(c.cleared_ms.is_(None), c.kind.in_(kinds))
            )
            open_now = {(str(k), str(d)) for k, d in rows.all()}
            # Segments in which each (kind, device) occurs once keep the order of a raise and
            # a clear of the same alarm (its inserts go before its updates within a segment).
            start = 0
            while start < len(transitions):
                seen: set[tuple[str, str]] = set()
                end = start
                while end < len(transitions) and transitions[end][:2] not in seen:
                    seen.add(transitions[end][:2])
                    end += 1
                inserts, clears = [], []
                for kind, device_id, site_id, detail, up in transitions[start:end]:
                    key = (kind, device_id)
                    if up and key not in open_now:
                        open_now.add(key)
                        raised.append(kind)
                        inserts.append(
                            {
                                "kind": kind,
                                "device_id": device_id,
                                "site_id": site_id,
                                "detail": detail[:500],
                                "raised_ms": now_ms,
                            }
                        )
                    elif not up and key in open_now:
                        open_now.discard(key)
                        clears.append({"k": kind, "d": device_id})
                if inserts:
                    await conn.execute(insert(alarms), inserts)
                if clears:
                    await conn.execute(
                        update(alarms)
                        .where(
                            c.kind == bindparam("k"),
                            c.device_id == bindparam("d"),
                            c.cleared_ms.is_(None),
                        )
                        .values(cleared_ms=now_ms),
                        clears,
                    )
                start = end
        return raised

    async def clear_alarm(self, kind: str, device_id: str, now_ms: int) -> bool:
        """Mark the open alarm of this kind for the device cleared (the condition ended)."""
        c = alarms.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(alarms)
                .where(c.kind == kind, c.device_id == device_id, c.cleared_ms.is_(None))
                .values(cleared_ms=now_ms)
            )
        return bool(result.rowcount)

    async def acknowledge_alarm(self, alarm_id: int, by: str, now_ms: int) -> AlarmRow | None:
        c = alarms.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(alarms)
                .where(c.id == alarm_id, c.acked_ms.is_(None))
                .values(acked_by=by, acked_ms=now_ms)
            )
        found = await self.alarms(alarm_id=alarm_id)
        return found[0] if found else None

    async def alarms(
        self, *, open_only: bool = False, alarm_id: int | None = None, limit: int = 500
    ) -> list[AlarmRow]:
        """Newest first. `open_only`: not cleared or not acknowledged."""
        c = alarms.c
        q = select(
            c.id,
            c.kind,
            c.device_id,
            c.site_id,
            c.detail,
            c.raised_ms,
            c.cleared_ms,
            c.acked_by,
            c.acked_ms,
        ).order_by(c.id.desc())
        if alarm_id is not None:
            q = q.where(c.id == alarm_id)
        if open_only:
            q = q.where((c.cleared_ms.is_(None)) | (c.acked_ms.is_(None)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.limit(limit))).all()
        return [AlarmRow(*r) for r in rows]

    # registry facts for the fleet

    async def fleet_facts(self) -> list[SiteFacts]:
        """Every registered device with its site's coordinates."""
        q = select(
            devices.c.device_id,
            devices.c.site_id,
            devices.c.zone,
            devices.c.capacity_w,
            devices.c.status,
            sites.c.latitude,
            sites.c.longitude,
            sites.c.feeder,
        ).select_from(devices.outerjoin(sites, sites.c.site_id == devices.c.site_id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [SiteFacts(*r[:7], r[7] or "") for r in rows]

    async def set_site_feeder(self, site_id: str, feeder: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sites).where(sites.c.site_id == site_id).values(feeder=feeder)
            )
        return bool(result.rowcount)

    async def set_site_location(self, site_id: str, latitude: float, longitude: float) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sites)
                .where(sites.c.site_id == site_id)
                .values(latitude=latitude, longitude=longitude)
            )
        return bool(result.rowcount)

    async def unanswered(self, event_id: str, modification: int) -> list[CommandRow]:
        """Commands of the current modification no device has answered yet (to send again)."""
        c = dispatch_commands.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*_COMMAND_COLS).where(
                        c.event_id == event_id,
                        c.modification == modification,
                        c.status.is_(None),
                    )
                )
            ).all()
        return [_command(r) for r in rows]

    async def rejections_after(
        self, after_id: int, limit: int = 1000
    ) -> list[tuple[int, str, str, str]]:
        """(id, device_id, reason, detail) of stored token rejections with an id above
        `after_id` and a known device, oldest first: the alarms' feed."""
        c = rejections.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(c.id, c.device_id, c.reason, c.detail)
                    .where(c.id > after_id, c.device_id.is_not(None))
                    .order_by(c.id)
                    .limit(limit)
                )
            ).all()
        return [(int(i), str(d), str(r), str(t)) for i, d, r, t in rows]

    async def last_rejection_id(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.coalesce(func.max(rejections.c.id), 0))) or 0)

    async def device_public_keys(self, device_id: str | None = None) -> dict[str, list[bytes]]:
        """Unrevoked public keys per device (of one device, or all): to verify acks."""
        c = device_keys.c
        q = select(c.device_id, c.public_key).where(c.revoked_ms.is_(None))
        if device_id is not None:
            q = q.where(c.device_id == device_id)
        out: dict[str, list[bytes]] = {}
        async with self.engine.connect() as conn:
            for dev, key in (await conn.execute(q)).all():
                out.setdefault(str(dev), []).append(bytes(key))
        return out
