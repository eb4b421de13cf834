"""The retail carbon shop over HTTP (docs/carbon-shop.md): search projects, read a project's
lots and chain of custody, register projects and lots (providers), check out, read one's orders
and retirement statements.

Owns: those routes and their 4xx answers. Everyone signed in may browse; providers (and admins)
register projects, and only a project's provider (or an admin) adds its lots; buyers,
homeowners and admins check out and see their own orders (admins: every order). The rules are
in cloud.services.carbon_shop and cloud.domain.carbon_shop. Without a shop in the context the
routes answer 503; without a payment provider a checkout is 503 (and reserves nothing).

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, SHOP_ROLES, CtxDep, refuse_unverified_email, require
from cloud.auth import Principal, Role
from cloud.domain.carbon_shop import ProjectFilter, ProjectKind
from cloud.services.carbon_shop import (
    LedgerUnavailable,
    PaymentUnavailable,
    ProjectView,
    ShopConflict,
    ShopForbidden,
    ShopInvalid,
    ShopNotFound,
    ShopService,
)
from cloud.storage.carbon_store import StoredLot, StoredOrder

SIGNED_IN = (*ANYONE, *SHOP_ROLES)
PROVIDERS = (Role.PROVIDER,)
SHOPPERS = (Role.BUYER, Role.HOMEOWNER)


class ProjectRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(min_length=1, max_length=32)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")
    standard: str = Field(min_length=1, max_length=100)
    verifier: str = Field(min_length=1, max_length=200)
    serial_prefix: str = Field(min_length=1, max_length=40)
    vintage: int
    start_date: str | None = Field(default=None, description="YYYY-MM-DD")
    end_date: str | None = Field(default=None, description="YYYY-MM-DD")
    description: str = Field(default="", max_length=5000)


class LotRequest(BaseModel):
    serials: str = Field(min_length=3, max_length=80, description="prefix-start..end, one per kg")
    price_minor_per_t: int = Field(description="minor units of the currency per tonne CO2e")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217")


class ProjectStatusRequest(BaseModel):
    status: str = Field(
        description="retired: no new lots, what is listed still sells; withdrawn: off the shop"
    )
    reason: str = Field(default="", max_length=500)


class OrderLineRequest(BaseModel):
    lot_id: str = Field(min_length=1, max_length=32)
    kg: int = Field(description="whole kg CO2e, > 0")


class OrderRequest(BaseModel):
    lines: list[OrderLineRequest] = Field(min_length=1, max_length=50)
    currency: str = Field(min_length=3, max_length=3)
    beneficiary: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=500)
    retire_now: bool = Field(
        default=True,
        description="retire the units as soon as the payment succeeds; false: the paid order "
        "waits (placed) until POST .../retire",
    )


class RetireRequest(BaseModel):
    beneficiary: str | None = Field(
        default=None, min_length=1, max_length=200, description="default: the order's"
    )
    reason: str | None = Field(default=None, max_length=500)


class LotPublic(BaseModel):
    lot_id: str
    project_id: str
    serials: str
    kg: int
    available_kg: int
    price_minor_per_t: int
    currency: str
    created_ms: int
    certificate_id: str | None


class ProjectPublic(BaseModel):
    project_id: str
    provider_account_id: str
    name: str
    kind: str
    country: str
    standard: str
    verifier: str
    serial_prefix: str
    start_date: str | None
    end_date: str | None
    vintage: int
    status: str
    description: str
    created_ms: int
    available_kg: int
    lots: list[LotPublic]


class OrderLinePublic(BaseModel):
    lot_id: str
    serial_start: int
    serial_end: int
    kg: int
    price_minor: int


class OrderPublic(BaseModel):
    order_id: str
    buyer_account_id: str
    state: str
    currency: str
    total_minor: int
    created_ms: int
    expires_ms: int
    payment_id: str | None
    beneficiary: str
    reason: str
    updated_ms: int
    retire_on_payment: bool
    lines: list[OrderLinePublic]


def _lot(prefix: str, lot: StoredLot) -> LotPublic:
    return LotPublic(
        lot_id=lot.lot_id,
        project_id=lot.project_id,
        serials=f"{lot.prefix(prefix)}-{lot.serial_start}..{lot.serial_end}",
        kg=lot.kg,
        available_kg=lot.available_kg,
        price_minor_per_t=lot.price_minor_per_t,
        currency=lot.currency,
        created_ms=lot.created_ms,
        certificate_id=lot.certificate_id,
    )


def _project(v: ProjectView) -> ProjectPublic:
    p = v.project
    return ProjectPublic(
        project_id=p.project_id,
        provider_account_id=p.provider_account_id,
        name=p.name,
        kind=p.kind,
        country=p.country,
        standard=p.standard,
        verifier=p.verifier,
        serial_prefix=p.serial_prefix,
        start_date=p.start_date,
        end_date=p.end_date,
        vintage=p.vintage,
        status=p.status,
        description=p.description,
        created_ms=p.created_ms,
        available_kg=v.available_kg,
        lots=[_lot(p.serial_prefix, lot) for lot in v.lots],
    )


def _order(o: StoredOrder) -> OrderPublic:
    return OrderPublic(
        order_id=o.order_id,
        buyer_account_id=o.buyer_account_id,
        state=o.state,
        currency=o.currency,
        total_minor=o.total_minor,
        created_ms=o.created_ms,
        expires_ms=o.expires_ms,
        payment_id=o.payment_id,
        beneficiary=o.beneficiary,
        reason=o.reason,
        updated_ms=o.updated_ms,
        retire_on_payment=bool(o.retire_on_payment),
        lines=[
            OrderLinePublic(
                lot_id=ln.lot_id,
                serial_start=ln.serial_start,
                serial_end=ln.serial_end,
                kg=ln.kg,
                price_minor=ln.price_minor,
            )
            for ln in o.lines
        ],
    )


def _shop(ctx: CtxDep) -> ShopService:
    if ctx.shop is None:
        raise HTTPException(503, "the carbon shop is not running in this process")
    return ctx.shop


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, ShopNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, ShopForbidden):
        return HTTPException(403, str(exc))
    if isinstance(exc, ShopConflict):
        return HTTPException(409, str(exc))
    if isinstance(exc, (PaymentUnavailable, LedgerUnavailable)):
        return HTTPException(503, str(exc))
    return HTTPException(400, str(exc))


SHOP_ERRORS = (
    ShopNotFound,
    ShopForbidden,
    ShopConflict,
    ShopInvalid,
    PaymentUnavailable,
    LedgerUnavailable,
)

router = APIRouter()


@router.get("/api/v1/shop/projects", response_model=list[ProjectPublic], tags=["shop"])
async def search_projects(
    ctx: CtxDep,
    _p: Annotated[Principal, Depends(require(*SIGNED_IN, action="browse the shop"))],
    kind: ProjectKind | None = None,
    country: Annotated[str | None, Query(min_length=2, max_length=2)] = None,
    vintage: Annotated[int | None, Query(ge=1900, le=3000)] = None,
    max_price_minor: Annotated[int | None, Query(ge=0, le=10**12)] = None,
    standard: Annotated[str | None, Query(max_length=100)] = None,
    own_solar: bool | None = None,
) -> list[ProjectPublic]:
    """Active projects that fit every given filter (price: a lot with units left at or under
    `max_price_minor` per tonne), oldest first, with their lots."""
    f = ProjectFilter(kind, country, vintage, max_price_minor, standard, own_solar)
    return [_project(v) for v in await _shop(ctx).search(f)]


@router.get("/api/v1/shop/projects/{project_id}", response_model=ProjectPublic, tags=["shop"])
async def get_project(
    project_id: str,
    ctx: CtxDep,
    _p: Annotated[Principal, Depends(require(*SIGNED_IN, action="browse the shop"))],
) -> ProjectPublic:
    """One project with its lots (404 if unknown)."""
    try:
        return _project(await _shop(ctx).project(project_id))
    except SHOP_ERRORS as exc:
        raise _http(exc) from None


@router.get("/api/v1/shop/projects/{project_id}/custody", tags=["shop"])
async def custody(
    project_id: str,
    ctx: CtxDep,
    _p: Annotated[Principal, Depends(require(*SIGNED_IN, action="browse the shop"))],
) -> dict[str, Any]:
    """The project's chain of custody: registration, standard, verifier, serials, and every
    reservation, placement, release and retirement of its units."""
    try:
        return await _shop(ctx).custody(project_id)
    except SHOP_ERRORS as exc:
        raise _http(exc) from None


@router.post("/api/v1/shop/projects", response_model=ProjectPublic, status_code=201, tags=["shop"])
async def register_project(
    body: ProjectRequest,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*PROVIDERS, action="register offset projects"))],
) -> ProjectPublic:
    """Register an offset project of the calling provider (active at once)."""
    try:
        project = await _shop(ctx).register_project(p.account_id, **body.model_dump())
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    return _project(ProjectView(project, ()))


@router.post(
    "/api/v1/shop/projects/{project_id}/status", response_model=ProjectPublic, tags=["shop"]
)
async def set_project_status(
    project_id: str,
    body: ProjectStatusRequest,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*PROVIDERS, action="change offset projects"))],
) -> ProjectPublic:
    """Retire or withdraw one of the caller's projects (admins: any). 400: unknown status;
    403: another provider's; 404: unknown; 409: not a change it may make (a withdrawn
    project stays withdrawn)."""
    shop = _shop(ctx)
    try:
        await shop.set_project_status(
            p.account_id, project_id, body.status, body.reason, admin=p.role is Role.ADMIN
        )
        return _project(await shop.project(project_id))
    except SHOP_ERRORS as exc:
        raise _http(exc) from None


@router.post(
    "/api/v1/shop/projects/{project_id}/lots",
    response_model=LotPublic,
    status_code=201,
    tags=["shop"],
)
async def add_lot(
    project_id: str,
    body: LotRequest,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*PROVIDERS, action="list offset lots"))],
) -> LotPublic:
    """A lot of the caller's project: serials `prefix-start..end` (one per kg), price per
    tonne in minor units, ISO 4217 currency."""
    shop = _shop(ctx)
    try:
        project = (await shop.project(project_id)).project
        lot = await shop.add_lot(
            p.account_id,
            project_id,
            serials=body.serials,
            price_minor_per_t=body.price_minor_per_t,
            currency=body.currency,
            admin=p.role is Role.ADMIN,
        )
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    return _lot(project.serial_prefix, lot)


@router.post("/api/v1/shop/orders", response_model=OrderPublic, status_code=201, tags=["shop"])
async def checkout(
    body: OrderRequest,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*SHOPPERS, action="buy carbon credits"))],
) -> OrderPublic:
    """Reserve every line or none, start the payment, and return the reserved order (it
    expires unless paid in time). 400: bad quantity or currency; 404: unknown lot; 409: not
    enough units (with how many are left); 503: no payment provider. 403: the caller's email
    address is not verified yet (self-registered accounts; cloud.services.registration)."""
    await refuse_unverified_email(ctx, p.account_id)
    try:
        order = await _shop(ctx).checkout(
            p.account_id,
            [(ln.lot_id, ln.kg) for ln in body.lines],
            body.currency,
            body.beneficiary,
            body.reason,
            retire_now=body.retire_now,
        )
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    return _order(order)


@router.post("/api/v1/shop/orders/{order_id}/retire", response_model=OrderPublic, tags=["shop"])
async def retire(
    order_id: str,
    body: RetireRequest,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*SHOPPERS, action="retire carbon credits"))],
) -> OrderPublic:
    """Retire a paid order's units now (an order bought with `retire_now: false`), for the
    beneficiary named here or at checkout. 404: not the caller's; 409: not paid and waiting
    (still reserved, already retired, released)."""
    buyer = None if p.role is Role.ADMIN else p.account_id
    try:
        order = await _shop(ctx).retire(buyer, order_id, body.beneficiary, body.reason)
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    return _order(order)


@router.get("/api/v1/shop/orders", response_model=list[OrderPublic], tags=["shop"])
async def my_orders(
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*SHOPPERS, action="read shop orders"))],
) -> list[OrderPublic]:
    """The caller's orders, oldest first."""
    return [_order(o) for o in await _shop(ctx).orders(p.account_id)]


async def _own_order(ctx: CtxDep, p: Principal, order_id: str) -> StoredOrder:
    try:
        order = await _shop(ctx).order(order_id)
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    if p.role is not Role.ADMIN and order.buyer_account_id != p.account_id:
        raise HTTPException(404, f"order {order_id} does not exist")
    return order


@router.get("/api/v1/shop/orders/{order_id}", response_model=OrderPublic, tags=["shop"])
async def get_order(
    order_id: str,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*SHOPPERS, action="read shop orders"))],
) -> OrderPublic:
    """One of the caller's orders (someone else's is the same 404 as an unknown one)."""
    return _order(await _own_order(ctx, p, order_id))


@router.get("/api/v1/shop/orders/{order_id}/statement", tags=["shop"])
async def statement(
    order_id: str,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*SHOPPERS, action="read shop orders"))],
) -> dict[str, Any]:
    """The retirement statement of a complete order: beneficiary, reason, serials, dates
    (409 while it is not complete)."""
    await _own_order(ctx, p, order_id)
    try:
        return await _shop(ctx).retirement_statement(order_id)
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
