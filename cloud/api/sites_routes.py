"""Sites and what joins them: sites, claim codes, a Pi's enrollment, site batteries.

Owns: those routes (the site half of cloud.storage.accounts, claim codes, batteries). Roles per
route are in each `require(...)` (cloud.api.deps); enrollment needs none, its claim code is the
credential.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, AccountsDep, ClaimsDep, CtxDep, require
from cloud.api.schemas import device_identity
from cloud.auth import Principal, Role, can_see_site, site_owner_filter
from cloud.domain.devices import DeviceStatus
from cloud.pki import PkiError, check_csr
from cloud.storage.batteries import BatteryStore, SiteBattery
from cloud.storage.claims import ClaimError
from protocol import cose


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
    status: Literal[DeviceStatus.PENDING] = DeviceStatus.PENDING
    deployment: str
    broker_url: str
    client_cert: str = Field("", description="PEM client certificate for the broker (CN = device)")
    ca_bundle: str = Field("", description="PEM CA certificate that signs the broker and devices")


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


router = APIRouter()


@router.post(
    "/api/v1/sites",
    response_model=SitePublic,
    status_code=201,
    tags=["sites"],
    dependencies=[Depends(require(Role.INSTALLER, action="create sites"))],
)
async def create_site(body: SiteCreate, accounts: AccountsDep) -> SitePublic:
    """Create a site for a homeowner."""
    try:
        site = await accounts.create_site(body.site_id, body.owner_account_id, body.name, body.zone)
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


@router.post(
    "/api/v1/sites/{site_id}/claim-codes",
    response_model=ClaimCodeCreated,
    status_code=201,
    tags=["sites"],
)
async def create_claim_code(
    site_id: str,
    claims: ClaimsDep,
    p: Annotated[Principal, Depends(require(Role.INSTALLER, action="create claim codes"))],
) -> ClaimCodeCreated:
    """A one-time code (valid 7 days) that lets one Pi enroll at this site."""
    ttl_s = 7 * 24 * 3600
    try:
        code = await claims.create(site_id, p.account_id, ttl_s)
    except KeyError:
        raise HTTPException(404, f"site {site_id!r} does not exist") from None
    return ClaimCodeCreated(code=code, site_id=site_id, expires_in=ttl_s)


@router.post("/api/v1/enroll", response_model=EnrollResult, status_code=201, tags=["devices"])
async def enroll(body: EnrollRequest, ctx: CtxDep) -> EnrollResult:
    """A Pi joins the site of its claim code; it is pending until an approver decides."""
    credentials = ctx.credentials
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
        site_id = await ctx.claims.redeem(
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
        deployment=ctx.deployment,
        broker_url=ctx.broker_url,
        client_cert=cert_pem.decode(),
        ca_bundle=ca_pem.decode(),
    )


@router.put("/api/v1/sites/{site_id}/battery", response_model=BatteryPublic, tags=["sites"])
async def set_battery(
    site_id: str,
    body: BatteryIn,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.INSTALLER, action="register batteries"))],
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


@router.get("/api/v1/sites/{site_id}/battery", response_model=BatteryPublic, tags=["sites"])
async def get_battery(
    site_id: str,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="read site batteries"))],
) -> BatteryPublic:
    """A site's registered battery (a homeowner: their own sites)."""
    site = await accounts.get_site(site_id)
    if site is None or not can_see_site(p, site):
        raise HTTPException(404, f"site {site_id!r} has no battery you may see")
    b = await BatteryStore(accounts.engine).get(site_id)
    if b is None:
        raise HTTPException(404, f"site {site_id!r} has no registered battery")
    return _battery_public(b)


@router.get("/api/v1/sites", response_model=list[SitePublic], tags=["sites"])
async def list_sites(
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="list sites"))],
) -> list[SitePublic]:
    """Sites: a homeowner sees their own, other roles every site."""
    return [
        SitePublic(site_id=s.site_id, owner_account_id=s.owner_account_id, name=s.name, zone=s.zone)
        for s in await accounts.list_sites(owner=site_owner_filter(p))
    ]
