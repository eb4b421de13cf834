"""The homeowner's meter analytics page: a site's energy by day, month or year.

Owns: GET /home/analytics (the roles of /home: homeowners for their own sites, admins for every
site; another role gets a 403 page, no credentials a redirect to /login). The page is a
server-rendered skeleton with the sites the principal may read; analytics.js fills it from the
virtual meter's API (cloud/api/meter_routes.py) with the session cookie: the site's time zone
from GET /api/v1/sites/{id}/meter, then GET /meter/intervals for the chosen local day (hourly
buckets), month (local days) or year (local days, summed into months in the page), drawn as an
SVG bar chart with a table of the same numbers and a CSV link for the same period. The script
computes the local period's bounds in the site's zone and sends them as UTC instants.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud.api.deps import CtxDep
from cloud.api.home_routes import HOME_ROLES
from cloud.api.pages_routes import _gate
from cloud.auth import site_owner_filter

VIEWS = ("day", "month", "year")

router = APIRouter()


@router.get("/home/analytics", response_class=HTMLResponse, include_in_schema=False)
async def analytics_page(request: Request, ctx: CtxDep) -> Response:
    """Meter analytics: production, consumption, grid and battery energy of a chosen site."""
    p = await _gate(ctx, request, HOME_ROLES, "view meter analytics")
    if isinstance(p, Response):
        return p
    sites = await ctx.accounts.list_sites(owner=site_owner_filter(p))
    return ctx.templates.TemplateResponse(
        request,
        "analytics.html",
        {
            "who": p,
            "sites": [{"site_id": s.site_id, "name": s.name} for s in sites],
            "now_s": int(ctx.now()),
            "views": VIEWS,
            "meter": ctx.meter is not None,
        },
    )
