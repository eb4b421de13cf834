"""Self-registration and email verification over HTTP (docs/carbon-shop.md, "Registration").

Owns: `POST /api/v1/register`, `POST /api/v1/register/resend`, `POST /api/v1/verify-email`,
and the pages `GET|POST /register`, `POST /register/resend`, `GET /verify-email`. None needs a
credential. The flow is cloud.services.registration's; these only speak HTTP.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Any, Literal

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from cloud.api.accounts_routes import TOKEN_TTL_S, AccountPublic, account_public, set_session
from cloud.api.deps import ApiContext, CtxDep
from cloud.domain.identity import AccountStatus
from cloud.services.registration import EmailTokenError, RegistrationError, RegistrationService

RESEND_ANSWER = (
    "if an account with that address is waiting for verification, a new link is on its way"
)


class RegisterRequest(BaseModel):
    """A new shop account: a plain buyer (affiliation none) or an offset project provider."""

    email: str = Field(max_length=320)
    display_name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=1024)
    account_type: Literal["individual", "business"] = "individual"
    business_name: str = Field("", max_length=200, description="required for a business")
    business_id: str = Field(
        "", max_length=64, description="company or VAT number; required for a business"
    )
    affiliation: Literal["none", "provider"] = "none"


class RegisterResult(BaseModel):
    """The stored account, and whether its verification mail went out."""

    account: AccountPublic
    mail_sent: bool
    message: str


class ResendRequest(BaseModel):
    email: str = Field(max_length=320)


class ResendResult(BaseModel):
    message: str


class VerifyRequest(BaseModel):
    token: str = Field(max_length=500)


router = APIRouter()


def _registration(ctx: ApiContext) -> RegistrationService:
    if ctx.registration is None:
        raise HTTPException(503, "registration is not running in this process")
    return ctx.registration


def _outcome(account_status: AccountStatus, email: str, mail_error: str | None) -> str:
    then = (
        "open it to verify your address; then you can buy."
        if account_status is AccountStatus.APPROVED
        else "open it to verify your address; an approver will then review your account."
    )
    if mail_error is None:
        return f"account created: we sent a verification link to {email}; {then}"
    return (
        f"account created, but the verification mail to {email} could not be sent "
        f"({mail_error}); ask for it again later (POST /api/v1/register/resend)"
    )


@router.post(
    "/api/v1/register", response_model=RegisterResult, status_code=201, tags=["registration"]
)
async def register(body: RegisterRequest, ctx: CtxDep) -> RegisterResult:
    """Register: a plain buyer (affiliation none) is approved at once and buys once the email
    is verified; a provider waits for an approver. The account is stored before the mail is
    sent: `mail_sent` false means it exists but the mail failed (resend). 409: email taken;
    422: bad input (a business needs business_name and business_id)."""
    try:
        done = await _registration(ctx).register(**body.model_dump())
    except RegistrationError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return RegisterResult(
        account=account_public(done.account),
        mail_sent=done.mail_sent,
        message=_outcome(done.account.status, done.account.email, done.mail_error),
    )


@router.post(
    "/api/v1/register/resend", response_model=ResendResult, status_code=202, tags=["registration"]
)
async def resend(body: ResendRequest, ctx: CtxDep) -> ResendResult:
    """Send a new verification link. The answer is the same whether or not the address has an
    account (at most one mail a minute per address)."""
    await _registration(ctx).resend(body.email)
    return ResendResult(message=RESEND_ANSWER)


@router.post("/api/v1/verify-email", response_model=AccountPublic, tags=["registration"])
async def verify_email_api(body: VerifyRequest, ctx: CtxDep) -> AccountPublic:
    """Verify an email address with the link's token; 400 with the reason when the link is
    malformed, forged, expired or already used."""
    try:
        account = await _registration(ctx).verify(body.token)
    except EmailTokenError as exc:
        raise HTTPException(400, str(exc)) from None
    return account_public(account)


# pages


def _page(
    ctx: ApiContext,
    request: Request,
    title: str,
    message: str,
    *,
    status: int = 200,
    error: bool = False,
    resend_to: str = "",
) -> Response:
    return ctx.templates.TemplateResponse(
        request,
        "account_message.html",
        {"title": title, "message": message, "error": error, "resend_to": resend_to},
        status_code=status,
    )


def _form(
    ctx: ApiContext, request: Request, values: dict[str, Any], error: str | None, status: int
) -> Response:
    return ctx.templates.TemplateResponse(
        request, "register.html", {"v": values, "error": error}, status_code=status
    )


@router.get("/register", response_class=HTMLResponse, include_in_schema=False)
async def register_page(request: Request, ctx: CtxDep) -> Response:
    """The registration form."""
    return _form(ctx, request, {"account_type": "individual", "affiliation": "none"}, None, 200)


@router.post("/register", response_class=HTMLResponse, include_in_schema=False)
async def register_form(
    request: Request,
    ctx: CtxDep,
    email: str = Form(..., max_length=320),
    display_name: str = Form(..., max_length=200),
    password: str = Form(..., max_length=1024),
    account_type: str = Form("individual", max_length=16),
    business_name: str = Form("", max_length=200),
    business_id: str = Form("", max_length=64),
    affiliation: str = Form("none", max_length=16),
) -> Response:
    """Register from the form; then the "check your email" page (or the form again, with the
    reason)."""
    values = {
        "email": email,
        "display_name": display_name,
        "account_type": account_type,
        "business_name": business_name,
        "business_id": business_id,
        "affiliation": affiliation,
    }
    if len(password) < 8:
        return _form(ctx, request, values, "the password needs at least 8 characters", 422)
    try:
        done = await _registration(ctx).register(password=password, **values)
    except RegistrationError as exc:
        return _form(ctx, request, values, str(exc), exc.status)
    a = done.account
    if done.mail_sent:
        then = (
            "Open it to verify your address; then you can buy offsets."
            if a.status is AccountStatus.APPROVED
            else "Open it to verify your address; an approver will then review your account, "
            "and you can sign in once it is approved."
        )
        return _page(
            ctx,
            request,
            "Check your email",
            f"We sent a verification link to {a.email}. {then}",
            resend_to=a.email,
        )
    return _page(
        ctx,
        request,
        "Account created; the email did not go out",
        f"Your account exists, but the verification mail to {a.email} could not be sent "
        f"({done.mail_error}). Try sending it again in a moment.",
        error=True,
        resend_to=a.email,
    )


@router.post("/register/resend", response_class=HTMLResponse, include_in_schema=False)
async def resend_form(
    request: Request, ctx: CtxDep, email: str = Form(..., max_length=320)
) -> Response:
    """The "send it again" button of the check-your-email page."""
    await _registration(ctx).resend(email)
    return _page(
        ctx,
        request,
        "Check your email",
        RESEND_ANSWER[0].upper() + RESEND_ANSWER[1:] + ".",
        resend_to=email,
    )


@router.get("/verify-email", response_class=HTMLResponse, include_in_schema=False)
async def verify_email_page(request: Request, ctx: CtxDep, token: str = "") -> Response:
    """The link in the mail: verify, then sign an approved account in and send it to the shop
    (a provider waiting for approval gets a page saying so); 400 with the reason otherwise."""
    try:
        account = await _registration(ctx).verify(token[:500])
    except EmailTokenError as exc:
        return _page(ctx, request, "Email not verified", str(exc), status=400, error=True)
    if account.status is not AccountStatus.APPROVED:
        return _page(
            ctx,
            request,
            "Email verified",
            f"Thank you: {account.email} is verified. An approver will review your account; "
            "you can sign in once it is approved.",
        )
    response = RedirectResponse("/shop", status_code=303)
    set_session(
        response,
        await ctx.accounts.issue_token(account.account_id, TOKEN_TTL_S),
        secure=ctx.secure_cookies,
    )
    return response
