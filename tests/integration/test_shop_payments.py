"""The carbon shop paid through the payment port (the embedded sandbox provider), over HTTP on
both backends: a checkout opens a payment for the order; only its buyer can pay it; paying
completes the order and retires the units for the beneficiary, once, however often the payment
is reported; a failed payment releases the reserved units."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from cloud.api.app import create_app
from cloud.services.payments import PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()
PW, OK = "a long password", "approved"


async def test_checkout_paid_in_the_sandbox_retires_once_and_a_failure_releases(
    store: Store,
) -> None:
    accounts = AccountStore(store.engine)
    prov = await accounts.create_account("p@x.org", "P", PW, "provider", OK)
    buyer = await accounts.create_account("b@x.org", "B", PW, "buyer", OK)
    other = await accounts.create_account("o@x.org", "O", PW, "buyer", OK)
    sandbox = SandboxProvider()
    payments = PaymentService(
        sandbox,
        PaymentStore(store.engine),
        outcomes=None,
        now=lambda: NOW,  # type: ignore[arg-type]
    )
    app = create_app(store, accounts=accounts, payments=payments, now=lambda: NOW)
    tok = {a.email: await accounts.issue_token(a.account_id, 3600) for a in (prov, buyer, other)}

    def h(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[email]}"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            "/api/v1/shop/projects",
            json={
                "name": "Kasigau Corridor",
                "kind": "forestry",
                "country": "KE",
                "standard": "Verra VCS",
                "verifier": "Epic Sustainability",
                "serial_prefix": "VCS-612",
                "vintage": 2023,
            },
            headers=h("p@x.org"),
        )
        pid = r.json()["project_id"]
        lot = {"serials": "VCS-612-1..50", "price_minor_per_t": 15_000, "currency": "USD"}
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=lot, headers=h("p@x.org"))
        lot_id = r.json()["lot_id"]

        order = {"lines": [{"lot_id": lot_id, "kg": 20}], "currency": "USD", "beneficiary": "Bo"}
        r = await c.post("/api/v1/shop/orders", json=order, headers=h("b@x.org"))
        assert r.status_code == 201, r.text
        o = r.json()
        assert o["state"] == "reserved" and o["payment_id"]
        assert o["total_minor"] == 20 * 15_000 // 1000
        pay = f"/api/v1/payments/sandbox/{o['payment_id']}/complete"
        # someone else cannot pay (or fail) the buyer's order
        r = await c.post(pay, json={"succeed": True}, headers=h("o@x.org"))
        assert r.status_code in (403, 404), r.text
        for _ in range(3):  # the same payment reported three times: one retirement
            r = await c.post(pay, json={"succeed": True}, headers=h("b@x.org"))
            assert r.status_code == 200, r.text
        r = await c.get(f"/api/v1/shop/orders/{o['order_id']}", headers=h("b@x.org"))
        assert r.json()["state"] == "complete"
        r = await c.get(f"/api/v1/shop/orders/{o['order_id']}/statement", headers=h("b@x.org"))
        st = r.json()
        assert st["beneficiary"] == "Bo"
        assert [x["serials"] for x in st["retirements"]] == ["VCS-612-1..20"]
        r = await c.get(f"/api/v1/shop/projects/{pid}", headers=h("b@x.org"))
        assert r.json()["available_kg"] == 30

        # a failed payment releases the reservation
        r = await c.post(
            "/api/v1/shop/orders",
            json={**order, "lines": [{"lot_id": lot_id, "kg": 30}]},
            headers=h("o@x.org"),
        )
        o2 = r.json()
        r = await c.get(f"/api/v1/shop/projects/{pid}", headers=h("o@x.org"))
        assert r.json()["available_kg"] == 0
        r = await c.post(
            f"/api/v1/payments/sandbox/{o2['payment_id']}/complete",
            json={"succeed": False},
            headers=h("o@x.org"),
        )
        assert r.status_code == 200, r.text
        r = await c.get(f"/api/v1/shop/orders/{o2['order_id']}", headers=h("o@x.org"))
        assert r.json()["state"] == "cancelled"
        admin = await accounts.create_account("a@x.org", "A", PW, "admin", OK)
        r = await c.get(
            "/metrics",
            headers={"Authorization": f"Bearer {await accounts.issue_token(admin.account_id, 60)}"},
        )
        metrics = r.text
        assert 'gridmint_payments{status="succeeded"} 1' in metrics
        assert 'gridmint_payments{status="failed"} 1' in metrics
        # the buyer pressed "pay" three times: two deliveries of the same event were no-ops
        assert 'gridmint_payment_events_total{outcome="duplicate"} 2' in metrics
        r = await c.get(f"/api/v1/shop/projects/{pid}", headers=h("o@x.org"))
        assert r.json()["available_kg"] == 30
