"""The retail carbon shop on the aggregator's database (migration 0018): projects, lots, orders
and their lines, retirements, and the append-only event log.

Owns: every query on the carbon_* tables, and the transactions that keep the units honest:

* `reserve`: one transaction inserts the order, takes the kilograms of every lot with a
  conditional `UPDATE ... SET available_kg = available_kg - :kg WHERE ... available_kg >= :kg`
  (rowcount 0: not enough, everything rolls back), allocates serials from what the holding
  orders do not hold (cloud.domain.carbon_shop.allocate) and writes the lines. Lots are taken in
  lot id order, so two orders never wait on each other's lots (no deadlock). On PostgreSQL the
  UPDATE row-locks the lot until commit: the next reservation of that lot waits and then sees
  this one's lines.
* `place_and_retire`: reserved -> placed -> complete and one retirement per line, in one
  transaction, only if the order is still reserved (a second call changes nothing).
* `release`: reserved -> cancelled | expired and the kilograms back, only if still reserved.

The database refuses a retirement that overlaps one of the same lot (a trigger; unique
(lot_id, serial_start)); that surfaces as `RetirementOverlap`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.domain.carbon_shop import HOLDING, OrderState, ShopError, allocate, price_minor
from cloud.storage.tables import (
    carbon_events,
    carbon_lots,
    carbon_order_lines,
    carbon_orders,
    carbon_projects,
    carbon_retirements,
    certificates,
)


class InsufficientUnits(Exception):
    """A lot has fewer kilograms left than asked for (nothing was reserved)."""

    def __init__(self, lot_id: str, wanted_kg: int, available_kg: int) -> None:
        super().__init__(f"lot {lot_id} has {available_kg} kg left, {wanted_kg} kg were asked for")
        self.lot_id = lot_id
        self.wanted_kg = wanted_kg
        self.available_kg = available_kg


class RetirementOverlap(ValueError):
    """The database refused a retirement: some of its serials are already retired."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True, slots=True)
class StoredProject:
    project_id: str
    provider_account_id: str
    name: str
    kind: str
    country: str
    standard: str
    verifier: str
    serial_prefix: str
    start_date: str | None
    end_date: str | None
    vintage: int
    status: str
    description: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class StoredLot:
    lot_id: str
    project_id: str
    serial_start: int
    serial_end: int
    price_minor_per_t: int
    currency: str
    available_kg: int
    created_ms: int
    certificate_id: str | None = None
    serial_prefix: str | None = None  # the lot's own (gridmint_solar); None: the project's
    ledger_seq: int | None = None  # the CARBON leaf that listed it (None: written without one)

    @property
    def kg(self) -> int:
        return self.serial_end - self.serial_start + 1

    def prefix(self, project_prefix: str) -> str:
        """The prefix of this lot's serials."""
        return self.serial_prefix or project_prefix


@dataclass(frozen=True, slots=True)
class StoredLine:
    """Serials [serial_start, serial_end] of one lot held by an order."""

    lot_id: str
    serial_start: int
    serial_end: int
    kg: int
    price_minor: int


@dataclass(frozen=True, slots=True)
class StoredOrder:
    order_id: str
    buyer_account_id: str
    state: str
    currency: str
    total_minor: int
    created_ms: int
    expires_ms: int
    payment_id: str | None
    beneficiary: str
    reason: str
    updated_ms: int
    lines: tuple[StoredLine, ...]
    paid_seq: int | None = None  # the CARBON leaf of the paid order
    retired_seq: int | None = None  # the CARBON leaf of its retirement
    retire_on_payment: int = 1  # 0: paid now, retired later by its buyer (placed meanwhile)


@dataclass(frozen=True, slots=True)
class StoredRetirement:
    retirement_id: str
    order_id: str
    lot_id: str
    serial_start: int
    serial_end: int
    beneficiary: str
    reason: str
    retired_ms: int
    ledger_seq: int | None = None  # the CARBON leaf of the order's retirement


class OrderNotReserved(RuntimeError):
    """The order was no longer reserved when its payment was to be recorded (nothing written)."""


class OrderNotPlaced(RuntimeError):
    """The order was not paid-and-waiting (placed) when its retirement was to be recorded."""


class CertificateNotHeld(RuntimeError):
    """The certificate could not be held for (or retired by) the shop: it changed meanwhile."""


@dataclass(frozen=True, slots=True)
class SoldOut:
    """A certificate whose lot a retirement sells out: retired with it, for the lot's buyers."""

    certificate_id: str
    lot_id: str
    beneficiary: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    at_ms: int
    kind: str
    project_id: str | None
    order_id: str | None
    actor: str
    detail: dict[str, Any]


class CarbonStore:
    """The carbon shop's rows on one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # projects and lots ----------------------------------------------------------------------

    async def add_project(self, p: StoredProject, actor: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(carbon_projects).values(**_fields(p)))
            await _event(
                conn,
                p.created_ms,
                "project_registered",
                actor,
                project_id=p.project_id,
                detail={"name": p.name, "standard": p.standard, "verifier": p.verifier},
            )

    async def get_project(self, project_id: str) -> StoredProject | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(carbon_projects).where(carbon_projects.c.project_id == project_id)
                )
            ).first()
        return None if row is None else StoredProject(**row._mapping)

    async def projects(self) -> list[StoredProject]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(carbon_projects).order_by(carbon_projects.c.created_ms))
            ).all()
        return [StoredProject(**r._mapping) for r in rows]

    async def set_project_status(
        self, project_id: str, old: str, new: str, now_ms: int, actor: str, reason: str
    ) -> bool:
        """Move the project from `old` to `new` (conditional: False if it was not `old` any
        more), with a `status_changed` event."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(carbon_projects)
                .where(carbon_projects.c.project_id == project_id, carbon_projects.c.status == old)
                .values(status=new)
            )
            if done.rowcount != 1:
                return False
            await _event(
                conn,
                now_ms,
                "status_changed",
                actor,
                project_id=project_id,
                detail={"from": old, "to": new, "reason": reason},
            )
            return True

    async def add_lot(
        self, lot: StoredLot, actor: str, conn: AsyncConnection | None = None
    ) -> None:
        """Store a lot (with `conn`, in the caller's unit of work: the ledger's, which writes
        the listing leaf in the same transaction; a gridmint_solar lot's certificate is held
        by `hold_certificate` in that same unit of work)."""
        if conn is None:
            async with self.engine.begin() as own:
                await self._add_lot(own, lot, actor)
        else:
            await self._add_lot(conn, lot, actor)

    async def _add_lot(self, conn: AsyncConnection, lot: StoredLot, actor: str) -> None:
        await conn.execute(insert(carbon_lots).values(**_fields(lot)))
        await _event(
            conn,
            lot.created_ms,
            "lot_added",
            actor,
            project_id=lot.project_id,
            detail={
                "lot_id": lot.lot_id,
                "serial_start": lot.serial_start,
                "serial_end": lot.serial_end,
                "price_minor_per_t": lot.price_minor_per_t,
                "currency": lot.currency,
                **({"certificate_id": lot.certificate_id} if lot.certificate_id else {}),
                **({"ledger_seq": lot.ledger_seq} if lot.ledger_seq is not None else {}),
            },
        )

    async def hold_certificate(
        self, conn: AsyncConnection, certificate_id: str, owner_site_id: str, lot_id: str
    ) -> None:
        """Mark an active, unlisted certificate of `owner_site_id` as held by the shop's lot
        (a conditional update: CertificateNotHeld, and the unit of work rolls back, if it is no
        longer so). While held it is neither transferred nor retired outside the shop."""
        done = await conn.execute(
            update(certificates)
            .where(
                certificates.c.certificate_id == certificate_id,
                certificates.c.owner_site_id == owner_site_id,
                certificates.c.status == "active",
                certificates.c.listed_lot_id.is_(None),
            )
            .values(listed_lot_id=lot_id)
        )
        if done.rowcount != 1:
            raise CertificateNotHeld(
                f"certificate {certificate_id} is no longer an active, unlisted certificate of "
                f"site {owner_site_id}"
            )

    async def set_lot_seq(self, conn: AsyncConnection, lot_id: str, seq: int) -> None:
        """Record the listing leaf of a lot stored without one (listed before the shop wrote
        leaves); in the caller's unit of work, only if it has none yet."""
        await conn.execute(
            update(carbon_lots)
            .where(carbon_lots.c.lot_id == lot_id, carbon_lots.c.ledger_seq.is_(None))
            .values(ledger_seq=seq)
        )

    async def held_certificates(self, lot_ids: Sequence[str]) -> dict[str, list[str]]:
        """The certificates each of these lots holds (sells), by certificate id."""
        if not lot_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(certificates.c.listed_lot_id, certificates.c.certificate_id)
                    .where(certificates.c.listed_lot_id.in_(list(lot_ids)))
                    .order_by(certificates.c.certificate_id)
                )
            ).all()
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r.listed_lot_id, []).append(r.certificate_id)
        return out

    async def create_project_once(self, p: StoredProject, actor: str) -> StoredProject:
        """The project with `p`'s id, stored now if it is not there yet (idempotent: a site's
        gridmint_solar project is made on its first listing)."""
        found = await self.get_project(p.project_id)
        if found is not None:
            return found
        try:
            await self.add_project(p, actor)
        except IntegrityError:
            found = await self.get_project(p.project_id)
            if found is None:
                raise
            return found
        return p

    async def get_lot(self, lot_id: str) -> StoredLot | None:
        found = await self.lots(lot_ids=[lot_id])
        return found[0] if found else None

    async def lots(
        self, *, project_id: str | None = None, lot_ids: Sequence[str] | None = None
    ) -> list[StoredLot]:
        conds: list[Any] = []
        if project_id is not None:
            conds.append(carbon_lots.c.project_id == project_id)
        if lot_ids is not None:
            conds.append(carbon_lots.c.lot_id.in_(list(lot_ids)))
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(carbon_lots)
                    .where(*conds)
                    .order_by(
                        carbon_lots.c.created_ms, carbon_lots.c.serial_start, carbon_lots.c.lot_id
                    )
                )
            ).all()
        return [StoredLot(**r._mapping) for r in rows]

    # orders ---------------------------------------------------------------------------------

    async def reserve(
        self,
        *,
        order_id: str,
        buyer_account_id: str,
        currency: str,
        beneficiary: str,
        reason: str,
        lines: Sequence[tuple[StoredLot, int]],
        now_ms: int,
        expires_ms: int,
        retire_on_payment: bool = True,
    ) -> StoredOrder:
        """Reserve `kg` of each lot for a new order, all or nothing (InsufficientUnits)."""
        wanted: dict[str, tuple[StoredLot, int]] = {}
        for lot, kg in lines:  # one line per lot: the same lot twice is summed
            prev = wanted.get(lot.lot_id)
            wanted[lot.lot_id] = (lot, kg + (prev[1] if prev else 0))
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(carbon_orders).values(
                    order_id=order_id,
                    buyer_account_id=buyer_account_id,
                    state=OrderState.RESERVED.value,
                    currency=currency,
                    total_minor=0,
                    created_ms=now_ms,
                    expires_ms=expires_ms,
                    payment_id=None,
                    beneficiary=beneficiary,
                    reason=reason,
                    updated_ms=now_ms,
                    retire_on_payment=int(retire_on_payment),
                )
            )
            total = 0
            for lot_id in sorted(wanted):
                lot, kg = wanted[lot_id]
                done = await conn.execute(
                    update(carbon_lots)
                    .where(carbon_lots.c.lot_id == lot_id, carbon_lots.c.available_kg >= kg)
                    .values(available_kg=carbon_lots.c.available_kg - kg)
                )
                if done.rowcount != 1:
                    left = (
                        await conn.execute(
                            select(carbon_lots.c.available_kg).where(carbon_lots.c.lot_id == lot_id)
                        )
                    ).scalar()
                    raise InsufficientUnits(lot_id, kg, int(left or 0))
                taken = await _held_spans(conn, lot_id)
                try:
                    spans = allocate((lot.serial_start, lot.serial_end), taken, kg)
                except ShopError as exc:  # available_kg and the lines disagree: refuse
                    raise RuntimeError(f"lot {lot_id}: {exc}") from exc
                rows: list[dict[str, Any]] = [
                    {
                        "order_id": order_id,
                        "lot_id": lot_id,
                        "serial_start": a,
                        "serial_end": b,
                        "kg": b - a + 1,
                        "price_minor": price_minor(b - a + 1, lot.price_minor_per_t),
                    }
                    for a, b in spans
                ]
                await conn.execute(insert(carbon_order_lines), rows)
                total += sum(r["price_minor"] for r in rows)
                await _event(
                    conn,
                    now_ms,
                    "reserved",
                    buyer_account_id,
                    project_id=lot.project_id,
                    order_id=order_id,
                    detail={"lot_id": lot_id, "kg": kg, "serials": [list(s) for s in spans]},
                )
            await conn.execute(
                update(carbon_orders)
                .where(carbon_orders.c.order_id == order_id)
                .values(total_minor=total)
            )
        order = await self.get_order(order_id)
        assert order is not None
        return order

    async def set_payment(self, order_id: str, payment_id: str) -> None:
        """Record the payment provider's id of a reserved order."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(carbon_orders)
                .where(
                    carbon_orders.c.order_id == order_id,
                    carbon_orders.c.state == OrderState.RESERVED.value,
                )
                .values(payment_id=payment_id)
            )

    async def place_and_retire(
        self,
        order_id: str,
        payment_id: str,
        now_ms: int,
        *,
        conn: AsyncConnection | None = None,
        paid_seq: int | None = None,
        retired_seq: int | None = None,
        sold_out: Sequence[SoldOut] = (),
    ) -> bool:
        """Paid: the order becomes complete and every line is retired for its beneficiary, in
        one transaction. False (nothing changed) unless the order was still reserved.

        With `conn` it runs in the caller's unit of work (the ledger's, whose leaves of the paid
        order and its retirement, `paid_seq` and `retired_seq`, are written with these rows):
        then an order no longer reserved raises OrderNotReserved, so the leaves roll back too.
        `sold_out` certificates (their lots' last serials retired here) are retired with it
        (CertificateNotHeld if one is no longer held by its lot)."""
        if conn is not None:
            if not await self._place_and_retire(
                conn, order_id, payment_id, now_ms, paid_seq, retired_seq, sold_out
            ):
                raise OrderNotReserved(f"order {order_id} is no longer reserved")
            return True
        async with self.engine.begin() as own:
            return await self._place_and_retire(
                own, order_id, payment_id, now_ms, paid_seq, retired_seq, sold_out
            )

    async def _place_and_retire(
        self,
        conn: AsyncConnection,
        order_id: str,
        payment_id: str,
        now_ms: int,
        paid_seq: int | None,
        retired_seq: int | None,
        sold_out: Sequence[SoldOut],
    ) -> bool:
        if not await self._place(conn, order_id, payment_id, now_ms, paid_seq):
            return False
        await self._retire(conn, order_id, now_ms, retired_seq, sold_out, None, None)
        return True

    async def place(
        self,
        order_id: str,
        payment_id: str,
        now_ms: int,
        *,
        conn: AsyncConnection | None = None,
        paid_seq: int | None = None,
    ) -> bool:
        """Paid, to be retired later: reserved -> placed, the serials stay the buyer's. False
        (nothing changed) unless the order was still reserved; with `conn` (the ledger's unit
        of work) that raises OrderNotReserved instead, so the paid order's leaf rolls back."""
        if conn is not None:
            if not await self._place(conn, order_id, payment_id, now_ms, paid_seq):
                raise OrderNotReserved(f"order {order_id} is no longer reserved")
            return True
        async with self.engine.begin() as own:
            return await self._place(own, order_id, payment_id, now_ms, paid_seq)

    async def retire_placed(
        self,
        order_id: str,
        now_ms: int,
        *,
        beneficiary: str,
        reason: str,
        conn: AsyncConnection | None = None,
        retired_seq: int | None = None,
        sold_out: Sequence[SoldOut] = (),
    ) -> None:
        """Retire a placed (paid) order's serials for `beneficiary`: placed -> complete in one
        transaction (the caller's `conn`, or its own). OrderNotPlaced if it was not placed."""
        if conn is not None:
            await self._retire_placed(
                conn, order_id, now_ms, beneficiary, reason, retired_seq, sold_out
            )
            return
        async with self.engine.begin() as own:
            await self._retire_placed(
                own, order_id, now_ms, beneficiary, reason, retired_seq, sold_out
            )

    async def _retire_placed(
        self,
        conn: AsyncConnection,
        order_id: str,
        now_ms: int,
        beneficiary: str,
        reason: str,
        retired_seq: int | None,
        sold_out: Sequence[SoldOut],
    ) -> None:
        # Claim the order first (a conditional update), so two retirements of it cannot both
        # write: the loser finds it no longer placed.
        claimed = await conn.execute(
            update(carbon_orders)
            .where(
                carbon_orders.c.order_id == order_id,
                carbon_orders.c.state == OrderState.PLACED.value,
                carbon_orders.c.retired_seq.is_(None),
            )
            .values(beneficiary=beneficiary, reason=reason, updated_ms=now_ms, retired_seq=-1)
        )
        if claimed.rowcount != 1:
            raise OrderNotPlaced(f"order {order_id} is not paid and waiting to be retired")
        await self._retire(conn, order_id, now_ms, retired_seq, sold_out, beneficiary, reason)

    async def _place(
        self,
        conn: AsyncConnection,
        order_id: str,
        payment_id: str,
        now_ms: int,
        paid_seq: int | None,
    ) -> bool:
        done = await conn.execute(
            update(carbon_orders)
            .where(
                carbon_orders.c.order_id == order_id,
                carbon_orders.c.state == OrderState.RESERVED.value,
            )
            .values(
                state=OrderState.PLACED.value,
                payment_id=payment_id,
                updated_ms=now_ms,
                paid_seq=paid_seq,
            )
        )
        if done.rowcount != 1:
            return False
        order = (
            await conn.execute(select(carbon_orders).where(carbon_orders.c.order_id == order_id))
        ).one()
        lines = await _lines(conn, order_id)
        projects = await _projects_of(conn, [ln.lot_id for ln in lines])
        for lot_id in sorted(projects):
            await _event(
                conn,
                now_ms,
                "placed",
                order.buyer_account_id,
                project_id=projects[lot_id],
                order_id=order_id,
                detail={
                    "lot_id": lot_id,
                    "payment_id": payment_id,
                    **({"ledger_seq": paid_seq} if paid_seq is not None else {}),
                },
            )
        return True

    async def _retire(
        self,
        conn: AsyncConnection,
        order_id: str,
        now_ms: int,
        retired_seq: int | None,
        sold_out: Sequence[SoldOut],
        beneficiary: str | None,
        reason: str | None,
    ) -> None:
        order = (
            await conn.execute(select(carbon_orders).where(carbon_orders.c.order_id == order_id))
        ).one()
        beneficiary = order.beneficiary if beneficiary is None else beneficiary
        reason = order.reason if reason is None else reason
        lines = await _lines(conn, order_id)
        projects = await _projects_of(conn, [ln.lot_id for ln in lines])
        try:
            for ln in sorted(lines, key=lambda x: (x.lot_id, x.serial_start)):
                await conn.execute(
                    insert(carbon_retirements).values(
                        retirement_id=new_id("ret"),
                        order_id=order_id,
                        lot_id=ln.lot_id,
                        serial_start=ln.serial_start,
                        serial_end=ln.serial_end,
                        beneficiary=beneficiary,
                        reason=reason,
                        retired_ms=now_ms,
                        ledger_seq=retired_seq,
                    )
                )
                await _event(
                    conn,
                    now_ms,
                    "retired",
                    order.buyer_account_id,
                    project_id=projects[ln.lot_id],
                    order_id=order_id,
                    detail={
                        "lot_id": ln.lot_id,
                        "serial_start": ln.serial_start,
                        "serial_end": ln.serial_end,
                        "beneficiary": beneficiary,
                        **({"ledger_seq": retired_seq} if retired_seq is not None else {}),
                    },
                )
        except IntegrityError as exc:
            raise RetirementOverlap(str(exc.orig)) from exc
        for so in sold_out:
            retired = await conn.execute(
                update(certificates)
                .where(
                    certificates.c.certificate_id == so.certificate_id,
                    certificates.c.listed_lot_id == so.lot_id,
                    certificates.c.status == "active",
                )
                .values(status="retired", beneficiary=so.beneficiary[:200], retired_ms=now_ms)
            )
            if retired.rowcount != 1:
                raise CertificateNotHeld(
                    f"certificate {so.certificate_id} is no longer held by lot {so.lot_id}"
                )
            await _event(
                conn,
                now_ms,
                "certificate_retired",
                order.buyer_account_id,
                project_id=projects[so.lot_id],
                order_id=order_id,
                detail={"lot_id": so.lot_id, "certificate_id": so.certificate_id},
            )
        await conn.execute(
            update(carbon_orders)
            .where(carbon_orders.c.order_id == order_id)
            .values(state=OrderState.COMPLETE.value, retired_seq=retired_seq)
        )

    async def retired_kg(self, lot_ids: Sequence[str]) -> dict[str, int]:
        """Kilograms retired so far per lot."""
        if not lot_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        carbon_retirements.c.lot_id,
                        carbon_retirements.c.serial_start,
                        carbon_retirements.c.serial_end,
                    ).where(carbon_retirements.c.lot_id.in_(list(lot_ids)))
                )
            ).all()
        out = dict.fromkeys(lot_ids, 0)
        for r in rows:
            out[r.lot_id] += r.serial_end - r.serial_start + 1
        return out

    async def paid_orders_of_lots(self, lot_ids: Sequence[str]) -> list[tuple[str, str, int, int]]:
        """(lot, order, paid leaf, retirement leaf) of every order with ledger leaves that
        bought from these lots, oldest leaf first."""
        if not lot_ids:
            return []
        q = (
            select(
                carbon_order_lines.c.lot_id,
                carbon_orders.c.order_id,
                carbon_orders.c.paid_seq,
                carbon_orders.c.retired_seq,
            )
            .select_from(
                carbon_order_lines.join(
                    carbon_orders, carbon_orders.c.order_id == carbon_order_lines.c.order_id
                )
            )
            .where(
                carbon_order_lines.c.lot_id.in_(list(lot_ids)),
                carbon_orders.c.paid_seq.is_not(None),
            )
            .distinct()
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return sorted((r.lot_id, r.order_id, int(r.paid_seq), int(r.retired_seq)) for r in rows)

    async def beneficiaries(self, lot_id: str) -> list[str]:
        """The beneficiaries of a lot's retirements, first retirement first, each once."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(carbon_retirements.c.beneficiary)
                    .where(carbon_retirements.c.lot_id == lot_id)
                    .order_by(carbon_retirements.c.retired_ms, carbon_retirements.c.serial_start)
                )
            ).all()
        return list(dict.fromkeys(r.beneficiary for r in rows))

    async def release(
        self,
        order_id: str,
        to: OrderState,
        now_ms: int,
        *,
        note: str = "",
        payment_id: str | None = None,
        expired_by_ms: int | None = None,
    ) -> bool:
        """A reserved order becomes `to` (cancelled or expired) and its kilograms go back to
        their lots, in one transaction. False (nothing changed) unless it was still reserved
        (and, with `expired_by_ms`, its reservation ran out by then)."""
        conds = [
            carbon_orders.c.order_id == order_id,
            carbon_orders.c.state == OrderState.RESERVED.value,
        ]
        if expired_by_ms is not None:
            conds.append(carbon_orders.c.expires_ms <= expired_by_ms)
        values: dict[str, Any] = {"state": to.value, "updated_ms": now_ms}
        if payment_id is not None:
            values["payment_id"] = payment_id
        async with self.engine.begin() as conn:
            done = await conn.execute(update(carbon_orders).where(*conds).values(**values))
            if done.rowcount != 1:
                return False
            buyer = (
                await conn.execute(
                    select(carbon_orders.c.buyer_account_id).where(
                        carbon_orders.c.order_id == order_id
                    )
                )
            ).scalar_one()
            per_lot: dict[str, int] = {}
            for ln in await _lines(conn, order_id):
                per_lot[ln.lot_id] = per_lot.get(ln.lot_id, 0) + ln.kg
            projects = await _projects_of(conn, list(per_lot))
            for lot_id in sorted(per_lot):
                await conn.execute(
                    update(carbon_lots)
                    .where(carbon_lots.c.lot_id == lot_id)
                    .values(available_kg=carbon_lots.c.available_kg + per_lot[lot_id])
                )
                await _event(
                    conn,
                    now_ms,
                    to.value,
                    buyer,
                    project_id=projects[lot_id],
                    order_id=order_id,
                    detail={"lot_id": lot_id, "kg": per_lot[lot_id], "note": note},
                )
        return True

    async def note(self, order_id: str, kind: str, now_ms: int, detail: dict[str, Any]) -> None:
        """An event about an order that changes nothing else (e.g. a payment after release)."""
        async with self.engine.begin() as conn:
            await _event(conn, now_ms, kind, "", order_id=order_id, detail=detail)

    async def expired_orders(self, now_ms: int) -> list[str]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(carbon_orders.c.order_id)
                    .where(
                        carbon_orders.c.state == OrderState.RESERVED.value,
                        carbon_orders.c.expires_ms <= now_ms,
                    )
                    .order_by(carbon_orders.c.expires_ms)
                )
            ).all()
        return [r.order_id for r in rows]

    async def get_order(self, order_id: str) -> StoredOrder | None:
        found = await self._orders(carbon_orders.c.order_id == order_id)
        return found[0] if found else None

    async def orders(self, buyer_account_id: str | None = None) -> list[StoredOrder]:
        conds = (
            []
            if buyer_account_id is None
            else [carbon_orders.c.buyer_account_id == buyer_account_id]
        )
        return await self._orders(*conds)

    async def _orders(self, *conds: Any) -> list[StoredOrder]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(carbon_orders)
                    .where(*conds)
                    .order_by(carbon_orders.c.created_ms, carbon_orders.c.order_id)
                )
            ).all()
            return [
                StoredOrder(**r._mapping, lines=tuple(await _lines(conn, r.order_id))) for r in rows
            ]

    # retirements and events -----------------------------------------------------------------

    async def retirements(
        self, *, order_id: str | None = None, lot_ids: Sequence[str] | None = None
    ) -> list[StoredRetirement]:
        conds: list[Any] = []
        if order_id is not None:
            conds.append(carbon_retirements.c.order_id == order_id)
        if lot_ids is not None:
            conds.append(carbon_retirements.c.lot_id.in_(list(lot_ids)))
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(carbon_retirements)
                    .where(*conds)
                    .order_by(carbon_retirements.c.lot_id, carbon_retirements.c.serial_start)
                )
            ).all()
        return [StoredRetirement(**r._mapping) for r in rows]

    async def insert_retirement(self, r: StoredRetirement) -> None:
        """Write one retirement row as given (RetirementOverlap if the database refuses it).

        Not used by the service (retirements are written with the order's completion); it
        exists so the database's guarantee can be exercised without the service's checks.
        """
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(carbon_retirements).values(**_fields(r)))
        except IntegrityError as exc:
            raise RetirementOverlap(str(exc.orig)) from exc

    async def events(
        self, *, project_id: str | None = None, order_id: str | None = None
    ) -> list[StoredEvent]:
        conds: list[Any] = []
        if project_id is not None:
            conds.append(carbon_events.c.project_id == project_id)
        if order_id is not None:
            conds.append(carbon_events.c.order_id == order_id)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(carbon_events).where(*conds).order_by(carbon_events.c.id))
            ).all()
        return [
            StoredEvent(
                r.id,
                r.at_ms,
                r.kind,
                r.project_id,
                r.order_id,
                r.actor,
                json.loads(r.detail) if r.detail else {},
            )
            for r in rows
        ]


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


async def _event(
    conn: AsyncConnection,
    at_ms: int,
    kind: str,
    actor: str,
    *,
    project_id: str | None = None,
    order_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        insert(carbon_events).values(
            at_ms=at_ms,
            kind=kind,
            project_id=project_id,
            order_id=order_id,
            actor=actor[:64],
            detail=json.dumps(detail or {}, sort_keys=True),
        )
    )


async def _held_spans(conn: AsyncConnection, lot_id: str) -> list[tuple[int, int]]:
    """Serials of the lot held by reserved, placed or complete orders."""
    rows = (
        await conn.execute(
            select(carbon_order_lines.c.serial_start, carbon_order_lines.c.serial_end)
            .select_from(
                carbon_order_lines.join(
                    carbon_orders, carbon_orders.c.order_id == carbon_order_lines.c.order_id
                )
            )
            .where(
                and_(
                    carbon_order_lines.c.lot_id == lot_id,
                    carbon_orders.c.state.in_([s.value for s in HOLDING]),
                )
            )
        )
    ).all()
    return [(r.serial_start, r.serial_end) for r in rows]


async def _lines(conn: AsyncConnection, order_id: str) -> list[StoredLine]:
    rows = (
        await conn.execute(
            select(carbon_order_lines)
            .where(carbon_order_lines.c.order_id == order_id)
            .order_by(carbon_order_lines.c.lot_id, carbon_order_lines.c.serial_start)
        )
    ).all()
    return [StoredLine(r.lot_id, r.serial_start, r.serial_end, r.kg, r.price_minor) for r in rows]


async def _projects_of(conn: AsyncConnection, lot_ids: Sequence[str]) -> dict[str, str]:
    rows = (
        await conn.execute(
            select(carbon_lots.c.lot_id, carbon_lots.c.project_id).where(
                carbon_lots.c.lot_id.in_(list(lot_ids))
            )
        )
    ).all()
    return {r.lot_id: r.project_id for r in rows}
