"""The homeowner's page, "My home": what each of their sites has minted, holds and avoided.

Owns: GET /home (homeowners: their own sites; admins: every site). Server-rendered from the
ledger's replayed state (the same figures as GET /api/v1/ledger/summary) and the device registry;
home.js then polls the summary every 10 s with the session cookie and updates the numbers in
place. Without credentials the page sends the browser to /login; another role gets a 403 page.
Numbers are formatted from integers (Wh, grams, milli-acres, minor units) so the server and the
script print the same digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud.auth import Auth, Role, site_owner_filter
from cloud.domain.certificates import (
    DEFAULT_GRID_G_CO2_PER_KWH,
    FOREST_G_CO2_PER_ACRE_YEAR,
    avoided_co2_g,
    forest_milliacres,
)
from cloud.domain.ledger_rules import site_account
from cloud.services.ledger import LedgerService
from cloud.storage.accounts import AccountStore
from cloud.storage.store import DeviceSummary, Store

HOME_ROLES = frozenset({Role.HOMEOWNER, Role.ADMIN})
REFRESH_MS = 10_000

# Where the default factor comes from (cloud/domain/certificates.py); shown under the figures.
FACTOR_SOURCE = (
    "US EPA Greenhouse Gas Equivalencies Calculator: AVERT U.S. national weighted average "
    "marginal CO2 emission rate, 1,559 lb CO2/MWh"
)


def kwh_3(wh: int) -> str:
    """Wh as kWh with 3 decimals (exact)."""
    sign = "-" if wh < 0 else ""
    return f"{sign}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


def kg_1(grams: int) -> str:
    """Grams as kg with 1 decimal, rounded half up."""
    tenths = (abs(grams) + 50) // 100
    sign = "-" if grams < 0 and tenths else ""
    return f"{sign}{tenths // 10}.{tenths % 10}"


def acres_3(milliacres: int) -> str:
    """Milli-acres as acres with 3 decimals (exact)."""
    return kwh_3(milliacres)


def money_2(minor: int) -> str:
    """Minor currency units as major units with 2 decimals (exact)."""
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


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


def add_home_routes(
    app: FastAPI,
    store: Store,
    accounts: AccountStore,
    auth: Auth,
    templates: Jinja2Templates,
    ledger: LedgerService | None,
    co2_factor: int = DEFAULT_GRID_G_CO2_PER_KWH,
) -> None:
    """Register the homeowner's page on `app` (it renders, with zeros, without a ledger)."""
    templates.env.filters.setdefault("kwh_3", kwh_3)
    templates.env.filters.setdefault("kg_1", kg_1)
    templates.env.filters.setdefault("acres_3", acres_3)
    templates.env.filters.setdefault("money_2", money_2)

    def message(request: Request, status: int, text: str) -> Response:
        return templates.TemplateResponse(
            request,
            "message.html",
            {"title": "Not allowed", "message": text},
            status_code=status,
        )

    def site_figures(site_id: str, name: str, devices: list[DeviceSummary]) -> HomeSite:
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

    @app.get("/home", response_class=HTMLResponse, include_in_schema=False)
    async def home_page(request: Request) -> Response:
        """My home: per site, generation minted, tokens held, credits, CO2 avoided, devices."""
        try:
            p = await auth.page_principal(request)
        except HTTPException as exc:  # a pending or rejected account's session
            return message(request, exc.status_code, str(exc.detail))
        if p is None:
            return RedirectResponse("/login", status_code=303)
        if p.role not in HOME_ROLES:
            return message(request, 403, f"role {p.role} may not view a home page")
        sites = await accounts.list_sites(owner=site_owner_filter(p))
        by_site: dict[str, list[DeviceSummary]] = {}
        for d in await store.list_devices():
            by_site.setdefault(d.device.site_id, []).append(d)
        checkpoint_size = 0
        if ledger is not None:
            cp = await ledger.store.latest_checkpoint()
            checkpoint_size = cp.size if cp else 0
        return templates.TemplateResponse(
            request,
            "home.html",
            {
                "who": p,
                "sites": [
                    site_figures(s.site_id, s.name, by_site.get(s.site_id, [])) for s in sites
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
            },
        )
