"""Dispatch events for the grid operator: create, modify, cancel, follow; the dispatch key.

Owns: those routes. The service (cloud/services/dispatch.py) checks, allocates, signs and
sends; these translate JSON to its request and its views back.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.deps import FLEET, CtxDep, DispatchDep, require
from cloud.auth import Principal, Role
from cloud.domain.dispatch_events import (
    EventPerformance,
    EventRequest,
    EventRequestError,
    EventView,
)
from cloud.services.dispatch import DispatchService, status_name
from protocol.dispatch import ControlMode

router = APIRouter()
Operator = Annotated[Principal, Depends(require(Role.GRID_OPERATOR, action="dispatch events"))]
Watcher = Annotated[Principal, Depends(require(*FLEET, action="see dispatch events"))]
CONTROLS = {c.wire_name: c for c in ControlMode}


def _dispatch(dispatch: DispatchService | None) -> DispatchService:
    if dispatch is None:
        raise HTTPException(503, "dispatch is not running in this process")
    return dispatch


class DispatchKey(BaseModel):
    """The key that signs commands; a Pi pins it at enrollment."""

    public_key: str = Field(description="raw Ed25519 public key, 64 hex digits")


@router.get("/api/v1/dispatch/key", response_model=DispatchKey, tags=["dispatch"])
async def key(dispatch: DispatchDep) -> DispatchKey:
    """Public: what a device checks commands against."""
    return DispatchKey(public_key=_dispatch(dispatch).public_key.hex())


class EventBody(BaseModel):
    """An event for a group. `value` by control: opModFixedW / opModTargetW the group's total
    W (+ discharge, into the bus; - charge), opModMaxLimW hundredths of a percent of each
    inverter's rating (5000 = 50 %), opModExpLimW / opModImpLimW W per site, opModConnect 0/1.
    `start` is Unix seconds UTC (default: now)."""

    group: str = Field("all", max_length=80, examples=["zone:demo-zone-1", "where:soc>=60"])
    control: str = Field(examples=["opModFixedW"], description=", ".join(CONTROLS))
    value: int
    start: int | None = Field(None, ge=0)
    duration_s: int = Field(gt=0)
    ramp_s: int = Field(0, ge=0)
    randomize_start_s: int = Field(0, ge=0)
    name: str = Field("", max_length=200)


class EventOut(BaseModel):
    """An event as the board shows it."""

    event_id: str
    modification: int
    status: str
    group: str
    control: str
    value: int
    start: int
    duration_s: int
    ramp_s: int
    randomize_start_s: int
    name: str
    source: str
    devices: int
    responses: dict[str, int]
    created_ms: int
    created_by: str


def _out(v: EventView) -> EventOut:
    r = v.request
    return EventOut(
        event_id=v.event_id,
        modification=v.modification,
        status=v.status,
        group=r.group,
        control=r.control.wire_name,
        value=r.value,
        start=r.start,
        duration_s=r.duration_s,
        ramp_s=r.ramp_s,
        randomize_start_s=r.randomize_start_s,
        name=r.name,
        source=r.source,
        devices=v.devices,
        responses=v.responses,
        created_ms=v.created_ms,
        created_by=v.created_by,
    )


def _request(body: EventBody, now: float) -> EventRequest:
    control = CONTROLS.get(body.control)
    if control is None:
        raise HTTPException(
            422, f"unknown control {body.control!r}: use one of {', '.join(CONTROLS)}"
        )
    return EventRequest(
        group=body.group,
        control=control,
        value=body.value,
        start=int(now) if body.start is None else body.start,
        duration_s=body.duration_s,
        ramp_s=body.ramp_s,
        randomize_start_s=body.randomize_start_s,
        name=body.name,
    )


@router.post("/api/v1/dispatch/events", response_model=EventOut, status_code=201, tags=["dispatch"])
async def create(body: EventBody, ctx: CtxDep, dispatch: DispatchDep, p: Operator) -> EventOut:
    """Allocate the group's target across its devices and send each its signed command."""
    d = _dispatch(dispatch)
    try:
        return _out(await d.create_event(_request(body, ctx.now()), by=p.account_id))
    except EventRequestError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/api/v1/dispatch/events", response_model=list[EventOut], tags=["dispatch"])
async def list_events(
    dispatch: DispatchDep, _p: Watcher, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[EventOut]:
    """Newest first."""
    return [_out(v) for v in await _dispatch(dispatch).list_events(limit)]


@router.get("/api/v1/dispatch/events/{event_id}", response_model=EventOut, tags=["dispatch"])
async def get_event(event_id: str, dispatch: DispatchDep, _p: Watcher) -> EventOut:
    v = await _dispatch(dispatch).get_event(event_id)
    if v is None:
        raise HTTPException(404, f"no event {event_id}")
    return _out(v)


@router.put("/api/v1/dispatch/events/{event_id}", response_model=EventOut, tags=["dispatch"])
async def modify(
    event_id: str, body: EventBody, ctx: CtxDep, dispatch: DispatchDep, p: Operator
) -> EventOut:
    """A new modification, re-allocated and sent (the devices answer it as a supersession)."""
    d = _dispatch(dispatch)
    try:
        return _out(await d.modify_event(event_id, _request(body, ctx.now()), by=p.account_id))
    except KeyError:
        raise HTTPException(404, f"no event {event_id}") from None
    except EventRequestError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post(
    "/api/v1/dispatch/events/{event_id}/cancel", response_model=EventOut, tags=["dispatch"]
)
async def cancel(event_id: str, dispatch: DispatchDep, p: Operator) -> EventOut:
    """Tell every device of the event to stop (a new modification with status cancelled)."""
    try:
        return _out(await _dispatch(dispatch).cancel_event(event_id, by=p.account_id))
    except KeyError:
        raise HTTPException(404, f"no event {event_id}") from None


class DeviceResponse(BaseModel):
    """One device's command and its latest answer."""

    device_id: str
    site_id: str
    modification: int
    value: int
    expected_w: int
    baseline_w: int | None
    status: str
    latency_ms: int | None = Field(description="first answer after the command was sent")
    measured_w: int | None
    detail: str
    delivered_wh: int | None = Field(description="flexibility delivered, once the event ended")
    reward_minor: int | None = Field(description="reward credits it earned (minor units)")


@router.get(
    "/api/v1/dispatch/events/{event_id}/devices",
    response_model=list[DeviceResponse],
    tags=["dispatch"],
)
async def devices(event_id: str, dispatch: DispatchDep, _p: Watcher) -> list[DeviceResponse]:
    """Every targeted device with its latest response and latency."""
    rows = await _dispatch(dispatch).device_responses(event_id)
    return [
        DeviceResponse(
            device_id=c.device_id,
            site_id=c.site_id,
            modification=c.modification,
            value=c.value,
            expected_w=c.expected_w,
            baseline_w=c.baseline_w,
            status=status_name(c.status),
            latency_ms=None if c.first_ack_ms is None else c.first_ack_ms - c.sent_ms,
            measured_w=c.measured_w,
            detail=c.detail,
            delivered_wh=c.delivered_wh,
            reward_minor=c.reward_minor,
        )
        for c in rows
    ]


class SiteOut(BaseModel):
    site_id: str
    requested_w: int
    delivered_w: int
    baseline_w: int
    soc_permille: int | None


class PerformanceOut(BaseModel):
    """Requested versus delivered (measured) power of the controlled flow, with baseline."""

    event_id: str
    requested_w: int
    delivered_w: int
    baseline_w: int
    baseline_method: str
    sites: list[SiteOut]
    series: list[tuple[int, int, int]] = Field(description="(unix s, requested W, delivered W)")


def _performance(p: EventPerformance) -> PerformanceOut:
    return PerformanceOut(
        event_id=p.event_id,
        requested_w=p.requested_w,
        delivered_w=p.delivered_w,
        baseline_w=p.baseline_w,
        baseline_method=p.baseline_method,
        sites=[
            SiteOut(
                site_id=s.site_id,
                requested_w=s.requested_w,
                delivered_w=s.delivered_w,
                baseline_w=s.baseline_w,
                soc_permille=s.soc_permille,
            )
            for s in p.sites
        ],
        series=p.series,
    )


@router.get(
    "/api/v1/dispatch/events/{event_id}/performance",
    response_model=PerformanceOut,
    tags=["dispatch"],
)
async def performance(event_id: str, dispatch: DispatchDep, _p: Watcher) -> PerformanceOut:
    """The event board's numbers: per site now, and the group over time."""
    perf = await _dispatch(dispatch).performance(event_id)
    if perf is None:
        raise HTTPException(404, f"no event {event_id}")
    return _performance(perf)
