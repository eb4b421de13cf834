"""Revenue meter data: imports (accepted and refused) and their interval readings.

Owns: the SQL behind cloud/services/reconciliation.py. A new import replaces the stored
readings of the same site and flow over the period it covers (a utility resends corrected
data), in the same transaction that records the import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.domain.reconciliation import RevenueInterval
from cloud.storage.tables import revenue_imports, revenue_intervals

CHUNK = 4096


@dataclass(frozen=True, slots=True)
class RevenueImport:
    import_id: str
    site_id: str
    source: str
    sha256: bytes
    size: int
    imported_ms: int
    imported_by: str
    status: str  # accepted | rejected
    detail: str
    intervals: int
    first_start: int | None
    last_end: int | None


class RevenueStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self, imp: RevenueImport, readings: Mapping[str, Sequence[RevenueInterval]]
    ) -> None:
        """Store an import and (when accepted) its readings, replacing the flow's stored
        readings over each reading's period."""
        async with self.engine.begin() as conn:
            await conn.execute(revenue_imports.insert().values(**_row(imp)))
            c = revenue_intervals.c
            for flow, values in readings.items():
                if not values:
                    continue
                await conn.execute(
                    delete(revenue_intervals).where(
                        c.site_id == imp.site_id,
                        c.flow == flow,
                        c.interval_start >= values[0].start,
                        c.interval_start < values[-1].start + values[-1].interval_s,
                    )
                )
                rows = [
                    {
                        "site_id": imp.site_id,
                        "flow": flow,
                        "interval_start": v.start,
                        "interval_s": v.interval_s,
                        "value_wh": v.value_wh,
                        "quality": v.quality,
                        "import_id": imp.import_id,
                    }
                    for v in values
                ]
                for k in range(0, len(rows), 5000):
                    await conn.execute(revenue_intervals.insert(), rows[k : k + 5000])

    async def imports(self, site_id: str, limit: int = 50) -> list[RevenueImport]:
        q = (
            select(revenue_imports)
            .where(revenue_imports.c.site_id == site_id)
            .order_by(revenue_imports.c.imported_ms.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [RevenueImport(*r) for r in rows]

    async def interval_length(self, site_id: str, flow: str) -> int | None:
        c = revenue_intervals.c
        q = select(c.interval_s).where(c.site_id == site_id, c.flow == flow).limit(1)
        async with self.engine.connect() as conn:
            got = await conn.scalar(q)
        return None if got is None else int(got)

    async def flows(self, site_id: str) -> list[str]:
        c = revenue_intervals.c
        q = select(c.flow).where(c.site_id == site_id).distinct()
        async with self.engine.connect() as conn:
            return sorted(r[0] for r in (await conn.execute(q)).all())

    async def intervals(
        self, site_id: str, flow: str, start: int, end: int
    ) -> AsyncIterator[list[RevenueInterval]]:
        c = revenue_intervals.c
        q = (
            select(c.interval_start, c.interval_s, c.value_wh, c.quality)
            .where(
                c.site_id == site_id,
                c.flow == flow,
                c.interval_start >= start,
                c.interval_start < end,
            )
            .order_by(c.interval_start)
        )
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=CHUNK))
            async for part in result.partitions(CHUNK):
                yield [RevenueInterval(int(a), int(b), int(v), q_) for a, b, v, q_ in part]


def _row(imp: RevenueImport) -> dict[str, object]:
    return {
        "import_id": imp.import_id,
        "site_id": imp.site_id,
        "source": imp.source,
        "sha256": imp.sha256,
        "size": imp.size,
        "imported_ms": imp.imported_ms,
        "imported_by": imp.imported_by,
        "status": imp.status,
        "detail": imp.detail,
        "intervals": imp.intervals,
        "first_start": imp.first_start,
        "last_end": imp.last_end,
    }
