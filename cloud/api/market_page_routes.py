"""The trading desk: the market's web page for homeowners, and a read-only view of it for the
grid operator and admins.

Owns: GET /market. Server-rendered skeleton (the market's rules, the open delivery intervals and
the server's clock, so the gate countdown follows the market's time, not the browser's);
market.js then fills in the anonymous book, the caller's orders and trades, the clearing-price
history and the depth chart from the market API (cloud.api.market_routes) with the session
cookie, follows /api/v1/market/stream and polls the trades as a fallback (settlement happens in
the ledger loop without a market event). Only homeowners get the order form and the cancel and
amend controls. Without credentials the page sends the browser to /login; another role gets a
403 page.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.api.deps import ApiContext, CtxDep
from cloud.api.market_routes import market_info
from cloud.auth import Role

MARKET_PAGE_ROLES = frozenset({Role.HOMEOWNER, Role.GRID_OPERATOR, Role.ADMIN})
POLL_MS = 5_000  # the fallback poll of trades and orders (settlement sends no market event)
UPCOMING = 12  # delivery intervals offered in the selector from the next open one

router = APIRouter()


def _message(ctx: ApiContext, request: Request, status: int, text: str) -> Response:
    return ctx.templates.TemplateResponse(
        request,
        "message.html",
        {"title": "Not allowed", "message": text},
        status_code=status,
    )


@router.get("/market", response_class=HTMLResponse, include_in_schema=False)
async def market_page(request: Request, ctx: CtxDep) -> Response:
    """The trading desk: book, own orders and trades, order form, history and depth charts."""
    try:
        p = await ctx.auth.page_principal(request)
    except HTTPException as exc:  # a pending or rejected account's session
        return _message(ctx, request, exc.status_code, str(exc.detail))
    if p is None:
        return RedirectResponse("/login", status_code=303)
    if p.role not in MARKET_PAGE_ROLES:
        return _message(ctx, request, 403, f"role {p.role} may not view the trading desk")
    info = None if ctx.market is None else await market_info(ctx.market, ctx, p)
    return ctx.templates.TemplateResponse(
        request,
        "market.html",
        {
            "who": p,
            "can_trade": p.role is Role.HOMEOWNER,
            "info": info,
            "info_json": None if info is None else info.model_dump(),
            "server_now_ms": int(ctx.now() * 1000),
            "poll_ms": POLL_MS,
            "upcoming": UPCOMING,
        },
        status_code=200 if info is not None else 503,
    )
