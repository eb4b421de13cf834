"""Market payment credits through the payment port, over HTTP on both backends, with the
embedded sandbox provider and a real ledger: a top-up deposits its net amount once, when the
payment succeeds (however often that is reported) and never when it fails; a redemption takes
the credits off in a WITHDRAWAL and pays out the net, is refused beyond the free credits, and a
refused payout gives the credits back. The flat bank-transfer fee comes off both ways, and the
log replays and conserves money."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api.app import create_app
from cloud.services.ledger import LedgerService
from cloud.services.payments import PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store
from rules.ledger import EntryKind, check_conservation, replay, site_account

FEE = 50  # minor units per transfer


@dataclass
class World:
    client: httpx.AsyncClient
    ledger: LedgerService
    sandbox: SandboxProvider
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def balance(self, site: str) -> int:
        return self.ledger.engine.state.balance(site_account(site))

    def kinds(self, ref: str) -> list[EntryKind]:
        return [e.kind for e in self.ledger.engine.entries if e.ref == ref]


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    accounts = AccountStore(store.engine)
    tokens = {}
    for who, role in (("alice", "homeowner"), ("bob", "homeowner"), ("admin", "admin")):
        a = await accounts.create_account(
            f"{who}@example.org", who, "a long password", role, "approved"
        )
        tokens[who] = await accounts.issue_token(a.account_id, 3600)
        if role == "homeowner":
            await accounts.create_site(f"site-{who}", a.account_id, f"{who}'s home")
    ledger = LedgerService(
        LedgerStore(store.engine), Ed25519PrivateKey.generate(), "test/ledger", time.time
    )
    await ledger.load()
    sandbox = SandboxProvider()
    payments = PaymentService(sandbox, PaymentStore(store.engine), None)  # type: ignore[arg-type]
    app = create_app(
        store,
        accounts=accounts,
        ledger=ledger,
        payments=payments,
        market_currency="EUR",
        bank_transfer_fee_minor=FEE,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield World(c, ledger, sandbox, tokens)


async def _top_up(w: World, who: str, amount: int, succeed: bool, times: int = 1) -> dict:  # type: ignore[type-arg]
    r = await w.client.post(
        f"/api/v1/sites/site-{who}/credits/top-ups",
        json={"amount_minor": amount, "currency": "EUR"},
        headers=w.auth(who),
    )
    assert r.status_code == 201, r.text
    started = r.json()
    for _ in range(times):
        r = await w.client.post(
            f"/api/v1/payments/sandbox/{started['payment_id']}/complete",
            json={"succeed": succeed},
            headers=w.auth(who),
        )
        assert r.status_code == 200, r.text
    return started  # type: ignore[no-any-return]


async def test_a_top_up_deposits_its_net_once_and_a_failed_one_nothing(world: World) -> None:
    w = world
    started = await _top_up(w, "alice", 1_000, succeed=True, times=3)
    ref = started["transfer"]["transfer_id"]
    assert started["transfer"]["fee_minor"] == FEE and started["transfer"]["net_minor"] == 950
    assert w.balance("site-alice") == 950
    assert w.kinds(ref) == [EntryKind.DEPOSIT]  # reported three times, deposited once
    failed = await _top_up(w, "alice", 2_000, succeed=False)
    assert w.balance("site-alice") == 950
    assert w.kinds(failed["transfer"]["transfer_id"]) == []
    r = await w.client.get("/api/v1/sites/site-alice/credits", headers=w.auth("alice"))
    body = r.json()
    assert (body["balance_minor"], body["free_minor"], body["currency"]) == (950, 950, "EUR")
    states = {t["transfer_id"]: t["state"] for t in body["transfers"]}
    assert states == {ref: "complete", failed["transfer"]["transfer_id"]: "failed"}
    assert next(t for t in body["transfers"] if t["transfer_id"] == ref)["ledger_seq"] is not None
    # bob may neither pay alice's top-up nor see her credits
    r = await w.client.post(
        f"/api/v1/payments/sandbox/{started['payment_id']}/complete",
        json={"succeed": True},
        headers=w.auth("bob"),
    )
    assert r.status_code == 404
    r = await w.client.get("/api/v1/sites/site-alice/credits", headers=w.auth("bob"))
    assert r.status_code == 404
    r = await w.client.get("/api/v1/sites/site-alice/credits", headers=w.auth("admin"))
    assert r.status_code == 200 and r.json()["balance_minor"] == 950


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"amount_minor": 1_000, "currency": "USD"}, "market credits are in EUR"),
        ({"amount_minor": FEE, "currency": "EUR"}, "more than the transfer fee"),
        ({"amount_minor": 0, "currency": "EUR"}, "positive"),
        ({"amount_minor": -5, "currency": "EUR"}, "positive"),
    ],
)
async def test_bad_top_ups_get_a_plain_reason(world: World, body: dict, reason: str) -> None:  # type: ignore[type-arg]
    r = await world.client.post(
        "/api/v1/sites/site-alice/credits/top-ups", json=body, headers=world.auth("alice")
    )
    assert r.status_code == 400 and reason in r.json()["detail"], r.text
    r = await world.client.post(
        "/api/v1/sites/site-alice/credits/top-ups",
        json={"amount_minor": 1_000, "currency": "EUR"},
        headers=world.auth("bob"),
    )
    assert r.status_code == 404  # not bob's site


async def test_a_redemption_withdraws_pays_out_and_a_refused_payout_gives_back(
    world: World,
) -> None:
    w = world
    await _top_up(w, "alice", 1_000, succeed=True)
    url = "/api/v1/sites/site-alice/credits/redemptions"
    r = await w.client.post(
        url,
        json={"amount_minor": 2_000, "currency": "EUR", "payout_to": "DE89 3704"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 409 and "9.50 EUR of credits free" in r.json()["detail"], r.text
    r = await w.client.post(
        url,
        json={"amount_minor": 500, "currency": "EUR", "payout_to": "DE89 3704"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["state"], t["gross_minor"], t["net_minor"]) == ("paid_out", 500, 450)
    assert w.balance("site-alice") == 450
    assert w.kinds(t["transfer_id"]) == [EntryKind.WITHDRAWAL]
    paid = w.sandbox.payouts[t["transfer_id"]]
    assert (paid[0], paid[1].amount_minor, paid[2]) == (t["payout_id"], 450, "DE89 3704")

    w.sandbox.refuse_destinations.add("closed account")
    r = await w.client.post(
        url,
        json={"amount_minor": 300, "currency": "EUR", "payout_to": "closed account"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 409 and "the credits are back" in r.json()["detail"], r.text
    assert w.balance("site-alice") == 450
    r = await w.client.get("/api/v1/sites/site-alice/credits", headers=w.auth("alice"))
    back = next(x for x in r.json()["transfers"] if x["state"] == "returned")
    assert w.kinds(back["transfer_id"]) == [EntryKind.WITHDRAWAL, EntryKind.DEPOSIT]
    assert back["ledger_seq"] is not None and back["return_seq"] is not None

    entries = w.ledger.engine.entries
    assert replay(entries).balance(site_account("site-alice")) == 450
    assert check_conservation(entries) == []
