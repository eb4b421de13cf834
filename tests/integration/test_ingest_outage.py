"""A database outage while tokens flow: nothing is acknowledged before it is stored.

The publisher here sends every message exactly once and never resends (unlike a real edge agent,
whose resend timer would hide a lost message). The broker forgets a message once the aggregator
has acknowledged it, so if the aggregator acknowledged anything before its token or rejection
was written, that message would be gone for good. Every token stored exactly once after an
outage that provably hit storage (storage_error receipts, redelivery reconnects) shows that no
message was acknowledged early.

The outage is real: the test's own PostgreSQL database stops accepting connections and its open
connections are terminated, while the server keeps serving every other test.
"""

from __future__ import annotations

import pytest

from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import topics
from protocol.reasons import RejectReason
from protocol.receipts import Receipt
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto, set_database_open
from tests.helpers.waiting import at_least, until

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

DEPLOYMENT = b"gridmint-test"


async def test_database_outage_loses_nothing_and_stores_everything_once(
    mosquitto: Mosquitto, pg_url: str
) -> None:
    runtime = aggregator_runtime(pg_url, mosquitto.url, DEPLOYMENT.decode())
    await runtime.start(serve_http=False)
    assert runtime.store is not None
    assert runtime.mqtt is not None
    assert runtime.ingest is not None
    store, ingest, agg_link = runtime.store, runtime.ingest, runtime.mqtt.link
    devices = [FakeDevice(f"pi-out-{i}", site_id=f"site-out-{i}") for i in range(2)]
    for d in devices:
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    receipts: list[Receipt] = []

    async def on_receipt(_t: str, payload: bytes) -> None:
        receipts.append(Receipt.decode(payload))

    publisher = MqttLink(
        BrokerAddress.parse(mosquitto.url),
        "one-shot-publisher",
        clean_session=True,
        subscriptions=[
            Subscription(topics.topic(d.site_id, d.device_id, topics.Channel.RECEIPTS), on_receipt)
            for d in devices
        ],
    )
    await publisher.start()
    outage = False
    try:
        assert await publisher.wait_ready(10)
        assert await runtime.mqtt.wait_ready(10)

        async def publish_round(n: int) -> None:
            for _ in range(n):
                for d in devices:
                    topic = topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS)
                    assert await publisher.publish(topic, d.next_token().envelope, qos=1)

        async def stored_tokens() -> int:
            return (await store.stats()).accepted

        await publish_round(5)
        await until(lambda: _eq(stored_tokens, 10))
        connects_before = agg_link.connects

        await set_database_open(pg_url, False)
        outage = True
        await publish_round(10)  # published once, during the outage
        bad_topic = topics.topic(devices[0].site_id, devices[0].device_id, topics.Channel.TOKENS)
        assert await publisher.publish(bad_topic, b"not a COSE record", qos=1)
        # The aggregator met the outage, answered storage_error, and went for redelivery more
        # than once (back-off), without storing or acknowledging anything.
        await until(lambda: at_least(lambda: agg_link.handler_failures, 3))
        assert ingest.counters.storage_errors >= 3
        assert agg_link.connects > connects_before

        await set_database_open(pg_url, True)
        outage = False
        await until(lambda: _eq(stored_tokens, 30))
        await until(lambda: at_least(lambda: ingest.counters.rejected["malformed"], 1))

        stats = await store.stats()
        assert stats.accepted == 30
        for d in devices:
            rows = await store.list_tokens(device_id=d.device_id, limit=100)
            assert sorted(r.seq for r in rows) == list(range(1, 16)), d.device_id
        rejections = await store.list_rejections()
        malformed = [r for r in rejections if r.reason == "malformed"]
        assert malformed, "the bad message's rejection was stored after the outage"
        assert all(r.reason == "malformed" for r in rejections)  # nothing else was refused
        storage_receipts = [r for r in receipts if r.reason == RejectReason.STORAGE_ERROR]
        assert storage_receipts, "the device was told to keep its record"
        assert all(r.retry for r in storage_receipts)
    finally:
        if outage:
            await set_database_open(pg_url, True)
        await publisher.stop()
        await runtime.stop()


async def _eq(value, expected: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return await value() == expected
    except Exception:  # the store itself is down: not yet
        return False
