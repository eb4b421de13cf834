"""People and their sites: login, sign-up, approval of accounts, sites, API keys, login page.

Owns: the HTTP face of cloud.storage.accounts. Roles per route are in each `auth.require`.
"""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from cloud.api.schemas import device_identity
from cloud.auth import SESSION_COOKIE, Auth, Principal, Role, can_see_site, site_owner_filter
from cloud.pki import PkiError, check_csr
from cloud.services.device_credentials import DeviceCredentials
from cloud.storage.accounts import AccountStore, LoginError
from cloud.storage.batteries import BatteryStore, SiteBattery
from cloud.storage.claims import ClaimError, ClaimStore
from protocol import cose

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


class AccountDecision(BaseModel):
    """An approver's decision on an account."""

    status: Literal["approved", "rejected"]
    reason: str = Field("", max_length=500)


class SiteCreate(BaseModel):
    """A homeowner's site, created by an installer."""

    site_id: str = Field(min_length=1, max_length=64)
    owner_account_id: str
    name: str = Field(min_length=1, max_length=200)
    zone: str = Field("", max_length=64)


class BatteryIn(BaseModel):
    """A site's battery as the ledger models it (integers)."""

    usable_capacity_wh: int = Field(ge=0, le=10_000_000, description="0: no battery")
    soh_permille: int = Field(1000, ge=1, le=1000, description="state of health, permille")
    self_discharge_ppm_per_h: int = Field(0, ge=0, le=100_000)
    round_trip_permille: int = Field(900, ge=1, le=1000, description="round-trip efficiency")


class BatteryPublic(BatteryIn):
    """A registered battery, with who set it and when (Unix ms)."""

    site_id: str
    updated_by: str
    updated_ms: int


class SitePublic(BaseModel):
    """A site."""

    site_id: str
    owner_account_id: str
    name: str
    zone: str


class ApiKeyCreate(BaseModel):
    """A service credential for an existing (service) account."""

    account_id: str
    name: str = Field(min_length=1, max_length=100)


class ApiKeyCreated(BaseModel):
    """The full key, shown once."""

    key: str


def _account(a) -> AccountPublic:  # type: ignore[no-untyped-def]
    return AccountPublic(
        account_id=a.account_id,
        email=a.email,
        display_name=a.display_name,
        role=str(a.role),
        status=str(a.status),
    )


class ClaimCodeCreated(BaseModel):
    """A one-time code for the installer to type into `gridmint provision enroll`."""

    code: str
    site_id: str
    expires_in: int


class EnrollRequest(BaseModel):
    """What a Pi sends to join a site; the claim code is its credential."""

    claim_code: str = Field(min_length=8, max_length=40)
    public_key: str = Field(description="raw Ed25519 signing key, 64 hex digits")
    device_id: str | None = Field(None, description="proposed id; default: generated")
    capacity_w: int = Field(gt=0, le=10_000_000)
    zone: str = Field("", max_length=64)
    csr: str = Field(
        "",
        max_length=8192,
        description="PEM certificate request for the device's TLS key (needed for a TLS broker)",
    )


class EnrollResult(BaseModel):
    """The device's identity; it waits for an approver before its tokens count."""

    device_id: str
    site_id: str
    status: Literal["pending"] = "pending"
    deployment: str
    broker_url: str
    client_cert: str = Field("", description="PEM client certificate for the broker (CN = device)")
    ca_bundle: str = Field("", description="PEM CA certificate that signs the broker and devices")


def add_account_routes(
    app: FastAPI,
    accounts: AccountStore,
    auth: Auth,
    templates: Jinja2Templates,
    secure_cookies: bool,
    claims: ClaimStore,
    deployment: str = "",
    broker_url: str = "",
    credentials: DeviceCredentials | None = None,
) -> None:
    """Register the account, site, enrollment and login routes on `app`."""
    anyone = (Role.HOMEOWNER, Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR)

    def set_session(response: Response, token: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=TOKEN_TTL_S,
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
        )

    @app.post("/api/v1/login", response_model=LoginResult, tags=["accounts"])
    async def login(body: LoginRequest, response: Response) -> LoginResult:
        """Exchange email and password for a bearer token (also set as a session cookie)."""
        try:
            token = await accounts.login(body.email, body.password, TOKEN_TTL_S)
        except LoginError as exc:
            raise HTTPException(401, str(exc)) from None
        set_session(response, token)
        return LoginResult(token=token)

    @app.post("/api/v1/logout", status_code=204, tags=["accounts"])
    async def logout(
        request: Request,
        response: Response,
        p: Principal = Depends(auth.require(*anyone, action="log out")),
    ) -> None:
        """Revoke the token used for this request and clear the cookie."""
        header = request.headers.get("authorization", "")
        token = (
            header[7:] if header.startswith("Bearer ") else request.cookies.get(SESSION_COOKIE, "")
        )
        if p.via != "api_key" and token:
            await accounts.revoke_token(token)
        response.delete_cookie(SESSION_COOKIE)

    @app.get("/api/v1/me", response_model=AccountPublic, tags=["accounts"])
    async def me(
        p: Principal = Depends(auth.require(*anyone, action="read its account")),
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
        return _account(account)

    @app.post("/api/v1/accounts", response_model=AccountPublic, status_code=201, tags=["accounts"])
    async def sign_up(body: AccountCreate) -> AccountPublic:
        """Create an account; it waits for an approver before it can log in."""
        try:
            account = await accounts.create_account(
                body.email, body.display_name, body.password, body.role, "pending"
            )
        except ValueError as exc:
            raise HTTPException(409 if "exists" in str(exc) else 422, str(exc)) from None
        return _account(account)

    @app.get(
        "/api/v1/accounts",
        response_model=list[AccountPublic],
        tags=["accounts"],
        dependencies=[Depends(auth.require(Role.APPROVER, action="list accounts"))],
    )
    async def list_accounts(status: str | None = None) -> list[AccountPublic]:
        """Accounts, optionally by status (the approval queue: status=pending)."""
        try:
            return [_account(a) for a in await accounts.list_accounts(status)]
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post(
        "/api/v1/accounts/{account_id}/status",
        response_model=AccountPublic,
        tags=["accounts"],
    )
    async def decide_account(
        account_id: str,
        body: AccountDecision,
        p: Principal = Depends(auth.require(Role.APPROVER, action="approve accounts")),
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
        return _account(account)

    @app.post(
        "/api/v1/sites",
        response_model=SitePublic,
        status_code=201,
        tags=["sites"],
        dependencies=[Depends(auth.require(Role.INSTALLER, action="create sites"))],
    )
    async def create_site(body: SiteCreate) -> SitePublic:
        """Create a site for a homeowner."""
        try:
            site = await accounts.create_site(
                body.site_id, body.owner_account_id, body.name, body.zone
            )
        except KeyError:
            raise HTTPException(404, "the owner account does not exist") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return SitePublic(
            site_id=site.site_id,
            owner_account_id=site.owner_account_id,
            name=site.name,
            zone=site.zone,
        )

    @app.post(
        "/api/v1/sites/{site_id}/claim-codes",
        response_model=ClaimCodeCreated,
        status_code=201,
        tags=["sites"],
    )
    async def create_claim_code(
        site_id: str,
        p: Principal = Depends(auth.require(Role.INSTALLER, action="create claim codes")),
    ) -> ClaimCodeCreated:
        """A one-time code (valid 7 days) that lets one Pi enroll at this site."""
        ttl_s = 7 * 24 * 3600
        try:
            code = await claims.create(site_id, p.account_id, ttl_s)
        except KeyError:
            raise HTTPException(404, f"site {site_id!r} does not exist") from None
        return ClaimCodeCreated(code=code, site_id=site_id, expires_in=ttl_s)

    @app.post("/api/v1/enroll", response_model=EnrollResult, status_code=201, tags=["devices"])
    async def enroll(body: EnrollRequest) -> EnrollResult:
        """A Pi joins the site of its claim code; it is pending until an approver decides."""
        device_id = body.device_id or f"pi-{secrets.token_hex(6)}"
        try:
            public_key = device_identity(body.public_key, (device_id, "device id"))
        except ValueError as exc:  # TopicError is a ValueError
            raise HTTPException(422, str(exc)) from None
        if credentials is not None:
            if device_id == credentials.aggregator_identity:
                raise HTTPException(422, f"device id {device_id!r} is reserved")
            if not body.csr:
                raise HTTPException(422, "this aggregator's broker needs TLS: send a csr")
            try:  # check the request before the claim code is spent
                check_csr(body.csr.encode())
            except PkiError as exc:
                raise HTTPException(422, f"certificate request refused: {exc}") from None
        try:
            site_id = await claims.redeem(
                body.claim_code,
                device_id,
                public_key,
                cose.key_id(public_key),
                body.capacity_w,
                body.zone,
            )
        except ClaimError as exc:
            raise HTTPException(403, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        cert_pem = ca_pem = b""
        if credentials is not None:
            cert_pem = await credentials.issue(site_id, device_id, body.csr.encode())
            ca_pem = credentials.ca_bundle_pem
        return EnrollResult(
            device_id=device_id,
            site_id=site_id,
            deployment=deployment,
            broker_url=broker_url,
            client_cert=cert_pem.decode(),
            ca_bundle=ca_pem.decode(),
        )

    def _battery_public(b: SiteBattery) -> BatteryPublic:
        return BatteryPublic(
            site_id=b.site_id,
            usable_capacity_wh=b.usable_capacity_wh,
            soh_permille=b.soh_permille,
            self_discharge_ppm_per_h=b.self_discharge_ppm_per_h,
            round_trip_permille=b.round_trip_permille,
            updated_by=b.updated_by,
            updated_ms=b.updated_ms,
        )

    @app.put("/api/v1/sites/{site_id}/battery", response_model=BatteryPublic, tags=["sites"])
    async def set_battery(
        site_id: str,
        body: BatteryIn,
        p: Principal = Depends(auth.require(Role.INSTALLER, action="register batteries")),
    ) -> BatteryPublic:
        """Register or update a site's battery (capacity, measured state of health, rates).

        Applies to the intervals the ledger closes from now on; each closed interval records
        the values it used, so `gridmint verify` sees them.
        """
        if await accounts.get_site(site_id) is None:
            raise HTTPException(404, f"site {site_id!r} does not exist")
        battery = SiteBattery(
            site_id,
            body.usable_capacity_wh,
            body.soh_permille,
            body.self_discharge_ppm_per_h,
            body.round_trip_permille,
        )
        return _battery_public(await BatteryStore(accounts.engine).set(battery, p.account_id))

    @app.get("/api/v1/sites/{site_id}/battery", response_model=BatteryPublic, tags=["sites"])
    async def get_battery(
        site_id: str,
        p: Principal = Depends(auth.require(*anyone, action="read site batteries")),
    ) -> BatteryPublic:
        """A site's registered battery (a homeowner: their own sites)."""
        site = await accounts.get_site(site_id)
        if site is None or not can_see_site(p, site):
            raise HTTPException(404, f"site {site_id!r} has no battery you may see")
        b = await BatteryStore(accounts.engine).get(site_id)
        if b is None:
            raise HTTPException(404, f"site {site_id!r} has no registered battery")
        return _battery_public(b)

    @app.get("/api/v1/sites", response_model=list[SitePublic], tags=["sites"])
    async def list_sites(
        p: Principal = Depends(auth.require(*anyone, action="list sites")),
    ) -> list[SitePublic]:
        """Sites: a homeowner sees their own, other roles every site."""
        return [
            SitePublic(
                site_id=s.site_id, owner_account_id=s.owner_account_id, name=s.name, zone=s.zone
            )
            for s in await accounts.list_sites(owner=site_owner_filter(p))
        ]

    @app.post(
        "/api/v1/api-keys",
        response_model=ApiKeyCreated,
        status_code=201,
        tags=["accounts"],
        dependencies=[Depends(auth.require(action="create API keys"))],
    )
    async def create_api_key(body: ApiKeyCreate) -> ApiKeyCreated:
        """An API key for a service account (admin only); shown once."""
        if await accounts.get_account_by_id(body.account_id) is None:
            raise HTTPException(404, f"account {body.account_id!r} does not exist")
        return ApiKeyCreated(key=await accounts.create_api_key(body.account_id, body.name))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page(request: Request, token: str | None = None) -> Response:
        """The login form; `?token=` turns a bearer token into a session (the demo's link)."""
        if token:
            if await accounts.resolve_token(token) is None:
                return templates.TemplateResponse(
                    request,
                    "login.html",
                    {"error": "that login link has expired"},
                    status_code=401,
                )
            response = RedirectResponse("/", status_code=303)
            set_session(response, token)
            return response
        return templates.TemplateResponse(request, "login.html", {"error": None})

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(
        request: Request, email: str = Form(...), password: str = Form(...)
    ) -> Response:
        """Form login for the web pages."""
        try:
            token = await accounts.login(email, password, TOKEN_TTL_S)
        except LoginError as exc:
            return templates.TemplateResponse(
                request, "login.html", {"error": str(exc)}, status_code=401
            )
        response = RedirectResponse("/", status_code=303)
        set_session(response, token)
        return response
