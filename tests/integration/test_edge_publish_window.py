"""The edge drains a backlog a window at a time through a real Mosquitto: tokens go out in
sequence order, up to `publish_window` unacknowledged, and each window's PUBACKs are written in
one outbox transaction (one fsync per window, not per token); receipts are taken in batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import AccountantState
from edge.agent import EdgeAgent
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import topics
from protocol.clock import SystemClock
from protocol.receipts import Receipt, ReceiptStatus
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto

pytestmark = [pytest.mark.broker]


async def _until(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_backlog_drains_in_windows_in_order_with_one_commit_per_window(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = EdgeSettings(
        device_id="pi-window",
        site_id="site-window",
        key_file=tmp_path / "k",
        state_db=tmp_path / "edge.sqlite",
        broker_url=mosquitto.url,
        publish_window=20,
        meters=[],
    )
    ob = await Outbox.open(settings.state_db)
    windows: list[int] = []
    mark_sent_many = ob.mark_sent_many

    async def counting(record_hashes: list[bytes], now_ms: int) -> None:
        windows.append(len(record_hashes))
        await mark_sent_many(record_hashes, now_ms)

    ob.mark_sent_many = counting  # type: ignore[method-assign]
    dev = FakeDevice("pi-window", site_id="site-window")
    minted = [dev.next_token() for _ in range(60)]
    for token in minted:
        await ob.commit_mint(token, AccountantState(), 0)

    agent = EdgeAgent(settings, Ed25519PrivateKey.generate(), SystemClock(), [], ob)
    seen: list[bytes] = []

    async def on_token(_topic: str, payload: bytes) -> None:
        seen.append(payload)

    cloud = MqttLink(
        BrokerAddress.parse(mosquitto.url),
        "window-cloud",
        subscriptions=[Subscription(agent.token_topic, on_token)],
    )
    await cloud.start()
    await agent.link.start()
    stop = asyncio.Event()
    publisher: asyncio.Task[None] | None = None
    try:
        assert await cloud.wait_ready(10)
        assert await agent.link.wait_ready(10)
        publisher = asyncio.create_task(agent._publish_loop(stop))

        async def all_seen() -> bool:
            return len(seen) >= len(minted)

        await _until(all_seen)
        await _until(lambda: _nothing_due(ob))
        assert seen == [t.envelope for t in minted]  # sequence order on the wire
        assert windows == [20, 20, 20]  # three transactions for 60 PUBACKs
        counts = await ob.counters()
        assert counts["delivered"] == 60

        receipts = topics.topic("site-window", "pi-window", topics.Channel.RECEIPTS)
        for t in minted:
            receipt = Receipt(t.record_hash.hex(), ReceiptStatus.ACCEPTED)
            assert cloud.publish_nowait(receipts, receipt.encode(), qos=1)

        async def all_confirmed() -> bool:
            return (await ob.counters())["confirmed"] == len(minted)

        await _until(all_confirmed)
        counts = await ob.counters()
        assert (counts["waiting"], counts["delivered"]) == (0, 60)
    finally:
        stop.set()
        agent._wake.set()
        if publisher is not None:
            await asyncio.wait_for(publisher, 5.0)
        await agent.link.stop()
        await cloud.stop()
        await ob.close()


async def _nothing_due(ob: Outbox) -> bool:
    return not await ob.due(now_ms=0, resend_after_ms=0)
