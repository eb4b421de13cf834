"""One site as its homeowner sees it: power now, energy today and this month, the dispatch
events it took part in.

Owns: GET /api/v1/sites/{site_id}/live (the in-memory fleet state of the site's devices: a
read costs no query), GET /api/v1/sites/{site_id}/energy (sums of the site's tokens whose
interval starts today / this month, UTC) and GET /api/v1/sites/{site_id}/events (the site's
devices' commands and answers in recent dispatch events). A homeowner reads their own sites
only (cloud.auth.visible_site_ids); someone else's site and an unknown one are the same 404, so
ids cannot be probed. Fleet roles read any site. The home page's script (home.js) polls these.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, AccountsDep, CtxDep, StoreDep, require
from cloud.api.fleet_live_routes import LiveDevice, _live
from cloud.auth import Principal, visible_site_ids
from cloud.services.dispatch import status_name
from cloud.storage.accounts import AccountStore
from cloud.storage.store import EnergySums

router = APIRouter()
Reader = Annotated[Principal, Depends(require(*ANYONE, action="read a site"))]
EVENTS_SCANNED = 50  # at most this many of the newest events a site took part in


async def _visible(accounts: AccountStore, p: Principal, site_id: str) -> None:
    """404 unless the caller may see the site (and it exists)."""
    visible = await visible_site_ids(accounts, p)
    if visible is not None and site_id not in visible:
        raise HTTPException(404, f"no site {site_id}")
    if visible is None and await accounts.get_site(site_id) is None:
        raise HTTPException(404, f"no site {site_id}")


class SiteLive(BaseModel):
    """The site's power now (W: + into the home's bus; grid + import, battery + discharge)."""

    site_id: str
    devices: int
    online: int
    pv_w: int
    battery_w: int
    grid_w: int
    load_w: int
    stored_wh: int
    soc_permille: int | None
    last_ms: int = Field(description="newest telemetry of the site's devices (0: none yet)")
    device_states: list[LiveDevice]


@router.get("/api/v1/sites/{site_id}/live", response_model=SiteLive, tags=["sites"])
async def site_live(site_id: str, ctx: CtxDep, accounts: AccountsDep, p: Reader) -> SiteLive:
    """The site's live power flow and battery, from the fleet's latest telemetry."""
    await _visible(accounts, p, site_id)
    if ctx.fleet is None:
        raise HTTPException(503, "the fleet view is not running in this process")
    state = ctx.fleet.state
    group = f"site:{site_id}"
    members = sorted(state.members(group), key=lambda d: d.device_id)
    t = state.group_totals(group)
    return SiteLive(
        site_id=site_id,
        devices=len(members),
        online=t.online,
        pv_w=t.pv_w,
        battery_w=t.battery_w,
        grid_w=t.grid_w,
        load_w=t.load_w,
        stored_wh=t.stored_wh,
        soc_permille=t.soc_permille,
        last_ms=max((d.last_ms for d in members), default=0),
        device_states=[_live(d) for d in members],
    )


class Energy(BaseModel):
    """Wh in a period, from the site's accepted tokens."""

    since: int = Field(description="Unix s UTC, inclusive")
    until: int = Field(description="Unix s UTC, exclusive")
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    tokens: int


class SiteEnergy(BaseModel):
    site_id: str
    today: Energy
    month: Energy


def _energy(since: int, until: int, e: EnergySums) -> Energy:
    return Energy(
        since=since,
        until=until,
        generated_wh=e.generated_wh,
        imported_wh=e.imported_wh,
        exported_wh=e.exported_wh,
        charged_wh=e.charged_wh,
        discharged_wh=e.discharged_wh,
        tokens=e.tokens,
    )


@router.get("/api/v1/sites/{site_id}/energy", response_model=SiteEnergy, tags=["sites"])
async def site_energy(
    site_id: str, ctx: CtxDep, store: StoreDep, accounts: AccountsDep, p: Reader
) -> SiteEnergy:
    """Energy today and this month (UTC days), summed from the site's tokens."""
    await _visible(accounts, p, site_id)
    now = datetime.fromtimestamp(ctx.now(), UTC)
    day = int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    month = int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())
    end = day + 86_400
    return SiteEnergy(
        site_id=site_id,
        today=_energy(day, end, await store.energy_sums([site_id], day, end)),
        month=_energy(month, end, await store.energy_sums([site_id], month, end)),
    )


class SiteDeviceResponse(BaseModel):
    device_id: str
    modification: int
    value: int
    expected_w: int
    measured_w: int | None
    status: str


class SiteEvent(BaseModel):
    """A dispatch event one of the site's devices was sent: what it was asked and answered."""

    event_id: str
    name: str
    status: str
    control: str
    start: int
    duration_s: int
    requested_w: int = Field(description="the W the site's share stood for (expected)")
    delivered_w: int | None = Field(
        description="measured now while the event runs, else the devices' last answers"
    )
    delivered_wh: int | None = Field(
        None, description="flexibility delivered over the event (Wh), once it has ended"
    )
    reward_minor: int | None = Field(
        None, description="reward credits the site earned for it (minor currency units)"
    )
    devices: list[SiteDeviceResponse]


@router.get("/api/v1/sites/{site_id}/events", response_model=list[SiteEvent], tags=["sites"])
async def site_events(
    site_id: str,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    limit: Annotated[int, Query(ge=1, le=EVENTS_SCANNED)] = 20,
) -> list[SiteEvent]:
    """The newest dispatch events that reached this site's devices (newest first)."""
    await _visible(accounts, p, site_id)
    dispatch = ctx.dispatch
    if dispatch is None:
        return []
    out: list[SiteEvent] = []
    for view, mine in await dispatch.site_events(site_id, limit):
        answered = [c.measured_w for c in mine if c.measured_w is not None]
        delivered = sum(answered) if answered else None
        if view.status == "active":
            perf = await dispatch.performance(view.event_id)
            here = [s for s in perf.sites if s.site_id == site_id] if perf else []
            if here:
                delivered = here[0].delivered_w
        out.append(
            SiteEvent(
                event_id=view.event_id,
                name=view.request.name,
                status=view.status,
                control=view.request.control.wire_name,
                start=view.request.start,
                duration_s=view.request.duration_s,
                requested_w=sum(c.expected_w for c in mine),
                delivered_w=delivered,
                delivered_wh=_sum_known([c.delivered_wh for c in mine]),
                reward_minor=_sum_known([c.reward_minor for c in mine]),
                devices=[
                    SiteDeviceResponse(
                        device_id=c.device_id,
                        modification=c.modification,
                        value=c.value,
                        expected_w=c.expected_w,
                        measured_w=c.measured_w,
                        status=status_name(c.status),
                    )
                    for c in mine
                ],
            )
        )
    return out


def _sum_known(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
