"""The virtual meter's queries: a site's accepted records per interval, streamed.

Owns: the SQL behind cloud/services/virtual_meter.py. "Accepted" is the ledger's view: a
record counts once the ledger has closed its interval and referenced it (ledger_refs), so a
record still waiting for its interval to close, or one ingest refused (never a token), is
not in the meter. Sums are per site and interval, as the ledger sums them when it closes one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.domain.virtual_meter import MeterInterval, State
from cloud.storage.tables import devices, ledger_refs, sites, tokens

CHUNK = 4096  # rows a streamed read hands over at a time


@dataclass(frozen=True, slots=True)
class MeterSite:
    site_id: str
    name: str
    owner_account_id: str
    time_zone: str


@dataclass(frozen=True, slots=True)
class MeterToken:
    """One accepted record behind an interval."""

    token_id: str
    device_id: str
    seq: int
    interval_start: int
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    status: str
    quality: int
    ledger_seq: int


def _flag(flag: str):  # type: ignore[no-untyped-def]
    """1 if any record of the group has `flag` in its status ("G,R,GAP")."""
    padded = literal(",") + tokens.c.status + literal(",")
    return func.max(case((padded.like(f"%,{flag},%"), 1), else_=0))


class MeterStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def site(self, site_id: str) -> MeterSite | None:
        q = select(sites.c.site_id, sites.c.name, sites.c.owner_account_id, sites.c.time_zone)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q.where(sites.c.site_id == site_id))).first()
        return None if row is None else MeterSite(*row)

    async def set_time_zone(self, site_id: str, time_zone: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sites).where(sites.c.site_id == site_id).values(time_zone=time_zone)
            )
        return bool(result.rowcount)

    def _accepted(self, site_id: str):  # type: ignore[no-untyped-def]
        return (
            tokens.join(devices, devices.c.device_id == tokens.c.device_id).join(
                ledger_refs, ledger_refs.c.token_id == tokens.c.token_id
            )
        ), devices.c.site_id == site_id

    async def span(self, site_id: str) -> tuple[int, int, int] | None:
        """(first interval start, last interval end, native length) of the site's accepted
        records; None if it has none."""
        joined, where = self._accepted(site_id)
        q = (
            select(
                func.min(tokens.c.interval_start),
                func.max(tokens.c.interval_start + tokens.c.interval_s),
                func.min(tokens.c.interval_s),
            )
            .select_from(joined)
            .where(where)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1]), int(row[2])

    async def intervals(
        self, site_id: str, start: int, end: int, chunk: int = CHUNK
    ) -> AsyncIterator[list[MeterInterval]]:
        """The site's intervals in [start, end), oldest first, `chunk` at a time (a server
        side cursor on PostgreSQL: a year of 5-minute data is never held at once)."""
        joined, where = self._accepted(site_id)
        t = tokens.c
        q = (
            select(
                t.interval_start,
                t.interval_s,
                func.sum(t.generated_wh),
                func.sum(t.imported_wh),
                func.sum(t.exported_wh),
                func.sum(t.charged_wh),
                func.sum(t.discharged_wh),
                func.count(),
                func.max(t.quality),
                _flag("R"),
                _flag("SWAP"),
            )
            .select_from(joined)
            .where(where, t.interval_start >= start, t.interval_start < end)
            .group_by(t.interval_start, t.interval_s)
            .order_by(t.interval_start)
        )
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=chunk))
            async for part in result.partitions(chunk):
                yield [_interval(r) for r in part]

    async def group_intervals(
        self, site_ids: list[str], start: int, end: int, chunk: int = CHUNK
    ) -> AsyncIterator[list[MeterInterval]]:
        """Like `intervals`, summed over several sites (`records` counts their records)."""
        if not site_ids:
            return
        t = tokens.c
        q = (
            select(
                t.interval_start,
                t.interval_s,
                func.sum(t.generated_wh),
                func.sum(t.imported_wh),
                func.sum(t.exported_wh),
                func.sum(t.charged_wh),
                func.sum(t.discharged_wh),
                func.count(),
                func.max(t.quality),
                _flag("R"),
                _flag("SWAP"),
            )
            .select_from(
                tokens.join(devices, devices.c.device_id == tokens.c.device_id).join(
                    ledger_refs, ledger_refs.c.token_id == tokens.c.token_id
                )
            )
            .where(
                devices.c.site_id.in_(site_ids), t.interval_start >= start, t.interval_start < end
            )
            .group_by(t.interval_start, t.interval_s)
            .order_by(t.interval_start)
        )
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=chunk))
            async for part in result.partitions(chunk):
                yield [_interval(r) for r in part]

    async def tokens_of(self, site_id: str, interval_start: int) -> list[MeterToken]:
        """The accepted records behind one of the site's intervals."""
        joined, where = self._accepted(site_id)
        t = tokens.c
        q = (
            select(
                t.token_id,
                t.device_id,
                t.seq,
                t.interval_start,
                t.interval_s,
                t.generated_wh,
                t.imported_wh,
                t.exported_wh,
                t.charged_wh,
                t.discharged_wh,
                t.status,
                t.quality,
                ledger_refs.c.seq,
            )
            .select_from(joined)
            .where(where, t.interval_start == interval_start)
            .order_by(t.device_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [MeterToken(*r) for r in rows]  # type: ignore[call-arg]

    async def envelopes(self, token_ids: list[str]) -> dict[str, bytes]:
        """The signed envelopes of these tokens (the evidence a client verifies)."""
        if not token_ids:
            return {}
        q = select(tokens.c.token_id, tokens.c.envelope).where(tokens.c.token_id.in_(token_ids))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {r[0]: bytes(r[1]) for r in rows}


_FLAGS = {
    (0, 0): frozenset(),
    (1, 0): frozenset({"R"}),
    (0, 1): frozenset({"SWAP"}),
    (1, 1): frozenset({"R", "SWAP"}),
}


def _interval(r: tuple[int, ...]) -> MeterInterval:
    # int(): PostgreSQL's SUM of a bigint is a numeric (a Decimal in Python)
    start, length, gen, imp, exp, chg, dis, n, quality, reset, swap = r
    return MeterInterval(
        start,
        length,
        int(gen),
        int(imp),
        int(exp),
        int(chg),
        int(dis),
        State.ESTIMATED if quality else State.MEASURED,
        n,
        _FLAGS[bool(reset), bool(swap)],
        0,
        1 if quality else 0,
    )
