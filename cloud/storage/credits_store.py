"""Market payment-credit transfers (top-ups and redemptions through the payment port).

Owns: the SQL behind cloud/services/credits.py. Every state change is conditional on the state
it leaves (`WHERE state IN ...`), so a repeated or racing call changes nothing and says so
(False); the changes that go with a ledger entry are made on the ledger's connection, in the
same unit of work as the entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.storage.tables import credit_transfers


@dataclass(frozen=True, slots=True)
class CreditTransfer:
    transfer_id: str
    kind: str  # top_up | redemption
    site_id: str
    account_id: str
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    state: str
    payment_id: str | None
    payout_to: str
    payout_id: str | None
    ledger_seq: int | None
    return_seq: int | None
    detail: str
    created_ms: int
    updated_ms: int


def _row(r: Row[tuple[object, ...]]) -> CreditTransfer:
    m = r._mapping
    return CreditTransfer(**{k: m[k] for k in CreditTransfer.__dataclass_fields__})


class CreditStore:
    """Credit transfers on one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @staticmethod
    async def insert_in(conn: AsyncConnection, t: CreditTransfer) -> None:
        values = {k: getattr(t, k) for k in CreditTransfer.__dataclass_fields__}
        await conn.execute(insert(credit_transfers).values(**values))

    async def insert(self, t: CreditTransfer) -> None:
        async with self.engine.begin() as conn:
            await self.insert_in(conn, t)

    async def get(self, transfer_id: str) -> CreditTransfer | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(credit_transfers).where(credit_transfers.c.transfer_id == transfer_id)
                )
            ).first()
        return None if r is None else _row(r)

    async def for_site(self, site_id: str, limit: int = 100) -> list[CreditTransfer]:
        """The site's transfers, newest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(credit_transfers)
                .where(credit_transfers.c.site_id == site_id)
                .order_by(credit_transfers.c.created_ms.desc(), credit_transfers.c.transfer_id)
                .limit(limit)
            )
            return [_row(r) for r in rows]

    async def in_state(self, kind: str, state: str) -> list[CreditTransfer]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(credit_transfers)
                .where(credit_transfers.c.kind == kind, credit_transfers.c.state == state)
                .order_by(credit_transfers.c.created_ms)
            )
            return [_row(r) for r in rows]

    @staticmethod
    async def move_in(
        conn: AsyncConnection,
        transfer_id: str,
        from_states: Iterable[str],
        to_state: str,
        now_ms: int,
        **values: object,
    ) -> bool:
        """Move the transfer from one of `from_states` to `to_state` (with `values`); False
        when it was not in one of them (a repeat, or another caller got there first)."""
        result = await conn.execute(
            update(credit_transfers)
            .where(
                credit_transfers.c.transfer_id == transfer_id,
                credit_transfers.c.state.in_(list(from_states)),
            )
            .values(state=to_state, updated_ms=now_ms, **values)
        )
        return result.rowcount == 1

    async def move(
        self,
        transfer_id: str,
        from_states: Iterable[str],
        to_state: str,
        now_ms: int,
        **values: object,
    ) -> bool:
        async with self.engine.begin() as conn:
            return await self.move_in(conn, transfer_id, from_states, to_state, now_ms, **values)
