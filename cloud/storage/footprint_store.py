"""Accounts' carbon footprints on the aggregator's database (migration 0020), and a read-only
look at the carbon shop's retirements for the footprint dashboard.

Owns: every query on `footprints`, and the dashboard's query of the kilograms retired for an
account's orders (carbon_retirements joined with carbon_orders, migration 0018). The shop owns
those tables (cloud/storage/carbon_store.py); this module only reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.storage.tables import carbon_orders, carbon_retirements, footprints


@dataclass(frozen=True, slots=True)
class StoredFootprint:
    footprint_id: int
    account_id: str
    saved_ms: int
    model: str
    answers: dict[str, Any]
    total_kg: int


def _row(r: Any) -> StoredFootprint:
    return StoredFootprint(
        footprint_id=r.id,
        account_id=r.account_id,
        saved_ms=r.saved_ms,
        model=r.model,
        answers=json.loads(r.answers),
        total_kg=r.total_kg,
    )


class FootprintStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(
        self, account_id: str, saved_ms: int, model: str, answers: dict[str, Any], total_kg: int
    ) -> StoredFootprint:
        """Store a calculation; it becomes the account's baseline (the newest)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(footprints).values(
                    account_id=account_id,
                    saved_ms=saved_ms,
                    model=model,
                    answers=json.dumps(answers, sort_keys=True),
                    total_kg=total_kg,
                )
            )
            (footprint_id,) = result.inserted_primary_key or (0,)
        return StoredFootprint(footprint_id, account_id, saved_ms, model, answers, total_kg)

    async def history(self, account_id: str) -> list[StoredFootprint]:
        """The account's saved footprints, oldest first (the last one is the baseline)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(footprints)
                .where(footprints.c.account_id == account_id)
                .order_by(footprints.c.saved_ms, footprints.c.id)
            )
            return [_row(r) for r in rows]

    async def retired_kg(self, account_id: str) -> list[tuple[int, int]]:
        """(retired_ms, kg) of every retirement of the account's shop orders, oldest first.
        The dashboard sums them per month (cloud.domain.footprint.monthly) in UTC, the same on
        SQLite and PostgreSQL."""
        kg = carbon_retirements.c.serial_end - carbon_retirements.c.serial_start + 1
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(carbon_retirements.c.retired_ms, kg.label("kg"))
                .select_from(
                    carbon_retirements.join(
                        carbon_orders, carbon_orders.c.order_id == carbon_retirements.c.order_id
                    )
                )
                .where(carbon_orders.c.buyer_account_id == account_id)
                .order_by(carbon_retirements.c.retired_ms)
            )
            return [(int(r.retired_ms), int(r.kg)) for r in rows]
