"""The Connect API's meter data: what a utility's systems read of the sites granted to them.

Owns: /api/v1/connect/sites/{site_id}/usage-point, /intervals, /registers and /greenbutton for
machine clients (OAuth2 client credentials, scope `meter:read`; cloud/api/connect_auth.py).
Every request checks the homeowner's grant again, so a revocation holds from the next request;
a site not granted to the client is a 404 like one that does not exist. The data and its
rules are the virtual meter's (cloud/services/virtual_meter.py): ESPI XML (Green Button) and a
JSON form of the same readings. Interval JSON is paged by time: a page covers at most 31 days
and says where the next one starts.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from cloud.api.connect_auth import check_site, require_client
from cloud.api.deps import CtxDep
from cloud.api.meter_routes import (
    LENGTHS,
    Interval,
    RegistersOut,
    _first,
    _iso,
    _json,
    _meter,
    _s,
)
from cloud.domain.utility_access import METER_READ, UtilityClient
from cloud.domain.virtual_meter import DAY, MeterError
from cloud.services.virtual_meter import GREEN_BUTTON_READINGS, NoSuchSite

router = APIRouter()
Client = Annotated[UtilityClient, Depends(require_client(METER_READ))]
PAGE_S = 31 * DAY


class ReadingOut(BaseModel):
    key: str
    title: str
    flow_direction: int
    uom: int = 72
    interval_s: int | None


class UsagePointOut(BaseModel):
    """The site as a Green Button UsagePoint: a virtual meter of a DER site."""

    site_id: str
    name: str
    time_zone: str
    is_virtual: bool = True
    is_der: bool = True
    native_interval_s: int | None
    first_start: int | None
    last_end: int | None
    readings: list[ReadingOut]


@router.get(
    "/api/v1/connect/sites/{site_id}/usage-point", response_model=UsagePointOut, tags=["connect"]
)
async def usage_point(site_id: str, ctx: CtxDep, client: Client) -> UsagePointOut:
    """The granted site's usage point: its readings, native interval and data span."""
    await check_site(ctx, client, site_id)
    meter = _meter(ctx)
    try:
        site = await meter.site(site_id)
    except NoSuchSite:
        raise HTTPException(404, f"no site {site_id}") from None
    span = await meter.span(site_id)
    native = span[2] if span else None
    return UsagePointOut(
        site_id=site.site_id,
        name=site.name,
        time_zone=site.time_zone,
        native_interval_s=native,
        first_start=span[0] if span else None,
        last_end=span[1] if span else None,
        readings=[
            ReadingOut(key=k, title=t, flow_direction=int(f), interval_s=native)
            for k, t, f, _q in GREEN_BUTTON_READINGS
        ],
    )


@router.get("/api/v1/connect/sites/{site_id}/intervals", tags=["connect"])
async def intervals(
    site_id: str,
    request: Request,
    ctx: CtxDep,
    client: Client,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    interval: Interval = "native",
    fill: Literal["none", "estimate"] = "none",
) -> StreamingResponse:
    """The granted site's interval data as JSON (the same readings as the Green Button
    feed). A page covers at most 31 days: `next` is the URL of the following page, null on
    the last."""
    await check_site(ctx, client, site_id)
    lo, hi = _s(start), _s(end)
    page_end = min(hi, lo + PAGE_S)
    nxt = None
    if page_end < hi:
        q = dict(request.query_params) | {"start": _iso(page_end), "end": _iso(hi)}
        nxt = f"{request.url.path}?{urlencode(q)}"
    rows = _meter(ctx).readings(
        site_id, lo, page_end, interval_s=LENGTHS[interval], estimate=fill == "estimate"
    )
    first = await _first(rows)
    return StreamingResponse(
        _json(site_id, lo, page_end, interval, fill, first, rows, {"next": nxt}),
        media_type="application/json",
    )


@router.get(
    "/api/v1/connect/sites/{site_id}/registers", response_model=RegistersOut, tags=["connect"]
)
async def registers(
    site_id: str,
    ctx: CtxDep,
    client: Client,
    at: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
) -> RegistersOut:
    """The granted site's cumulative registers at `at`."""
    await check_site(ctx, client, site_id)
    when = _s(at) if at is not None else int(ctx.now())
    r = await _meter(ctx).registers(site_id, when)
    return RegistersOut(
        site_id=site_id, **{k: getattr(r, k) for k in RegistersOut.model_fields if k != "site_id"}
    )


@router.get("/api/v1/connect/sites/{site_id}/greenbutton", tags=["connect"])
async def green_button(
    site_id: str,
    request: Request,
    ctx: CtxDep,
    client: Client,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    fill: Literal["none", "estimate"] = "none",
) -> StreamingResponse:
    """The granted site's Green Button (ESPI v3.3) feed for the period (at most 400 days)."""
    await check_site(ctx, client, site_id)
    lo, hi = _s(start), _s(end)
    if hi <= lo or hi - lo > 400 * DAY:
        raise HTTPException(400, "the period must be non-empty and at most 400 days")
    feed = _meter(ctx).green_button(
        site_id, lo, hi, estimate=fill == "estimate", base_url=str(request.base_url).rstrip("/")
    )
    try:
        head = await anext(feed)
    except NoSuchSite:
        raise HTTPException(404, f"no site {site_id}") from None
    except (MeterError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from None

    async def body() -> AsyncIterator[bytes]:
        yield head
        async for piece in feed:
            yield piece

    return StreamingResponse(body(), media_type="application/atom+xml")


__all__ = ["router"]
