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
    certificate_id: str = Field(min_length=1, max_length=64)
    price_minor_per_t: int = Field(description="minor units of the currency per tonne CO2e")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217")


class SolarListingPublic(BaseModel):
    project_id: str
    certificate_id: str
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
    """List one of your active certificates for sale: a gridmint_solar lot of
    floor(Wh x factor / 1e6) kg, serials `GC-<certificate>-1..kg`. 404: no such certificate
    (or not your site's); 409: not active, already listed, transferred; 400: 0 kg, bad price or
    currency; 503: no ledger in this process."""
    shop = _shop(ctx)
    if shop.certificates is None:
        raise HTTPException(503, "the ledger is not running in this process")
    cert = await shop.certificates.get(body.certificate_id)
    if cert is None:
        raise HTTPException(404, f"certificate {body.certificate_id} does not exist")
    site = await accounts.get_site(cert.owner_site_id)
    if site is None or not can_see_site(p, site):
        # someone else's certificate is the same 404 as an unknown one
        raise HTTPException(404, f"certificate {body.certificate_id} does not exist")
    try:
        project, lot = await shop.list_certificate(
            site.owner_account_id,
            body.certificate_id,
            price_minor_per_t=body.price_minor_per_t,
            currency=body.currency,
            site_name=site.name,
        )
    except SHOP_ERRORS as exc:
        raise _http(exc) from None
    return SolarListingPublic(
        project_id=project.project_id,
        certificate_id=body.certificate_id,
        site_id=cert.owner_site_id,
        energy_wh=cert.energy_wh,
        g_co2e_per_kwh=shop.grid_g_co2e_per_kwh,
        ledger_seq=lot.ledger_seq,
        lot=_lot(project.serial_prefix, lot),
    )
