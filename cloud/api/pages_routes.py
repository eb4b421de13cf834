"""The installer journey's web pages: the approval queue and the device detail page.

Owns: GET /approvals (approvers) and GET /devices/{device_id} (fleet roles; a homeowner for
devices on their own sites). Pages are server-rendered; the queue's buttons call the JSON APIs
(`POST /api/v1/accounts/{id}/status`, `POST /api/v1/admin/devices/{id}/status`) with the session
cookie. Without credentials a page sends the browser to /login; a wrong role gets a plain 403 page.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud.auth import Auth, Principal, Role
from cloud.storage.accounts import AccountStore
from cloud.storage.device_views import DeviceViews
from cloud.storage.store import Store
from protocol.record import Quality

FLEET_ROLES = frozenset({Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR, Role.ADMIN})
APPROVAL_ROLES = frozenset({Role.APPROVER, Role.ADMIN})
LATEST_TOKENS = 20
LATEST_REJECTIONS = 20
RECENT_DECISIONS = 20


def _utc_s(seconds: int | float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _utc_ms(ms: int | None) -> str:
    return "—" if ms is None else _utc_s(ms / 1000)


def _quality(value: int) -> str:
    try:
        return Quality(value).name.lower()
    except ValueError:
        return str(value)


def add_page_routes(
    app: FastAPI,
    store: Store,
    accounts: AccountStore,
    auth: Auth,
    templates: Jinja2Templates,
) -> None:
    """Register the approval queue and device detail pages on `app`."""
    views = DeviceViews(store.engine)
    templates.env.filters.setdefault("utc_s", _utc_s)
    templates.env.filters.setdefault("utc_ms", _utc_ms)
    templates.env.filters.setdefault("quality_name", _quality)

    def message(request: Request, status: int, title: str, text: str) -> Response:
        return templates.TemplateResponse(
            request,
            "message.html",
            {"title": title, "message": text},
            status_code=status,
        )

    async def gate(request: Request, allowed: frozenset[Role], action: str) -> Principal | Response:
        """The principal if it may `action`; else the redirect to /login or a 403 page."""
        try:
            p = await auth.page_principal(request)
        except HTTPException as exc:  # a pending or rejected account's session
            return message(request, exc.status_code, "Not allowed", str(exc.detail))
        if p is None:
            return RedirectResponse("/login", status_code=303)
        if p.role not in allowed:
            return message(request, 403, "Not allowed", f"role {p.role} may not {action}")
        return p

    @app.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
    async def approvals_page(request: Request) -> Response:
        """The approval queue: waiting accounts and devices, approved devices, recent decisions."""
        p = await gate(request, APPROVAL_ROLES, "view the approval queue")
        if isinstance(p, Response):
            return p
        return templates.TemplateResponse(
            request,
            "approvals.html",
            {
                "who": p,
                "pending_accounts": await accounts.list_accounts("pending"),
                "pending_devices": await views.list_for_review("pending"),
                "approved_devices": await views.list_for_review("approved"),
                "decisions": await views.list_decisions(limit=RECENT_DECISIONS),
                "account_decisions": await accounts.list_account_decisions(RECENT_DECISIONS),
            },
        )

    @app.get("/devices/{device_id}", response_class=HTMLResponse, include_in_schema=False)
    async def device_page(request: Request, device_id: str) -> Response:
        """One device: status, site, keys, token totals, latest tokens, rejections, decisions."""
        p = await gate(request, FLEET_ROLES | {Role.HOMEOWNER}, "view devices")
        if isinstance(p, Response):
            return p
        detail = await views.device_detail(device_id, LATEST_TOKENS, LATEST_REJECTIONS)
        if p.role is Role.HOMEOWNER:
            # Unknown and someone else's look the same, so ids cannot be probed.
            if detail is None or detail.device.owner_account_id != p.account_id:
                return message(
                    request,
                    403,
                    "Not allowed",
                    "a homeowner may only view devices on their own sites",
                )
        elif detail is None:
            return message(request, 404, "Not found", f"device {device_id!r} is not registered")
        return templates.TemplateResponse(
            request,
            "device.html",
            {
                "who": p,
                "d": detail,
                "fleet": p.role in FLEET_ROLES,
                "approver": p.role in APPROVAL_ROLES,
            },
        )
