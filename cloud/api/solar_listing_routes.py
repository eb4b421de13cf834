"""Homeowners' solar certificates on sale in the carbon shop (docs/carbon-shop.md, "Our own
solar certificates").

Owns: `POST /api/v1/shop/solar-listings`: a homeowner lists an active certificate of their own
site (as the certificate routes check it: the site that owns the certificate must be theirs;
admins may list any) at a price per tonne; it becomes a gridmint_solar lot whose kg are the
certificate's Wh times the grid emission factor. The rules are in cloud.services.carbon_shop.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import AccountsDep, CtxDep, require
from cloud.api.shop_routes import SHOP_ERRORS, LotPublic, _http, _lot, _shop
from cloud.auth import Principal, Role, can_see_site


class SolarListingRequest(BaseModel):
    certificate_id: str | None = Field(default=None, min_length=1, max_length=64)
    certificate_ids: list[str] = Field(
        default_factory=list,
        max_length=500,
        description="several certificates of one site in one lot (a home's granular "
        "certificate alone is well under a kg)",
    )
    price_minor_per_t: int = Field(description="minor units of the currency per tonne CO2e")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217")


class SolarListingPublic(BaseModel):
    project_id: str
    certificate_ids: list[str]
    site_id: str
    energy_wh: int
    g_co2e_per_kwh: int = Field(description="the grid emission factor the kg were computed with")
    ledger_seq: int | None = Field(description="the CARBON leaf that listed the lot")
    lot: LotPublic


router = APIRouter()


@router.post(
    "/api/v1/shop/solar-listings",
    response_model=SolarListingPublic,
    status_code=201,
    tags=["shop"],
)
async def list_certificate(
    body: SolarListingRequest,
    ctx: CtxDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(Role.HOMEOWNER, action="list certificates for sale"))],
) -> SolarListingPublic:
    """List active certificates of one of your sites for sale (`certificate_id`, or several in
    `certificate_ids`): one gridmint_solar lot of floor(Wh x factor / 1e6) kg, serials
    `GC-<certificate>-1..kg`. 404: no such certificate (or not your site's); 409: not active,
    already listed, transferred, of two sites; 400: 0 kg, none given, bad price or currency;
    503: no ledger in this process."""
    shop = _shop(ctx)
    if shop.certificates is None:
        raise HTTPException(503, "the ledger is not running in this process")
    ids = [*([body.certificate_id] if body.certificate_id else []), *body.certificate_ids]
    if not ids:
        raise HTTPException(400, "give certificate_id or certificate_ids")
    site = None
    for certificate_id in ids:
        cert = await shop.certificates.get(certificate_id)
        found = None if cert is None else await accounts.get_site(cert.owner_site_id)
        if found is None or not can_see_site(p, found):
            # someone else's certificate is the same 404 as an unknown one
            raise HTTPException(404, f"certificate {certificate_id} does not exist")
        if site is not None and found.site_id != site.site_id:
            raise HTTPException(409, "the certificates of one lot belong to one site")
        site = found
    assert site is not None
    try:
        project, lot = await shop.list_certificates(
            site.owner_account_id,
            ids,
            price_minor_per_t=body.price_minor_per_t,
            currency=body.currency,
            site_name=site.name,
        )
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    energy_wh = 0
    for certificate_id in ids:
        cert = await shop.certificates.get(certificate_id)
        energy_wh += 0 if cert is None else cert.energy_wh
    return SolarListingPublic(
        project_id=project.project_id,
        certificate_ids=ids,
        site_id=site.site_id,
        energy_wh=energy_wh,
        g_co2e_per_kwh=shop.grid_g_co2e_per_kwh,
        ledger_seq=lot.ledger_seq,
        lot=_lot(project.serial_prefix, lot),
    )
