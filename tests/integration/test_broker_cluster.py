"""The fleet through a real 3-node NATS cluster (MQTT, JetStream R3), one node SIGKILLed under
load: the edges and the aggregator fail over to the other nodes, the aggregator's persistent
session resumes there, and every minted record is in the ledger exactly once, none lost.

The cluster is nats-server 2.9.10 with the config of cloud/nats_config.py (the one the docs
give operators); the aggregator is the real runtime on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud.storage.tables import tokens
from mqttlink import MqttLink, Subscription, parse_brokers
from protocol import topics
from protocol.reasons import RejectReason
from simulators.fleet import make_fleet, run_fleet
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.waiting import until

pytestmark = [pytest.mark.fault, pytest.mark.broker, pytest.mark.slow, pytest.mark.postgres]

DEPLOYMENT = "gridmint-test"


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """Three nats-server nodes, serving MQTT on each, for one test."""
    cluster = NatsCluster(tmp_path)
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def test_a_persistent_session_resumes_on_another_node_with_what_was_queued(
    nats_cluster: NatsCluster,
) -> None:
    cluster = nats_cluster
    got: list[tuple[str, bytes]] = []

    async def handler(topic: str, payload: bytes) -> None:
        got.append((topic, payload))

    # Every character gridmint ids may hold except '.' (which nats-server 2.9 refuses, below).
    topic = topics.topic("site_1", "pi-7:a", topics.Channel.TOKENS)
    sub = MqttLink(
        parse_brokers(cluster.url(0)),
        f"resume-{time.monotonic_ns()}",
        clean_session=False,
        subscriptions=[Subscription(topics.subscription(topics.Channel.TOKENS), handler)],
    )
    pub = MqttLink(parse_brokers(cluster.url(2)), "resume-pub", clean_session=True)
    await sub.start()
    await pub.start()
    try:
        assert await sub.wait_ready(20)
        assert await pub.wait_ready(20)
        assert await pub.publish(topic, b"before", qos=1)
        await until(_has(got, 1), timeout_s=20)
        cluster.kill(0)  # the subscriber's node
        await until(_is_down(sub), timeout_s=10)
        # Published while the subscriber has no connection: its session (in the R3 streams)
        # keeps them until it is back, on another node.
        sent = [f"while away {i}".encode() for i in range(50)]
        for payload in sent:
            assert await pub.publish(topic, payload, qos=1, timeout_s=20)
        await until(_has(got, 1 + len(sent)), timeout_s=30)
        assert sub.address.port != cluster.nodes[0].mqtt_port
        assert {t for t, _ in got} == {topic}
        assert [p for _, p in got] == [b"before", *sent]  # in order, none twice
        # The killed node comes back with its store and serves the same sessions again.
        await cluster.restart(0)
        back = MqttLink(parse_brokers(cluster.nodes[0].mqtt_url), "back", clean_session=True)
        await back.start()
        try:
            assert await back.wait_ready(20)
            assert await back.publish(topic, b"via the restarted node", qos=1, timeout_s=20)
            await until(_has(got, 2 + len(sent)), timeout_s=20)
        finally:
            await back.stop()
    finally:
        await pub.stop()
        await sub.stop()


async def test_nats_2_9_refuses_a_dot_in_a_topic(nats_cluster: NatsCluster) -> None:
    # protocol/topics allows '.' in site and device ids; nats-server 2.9 closes the connection
    # of a client that publishes such a topic (2.10 maps it). A deployment on this broker keeps
    # '.' out of its ids (docs/deployment.md, "Broker cluster").
    link = MqttLink(parse_brokers(nats_cluster.nodes[1].mqtt_url), "dotted", clean_session=True)
    await link.start()
    try:
        assert await link.wait_ready(20)
        dotted = topics.topic("site.1", "pi-1", topics.Channel.TOKENS)
        assert not await link.publish(dotted, b"x", qos=1, timeout_s=3)
        assert link.disconnects >= 1
    finally:
        await link.stop()


def _has(got: list[tuple[str, bytes]], n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return len(got) >= n

    return check


def _is_down(link: MqttLink):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return not link.connected.is_set()

    return check


async def test_a_node_killed_under_load_loses_and_doubles_nothing(
    nats_cluster: NatsCluster, pg_url: str
) -> None:
    started = time.monotonic()
    cluster = nats_cluster
    # The aggregator starts on node 1 (and would move on to 2, then 3).
    runtime = aggregator_runtime(pg_url, cluster.url(0), DEPLOYMENT)
    await runtime.start(serve_http=False)
    try:
        assert runtime.store is not None
        assert runtime.mqtt is not None
        assert runtime.ingest is not None
        fleet = make_fleet(300, sites=100)
        for d in fleet:
            await runtime.store.add_device(
                d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w
            )
        assert await runtime.mqtt.wait_ready(20)
        link = runtime.mqtt.link
        assert link.address.port == cluster.nodes[0].mqtt_port

        # 6 publishing connections: two start on each node (connection c on node c mod 3).
        fleet_run = asyncio.create_task(
            run_fleet(
                fleet,
                cluster.url(0),
                intervals=4,
                deployment=DEPLOYMENT.encode(),
                connections=6,
                window=50,
                resend_after_s=5.0,
                timeout_s=90.0,
            )
        )
        minted = len(fleet) * 4
        counters = runtime.ingest.counters

        async def a_quarter_stored() -> bool:
            if fleet_run.done():
                fleet_run.result()  # raises what went wrong, or ends the wait if it finished
                return True
            return counters.accepted >= minted // 4

        await until(a_quarter_stored, timeout_s=60)
        assert not fleet_run.done(), "the fleet finished before the node could be killed"
        cluster.kill(0)  # the aggregator's node, and two of the fleet's connections

        report = await asyncio.wait_for(fleet_run, 120)

        # The aggregator moved to another node, and its session came along (it is in the R3
        # streams): the fleet's records were all answered through it.
        assert link.failovers >= 1
        assert link.address.port != cluster.nodes[0].mqtt_port
        assert (report.minted, report.lost) == (minted, 0)
        assert report.accepted == minted
        assert dict(report.rejected) == {}
        # Exactly once in the ledger: every minted token id, no other, none twice.
        async with runtime.store.engine.connect() as conn:
            ids = [r[0] for r in await conn.execute(select(tokens.c.token_id))]
            doubled = (
                await conn.execute(
                    select(tokens.c.token_id)
                    .group_by(tokens.c.token_id)
                    .having(func.count() > 1)
                )
            ).all()
        assert len(ids) == minted
        assert set(ids) == report.token_ids
        assert doubled == []
        # Ingest accepted each record once; everything it saw again (the fleet's resends, the
        # broker's redeliveries after the failover) was answered as a duplicate, nothing else.
        assert counters.accepted == minted
        assert set(counters.rejected) <= {RejectReason.REPLAYED.value}
        assert counters.storage_errors == 0
        print(
            f"\nbroker cluster: {minted} records, node n1 killed at >= {minted // 4} stored; "
            f"{report.resent} resent, {report.duplicates} duplicate receipts, "
            f"{counters.rejected[RejectReason.REPLAYED.value]} duplicates at ingest, "
            f"aggregator failovers {link.failovers}, {time.monotonic() - started:.1f} s"
        )
    finally:
        await runtime.stop()

