"""The fleet's web pages: the dashboard, the approval queue and the device detail page.

Owns: GET / (fleet roles; a homeowner is sent to /home), GET /approvals (approvers) and
GET /devices/{device_id} (fleet roles; a homeowner for devices on their own sites). Pages are
server-rendered; the queue's buttons call the JSON APIs (`POST /api/v1/accounts/{id}/status`,
`POST /api/v1/admin/devices/{id}/status`) with the session cookie. Without credentials a page
sends the browser to /login; on the queue and device pages a wrong role gets a plain 403 page.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.api.deps import FLEET, ApiContext, CtxDep, OptionalPrincipalDep
from cloud.api.fleet_views import devices_public, ledger_status, stats_public
from cloud.auth import Principal, Role
from cloud.domain.devices import DeviceStatus

FLEET_ROLES = frozenset({Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR, Role.ADMIN})
APPROVAL_ROLES = frozenset({Role.APPROVER, Role.ADMIN})
LATEST_TOKENS = 20
LATEST_REJECTIONS = 20
RECENT_DECISIONS = 20

router = APIRouter()


def _message(ctx: ApiContext, request: Request, status: int, title: str, text: str) -> Response:
    return ctx.templates.TemplateResponse(
        request,
        "message.html",
        {"title": title, "message": text},
        status_code=status,
    )


async def _gate(
    ctx: ApiContext, request: Request, allowed: frozenset[Role], action: str
) -> Principal | Response:
    """The principal if it may `action`; else the redirect to /login or a 403 page."""
    try:
        p = await ctx.auth.page_principal(request)
    except HTTPException as exc:  # a pending or rejected account's session
        return _message(ctx, request, exc.status_code, "Not allowed", str(exc.detail))
    if p is None:
        return RedirectResponse("/login", status_code=303)
    if p.role not in allowed:
        return _message(ctx, request, 403, "Not allowed", f"role {p.role} may not {action}")
    return p


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request, ctx: CtxDep, p: OptionalPrincipalDep) -> Response:
    """The fleet dashboard (fleet roles); others are sent to log in."""
    if p is None:
        return RedirectResponse("/login", status_code=303)
    if p.role is Role.HOMEOWNER:
        return RedirectResponse("/home", status_code=303)  # their own page, "My home"
    if p.role in (Role.BUYER, Role.PROVIDER):
        return RedirectResponse("/shop", status_code=303)  # the carbon shop is all they use
    if p.role not in (Role.ADMIN, *FLEET):
        raise HTTPException(403, f"role {p.role} may not view the fleet dashboard")
    return ctx.templates.TemplateResponse(
        request,
        "index.html",
        {
            "devices": await devices_public(ctx.store),
            "stats": await stats_public(ctx.store),
            "ledger": await ledger_status(ctx.ledger),
            "who": p,
        },
    )


@router.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
async def approvals_page(request: Request, ctx: CtxDep) -> Response:
    """The approval queue: waiting accounts and devices, approved devices, recent decisions."""
    p = await _gate(ctx, request, APPROVAL_ROLES, "view the approval queue")
    if isinstance(p, Response):
        return p
    views, accounts = ctx.device_views, ctx.accounts
    return ctx.templates.TemplateResponse(
        request,
        "approvals.html",
        {
            "who": p,
            "pending_accounts": await accounts.list_accounts("pending"),
            "pending_devices": await views.list_for_review(DeviceStatus.PENDING),
            "approved_devices": await views.list_for_review(DeviceStatus.APPROVED),
            "decisions": await views.list_decisions(limit=RECENT_DECISIONS),
            "account_decisions": await accounts.list_account_decisions(RECENT_DECISIONS),
        },
    )


@router.get("/devices/{device_id}", response_class=HTMLResponse, include_in_schema=False)
async def device_page(request: Request, device_id: str, ctx: CtxDep) -> Response:
    """One device: status, site, keys, token totals, latest tokens, rejections, decisions."""
    p = await _gate(ctx, request, FLEET_ROLES | {Role.HOMEOWNER}, "view devices")
    if isinstance(p, Response):
        return p
    detail = await ctx.device_views.device_detail(device_id, LATEST_TOKENS, LATEST_REJECTIONS)
    if p.role is Role.HOMEOWNER:
        # Unknown and someone else's look the same, so ids cannot be probed.
        if detail is None or detail.device.owner_account_id != p.account_id:
            return _message(
                ctx,
                request,
                403,
                "Not allowed",
                "a homeowner may only view devices on their own sites",
            )
    elif detail is None:
        return _message(ctx, request, 404, "Not found", f"device {device_id!r} is not registered")
    return ctx.templates.TemplateResponse(
        request,
        "device.html",
        {
            "who": p,
            "d": detail,
            "fleet": p.role in FLEET_ROLES,
            "approver": p.role in APPROVAL_ROLES,
        },
    )
