"""The footprint on both backends: baselines saved and read back, the kg retired for the
account's shop orders by month (only its own, only retired ones); and the shop's pages render
fields the ledger side adds to the custody report and the statement (per-lot tokens with their
records and proofs, a ledger proof) without knowing them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from cloud.api.app import create_app
from cloud.services.carbon_shop import ShopService
from cloud.services.footprint import FootprintService
from cloud.storage.accounts import AccountStore
from cloud.storage.carbon_store import CarbonStore
from cloud.storage.footprint_store import FootprintStore
from cloud.storage.store import Store

PW, OK = "a long password", "approved"


def at(y: int, m: int, d: int) -> float:
    return datetime(y, m, d, 12, tzinfo=UTC).timestamp()


async def test_baselines_and_retired_kg_by_month(store: Store) -> None:
    clock = [at(2026, 1, 10)]
    shop = ShopService(CarbonStore(store.engine), _pay, now=lambda: clock[0])
    service = FootprintService(FootprintStore(store.engine), now=lambda: clock[0])
    project = await shop.register_project(
        "prov",
        name="Rio Verde",
        kind="forestry",
        country="BR",
        standard="Verra VCS",
        verifier="SCS",
        serial_prefix="VCS-1",
        vintage=2024,
    )
    lot = await shop.add_lot(
        "prov", project.project_id, serials="VCS-1-1..1000", price_minor_per_t=2000, currency="EUR"
    )

    saved = await service.save("acct-b", {"cars": 0, "diet": "vegan"})
    assert saved.total_kg == 14_400
    # Paid in January; another in February; one left unpaid; someone else's.
    first = await shop.checkout("acct-b", [(lot.lot_id, 100)], "EUR", "Bea")
    await shop.succeeded(first.order_id, "pay-1")
    clock[0] = at(2026, 2, 3)
    await service.save("acct-b", {"cars": 2})
    second = await shop.checkout("acct-b", [(lot.lot_id, 40)], "EUR", "Bea")
    await shop.succeeded(second.order_id, "pay-2")
    await shop.checkout("acct-b", [(lot.lot_id, 7)], "EUR", "Bea")  # reserved, not retired
    other = await shop.checkout("acct-c", [(lot.lot_id, 500)], "EUR", "Cy")
    await shop.succeeded(other.order_id, "pay-3")
    clock[0] = at(2026, 3, 1)

    v = await service.view("acct-b")
    assert [h.total_kg for h in v.history] == [14_400, 24_600]
    assert v.baseline is not None and v.baseline.answers["cars"] == 2
    assert v.baseline_footprint is not None and v.baseline_footprint.total_kg == 24_600
    assert v.retired_kg == 140
    assert [(m.month, m.footprint_kg, m.retired_kg) for m in v.months] == [
        ("2026-01", 1_200, 100),
        ("2026-02", 2_050, 40),
        ("2026-03", 2_050, 0),
    ]
    assert v.months[-1].cumulative_retired_kg == 140
    assert (await service.view("nobody")).months == []


async def _pay(ref: str, amount_minor: int, currency: str, description: str) -> str:
    return f"pay-{ref}"


async def test_pages_render_fields_added_later(store: Store) -> None:
    """The custody report shows a lot's `tokens` as a table and the statement a `ledger_proof`
    block, with fields the templates were never told about."""
    accounts = AccountStore(store.engine)
    buyer = await accounts.create_account("b@x.org", "Bea", PW, "buyer", OK)
    token = await accounts.issue_token(buyer.account_id, 3600)
    app = create_app(store, accounts=accounts)
    shop = app.state.ctx.shop
    project = await shop.register_project(
        "prov",
        name="Sunny Roofs",
        kind="forestry",
        country="US",
        standard="EnergyTag",
        verifier="gridmint",
        serial_prefix="GM-7",
        vintage=2026,
    )
    lot = await shop.add_lot(
        "prov", project.project_id, serials="GM-7-1..50", price_minor_per_t=900, currency="USD"
    )
    custody = await shop.custody(project.project_id)
    custody["lots"][0]["tokens"] = [  # the shape of a gridmint_solar lot's tokens
        {
            "token_id": "ab12" * 16,
            "wh": 1200,
            "record": {
                "device_id": "pi-7",
                "seq": 9,
                "record_hash": "cd34" * 16,
                "kid": "ef56" * 4,
            },
            "mint": {
                "seq": 17,
                "kind": "MINT_GEN",
                "leaf_hash": "0123" * 16,
                "proof": {"tree_size": 42, "path": ["aa11", "bb22"], "checkpoint": "note"},
            },
            "pending": None,
        }
    ]

    async def custody_with_tokens(project_id: str) -> dict[str, Any]:
        return custody

    shop.start_payment = _pay  # this app has no payment port: pay by hand below
    order = await shop.checkout(buyer.account_id, [(lot.lot_id, 10)], "USD", "Bea", "r")
    await shop.succeeded(order.order_id, "pay-x")
    statement = await shop.retirement_statement(order.order_id)
    statement["ledger_proof"] = {
        "leaf_index": 41,
        "checkpoint": {"size": 42, "root": "cafe01", "signature": "5151"},
        "path": ["d00d", "beef"],
    }
    statement["retirements"][0]["tokens"] = ["ab12" * 16]

    async def statement_with_proof(order_id: str) -> dict[str, Any]:
        return statement

    object.__setattr__(shop, "custody", custody_with_tokens)
    object.__setattr__(shop, "retirement_statement", statement_with_proof)
    cookies = {"gridmint_session": token}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", cookies=cookies
    ) as c:
        r = await c.get(f"/shop/projects/{project.project_id}")
        assert r.status_code == 200, r.text
        tokens = r.text.split('class="lot-tokens"', 1)[1].split("</table>", 1)[0]
        for text in ("ab12ab12ab12ab12…", "pi-7 · 9", "1200", "cd34cd34cd34cd34…", "leaf 17"):
            assert text in tokens, text
        assert "in the checkpoint of 42 leaves (2 hashes)" in tokens
        r = await c.get(f"/shop/orders/{order.order_id}/statement")
        assert r.status_code == 200, r.text
        proof = r.text.split('id="ledger-proof"', 1)[1].split("</div>", 1)[0]
        for text in ("leaf index", "41", "cafe01", "5151", "d00d, beef"):
            assert text in proof, text
        assert "GM-7-1..10" in r.text and 'data-key="tokens"' in r.text
        # An unknown order is a 404 page (someone else's looks the same: _own_order).
        r = await c.get("/shop/orders/ord_nope/statement")
        assert r.status_code == 404 and "does not exist" in r.text
