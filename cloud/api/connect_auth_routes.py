"""Utility access for the Connect API: clients, tokens, homeowners' grants (docs/operations.md,
"Utility access (Connect)").

Owns these routes:

* admin: `POST /api/v1/utility-clients` (the secret is in this answer only),
  `GET /api/v1/utility-clients` (grid operators may read it too),
  `POST /api/v1/utility-clients/{client_id}/revoke`;
* homeowners: `GET /api/v1/utility-clients/directory` (whom they may grant to),
  `GET|POST /api/v1/sites/{site_id}/grants`, `DELETE /api/v1/sites/{site_id}/grants/{client_id}`
  on their own sites (admins on any; another homeowner's site is a 404, as an unknown one);
* utility clients: `POST /api/v1/connect/token` (OAuth2 client credentials, RFC 6749 §4.4, with
  its error JSON), `GET /api/v1/connect/sites` and `GET /api/v1/connect/sites/{site_id}`.

The client side's dependency and site check, for the meter routes too, are in
cloud.api.connect_auth; the rules in cloud.services.utility_access and
cloud.domain.utility_access.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import base64
import binascii
from typing import Annotated
from urllib.parse import parse_qs, unquote_plus

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cloud.api.connect_auth import UtilityAccessDep, check_site, require_client
from cloud.api.deps import AccountsDep, CtxDep, require
from cloud.auth import Principal, Role, can_see_site
from cloud.domain.utility_access import METER_READ, ScopeError, UtilityClient, format_scopes
from cloud.services.utility_access import (
    ClientInfo,
    InvalidClient,
    NoSuchGrant,
    UnknownClient,
)
from cloud.storage.accounts import AccountStore, Site
from cloud.storage.utility_store import GrantLogEntry, GrantView

# --- shapes -----------------------------------------------------------------------------------


class UtilityClientCreate(BaseModel):
    """A utility's system to register."""

    name: str = Field(min_length=1, max_length=100, description="who it is, for homeowners")
    scopes: str | list[str] = Field(
        METER_READ, description=f"space separated (or a list); known: {METER_READ}"
    )


class UtilityClientPublic(BaseModel):
    """A registered client (never its secret)."""

    client_id: str
    name: str
    scopes: str = Field(description="space separated")
    created_ms: int
    revoked: bool


class UtilityClientCreated(UtilityClientPublic):
    """A new client with its secret: shown now and never again (only a digest is kept)."""

    client_secret: str


class DirectoryEntry(BaseModel):
    """A client a homeowner may grant a site to."""

    client_id: str
    name: str


class GrantCreate(BaseModel):
    """Let this client read the site's meter data."""

    client_id: str = Field(min_length=1, max_length=32)


class GrantPublic(BaseModel):
    """A live grant."""

    site_id: str
    client_id: str
    client_name: str
    granted_by: str = Field(description="account id")
    granted_ms: int


class RevokedGrant(BaseModel):
    """A grant that just ended."""

    site_id: str
    client_id: str
    granted_by: str
    granted_ms: int
    revoked_ms: int


class GrantLogLine(BaseModel):
    """One grant or revocation."""

    id: int
    client_id: str
    client_name: str
    action: str = Field(description="granted or revoked")
    by: str = Field(description="account id")
    by_email: str | None
    at_ms: int


class SiteGrantsPublic(BaseModel):
    """Who may read a site's meter data now, and the log (newest first)."""

    site_id: str
    grants: list[GrantPublic]
    log: list[GrantLogLine]


class ConnectSite(BaseModel):
    """A site the calling client may read."""

    site_id: str
    name: str


def _client(c: ClientInfo) -> UtilityClientPublic:
    return UtilityClientPublic(
        client_id=c.client_id,
        name=c.name,
        scopes=format_scopes(c.scopes),
        created_ms=c.created_ms,
        revoked=c.revoked,
    )


def _grant(g: GrantView) -> GrantPublic:
    return GrantPublic(
        site_id=g.site_id,
        client_id=g.client_id,
        client_name=g.client_name,
        granted_by=g.granted_by,
        granted_ms=g.granted_ms,
    )


def _log_line(e: GrantLogEntry) -> GrantLogLine:
    return GrantLogLine(
        id=e.id,
        client_id=e.client_id,
        client_name=e.client_name,
        action=e.action,
        by=e.by,
        by_email=e.by_email,
        at_ms=e.at_ms,
    )


router = APIRouter()

GRANT_ACTION = "manage who reads a site's meter data"
SiteManager = Annotated[Principal, Depends(require(Role.HOMEOWNER, action=GRANT_ACTION))]


async def _own_site(accounts: AccountStore, p: Principal, site_id: str) -> Site:
    """The site if the caller may manage its grants (the site rule: a homeowner's own)."""
    site = await accounts.get_site(site_id)
    if site is None or not can_see_site(p, site):
        raise HTTPException(404, f"site {site_id!r} does not exist")
    return site


# --- admin: clients ---------------------------------------------------------------------------


@router.post(
    "/api/v1/utility-clients",
    response_model=UtilityClientCreated,
    status_code=201,
    tags=["utility access"],
    dependencies=[Depends(require(action="register utility clients"))],
)
async def register_client(
    body: UtilityClientCreate, access: UtilityAccessDep
) -> UtilityClientCreated:
    """Register a utility's system; its secret is in this answer only."""
    try:
        made = await access.register_client(body.name, body.scopes)
    except ValueError as exc:  # ScopeError too
        raise HTTPException(422, str(exc)) from None
    return UtilityClientCreated(
        **_client(made.client).model_dump(), client_secret=made.client_secret
    )


@router.get(
    "/api/v1/utility-clients",
    response_model=list[UtilityClientPublic],
    tags=["utility access"],
    dependencies=[Depends(require(Role.GRID_OPERATOR, action="list utility clients"))],
)
async def list_clients(access: UtilityAccessDep) -> list[UtilityClientPublic]:
    """Every client, revoked ones too, oldest first."""
    return [_client(c) for c in await access.list_clients()]


@router.get(
    "/api/v1/utility-clients/directory",
    response_model=list[DirectoryEntry],
    tags=["utility access"],
    dependencies=[Depends(require(Role.HOMEOWNER, action="list utility clients to grant to"))],
)
async def directory(access: UtilityAccessDep) -> list[DirectoryEntry]:
    """The clients a homeowner may grant a site to (not revoked), by name."""
    return [DirectoryEntry(client_id=c.client_id, name=c.name) for c in await access.directory()]


@router.post(
    "/api/v1/utility-clients/{client_id}/revoke",
    response_model=UtilityClientPublic,
    tags=["utility access"],
)
async def revoke_client(
    client_id: str,
    access: UtilityAccessDep,
    p: Annotated[Principal, Depends(require(action="revoke utility clients"))],
) -> UtilityClientPublic:
    """Revoke a client: its tokens stop at once and its grants end (logged on each site)."""
    try:
        return _client(await access.revoke_client(client_id, p.account_id))
    except UnknownClient:
        raise HTTPException(404, f"no utility client {client_id!r}") from None


# --- homeowners: grants -----------------------------------------------------------------------


@router.get(
    "/api/v1/sites/{site_id}/grants", response_model=SiteGrantsPublic, tags=["utility access"]
)
async def site_grants(
    site_id: str, accounts: AccountsDep, access: UtilityAccessDep, p: SiteManager
) -> SiteGrantsPublic:
    """Which utility clients may read this site's meter data, and the grant log."""
    await _own_site(accounts, p, site_id)
    found = await access.grants(site_id)
    return SiteGrantsPublic(
        site_id=site_id,
        grants=[_grant(g) for g in found.current],
        log=[_log_line(e) for e in found.log],
    )


@router.post(
    "/api/v1/sites/{site_id}/grants",
    response_model=GrantPublic,
    status_code=201,
    tags=["utility access"],
    responses={200: {"description": "the client already had a grant; nothing changed"}},
)
async def grant(
    site_id: str,
    body: GrantCreate,
    response: Response,
    accounts: AccountsDep,
    access: UtilityAccessDep,
    p: SiteManager,
) -> GrantPublic:
    """Let a utility client read this site's meter data (logged)."""
    await _own_site(accounts, p, site_id)
    try:
        made, created = await access.grant(site_id, body.client_id, p.account_id)
    except UnknownClient:
        raise HTTPException(
            404, f"utility client {body.client_id!r} does not exist or was revoked"
        ) from None
    if not created:
        response.status_code = 200
    return _grant(made)


@router.delete(
    "/api/v1/sites/{site_id}/grants/{client_id}",
    response_model=RevokedGrant,
    tags=["utility access"],
)
async def revoke_grant(
    site_id: str, client_id: str, accounts: AccountsDep, access: UtilityAccessDep, p: SiteManager
) -> RevokedGrant:
    """Stop a utility client reading this site (logged); it holds from the client's next
    request."""
    await _own_site(accounts, p, site_id)
    try:
        ended = await access.revoke(site_id, client_id, p.account_id)
    except NoSuchGrant:
        raise HTTPException(404, f"client {client_id!r} has no grant on this site") from None
    assert ended.revoked_ms is not None
    return RevokedGrant(
        site_id=ended.site_id,
        client_id=ended.client_id,
        granted_by=ended.granted_by,
        granted_ms=ended.granted_ms,
        revoked_ms=ended.revoked_ms,
    )


# --- utility clients --------------------------------------------------------------------------


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """RFC 6749 §5.2."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="gridmint-connect"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _basic(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) of HTTP Basic client authentication (RFC 6749 §2.3.1: both
    form-urlencoded before base64); None when malformed."""
    try:
        decoded = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if sep else None


@router.post(
    "/api/v1/connect/token",
    tags=["connect"],
    summary="OAuth2 client credentials grant (RFC 6749 §4.4)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            }
        }
    },
)
async def token(request: Request, access: UtilityAccessDep) -> JSONResponse:
    """Form fields grant_type=client_credentials, client_id and client_secret (or HTTP Basic
    instead of those two), optional scope (space separated) -> a bearer access token for an
    hour. Errors are RFC 6749's: invalid_request, unsupported_grant_type, invalid_client (401),
    invalid_scope."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(
            400, "invalid_request", "send an application/x-www-form-urlencoded body"
        )
    raw = parse_qs((await request.body()).decode("utf-8", "replace"))
    if any(len(v) > 1 for v in raw.values()):
        return _oauth_error(400, "invalid_request", "a parameter is repeated")
    form = {k: v[0] for k, v in raw.items()}
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        basic = _basic(encoded.strip())
        if basic is None:
            return _oauth_error(401, "invalid_client", "the Basic credentials are malformed")
        if secret or (client_id and client_id != basic[0]):
            return _oauth_error(
                400, "invalid_request", "use one way to authenticate: Basic or the form fields"
            )
        client_id, secret = basic
    if not client_id or not secret:
        return _oauth_error(401, "invalid_client", "client_id and client_secret are needed")
    try:
        issued = await access.issue_token(client_id, secret, form.get("scope"))
    except InvalidClient:
        return _oauth_error(401, "invalid_client", "unknown client, wrong secret, or revoked")
    except ScopeError as exc:
        return _oauth_error(400, "invalid_scope", str(exc))
    return JSONResponse(
        {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": format_scopes(issued.scopes),
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/api/v1/connect/sites", response_model=list[ConnectSite], tags=["connect"])
async def connect_sites(
    access: UtilityAccessDep,
    client: Annotated[UtilityClient, Depends(require_client(METER_READ))],
) -> list[ConnectSite]:
    """The sites whose homeowners let the calling client read their meter data, by id."""
    return [
        ConnectSite(site_id=s.site_id, name=s.name) for s in await access.sites_of(client.client_id)
    ]


@router.get("/api/v1/connect/sites/{site_id}", response_model=ConnectSite, tags=["connect"])
async def connect_site(
    site_id: str,
    ctx: CtxDep,
    client: Annotated[UtilityClient, Depends(require_client(METER_READ))],
) -> ConnectSite:
    """One site the calling client may read; 404 when it may not (as for an unknown site).

    Written as cloud.api.connect_auth's docstring tells the meter routes to be."""
    await check_site(ctx, client, site_id)
    site = await ctx.accounts.get_site(site_id)
    if site is None:  # a grant names an existing site (foreign key); kept for the type
        raise HTTPException(404, f"no site {site_id!r} is shared with this client")
    return ConnectSite(site_id=site.site_id, name=site.name)
