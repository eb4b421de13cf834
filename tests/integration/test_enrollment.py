"""The enrollment slice: installer -> site and claim code -> Pi enrolls -> approver -> tokens count.

Runs the real app (ASGI) and the real ingest service on both storage backends.
"""

from __future__ import annotations

import time

import httpx

from cloud.api.app import create_app
from cloud.services.ingest import IngestService
from cloud.storage.accounts import AccountStore
from cloud.storage.claims import ClaimStore
from cloud.storage.store import Store
from protocol import topics
from tests.helpers.records import FakeDevice


async def test_claim_enroll_approve_and_count(store: Store) -> None:
    accounts = AccountStore(store.engine)
    roles = {}
    for role in ("homeowner", "installer", "approver"):
        a = await accounts.create_account(
            f"{role}@example.org", role, "a long password", role, "approved"
        )
        roles[role] = (a.account_id, await accounts.issue_token(a.account_id, 3600))
    app = create_app(
        store,
        accounts=accounts,
        deployment="gridmint-test",
        broker_url="mqtts://broker.example:8883",
    )

    def as_(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {roles[role][1]}"}

    dev = FakeDevice("pi-enrolled", site_id="site-home")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            "/api/v1/sites",
            headers=as_("installer"),
            json={
                "site_id": "site-home",
                "owner_account_id": roles["homeowner"][0],
                "name": "Home",
            },
        )
        assert r.status_code == 201, r.text
        r = await c.post("/api/v1/sites/site-home/claim-codes", headers=as_("installer"))
        assert r.status_code == 201
        code = r.json()["code"]
        assert code.startswith("GM-")

        enroll = {
            "claim_code": code,
            "public_key": dev.public_key.hex(),
            "device_id": dev.device_id,
            "capacity_w": 5000,
        }
        r = await c.post("/api/v1/enroll", json=enroll)
        assert r.status_code == 201, r.text
        assert r.json() == {
            "device_id": "pi-enrolled",
            "site_id": "site-home",
            "status": "pending",
            "deployment": "gridmint-test",
            "broker_url": "mqtts://broker.example:8883",
            "client_cert": "",  # this aggregator has no CA configured
            "ca_bundle": "",
        }
        # A claim code works once.
        other = FakeDevice("pi-second")
        r = await c.post(
            "/api/v1/enroll",
            json={**enroll, "device_id": "pi-second", "public_key": other.public_key.hex()},
        )
        assert r.status_code == 403
        assert "already used" in r.json()["detail"]

        # Tokens sent while pending are verified and held.
        ingest = IngestService(store, dev.deployment, time.time)
        topic = topics.topic("site-home", dev.device_id, topics.Channel.TOKENS)
        for _ in range(2):
            out = await ingest.handle(topic, dev.next_token(generated_wh=200).envelope)
            assert out.receipt.status == "accepted"
        stats = (await c.get("/api/v1/stats", headers=as_("approver"))).json()
        assert (stats["accepted"], stats["held"]) == (0, 2)

        # The homeowner sees the device at their site; the approver approves it.
        mine = (await c.get("/api/v1/devices", headers=as_("homeowner"))).json()
        assert [(d["device_id"], d["status"]) for d in mine] == [("pi-enrolled", "pending")]
        r = await c.post(
            f"/api/v1/admin/devices/{dev.device_id}/status",
            headers=as_("approver"),
            json={"status": "approved"},
        )
        assert r.status_code == 200
        stats = (await c.get("/api/v1/stats", headers=as_("approver"))).json()
        assert (stats["accepted"], stats["held"], stats["generated_wh"]) == (2, 0, 400)
        tokens = (await c.get("/api/v1/tokens", headers=as_("homeowner"))).json()
        assert len(tokens) == 2


async def test_expired_and_unknown_claim_codes_are_refused(store: Store) -> None:
    accounts = AccountStore(store.engine)
    owner = await accounts.create_account(
        "o@example.org", "o", "a long password", "homeowner", "approved"
    )
    await accounts.create_site("site-x", owner.account_id, "X")
    # Issued an hour ago with a one-minute life: expired for the app's real clock.
    claims = ClaimStore(store.engine, clock=lambda: time.time() - 3600)
    code = await claims.create("site-x", owner.account_id, ttl_s=60)
    dev = FakeDevice("pi-late")
    app = create_app(store, accounts=accounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for claim in (code, "GM-AAAA-BBBB-CCCC"):
            r = await c.post(
                "/api/v1/enroll",
                json={"claim_code": claim, "public_key": dev.public_key.hex(), "capacity_w": 5000},
            )
            assert r.status_code == 403, (claim, r.text)
        assert await store.get_device("pi-late") is None
