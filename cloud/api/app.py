"""The aggregator's HTTP face: JSON API (OpenAPI at /openapi.json), the dashboard page, SSE.

Owns: routes and their translation between storage dataclasses and wire schemas. No business rules
live here; it reads through cloud.storage and asks nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cloud.api.accounts_routes import add_account_routes
from cloud.api.certificates_routes import add_certificate_routes
from cloud.api.device_routes import KeyPublic, KeyRevocation, add_device_routes, key_public
from cloud.api.home_routes import add_home_routes
from cloud.api.ledger_routes import add_ledger_routes
from cloud.api.pages_routes import add_page_routes
from cloud.api.schemas import (
    DeviceCreate,
    DevicePublic,
    DeviceStatusChange,
    Health,
    IntervalGeneration,
    RejectionPublic,
    StatsPublic,
    TokenPublic,
    device_identity,
)
from cloud.auth import Principal, Role, make_auth, visible_site_ids
from cloud.services.device_credentials import DeviceCredentials
from cloud.services.ledger import LedgerService
from cloud.storage.accounts import AccountStore
from cloud.storage.claims import ClaimStore
from cloud.storage.device_views import DeviceViews
from cloud.storage.store import Store
from protocol import cose

log = logging.getLogger(__name__)
WEB = Path(__file__).resolve().parent.parent / "web"


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _epoch(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # the API speaks UTC; a bare time is taken as UTC
    return int(dt.timestamp())


def create_app(
    store: Store,
    *,
    accounts: AccountStore | None = None,
    admin_token: str = "",
    broker_connected: Callable[[], bool] = lambda: False,
    storage_errors: Callable[[], int] = lambda: 0,
    stream_interval_s: float = 1.0,
    secure_cookies: bool = False,
    deployment: str = "",
    broker_url: str = "",
    credentials: DeviceCredentials | None = None,
    ledger: LedgerService | None = None,
    key_overlap_s: int = 24 * 3600,
    now: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the FastAPI application around a store.

    Every endpoint but /healthz, login and sign-up needs a principal (bearer token, session
    cookie or API key); the role each endpoint allows is in its `auth.require(...)`.
    """
    accounts = accounts or AccountStore(store.engine)
    auth = make_auth(accounts, admin_token)
    fleet_roles = (Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR)
    anyone = (Role.HOMEOWNER, *fleet_roles)
    app = FastAPI(
        title="gridmint aggregator",
        version="0.1.0",
        description="Signed kWh generation tokens from edge agents: fleet, tokens, ingest stats.",
    )
    templates = Jinja2Templates(directory=str(WEB / "templates"))
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")

    async def stats_public() -> StatsPublic:
        s = await store.stats()
        return StatsPublic(
            accepted=s.accepted,
            held=s.held,
            rejected=s.rejected,
            rejected_by_reason=s.rejected_by_reason,
            generated_wh=s.generated_wh,
            kwh=s.generated_wh / 1000,
            per_interval=[
                IntervalGeneration(interval_start=_ts(t), generated_wh=w)
                for t, w in s.per_interval_wh
            ],
        )

    async def devices_public(sites: list[str] | None = None) -> list[DevicePublic]:
        return [
            DevicePublic(
                device_id=d.device.device_id,
                site_id=d.device.site_id,
                status=d.device.status,
                capacity_w=d.device.capacity_w,
                zone=d.device.zone,
                tokens=d.tokens,
                generated_wh=d.generated_wh,
                last_interval_start=_ts(d.last_interval_start)
                if d.last_interval_start is not None
                else None,
            )
            for d in await store.list_devices()
            if sites is None or d.device.site_id in sites
        ]

    async def ledger_status() -> dict[str, int] | None:
        """Log size, newest checkpoint and closed intervals, for the dashboard."""
        if ledger is None:
            return None
        cp = await ledger.store.latest_checkpoint()
        return {
            "entries": ledger.log.size,
            "checkpoint": cp.size if cp else 0,
            "intervals": len(ledger.engine.state.closed),
        }

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness plus database and broker state."""
        try:
            await store.stats(intervals=1)
            db = "ok"
        except Exception as exc:  # report, don't crash
            db = f"error: {exc}"
        return Health(
            status="ok" if db == "ok" else "degraded",
            database=db,
            broker="connected" if broker_connected() else "disconnected",
        )

    @app.get("/api/v1/devices", response_model=list[DevicePublic], tags=["fleet"])
    async def list_devices(
        p: Principal = Depends(auth.require(*anyone, action="list devices")),
    ) -> list[DevicePublic]:
        """Registered devices with token counts and generation (a homeowner: their own)."""
        return await devices_public(await visible_site_ids(accounts, p))

    @app.post(
        "/api/v1/admin/devices",
        response_model=DevicePublic,
        status_code=201,
        tags=["admin"],
        dependencies=[Depends(auth.require(Role.INSTALLER, action="register devices"))],
    )
    async def register_device(body: DeviceCreate) -> DevicePublic:
        """Register a device and its Ed25519 public key (installers; enrollment comes later)."""
        try:
            public_key = device_identity(
                body.public_key, (body.device_id, "device id"), (body.site_id, "site id")
            )
        except ValueError as exc:  # TopicError is a ValueError
            raise HTTPException(422, str(exc)) from None
        try:
            await store.add_device(
                body.device_id,
                body.site_id,
                public_key,
                cose.key_id(public_key),
                body.capacity_w,
                body.zone,
                status=body.status,
            )
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        for d in await devices_public():
            if d.device_id == body.device_id:
                return d
        raise HTTPException(500, "device vanished after registration")

    @app.post(
        "/api/v1/admin/devices/{device_id}/status",
        response_model=DevicePublic,
        tags=["admin"],
    )
    async def set_device_status(
        device_id: str,
        body: DeviceStatusChange,
        p: Principal = Depends(auth.require(Role.APPROVER, action="approve or revoke devices")),
    ) -> DevicePublic:
        """Approve, reject or revoke a device (a reason is required to reject or revoke).

        Approving counts the tokens it sent while pending. Every decision is logged with the
        approver, the time, old -> new status and the reason (see the device's page).
        """
        problem = body.missing_reason()
        if problem:
            raise HTTPException(422, problem)
        try:
            await DeviceViews(store.engine).decide(
                device_id, body.status, p.account_id, body.reason
            )
        except KeyError:
            raise HTTPException(404, f"device {device_id!r} is not registered") from None
        if credentials is not None:
            # The broker must follow the registry: revoke certificates, rewrite the ACL, reload.
            await credentials.device_status_changed(device_id, body.status)
        for d in await devices_public():
            if d.device_id == device_id:
                return d
        raise HTTPException(404, f"device {device_id!r} is not registered")

    @app.post(
        "/api/v1/admin/devices/{device_id}/keys/{kid}/revoke",
        response_model=KeyPublic,
        tags=["admin"],
    )
    async def revoke_key(
        device_id: str,
        kid: str,
        body: KeyRevocation,
        p: Principal = Depends(auth.require(Role.APPROVER, action="revoke device keys")),
    ) -> KeyPublic:
        """Revoke a compromised signing key: every record it signs from now on is refused
        (`key_revoked`), whatever its interval. Records already accepted stay."""
        try:
            raw_kid = bytes.fromhex(kid)
            key = await store.revoke_key(device_id, raw_kid, int(now() * 1000))
        except ValueError:
            raise HTTPException(422, f"{kid!r} is not a key id (16 hex digits)") from None
        except KeyError as exc:
            raise HTTPException(404, str(exc).strip("'\"")) from None
        log.warning("key %s of %s revoked by %s: %s", kid, device_id, p.account_id, body.reason)
        return key_public(key)

    @app.get("/api/v1/tokens", response_model=list[TokenPublic], tags=["tokens"])
    async def list_tokens(
        device_id: str | None = None,
        since: Annotated[datetime | None, Query(description="interval start >= (UTC)")] = None,
        until: Annotated[datetime | None, Query(description="interval start < (UTC)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        p: Principal = Depends(auth.require(*anyone, action="read tokens")),
    ) -> list[TokenPublic]:
        """Accepted tokens, newest interval first (a homeowner: their own sites' only)."""
        rows = await store.list_tokens(
            device_id,
            _epoch(since),
            _epoch(until),
            limit,
            offset,
            site_ids=await visible_site_ids(accounts, p),
        )
        return [
            TokenPublic(
                token_id=r.token_id,
                device_id=r.device_id,
                seq=r.seq,
                interval_start=_ts(r.interval_start),
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
                received_at=_ts(r.received_ms / 1000),
            )
            for r in rows
        ]

    @app.get(
        "/api/v1/stats",
        response_model=StatsPublic,
        tags=["tokens"],
        dependencies=[Depends(auth.require(*fleet_roles, action="read fleet statistics"))],
    )
    async def stats() -> StatsPublic:
        """Accepted and rejected (by reason) counts and generation per interval."""
        return await stats_public()

    @app.get(
        "/api/v1/rejections",
        response_model=list[RejectionPublic],
        tags=["tokens"],
        dependencies=[
            Depends(auth.require(Role.APPROVER, Role.GRID_OPERATOR, action="read rejections"))
        ],
    )
    async def list_rejections(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RejectionPublic]:
        """Newest refused messages with their reasons."""
        return [
            RejectionPublic(
                id=r.id,
                received_at=_ts(r.received_ms / 1000),
                topic=r.topic,
                device_id=r.device_id,
                reason=r.reason,
                detail=r.detail,
                size=r.size,
                sha256=r.sha256.hex(),
            )
            for r in await store.list_rejections(limit)
        ]

    @app.get(
        "/api/v1/stream",
        tags=["tokens"],
        response_class=StreamingResponse,
        dependencies=[Depends(auth.require(*fleet_roles, action="follow the fleet"))],
    )
    async def stream(
        request: Request,
        events: Annotated[
            int | None, Query(ge=1, description="stop after this many events (default: never)")
        ] = None,
    ) -> StreamingResponse:
        """Server-sent events: a `stats` event with counters and the fleet, once a second."""

        async def events_gen() -> AsyncIterator[str]:
            sent = 0
            while not await request.is_disconnected():
                payload = {
                    "stats": (await stats_public()).model_dump(mode="json"),
                    "devices": [d.model_dump(mode="json") for d in await devices_public()],
                    "ledger": await ledger_status(),
                }
                yield f"event: stats\ndata: {json.dumps(payload)}\n\n"
                sent += 1
                if events is not None and sent >= events:
                    return
                await asyncio.sleep(stream_interval_s)

        return StreamingResponse(
            events_gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["ops"],
        dependencies=[Depends(auth.require(Role.GRID_OPERATOR, action="scrape metrics"))],
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus text exposition of the ingest counters (from the database)."""
        s = await store.stats(intervals=1)
        lines = [
            "# HELP gridmint_ingest_storage_errors_total Messages left unacknowledged for "
            "redelivery because storage failed (since the process started).",
            "# TYPE gridmint_ingest_storage_errors_total counter",
            f"gridmint_ingest_storage_errors_total {storage_errors()}",
            "# HELP gridmint_tokens_accepted_total Generation tokens accepted and stored.",
            "# TYPE gridmint_tokens_accepted_total counter",
            f"gridmint_tokens_accepted_total {s.accepted}",
            "# HELP gridmint_tokens_rejected_total Messages refused, by reason.",
            "# TYPE gridmint_tokens_rejected_total counter",
            *(
                f'gridmint_tokens_rejected_total{{reason="{r}"}} {n}'
                for r, n in sorted(s.rejected_by_reason.items())
            ),
            "# HELP gridmint_generated_wh_total Generation in accepted tokens, Wh.",
            "# TYPE gridmint_generated_wh_total counter",
            f"gridmint_generated_wh_total {s.generated_wh}",
            "# HELP gridmint_broker_connected 1 while the aggregator is connected to the broker.",
            "# TYPE gridmint_broker_connected gauge",
            f"gridmint_broker_connected {int(broker_connected())}",
        ]
        led = await ledger_status()
        if led is not None and ledger is not None:
            lines += [
                "# HELP gridmint_ledger_entries Entries in the ledger's Merkle log.",
                "# TYPE gridmint_ledger_entries gauge",
                f"gridmint_ledger_entries {led['entries']}",
                "# HELP gridmint_ledger_checkpoint_size Size of the newest signed checkpoint.",
                "# TYPE gridmint_ledger_checkpoint_size gauge",
                f"gridmint_ledger_checkpoint_size {led['checkpoint']}",
                "# HELP gridmint_ledger_intervals_closed Site intervals closed into the ledger.",
                "# TYPE gridmint_ledger_intervals_closed gauge",
                f"gridmint_ledger_intervals_closed {led['intervals']}",
                "# HELP gridmint_ledger_late_records Records that arrived after their interval "
                "closed (stored, not minted).",
                "# TYPE gridmint_ledger_late_records gauge",
                f"gridmint_ledger_late_records {await ledger.store.late_records()}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(
        request: Request, p: Principal | None = Depends(auth.optional_principal)
    ) -> Response:
        """The fleet dashboard (fleet roles); others are sent to log in."""
        if p is None:
            return RedirectResponse("/login", status_code=303)
        if p.role is Role.HOMEOWNER:
            return RedirectResponse("/home", status_code=303)  # their own page, "My home"
        if p.role not in (Role.ADMIN, *fleet_roles):
            raise HTTPException(403, f"role {p.role} may not view the fleet dashboard")
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "devices": await devices_public(),
                "stats": await stats_public(),
                "ledger": await ledger_status(),
                "who": p,
            },
        )

    add_device_routes(
        app,
        store,
        deployment,
        key_overlap_s=key_overlap_s,
        credentials=credentials,
        ledger=ledger,
        now=now,
    )
    add_ledger_routes(app, ledger, auth, accounts, deployment=deployment)
    add_certificate_routes(app, store, accounts, auth, ledger)
    add_page_routes(app, store, accounts, auth, templates)
    add_home_routes(app, store, accounts, auth, templates, ledger)
    add_account_routes(
        app,
        accounts,
        auth,
        templates,
        secure_cookies,
        ClaimStore(store.engine),
        deployment,
        broker_url,
        credentials,
    )
    return app
