"""The operator's live fleet: device states and power, group totals, a change stream, alarms.

Owns: those routes. They read the in-memory fleet state (cloud/services/fleet.py): a list or a
total costs no query. The stream sends only the devices that changed since the last event, and
the totals, at most once per `stream_interval_s`.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cloud.api.deps import FLEET, CtxDep, FleetDep, require
from cloud.auth import Principal, Role
from cloud.domain.fleet_groups import Group, GroupError, parse_group
from cloud.domain.fleet_state import DeviceLive
from cloud.services.fleet import FleetService
from cloud.storage.dispatch_store import AlarmRow, DispatchStore

router = APIRouter()
Watcher = Annotated[Principal, Depends(require(*FLEET, action="watch the fleet"))]
Operator = Annotated[Principal, Depends(require(Role.GRID_OPERATOR, action="handle alarms"))]
State = Literal["online", "offline", "buffering", "fault", "clock_unsynchronised"]


def _fleet(fleet: FleetService | None) -> FleetService:
    if fleet is None:
        raise HTTPException(503, "the fleet view is not running in this process")
    return fleet


class LiveDevice(BaseModel):
    """One device now (W: + into the home's bus; grid + import)."""

    device_id: str
    site_id: str
    zone: str
    feeder: str
    state: State | Literal["unknown"]
    since_ms: int
    last_ms: int
    rating_w: int
    pv_w: int | None
    battery_w: int | None
    soc_permille: int | None
    grid_w: int | None
    backlog: int
    latitude: float | None
    longitude: float | None


class GroupTotals(BaseModel):
    """A group's running sums."""

    group: str
    devices: int
    online: int
    pv_w: int
    battery_w: int
    grid_w: int
    import_w: int
    export_w: int
    load_w: int
    stored_wh: int
    soc_permille: int | None
    up_flex_w: int
    down_flex_w: int


class FleetPage(BaseModel):
    """A page of the fleet, filtered, with the version to stream changes from."""

    version: int
    total: int
    devices: list[LiveDevice]


def _live(d: DeviceLive) -> LiveDevice:
    return LiveDevice.model_validate(d.as_dict())


def _group(name: str) -> Group:
    """The parsed group, or a 400 naming the forms that exist."""
    try:
        return parse_group(name)
    except GroupError as exc:
        raise HTTPException(400, str(exc)) from None


def _totals(fleet: FleetService, group: str) -> GroupTotals:
    _group(group)
    return GroupTotals.model_validate({"group": group, **fleet.state.group_totals(group).as_dict()})


GROUP_HELP = (
    "all, zone:<zone>, feeder:<feeder>, site:<site>, device:<device>, or criteria such as "
    '"where:soc>=60,battery=yes,state=online" (cloud/domain/fleet_groups.py)'
)


@router.get("/api/v1/fleet/live", response_model=FleetPage, tags=["fleet"])
async def live(
    fleet: FleetDep,
    _p: Watcher,
    q: Annotated[str, Query(max_length=64, description="device or site id contains")] = "",
    state: State | None = None,
    group: Annotated[str, Query(max_length=80, description=GROUP_HELP)] = "all",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FleetPage:
    """Devices of a group (a tag, a site, a device or criteria), searched and filtered by
    state."""
    f = _fleet(fleet)
    found = [
        d
        for d in f.state.members(_group(group))
        if (not q or q in d.device_id or q in d.site_id) and (state is None or d.state == state)
    ]
    found.sort(key=lambda d: d.device_id)
    return FleetPage(
        version=f.state.version,
        total=len(found),
        devices=[_live(d) for d in found[offset : offset + limit]],
    )


@router.get("/api/v1/fleet/groups", response_model=list[GroupTotals], tags=["fleet"])
async def groups(fleet: FleetDep, _p: Watcher) -> list[GroupTotals]:
    """Every running group ("all", each zone and each feeder) with its totals."""
    f = _fleet(fleet)
    return [_totals(f, g) for g in sorted(f.state.totals, key=lambda g: (g != "all", g))]


@router.get("/api/v1/fleet/totals", response_model=GroupTotals, tags=["fleet"])
async def totals(
    fleet: FleetDep,
    _p: Watcher,
    group: Annotated[str, Query(max_length=80, description=GROUP_HELP)] = "all",
) -> GroupTotals:
    """One group's totals (any group: running ones are read, others summed)."""
    return _totals(_fleet(fleet), group)


@router.get("/api/v1/fleet/stream", tags=["fleet"])
async def stream(
    request: Request,
    ctx: CtxDep,
    fleet: FleetDep,
    _p: Watcher,
    since: Annotated[int, Query(ge=0, description="version already held (0: send all)")] = 0,
    events: Annotated[int | None, Query(ge=1, description="stop after this many")] = None,
) -> StreamingResponse:
    """Server-sent events: `fleet` with {version, devices: [changed since the last event],
    totals: {group: totals}} whenever something changed, at most every stream interval."""
    f = _fleet(fleet)

    async def sse() -> AsyncIterator[str]:
        seen = since
        sent = 0
        yield f"event: hello\ndata: {json.dumps({'version': f.state.version})}\n\n"
        quiet = 0.0
        while (events is None or sent < events) and not await request.is_disconnected():
            if f.state.version == seen:
                await asyncio.sleep(ctx.stream_interval_s)
                quiet += ctx.stream_interval_s
                if quiet >= 15.0:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                continue
            quiet = 0.0
            changed = [d.as_dict() for d in f.state.changed_since(seen)]
            seen = f.state.version
            data = {
                "version": seen,
                "devices": changed,
                "totals": {g: t.as_dict() for g, t in f.state.totals.items()},
            }
            yield f"event: fleet\ndata: {json.dumps(data)}\n\n"
            sent += 1
            await asyncio.sleep(ctx.stream_interval_s)

    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


class Alarm(BaseModel):
    """An alarm: open until cleared and acknowledged."""

    alarm_id: int
    kind: str
    device_id: str
    site_id: str
    detail: str
    raised_ms: int
    cleared_ms: int | None
    acked_by: str | None
    acked_ms: int | None


def _alarm(a: AlarmRow) -> Alarm:
    return Alarm(
        alarm_id=a.alarm_id,
        kind=a.kind,
        device_id=a.device_id,
        site_id=a.site_id,
        detail=a.detail,
        raised_ms=a.raised_ms,
        cleared_ms=a.cleared_ms,
        acked_by=a.acked_by,
        acked_ms=a.acked_ms,
    )


def _alarm_store(fleet: FleetService | None) -> DispatchStore:
    return _fleet(fleet).store


@router.get("/api/v1/alarms", response_model=list[Alarm], tags=["fleet"])
async def alarms(
    fleet: FleetDep,
    _p: Watcher,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[Alarm]:
    """Alarms, newest first (`open=true`: not yet both cleared and acknowledged)."""
    return [_alarm(a) for a in await _alarm_store(fleet).alarms(open_only=open_only, limit=limit)]


@router.post("/api/v1/alarms/{alarm_id}/ack", response_model=Alarm, tags=["fleet"])
async def acknowledge(alarm_id: int, ctx: CtxDep, fleet: FleetDep, p: Operator) -> Alarm:
    """The operator has seen the alarm (acknowledging twice keeps the first)."""
    found = await _alarm_store(fleet).acknowledge_alarm(
        alarm_id, p.account_id, int(ctx.now() * 1000)
    )
    if found is None:
        raise HTTPException(404, f"no alarm {alarm_id}")
    return _alarm(found)


class Location(BaseModel):
    """Where a site is, for the operator's map (WGS 84 degrees)."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


@router.put("/api/v1/sites/{site_id}/location", response_model=Location, tags=["fleet"])
async def set_location(
    site_id: str,
    body: Location,
    fleet: FleetDep,
    _p: Annotated[
        Principal,
        Depends(require(Role.INSTALLER, Role.GRID_OPERATOR, action="place sites on the map")),
    ],
) -> Location:
    """Place a site on the map."""
    f = _fleet(fleet)
    if not await f.store.set_site_location(site_id, body.latitude, body.longitude):
        raise HTTPException(404, f"no site {site_id}")
    await f.load()
    return body


class Feeder(BaseModel):
    """The distribution feeder a site hangs off: a fleet group (feeder:<name>) like the zone."""

    feeder: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


@router.put("/api/v1/sites/{site_id}/feeder", response_model=Feeder, tags=["fleet"])
async def set_feeder(
    site_id: str,
    body: Feeder,
    fleet: FleetDep,
    _p: Annotated[
        Principal,
        Depends(require(Role.INSTALLER, Role.GRID_OPERATOR, action="tag sites with feeders")),
    ],
) -> Feeder:
    """Tag a site with its feeder ("" takes the tag off)."""
    f = _fleet(fleet)
    if not await f.store.set_site_feeder(site_id, body.feeder):
        raise HTTPException(404, f"no site {site_id}")
    await f.load()
    return body
