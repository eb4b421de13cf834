"""The virtual smart meter over HTTP: readings, registers, history, tracing, Green Button.

Owns: /api/v1/sites/{site_id}/meter... (cloud/services/virtual_meter.py answers). A homeowner
reads their own sites; fleet roles any site; someone else's site and an unknown one are the same
404. Long answers stream: interval JSON and CSV row by row, Green Button day by day.

Times in queries are ISO 8601 (a time without an offset is UTC); answers carry Unix seconds
and ISO UTC. Energy is integer Wh. A missing interval has null values and state "missing";
estimates are marked "estimated" and the method is stated in the answer.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, FLEET, AccountsDep, CtxDep, require
from cloud.api.ledger_routes import InclusionProof, proof_public
from cloud.api.site_live_routes import _visible
from cloud.auth import Principal, Role
from cloud.domain.fleet_groups import GroupError, parse_group
from cloud.domain.reconciliation import Totals
from cloud.domain.virtual_meter import (
    DAY,
    ESTIMATE_METHOD,
    QUANTITIES,
    MeterError,
    MeterInterval,
)
from cloud.services.reconciliation import ImportRefused, ReconciliationService
from cloud.services.virtual_meter import MeterService, NoSuchSite
from cloud.storage.revenue_store import RevenueImport

router = APIRouter()
Reader = Annotated[Principal, Depends(require(*ANYONE, action="read a site's meter"))]
Placer = Annotated[
    Principal,
    Depends(require(Role.HOMEOWNER, Role.INSTALLER, action="set a site's time zone")),
]
Interval = Literal["native", "15min", "30min", "60min", "day"]
LENGTHS = {"native": None, "15min": 900, "30min": 1800, "60min": 3600, "day": DAY}


def _meter(ctx: CtxDep) -> MeterService:
    if ctx.meter is None:
        raise HTTPException(503, "the virtual meter is not running in this process")
    return ctx.meter


def _s(t: datetime) -> int:
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())


def _iso(s: int) -> str:
    return datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z")


def interval_json(iv: MeterInterval) -> dict[str, object]:
    row: dict[str, object] = {
        "start": iv.start,
        "start_iso": _iso(iv.start),
        "interval_s": iv.interval_s,
        "state": iv.state.value,
    }
    row.update({q: iv.value(q) for q in QUANTITIES})
    row["records"] = iv.records
    if iv.missing:
        row["missing_intervals"] = iv.missing
    if iv.estimated:
        row["estimated_intervals"] = iv.estimated
    if iv.flags:
        row["flags"] = sorted(iv.flags)
    return row


class Period(BaseModel):
    start: int
    end: int


@router.get("/api/v1/sites/{site_id}/meter/intervals", tags=["meter"])
async def intervals(
    site_id: str,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    interval: Interval = "native",
    fill: Annotated[
        Literal["none", "estimate"],
        Query(description="none: gaps are missing (null); estimate: " + ESTIMATE_METHOD),
    ] = "none",
    format: Literal["json", "csv"] = "json",
) -> StreamingResponse:
    """The site's interval data from the ledger's accepted records: native length (5 or 15
    minutes) or rolled up to 15/30/60 minutes or the site's local days; every quantity in Wh
    (generated, imported, exported, charged, discharged, load, self-consumed, net)."""
    await _visible(accounts, p, site_id)
    meter = _meter(ctx)
    lo, hi = _s(start), _s(end)
    rows = meter.readings(
        site_id, lo, hi, interval_s=LENGTHS[interval], estimate=fill == "estimate"
    )
    first = await _first(rows)  # a bad request fails here, as a 400, before streaming
    if format == "csv":
        return StreamingResponse(
            _csv(first, rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{site_id}-{interval}.csv"'},
        )
    return StreamingResponse(
        _json(site_id, lo, hi, interval, fill, first, rows), media_type="application/json"
    )


async def _first(rows: AsyncIterator[MeterInterval]) -> MeterInterval | None:
    try:
        return await anext(rows)
    except StopAsyncIteration:
        return None
    except MeterError as exc:
        raise HTTPException(400, str(exc)) from None
    except NoSuchSite as exc:
        raise HTTPException(404, f"no site {exc.args[0]}") from None


async def _json(
    site_id: str,
    lo: int,
    hi: int,
    interval: str,
    fill: str,
    first: MeterInterval | None,
    rows: AsyncIterator[MeterInterval],
    extra: dict[str, object] | None = None,
) -> AsyncIterator[bytes]:
    head = {
        "site_id": site_id,
        "start": lo,
        "end": hi,
        "interval": interval,
        "fill": fill,
        "estimate_method": ESTIMATE_METHOD if fill == "estimate" else None,
        **(extra or {}),
    }
    yield (json.dumps(head)[:-1] + ', "intervals": [').encode()
    if first is not None:
        yield json.dumps(interval_json(first)).encode()
        batch: list[str] = []
        async for iv in rows:
            batch.append(json.dumps(interval_json(iv)))
            if len(batch) >= 512:
                yield ("," + ",".join(batch)).encode()
                batch = []
        if batch:
            yield ("," + ",".join(batch)).encode()
    yield b"]}"


CSV_COLUMNS = ("start_iso", "interval_s", "state", *QUANTITIES, "records")


async def _csv(
    first: MeterInterval | None, rows: AsyncIterator[MeterInterval]
) -> AsyncIterator[bytes]:
    yield (",".join(CSV_COLUMNS) + "\n").encode()

    def line(iv: MeterInterval) -> str:
        row = interval_json(iv)
        return ",".join("" if row.get(c) is None else str(row[c]) for c in CSV_COLUMNS) + "\n"

    if first is None:
        return
    batch = [line(first)]
    async for iv in rows:
        batch.append(line(iv))
        if len(batch) >= 512:
            yield "".join(batch).encode()
            batch = []
    yield "".join(batch).encode()


class RegistersOut(BaseModel):
    """Cumulative registers (Wh) from the site's first accepted record until `at`."""

    site_id: str
    at: int
    imported_wh: int
    exported_wh: int
    generated_wh: int
    self_consumed_wh: int
    charged_wh: int
    discharged_wh: int
    load_wh: int
    intervals: int = Field(description="accepted intervals summed (gaps add nothing)")
    first_start: int | None
    last_end: int | None


@router.get("/api/v1/sites/{site_id}/meter/registers", response_model=RegistersOut, tags=["meter"])
async def registers(
    site_id: str,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    at: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
) -> RegistersOut:
    """The site's cumulative registers, as a revenue meter's would read at `at`."""
    await _visible(accounts, p, site_id)
    when = _s(at) if at is not None else int(ctx.now())
    r = await _meter(ctx).registers(site_id, when)
    return RegistersOut(
        site_id=site_id,
        at=r.at,
        imported_wh=r.imported_wh,
        exported_wh=r.exported_wh,
        generated_wh=r.generated_wh,
        self_consumed_wh=r.self_consumed_wh,
        charged_wh=r.charged_wh,
        discharged_wh=r.discharged_wh,
        load_wh=r.load_wh,
        intervals=r.intervals,
        first_start=r.first_start,
        last_end=r.last_end,
    )


class MeterEvent(BaseModel):
    at: int
    at_iso: str
    interval_s: int
    flag: str
    what: str


class MeterSummary(BaseModel):
    site_id: str
    name: str
    time_zone: str
    native_interval_s: int | None
    first_start: int | None
    last_end: int | None
    history: list[MeterEvent] = Field(description="counter resets and meter swaps")


@router.get("/api/v1/sites/{site_id}/meter", response_model=MeterSummary, tags=["meter"])
async def summary(site_id: str, ctx: CtxDep, accounts: AccountsDep, p: Reader) -> MeterSummary:
    """The site's meter: time zone, native interval, the span of its data, its history."""
    await _visible(accounts, p, site_id)
    meter = _meter(ctx)
    site = await meter.site(site_id)
    span = await meter.span(site_id)
    return MeterSummary(
        site_id=site.site_id,
        name=site.name,
        time_zone=site.time_zone,
        native_interval_s=span[2] if span else None,
        first_start=span[0] if span else None,
        last_end=span[1] if span else None,
        history=[
            MeterEvent(
                at=e.at, at_iso=_iso(e.at), interval_s=e.interval_s, flag=e.flag, what=e.what
            )
            for e in await meter.history(site_id)
        ],
    )


class TracedRecord(BaseModel):
    token_id: str
    device_id: str
    seq: int
    interval_start: int
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    status: str
    quality: int
    envelope_hex: str = Field(description="the signed record (COSE_Sign1), hex")
    proof: InclusionProof | None = Field(
        description="inclusion proof of the ledger entry that took it, against the latest "
        "checkpoint (null until a checkpoint covers it); the same shape as "
        "/api/v1/ledger/proofs/tokens/{token_id}"
    )


class Trace(BaseModel):
    site_id: str
    start: int
    interval_s: int
    reading: dict[str, object] | None
    records: list[TracedRecord]


@router.get(
    "/api/v1/sites/{site_id}/meter/intervals/{start}/records",
    response_model=Trace,
    tags=["meter"],
)
async def trace(site_id: str, start: int, ctx: CtxDep, accounts: AccountsDep, p: Reader) -> Trace:
    """The signed records behind one native interval (`start`: Unix s), each with its
    envelope and its inclusion proof: the reading is their sum, checkable by anyone."""
    await _visible(accounts, p, site_id)
    t = await _meter(ctx).trace(site_id, start)

    return Trace(
        site_id=site_id,
        start=start,
        interval_s=t.interval_s,
        reading=interval_json(t.reading) if t.reading is not None else None,
        records=[
            TracedRecord(
                token_id=r.token_id,
                device_id=r.device_id,
                seq=r.seq,
                interval_start=r.interval_start,
                interval_s=r.interval_s,
                generated_wh=r.generated_wh,
                imported_wh=r.imported_wh,
                exported_wh=r.exported_wh,
                charged_wh=r.charged_wh,
                discharged_wh=r.discharged_wh,
                status=r.status,
                quality=r.quality,
                envelope_hex=t.envelopes.get(r.token_id, b"").hex(),
                proof=proof_public(t.proofs[r.token_id]) if r.token_id in t.proofs else None,
            )
            for r in t.tokens
        ],
    )


@router.get("/api/v1/sites/{site_id}/meter/greenbutton", tags=["meter"])
async def green_button(
    site_id: str,
    request: Request,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    fill: Literal["none", "estimate"] = "none",
) -> StreamingResponse:
    """The site's Green Button (NAESB ESPI v3.3) Atom feed: a virtual DER UsagePoint with
    import, export, generation and net MeterReadings at the native interval, daily
    IntervalBlocks in the site's time zone. Gaps are absent (fill=none) or filled and marked
    interpolated (quality 9); edge-derived values are quality 11."""
    await _visible(accounts, p, site_id)
    meter = _meter(ctx)
    lo, hi = _s(start), _s(end)
    if hi <= lo or hi - lo > 400 * DAY:
        raise HTTPException(400, "the period must be non-empty and at most 400 days")
    feed = meter.green_button(
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

    return StreamingResponse(
        body(),
        media_type="application/atom+xml",
        headers={"Content-Disposition": f'attachment; filename="{site_id}-greenbutton.xml"'},
    )


class TimeZoneIn(BaseModel):
    time_zone: str = Field(max_length=64, examples=["Europe/Berlin"])


@router.put("/api/v1/sites/{site_id}/time-zone", response_model=TimeZoneIn, tags=["meter"])
async def set_time_zone(
    site_id: str, body: TimeZoneIn, ctx: CtxDep, accounts: AccountsDep, p: Placer
) -> TimeZoneIn:
    """The site's IANA time zone: its local days for roll-ups and Green Button."""
    await _visible(accounts, p, site_id)
    try:
        await _meter(ctx).set_time_zone(site_id, body.time_zone)
    except MeterError as exc:
        raise HTTPException(400, str(exc)) from None
    except NoSuchSite:
        raise HTTPException(404, f"no site {site_id}") from None
    return body


# a group's meter (the operator's analytics)

FleetReader = Annotated[Principal, Depends(require(*FLEET, action="read a group's meter data"))]


@router.get("/api/v1/fleet/meter", tags=["meter"])
async def group_meter(
    ctx: CtxDep,
    _p: FleetReader,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    group: Annotated[str, Query(max_length=80, description="a fleet group")] = "all",
    interval: Literal["15min", "30min", "60min", "day"] = "day",
    tz: Annotated[str, Query(max_length=64, description="IANA zone of the days")] = "UTC",
    format: Literal["json", "csv"] = "json",
) -> StreamingResponse:
    """A fleet group's production, consumption, import, export and battery use per
    interval or day: its sites' accepted records summed (what they delivered; nothing
    estimated), for the operator's analytics."""
    if ctx.fleet is None:
        raise HTTPException(503, "the fleet view is not running in this process")
    try:
        members = ctx.fleet.state.members(parse_group(group))
    except GroupError as exc:
        raise HTTPException(400, str(exc)) from None
    site_ids = sorted({d.site_id for d in members})
    lo, hi = _s(start), _s(end)
    rows = _meter(ctx).group_readings(site_ids, lo, hi, LENGTHS[interval] or DAY, tz)
    first = await _first(rows)
    if format == "csv":
        return StreamingResponse(
            _csv(first, rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="group-{interval}.csv"'},
        )
    return StreamingResponse(
        _json(group, lo, hi, interval, "none", first, rows, {"sites": len(site_ids), "tz": tz}),
        media_type="application/json",
    )


# revenue meter data and reconciliation


def _reconciler(ctx: CtxDep) -> ReconciliationService:
    if ctx.reconciliation is None:
        raise HTTPException(503, "reconciliation is not running in this process")
    return ctx.reconciliation


class RevenueImportOut(BaseModel):
    import_id: str
    source: str
    sha256: str
    size: int
    imported_ms: int
    imported_by: str
    status: Literal["accepted", "rejected"]
    detail: str
    intervals: int
    first_start: int | None
    last_end: int | None


def _import_out(r: RevenueImport) -> RevenueImportOut:
    return RevenueImportOut(
        import_id=r.import_id,
        source=r.source,
        sha256=r.sha256.hex(),
        size=r.size,
        imported_ms=r.imported_ms,
        imported_by=r.imported_by,
        status="accepted" if r.status == "accepted" else "rejected",
        detail=r.detail,
        intervals=r.intervals,
        first_start=r.first_start,
        last_end=r.last_end,
    )


@router.post(
    "/api/v1/sites/{site_id}/meter/revenue",
    response_model=RevenueImportOut,
    status_code=201,
    tags=["meter"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/atom+xml": {"schema": {"type": "string"}}},
        }
    },
)
async def import_revenue(
    site_id: str,
    request: Request,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    source: Annotated[str, Query(max_length=200, description="a label: file name, utility")] = "",
) -> RevenueImportOut:
    """A revenue meter's Green Button file for the site (the request body, ESPI XML): its
    import (flow 1), export (19) and net (4) interval readings are stored for reconciliation,
    replacing earlier readings over the same period. A file that cannot be read is a 400 with
    the reason, and is kept as a rejected import."""
    await _visible(accounts, p, site_id)
    data = await request.body()
    try:
        result = await _reconciler(ctx).import_feed(
            site_id, data, source=source or "upload", by=p.account_id
        )
    except ImportRefused as exc:
        raise HTTPException(400, str(exc)) from None
    except NoSuchSite:
        raise HTTPException(404, f"no site {site_id}") from None
    return _import_out(result.record)


@router.get(
    "/api/v1/sites/{site_id}/meter/revenue",
    response_model=list[RevenueImportOut],
    tags=["meter"],
)
async def revenue_imports(
    site_id: str, ctx: CtxDep, accounts: AccountsDep, p: Reader
) -> list[RevenueImportOut]:
    """The site's revenue meter imports, newest first (rejected ones with their reason)."""
    await _visible(accounts, p, site_id)
    return [_import_out(r) for r in await _reconciler(ctx).store.imports(site_id)]


class DayDifference(BaseModel):
    label: str = Field(description="YYYY-MM-DD or YYYY-MM in the site's time zone")
    virtual_wh: int
    revenue_wh: int
    difference_wh: int = Field(description="virtual - revenue")
    relative_permille: int | None = Field(description="|difference| per mille of revenue")
    over_tolerance: bool
    compared: int
    virtual_only: int
    revenue_only: int
    explained: int


class ExplainingInterval(BaseModel):
    start: int
    start_iso: str
    interval_s: int
    virtual_wh: int | None
    revenue_wh: int | None
    reasons: list[str]


class ReconciliationOut(BaseModel):
    site_id: str
    flow: str
    start: int
    end: int
    tolerance_permille: int
    total: DayDifference
    days: list[DayDifference]
    months: list[DayDifference]
    explanations: list[ExplainingInterval]
    explanations_left_out: int


def _diff(t: Totals, tolerance: int) -> DayDifference:
    return DayDifference(
        label=t.label,
        virtual_wh=t.virtual_wh,
        revenue_wh=t.revenue_wh,
        difference_wh=t.difference_wh,
        relative_permille=t.relative_permille,
        over_tolerance=t.over(tolerance),
        compared=t.compared,
        virtual_only=t.virtual_only,
        revenue_only=t.revenue_only,
        explained=t.explained,
    )


@router.get(
    "/api/v1/sites/{site_id}/meter/reconciliation",
    response_model=ReconciliationOut,
    tags=["meter"],
)
async def reconciliation(
    site_id: str,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Reader,
    start: Annotated[datetime, Query(description="ISO 8601; no offset: UTC")],
    end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    flow: Literal["import", "export", "generation", "net"] = "import",
) -> ReconciliationOut:
    """Virtual versus revenue meter per day and month for one flow: absolute and relative
    difference, the days over the tolerance (which raise a meter_mismatch alarm), and the
    intervals that explain the difference (readings that differ, gaps, estimates, flagged
    records, intervals missing on either side)."""
    await _visible(accounts, p, site_id)
    lo, hi = _s(start), _s(end)
    if hi <= lo or hi - lo > 400 * DAY:
        raise HTTPException(400, "the period must be non-empty and at most 400 days")
    try:
        rep = await _reconciler(ctx).report(site_id, lo, hi, flow)
    except MeterError as exc:
        raise HTTPException(400, str(exc)) from None
    except NoSuchSite:
        raise HTTPException(404, f"no site {site_id}") from None
    tol = rep.tolerance_permille
    return ReconciliationOut(
        site_id=site_id,
        flow=flow,
        start=lo,
        end=hi,
        tolerance_permille=tol,
        total=_diff(rep.total, tol),
        days=[_diff(d, tol) for d in rep.days],
        months=[_diff(m, tol) for m in rep.months],
        explanations=[
            ExplainingInterval(
                start=e.start,
                start_iso=_iso(e.start),
                interval_s=e.interval_s,
                virtual_wh=e.virtual_wh,
                revenue_wh=e.revenue_wh,
                reasons=list(e.reasons),
            )
            for e in rep.explanations
        ],
        explanations_left_out=rep.explanations_left_out,
    )


__all__ = ["Period", "router"]
