"""mqttlink against a real Mosquitto: PUBACK-awaiting publish, ordered handling, reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mqttlink import (
    BatchSubscription,
    BrokerAddress,
    BrokerUrlError,
    MqttLink,
    Subscription,
    Will,
    parse_brokers,
    rotated,
)
from tests.helpers.services import Mosquitto, free_port

pytestmark = [pytest.mark.broker]


async def _wait(predicate, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_broker_url_parsing() -> None:
    assert BrokerAddress.parse("mqtt://h:1234") == BrokerAddress("h", 1234, False)
    assert BrokerAddress.parse("mqtts://h").port == 8883
    for bad in ("http://h", "h:1883", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(BrokerUrlError):
            BrokerAddress.parse(bad)


def test_broker_url_lists() -> None:
    a, b = BrokerAddress("a", 1883), BrokerAddress("b", 1884)
    assert parse_brokers("mqtt://a") == (a,)
    assert parse_brokers("mqtt://a:1883, mqtt://b:1884") == (a, b)
    assert parse_brokers(["mqtt://b:1884", "mqtt://a"]) == (b, a)
    assert rotated((a, b), 1) == (b, a)
    assert rotated((a, b), 4) == (a, b)
    for bad, why in [
        ("mqtt://a,", "empty entry"),
        ("mqtt://a,mqtts://b", "mixes"),
        ("mqtt://a,mqtt://a:1883", "twice"),
        ("mqtt://a,http://b", "must look like"),
    ]:
        with pytest.raises(BrokerUrlError, match=why):
            parse_brokers(bad)
    with pytest.raises(BrokerUrlError, match="parse_brokers"):
        BrokerAddress.parse("mqtt://a,mqtt://b")
    with pytest.raises(ValueError, match="mix"):
        MqttLink([a, BrokerAddress("b", 8883, tls=True)], "mixed")


async def test_a_link_whose_first_broker_is_down_connects_to_the_next(
    mosquitto: Mosquitto,
) -> None:
    nothing_there = BrokerAddress("127.0.0.1", free_port())
    link = MqttLink([nothing_there, *parse_brokers(mosquitto.url)], "failover-first")
    await link.start()
    try:
        assert await link.wait_ready(15)
        assert link.address == BrokerAddress.parse(mosquitto.url)
        assert link.failovers >= 1
        assert await link.publish("t/x", b"via the second", qos=1)
    finally:
        await link.stop()


async def test_a_link_moves_on_when_its_broker_dies_and_comes_back_to_it_later(
    tmp_path: Path,
) -> None:
    first, second = Mosquitto(tmp_path), Mosquitto(tmp_path)
    first.start()
    second.start()
    got: list[bytes] = []

    async def handler(_topic: str, payload: bytes) -> None:
        got.append(payload)

    # The subscriber listens on the second broker only; the publisher starts on the first.
    sub = MqttLink(parse_brokers(second.url), "watch-second", subscriptions=[
        Subscription("t/#", handler)
    ])
    pub = MqttLink(parse_brokers(f"{first.url},{second.url}"), "mover", reconnect_max_s=1)
    await sub.start()
    await pub.start()
    try:
        assert await sub.wait_ready(10)
        assert await pub.wait_ready(10)
        assert pub.address.port == first.port
        first.kill()
        # connects counts CONNACKs (paho's thread); `connected` follows on the loop, in order.
        await _wait(lambda: pub.connects == 2 and pub.connected.is_set(), 20)
        assert pub.address.port == second.port
        assert await pub.publish("t/x", b"after the failover", qos=1)
        await _wait(lambda: got == [b"after the failover"])
        # The list wraps around: when the second dies too, the link goes back to the first.
        first.start()
        second.kill()
        await _wait(lambda: pub.connects == 3 and pub.connected.is_set(), 20)
        assert pub.address.port == first.port
        assert pub.failovers >= 2
    finally:
        await pub.stop()
        await sub.stop()
        first.stop()
        second.stop()


async def test_messages_arrive_in_order_and_publish_waits_for_puback(mosquitto: Mosquitto) -> None:
    got: list[bytes] = []

    async def handler(_topic: str, payload: bytes) -> None:
        await asyncio.sleep(0.001)  # a slow handler must not reorder messages
        got.append(payload)

    addr = BrokerAddress.parse(mosquitto.url)
    sub = MqttLink(addr, "sub", subscriptions=[Subscription("t/#", handler)])
    pub = MqttLink(addr, "pub")
    await sub.start()
    await pub.start()
    try:
        assert await sub.wait_ready(10)
        assert await pub.wait_ready(10)
        for i in range(200):
            assert await pub.publish("t/x", str(i).encode(), qos=1)
        await _wait(lambda: len(got) == 200)
        assert got == [str(i).encode() for i in range(200)]
    finally:
        await pub.stop()
        await sub.stop()


async def test_link_reconnects_after_the_broker_restarts(
    mosquitto: Mosquitto,
) -> None:
    statuses: list[bytes] = []

    async def on_status(_t: str, payload: bytes) -> None:
        statuses.append(payload)

    addr = BrokerAddress.parse(mosquitto.url)
    watcher = MqttLink(addr, "watcher", subscriptions=[Subscription("s", on_status)],
                       reconnect_max_s=2)
    dev = MqttLink(addr, "dev", will=Will("s", b"offline"), online=("s", b"online"),
                   reconnect_max_s=2)
    await watcher.start()
    assert await watcher.wait_ready(10)
    await dev.start()
    try:
        await _wait(lambda: b"online" in statuses)
        mosquitto.kill()
        await _wait(lambda: not dev.connected.is_set())
        assert not await dev.publish("x", b"while down")  # refused, not silently queued
        mosquitto.start()
        await _wait(lambda: dev.connected.is_set() and watcher.connected.is_set(), 20)
        assert await dev.publish("x", b"after restart", qos=1)
        assert dev.connects >= 2
    finally:
        await dev.stop()
        await watcher.stop()


async def test_batches_keep_arrival_order_and_are_acknowledged_only_after_the_handler(
    mosquitto: Mosquitto,
) -> None:
    batches: list[list[bytes]] = []
    fail_once = asyncio.Event()
    fail_once.set()

    async def handler(messages: list[tuple[str, bytes]]) -> None:
        await asyncio.sleep(0.01)  # a slow handler: messages queue up behind it
        if fail_once.is_set() and len(batches) >= 2:
            # Raising leaves the whole batch unacknowledged: the broker must bring it again.
            fail_once.clear()
            raise RuntimeError("storage is down")
        batches.append([p for _t, p in messages])

    addr = BrokerAddress.parse(mosquitto.url)
    sub = MqttLink(
        addr,
        "batch-sub",
        subscriptions=[BatchSubscription("b/#", handler, max_batch=50)],
        redeliver_min_s=0.1,
    )
    pub = MqttLink(addr, "batch-pub")
    await sub.start()
    await pub.start()
    sent = [str(i).encode() for i in range(400)]
    try:
        assert await sub.wait_ready(10)
        assert await pub.wait_ready(10)
        for payload in sent:
            assert pub.publish_nowait("b/x", payload, qos=1)
        await _wait(lambda: sum(len(b) for b in batches) >= len(sent), timeout_s=30)
        handled = [p for b in batches for p in b]
        assert handled == sent  # the failed batch came back whole, in order, nothing twice
        assert sub.handler_failures == 1
        assert max(len(b) for b in batches) <= 50
        assert any(len(b) > 1 for b in batches), "a busy handler gets more than one at a time"
    finally:
        await pub.stop()
        await sub.stop()


async def test_a_message_of_a_lost_connection_is_not_acknowledged_on_the_next_one(
    mosquitto: Mosquitto,
) -> None:
    """A handler still busy when the broker dies must not acknowledge its message on the new
    connection. Message ids start again with a new session (a broker restarted without
    persistence), so that PUBACK would acknowledge the new message that has the same id before
    its handler ran, and the broker would drop it even if its handler then fails: acknowledged
    without being stored, which is what the aggregator promises never happens."""
    busy = asyncio.Event()
    release = asyncio.Event()
    handled: list[bytes] = []
    failed: list[bytes] = []

    async def handler(_topic: str, payload: bytes) -> None:
        if payload == b"A":
            busy.set()
            await release.wait()  # still storing A while the broker dies and comes back
        elif not failed:
            failed.append(payload)
            raise RuntimeError("storage is down")  # B is not stored: it must come again
        handled.append(payload)

    addr = BrokerAddress.parse(mosquitto.url)
    sub = MqttLink(
        addr, "epoch-sub", subscriptions=[Subscription("e/#", handler)], redeliver_min_s=0.1
    )
    pub = MqttLink(addr, "epoch-pub", clean_session=True)
    await sub.start()
    await pub.start()
    try:
        assert await sub.wait_ready(10)
        assert await pub.wait_ready(10)
        assert await pub.publish("e/x", b"A", qos=1)  # message id 1 of the subscriber's session
        await asyncio.wait_for(busy.wait(), 10)
        mosquitto.kill()  # no persistence: the sessions are gone
        await _wait(lambda: not sub.connected.is_set() and not pub.connected.is_set())
        mosquitto.start()
        await _wait(lambda: sub.ready.is_set() and pub.connected.is_set(), 20)
        assert await pub.publish("e/x", b"B", qos=1)  # message id 1 of the new session
        await _wait(lambda: sub._inbox.qsize() >= 1)  # B waits behind A's handler
        release.set()
        await _wait(lambda: b"B" in handled, 20)
        assert failed == [b"B"]
    finally:
        await pub.stop()
        await sub.stop()


async def _pipelined_run(
    mosquitto: Mosquitto, name: str, fail_after: int | None
) -> tuple[list[list[bytes]], list[bytes], MqttLink, int]:
    """400 messages through a BatchSubscription with pipeline=2 and a slow handler; the
    handler raises once after `fail_after` good calls. Returns the calls' payloads, what was
    sent, the link and the most calls seen in flight at once."""
    calls: list[list[bytes]] = []
    in_call, most = 0, 0
    failed = fail_after is None

    async def handler(messages: list[tuple[str, bytes]]) -> None:
        nonlocal in_call, most, failed
        in_call += 1
        most = max(most, in_call)
        try:
            await asyncio.sleep(0.01)  # slow: the next batch is gathered and started meanwhile
            if not failed and len(calls) >= (fail_after or 0):
                failed = True
                raise RuntimeError("storage is down")
            calls.append([p for _t, p in messages])
        finally:
            in_call -= 1

    addr = BrokerAddress.parse(mosquitto.url)
    sub = MqttLink(
        addr,
        f"{name}-sub",
        subscriptions=[BatchSubscription("p/#", handler, max_batch=20, pipeline=2)],
        redeliver_min_s=0.1,
    )
    pub = MqttLink(addr, f"{name}-pub")
    await sub.start()
    await pub.start()
    sent = [str(i).encode() for i in range(400)]
    try:
        assert await sub.wait_ready(10)
        assert await pub.wait_ready(10)
        for payload in sent:
            assert pub.publish_nowait("p/x", payload, qos=1)
        await _wait(lambda: {p for c in calls for p in c} >= set(sent), timeout_s=30)
    finally:
        await pub.stop()
        await sub.stop()
    return calls, sent, sub, most


async def test_a_pipelined_subscription_overlaps_calls_and_keeps_order(
    mosquitto: Mosquitto,
) -> None:
    calls, sent, sub, most = await _pipelined_run(mosquitto, "pipe", fail_after=None)
    assert most == 2, "the next batch's call starts before the last one returned, never more"
    assert [p for c in calls for p in c] == sent  # in order, nothing twice
    assert sub.handler_failures == 0


async def test_a_failed_call_in_a_pipeline_leaves_its_batch_and_the_next_for_redelivery(
    mosquitto: Mosquitto,
) -> None:
    calls, sent, sub, _most = await _pipelined_run(mosquitto, "pipe-fail", fail_after=3)
    handled = [p for c in calls for p in c]
    # The failed batch was not acknowledged, nor the one in flight behind it (it may have been
    # handled: it comes again, as a copy): nothing is lost, and only those come twice.
    assert set(handled) == set(sent)
    assert sub.handler_failures == 1
    assert len(handled) - len(set(handled)) <= 20
