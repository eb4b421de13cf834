"""Payments, the provider events applied to them, and FX rates.

Owns: the SQL behind cloud/services/payments.py. An event is recorded and its status change
made in one transaction; the event id is the primary key of payment_events, so a redelivered
event fails its insert and changes nothing (on both backends, also when two deliveries race).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

from sqlalchemy import Row, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.domain.payments import FxRate, PaymentEvent, PaymentStatus, can_move
from cloud.storage.tables import fx_rates, payment_events, payments


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: str
    ref: str
    provider: str
    provider_id: str | None
    amount_minor: int
    currency: str
    status: PaymentStatus
    created_ms: int
    updated_ms: int
    detail: str
    refunded_minor: int
    notified_ms: int | None


class RefTaken(Exception):
    """The ref already has a live payment (created, processing or succeeded)."""


class UnknownProviderPayment(Exception):
    """An event names a provider payment that is not ours."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What recording an event did: the payment after it, whether its status changed, and the
    outcome stored with the event (applied, no_change, late_success, out_of_order)."""

    before: PaymentRow
    after: PaymentRow
    outcome: str

    @property
    def changed(self) -> bool:
        return self.before.status is not self.after.status


def _payment(r: Row[tuple[object, ...]]) -> PaymentRow:
    m = r._mapping
    return PaymentRow(
        payment_id=str(m["payment_id"]),
        ref=str(m["ref"]),
        provider=str(m["provider"]),
        provider_id=None if m["provider_id"] is None else str(m["provider_id"]),
        amount_minor=int(m["amount_minor"]),
        currency=str(m["currency"]),
        status=PaymentStatus(m["status"]),
        created_ms=int(m["created_ms"]),
        updated_ms=int(m["updated_ms"]),
        detail=str(m["detail"]),
        refunded_minor=int(m["refunded_minor"]),
        notified_ms=None if m["notified_ms"] is None else int(m["notified_ms"]),
    )


class PaymentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert(self, row: PaymentRow) -> None:
        """Store a new payment; RefTaken when its ref has a live one."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    payments.insert().values(
                        payment_id=row.payment_id,
                        ref=row.ref,
                        provider=row.provider,
                        provider_id=row.provider_id,
                        amount_minor=row.amount_minor,
                        currency=row.currency,
                        status=row.status.value,
                        created_ms=row.created_ms,
                        updated_ms=row.updated_ms,
                        detail=row.detail,
                        refunded_minor=row.refunded_minor,
                        notified_ms=row.notified_ms,
                    )
                )
        except IntegrityError:
            raise RefTaken(row.ref) from None

    async def get(self, payment_id: str) -> PaymentRow | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(select(payments).where(payments.c.payment_id == payment_id))
            ).first()
        return None if r is None else _payment(r)

    async def by_ref(self, ref: str) -> list[PaymentRow]:
        q = select(payments).where(payments.c.ref == ref).order_by(payments.c.created_ms)
        async with self.engine.connect() as conn:
            return [_payment(r) for r in (await conn.execute(q)).all()]

    async def by_provider_id(self, provider: str, provider_id: str) -> PaymentRow | None:
        c = payments.c
        q = select(payments).where(c.provider == provider, c.provider_id == provider_id)
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else _payment(r)

    async def set_provider(
        self,
        payment_id: str,
        provider_id: str | None,
        status: PaymentStatus,
        detail: str,
        now_ms: int,
        *,
        only_from: PaymentStatus = PaymentStatus.CREATED,
    ) -> PaymentRow | None:
        """Record the provider's answer to the create call (its id and status), unless an event
        moved the payment on meanwhile; the payment after it (None if it moved on)."""
        c = payments.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(payments)
                .where(c.payment_id == payment_id, c.status == only_from.value)
                .values(
                    provider_id=provider_id, status=status.value, detail=detail, updated_ms=now_ms
                )
            )
            if done.rowcount == 0:
                return None
            r = (await conn.execute(select(payments).where(c.payment_id == payment_id))).one()
        return _payment(r)

    async def apply(self, event: PaymentEvent, now_ms: int) -> Applied | None:
        """Record `event` and make its status change in one transaction. None when the event
        was recorded before (a redelivery: nothing changes); UnknownProviderPayment (nothing
        stored) when it names a payment that is not ours."""
        c = payments.c
        try:
            async with self.engine.begin() as conn:
                r = (
                    await conn.execute(
                        select(payments)
                        .where(c.provider == event.provider, c.provider_id == event.provider_id)
                        .with_for_update()
                    )
                ).first()
                if r is None:
                    raise UnknownProviderPayment(event.provider_id)
                before = _payment(r)
                after, outcome = _next(before, event, now_ms)
                await conn.execute(
                    payment_events.insert().values(
                        event_id=event.event_id,
                        provider=event.provider,
                        type=event.type,
                        payment_id=before.payment_id,
                        received_ms=now_ms,
                        outcome=outcome,
                    )
                )
                if after != before:
                    await conn.execute(
                        update(payments)
                        .where(c.payment_id == before.payment_id)
                        .values(
                            status=after.status.value,
                            detail=after.detail,
                            refunded_minor=after.refunded_minor,
                            updated_ms=now_ms,
                        )
                    )
        except IntegrityError:
            return None
        return Applied(before, after, outcome)

    async def set_status(
        self,
        payment_id: str,
        frm: frozenset[PaymentStatus],
        to: PaymentStatus,
        detail: str,
        now_ms: int,
    ) -> bool:
        """Move a payment to `to` if it is still in one of `frm` (a compare-and-set: the loser
        of a race with an event changes nothing)."""
        c = payments.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(payments)
                .where(c.payment_id == payment_id, c.status.in_([s.value for s in frm]))
                .values(status=to.value, detail=detail, updated_ms=now_ms)
            )
        return bool(done.rowcount)

    async def mark_refunded(
        self, payment_id: str, refunded_minor: int, now_ms: int
    ) -> PaymentRow | None:
        """Record a refund of `refunded_minor` in total; a full one makes it refunded."""
        c = payments.c
        async with self.engine.begin() as conn:
            r = (
                await conn.execute(
                    select(payments).where(c.payment_id == payment_id).with_for_update()
                )
            ).first()
            if r is None:
                return None
            p = _payment(r)
            total = max(p.refunded_minor, refunded_minor)
            status = (
                PaymentStatus.REFUNDED
                if total >= p.amount_minor and can_move(p.status, PaymentStatus.REFUNDED)
                else p.status
            )
            await conn.execute(
                update(payments)
                .where(c.payment_id == payment_id)
                .values(refunded_minor=total, status=status.value, updated_ms=now_ms)
            )
            r = (await conn.execute(select(payments).where(c.payment_id == payment_id))).one()
        return _payment(r)

    async def count_by_status(self) -> dict[str, int]:
        """How many payments are in each status (for /metrics)."""
        c = payments.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.status, func.count()).group_by(c.status))
            return {str(status): int(n) for status, n in rows}

    async def stale(self, before_ms: int, limit: int = 500) -> list[PaymentRow]:
        """Payments still created or processing that were created before `before_ms`."""
        c = payments.c
        q = (
            select(payments)
            .where(
                c.status.in_([PaymentStatus.CREATED.value, PaymentStatus.PROCESSING.value]),
                c.created_ms < before_ms,
            )
            .order_by(c.created_ms)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_payment(r) for r in (await conn.execute(q)).all()]

    async def owed_outcomes(self, limit: int = 500) -> list[PaymentRow]:
        """Succeeded, failed or canceled payments whose outcome was not yet handed over."""
        c = payments.c
        q = (
            select(payments)
            .where(
                and_(
                    c.notified_ms.is_(None),
                    c.status.in_(
                        [
                            PaymentStatus.SUCCEEDED.value,
                            PaymentStatus.FAILED.value,
                            PaymentStatus.CANCELED.value,
                        ]
                    ),
                )
            )
            .order_by(c.updated_ms)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_payment(r) for r in (await conn.execute(q)).all()]

    async def mark_notified(self, payment_id: str, now_ms: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(payments)
                .where(payments.c.payment_id == payment_id)
                .values(notified_ms=now_ms)
            )

    async def events(self, payment_id: str) -> list[tuple[str, str, str]]:
        """(event_id, type, outcome) of a payment's recorded events, oldest first."""
        c = payment_events.c
        q = (
            select(c.event_id, c.type, c.outcome)
            .where(c.payment_id == payment_id)
            .order_by(c.received_ms, c.event_id)
        )
        async with self.engine.connect() as conn:
            return [(str(a), str(b), str(o)) for a, b, o in (await conn.execute(q)).all()]

    async def put_rate(self, rate: FxRate) -> None:
        """Store a rate, replacing one of the same pair and day."""
        c = fx_rates.c
        async with self.engine.begin() as conn:
            await conn.execute(
                fx_rates.delete().where(
                    c.base == rate.base, c.quote == rate.quote, c.as_of == rate.as_of
                )
            )
            await conn.execute(
                fx_rates.insert().values(
                    base=rate.base,
                    quote=rate.quote,
                    as_of=rate.as_of,
                    source=rate.source,
                    rate_ppm=rate.rate_ppm,
                )
            )

    async def rates(
        self, base: str | None = None, quote: str | None = None, limit: int = 500
    ) -> list[FxRate]:
        c = fx_rates.c
        q = select(fx_rates)
        if base is not None:
            q = q.where(c.base == base)
        if quote is not None:
            q = q.where(c.quote == quote)
        q = q.order_by(c.base, c.quote, c.as_of.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_rate(r) for r in rows]

    async def rate_on(self, base: str, quote: str, day: date) -> FxRate | None:
        """The newest rate for the pair dated on or before `day`."""
        c = fx_rates.c
        q = (
            select(fx_rates)
            .where(c.base == base, c.quote == quote, c.as_of <= day)
            .order_by(c.as_of.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else _rate(r)


def _rate(r: Row[tuple[object, ...]]) -> FxRate:
    m = r._mapping
    as_of = m["as_of"]
    if not isinstance(as_of, date):
        as_of = date.fromisoformat(str(as_of))
    return FxRate(
        str(m["base"]),
        str(m["quote"]),
        int(m["rate_ppm"]),
        as_of,
        str(m["source"]),
    )


def _next(p: PaymentRow, event: PaymentEvent, now_ms: int) -> tuple[PaymentRow, str]:
    """The payment after `event`, and the event's outcome."""
    if event.status is PaymentStatus.REFUNDED:
        total = max(p.refunded_minor, event.refunded_minor or 0)
        if p.status not in (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED):
            return p, "out_of_order"
        full = total >= p.amount_minor
        status = PaymentStatus.REFUNDED if full else p.status
        after = replace(p, status=status, refunded_minor=total, updated_ms=now_ms)
        return after, "applied" if after != replace(p, updated_ms=now_ms) else "no_change"
    if p.status is event.status:
        return p, "no_change"
    if can_move(p.status, event.status):
        return replace(p, status=event.status, detail=event.reason, updated_ms=now_ms), "applied"
    if event.status is PaymentStatus.SUCCEEDED and p.status in (
        PaymentStatus.FAILED,
        PaymentStatus.CANCELED,
    ):
        # Money arrived for a payment we already gave up on (timed out, or failed and the
        # reservation released): the service refunds it instead of fulfilling.
        return p, "late_success"
    return p, "out_of_order"
