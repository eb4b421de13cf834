"""Signing-key rotation with an overlap window, the commissioning probe, and refusals with reasons.

Real app (ASGI) and real ingest service on both storage backends. The app's clock is set so the
rotation happens in the middle of the test device's chain of intervals.
"""

from __future__ import annotations

import copy
import time

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api.app import create_app
from cloud.services.ingest import IngestService
from cloud.storage.store import Store
from protocol import cose, statements, topics
from tests.helpers.records import FakeDevice

OVERLAP_S = 1500  # five 5-minute intervals


async def _register(store: Store, dev: FakeDevice, status: str = "approved") -> None:
    await store.add_device(
        dev.device_id, dev.site_id, dev.public_key, dev.kid, dev.capacity_w, status=status
    )


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def test_rotation_overlap_window_and_retired_key(store: Store) -> None:
    dev = FakeDevice("pi-rotor")
    await _register(store, dev)
    ingest = IngestService(store, dev.deployment, time.time)
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)

    async def send(d: FakeDevice) -> tuple[str, str]:
        out = await ingest.handle(topic, d.next_token().envelope)
        return out.receipt.status, out.receipt.reason or ""

    for _ in range(3):
        assert (await send(dev))[0] == "accepted"
    # The rotation happens (by the app's clock) at the start of the device's next interval.
    rotated_at = dev.next_start
    app = create_app(
        store, deployment="gridmint-test", key_overlap_s=OVERLAP_S, now=lambda: rotated_at + 1
    )
    new_key = Ed25519PrivateKey.generate()
    new_pub = cose.public_bytes(new_key.public_key())
    request = statements.make_key_rotation(
        dev.device_id, new_pub, (rotated_at + 1) * 1000, dev.key, dev.deployment
    )
    async with _client(app) as c:
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": request.hex()})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["new"]["kid"] == cose.key_id(new_pub).hex()
        assert body["previous"]["valid_until"] == rotated_at + 1 + OVERLAP_S
        # Replaying the same request (or rotating again with the old key) is refused.
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": request.hex()})
        assert r.status_code == 409, r.text
        # Nor can the old key name a second successor (a fork of the key history).
        fork = statements.make_key_rotation(
            dev.device_id,
            cose.public_bytes(Ed25519PrivateKey.generate().public_key()),
            (rotated_at + 1) * 1000,
            dev.key,
            dev.deployment,
        )
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": fork.hex()})
        assert r.status_code == 409
        assert "already replaced" in r.json()["detail"]
        keys = (await c.get(f"/api/v1/devices/{dev.device_id}/keys")).json()
        assert [k["kid"] for k in keys] == [dev.kid.hex(), cose.key_id(new_pub).hex()]

    # Records the old key signed for intervals ending inside the window still verify: the
    # window is five intervals long, and the rotation came one second into the first.
    for _ in range(5):
        assert await send(dev) == ("accepted", "")
    # The sixth interval ends after the window: the old key is refused, with its reason.
    before = copy.deepcopy((dev.chain, dev.next_start, dev.totals))
    status, reason = await send(dev)
    assert (status, reason) == ("rejected", "key_retired")
    # The same interval signed with the new key is accepted, and the chain goes on.
    dev.chain, dev.next_start, dev.totals = before
    dev.key = new_key
    for _ in range(2):
        assert await send(dev) == ("accepted", "")
    stats = await store.stats()
    assert (stats.accepted, stats.rejected_by_reason.get("key_retired")) == (10, 1)


async def test_rotation_must_be_signed_by_the_current_key(store: Store) -> None:
    dev = FakeDevice("pi-victim")
    await _register(store, dev)
    now = time.time()
    app = create_app(store, deployment="gridmint-test", now=lambda: now)
    stranger = Ed25519PrivateKey.generate()
    forged = statements.make_key_rotation(
        dev.device_id,
        cose.public_bytes(stranger.public_key()),
        int(now * 1000),
        stranger,
        dev.deployment,
    )
    # Signed by the current key's id but over other bytes: a bad signature.
    good = statements.make_key_rotation(
        dev.device_id,
        cose.public_bytes(stranger.public_key()),
        int(now * 1000),
        dev.key,
        dev.deployment,
    )
    tampered = bytearray(good)
    tampered[-1] ^= 1
    async with _client(app) as c:
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": forged.hex()})
        assert r.status_code == 403
        assert r.json()["detail"].startswith("unknown_key")
        r = await c.post(
            f"/api/v1/devices/{dev.device_id}/keys", json={"statement": bytes(tampered).hex()}
        )
        assert r.status_code == 403
        assert r.json()["detail"].startswith("bad_signature")
        # Another deployment's rotation does not verify here.
        other = statements.make_key_rotation(
            dev.device_id,
            cose.public_bytes(stranger.public_key()),
            int(now * 1000),
            dev.key,
            b"gridmint-prod",
        )
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": other.hex()})
        assert r.status_code == 403
    assert [k.kid for k in await store.list_keys(dev.device_id)] == [dev.kid]
    refused = await store.list_rejections()
    assert sorted(x.reason for x in refused) == ["bad_signature", "bad_signature", "unknown_key"]
    assert all(x.topic == "http:rotate-key" for x in refused)


async def test_probe_reports_status_and_clock_offset(store: Store) -> None:
    dev = FakeDevice("pi-probe", site_id="site-p")
    await _register(store, dev, status="pending")
    now = time.time()
    app = create_app(store, deployment="gridmint-test", now=lambda: now)
    async with _client(app) as c:
        probe = statements.make_probe(
            dev.device_id, int(now * 1000) + 1500, dev.key, dev.deployment
        )
        r = await c.post(f"/api/v1/devices/{dev.device_id}/probe", json={"statement": probe.hex()})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "device_id": "pi-probe",
            "site_id": "site-p",
            "status": "pending",
            "kid": dev.kid.hex(),
            "clock_offset_ms": 1500,
            "counts": False,
        }
        # A probe is not a token: it cannot be ingested, and a token is not a probe.
        token = dev.next_token().envelope
        r = await c.post(f"/api/v1/devices/{dev.device_id}/probe", json={"statement": token.hex()})
        assert r.status_code == 403
        ingest = IngestService(store, dev.deployment, time.time)
        out = await ingest.handle(
            topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS), probe
        )
        assert out.receipt.status == "rejected"
        # A clock ten minutes off is named.
        late = statements.make_probe(
            dev.device_id, int(now * 1000) - 11 * 60_000, dev.key, dev.deployment
        )
        r = await c.post(f"/api/v1/devices/{dev.device_id}/probe", json={"statement": late.hex()})
        assert r.status_code == 422
        assert "clock is -660 s off" in r.json()["detail"]
        await store.set_device_status(dev.device_id, "revoked")
        r = await c.post(f"/api/v1/devices/{dev.device_id}/probe", json={"statement": probe.hex()})
        assert r.status_code == 403
        assert "revoked" in r.json()["detail"]


async def test_revoked_key_is_refused_for_tokens_probes_and_rotation(store: Store) -> None:
    from cloud.storage.accounts import AccountStore

    dev = FakeDevice("pi-leaked")
    await _register(store, dev)
    ingest = IngestService(store, dev.deployment, time.time)
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    assert (await ingest.handle(topic, dev.next_token().envelope)).receipt.status == "accepted"
    accounts = AccountStore(store.engine)
    approver = await accounts.create_account(
        "a@example.org", "a", "a long password", "approver", "approved"
    )
    bearer = {"Authorization": f"Bearer {await accounts.issue_token(approver.account_id, 600)}"}
    now = time.time()
    app = create_app(store, accounts=accounts, deployment="gridmint-test", now=lambda: now)
    async with _client(app) as c:
        url = f"/api/v1/admin/devices/{dev.device_id}/keys/{dev.kid.hex()}/revoke"
        r = await c.post(url, headers=bearer, json={"reason": ""})
        assert r.status_code == 422  # a reason is required
        r = await c.post(url, headers=bearer, json={"reason": "SD card copied"})
        assert r.status_code == 200, r.text
        assert r.json()["revoked_ms"] == int(now * 1000)
        # The next token signed with it is refused, with the reason named.
        out = await ingest.handle(topic, dev.next_token().envelope)
        assert (out.receipt.status, out.receipt.reason) == ("rejected", "key_revoked")
        # Nor can the leaked key rotate itself to a key of the thief's choosing.
        thief = Ed25519PrivateKey.generate()
        request = statements.make_key_rotation(
            dev.device_id,
            cose.public_bytes(thief.public_key()),
            int(now * 1000),
            dev.key,
            dev.deployment,
        )
        r = await c.post(f"/api/v1/devices/{dev.device_id}/keys", json={"statement": request.hex()})
        assert r.status_code == 403
        assert r.json()["detail"].startswith("key_revoked")
        r = await c.post(url.replace(dev.kid.hex(), "00" * 8), headers=bearer, json={"reason": "x"})
        assert r.status_code == 404
    # Both refusals are stored and counted: the token and the rotation request.
    refused = await store.list_rejections()
    assert sorted(x.topic.split("/")[-1] for x in refused if x.reason == "key_revoked") == [
        "http:rotate-key",
        "tokens",
    ]
