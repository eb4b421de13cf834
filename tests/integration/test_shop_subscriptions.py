"""Monthly offset subscriptions over HTTP on both backends, with the sandbox payment provider
and a clock the test moves: subscribing buys this month at once; renewing again in the same
month buys nothing more (also when two renewals race); the next month buys again, from the
cheapest lot that has the kilograms; a month that cannot be bought is skipped with its reason;
cancelling stops the renewals; bad requests get plain 4xx reasons."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from cloud.api.app import create_app
from cloud.services.payments import PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store

PW, OK = "a long password", "approved"


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()

    def now(self) -> float:
        return self.t


async def test_a_subscription_buys_each_month_once(store: Store) -> None:
    clock = Clock()
    accounts = AccountStore(store.engine)
    prov = await accounts.create_account("p@x.org", "P", PW, "provider", OK)
    buyer = await accounts.create_account("b@x.org", "B", PW, "buyer", OK)
    other = await accounts.create_account("o@x.org", "O", PW, "buyer", OK)
    payments = PaymentService(
        SandboxProvider(),
        PaymentStore(store.engine),
        None,  # type: ignore[arg-type]
        now=clock.now,
    )
    app = create_app(store, accounts=accounts, payments=payments, now=clock.now)
    ctx = app.state.ctx
    tok = {a.email: await accounts.issue_token(a.account_id, 10**8) for a in (prov, buyer, other)}

    def h(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[email]}"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            "/api/v1/shop/projects",
            json={
                "name": "Rimba Raya",
                "kind": "forestry",
                "country": "ID",
                "standard": "Verra VCS",
                "verifier": "SCS Global",
                "serial_prefix": "VCS-674",
                "vintage": 2022,
            },
            headers=h("p@x.org"),
        )
        pid = r.json()["project_id"]
        lots = {}
        for serials, price in (("VCS-674-1..100", 18_000), ("VCS-674-101..130", 12_000)):
            r = await c.post(
                f"/api/v1/shop/projects/{pid}/lots",
                json={"serials": serials, "price_minor_per_t": price, "currency": "EUR"},
                headers=h("p@x.org"),
            )
            lots[serials] = r.json()["lot_id"]

        sub = {"project_id": pid, "kg_per_month": 25, "currency": "EUR", "beneficiary": "Bo"}
        r = await c.post("/api/v1/shop/subscriptions", json=sub, headers=h("b@x.org"))
        assert r.status_code == 201, r.text
        s = r.json()
        assert [run["period"] for run in s["runs"]] == ["2026-11"]
        first = s["runs"][0]["order_id"]
        r = await c.get(f"/api/v1/shop/orders/{first}", headers=h("b@x.org"))
        o = r.json()
        assert o["state"] == "reserved" and o["lines"][0]["lot_id"] == lots["VCS-674-101..130"]
        assert o["total_minor"] == 25 * 12_000 // 1000  # the cheaper lot
        r = await c.post(
            f"/api/v1/payments/sandbox/{o['payment_id']}/complete",
            json={"succeed": True},
            headers=h("b@x.org"),
        )
        assert r.status_code == 200, r.text

        # the same month again, by two renewals at once: nothing more is bought
        made = await asyncio.gather(ctx.subscriptions.run_due(), ctx.subscriptions.run_due())
        assert made == [[], []]

        # December: the cheap lot has 5 kg left, so the dearer one sells the 25 kg
        clock.t = datetime(2026, 12, 1, 0, 5, tzinfo=UTC).timestamp()
        made = await asyncio.gather(ctx.subscriptions.run_due(), ctx.subscriptions.run_due())
        assert sorted(len(m) for m in made) == [0, 1]
        r = await c.get("/api/v1/shop/subscriptions", headers=h("b@x.org"))
        (mine,) = r.json()
        assert [run["period"] for run in mine["runs"]] == ["2026-12", "2026-11"]
        dec = mine["runs"][0]["order_id"]
        r = await c.get(f"/api/v1/shop/orders/{dec}", headers=h("b@x.org"))
        assert r.json()["lines"][0]["lot_id"] == lots["VCS-674-1..100"]

        # a month the project cannot fill is skipped, with the reason
        big = {**sub, "kg_per_month": 1_000}
        r = await c.post("/api/v1/shop/subscriptions", json=big, headers=h("o@x.org"))
        assert r.status_code == 201, r.text
        big_id = r.json()["subscription_id"]
        (run,) = r.json()["runs"]
        assert run["order_id"] is None and "no lot of the project has 1000 kg" in run["detail"]

        # someone else's subscription does not exist for you; cancelling stops January
        r = await c.delete(
            f"/api/v1/shop/subscriptions/{mine['subscription_id']}", headers=h("o@x.org")
        )
        assert r.status_code == 404
        r = await c.delete(
            f"/api/v1/shop/subscriptions/{mine['subscription_id']}", headers=h("b@x.org")
        )
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        clock.t = datetime(2027, 1, 2, tzinfo=UTC).timestamp()
        made = await ctx.subscriptions.run_due()
        # only the other buyer's (still active, skipped again) subscription ran
        assert [m.subscription_id for m in made] == [big_id]
        assert mine["subscription_id"] not in {m.subscription_id for m in made}

        for body, code, reason in (
            ({**sub, "kg_per_month": 0}, 400, "positive whole number"),
            ({**sub, "currency": "eur"}, 400, "ISO 4217"),
            ({**sub, "project_id": "prj_nope"}, 404, "does not exist"),
            ({**sub, "beneficiary": "  "}, 400, "beneficiary"),
        ):
            r = await c.post("/api/v1/shop/subscriptions", json=body, headers=h("b@x.org"))
            assert r.status_code == code and reason in r.json()["detail"], (body, r.text)
