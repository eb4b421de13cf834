"""What the fleet produced: accepted tokens, ingest statistics, refused messages, and the live
server-sent event stream the dashboard follows.

Owns: those routes. A homeowner reads their own sites' tokens only; statistics, rejections and
the stream are for fleet roles.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from cloud.api.deps import ANYONE, FLEET, AccountsDep, CtxDep, StoreDep, require
from cloud.api.fleet_views import devices_public, epoch, ledger_status, stats_public, ts
from cloud.api.schemas import RejectionPublic, StatsPublic, TokenPublic
from cloud.auth import Principal, Role, visible_site_ids
from cloud.services.ledger import LedgerService
from cloud.storage.store import Store

router = APIRouter()


@router.get("/api/v1/tokens", response_model=list[TokenPublic], tags=["tokens"])
async def list_tokens(
    store: StoreDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="read tokens"))],
    device_id: str | None = None,
    since: Annotated[datetime | None, Query(description="interval start >= (UTC)")] = None,
    until: Annotated[datetime | None, Query(description="interval start < (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[TokenPublic]:
    """Accepted tokens, newest interval first (a homeowner: their own sites' only)."""
    rows = await store.list_tokens(
        device_id,
        epoch(since),
        epoch(until),
        limit,
        offset,
        site_ids=await visible_site_ids(accounts, p),
    )
    return [
        TokenPublic(
            token_id=r.token_id,
            device_id=r.device_id,
            seq=r.seq,
            interval_start=ts(r.interval_start),
            interval_s=r.interval_s,
            generated_wh=r.generated_wh,
            imported_wh=r.imported_wh,
            exported_wh=r.exported_wh,
            charged_wh=r.charged_wh,
            discharged_wh=r.discharged_wh,
            status=r.status,
            quality=r.quality,
            record_hash=r.record_hash.hex(),
            envelope=r.envelope.hex(),
            received_at=ts(r.received_ms / 1000),
        )
        for r in rows
    ]


@router.get(
    "/api/v1/stats",
    response_model=StatsPublic,
    tags=["tokens"],
    dependencies=[Depends(require(*FLEET, action="read fleet statistics"))],
)
async def stats(store: StoreDep) -> StatsPublic:
    """Accepted and rejected (by reason) counts and generation per interval."""
    return await stats_public(store)


@router.get(
    "/api/v1/rejections",
    response_model=list[RejectionPublic],
    tags=["tokens"],
    dependencies=[Depends(require(Role.APPROVER, Role.GRID_OPERATOR, action="read rejections"))],
)
async def list_rejections(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RejectionPublic]:
    """Newest refused messages with their reasons."""
    return [
        RejectionPublic(
            id=r.id,
            received_at=ts(r.received_ms / 1000),
            topic=r.topic,
            device_id=r.device_id,
            reason=r.reason,
            detail=r.detail,
            size=r.size,
            sha256=r.sha256.hex(),
        )
        for r in await store.list_rejections(limit)
    ]


@router.get(
    "/api/v1/stream",
    tags=["tokens"],
    response_class=StreamingResponse,
    dependencies=[Depends(require(*FLEET, action="follow the fleet"))],
)
async def stream(
    request: Request,
    ctx: CtxDep,
    events: Annotated[
        int | None, Query(ge=1, description="stop after this many events (default: never)")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: a `stats` event with counters and the fleet, once a second."""
    return StreamingResponse(
        _stats_events(request, ctx.store, ctx.ledger, ctx.stream_interval_s, events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _stats_events(
    request: Request,
    store: Store,
    ledger: LedgerService | None,
    interval_s: float,
    events: int | None,
) -> AsyncIterator[str]:
    """The stream's body: a `stats` event every `interval_s` until the client goes away."""
    sent = 0
    while not await request.is_disconnected():
        payload = {
            "stats": (await stats_public(store)).model_dump(mode="json"),
            "devices": [d.model_dump(mode="json") for d in await devices_public(store)],
            "ledger": await ledger_status(ledger),
        }
        yield f"event: stats\ndata: {json.dumps(payload)}\n\n"
        sent += 1
        if events is not None and sent >= events:
            return
        await asyncio.sleep(interval_s)
