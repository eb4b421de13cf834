"""Payments: Stripe's webhook (public: its signature is the credential), the sandbox's "pay"
button for the demo, and the FX rates an admin enters.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, SHOP_ROLES, CtxDep, require
from cloud.auth import Principal, Role
from cloud.domain.payments import FxRate, PaymentError, SignatureError
from cloud.services.payments import NotFound, PaymentService, UnknownPayment

router = APIRouter()


def _payments(ctx: CtxDep) -> PaymentService:
    if ctx.payments is None:
        raise HTTPException(503, "payments are not configured in this process")
    return ctx.payments


class WebhookAnswer(BaseModel):
    received: bool = True
    outcome: str = Field(
        description="applied, duplicate, no_change, ignored, late_success or out_of_order"
    )


class CompleteBody(BaseModel):
    succeed: bool


class PaymentView(BaseModel):
    payment_id: str
    ref: str
    status: str
    amount_minor: int
    currency: str
    detail: str


class FxRateBody(BaseModel):
    base: str = Field(min_length=3, max_length=3, examples=["EUR"])
    quote: str = Field(min_length=3, max_length=3, examples=["USD"])
    rate_ppm: int = Field(gt=0, description="quote units per base unit, in millionths")
    as_of: date
    source: str = Field(min_length=1, max_length=100, examples=["ECB reference rate"])


@router.post("/api/v1/payments/stripe/webhook", tags=["payments"])
async def stripe_webhook(request: Request, ctx: CtxDep) -> WebhookAnswer:
    """Stripe's event delivery. Verified against the Stripe-Signature header with the
    endpoint secret; 400 with the reason when the signature is missing, wrong or stale, or the
    event is about a payment intent that is not ours (nothing is stored then). A duplicate
    delivery is answered 200 and changes nothing."""
    service = _payments(ctx)
    payload = await request.body()
    try:
        result = await service.stripe_webhook(payload, request.headers.get("stripe-signature"))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (SignatureError, UnknownPayment, PaymentError) as exc:
        raise HTTPException(400, str(exc)) from None
    return WebhookAnswer(outcome=result.outcome)


@router.post("/api/v1/payments/sandbox/{payment_id}/complete", tags=["payments"])
async def sandbox_complete(
    payment_id: str,
    body: CompleteBody,
    ctx: CtxDep,
    p: Annotated[
        Principal, Depends(require(*ANYONE, *SHOP_ROLES, action="complete a sandbox payment"))
    ],
) -> PaymentView:
    """The sandbox's "pay" (or "decline") button: the buyer who owns the payment, or an admin.
    404 when the sandbox is not the provider, or the payment is not the caller's."""
    service = _payments(ctx)
    try:
        await service.sandbox_complete(payment_id, body.succeed, p.account_id, p.role is Role.ADMIN)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except PaymentError as exc:
        raise HTTPException(400, str(exc)) from None
    got = await service.get(payment_id)
    assert got is not None
    return PaymentView(
        payment_id=got.payment_id,
        ref=got.ref,
        status=got.status.value,
        amount_minor=got.amount_minor,
        currency=got.currency,
        detail=got.detail,
    )


@router.get("/api/v1/fx-rates", tags=["payments"])
async def fx_rates(
    ctx: CtxDep,
    _p: Annotated[Principal, Depends(require(*ANYONE, *SHOP_ROLES, action="read FX rates"))],
    base: Annotated[str | None, Query(min_length=3, max_length=3)] = None,
    quote: Annotated[str | None, Query(min_length=3, max_length=3)] = None,
) -> list[FxRateBody]:
    """Stored rates, newest first per pair."""
    rates = await _payments(ctx).rates(base, quote)
    return [
        FxRateBody(base=r.base, quote=r.quote, rate_ppm=r.rate_ppm, as_of=r.as_of, source=r.source)
        for r in rates
    ]


@router.put("/api/v1/fx-rates", tags=["payments"])
async def put_fx_rate(
    body: FxRateBody,
    ctx: CtxDep,
    _p: Annotated[Principal, Depends(require(action="set FX rates"))],
) -> FxRateBody:
    """Store a rate for a pair and day (replacing that day's), with where it came from."""
    try:
        rate = FxRate(body.base, body.quote, body.rate_ppm, body.as_of, body.source.strip())
    except PaymentError as exc:
        raise HTTPException(422, str(exc)) from None
    await _payments(ctx).put_rate(rate)
    return body
