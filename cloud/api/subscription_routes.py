"""Monthly offset subscriptions over HTTP (docs/carbon-shop.md, "Subscriptions"): a buyer
subscribes to an amount of a project every month, lists its subscriptions with each month's
order, and cancels.

Owns: those routes and their 4xx answers. Buyers and homeowners (and admins) subscribe; a
subscription is only ever its buyer's (someone else's is the same 404 as an unknown one).

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import CtxDep, refuse_unverified_email, require
from cloud.auth import Principal, Role
from cloud.domain.footprint import AVERAGE_US_KG
from cloud.domain.shop_subscriptions import packages
from cloud.services.carbon_shop import ShopInvalid, ShopNotFound
from cloud.services.shop_subscriptions import SubscriptionService, SubscriptionView

router = APIRouter()
Shopper = Annotated[
    Principal, Depends(require(Role.BUYER, Role.HOMEOWNER, action="subscribe to offsets"))
]


class SubscriptionRequest(BaseModel):
    project_id: str = Field(min_length=1, max_length=32)
    kg_per_month: int = Field(description="whole kg CO2e bought and retired every month, > 0")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217: the lots' currency")
    beneficiary: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=500)


class RunPublic(BaseModel):
    period: str = Field(description="YYYY-MM (UTC)")
    order_id: str | None = Field(description="the month's order; None: skipped (see detail)")
    detail: str
    at_ms: int


class SubscriptionPublic(BaseModel):
    subscription_id: str
    project_id: str
    kg_per_month: int
    currency: str
    beneficiary: str
    reason: str
    state: str
    created_ms: int
    runs: list[RunPublic]


class PackagePublic(BaseModel):
    key: str
    label: str
    share_pct: int
    kg_per_month: int


class PackagesPublic(BaseModel):
    footprint_kg_per_year: int
    from_baseline: bool = Field(description="false: no saved footprint, the 20 t US average")
    packages: list[PackagePublic]


async def footprint_packages(ctx: CtxDep, account_id: str) -> PackagesPublic:
    """The monthly packages for an account: shares of its saved footprint baseline (or of the
    calculator's average when it has none)."""
    baseline = None
    if ctx.footprint is not None:
        view = await ctx.footprint.view(account_id)
        baseline = None if view.baseline is None else view.baseline.total_kg
    kg = AVERAGE_US_KG if baseline is None else baseline
    return PackagesPublic(
        footprint_kg_per_year=kg,
        from_baseline=baseline is not None,
        packages=[
            PackagePublic(
                key=x.key, label=x.label, share_pct=x.share_pct, kg_per_month=x.kg_per_month
            )
            for x in packages(kg)
        ],
    )


def _public(v: SubscriptionView) -> SubscriptionPublic:
    s = v.subscription
    return SubscriptionPublic(
        subscription_id=s.subscription_id,
        project_id=s.project_id,
        kg_per_month=s.kg_per_month,
        currency=s.currency,
        beneficiary=s.beneficiary,
        reason=s.reason,
        state=s.state,
        created_ms=s.created_ms,
        runs=[
            RunPublic(period=r.period, order_id=r.order_id, detail=r.detail, at_ms=r.at_ms)
            for r in v.runs
        ],
    )


def _service(ctx: CtxDep) -> SubscriptionService:
    if ctx.subscriptions is None:
        raise HTTPException(503, "the carbon shop is not running in this process")
    return ctx.subscriptions


@router.post(
    "/api/v1/shop/subscriptions",
    response_model=SubscriptionPublic,
    status_code=201,
    tags=["shop"],
)
async def subscribe(body: SubscriptionRequest, ctx: CtxDep, p: Shopper) -> SubscriptionPublic:
    """Buy `kg_per_month` of the project every calendar month (UTC), starting with this month's
    order at once (it waits for its payment like any order; the runs say if a month was
    skipped and why). 400: bad amount, currency or project state; 403: email not verified;
    404: unknown project."""
    await refuse_unverified_email(ctx, p.account_id)
    try:
        view = await _service(ctx).create(
            p.account_id,
            body.project_id,
            body.kg_per_month,
            body.currency,
            body.beneficiary,
            body.reason,
        )
    except ShopNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ShopInvalid as exc:
        raise HTTPException(400, str(exc)) from None
    return _public(view)


@router.get("/api/v1/shop/packages", response_model=PackagesPublic, tags=["shop"])
async def my_packages(ctx: CtxDep, p: Shopper) -> PackagesPublic:
    """Monthly amounts sized to a share (25, 50, 100 %) of the caller's yearly footprint: its
    saved baseline (/footprint), else the 20 t US average. Subscribe with one's kg_per_month."""
    return await footprint_packages(ctx, p.account_id)


@router.get("/api/v1/shop/subscriptions", response_model=list[SubscriptionPublic], tags=["shop"])
async def my_subscriptions(ctx: CtxDep, p: Shopper) -> list[SubscriptionPublic]:
    """The caller's subscriptions, oldest first, each with its months (newest first)."""
    return [_public(v) for v in await _service(ctx).of_buyer(p.account_id)]


@router.delete(
    "/api/v1/shop/subscriptions/{subscription_id}",
    response_model=SubscriptionPublic,
    tags=["shop"],
)
async def cancel(subscription_id: str, ctx: CtxDep, p: Shopper) -> SubscriptionPublic:
    """Stop renewing; this month's order stays as it is."""
    try:
        return _public(await _service(ctx).cancel(p.account_id, subscription_id))
    except ShopNotFound as exc:
        raise HTTPException(404, str(exc)) from None
