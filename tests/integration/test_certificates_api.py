"""Certificates on real storage (SQLite and PostgreSQL), through the API: issued from the closed
ledger, never twice (also when the service is bypassed), 1 MWh RECs, transfer, retire, expiry,
and homeowners limited to their own sites."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api.app import create_app
from cloud.domain.certificates import REC_WH
from cloud.services.certificates import CertificateService
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService
from cloud.storage.accounts import AccountStore
from cloud.storage.certificates_store import (
    CertificateStore,
    SliceOverlapError,
    StoredCertificate,
    StoredSlice,
)
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from protocol import topics
from rules.ledger import EntryKind
from tests.helpers.records import FakeDevice

DAY = 24 * 3600


class Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t


@dataclass
class World:
    client: httpx.AsyncClient
    store: Store
    ingest: IngestService
    ledger: LedgerService
    clock: Clock
    tokens: dict[str, str]  # alice owns site-1, bob site-2; grid_operator; admin

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def send(self, d: FakeDevice, n: int, gen: int) -> None:
        for _ in range(n):
            tok = d.next_token(generated_wh=gen, imported_wh=20)
            out = await self.ingest.handle(
                topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS), tok.envelope
            )
            assert out.receipt.status == "accepted", out

    def self_consumed_wh(self, site: str) -> int:
        """Tgen burned by self-consumption, read straight from the ledger's entries."""
        return sum(
            b.wh
            for e in self.ledger.engine.entries
            if e.site == site and e.kind is EntryKind.BURN_SELF_CONSUMPTION
            for b in e.burns
        )


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    accounts = AccountStore(store.engine)
    tokens: dict[str, str] = {}
    for who, role in (
        ("alice", "homeowner"),
        ("bob", "homeowner"),
        ("grid_operator", "grid_operator"),
        ("admin", "admin"),
    ):
        a = await accounts.create_account(
            f"{who}@example.org", who, "a long password", role, "approved"
        )
        tokens[who] = await accounts.issue_token(a.account_id, 3600)
        if who == "alice":
            await accounts.create_site("site-1", a.account_id, "Alice's home")
        if who == "bob":
            await accounts.create_site("site-2", a.account_id, "Bob's home")
    clock = Clock(time.time())
    ledger = LedgerService(
        LedgerStore(store.engine),
        Ed25519PrivateKey.generate(),
        "gridmint/test/ledger",
        clock.now,
        grace_s=0,
    )
    await ledger.load()
    ingest = IngestService(store, b"gridmint-test", time.time)
    app = create_app(store, accounts=accounts, ledger=ledger)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        yield World(client, store, ingest, ledger, clock, tokens)


async def _device(w: World, device_id: str, site: str, capacity_w: int = 5000) -> FakeDevice:
    d = FakeDevice(device_id, site_id=site, capacity_w=capacity_w)
    await w.store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    return d


async def _issue(w: World, who: str, site: str, kind: str) -> list[dict]:  # type: ignore[type-arg]
    r = await w.client.post(
        f"/api/v1/sites/{site}/certificates", json={"kind": kind}, headers=w.auth(who)
    )
    assert r.status_code == 200, r.text
    out: list[dict] = r.json()  # type: ignore[type-arg]
    return out


async def test_granular_certificates_cover_the_eligible_wh_once(world: World) -> None:
    w = world
    pi = await _device(w, "pi-a", "site-1")
    await w.send(pi, 6, gen=300)
    assert await w.ledger.close_due() == 6
    eligible = w.self_consumed_wh("site-1")
    assert eligible == 6 * 300  # no export, no battery: the home used all its generation

    certs = await _issue(w, "alice", "site-1", "granular")
    assert len(certs) == 6
    assert sum(c["energy_wh"] for c in certs) == eligible
    assert all(c["kind"] == "granular" and c["status"] == "active" for c in certs)
    assert all(c["owner_site_id"] == "site-1" and c["device_ids"] == ["pi-a"] for c in certs)
    assert certs[0]["production_end"] - certs[0]["production_start"] == 300
    listed = await w.client.get("/api/v1/sites/site-1/certificates", headers=w.auth("alice"))
    assert {c["certificate_id"] for c in listed.json()} == {c["certificate_id"] for c in certs}

    # Issuing again issues nothing; nor does a restarted service rebuilt from storage.
    assert await _issue(w, "alice", "site-1", "granular") == []
    assert await _issue(w, "alice", "site-1", "rec") == []
    cstore = CertificateStore(w.store.engine)
    restarted = CertificateService(cstore, w.ledger)
    assert await restarted.issue_granular("site-1") == []
    assert await restarted.uncertified_wh("site-1") == 0

    # Bypassing the service: the database itself refuses any Wh certified a second time,
    # whether the overlapping slice starts where another does or inside it.
    first = certs[0]["slices"][0]
    token = first["token_id"]
    with pytest.raises(SliceOverlapError):
        await cstore.add_slice(certs[1]["certificate_id"], StoredSlice(token, 100, 250))
    with pytest.raises(SliceOverlapError):
        await cstore.add_slice(certs[1]["certificate_id"], StoredSlice(token, 0, 1))
    forged = StoredCertificate(
        certificate_id="f" * 64,
        kind="granular",
        status="active",
        owner_site_id="site-2",
        issued_site_id="site-1",
        device_ids=("pi-a",),
        technology="solar",
        market_zone="zone-t",
        production_start=0,
        production_end=300,
        energy_wh=10,
        issued_ms=1,
        expires_ms=2,
        retired_ms=None,
        beneficiary="",
        slices=(StoredSlice(token, 290, 300),),
    )
    with pytest.raises(SliceOverlapError):
        await cstore.add([forged])
    assert await cstore.get(forged.certificate_id) is None  # all or nothing
    # A slice beyond what was certified is accepted by the database (only overlap is refused).
    await cstore.add_slice(certs[1]["certificate_id"], StoredSlice(token, 300, 310))


async def test_rec_needs_one_mwh(world: World) -> None:
    w = world
    # A 2 MW commercial array: up to ~166 kWh per 5-minute interval passes the capacity check.
    pi = await _device(w, "pi-big", "site-1", capacity_w=2_000_000)
    await w.send(pi, 6, gen=150_000)
    assert await w.ledger.close_due() == 6
    assert w.self_consumed_wh("site-1") == 900_000
    assert await _issue(w, "alice", "site-1", "rec") == []  # 0.9 MWh: waits

    await w.send(pi, 1, gen=150_000)
    assert await w.ledger.close_due() == 1
    (rec,) = await _issue(w, "alice", "site-1", "rec")
    assert rec["kind"] == "rec" and rec["energy_wh"] == REC_WH
    assert sum(s["end_wh"] - s["start_wh"] for s in rec["slices"]) == REC_WH
    assert len(rec["slices"]) == 7  # six whole tokens and 100 kWh of the seventh
    assert rec["avoided_co2_g"] == 707_000
    assert await _issue(w, "alice", "site-1", "rec") == []
    # The remaining 50 kWh can still be certified, as one granular certificate.
    (rest,) = await _issue(w, "alice", "site-1", "granular")
    assert rest["energy_wh"] == 50_000
    assert rest["slices"][0]["start_wh"] == 100_000
    assert await _issue(w, "alice", "site-1", "granular") == []


async def test_transfer_retire_expire_and_owners(world: World) -> None:
    w = world
    await w.send(await _device(w, "pi-a", "site-1"), 3, gen=300)
    await w.ledger.close_due()
    c1, c2, c3 = (c["certificate_id"] for c in await _issue(w, "alice", "site-1", "granular"))

    # Bob (site-2) cannot issue, read, transfer or retire site-1's certificates.
    r = await w.client.post(
        "/api/v1/sites/site-1/certificates", json={"kind": "granular"}, headers=w.auth("bob")
    )
    assert r.status_code == 403 and "another account" in r.json()["detail"]
    r = await w.client.get("/api/v1/sites/site-1/certificates", headers=w.auth("bob"))
    assert r.status_code == 403
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire", json={"beneficiary": "Bob"}, headers=w.auth("bob")
    )
    assert r.status_code == 403
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/transfer", json={"to_site_id": "site-2"}, headers=w.auth("bob")
    )
    assert r.status_code == 403
    # Fleet roles read, but do not act.
    r = await w.client.get("/api/v1/sites/site-1/certificates", headers=w.auth("grid_operator"))
    assert r.status_code == 200 and len(r.json()) == 3
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire",
        json={"beneficiary": "X"},
        headers=w.auth("grid_operator"),
    )
    assert r.status_code == 403
    # Unknown things.
    r = await w.client.post(
        "/api/v1/certificates/nope/retire", json={"beneficiary": "A"}, headers=w.auth("alice")
    )
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    r = await w.client.get("/api/v1/sites/site-9/certificates", headers=w.auth("admin"))
    assert r.status_code == 404
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/transfer",
        json={"to_site_id": "site-9"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 404
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire", json={"beneficiary": ""}, headers=w.auth("alice")
    )
    assert r.status_code == 422

    # Alice gives c1 to Bob: now Bob may retire it and Alice may not.
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/transfer",
        json={"to_site_id": "site-2"},
        headers=w.auth("alice"),
    )
    assert r.status_code == 200 and r.json()["owner_site_id"] == "site-2"
    assert r.json()["issued_site_id"] == "site-1"
    assert [t.to_site_id for t in await CertificateStore(w.store.engine).transfers(c1)] == [
        "site-2"
    ]
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire", json={"beneficiary": "A"}, headers=w.auth("alice")
    )
    assert r.status_code == 403
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire",
        json={"beneficiary": "Bob's bakery"},
        headers=w.auth("bob"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "retired" and r.json()["beneficiary"] == "Bob's bakery"
    assert r.json()["retired_ms"] is not None
    # Retired is final: a second retirement or a transfer is a conflict.
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/retire", json={"beneficiary": "again"}, headers=w.auth("bob")
    )
    assert r.status_code == 409 and "not active" in r.json()["detail"]
    r = await w.client.post(
        f"/api/v1/certificates/{c1}/transfer", json={"to_site_id": "site-1"}, headers=w.auth("bob")
    )
    assert r.status_code == 409
    r = await w.client.get("/api/v1/sites/site-2/certificates", headers=w.auth("bob"))
    assert [c["certificate_id"] for c in r.json()] == [c1]

    # The admin may retire c2 for Alice's site.
    r = await w.client.post(
        f"/api/v1/certificates/{c2}/retire", json={"beneficiary": "Alice"}, headers=w.auth("admin")
    )
    assert r.status_code == 200

    # A year and a day later, c3 (never claimed) has expired; the retired ones stay retired.
    w.clock.t += 366 * DAY
    r = await w.client.get("/api/v1/sites/site-1/certificates", headers=w.auth("alice"))
    assert {c["certificate_id"]: c["status"] for c in r.json()} == {
        c2: "retired",
        c3: "expired",
    }
    r = await w.client.post(
        f"/api/v1/certificates/{c3}/retire", json={"beneficiary": "late"}, headers=w.auth("alice")
    )
    assert r.status_code == 409
    # Expired energy stays certified: nothing new is issued for it.
    assert await _issue(w, "alice", "site-1", "granular") == []


async def test_no_ledger_is_503(store: Store) -> None:
    accounts = AccountStore(store.engine)
    a = await accounts.create_account("a@example.org", "a", "a long password", "admin", "approved")
    token = await accounts.issue_token(a.account_id, 3600)
    app = create_app(store, accounts=accounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get(
            "/api/v1/sites/site-1/certificates", headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 503
