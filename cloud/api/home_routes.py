"""The homeowner's page, "My home": what each of their sites has minted, holds and avoided.

Owns: GET /home (homeowners: their own sites; admins: every site). Server-rendered from the
ledger's replayed state (the same figures as GET /api/v1/ledger/summary) and the device registry;
home.js then polls the summary every 10 s with the session cookie and updates the numbers in
place, and polls each site's live power flow, energy today and this month, and the dispatch
events it took part in (cloud.api.site_live_routes). Without credentials the page sends the
browser to /login; another role gets a 403 page.
Numbers are formatted from integers (Wh, grams, milli-acres, minor units) so the server and the
script print the same digits (the filters are in cloud.api.templating).

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from dataclasses import dataclass, field

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.api.deps import ApiContext, CtxDep
from cloud.api.derms_pages_routes import CONTROL_LABELS
from cloud.auth import Role, site_owner_filter
from cloud.domain.certificates import (
    DEFAULT_GRID_G_CO2_PER_KWH,
    FOREST_G_CO2_PER_ACRE_YEAR,
    avoided_co2_g,
    forest_milliacres,
)
from cloud.services.ledger import LedgerService
from cloud.services.utility_access import SiteGrants
from cloud.storage.store import DeviceSummary
from rules.ledger import site_account

HOME_ROLES = frozenset({Role.HOMEOWNER, Role.ADMIN})
REFRESH_MS = 10_000
LIVE_MS = 2_000  # the live power flow (GET /api/v1/sites/{id}/live)
GRANT_LOG_LINES = 10  # the recent grants and revocations shown per site

# Where the default factor comes from (cloud/domain/certificates.py); shown under the figures.
FACTOR_SOURCE = (
    "US EPA Greenhouse Gas Equivalencies Calculator: AVERT U.S. national weighted average "
    "marginal CO2 emission rate, 1,559 lb CO2/MWh"
)


@dataclass(frozen=True, slots=True)
class HomeSite:
    """One site's figures for the page."""

    site_id: str
    name: str
    generated_wh: int = 0
    tgen_wh: int = 0
    tradable_wh: int = 0
    tstorage_wh: int = 0
    set_aside_wh: int = 0
    credits_minor: int = 0
    avoided_co2_g: int = 0
    forest_milliacres: int = 0
    devices: list[DeviceSummary] = field(default_factory=list)


router = APIRouter()


def _message(ctx: ApiContext, request: Request, status: int, text: str) -> Response:
    return ctx.templates.TemplateResponse(
        request,
        "message.html",
        {"title": "Not allowed", "message": text},
        status_code=status,
    )


def _site_figures(
    ledger: LedgerService | None,
    co2_factor: int,
    site_id: str,
    name: str,
    devices: list[DeviceSummary],
) -> HomeSite:
    if ledger is None:
        return HomeSite(site_id, name, devices=devices)
    state = ledger.engine.state
    minted = ledger.minted_wh.get(site_id, 0)
    co2 = avoided_co2_g(minted, co2_factor)
    return HomeSite(
        site_id=site_id,
        name=name,
        generated_wh=minted,
        tgen_wh=state.tgen_wh(site_id),
        tradable_wh=state.tradable_wh(site_id),
        tstorage_wh=state.tstorage_wh(site_id),
        set_aside_wh=state.set_aside_wh(site_id),
        credits_minor=state.balance(site_account(site_id)),
        avoided_co2_g=co2,
        forest_milliacres=forest_milliacres(co2),
        devices=devices,
    )


@router.get("/home", response_class=HTMLResponse, include_in_schema=False)
async def home_page(request: Request, ctx: CtxDep) -> Response:
    """My home: per site, generation minted, tokens held, credits, CO2 avoided, devices."""
    try:
        p = await ctx.auth.page_principal(request)
    except HTTPException as exc:  # a pending or rejected account's session
        return _message(ctx, request, exc.status_code, str(exc.detail))
    if p is None:
        return RedirectResponse("/login", status_code=303)
    if p.role not in HOME_ROLES:
        return _message(ctx, request, 403, f"role {p.role} may not view a home page")
    ledger, co2_factor = ctx.ledger, ctx.co2_factor
    sites = await ctx.accounts.list_sites(owner=site_owner_filter(p))
    by_site: dict[str, list[DeviceSummary]] = {}
    for d in await ctx.store.list_devices():
        by_site.setdefault(d.device.site_id, []).append(d)
    # Who may read each site's meter data (cloud/api/connect_auth_routes.py; home_access.js).
    access = ctx.utility_access
    meter_access: dict[str, SiteGrants] = {}
    if access is not None:
        meter_access = {s.site_id: await access.grants(s.site_id, GRANT_LOG_LINES) for s in sites}
    checkpoint_size = 0
    if ledger is not None:
        cp = await ledger.store.latest_checkpoint()
        checkpoint_size = cp.size if cp else 0
    return ctx.templates.TemplateResponse(
        request,
        "home.html",
        {
            "who": p,
            "sites": [
                _site_figures(ledger, co2_factor, s.site_id, s.name, by_site.get(s.site_id, []))
                for s in sites
            ],
            "ledger_running": ledger is not None,
            "log_size": ledger.log.size if ledger is not None else 0,
            "checkpoint_size": checkpoint_size,
            "closed_intervals": len(ledger.engine.state.closed) if ledger is not None else 0,
            "factor": co2_factor,
            "factor_source": FACTOR_SOURCE
            if co2_factor == DEFAULT_GRID_G_CO2_PER_KWH
            else "the factor configured for this deployment",
            "forest_t_per_acre": f"{FOREST_G_CO2_PER_ACRE_YEAR / 1_000_000:g}",
            "refresh_ms": REFRESH_MS,
            "live_ms": LIVE_MS,
            "derms": ctx.fleet is not None,
            "control_labels": {k: v[0] for k, v in CONTROL_LABELS.items()},
            "meter_access": meter_access,
            "utility_directory": await access.directory() if access is not None else [],
        },
    )
