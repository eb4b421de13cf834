"""Monthly offset subscriptions and their runs (one per subscription and month).

Owns: the SQL behind cloud/services/shop_subscriptions.py. `claim_run` inserts the month's run
row first; its primary key (subscription, month) is what makes a month's purchase happen once
even when two renewals race (the loser's insert fails and it does nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.storage.tables import carbon_subscription_runs, carbon_subscriptions


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    subscription_id: str
    buyer_account_id: str
    project_id: str
    kg_per_month: int
    currency: str
    beneficiary: str
    reason: str
    state: str
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class StoredRun:
    subscription_id: str
    period: str
    order_id: str | None
    detail: str
    at_ms: int


def _sub(r: Row[tuple[object, ...]]) -> StoredSubscription:
    m = r._mapping
    return StoredSubscription(**{k: m[k] for k in StoredSubscription.__dataclass_fields__})


def _run(r: Row[tuple[object, ...]]) -> StoredRun:
    m = r._mapping
    return StoredRun(**{k: m[k] for k in StoredRun.__dataclass_fields__})


class SubscriptionStore:
    """Subscriptions on one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, s: StoredSubscription) -> None:
        values = {k: getattr(s, k) for k in StoredSubscription.__dataclass_fields__}
        async with self.engine.begin() as conn:
            await conn.execute(insert(carbon_subscriptions).values(**values))

    async def get(self, subscription_id: str) -> StoredSubscription | None:
        c = carbon_subscriptions.c
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(carbon_subscriptions).where(c.subscription_id == subscription_id)
                )
            ).first()
        return None if r is None else _sub(r)

    async def of_buyer(self, buyer_account_id: str) -> list[StoredSubscription]:
        c = carbon_subscriptions.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(carbon_subscriptions)
                .where(c.buyer_account_id == buyer_account_id)
                .order_by(c.created_ms, c.subscription_id)
            )
            return [_sub(r) for r in rows]

    async def due(self, period: str) -> list[StoredSubscription]:
        """Active subscriptions without a run for `period`."""
        c, r = carbon_subscriptions.c, carbon_subscription_runs.c
        ran = select(r.subscription_id).where(r.period == period)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(carbon_subscriptions)
                .where(c.state == "active", c.subscription_id.not_in(ran))
                .order_by(c.created_ms, c.subscription_id)
            )
            return [_sub(x) for x in rows]

    async def cancel(self, subscription_id: str, now_ms: int) -> bool:
        c = carbon_subscriptions.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(carbon_subscriptions)
                .where(c.subscription_id == subscription_id, c.state == "active")
                .values(state="cancelled", updated_ms=now_ms)
            )
            return result.rowcount == 1

    async def claim_run(self, subscription_id: str, period: str, now_ms: int) -> bool:
        """Take the month for this run; False if another run has it already."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(carbon_subscription_runs).values(
                        subscription_id=subscription_id,
                        period=period,
                        order_id=None,
                        detail="",
                        at_ms=now_ms,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def finish_run(
        self, subscription_id: str, period: str, order_id: str | None, detail: str
    ) -> None:
        r = carbon_subscription_runs.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(carbon_subscription_runs)
                .where(r.subscription_id == subscription_id, r.period == period)
                .values(order_id=order_id, detail=detail)
            )

    async def runs(self, subscription_ids: list[str]) -> list[StoredRun]:
        r = carbon_subscription_runs.c
        if not subscription_ids:
            return []
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(carbon_subscription_runs)
                .where(r.subscription_id.in_(subscription_ids))
                .order_by(r.period.desc())
            )
            return [_run(x) for x in rows]
