"""The carbon shop's and the footprint's web pages (docs/carbon-shop.md, "Pages").

Owns: GET /shop (search and results), /shop/projects/{id} (the project and its chain-of-custody
report), /shop/checkout, /shop/orders, /shop/orders/{id}, /shop/orders/{id}/statement and
/footprint. Everyone signed in may browse the shop (as the API allows); the basket, checkout,
orders, statements and the footprint are for shoppers (buyers, homeowners) and admins. Without
credentials a page sends the browser to /login; another role gets a 403 page.

The pages are rendered from the shop's service (the same data the JSON API answers); shop.js
adds the basket (localStorage: one currency per basket, as an order has one currency), the
display-currency prices (from /api/v1/fx-rates), the checkout and the sandbox payment (through
the JSON API with the session cookie) and follows an order until it is final; footprint.js
runs the calculator and draws the dashboard from /api/v1/footprint. The custody report and the
statement are rendered generically (templates/_shop_value.html), so fields the ledger side adds
(per-lot tokens with their signed records and proofs, a statement's ledger proof) show up
without a change here.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from cloud.api.deps import ANYONE, SHOP_ROLES, ApiContext, CtxDep
from cloud.api.pages_routes import _gate, _message
from cloud.api.subscription_routes import footprint_packages
from cloud.auth import Principal, Role
from cloud.domain.carbon_shop import OrderState, ProjectFilter, ProjectKind
from cloud.domain.footprint import BOUNDS, DIET_KG, DIET_SOURCE, FACTORS, Diet
from cloud.domain.payments import CURRENCY_EXPONENTS
from cloud.services.carbon_shop import ShopConflict, ShopNotFound, ShopService

BROWSE_ROLES = frozenset({*ANYONE, *SHOP_ROLES, Role.ADMIN})
SHOPPER_ROLES = frozenset({Role.BUYER, Role.HOMEOWNER, Role.ADMIN})
FINAL_STATES = (OrderState.COMPLETE.value, OrderState.CANCELLED.value, OrderState.EXPIRED.value)
ORDER_POLL_MS = 1_000  # the order page polls its order until it is final

router = APIRouter()


def _nav(p: Principal) -> dict[str, bool]:
    return {
        "shopper": p.role in SHOPPER_ROLES,
        "home": p.role in (Role.HOMEOWNER, Role.ADMIN),
        "fleet": p.role not in (Role.HOMEOWNER, *SHOP_ROLES),
    }


def _page(
    ctx: ApiContext, request: Request, p: Principal, name: str, data: dict[str, Any]
) -> Response:
    status = data.pop("status", 200)
    return ctx.templates.TemplateResponse(
        request,
        name,
        {"who": p, "nav": _nav(p), "exponents": CURRENCY_EXPONENTS, **data},
        status_code=status,
    )


def _shop(ctx: ApiContext) -> ShopService | None:
    return ctx.shop


def _not_running(ctx: ApiContext, request: Request) -> Response:
    return _message(ctx, request, 503, "Not running", "the carbon shop is not running here")


def _int_arg(raw: str | None, label: str, errors: list[str]) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"{label} must be a whole number")
        return None
    if value < 0:
        errors.append(f"{label} must not be negative")
        return None
    return value


@router.get("/shop", response_class=HTMLResponse, include_in_schema=False)
async def shop_page(
    request: Request,
    ctx: CtxDep,
    kind: str | None = None,
    country: str | None = None,
    vintage: str | None = None,
    max_price: Annotated[str | None, Query(description="major units per tonne")] = None,
    standard: str | None = None,
    own_solar: str | None = None,
) -> Response:
    """Search the shop: projects fitting the filters, their lots and prices."""
    p = await _gate(ctx, request, BROWSE_ROLES, "browse the carbon shop")
    if isinstance(p, Response):
        return p
    shop = _shop(ctx)
    if shop is None:
        return _not_running(ctx, request)
    errors: list[str] = []
    pkind = None
    if kind:
        try:
            pkind = ProjectKind(kind)
        except ValueError:
            errors.append(f"unknown project type {kind!r}")
    cc = (country or "").strip().upper() or None
    if cc is not None and (len(cc) != 2 or not cc.isalpha()):
        errors.append("country is a two-letter ISO 3166 code, e.g. BR")
        cc = None
    year = _int_arg(vintage, "vintage", errors)
    price = None
    if max_price and max_price.strip():
        try:
            # Major units with at most two decimals, kept as integer minor units.
            major, _, minor = max_price.strip().partition(".")
            if len(minor) > 2 or not (major or minor):
                raise ValueError
            price = int(major or "0") * 100 + int((minor + "00")[:2])
        except ValueError:
            errors.append("max price is an amount like 25 or 25.50")
    solar = {"only": True, "exclude": False}.get(own_solar or "")
    f = ProjectFilter(pkind, cc, year, price, (standard or "").strip() or None, solar)
    views = [] if errors else await shop.search(f)
    return _page(
        ctx,
        request,
        p,
        "shop.html",
        {
            "projects": views,
            "kinds": [k.value for k in ProjectKind],
            "q": {
                "kind": kind or "",
                "country": country or "",
                "vintage": vintage or "",
                "max_price": max_price or "",
                "standard": standard or "",
                "own_solar": own_solar or "",
            },
            "errors": errors,
            "status": 400 if errors else 200,
        },
    )


@router.get("/shop/projects/{project_id}", response_class=HTMLResponse, include_in_schema=False)
async def project_page(request: Request, project_id: str, ctx: CtxDep) -> Response:
    """One project: details, lots with "add to basket", and its chain-of-custody report."""
    p = await _gate(ctx, request, BROWSE_ROLES, "browse the carbon shop")
    if isinstance(p, Response):
        return p
    shop = _shop(ctx)
    if shop is None:
        return _not_running(ctx, request)
    try:
        view = await shop.project(project_id)
        custody = await shop.custody(project_id)
    except ShopNotFound as exc:
        return _message(ctx, request, 404, "Not found", str(exc))
    # Shoppers may subscribe: packages sized to their footprint, beneficiary their name.
    pk, beneficiary = None, ""
    if p.role in SHOPPER_ROLES:
        pk = await footprint_packages(ctx, p.account_id)
        account = await ctx.accounts.get_account_by_id(p.account_id)
        beneficiary = (account.display_name if account else "") or p.email or ""
    return _page(
        ctx,
        request,
        p,
        "shop_project.html",
        {"v": view, "custody": custody, "pk": pk, "beneficiary": beneficiary},
    )


@router.get("/shop/checkout", response_class=HTMLResponse, include_in_schema=False)
async def checkout_page(request: Request, ctx: CtxDep) -> Response:
    """The basket, the beneficiary and reason, and the sandbox payment step."""
    p = await _gate(ctx, request, SHOPPER_ROLES, "buy carbon credits")
    if isinstance(p, Response):
        return p
    account = await ctx.accounts.get_account_by_id(p.account_id)
    name = (account.display_name if account else "") or p.email or ""
    return _page(ctx, request, p, "shop_checkout.html", {"beneficiary": name})


@router.get("/shop/orders", response_class=HTMLResponse, include_in_schema=False)
async def orders_page(request: Request, ctx: CtxDep) -> Response:
    """The caller's orders, newest first."""
    p = await _gate(ctx, request, SHOPPER_ROLES, "read shop orders")
    if isinstance(p, Response):
        return p
    shop = _shop(ctx)
    if shop is None:
        return _not_running(ctx, request)
    orders = list(reversed(await shop.orders(p.account_id)))
    subs = [] if ctx.subscriptions is None else await ctx.subscriptions.of_buyer(p.account_id)
    names = {v.project.project_id: v.project.name for v in await shop.search(ProjectFilter())}
    return _page(
        ctx,
        request,
        p,
        "shop_orders.html",
        {"orders": orders, "subscriptions": subs, "project_names": names},
    )


async def _own_order(ctx: ApiContext, shop: ShopService, p: Principal, order_id: str) -> Any:
    """The order if it is the caller's (admins: any); None for unknown and someone else's alike."""
    try:
        order = await shop.order(order_id)
    except ShopNotFound:
        return None
    if p.role is not Role.ADMIN and order.buyer_account_id != p.account_id:
        return None
    return order


@router.get("/shop/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
async def order_page(request: Request, order_id: str, ctx: CtxDep) -> Response:
    """One order; the page follows its state until it is final."""
    p = await _gate(ctx, request, SHOPPER_ROLES, "read shop orders")
    if isinstance(p, Response):
        return p
    shop = _shop(ctx)
    if shop is None:
        return _not_running(ctx, request)
    order = await _own_order(ctx, shop, p, order_id)
    if order is None:
        return _message(ctx, request, 404, "Not found", f"order {order_id} does not exist")
    return _page(
        ctx,
        request,
        p,
        "shop_order.html",
        {
            "o": order,
            "kg": sum(ln.kg for ln in order.lines),
            "final": order.state in FINAL_STATES,
            "poll_ms": ORDER_POLL_MS,
        },
    )


@router.get(
    "/shop/orders/{order_id}/statement", response_class=HTMLResponse, include_in_schema=False
)
async def statement_page(request: Request, order_id: str, ctx: CtxDep) -> Response:
    """The printable retirement statement of a complete order."""
    p = await _gate(ctx, request, SHOPPER_ROLES, "read shop orders")
    if isinstance(p, Response):
        return p
    shop = _shop(ctx)
    if shop is None:
        return _not_running(ctx, request)
    if await _own_order(ctx, shop, p, order_id) is None:
        return _message(ctx, request, 404, "Not found", f"order {order_id} does not exist")
    try:
        st = await shop.retirement_statement(order_id)
    except ShopConflict as exc:
        return _message(ctx, request, 409, "No statement yet", str(exc))
    payment = None
    if ctx.payments is not None and st.get("payment_id"):
        payment = await ctx.payments.get(st["payment_id"])
    return _page(ctx, request, p, "shop_statement.html", {"st": st, "payment": payment})


@router.get("/footprint", response_class=HTMLResponse, include_in_schema=False)
async def footprint_page(request: Request, ctx: CtxDep) -> Response:
    """The footprint calculator, the baseline and the footprint-vs-offsets dashboard."""
    p = await _gate(ctx, request, SHOPPER_ROLES, "keep a footprint")
    if isinstance(p, Response):
        return p
    return _page(
        ctx,
        request,
        p,
        "footprint.html",
        {
            "bounds": BOUNDS,
            "diets": [(d.value, DIET_KG[d]) for d in Diet],
            "diet_source": DIET_SOURCE,
            "factors": FACTORS,
        },
    )
