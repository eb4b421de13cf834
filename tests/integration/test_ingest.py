"""Ingest through a real Mosquitto broker into real storage (SQLite and PostgreSQL).

Good records published around bad ones are all accepted; each bad one is refused with its own
reason, stored, and counted in /api/v1/stats.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import cose, topics
from protocol import record as record_mod
from protocol.receipts import Receipt, ReceiptStatus
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto

pytestmark = [pytest.mark.broker]

DEPLOYMENT = b"gridmint-test"


async def _until(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _non_canonical(token_payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """The same record with its version written as a two-byte integer, validly re-signed."""
    assert token_payload[1:3] == b"\x00\x01"  # map header, key 0, value 1
    longer = token_payload[:2] + b"\x18\x01" + token_payload[3:]
    assert cbor2.loads(longer) == cbor2.loads(token_payload)
    return cose.sign(longer, key, DEPLOYMENT)


def _altered(envelope: bytes) -> bytes:
    """Change the generated energy inside the signed payload, keep the old signature."""
    s1 = cose.parse(envelope)
    rec = record_mod.decode(s1.payload)
    forged = record_mod.IntervalRecord(
        **{
            **{f: getattr(rec, f) for f in record_mod.IntervalRecord.__slots__},
            "energy": record_mod.Energy(rec.energy.generated_wh + 1000, rec.energy.imported_wh),
        }
    )
    payload = record_mod.encode(forged)
    return cbor2.dumps(
        cbor2.CBORTag(cose.COSE_SIGN1_TAG, [s1.protected, {}, payload, s1.signature]),
        canonical=True,
    )


async def test_bad_records_are_refused_with_distinct_reasons_and_good_ones_flow(
    mosquitto: Mosquitto, db_url: str
) -> None:
    runtime = CloudRuntime(
        CloudSettings(
            database_url=db_url,
            broker_url=mosquitto.url,
            deployment=DEPLOYMENT.decode(),
            http_port=0,
            client_id=f"agg-{time.monotonic_ns()}",
            admin_token="test-admin",
        )
    )
    await runtime.start()
    assert runtime.store is not None
    dev = FakeDevice("pi-good")
    stranger = FakeDevice("pi-unknown")
    await runtime.store.add_device(dev.device_id, dev.site_id, dev.public_key, dev.kid, 5000)
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    receipts: list[Receipt] = []

    async def on_receipt(_t: str, payload: bytes) -> None:
        receipts.append(Receipt.decode(payload))

    client = MqttLink(
        BrokerAddress.parse(mosquitto.url),
        "test-publisher",
        clean_session=True,
        subscriptions=[
            Subscription(topics.topic(dev.site_id, dev.device_id, topics.Channel.RECEIPTS),
                         on_receipt)
        ],
    )
    await client.start()
    try:
        assert await client.wait_ready(10)
        assert await runtime.mqtt.wait_ready(10)  # type: ignore[union-attr]
        good = [dev.next_token() for _ in range(8)]
        other_key = Ed25519PrivateKey.generate()
        bad = {
            "bad_signature": _altered(dev.next_token().envelope),
            "unknown_key": cose.sign(cose.parse(good[0].envelope).payload, other_key, DEPLOYMENT),
            "replayed": good[0].envelope,
            "unknown_device": stranger.next_token().envelope,
            "malformed": b"this is not a COSE record",
            "non_canonical": _non_canonical(cose.parse(good[0].envelope).payload, dev.key),
            "too_large": b"\x00" * 1_000_000,
        }
        # dev.next_token() for bad_signature consumed a slot; the good chain must not depend on
        # it, so good records were all minted first.
        plan: list[tuple[str, bytes, str]] = []
        for i, (reason, payload) in enumerate(bad.items()):
            plan.append(("good", good[i].envelope, topic))
            t = topic
            if reason == "unknown_device":
                t = topics.topic(stranger.site_id, stranger.device_id, topics.Channel.TOKENS)
            plan.append((reason, payload, t))
        plan.append(("good", good[7].envelope, topic))
        for _kind, payload, t in plan:
            assert await client.publish(t, payload, qos=1)

        store = runtime.store

        async def all_seen() -> bool:
            s = await store.stats()
            return s.accepted == 8 and s.rejected == 7

        await _until(all_seen, 30)
        async with httpx.AsyncClient(
            base_url=runtime.url, headers={"Authorization": "Bearer test-admin"}
        ) as http:
            stats = (await http.get("/api/v1/stats")).json()
            tokens = (await http.get("/api/v1/tokens", params={"device_id": "pi-good"})).json()
            rejections = (await http.get("/api/v1/rejections")).json()
            metrics = (await http.get("/metrics")).text
            health = (await http.get("/healthz")).json()
        assert stats["accepted"] == 8
        assert stats["rejected_by_reason"] == {reason: 1 for reason in bad}
        assert stats["generated_wh"] == 8 * 250
        assert sorted(t["seq"] for t in tokens) == list(range(1, 9))
        assert {r["reason"] for r in rejections} == set(bad)
        assert "gridmint_tokens_accepted_total 8" in metrics
        assert 'gridmint_tokens_rejected_total{reason="bad_signature"} 1' in metrics
        assert "gridmint_ledger_late_records 0" in metrics
        assert "gridmint_ledger_entries " in metrics
        assert health == {
            "status": "ok",
            "database": "ok",
            "broker": "connected",
            "sequencer": True,
        }
        big = next(r for r in rejections if r["reason"] == "too_large")
        assert big["size"] == 1_000_000
        assert big["sha256"] == hashlib.sha256(bad["too_large"]).hexdigest()

        await _until(lambda: _async(len(receipts) >= 14), 10)
        by_hash = {r.record_hash: r for r in receipts}
        for tok in good:
            assert by_hash[hashlib.sha256(tok.envelope).hexdigest()].status in (
                ReceiptStatus.ACCEPTED, ReceiptStatus.DUPLICATE)
        assert by_hash[hashlib.sha256(bad["malformed"]).hexdigest()].status == (
            ReceiptStatus.REJECTED)
    finally:
        await client.stop()
        await runtime.stop()


async def _async(value: bool) -> bool:
    return value


async def test_pending_device_tokens_are_kept_and_count_once_approved(store) -> None:  # type: ignore[no-untyped-def]
    from cloud.services.ingest import IngestService

    clock_now = time.time
    ingest = IngestService(store, DEPLOYMENT, clock_now)
    dev = FakeDevice("pi-pending")
    await store.add_device(dev.device_id, dev.site_id, dev.public_key, dev.kid, 5000,
                           status="pending")
    topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
    for _ in range(3):
        out = await ingest.handle(topic, dev.next_token(generated_wh=100).envelope)
        assert out.receipt.status is ReceiptStatus.ACCEPTED  # held by the cloud: edge may drop it
    s = await store.stats()
    assert (s.accepted, s.held, s.generated_wh) == (0, 3, 0)

    await store.set_device_status(dev.device_id, "approved")
    s = await store.stats()
    assert (s.accepted, s.held, s.generated_wh) == (3, 0, 300)

    await store.set_device_status(dev.device_id, "revoked")
    out = await ingest.handle(topic, dev.next_token().envelope)
    assert out.receipt.status is ReceiptStatus.REJECTED
    assert out.receipt.reason == "device_not_approved"
    assert (await store.stats()).rejected_by_reason == {"device_not_approved": 1}
