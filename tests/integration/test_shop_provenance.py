"""A homeowner's solar certificate sold in the carbon shop, traced to signed records (issue 14,
acceptance item 4), on both backends, over real HTTP with the sandbox payment provider.

Signed records go through ingest, the ledger closes their intervals, the homeowner is issued a
certificate and lists it; a buyer buys part of it (the payment reported three times: one
retirement leaf), another the rest (the certificate is then retired for both). The custody
report's records verify with `cryptography` (Ed25519 over the COSE Sig_structure) and its
inclusion proofs with protocol.merkle against the signed checkpoint; the statement's ledger
proof too; the export passes `gridmint verify`, which counts the shop's leaves; an export whose
paid-order leaf was removed (and the log re-signed with the aggregator's own key) fails with a
plain message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud.api.app import create_app
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService
from cloud.services.ledger_export import export_ledger
from cloud.services.payments import PaymentService, SandboxProvider
from cloud.storage.accounts import AccountStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.store import Store
from gridmint.verify import verify_export
from protocol import cose, topics
from protocol.checkpoint import parse_signed_checkpoint, parse_verifier_key
from protocol.ledger_leaf import decode_leaf
from protocol.merkle import leaf_hash, verify_inclusion
from rules.carbon import Retired, decode_shop_event
from rules.ledger import Entry, EntryKind
from tests.helpers.ledger_export import read_entries, rewrite_log, without_entry
from tests.helpers.records import FakeDevice

DEPLOYMENT = b"gridmint-test"
ORIGIN = "gridmint/test/ledger"
PW, OK = "a long password", "approved"


@dataclass
class World:
    client: httpx.AsyncClient
    store: Store
    ingest: IngestService
    ledger: LedgerService
    key: Ed25519PrivateKey
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def send(self, d: FakeDevice, n: int, gen: int) -> None:
        for _ in range(n):
            tok = d.next_token(generated_wh=gen, imported_wh=20)
            out = await self.ingest.handle(
                topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS), tok.envelope
            )
            assert out.receipt.status == "accepted", out


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    accounts = AccountStore(store.engine)
    tokens: dict[str, str] = {}
    for who, role in (
        ("alice", "homeowner"),
        ("bob", "homeowner"),
        ("ben", "buyer"),
        ("cat", "buyer"),
    ):
        a = await accounts.create_account(f"{who}@example.org", who, PW, role, OK)
        tokens[who] = await accounts.issue_token(a.account_id, 3600)
        if who in ("alice", "bob"):
            await accounts.create_site(f"site-{who}", a.account_id, f"{who.title()}'s home")
    key = Ed25519PrivateKey.generate()
    ledger = LedgerService(LedgerStore(store.engine), key, ORIGIN, time.time, grace_s=0)
    await ledger.load()
    payments = PaymentService(SandboxProvider(), PaymentStore(store.engine), None, now=time.time)  # type: ignore[arg-type]
    app = create_app(
        store,
        accounts=accounts,
        ledger=ledger,
        payments=payments,
        deployment=DEPLOYMENT.decode(),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield World(c, store, IngestService(store, DEPLOYMENT, time.time), ledger, key, tokens)


async def _certificates(w: World, who: str, site: str) -> list[dict[str, Any]]:
    r = await w.client.post(
        f"/api/v1/sites/{site}/certificates", json={"kind": "granular"}, headers=w.auth(who)
    )
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


async def _buy(w: World, who: str, lot_id: str, kg: int, beneficiary: str, times: int = 1) -> str:
    order = {"lines": [{"lot_id": lot_id, "kg": kg}], "currency": "EUR", "beneficiary": beneficiary}
    r = await w.client.post("/api/v1/shop/orders", json=order, headers=w.auth(who))
    assert r.status_code == 201, r.text
    o = r.json()
    for _ in range(times):  # the provider may report the same success more than once
        r = await w.client.post(
            f"/api/v1/payments/sandbox/{o['payment_id']}/complete",
            json={"succeed": True},
            headers=w.auth(who),
        )
        assert r.status_code == 200, r.text
    r = await w.client.get(f"/api/v1/shop/orders/{o['order_id']}", headers=w.auth(who))
    assert r.json()["state"] == "complete", r.json()
    order_id: str = o["order_id"]
    return order_id


def _check_leaf_proof(leaf: dict[str, Any], log_key: str) -> Entry:
    """The leaf is at its seq in the tree the signed checkpoint commits to."""
    vkey = parse_verifier_key(log_key)
    proof = leaf["proof"]
    assert proof is not None, leaf.get("pending")
    cp = parse_signed_checkpoint(proof["checkpoint"].encode(), vkey.name, vkey.public_key)
    raw = bytes.fromhex(leaf["leaf"])
    assert leaf_hash(raw).hex() == leaf["leaf_hash"]
    verify_inclusion(
        leaf_hash(raw), leaf["seq"], cp.size, [bytes.fromhex(h) for h in proof["path"]], cp.root
    )
    assert proof["tree_size"] == cp.size
    return Entry.from_bytes(decode_leaf(raw).entry)


async def test_a_bought_solar_kg_traces_to_signed_records(world: World, tmp_path: Path) -> None:
    w = world
    pi = FakeDevice("pi-alice", site_id="site-alice", capacity_w=1_000_000)
    await w.store.add_device(pi.device_id, pi.site_id, pi.public_key, pi.kid, pi.capacity_w)
    await w.send(pi, 2, gen=20_000)  # 20 kWh each: 14 kg CO2e at 707 g/kWh
    await w.send(pi, 1, gen=1_000)  # 1 kWh: 0.7 kg, nothing to sell
    assert await w.ledger.close_due() == 3
    certs = await _certificates(w, "alice", "site-alice")
    big, other, small = sorted(certs, key=lambda c: (-c["energy_wh"], c["certificate_id"]))
    assert big["energy_wh"] == 20_000 and small["energy_wh"] == 1_000

    listing = {
        "certificate_id": big["certificate_id"],
        "price_minor_per_t": 20_000,
        "currency": "EUR",
    }
    # not yours (a 404 like an unknown one); 0 kg; a buyer may not list
    r = await w.client.post("/api/v1/shop/solar-listings", json=listing, headers=w.auth("bob"))
    assert r.status_code == 404, r.text
    r = await w.client.post(
        "/api/v1/shop/solar-listings",
        json={**listing, "certificate_id": small["certificate_id"]},
        headers=w.auth("alice"),
    )
    assert r.status_code == 400 and "0 kg" in r.json()["detail"], r.text
    r = await w.client.post("/api/v1/shop/solar-listings", json=listing, headers=w.auth("ben"))
    assert r.status_code == 403, r.text

    r = await w.client.post("/api/v1/shop/solar-listings", json=listing, headers=w.auth("alice"))
    assert r.status_code == 201, r.text
    listed = r.json()
    lot = listed["lot"]
    assert lot["kg"] == 14 and lot["serials"] == f"GC-{big['certificate_id'][:16]}-1..14"
    assert lot["certificate_id"] == big["certificate_id"] and listed["ledger_seq"] is not None
    assert listed["certificate_ids"] == [cid := big["certificate_id"]]
    project_id = listed["project_id"]
    # listed: not twice, not transferred or retired outside the shop
    r = await w.client.post("/api/v1/shop/solar-listings", json=listing, headers=w.auth("alice"))
    assert r.status_code == 409 and "already listed" in r.json()["detail"], r.text
    r = await w.client.post(
        f"/api/v1/certificates/{cid}/retire", json={"beneficiary": "x"}, headers=w.auth("alice")
    )
    assert r.status_code == 409 and "listed for sale" in r.json()["detail"], r.text
    r = await w.client.post(
        f"/api/v1/certificates/{cid}/transfer",
        json={"to_site_id": "site-bob"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 409, r.text
    # several certificates of the site in one lot: 21 kWh make 14 kg (the 1 kWh alone made 0)
    both = [other["certificate_id"], small["certificate_id"]]
    r = await w.client.post(
        "/api/v1/shop/solar-listings",
        json={**listing, "certificate_id": None, "certificate_ids": both},
        headers=w.auth("alice"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["lot"]["kg"] == 14 and r.json()["energy_wh"] == 21_000
    r = await w.client.get("/api/v1/shop/projects?own_solar=true", headers=w.auth("ben"))
    (project,) = r.json()  # one gridmint_solar project per site
    assert project["kind"] == "gridmint_solar" and project["available_kg"] == 28

    # Ben buys 5 kg; the payment is reported three times: one paid leaf, one retirement leaf.
    order_id = await _buy(w, "ben", lot["lot_id"], 5, "Ben's bakery", times=3)
    shop_leaves = [e for e in w.ledger.engine.entries if e.kind is EntryKind.CARBON]
    retirements = [e for e in shop_leaves if isinstance(decode_shop_event(e.market), Retired)]
    assert len(shop_leaves) == 4 and len(retirements) == 1

    r = await w.client.get(f"/api/v1/shop/projects/{project_id}/custody", headers=w.auth("ben"))
    assert r.status_code == 200, r.text
    custody = r.json()
    log_key = custody["log_key"]
    clot = next(x for x in custody["lots"] if x["lot_id"] == lot["lot_id"])
    (ccert,) = clot["certificates"]
    assert ccert["certificate_id"] == cid and ccert["status"] == "active"
    (token,) = clot["tokens"]
    assert token["wh"] == 20_000
    rec = token["record"]
    # The signed record: Ed25519 over the COSE Sig_structure, by the device's registered key.
    envelope = bytes.fromhex(rec["envelope"])
    s1 = cose.parse(envelope)
    assert s1.kid.hex() == rec["kid"] and rec["public_key"] == pi.public_key.hex()
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(rec["public_key"])).verify(
        s1.signature, s1.sig_structure(custody["records_aad"].encode())
    )
    assert cose.record_hash(envelope).hex() == rec["record_hash"]
    _, record = cose.open_record(envelope)
    assert record.token_id == token["token_id"] and record.energy.generated_wh == 20_000
    # The MINT_GEN leaf that minted it, in the signed log.
    mint = _check_leaf_proof(token["mint"], log_key)
    assert mint.kind is EntryKind.MINT_GEN and mint.site == "site-alice"
    assert [r.record_hash.hex() for r in mint.refs] == [rec["record_hash"]]
    # The listing, paid and retirement leaves of the lot, each proven.
    kinds = [_check_leaf_proof(leaf, log_key) for leaf in clot["ledger"]]
    assert [e.kind for e in kinds] == [EntryKind.CARBON] * 3
    events = [leaf["event"]["type"] for leaf in clot["ledger"]]
    assert events == ["LotListed", "OrderPaid", "Retired"]
    listed_event = clot["ledger"][0]["event"]
    assert listed_event["backing"][0]["record_hash"] == rec["record_hash"]
    assert listed_event["g_co2e_per_kwh"] == 707 and listed_event["site_id"] == "site-alice"
    assert all(leaf in custody["ledger_events"] for leaf in clot["ledger"])

    r = await w.client.get(f"/api/v1/shop/orders/{order_id}/statement", headers=w.auth("ben"))
    st = r.json()
    assert st["retirements"][0]["serials"] == f"GC-{cid[:16]}-1..5"
    assert st["retirements"][0]["certificate_id"] == cid
    proof = st["ledger_proof"]
    retired = _check_leaf_proof(proof["retirement"], proof["log_key"])
    assert retired.ref == order_id
    assert _check_leaf_proof(proof["payment"], proof["log_key"]).ref == order_id

    # Cat buys the rest: the lot sells out and the certificate is retired for both buyers.
    await _buy(w, "cat", lot["lot_id"], 9, "Cat's cafe")
    r = await w.client.get("/api/v1/sites/site-alice/certificates", headers=w.auth("alice"))
    sold = next(c for c in r.json() if c["certificate_id"] == cid)
    assert sold["status"] == "retired"
    assert "Ben's bakery" in sold["beneficiary"] and "Cat's cafe" in sold["beneficiary"]

    # The export passes `gridmint verify`, which replays the shop's leaves.
    await w.ledger.checkpoint_if_grown()
    export = tmp_path / "export"
    await export_ledger(
        w.ledger.store,
        export,
        origin=ORIGIN,
        log_public_key=w.ledger.public_key,
        deployment=DEPLOYMENT.decode(),
    )
    report = verify_export(export)
    assert report.ok, report.error
    assert report.shop.as_dict() == {
        "listings": 2,
        "solar_listings": 2,
        "orders": 2,
        "retirements": 2,
        "kg_listed": 28,
        "kg_retired": 14,
    }

    # An insider removes Ben's paid-order leaf and re-signs the log with the aggregator's key:
    # the Merkle log and the signatures check out, the shop's rules do not.
    entries = read_entries(export)
    paid_at = next(
        e.seq
        for e in entries
        if e.kind is EntryKind.CARBON and type(decode_shop_event(e.market)).__name__ == "OrderPaid"
    )
    rewrite_log(export, without_entry(entries, paid_at), w.key, origin=ORIGIN)
    report = verify_export(export)
    assert not report.ok
    assert f"retirement for order {order_id}, which has no paid order before it" in str(
        report.error
    ), report.error


async def test_a_lot_from_before_the_ledger_is_listed_on_its_first_sale(
    store: Store, tmp_path: Path
) -> None:
    """An upgraded shop: a lot stored without a leaf gets its listing leaf with its first paid
    order, so the export still verifies."""
    from cloud.services.carbon_shop import ShopService
    from cloud.storage.carbon_store import CarbonStore

    async def start_payment(ref: str, amount: int, currency: str, what: str) -> str:
        return f"pay-{ref}"

    key = Ed25519PrivateKey.generate()
    ledger = LedgerService(LedgerStore(store.engine), key, ORIGIN, time.time, grace_s=0)
    await ledger.load()
    before = ShopService(CarbonStore(store.engine), start_payment)  # no ledger yet
    p = await before.register_project(
        "acct-p",
        name="Kasigau",
        kind="forestry",
        country="KE",
        standard="Verra VCS",
        verifier="Epic",
        serial_prefix="VCS-612",
        vintage=2023,
    )
    lot = await before.add_lot(
        "acct-p", p.project_id, serials="VCS-612-1..50", price_minor_per_t=1500, currency="EUR"
    )
    assert lot.ledger_seq is None
    after = ShopService(CarbonStore(store.engine), start_payment, ledger=ledger)
    order = await after.checkout("acct-b", [(lot.lot_id, 7)], "EUR", "Bo")
    await after.succeeded(order.order_id, "pay-1")
    await after.succeeded(order.order_id, "pay-1")  # told twice: nothing more
    kinds = [type(decode_shop_event(e.market)).__name__ for e in ledger.engine.entries]
    assert kinds == ["LotListed", "OrderPaid", "Retired"]
    assert (await after.project(p.project_id)).lots[0].ledger_seq == 0
    await export_ledger(
        ledger.store, tmp_path, origin=ORIGIN, log_public_key=ledger.public_key, deployment="d"
    )
    report = verify_export(tmp_path)
    assert report.ok, report.error
    assert report.shop.kg_retired == 7


async def test_paid_now_retired_later_at_the_buyers_choice(store: Store, tmp_path: Path) -> None:
    """`retire_now: false`: the paid order stays placed (its serials sold, nobody else's, not
    yet retired: no statement), a `Retired` leaf follows when the buyer retires it for the
    beneficiary they name then; it retires once, only the buyer may, and the export verifies."""
    accounts = AccountStore(store.engine)
    prov = await accounts.create_account("p@x.org", "P", PW, "provider", OK)
    ben = await accounts.create_account("ben@x.org", "Ben", PW, "buyer", OK)
    cat = await accounts.create_account("cat@x.org", "Cat", PW, "buyer", OK)
    tok = {a.email: await accounts.issue_token(a.account_id, 3600) for a in (prov, ben, cat)}
    ledger = LedgerService(
        LedgerStore(store.engine), Ed25519PrivateKey.generate(), ORIGIN, time.time, grace_s=0
    )
    await ledger.load()
    payments = PaymentService(SandboxProvider(), PaymentStore(store.engine), None, now=time.time)  # type: ignore[arg-type]
    app = create_app(store, accounts=accounts, ledger=ledger, payments=payments)

    def h(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[email]}"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            "/api/v1/shop/projects",
            json={
                "name": "Kasigau",
                "kind": "forestry",
                "country": "KE",
                "standard": "Verra VCS",
                "verifier": "Epic",
                "serial_prefix": "VCS-612",
                "vintage": 2023,
            },
            headers=h("p@x.org"),
        )
        pid = r.json()["project_id"]
        r = await c.post(
            f"/api/v1/shop/projects/{pid}/lots",
            json={"serials": "VCS-612-1..50", "price_minor_per_t": 1500, "currency": "EUR"},
            headers=h("p@x.org"),
        )
        lot_id = r.json()["lot_id"]
        order = {
            "lines": [{"lot_id": lot_id, "kg": 30}],
            "currency": "EUR",
            "beneficiary": "Ben",
            "retire_now": False,
        }
        r = await c.post("/api/v1/shop/orders", json=order, headers=h("ben@x.org"))
        assert r.status_code == 201 and r.json()["retire_on_payment"] is False, r.text
        o = r.json()
        url = f"/api/v1/shop/orders/{o['order_id']}"
        r = await c.post(url + "/retire", json={}, headers=h("ben@x.org"))
        assert r.status_code == 409 and "reserved" in r.json()["detail"]  # not paid yet
        for _ in range(2):
            r = await c.post(
                f"/api/v1/payments/sandbox/{o['payment_id']}/complete",
                json={"succeed": True},
                headers=h("ben@x.org"),
            )
            assert r.status_code == 200, r.text
        r = await c.get(url, headers=h("ben@x.org"))
        assert r.json()["state"] == "placed"
        r = await c.get(url + "/statement", headers=h("ben@x.org"))
        assert r.status_code == 409  # nothing retired yet
        r = await c.get(f"/api/v1/shop/projects/{pid}", headers=h("cat@x.org"))
        assert r.json()["available_kg"] == 20  # the 30 kg are Ben's, sold to nobody else
        kinds = [type(decode_shop_event(e.market)).__name__ for e in ledger.engine.entries]
        assert kinds == ["LotListed", "OrderPaid"]

        r = await c.post(url + "/retire", json={"beneficiary": "Acme Ltd"}, headers=h("cat@x.org"))
        assert r.status_code == 404  # not Cat's order
        r = await c.post(
            url + "/retire",
            json={"beneficiary": "Acme Ltd", "reason": "FY2026 travel"},
            headers=h("ben@x.org"),
        )
        assert r.status_code == 200 and r.json()["state"] == "complete", r.text
        r = await c.post(url + "/retire", json={}, headers=h("ben@x.org"))
        assert r.status_code == 409  # once
        r = await c.get(url + "/statement", headers=h("ben@x.org"))
        st = r.json()
        assert (st["beneficiary"], st["reason"]) == ("Acme Ltd", "FY2026 travel")
        assert [x["serials"] for x in st["retirements"]] == ["VCS-612-1..30"]
        assert st["ledger_proof"]["retirement"]["event"]["beneficiary"] == "Acme Ltd"
    kinds = [type(decode_shop_event(e.market)).__name__ for e in ledger.engine.entries]
    assert kinds == ["LotListed", "OrderPaid", "Retired"]
    await export_ledger(
        ledger.store, tmp_path, origin=ORIGIN, log_public_key=ledger.public_key, deployment="d"
    )
    report = verify_export(tmp_path)
    assert report.ok, report.error
    assert report.shop.kg_retired == 30
