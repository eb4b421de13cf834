"""The server-rendered pages' Jinja environment: where templates and static files live, and the
filters the templates use.

Owns: number and time formatting for the pages. Numbers are formatted from integers (Wh, grams,
milli-acres, minor units) so the server and home.js print the same digits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates

from protocol.record import Quality

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB / "static"


def make_templates() -> Jinja2Templates:
    """A Jinja environment over cloud/web/templates with the pages' filters."""
    templates = Jinja2Templates(directory=str(WEB / "templates"))
    templates.env.filters.update(
        utc_s=utc_s,
        utc_ms=utc_ms,
        quality_name=quality_name,
        kwh_3=kwh_3,
        kg_1=kg_1,
        acres_3=acres_3,
        money_2=money_2,
    )
    return templates


def utc_s(seconds: int | float | None) -> str:
    """Unix seconds as UTC `YYYY-MM-DD HH:MM:SS` (a dash for none)."""
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc_ms(ms: int | None) -> str:
    """Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS` (a dash for none)."""
    return "—" if ms is None else utc_s(ms / 1000)


def quality_name(value: int) -> str:
    """A record's quality code by name (the number when unknown)."""
    try:
        return Quality(value).name.lower()
    except ValueError:
        return str(value)


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
