"""A home's market payment credits over HTTP: the balance, topping up through the payment port
and redeeming credits back to money, each with the flat bank-transfer fee (docs/market.md,
"Payment credits").

Owns: those routes and their 4xx answers. The site's homeowner tops up and redeems; admins may
read any site's credits. Someone else's site and an unknown one are the same 404. Without a
ledger or a payment port the routes answer 503.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import AccountsDep, CtxDep, refuse_unverified_email, require
from cloud.auth import Principal, Role, visible_site_ids
from cloud.services.credits import (
    CreditConflict,
    CreditInvalid,
    CreditService,
    CreditsUnavailable,
)
from cloud.storage.accounts import AccountStore
from cloud.storage.credits_store import CreditTransfer

router = APIRouter()
Owner = Annotated[Principal, Depends(require(Role.HOMEOWNER, action="move market credits"))]
Reader = Annotated[
    Principal, Depends(require(Role.HOMEOWNER, Role.ADMIN, action="read market credits"))
]


class TopUpRequest(BaseModel):
    amount_minor: int = Field(description="what the homeowner pays, minor units; the fee comes off")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217: the market's")


class RedeemRequest(BaseModel):
    amount_minor: int = Field(description="credits taken off the site; the fee comes off them")
    currency: str = Field(min_length=3, max_length=3)
    payout_to: str = Field(
        min_length=1,
        max_length=100,
        description="where the money goes: a bank account (sandbox) or the homeowner's "
        "connected Stripe account id (acct_..., Stripe)",
    )


class TransferPublic(BaseModel):
    transfer_id: str
    kind: str
    site_id: str
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    state: str
    payment_id: str | None
    payout_id: str | None
    ledger_seq: int | None
    return_seq: int | None
    detail: str
    created_ms: int
    updated_ms: int


class TopUpStarted(BaseModel):
    transfer: TransferPublic
    payment_id: str
    client_secret: str | None = Field(description="Stripe.js pays with it; None in the sandbox")


class CreditsPublic(BaseModel):
    site_id: str
    currency: str
    balance_minor: int
    held_minor: int = Field(description="held by the site's bids and unsettled trades")
    free_minor: int
    bank_transfer_fee_minor: int
    transfers: list[TransferPublic]


def _public(t: CreditTransfer) -> TransferPublic:
    return TransferPublic(
        transfer_id=t.transfer_id,
        kind=t.kind,
        site_id=t.site_id,
        currency=t.currency,
        gross_minor=t.gross_minor,
        fee_minor=t.fee_minor,
        net_minor=t.net_minor,
        state=t.state,
        payment_id=t.payment_id,
        payout_id=t.payout_id,
        ledger_seq=t.ledger_seq,
        return_seq=t.return_seq,
        detail=t.detail,
        created_ms=t.created_ms,
        updated_ms=t.updated_ms,
    )


def _credits(ctx: CtxDep) -> CreditService:
    if ctx.credits is None:
        raise HTTPException(503, "market credits need the ledger and a payment provider here")
    return ctx.credits


async def _site(accounts: AccountStore, p: Principal, site_id: str) -> None:
    visible = await visible_site_ids(accounts, p)
    if (visible is not None and site_id not in visible) or await accounts.get_site(site_id) is None:
        raise HTTPException(404, f"no site {site_id}")


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, CreditConflict):
        return HTTPException(409, str(exc))
    if isinstance(exc, CreditsUnavailable):
        return HTTPException(503, str(exc))
    return HTTPException(400, str(exc))


ERRORS = (CreditInvalid, CreditConflict, CreditsUnavailable)


@router.get("/api/v1/sites/{site_id}/credits", response_model=CreditsPublic, tags=["market"])
async def credits(site_id: str, ctx: CtxDep, accounts: AccountsDep, p: Reader) -> CreditsPublic:
    """The site's payment credits (balance, held by bids, free) and its transfers, newest
    first."""
    await _site(accounts, p, site_id)
    service = _credits(ctx)
    b = service.balance(site_id)
    return CreditsPublic(
        site_id=site_id,
        currency=b.currency,
        balance_minor=b.balance_minor,
        held_minor=b.committed_minor,
        free_minor=b.free_minor,
        bank_transfer_fee_minor=service.fee_minor,
        transfers=[_public(t) for t in await service.transfers(site_id)],
    )


@router.post(
    "/api/v1/sites/{site_id}/credits/top-ups",
    response_model=TopUpStarted,
    status_code=201,
    tags=["market"],
)
async def top_up(
    site_id: str, body: TopUpRequest, ctx: CtxDep, accounts: AccountsDep, p: Owner
) -> TopUpStarted:
    """Buy credits: a payment of `amount_minor` is opened; when the provider confirms it, the
    amount less the bank-transfer fee is deposited (once). 400: bad amount or currency, or not
    more than the fee."""
    await _site(accounts, p, site_id)
    await refuse_unverified_email(ctx, p.account_id)
    try:
        t, started = await _credits(ctx).top_up(
            p.account_id, site_id, body.amount_minor, body.currency
        )
    except ERRORS as exc:
        raise _http(exc) from None
    return TopUpStarted(
        transfer=_public(t), payment_id=started.payment_id, client_secret=started.client_secret
    )


@router.post(
    "/api/v1/sites/{site_id}/credits/redemptions",
    response_model=TransferPublic,
    status_code=201,
    tags=["market"],
)
async def redeem(
    site_id: str, body: RedeemRequest, ctx: CtxDep, accounts: AccountsDep, p: Owner
) -> TransferPublic:
    """Cash credits: `amount_minor` comes off the site (a ledger WITHDRAWAL), the amount less
    the fee is paid out to `payout_to`. 409: not that many credits free, or the provider
    refused the payout (the credits are given back)."""
    await _site(accounts, p, site_id)
    try:
        t = await _credits(ctx).redeem(
            p.account_id, site_id, body.amount_minor, body.currency, body.payout_to
        )
    except ERRORS as exc:
        raise _http(exc) from None
    return _public(t)
