"""The golden invalid vectors (protocol/vectors/v1-invalid.json), published on a tokens topic
through a real Mosquitto, are each refused by the aggregator's ingest with the vector's reason:
in the receipt, in the stored rejection and in the counters.

The vectors' device is registered with the vectors' public key under their deployment id, so a
refusal can only come from the envelope itself, never from an unknown device or key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import cose, topics
from protocol import record as record_mod
from protocol.receipts import Receipt, ReceiptStatus
from tests.helpers.services import Mosquitto

pytestmark = [pytest.mark.broker]

VECTORS = Path(__file__).parents[2] / "protocol" / "vectors"
SITE = "site-vectors"


def _vectors() -> tuple[dict[str, object], list[dict[str, str]]]:
    valid = json.loads((VECTORS / "v1.json").read_text())
    invalid = json.loads((VECTORS / "v1-invalid.json").read_text())
    return valid, invalid["vectors"]


async def test_every_golden_invalid_vector_is_refused_with_its_reason(
    mosquitto: Mosquitto, db_url: str
) -> None:
    valid, invalid = _vectors()
    public_key = bytes.fromhex(str(valid["public_key_hex"]))
    # The bad-signature vectors decode to one device's records: they must reach the signature
    # check, which comes after that device and its key are found.
    signers = {
        record_mod.decode(cose.parse(bytes.fromhex(v["envelope_hex"])).payload).device_id
        for v in invalid
        if v["expect"] == "bad_signature"
    }
    assert len(signers) == 1
    (device_id,) = signers
    runtime = CloudRuntime(
        CloudSettings(
            database_url=db_url,
            broker_url=mosquitto.url,
            deployment=str(valid["aad"]),
            http_port=0,
            client_id=f"agg-{time.monotonic_ns()}",
        )
    )
    await runtime.start(serve_http=False)
    assert runtime.store is not None
    assert runtime.mqtt is not None
    assert runtime.ingest is not None
    await runtime.store.add_device(
        device_id, SITE, public_key, cose.key_id(public_key), capacity_w=20_000_000
    )
    receipts: dict[str, Receipt] = {}

    async def on_receipt(_t: str, payload: bytes) -> None:
        r = Receipt.decode(payload)
        receipts[r.record_hash] = r

    link = MqttLink(
        BrokerAddress.parse(mosquitto.url),
        "vector-publisher",
        clean_session=True,
        subscriptions=[
            Subscription(topics.topic(SITE, device_id, topics.Channel.RECEIPTS), on_receipt)
        ],
    )
    await link.start()
    try:
        assert await link.wait_ready(10)
        assert await runtime.mqtt.wait_ready(10)
        token_topic = topics.topic(SITE, device_id, topics.Channel.TOKENS)
        for v in invalid:
            assert await link.publish(token_topic, bytes.fromhex(v["envelope_hex"]), qos=1)
        expected = {
            hashlib.sha256(bytes.fromhex(v["envelope_hex"])).hexdigest(): v for v in invalid
        }
        deadline = time.monotonic() + 30
        while set(receipts) != set(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        missing = [expected[h]["name"] for h in set(expected) - set(receipts)]
        assert not missing, f"no receipt for {missing}"
        wrong = {
            v["name"]: (receipts[h].reason, v["expect"])
            for h, v in expected.items()
            if receipts[h].reason != v["expect"] or receipts[h].status != ReceiptStatus.REJECTED
        }
        assert wrong == {}, "vector: (refused as, expected)"
        assert not any(r.retry for r in receipts.values())  # none of these may be resent

        stored = await runtime.store.list_rejections(limit=1000)
        by_hash = {r.sha256.hex(): r.reason for r in stored}
        assert {h: v["expect"] for h, v in expected.items()} == by_hash
        assert runtime.ingest.counters.rejected == Counter(v["expect"] for v in invalid)
        assert (await runtime.store.stats()).accepted == 0
    finally:
        await link.stop()
        await runtime.stop()
