"""Energy attribute certificates over HTTP: issue a site's eligible generation as granular
certificates or 1 MWh RECs, list a site's certificates, transfer and retire them.

Owns: those routes. A homeowner acts on their own sites only (issue, transfer, retire: the
site that owns the certificate now); fleet roles may read every site's certificates; admins may
do everything. The rules are in cloud.services.certificates and cloud.domain.certificates.
Without a ledger in this process the routes answer 503.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import FLEET, AccountsDep, CertificatesDep, require
from cloud.auth import Principal, Role, can_see_site
from cloud.domain.certificates import avoided_co2_g
from cloud.services.certificates import (
    CertificateConflict,
    CertificateNotFound,
    CertificatesCorrupted,
    CertificateService,
)
from cloud.storage.accounts import AccountStore
from cloud.storage.certificates_store import StoredCertificate


class IssueRequest(BaseModel):
    """What to issue from the site's uncertified eligible energy."""

    kind: Literal["granular", "rec"]


class TransferRequest(BaseModel):
    """The site that receives the certificate."""

    to_site_id: str = Field(min_length=1, max_length=64)


class RetireRequest(BaseModel):
    """Who the certificate's energy is claimed for."""

    beneficiary: str = Field(min_length=1, max_length=200)


class SlicePublic(BaseModel):
    """Wh [start_wh, end_wh) of one generation token."""

    token_id: str
    start_wh: int
    end_wh: int


class CertificatePublic(BaseModel):
    """An energy attribute certificate (EnergyTag-style fields; times Unix s or ms)."""

    certificate_id: str
    kind: str
    status: str
    owner_site_id: str
    issued_site_id: str
    device_ids: list[str]
    technology: str
    market_zone: str
    production_start: int = Field(description="Unix s, inclusive")
    production_end: int = Field(description="Unix s, exclusive")
    energy_wh: int
    avoided_co2_g: int
    issued_ms: int
    expires_ms: int
    retired_ms: int | None
    beneficiary: str
    slices: list[SlicePublic]


def certificate_public(c: StoredCertificate) -> CertificatePublic:
    return CertificatePublic(
        certificate_id=c.certificate_id,
        kind=c.kind,
        status=c.status,
        owner_site_id=c.owner_site_id,
        issued_site_id=c.issued_site_id,
        device_ids=list(c.device_ids),
        technology=c.technology,
        market_zone=c.market_zone,
        production_start=c.production_start,
        production_end=c.production_end,
        energy_wh=c.energy_wh,
        avoided_co2_g=avoided_co2_g(c.energy_wh),
        issued_ms=c.issued_ms,
        expires_ms=c.expires_ms,
        retired_ms=c.retired_ms,
        beneficiary=c.beneficiary,
        slices=[
            SlicePublic(token_id=s.token_id, start_wh=s.start_wh, end_wh=s.end_wh) for s in c.slices
        ],
    )


def _running(service: CertificateService | None) -> CertificateService:
    """The certificate service; 503 when this process runs without a ledger."""
    if service is None:
        raise HTTPException(503, "the ledger is not running in this process")
    return service


async def _own_site(accounts: AccountStore, p: Principal, site_id: str) -> None:
    """404 for an unknown site, 403 for a homeowner's look at another account's site."""
    site = await accounts.get_site(site_id)
    if site is None:
        raise HTTPException(404, f"site {site_id!r} does not exist")
    if not can_see_site(p, site):
        raise HTTPException(403, f"site {site_id!r} belongs to another account")


async def _owned_certificate(
    service: CertificateService | None, accounts: AccountStore, p: Principal, certificate_id: str
) -> StoredCertificate:
    try:
        cert = await _running(service).get(certificate_id)
    except CertificateNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    await _own_site(accounts, p, cert.owner_site_id)
    return cert


router = APIRouter()


@router.post(
    "/api/v1/sites/{site_id}/certificates",
    response_model=list[CertificatePublic],
    tags=["certificates"],
)
async def issue(
    site_id: str,
    body: IssueRequest,
    service: CertificatesDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.HOMEOWNER, action="issue certificates"))],
) -> list[CertificatePublic]:
    """Issue the site's uncertified eligible generation (self-consumed Tgen ranges): one
    granular certificate per range, or as many 1 MWh RECs as it fills. Returns only the
    new certificates (empty when nothing is left to certify)."""
    svc = _running(service)
    await _own_site(accounts, p, site_id)
    try:
        if body.kind == "granular":
            new = await svc.issue_granular(site_id)
        else:
            new = await svc.issue_recs(site_id)
    except CertificateConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except CertificatesCorrupted as exc:
        raise HTTPException(500, str(exc)) from None
    return [certificate_public(c) for c in new]


@router.get(
    "/api/v1/sites/{site_id}/certificates",
    response_model=list[CertificatePublic],
    tags=["certificates"],
)
async def list_certificates(
    site_id: str,
    service: CertificatesDep,
    accounts: AccountsDep,
    p: Annotated[
        Principal, Depends(require(Role.HOMEOWNER, *FLEET, action="read site certificates"))
    ],
) -> list[CertificatePublic]:
    """Certificates the site owns now, oldest first (a homeowner: their own sites)."""
    svc = _running(service)
    await _own_site(accounts, p, site_id)
    return [certificate_public(c) for c in await svc.owned_by(site_id)]


@router.post(
    "/api/v1/certificates/{certificate_id}/transfer",
    response_model=CertificatePublic,
    tags=["certificates"],
)
async def transfer(
    certificate_id: str,
    body: TransferRequest,
    service: CertificatesDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.HOMEOWNER, action="transfer certificates"))],
) -> CertificatePublic:
    """Give an active certificate to another site (the owner of its current site)."""
    await _owned_certificate(service, accounts, p, certificate_id)
    if await accounts.get_site(body.to_site_id) is None:
        raise HTTPException(404, f"site {body.to_site_id!r} does not exist")
    try:
        cert = await _running(service).transfer(certificate_id, body.to_site_id, p.account_id)
    except CertificateConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return certificate_public(cert)


@router.post(
    "/api/v1/certificates/{certificate_id}/retire",
    response_model=CertificatePublic,
    tags=["certificates"],
)
async def retire(
    certificate_id: str,
    body: RetireRequest,
    service: CertificatesDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.HOMEOWNER, action="retire certificates"))],
) -> CertificatePublic:
    """Claim an active certificate's energy for a beneficiary; final (409 if retired or
    expired)."""
    await _owned_certificate(service, accounts, p, certificate_id)
    try:
        cert = await _running(service).retire(certificate_id, body.beneficiary)
    except CertificateConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return certificate_public(cert)
