"""The retail carbon shop: providers list projects and lots, buyers reserve, pay and have the
units retired on their behalf (docs/carbon-shop.md).

Owns: the shop's flow over cloud.storage.carbon_store, with the rules of
cloud.domain.carbon_shop. Payments are not ours: the shop is given `start_payment(ref,
amount_minor, currency, description) -> payment_id` and the payment service calls back
`succeeded(ref, payment_id)` or `failed(ref, payment_id, reason)`; `ref` is the order id. Both
callbacks and `expire` are idempotent (a conditional state change: a second call changes
nothing), so the payment service may deliver them more than once.

Nothing is acknowledged before it is stored: `checkout` stores the reservation (units taken,
serials allocated) before it asks for a payment, and a payment that cannot be started cancels
the reservation again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloud.domain.carbon_shop import (
    DEFAULT_RESERVATION_S,
    Offer,
    OrderState,
    ProjectFilter,
    ProjectKind,
    ProjectStatus,
    ShopError,
    check_country,
    check_currency,
    check_kg,
    check_listing,
    check_vintage,
    matches,
    reservation_expiry,
)
from cloud.storage.carbon_store import (
    CarbonStore,
    InsufficientUnits,
    StoredEvent,
    StoredLot,
    StoredOrder,
    StoredProject,
    StoredRetirement,
    new_id,
)

# start_payment(ref, amount_minor, currency, description) -> the provider's payment id
StartPayment = Callable[[str, int, str, str], Awaitable[str]]


class ShopNotFound(LookupError):
    """No such project, lot or order (or not the caller's)."""


class ShopInvalid(ValueError):
    """The request breaks a rule (quantity, currency, serials, ...); the message says which."""


class ShopForbidden(PermissionError):
    """The caller may not act on this project."""


class ShopConflict(Exception):
    """The units are not there (any more), or the order is no longer in a state for this."""


class PaymentUnavailable(RuntimeError):
    """No payment provider is configured (the API answers 503)."""


async def no_payment_provider(ref: str, amount_minor: int, currency: str, description: str) -> str:
    """The `start_payment` of a shop without a payment port: refuses every payment."""
    raise PaymentUnavailable("no payment provider configured")


@dataclass(frozen=True, slots=True)
class ProjectView:
    project: StoredProject
    lots: tuple[StoredLot, ...]

    @property
    def available_kg(self) -> int:
        return sum(lot.available_kg for lot in self.lots)


class ShopService:
    """The carbon shop of one aggregator."""

    def __init__(
        self,
        store: CarbonStore,
        start_payment: StartPayment,
        now: Callable[[], float] = time.time,
        reservation_s: int = DEFAULT_RESERVATION_S,
    ) -> None:
        self.store = store
        self.start_payment = start_payment
        self.now = now
        self.reservation_s = reservation_s

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    # projects and lots ----------------------------------------------------------------------

    async def register_project(
        self,
        provider_account_id: str,
        *,
        name: str,
        kind: str,
        country: str,
        standard: str,
        verifier: str,
        serial_prefix: str,
        vintage: int,
        start_date: str | None = None,
        end_date: str | None = None,
        description: str = "",
    ) -> StoredProject:
        """A new active project of `provider_account_id` (the route checks the role)."""
        now_ms = self._now_ms()
        try:
            pkind = ProjectKind(kind)
        except ValueError:
            raise ShopInvalid(
                f"kind {kind!r} is not one of {', '.join(k.value for k in ProjectKind)}"
            ) from None
        if pkind is ProjectKind.GRIDMINT_SOLAR:
            raise ShopInvalid("gridmint_solar projects are made from gridmint certificates")
        try:
            check_country(country)
            check_vintage(vintage, datetime.fromtimestamp(now_ms / 1000, UTC).year)
            check_listing(f"{serial_prefix}-1..1", 1, "EUR")  # the prefix's form
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        for label, d in (("start_date", start_date), ("end_date", end_date)):
            try:
                if d is not None:
                    datetime.strptime(d, "%Y-%m-%d")  # noqa: DTZ007 (a date, no time)
            except ValueError:
                raise ShopInvalid(f"{label} must be a date YYYY-MM-DD") from None
        if start_date and end_date and end_date < start_date:
            raise ShopInvalid("end_date is before start_date")
        for label, text in (("name", name), ("standard", standard), ("verifier", verifier)):
            if not text.strip():
                raise ShopInvalid(f"{label} must not be empty")
        p = StoredProject(
            project_id=new_id("prj"),
            provider_account_id=provider_account_id,
            name=name.strip(),
            kind=pkind.value,
            country=country,
            standard=standard.strip(),
            verifier=verifier.strip(),
            serial_prefix=serial_prefix,
            start_date=start_date,
            end_date=end_date,
            vintage=vintage,
            status=ProjectStatus.ACTIVE.value,
            description=description,
            created_ms=now_ms,
        )
        await self.store.add_project(p, provider_account_id)
        return p

    async def add_lot(
        self,
        by_account_id: str,
        project_id: str,
        *,
        serials: str,
        price_minor_per_t: int,
        currency: str,
        admin: bool = False,
    ) -> StoredLot:
        """A lot of the project: its serial range (prefix = the project's), price, currency.
        Only the project's provider (or an admin) adds lots; serial ranges never overlap."""
        project = await self._project(project_id)
        if not admin and project.provider_account_id != by_account_id:
            raise ShopForbidden(f"project {project_id} belongs to another provider")
        if project.status != ProjectStatus.ACTIVE.value:
            raise ShopConflict(f"project {project_id} is {project.status}")
        try:
            listing = check_listing(serials, price_minor_per_t, currency)
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        if listing.serials.prefix != project.serial_prefix:
            raise ShopInvalid(
                f"serials of project {project_id} start with {project.serial_prefix!r}"
            )
        s = listing.serials
        for other in await self.store.lots(project_id=project_id):
            if other.serial_start <= s.end and s.start <= other.serial_end:
                raise ShopConflict(f"serials {s} overlap lot {other.lot_id}")
        lot = StoredLot(
            lot_id=new_id("lot"),
            project_id=project_id,
            serial_start=s.start,
            serial_end=s.end,
            price_minor_per_t=listing.price_minor_per_t,
            currency=listing.currency,
            available_kg=s.kg,
            created_ms=self._now_ms(),
        )
        await self.store.add_lot(lot, by_account_id)
        return lot

    async def _project(self, project_id: str) -> StoredProject:
        p = await self.store.get_project(project_id)
        if p is None:
            raise ShopNotFound(f"project {project_id} does not exist")
        return p

    async def project(self, project_id: str) -> ProjectView:
        """One project with its lots."""
        p = await self._project(project_id)
        return ProjectView(p, tuple(await self.store.lots(project_id=project_id)))

    async def search(self, f: ProjectFilter) -> list[ProjectView]:
        """Active projects that fit the filter, oldest first, with their lots."""
        lots: dict[str, list[StoredLot]] = {}
        for lot in await self.store.lots():
            lots.setdefault(lot.project_id, []).append(lot)
        out = []
        for p in await self.store.projects():
            mine = lots.get(p.project_id, [])
            offer = Offer(
                ProjectKind(p.kind),
                p.country,
                p.vintage,
                p.standard,
                ProjectStatus(p.status),
                tuple(lot.price_minor_per_t for lot in mine if lot.available_kg > 0),
            )
            if matches(f, offer):
                out.append(ProjectView(p, tuple(mine)))
        return out

    async def custody(self, project_id: str) -> dict[str, Any]:
        """The project's chain of custody, from the stored rows and the event log: who
        registered it and when, standard, verifier, serials, and every reservation, placement,
        release and retirement of its units."""
        view = await self.project(project_id)
        p = view.project
        events = await self.store.events(project_id=project_id)
        retired = await self.store.retirements(lot_ids=[lot.lot_id for lot in view.lots])
        return {
            "project_id": p.project_id,
            "name": p.name,
            "kind": p.kind,
            "registered_by": p.provider_account_id,
            "registered_ms": p.created_ms,
            "standard": p.standard,
            "verifier": p.verifier,
            "country": p.country,
            "vintage": p.vintage,
            "lots": [
                {
                    "lot_id": lot.lot_id,
                    "serials": f"{p.serial_prefix}-{lot.serial_start}..{lot.serial_end}",
                    "kg": lot.kg,
                    "available_kg": lot.available_kg,
                    "retired_kg": sum(
                        r.serial_end - r.serial_start + 1 for r in retired if r.lot_id == lot.lot_id
                    ),
                    # gridmint_solar lots: the certificate (and, later, its token ids and
                    # ledger proofs) this lot sells.
                    "certificate_id": lot.certificate_id,
                }
                for lot in view.lots
            ],
            "events": [_event_public(e) for e in events],
            "retirements": [_retirement_public(p.serial_prefix, r) for r in retired],
        }

    # orders ---------------------------------------------------------------------------------

    async def checkout(
        self,
        buyer_account_id: str,
        lines: Sequence[tuple[str, int]],
        currency: str,
        beneficiary: str,
        reason: str = "",
    ) -> StoredOrder:
        """Reserve every line (lot id, kg) or none, price it, start the payment and return the
        reserved order (expires at now + reservation_s).

        ShopInvalid: empty order, bad quantity or currency, a lot in another currency;
        ShopNotFound: unknown lot; ShopConflict: not enough units (says how many are left).
        """
        if not lines:
            raise ShopInvalid("an order has at least one line")
        if not beneficiary.strip():
            raise ShopInvalid("a retirement names its beneficiary")
        try:
            check_currency(currency)
            for _, kg in lines:
                check_kg(kg)
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        found = {lot.lot_id: lot for lot in await self.store.lots(lot_ids=[i for i, _ in lines])}
        picked: list[tuple[StoredLot, int]] = []
        for lot_id, kg in lines:
            lot = found.get(lot_id)
            if lot is None:
                raise ShopNotFound(f"lot {lot_id} does not exist")
            if lot.currency != currency:
                raise ShopInvalid(
                    f"lot {lot_id} is priced in {lot.currency}, the order is in {currency}"
                )
            picked.append((lot, kg))
        await self.expire()  # units of reservations that ran out are for sale again
        projects = {p.project_id: p for p in await self.store.projects()}
        for lot, _ in picked:
            status = projects[lot.project_id].status
            if status != ProjectStatus.ACTIVE.value:
                raise ShopConflict(f"project {lot.project_id} of lot {lot.lot_id} is {status}")
        now_ms = self._now_ms()
        order_id = new_id("ord")
        try:
            order = await self.store.reserve(
                order_id=order_id,
                buyer_account_id=buyer_account_id,
                currency=currency,
                beneficiary=beneficiary.strip(),
                reason=reason.strip(),
                lines=picked,
                now_ms=now_ms,
                expires_ms=reservation_expiry(now_ms, self.reservation_s),
            )
        except InsufficientUnits as exc:
            raise ShopConflict(
                f"lot {exc.lot_id} has only {exc.available_kg} kg left "
                f"({exc.wanted_kg} kg were asked for)"
            ) from None
        kg = sum(ln.kg for ln in order.lines)
        description = f"Retirement of {kg} kg CO2e for {order.beneficiary} (order {order_id})"
        try:
            payment_id = await self.start_payment(
                order_id, order.total_minor, currency, description
            )
        except BaseException:
            await self.store.release(
                order_id, OrderState.CANCELLED, self._now_ms(), note="payment not started"
            )
            raise
        await self.store.set_payment(order_id, payment_id)
        return await self.order(order_id)

    async def succeeded(self, ref: str, payment_id: str) -> StoredOrder | None:
        """The payment of order `ref` succeeded: the order is placed and its units retired on
        behalf of its beneficiary (complete). Idempotent: a second call changes nothing.

        A payment that arrives after the reservation was released (expired or cancelled)
        retires nothing: the order stays as it is and a `paid_after_release` event says the
        payment must be refunded. Returns the order (None for an unknown ref)."""
        order = await self.store.get_order(ref)
        if order is None:
            return None
        if order.state == OrderState.RESERVED.value:
            await self.store.place_and_retire(ref, payment_id, self._now_ms())
        elif order.state in (OrderState.EXPIRED.value, OrderState.CANCELLED.value):
            await self.store.note(
                ref,
                "paid_after_release",
                self._now_ms(),
                {"payment_id": payment_id, "state": order.state, "refund": True},
            )
        return await self.store.get_order(ref)

    async def failed(self, ref: str, payment_id: str, reason: str) -> StoredOrder | None:
        """The payment of order `ref` failed: the order is cancelled and its units released.
        Idempotent; a completed order is not touched. Returns the order (None: unknown)."""
        await self.store.release(
            ref, OrderState.CANCELLED, self._now_ms(), note=reason, payment_id=payment_id
        )
        return await self.store.get_order(ref)

    async def expire(self, now: float | None = None) -> list[str]:
        """Expire every reservation whose time is up and release its units; returns the order
        ids this call expired (idempotent: an order is expired once)."""
        now_ms = self._now_ms() if now is None else int(now * 1000)
        out = []
        for order_id in await self.store.expired_orders(now_ms):
            released = await self.store.release(
                order_id,
                OrderState.EXPIRED,
                now_ms,
                note="reservation ran out",
                expired_by_ms=now_ms,
            )
            if released:
                out.append(order_id)  # noqa: PERF401 (one transaction each, in order)
        return out

    async def orders(self, buyer_account_id: str) -> list[StoredOrder]:
        """The buyer's orders, oldest first (reservations past their time shown expired)."""
        await self.expire()
        return await self.store.orders(buyer_account_id)

    async def order(self, order_id: str) -> StoredOrder:
        await self.expire()
        order = await self.store.get_order(order_id)
        if order is None:
            raise ShopNotFound(f"order {order_id} does not exist")
        return order

    async def retirement_statement(self, order_id: str) -> dict[str, Any]:
        """What a printable retirement statement shows: beneficiary, reason, the retired
        serials with their projects, dates. ShopConflict while the order is not complete."""
        order = await self.order(order_id)
        if order.state != OrderState.COMPLETE.value:
            raise ShopConflict(f"order {order_id} is {order.state}: nothing is retired yet")
        retired = await self.store.retirements(order_id=order_id)
        lots = {
            lot.lot_id: lot for lot in await self.store.lots(lot_ids=[r.lot_id for r in retired])
        }
        projects = {p.project_id: p for p in await self.store.projects()}
        items = []
        for r in retired:
            p = projects[lots[r.lot_id].project_id]
            items.append(
                {
                    **_retirement_public(p.serial_prefix, r),
                    "project_id": p.project_id,
                    "project_name": p.name,
                    "kind": p.kind,
                    "country": p.country,
                    "standard": p.standard,
                    "verifier": p.verifier,
                    "vintage": p.vintage,
                    "certificate_id": lots[r.lot_id].certificate_id,
                }
            )
        return {
            "order_id": order.order_id,
            "buyer_account_id": order.buyer_account_id,
            "beneficiary": order.beneficiary,
            "reason": order.reason,
            "ordered_ms": order.created_ms,
            "retired_ms": max(r.retired_ms for r in retired),
            "total_kg": sum(r.serial_end - r.serial_start + 1 for r in retired),
            "total_minor": order.total_minor,
            "currency": order.currency,
            "payment_id": order.payment_id,
            "retirements": items,
            # TODO(ledger): the ledger leaf of this retirement and its inclusion proof against
            # a signed checkpoint (protocol/ledger_leaf.py, /api/v1/ledger/proofs), so that
            # `gridmint verify` can check the statement offline. None until that is wired.
            "ledger_proof": None,
        }


def _event_public(e: StoredEvent) -> dict[str, Any]:
    return {
        "at_ms": e.at_ms,
        "kind": e.kind,
        "order_id": e.order_id,
        "actor": e.actor,
        "detail": e.detail,
    }


def _retirement_public(prefix: str, r: StoredRetirement) -> dict[str, Any]:
    return {
        "retirement_id": r.retirement_id,
        "order_id": r.order_id,
        "lot_id": r.lot_id,
        "serials": f"{prefix}-{r.serial_start}..{r.serial_end}",
        "kg": r.serial_end - r.serial_start + 1,
        "beneficiary": r.beneficiary,
        "reason": r.reason,
        "retired_ms": r.retired_ms,
    }
