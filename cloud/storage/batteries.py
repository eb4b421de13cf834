"""Per-site battery parameters for the ledger (table site_batteries).

Owns: storing and reading them. The ledger reads all of them once per close; an installer or
admin sets them (capacity from the datasheet, state of health as measured over the years, the
self-discharge and round-trip efficiency of the chemistry).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.storage.tables import site_batteries


@dataclass(frozen=True, slots=True)
class SiteBattery:
    """A site's battery in the ledger's integer units."""

    site_id: str
    usable_capacity_wh: int
    soh_permille: int
    self_discharge_ppm_per_h: int
    round_trip_permille: int
    updated_by: str = ""
    updated_ms: int = 0


class BatteryStore:
    """site_batteries on the aggregator's database."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock

    async def set(self, battery: SiteBattery, updated_by: str) -> SiteBattery:
        """Create or replace a site's battery parameters."""
        ms = int(self._clock() * 1000)
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(site_batteries).where(site_batteries.c.site_id == battery.site_id)
            )
            await conn.execute(
                insert(site_batteries).values(
                    site_id=battery.site_id,
                    usable_capacity_wh=battery.usable_capacity_wh,
                    soh_permille=battery.soh_permille,
                    self_discharge_ppm_per_h=battery.self_discharge_ppm_per_h,
                    round_trip_permille=battery.round_trip_permille,
                    updated_by=updated_by,
                    updated_ms=ms,
                )
            )
        got = await self.get(battery.site_id)
        assert got is not None
        return got

    async def get(self, site_id: str) -> SiteBattery | None:
        """One site's battery, or None."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(site_batteries).where(site_batteries.c.site_id == site_id)
                )
            ).first()
        return None if r is None else _battery(r)

    async def all(self) -> dict[str, SiteBattery]:
        """Every registered battery by site."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(site_batteries))).all()
        return {r.site_id: _battery(r) for r in rows}


def _battery(r: Any) -> SiteBattery:
    return SiteBattery(
        r.site_id,
        r.usable_capacity_wh,
        r.soh_permille,
        r.self_discharge_ppm_per_h,
        r.round_trip_permille,
        r.updated_by,
        r.updated_ms,
    )
