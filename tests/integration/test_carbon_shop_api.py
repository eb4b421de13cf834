"""The carbon shop over HTTP on both backends: a provider lists a project and a lot, a buyer
checks out and gets a statement once paid; the 4xx answers; the new roles (provider, buyer)
are refused on existing operator endpoints."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import httpx

from cloud.api.app import create_app
from cloud.services.carbon_shop import ShopService
from cloud.storage.accounts import AccountStore
from cloud.storage.carbon_store import CarbonStore
from cloud.storage.store import Store

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()
PW, OK = "a long password", "approved"


async def test_shop_over_http(store: Store) -> None:
    accounts = AccountStore(store.engine)
    prov = await accounts.create_account("p@x.org", "P", PW, "provider", OK)
    other = await accounts.create_account("q@x.org", "Q", PW, "provider", OK)
    buyer = await accounts.create_account("b@x.org", "B", PW, "buyer", OK)
    home = await accounts.create_account("h@x.org", "H", PW, "homeowner", OK)
    clock = [NOW]
    app = create_app(store, accounts=accounts, now=lambda: clock[0])
    tok = {
        a.email: await accounts.issue_token(a.account_id, 3600) for a in (prov, other, buyer, home)
    }

    def h(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[email]}"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        project = {
            "name": "Rio Verde",
            "kind": "forestry",
            "country": "BR",
            "standard": "Verra VCS",
            "verifier": "SCS Global",
            "serial_prefix": "VCS-981-2022",
            "vintage": 2022,
        }
        r = await c.post("/api/v1/shop/projects", json=project, headers=h("p@x.org"))
        assert r.status_code == 201, r.text
        pid = r.json()["project_id"]
        r = await c.post(
            "/api/v1/shop/projects", json={**project, "kind": "magic"}, headers=h("p@x.org")
        )
        assert r.status_code == 400 and "kind 'magic'" in r.json()["detail"]
        r = await c.post("/api/v1/shop/projects", json=project, headers=h("b@x.org"))
        assert r.status_code == 403 and "role buyer may not" in r.json()["detail"]
        lot_body = {"serials": "VCS-981-2022-1..100", "price_minor_per_t": 2000, "currency": "EUR"}
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=lot_body, headers=h("q@x.org"))
        assert r.status_code == 403 and "another provider" in r.json()["detail"]
        r = await c.post("/api/v1/shop/projects/prj_nope/lots", json=lot_body, headers=h("p@x.org"))
        assert r.status_code == 404
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=lot_body, headers=h("p@x.org"))
        assert r.status_code == 201, r.text
        lot = r.json()["lot_id"]
        usd = {"serials": "VCS-981-2022-101..110", "price_minor_per_t": 2000, "currency": "USD"}
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=usd, headers=h("p@x.org"))
        usd_lot = r.json()["lot_id"]

        r = await c.get(
            "/api/v1/shop/projects",
            params={"kind": "forestry", "country": "BR"},
            headers=h("b@x.org"),
        )
        assert [p["project_id"] for p in r.json()] == [pid]
        assert r.json()[0]["lots"][0]["serials"] == "VCS-981-2022-1..100"
        r = await c.get("/api/v1/shop/projects", params={"own_solar": "true"}, headers=h("b@x.org"))
        assert r.json() == []
        r = await c.get("/api/v1/shop/projects/prj_nope", headers=h("b@x.org"))
        assert r.status_code == 404

        order = {"lines": [{"lot_id": lot, "kg": 10}], "currency": "EUR", "beneficiary": "Bea"}
        r = await c.post("/api/v1/shop/orders", json=order, headers=h("b@x.org"))
        assert r.status_code == 503 and r.json()["detail"] == "no payment provider configured"
        r = await c.get(f"/api/v1/shop/projects/{pid}", headers=h("b@x.org"))
        assert r.json()["available_kg"] == 110  # nothing stays reserved

        calls: list[str] = []

        async def start_payment(ref: str, amount: int, currency: str, description: str) -> str:
            calls.append(ref)
            return f"pay-{ref}"

        shop = ShopService(CarbonStore(store.engine), start_payment, lambda: clock[0], 600)
        app.state.ctx = dataclasses.replace(app.state.ctx, shop=shop)

        def bad(**kw: object) -> dict[str, object]:
            return {**order, **kw}

        for body, status, text in (
            (bad(lines=[{"lot_id": "lot_nope", "kg": 1}]), 404, "lot lot_nope does not exist"),
            (bad(lines=[{"lot_id": lot, "kg": 0}]), 400, "positive whole number"),
            (bad(lines=[{"lot_id": lot, "kg": -5}]), 400, "positive whole number"),
            (
                bad(lines=[{"lot_id": usd_lot, "kg": 1}]),
                400,
                f"lot {usd_lot} is priced in USD, the order is in EUR",
            ),
            (bad(lines=[{"lot_id": lot, "kg": 101}]), 409, f"lot {lot} has only 100 kg left"),
            (bad(currency="eur"), 400, "ISO 4217"),
        ):
            r = await c.post("/api/v1/shop/orders", json=body, headers=h("b@x.org"))
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["detail"], r.text
            assert "Traceback" not in r.text

        r = await c.post("/api/v1/shop/orders", json=order, headers=h("b@x.org"))
        assert r.status_code == 201, r.text
        o = r.json()
        assert (o["state"], o["total_minor"], o["payment_id"]) == (
            "reserved",
            20,
            f"pay-{o['order_id']}",
        )
        r = await c.get(f"/api/v1/shop/orders/{o['order_id']}/statement", headers=h("b@x.org"))
        assert r.status_code == 409 and "reserved" in r.json()["detail"]
        r = await c.get(f"/api/v1/shop/orders/{o['order_id']}", headers=h("h@x.org"))
        assert r.status_code == 404  # someone else's
        await shop.succeeded(o["order_id"], f"pay-{o['order_id']}")
        r = await c.get(f"/api/v1/shop/orders/{o['order_id']}/statement", headers=h("b@x.org"))
        assert r.status_code == 200, r.text
        st = r.json()
        assert (
            st["beneficiary"] == "Bea" and st["retirements"][0]["serials"] == "VCS-981-2022-1..10"
        )
        assert st["ledger_proof"] is None

        # an expired reservation: 409 on its statement, and its units sell again
        r = await c.post(
            "/api/v1/shop/orders",
            json={**order, "lines": [{"lot_id": lot, "kg": 90}]},
            headers=h("h@x.org"),
        )
        assert r.status_code == 201, r.text
        late = r.json()["order_id"]
        clock[0] = NOW + 601
        r = await c.get(f"/api/v1/shop/orders/{late}/statement", headers=h("h@x.org"))
        assert r.status_code == 409 and "expired" in r.json()["detail"]
        r = await c.get("/api/v1/shop/orders", headers=h("h@x.org"))
        assert [x["state"] for x in r.json()] == ["expired"]
        r = await c.post(
            "/api/v1/shop/orders",
            json={**order, "lines": [{"lot_id": lot, "kg": 90}]},
            headers=h("b@x.org"),
        )
        assert r.status_code == 201, r.text
        r = await c.get(f"/api/v1/shop/projects/{pid}/custody", headers=h("b@x.org"))
        kinds = [e["kind"] for e in r.json()["events"]]
        # the 503 checkout was reserved and cancelled at once; then paid, expired, reserved
        assert kinds.count("reserved") == 4 and kinds.count("cancelled") == 1
        assert "expired" in kinds and "retired" in kinds


async def test_new_roles_are_refused_on_operator_endpoints(store: Store) -> None:
    accounts = AccountStore(store.engine)
    app = create_app(store, accounts=accounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for role in ("provider", "buyer"):
            a = await accounts.create_account(f"{role}@x.org", role, PW, role, OK)
            hdr = {"Authorization": f"Bearer {await accounts.issue_token(a.account_id, 3600)}"}
            for method, url in (
                ("GET", "/metrics"),
                ("GET", "/api/v1/stats"),
                ("GET", "/api/v1/accounts"),
                ("POST", "/api/v1/admin/devices"),
                ("POST", "/api/v1/sites"),
                ("POST", "/api/v1/dispatch/events"),
                ("GET", "/api/v1/fleet/live"),
                ("GET", "/api/v1/ledger/export"),
                ("POST", "/api/v1/market/orders"),
                ("POST", "/api/v1/sites/site-x/certificates"),
                ("GET", "/api/v1/sites/site-x/certificates"),
            ):
                r = await c.request(method, url, json={}, headers=hdr)
                assert r.status_code == 403, (role, url, r.status_code)
                assert f"role {role} may not" in r.json()["detail"]
            r = await c.get("/api/v1/me", headers=hdr)
            assert r.status_code == 200 and r.json()["role"] == role


async def test_a_provider_retires_then_withdraws_a_project(store: Store) -> None:
    """Retired: no new lots, but its listed units still sell and it is still found; withdrawn:
    off the shop (not found, no checkout) for good. Only its provider (or an admin) may."""

    async def pay(ref: str, amount: int, currency: str, what: str) -> str:
        return f"pay-{ref}"

    accounts = AccountStore(store.engine)
    prov = await accounts.create_account("p@x.org", "P", PW, "provider", OK)
    other = await accounts.create_account("q@x.org", "Q", PW, "provider", OK)
    buyer = await accounts.create_account("b@x.org", "B", PW, "buyer", OK)
    app = create_app(store, accounts=accounts, now=lambda: NOW)
    app.state.ctx.shop.start_payment = pay  # no payment port here: a reservation is enough
    tok = {a.email: await accounts.issue_token(a.account_id, 3600) for a in (prov, other, buyer)}

    def h(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[email]}"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            "/api/v1/shop/projects",
            json={
                "name": "Rio Verde",
                "kind": "forestry",
                "country": "BR",
                "standard": "Verra VCS",
                "verifier": "SCS Global",
                "serial_prefix": "VCS-981",
                "vintage": 2022,
            },
            headers=h("p@x.org"),
        )
        pid = r.json()["project_id"]
        lot = {"serials": "VCS-981-1..100", "price_minor_per_t": 1000, "currency": "EUR"}
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=lot, headers=h("p@x.org"))
        lot_id = r.json()["lot_id"]
        status = f"/api/v1/shop/projects/{pid}/status"

        r = await c.post(status, json={"status": "retired"}, headers=h("q@x.org"))
        assert r.status_code == 403, r.text
        r = await c.post(status, json={"status": "dormant"}, headers=h("p@x.org"))
        assert r.status_code == 400 and "active, retired, withdrawn" in r.json()["detail"]
        r = await c.post(
            status,
            json={"status": "retired", "reason": "crediting period over"},
            headers=h("p@x.org"),
        )
        assert r.status_code == 200 and r.json()["status"] == "retired", r.text
        more = {**lot, "serials": "VCS-981-101..200"}
        r = await c.post(f"/api/v1/shop/projects/{pid}/lots", json=more, headers=h("p@x.org"))
        assert r.status_code == 409 and "retired" in r.json()["detail"]
        r = await c.get("/api/v1/shop/projects", headers=h("b@x.org"))
        assert [p["project_id"] for p in r.json()] == [pid]  # still on sale
        order = {"lines": [{"lot_id": lot_id, "kg": 10}], "currency": "EUR", "beneficiary": "B"}
        r = await c.post("/api/v1/shop/orders", json=order, headers=h("b@x.org"))
        assert r.status_code == 201, r.text

        r = await c.post(status, json={"status": "withdrawn"}, headers=h("p@x.org"))
        assert r.status_code == 200 and r.json()["status"] == "withdrawn"
        r = await c.get("/api/v1/shop/projects", headers=h("b@x.org"))
        assert r.json() == []
        r = await c.post("/api/v1/shop/orders", json=order, headers=h("b@x.org"))
        assert r.status_code == 409 and "withdrawn" in r.json()["detail"]
        r = await c.post(status, json={"status": "active"}, headers=h("p@x.org"))
        assert r.status_code == 409 and "cannot become active" in r.json()["detail"]
        r = await c.post(
            "/api/v1/shop/projects/prj_nope/status",
            json={"status": "retired"},
            headers=h("p@x.org"),
        )
        assert r.status_code == 404
        r = await c.get(f"/api/v1/shop/projects/{pid}/custody", headers=h("b@x.org"))
        changes = [e for e in r.json()["events"] if e["kind"] == "status_changed"]
        assert [(e["detail"]["to"], e["detail"]["reason"]) for e in changes] == [
            ("retired", "crediting period over"),
            ("withdrawn", ""),
        ]
