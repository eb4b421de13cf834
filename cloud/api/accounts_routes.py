"""People: login and logout, sign-up and approval of accounts, API keys, the login page.

Owns: the HTTP face of cloud.storage.accounts for accounts (sites, enrollment and batteries are
in sites_routes). Roles per route are in each `require(...)` (cloud.api.deps).

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, SHOP_ROLES, AccountsDep, CtxDep, require
from cloud.auth import SESSION_COOKIE, Principal, Role
from cloud.storage.accounts import LoginError

TOKEN_TTL_S = 12 * 3600


class LoginRequest(BaseModel):
    """Email and password."""

    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LoginResult(BaseModel):
    """A bearer token (also set as the session cookie)."""

    token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 type name
    expires_in: int = TOKEN_TTL_S


class AccountCreate(BaseModel):
    """Sign-up: the account waits for an approver."""

    email: str = Field(max_length=320)
    display_name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=1024)
    role: Literal["homeowner", "installer", "approver", "grid_operator"] = "homeowner"


class AccountPublic(BaseModel):
    """An account without secrets."""

    account_id: str
    email: str
    display_name: str
    role: str
    status: str
    # The profile self-registration records (cloud/api/registration_routes.py); accounts made
    # by an operator are individuals with no affiliation (providers: provider), verified.
    account_type: str = "individual"
    business_name: str = ""
    business_id: str = ""
    affiliation: str = "none"
    email_verified: bool = True


class AccountDecision(BaseModel):
    """An approver's decision on an account."""

    status: Literal["approved", "rejected"]
    reason: str = Field("", max_length=500)


class ApiKeyCreate(BaseModel):
    """A service credential for an existing (service) account."""

    account_id: str
    name: str = Field(min_length=1, max_length=100)


class ApiKeyCreated(BaseModel):
    """The full key, shown once."""

    key: str


def account_public(a) -> AccountPublic:  # type: ignore[no-untyped-def]
    return AccountPublic(
        account_id=a.account_id,
        email=a.email,
        display_name=a.display_name,
        role=str(a.role),
        status=str(a.status),
        account_type=a.account_type,
        business_name=a.business_name,
        business_id=a.business_id,
        affiliation=a.affiliation,
        email_verified=a.email_verified,
    )


router = APIRouter()


def set_session(response: Response, token: str, *, secure: bool) -> None:
    """Set the session cookie (HttpOnly, SameSite=Lax; Secure when the deployment says so)."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=TOKEN_TTL_S,
        httponly=True,
        samesite="lax",
        secure=secure,
    )


@router.post("/api/v1/login", response_model=LoginResult, tags=["accounts"])
async def login(body: LoginRequest, response: Response, ctx: CtxDep) -> LoginResult:
    """Exchange email and password for a bearer token (also set as a session cookie)."""
    try:
        token = await ctx.accounts.login(body.email, body.password, TOKEN_TTL_S)
    except LoginError as exc:
        raise HTTPException(401, str(exc)) from None
    set_session(response, token, secure=ctx.secure_cookies)
    return LoginResult(token=token)


@router.post("/api/v1/logout", status_code=204, tags=["accounts"])
async def logout(
    request: Request,
    response: Response,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, *SHOP_ROLES, action="log out"))],
) -> None:
    """Revoke the token used for this request and clear the cookie."""
    header = request.headers.get("authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.cookies.get(SESSION_COOKIE, "")
    if p.via != "api_key" and token:
        await accounts.revoke_token(token)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/api/v1/me", response_model=AccountPublic, tags=["accounts"])
async def me(
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, *SHOP_ROLES, action="read its account"))],
) -> AccountPublic:
    """The account making the request."""
    account = await accounts.get_account_by_id(p.account_id)
    if account is None:  # the legacy admin token has no account row
        return AccountPublic(
            account_id=p.account_id,
            email=p.email,
            display_name="admin",
            role=str(p.role),
            status="approved",
        )
    return account_public(account)


@router.post("/api/v1/accounts", response_model=AccountPublic, status_code=201, tags=["accounts"])
async def sign_up(body: AccountCreate, accounts: AccountsDep) -> AccountPublic:
    """Create an account; it waits for an approver before it can log in."""
    try:
        account = await accounts.create_account(
            body.email, body.display_name, body.password, body.role, "pending"
        )
    except ValueError as exc:
        raise HTTPException(409 if "exists" in str(exc) else 422, str(exc)) from None
    return account_public(account)


@router.get(
    "/api/v1/accounts",
    response_model=list[AccountPublic],
    tags=["accounts"],
    dependencies=[Depends(require(Role.APPROVER, action="list accounts"))],
)
async def list_accounts(accounts: AccountsDep, status: str | None = None) -> list[AccountPublic]:
    """Accounts, optionally by status (the approval queue: status=pending)."""
    try:
        return [account_public(a) for a in await accounts.list_accounts(status)]
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post(
    "/api/v1/accounts/{account_id}/status",
    response_model=AccountPublic,
    tags=["accounts"],
)
async def decide_account(
    account_id: str,
    body: AccountDecision,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.APPROVER, action="approve accounts"))],
) -> AccountPublic:
    """Approve or reject a waiting account (a reason is required to reject; rejecting
    revokes its tokens and keys). Every decision is logged with who, when and why."""
    if body.status == "rejected" and not body.reason.strip():
        raise HTTPException(422, "a reason is required to reject an account")
    try:
        account = await accounts.decide_account(
            account_id, body.status, p.account_id, body.reason.strip()
        )
    except KeyError:
        raise HTTPException(404, f"account {account_id!r} does not exist") from None
    return account_public(account)


@router.post(
    "/api/v1/api-keys",
    response_model=ApiKeyCreated,
    status_code=201,
    tags=["accounts"],
    dependencies=[Depends(require(action="create API keys"))],
)
async def create_api_key(body: ApiKeyCreate, accounts: AccountsDep) -> ApiKeyCreated:
    """An API key for a service account (admin only); shown once."""
    if await accounts.get_account_by_id(body.account_id) is None:
        raise HTTPException(404, f"account {body.account_id!r} does not exist")
    return ApiKeyCreated(key=await accounts.create_api_key(body.account_id, body.name))


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page(request: Request, ctx: CtxDep, token: str | None = None) -> Response:
    """The login form; `?token=` turns a bearer token into a session (the demo's link)."""
    if token:
        if await ctx.accounts.resolve_token(token) is None:
            return ctx.templates.TemplateResponse(
                request,
                "login.html",
                {"error": "that login link has expired"},
                status_code=401,
            )
        response = RedirectResponse("/", status_code=303)
        set_session(response, token, secure=ctx.secure_cookies)
        return response
    return ctx.templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(
    request: Request, ctx: CtxDep, email: str = Form(...), password: str = Form(...)
) -> Response:
    """Form login for the web pages."""
    try:
        token = await ctx.accounts.login(email, password, TOKEN_TTL_S)
    except LoginError as exc:
        return ctx.templates.TemplateResponse(
            request, "login.html", {"error": str(exc)}, status_code=401
        )
    response = RedirectResponse("/", status_code=303)
    set_session(response, token, secure=ctx.secure_cookies)
    return response
