"""Ingest over worker processes partitioned by device, through a real Mosquitto into PostgreSQL:
every device's chain arrives whole and in order whichever worker judges it, and a worker killed
with SIGKILL under load costs nothing: its batch is not acknowledged, the broker delivers it
again, a new worker takes over, and every token is stored exactly once.

The publisher sends each message exactly once and never resends, so a message acknowledged
before it was stored would be lost for good."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from cloud.ingest_workers import partition_of
from mqttlink import BrokerAddress, MqttLink
from protocol import topics
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.reconcile import reconcile
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import at_least, until

pytestmark = [pytest.mark.fault, pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

DEPLOYMENT = b"gridmint-test"


async def test_two_workers_store_every_chain_once_even_when_one_is_killed(
    mosquitto: Mosquitto, pg_url: str
) -> None:
    runtime = aggregator_runtime(pg_url, mosquitto.url, DEPLOYMENT.decode(), ingest_workers=2)
    await runtime.start(serve_http=False)
    assert runtime.store is not None
    assert runtime.mqtt is not None
    assert runtime.workers is not None
    store, workers = runtime.store, runtime.workers
    devices = [FakeDevice(f"pi-w{i}", site_id=f"site-w{i % 3}") for i in range(8)]
    # The devices spread over both workers (the hash is stable, so this holds every run).
    token_topics = [topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS) for d in devices]
    assert {partition_of(t, 2) for t in token_topics} == {0, 1}
    for d in devices:
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    publisher = MqttLink(
        BrokerAddress.parse(mosquitto.url), "one-shot-publisher", clean_session=True
    )
    await publisher.start()
    per_device = 30
    minted: dict[str, bytes] = {}  # token id -> record hash of every token published
    try:
        assert await publisher.wait_ready(10)
        assert await runtime.mqtt.wait_ready(10)

        async def publish_rounds(rounds: int) -> None:
            for _ in range(rounds):
                for d, topic in zip(devices, token_topics, strict=True):
                    token = d.next_token()
                    minted[token.token_id] = token.record_hash
                    assert await publisher.publish(topic, token.envelope, qos=1)

        async def accepted() -> int:
            return (await store.stats()).accepted

        await publish_rounds(5)
        await until(lambda: at_least(accepted, 5 * len(devices)))

        # Kill a worker while the rest flows: publish on, and kill it mid-stream.
        victim = workers.pids()[0]
        flow = asyncio.create_task(publish_rounds(15))
        await until(lambda: at_least(accepted, 10 * len(devices)))
        os.kill(victim, signal.SIGKILL)
        await flow
        await publish_rounds(per_device - 20)  # some of these are the dead worker's devices'
        await until(lambda: at_least(accepted, per_device * len(devices)))

        assert (await store.stats()).accepted == per_device * len(devices)
        for d in devices:
            rows = await store.list_tokens(device_id=d.device_id, limit=1000)
            assert sorted(r.seq for r in rows) == list(range(1, per_device + 1)), d.device_id
        # Anything refused was a redelivered copy of a stored record, never a broken chain.
        refused = {r.reason for r in await store.list_rejections(10_000)}
        assert refused <= {"replayed"}, refused
        assert victim not in workers.pids()
        assert workers.restarts >= 1
        # The same reconciliation as the fault suite's (no outboxes here: the publisher's own
        # list of tokens). Its counter check allows what a kill between a worker's commit and
        # its reply does: those tokens are stored, answered storage_error, and come back as
        # copies refused "replayed".
        report = await reconcile(pg_url, minted=minted, counters=[workers.counters])
        print(f"\n[fault] ingest worker SIGKILLed under load: {report.line()}")
    finally:
        await publisher.stop()
        await runtime.stop()
