"""The carbon shop's service on both backends: projects and lots, search, checkout, payment
outcomes (succeeded twice, failed), expiry, the database's refusal of overlapping retirements,
and (PostgreSQL) 50 buyers racing for the last 10 kg."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from cloud.domain.carbon_shop import ProjectFilter, ProjectKind
from cloud.services.carbon_shop import (
    ShopConflict,
    ShopForbidden,
    ShopInvalid,
    ShopNotFound,
    ShopService,
)
from cloud.storage.carbon_store import CarbonStore, RetirementOverlap, StoredRetirement
from cloud.storage.store import Store

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()


class Payments:
    """Records start_payment calls and returns an id, as the payment port would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, str]] = []

    async def __call__(self, ref: str, amount_minor: int, currency: str, description: str) -> str:
        self.calls.append((ref, amount_minor, currency, description))
        return f"pay-{len(self.calls)}"


def make_shop(store: Store, clock: list[float], payments: Payments) -> ShopService:
    return ShopService(CarbonStore(store.engine), payments, lambda: clock[0], reservation_s=600)


async def forest(shop: ShopService, serials: str = "VCS-981-2022-1..1000", price: int = 1500):
    p = await shop.register_project(
        "acct-prov",
        name="Rio Verde reforestation",
        kind="forestry",
        country="BR",
        standard="Verra VCS",
        verifier="SCS Global",
        serial_prefix="VCS-981-2022",
        vintage=2022,
        start_date="2020-01-01",
        end_date="2029-12-31",
    )
    lot = await shop.add_lot(
        "acct-prov", p.project_id, serials=serials, price_minor_per_t=price, currency="EUR"
    )
    return p, lot


async def test_register_search_checkout_succeeded_complete(store: Store) -> None:
    clock, pay = [NOW], Payments()
    shop = make_shop(store, clock, pay)
    p, lot = await forest(shop)
    cook = await shop.register_project(
        "acct-prov2",
        name="Clean cookstoves",
        kind="cookstoves",
        country="KE",
        standard="Gold Standard",
        verifier="Earthood",
        serial_prefix="GS-77",
        vintage=2024,
    )
    await shop.add_lot(
        "acct-prov2", cook.project_id, serials="GS-77-1..500", price_minor_per_t=900, currency="USD"
    )
    with pytest.raises(ShopForbidden):
        await shop.add_lot(
            "acct-prov",
            cook.project_id,
            serials="GS-77-501..600",
            price_minor_per_t=9,
            currency="USD",
        )
    with pytest.raises(ShopConflict, match="overlap"):
        await shop.add_lot(
            "acct-prov",
            p.project_id,
            serials="VCS-981-2022-900..1200",
            price_minor_per_t=9,
            currency="EUR",
        )
    with pytest.raises(ShopInvalid, match="start with"):
        await shop.add_lot(
            "acct-prov", p.project_id, serials="XX-1..2", price_minor_per_t=9, currency="EUR"
        )

    ids = lambda views: [v.project.project_id for v in views]  # noqa: E731
    assert ids(await shop.search(ProjectFilter())) == [p.project_id, cook.project_id]
    assert ids(await shop.search(ProjectFilter(kind=ProjectKind.COOKSTOVES))) == [cook.project_id]
    assert ids(await shop.search(ProjectFilter(country="br", vintage=2022))) == [p.project_id]
    assert ids(await shop.search(ProjectFilter(max_price_minor=1000))) == [cook.project_id]
    assert ids(await shop.search(ProjectFilter(standard="gold standard"))) == [cook.project_id]
    assert ids(await shop.search(ProjectFilter(own_solar=True))) == []

    order = await shop.checkout(
        "acct-buyer", [(lot.lot_id, 250)], "EUR", "Acme GmbH", "2025 travel"
    )
    assert order.state == "reserved"
    assert order.total_minor == 375  # 250 kg at 15.00 EUR/t
    assert order.expires_ms == int(NOW * 1000) + 600_000
    assert [(ln.serial_start, ln.serial_end) for ln in order.lines] == [(1, 250)]
    assert pay.calls == [
        (
            order.order_id,
            375,
            "EUR",
            f"Retirement of 250 kg CO2e for Acme GmbH (order {order.order_id})",
        )
    ]
    assert order.payment_id == "pay-1"
    assert (await shop.project(p.project_id)).available_kg == 750

    done = await shop.succeeded(order.order_id, "pay-1")
    assert done is not None and done.state == "complete"
    again = await shop.succeeded(order.order_id, "pay-1")  # delivered twice
    assert again is not None and again.state == "complete"
    retired = await shop.store.retirements(order_id=order.order_id)
    assert [(r.serial_start, r.serial_end, r.beneficiary, r.reason) for r in retired] == [
        (1, 250, "Acme GmbH", "2025 travel")
    ]
    statement = await shop.retirement_statement(order.order_id)
    assert statement["beneficiary"] == "Acme GmbH"
    assert statement["retirements"][0]["serials"] == "VCS-981-2022-1..250"
    assert statement["ledger_proof"] is None
    custody = await shop.custody(p.project_id)
    assert custody["registered_by"] == "acct-prov"
    assert [e["kind"] for e in custody["events"]] == [
        "project_registered",
        "lot_added",
        "reserved",
        "placed",
        "retired",
    ]
    assert custody["lots"][0]["retired_kg"] == 250
    # a failure reported late changes nothing on a complete order
    late = await shop.failed(order.order_id, "pay-1", "chargeback?")
    assert late is not None and late.state == "complete"
    assert [o.order_id for o in await shop.orders("acct-buyer")] == [order.order_id]
    assert await shop.orders("someone-else") == []


async def test_failed_and_expired_release_units(store: Store) -> None:
    clock, pay = [NOW], Payments()
    shop = make_shop(store, clock, pay)
    p, lot = await forest(shop, "VCS-981-2022-1..10", 1000)
    a = await shop.checkout("b1", [(lot.lot_id, 6)], "EUR", "B1")
    with pytest.raises(ShopConflict, match="only 4 kg left"):
        await shop.checkout("b2", [(lot.lot_id, 5)], "EUR", "B2")
    failed = await shop.failed(a.order_id, "pay-1", "card declined")
    assert failed is not None and failed.state == "cancelled"
    assert (await shop.failed(a.order_id, "pay-1", "card declined")).state == "cancelled"
    assert (await shop.project(p.project_id)).available_kg == 10
    # a success after the failure retires nothing (and asks for a refund)
    assert (await shop.succeeded(a.order_id, "pay-1")).state == "cancelled"
    assert await shop.store.retirements(order_id=a.order_id) == []

    b = await shop.checkout("b2", [(lot.lot_id, 10)], "EUR", "B2")
    assert [(ln.serial_start, ln.serial_end) for ln in b.lines] == [(1, 10)]  # freed serials
    with pytest.raises(ShopConflict, match="only 0 kg left"):
        await shop.checkout("b3", [(lot.lot_id, 1)], "EUR", "B3")
    assert await shop.expire(NOW + 599) == []
    clock[0] = NOW + 600
    assert await shop.expire() == [b.order_id]
    assert await shop.expire() == []  # idempotent
    assert (await shop.order(b.order_id)).state == "expired"
    c = await shop.checkout("b3", [(lot.lot_id, 10)], "EUR", "B3")
    assert (await shop.succeeded(c.order_id, "pay-x")).state == "complete"
    assert (await shop.succeeded(b.order_id, "pay-late")).state == "expired"
    events = await shop.store.events(order_id=b.order_id)
    assert events[-1].kind == "paid_after_release" and events[-1].detail["refund"] is True
    assert (await shop.project(p.project_id)).available_kg == 0


async def test_checkout_is_all_or_nothing_and_checked(store: Store) -> None:
    clock, pay = [NOW], Payments()
    shop = make_shop(store, clock, pay)
    p, lot = await forest(shop, "VCS-981-2022-1..10", 1000)
    other = await shop.add_lot(
        "acct-prov",
        p.project_id,
        serials="VCS-981-2022-11..15",
        price_minor_per_t=1000,
        currency="EUR",
    )
    usd = await shop.add_lot(
        "acct-prov",
        p.project_id,
        serials="VCS-981-2022-16..20",
        price_minor_per_t=1000,
        currency="USD",
    )
    with pytest.raises(ShopConflict, match=f"lot {other.lot_id} has only 5 kg left"):
        await shop.checkout("b", [(lot.lot_id, 3), (other.lot_id, 6)], "EUR", "B")
    assert (await shop.store.get_lot(lot.lot_id)).available_kg == 10  # nothing taken
    assert await shop.store.orders() == []
    assert pay.calls == []
    with pytest.raises(
        ShopInvalid, match=f"lot {usd.lot_id} is priced in USD, the order is in EUR"
    ):
        await shop.checkout("b", [(usd.lot_id, 1)], "EUR", "B")
    with pytest.raises(ShopNotFound):
        await shop.checkout("b", [("lot_nope", 1)], "EUR", "B")
    for kg in (0, -3):
        with pytest.raises(ShopInvalid, match="positive whole"):
            await shop.checkout("b", [(lot.lot_id, kg)], "EUR", "B")

    async def broken(ref: str, amount: int, currency: str, description: str) -> str:
        raise RuntimeError("no payment provider configured")

    shop.start_payment = broken
    with pytest.raises(RuntimeError):
        await shop.checkout("b", [(lot.lot_id, 4)], "EUR", "B")
    assert (await shop.store.get_lot(lot.lot_id)).available_kg == 10  # released again
    assert [o.state for o in await shop.store.orders()] == ["cancelled"]


async def test_database_refuses_overlapping_retirements(store: Store) -> None:
    clock, pay = [NOW], Payments()
    shop = make_shop(store, clock, pay)
    _, lot = await forest(shop, "VCS-981-2022-1..100", 1000)
    order = await shop.checkout("b", [(lot.lot_id, 10)], "EUR", "B")
    await shop.succeeded(order.order_id, "pay-1")

    def ret(rid: str, start: int, end: int) -> StoredRetirement:
        return StoredRetirement(rid, order.order_id, lot.lot_id, start, end, "X", "", 1)

    for rid, a, b in (("dup", 1, 10), ("inside", 5, 6), ("across", 10, 20), ("wraps", 0, 50)):
        with pytest.raises(RetirementOverlap):
            await shop.store.insert_retirement(ret(rid, a, b))
    await shop.store.insert_retirement(ret("next", 11, 20))  # adjacent: fine
    with pytest.raises(RetirementOverlap):
        await shop.store.insert_retirement(ret("again", 11, 11))


@pytest.mark.postgres
async def test_fifty_buyers_race_for_the_last_ten_kg(pg_url: str) -> None:
    store = await Store.connect(pg_url)
    await store.migrate()
    try:
        clock, pay = [NOW], Payments()
        shop = make_shop(store, clock, pay)
        _, lot = await forest(shop, "VCS-981-2022-1..10", 1000)
        # each checkout runs on its own pooled connection, all at once
        results = await asyncio.gather(
            *(shop.checkout(f"buyer-{i}", [(lot.lot_id, 1)], "EUR", f"B{i}") for i in range(50)),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 10
        assert all(isinstance(e, ShopConflict) for e in lost), lost[:3]
        serials = sorted(ln.serial_start for o in won for ln in o.lines)
        assert serials == list(range(1, 11))
        assert (await shop.store.get_lot(lot.lot_id)).available_kg == 0
        await asyncio.gather(*(shop.succeeded(o.order_id, "p") for o in won))
        assert len(await shop.store.retirements(lot_ids=[lot.lot_id])) == 10
    finally:
        await store.close()
