"""OpenADR 3 VTN objects (tables openadr_programs, openadr_events, openadr_reports).

Owns: their SQL. Bodies are the spec's JSON objects less the server's fields (id,
createdDateTime, modificationDateTime, objectType), which cloud/services/openadr.py adds back.
Each method is one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.storage.tables import openadr_events, openadr_programs, openadr_reports


class NameTaken(Exception):
    """Another program already has this programName."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A program, event or report row."""

    object_id: str
    body: dict[str, Any]
    created_ms: int
    modified_ms: int
    program_id: str = ""
    event_id: str = ""
    dispatch_event_id: str | None = None
    deleted_ms: int | None = None
    end_s: int = 0  # events: when the event's interval ends (Unix s)


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


class OpenAdrStore:
    """The VTN's objects on the aggregator's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- programs ------------------------------------------------------------------------

    async def insert_program(self, program_id: str, body: dict[str, Any], now_ms: int) -> None:
        """Store a new program; NameTaken when its programName is in use."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(openadr_programs).values(
                        program_id=program_id,
                        program_name=body["programName"],
                        body=_dump(body),
                        created_ms=now_ms,
                        modified_ms=now_ms,
                    )
                )
        except IntegrityError:
            raise NameTaken(body["programName"]) from None

    async def update_program(self, program_id: str, body: dict[str, Any], now_ms: int) -> bool:
        """Replace a program's body; False when there is no such program."""
        try:
            async with self.engine.begin() as conn:
                res = await conn.execute(
                    update(openadr_programs)
                    .where(openadr_programs.c.program_id == program_id)
                    .values(program_name=body["programName"], body=_dump(body), modified_ms=now_ms)
                )
        except IntegrityError:
            raise NameTaken(body["programName"]) from None
        return bool(res.rowcount)

    async def delete_program(self, program_id: str) -> None:
        """Remove a program."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(openadr_programs).where(openadr_programs.c.program_id == program_id)
            )

    async def get_program(self, program_id: str) -> StoredObject | None:
        """One program, or None."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(openadr_programs).where(openadr_programs.c.program_id == program_id)
                )
            ).first()
        return None if r is None else _program(r)

    async def list_programs(self) -> list[StoredObject]:
        """Every program, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(openadr_programs).order_by(
                        openadr_programs.c.created_ms, openadr_programs.c.program_id
                    )
                )
            ).all()
        return [_program(r) for r in rows]

    # --- events --------------------------------------------------------------------------

    async def insert_event(
        self,
        event_id: str,
        program_id: str,
        dispatch_event_id: str | None,
        start_s: int,
        end_s: int,
        body: dict[str, Any],
        now_ms: int,
    ) -> None:
        """Store a new event and the dispatch event it became (None: none)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(openadr_events).values(
                    event_id=event_id,
                    program_id=program_id,
                    dispatch_event_id=dispatch_event_id,
                    start_s=start_s,
                    end_s=end_s,
                    body=_dump(body),
                    created_ms=now_ms,
                    modified_ms=now_ms,
                )
            )

    async def update_event(
        self,
        event_id: str,
        program_id: str,
        dispatch_event_id: str | None,
        start_s: int,
        end_s: int,
        body: dict[str, Any],
        now_ms: int,
    ) -> None:
        """Replace an event's body, times and dispatch event."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(openadr_events)
                .where(openadr_events.c.event_id == event_id)
                .values(
                    program_id=program_id,
                    dispatch_event_id=dispatch_event_id,
                    start_s=start_s,
                    end_s=end_s,
                    body=_dump(body),
                    modified_ms=now_ms,
                )
            )

    async def mark_event_deleted(self, event_id: str, now_ms: int) -> None:
        """Hide an event from /events; its row (and so its reports) stay."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(openadr_events)
                .where(openadr_events.c.event_id == event_id)
                .values(deleted_ms=now_ms, modified_ms=now_ms)
            )

    async def get_event(self, event_id: str, *, deleted: bool = False) -> StoredObject | None:
        """One event (a deleted one only with `deleted`), or None."""
        q = select(openadr_events).where(openadr_events.c.event_id == event_id)
        if not deleted:
            q = q.where(openadr_events.c.deleted_ms.is_(None))
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else _event(r)

    async def list_events(
        self,
        *,
        program_id: str | None = None,
        event_id: str | None = None,
        ends_after: int | None = None,
        deleted: bool = False,
    ) -> list[StoredObject]:
        """Events, oldest first: of a program, one event, those still running after
        `ends_after` (Unix s); deleted ones too with `deleted`."""
        q = select(openadr_events).order_by(openadr_events.c.created_ms, openadr_events.c.event_id)
        if program_id is not None:
            q = q.where(openadr_events.c.program_id == program_id)
        if event_id is not None:
            q = q.where(openadr_events.c.event_id == event_id)
        if ends_after is not None:
            q = q.where(openadr_events.c.end_s > ends_after)
        if not deleted:
            q = q.where(openadr_events.c.deleted_ms.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_event(r) for r in rows]

    async def count_events(self, program_id: str) -> int:
        """Events of a program that are not deleted."""
        async with self.engine.connect() as conn:
            n = (
                await conn.execute(
                    select(func.count())
                    .select_from(openadr_events)
                    .where(
                        openadr_events.c.program_id == program_id,
                        openadr_events.c.deleted_ms.is_(None),
                    )
                )
            ).scalar_one()
        return int(n)

    # --- reports -------------------------------------------------------------------------

    async def put_report(
        self,
        report_id: str,
        program_id: str,
        event_id: str,
        client_name: str,
        body: dict[str, Any],
        now_ms: int,
    ) -> None:
        """Create a report, or replace its body when it exists (its created time stays)."""
        text = _dump(body)
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(openadr_reports)
                .where(openadr_reports.c.report_id == report_id)
                .values(body=text, modified_ms=now_ms)
            )
            if not res.rowcount:
                await conn.execute(
                    insert(openadr_reports).values(
                        report_id=report_id,
                        program_id=program_id,
                        event_id=event_id,
                        client_name=client_name,
                        body=text,
                        created_ms=now_ms,
                        modified_ms=now_ms,
                    )
                )

    async def get_report_body(self, report_id: str) -> str | None:
        """A report's stored body text (to tell whether it changed), or None."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(openadr_reports.c.body).where(openadr_reports.c.report_id == report_id)
                )
            ).scalar_one_or_none()

    async def list_reports(
        self,
        *,
        program_id: str | None = None,
        event_id: str | None = None,
        client_name: str | None = None,
    ) -> list[StoredObject]:
        """Reports, oldest first, filtered by program, event and client name."""
        q = select(openadr_reports).order_by(
            openadr_reports.c.created_ms, openadr_reports.c.report_id
        )
        if program_id is not None:
            q = q.where(openadr_reports.c.program_id == program_id)
        if event_id is not None:
            q = q.where(openadr_reports.c.event_id == event_id)
        if client_name is not None:
            q = q.where(openadr_reports.c.client_name == client_name)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_report(r) for r in rows]


def dump_body(body: dict[str, Any]) -> str:
    """The stored text of a body (the form get_report_body returns)."""
    return _dump(body)


def _program(r: Any) -> StoredObject:
    return StoredObject(
        r.program_id, json.loads(r.body), r.created_ms, r.modified_ms, program_id=r.program_id
    )


def _event(r: Any) -> StoredObject:
    return StoredObject(
        r.event_id,
        json.loads(r.body),
        r.created_ms,
        r.modified_ms,
        program_id=r.program_id,
        event_id=r.event_id,
        dispatch_event_id=r.dispatch_event_id,
        deleted_ms=r.deleted_ms,
        end_s=r.end_s,
    )


def _report(r: Any) -> StoredObject:
    return StoredObject(
        r.report_id,
        json.loads(r.body),
        r.created_ms,
        r.modified_ms,
        program_id=r.program_id,
        event_id=r.event_id,
    )
