"""The grid operator's DERMS pages: the live fleet, the dispatch event board and one event.

Owns: GET /fleet, GET /events and GET /events/{event_id} (fleet roles: installer, approver,
grid operator, admin). Server-rendered skeletons; the scripts fill them from the DERMS API with
the session cookie: fleet.js from /api/v1/fleet/live, /groups and /alarms, then follows the
/api/v1/fleet/stream server-sent events and applies each event's changed devices and totals in
place; events.js lists /api/v1/dispatch/events and posts the create form as JSON; event.js
polls the event, its devices and its /performance series and draws requested versus delivered
as an SVG line chart. Only grid operators and admins get the acknowledge, create, modify and
cancel controls (the API checks the same roles). Without credentials a page sends the browser to
/login; another role gets a 403 page.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud.api.deps import CtxDep
from cloud.api.dispatch_routes import _out
from cloud.api.pages_routes import FLEET_ROLES, _gate, _message
from cloud.auth import Principal, Role
from protocol.dispatch import ControlMode

OPERATOR_ROLES = frozenset({Role.GRID_OPERATOR, Role.ADMIN})
EVENTS_POLL_MS = 5_000
EVENT_POLL_MS = 2_000
ALARMS_POLL_MS = 5_000

# control wire name -> (label for people, what its value means)
CONTROL_LABELS: dict[str, tuple[str, str]] = {
    ControlMode.OP_MOD_FIXED_W.wire_name: (
        "Battery power",
        "W for the whole group: + discharge, − charge",
    ),
    ControlMode.OP_MOD_TARGET_W.wire_name: (
        "Inverter power target",
        "W for the whole group: + into the home, − out of it",
    ),
    ControlMode.OP_MOD_MAX_LIM_W.wire_name: (
        "Generation limit",
        "hundredths of a percent of each inverter's rating (5000 = 50 %)",
    ),
    ControlMode.OP_MOD_EXP_LIM_W.wire_name: ("Export limit", "W per site"),
    ControlMode.OP_MOD_IMP_LIM_W.wire_name: ("Import limit", "W per site"),
    ControlMode.OP_MOD_CONNECT.wire_name: ("Connect / disconnect", "1 connect, 0 disconnect"),
}

router = APIRouter()


def _nav(p: Principal) -> dict[str, bool]:
    return {
        "approvals": p.role in (Role.APPROVER, Role.ADMIN),
        "market": p.role in (Role.GRID_OPERATOR, Role.ADMIN),
        "operator": p.role in OPERATOR_ROLES,
    }


def _groups(ctx: CtxDep) -> list[str]:
    if ctx.fleet is None:
        return ["all"]
    return sorted(ctx.fleet.state.totals, key=lambda g: (g != "all", g))


@router.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
async def fleet_page(request: Request, ctx: CtxDep) -> Response:
    """The live fleet: group totals, map, device table, alarms."""
    p = await _gate(ctx, request, FLEET_ROLES, "watch the fleet")
    if isinstance(p, Response):
        return p
    return ctx.templates.TemplateResponse(
        request,
        "fleet.html",
        {
            "who": p,
            "nav": _nav(p),
            "page": "fleet",
            "running": ctx.fleet is not None,
            "groups": _groups(ctx),
            "alarms_poll_ms": ALARMS_POLL_MS,
        },
        status_code=200 if ctx.fleet is not None else 503,
    )


@router.get("/events", response_class=HTMLResponse, include_in_schema=False)
async def events_page(request: Request, ctx: CtxDep) -> Response:
    """The event board: every dispatch event, and the form to create one."""
    p = await _gate(ctx, request, FLEET_ROLES, "see dispatch events")
    if isinstance(p, Response):
        return p
    return ctx.templates.TemplateResponse(
        request,
        "events.html",
        {
            "who": p,
            "nav": _nav(p),
            "page": "events",
            "running": ctx.dispatch is not None,
            "groups": _groups(ctx),
            "controls": CONTROL_LABELS,
            "labels": {k: v[0] for k, v in CONTROL_LABELS.items()},
            "poll_ms": EVENTS_POLL_MS,
        },
        status_code=200 if ctx.dispatch is not None else 503,
    )


@router.get("/events/{event_id}", response_class=HTMLResponse, include_in_schema=False)
async def event_page(request: Request, event_id: str, ctx: CtxDep) -> Response:
    """One event: requested versus delivered, per-site performance, device responses."""
    p = await _gate(ctx, request, FLEET_ROLES, "see dispatch events")
    if isinstance(p, Response):
        return p
    if ctx.dispatch is None:
        return _message(ctx, request, 503, "Not running", "dispatch is not running here")
    view = await ctx.dispatch.get_event(event_id)
    if view is None:
        return _message(ctx, request, 404, "Not found", f"no dispatch event {event_id!r}")
    event = _out(view)
    return ctx.templates.TemplateResponse(
        request,
        "event.html",
        {
            "who": p,
            "nav": _nav(p),
            "page": "events",
            "e": event,
            "event_json": event.model_dump(),
            "controls": CONTROL_LABELS,
            "labels": {k: v[0] for k, v in CONTROL_LABELS.items()},
            "poll_ms": EVENT_POLL_MS,
        },
    )
