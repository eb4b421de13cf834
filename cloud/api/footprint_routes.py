"""The account's carbon footprint over HTTP (docs/carbon-shop.md, "Footprint"): estimate from
answers, save as the baseline, and read the baseline, its history and the months of footprint
against the kilograms the shop retired for the account.

Owns: those routes and their answers. Shoppers (buyers, homeowners) and admins, each for their
own account. Bad answers are a 422 with a plain reason (the calculator's, e.g. "cars must be
from 0 to 5 (got 7)"), not a list of validation errors: the answers are checked by
cloud.domain.footprint, the one place that knows their ranges.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel

from cloud.api.deps import CtxDep
from cloud.api.deps import require as require_role
from cloud.api.shop_routes import SHOPPERS
from cloud.auth import Principal
from cloud.domain.footprint import Footprint, FootprintError, Month
from cloud.services.footprint import FootprintService
from cloud.storage.footprint_store import StoredFootprint

router = APIRouter()

ANSWERS_EXAMPLE = {
    "cars": 1,
    "public_transport_pct": 20,
    "short_haul_flights": 2,
    "long_haul_flights": 0,
    "electricity_kwh_month": 360,
    "solar_pct": 0,
    "diet": "average",
}
AnswersBody = Annotated[
    dict[str, Any],
    Body(
        description="the calculator's answers (missing ones take the average's): cars 0-5, "
        "public_transport_pct 0-100, short_haul_flights 0-50, long_haul_flights 0-20, "
        "electricity_kwh_month 0-10000, solar_pct 0-100, diet one of meat_lover, average, "
        "no_beef, vegetarian, vegan",
        examples=[ANSWERS_EXAMPLE],
    ),
]
ShopperDep = Annotated[Principal, Depends(require_role(*SHOPPERS, action="keep a footprint"))]


class LinePublic(BaseModel):
    key: str
    label: str
    kg: int
    average_kg: int
    source: str


class FootprintPublic(BaseModel):
    model: str
    answers: dict[str, Any]
    lines: list[LinePublic]
    total_kg: int
    average_kg: int
    forest_milliacres: int


class SavedPublic(BaseModel):
    saved_ms: int
    model: str
    total_kg: int
    answers: dict[str, Any]


class MonthPublic(BaseModel):
    month: str
    footprint_kg: int
    retired_kg: int
    cumulative_footprint_kg: int
    cumulative_retired_kg: int
    offset_permille: int
    forest_milliacres: int


class FootprintDashboard(BaseModel):
    baseline: SavedPublic | None
    baseline_footprint: FootprintPublic | None
    history: list[SavedPublic]
    months: list[MonthPublic]
    retired_kg: int


def _service(ctx: CtxDep) -> FootprintService:
    if ctx.footprint is None:
        raise HTTPException(503, "footprints are not kept in this process")
    return ctx.footprint


def _public(fp: Footprint) -> FootprintPublic:
    return FootprintPublic(
        model=fp.model,
        answers=fp.answers.as_dict(),
        lines=[
            LinePublic(
                key=ln.key, label=ln.label, kg=ln.kg, average_kg=ln.average_kg, source=ln.source
            )
            for ln in fp.lines
        ],
        total_kg=fp.total_kg,
        average_kg=fp.average_kg,
        forest_milliacres=fp.forest_milliacres,
    )


@router.post("/api/v1/footprint/estimate", tags=["footprint"])
async def estimate(body: AnswersBody, ctx: CtxDep, _p: ShopperDep) -> FootprintPublic:
    """The footprint of these answers in kg CO2e a year, by factor with its source, and the
    acres of forest that absorb it in a year (milli-acres). Nothing is saved."""
    try:
        return _public(_service(ctx).estimate(body))
    except FootprintError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/api/v1/footprint", status_code=201, tags=["footprint"])
async def save(body: AnswersBody, ctx: CtxDep, p: ShopperDep) -> FootprintPublic:
    """Calculate and save as the caller's baseline (the previous ones stay in the history)."""
    try:
        return _public(await _service(ctx).save(p.account_id, body))
    except FootprintError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/api/v1/footprint", tags=["footprint"])
async def dashboard(ctx: CtxDep, p: ShopperDep) -> FootprintDashboard:
    """The caller's baseline (null before the first save) with its lines, every saved
    footprint, and month by month (UTC): the baseline's monthly share, the kg retired for the
    caller's shop orders, running totals, the share offset (thousandths) and the acres of
    forest a year of which equals the retired kg so far."""
    v = await _service(ctx).view(p.account_id)

    return FootprintDashboard(
        baseline=None if v.baseline is None else _saved(v.baseline),
        baseline_footprint=None if v.baseline_footprint is None else _public(v.baseline_footprint),
        history=[_saved(s) for s in v.history],
        months=[_month(m) for m in v.months],
        retired_kg=v.retired_kg,
    )


def _saved(s: StoredFootprint) -> SavedPublic:
    return SavedPublic(saved_ms=s.saved_ms, model=s.model, total_kg=s.total_kg, answers=s.answers)


def _month(m: Month) -> MonthPublic:
    return MonthPublic(
        month=m.month,
        footprint_kg=m.footprint_kg,
        retired_kg=m.retired_kg,
        cumulative_footprint_kg=m.cumulative_footprint_kg,
        cumulative_retired_kg=m.cumulative_retired_kg,
        offset_permille=m.offset_permille,
        forest_milliacres=m.forest_milliacres,
    )
