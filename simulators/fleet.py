"""A fleet of edge identities in one process: for ingest benchmarks and fault tests.

Owns: N simulated devices, each with its own Ed25519 key and record chain, minted by the edge's
own minting code (so the records are what real Pis send); their publishing over a few shared MQTT
connections (device i on connection i mod C, each connection with a window of unacknowledged
publishes, so every device's records stay in order). Given a broker cluster's failover list,
connection c starts on entry c mod N of it (so the devices spread over the nodes) and moves on
to the others when its node is lost; the cloud's receipts, read on one
subscription; and the reconciliation: every record minted must come back accepted (or as a
duplicate of one accepted), none twice, none lost. Records that get no receipt are published
again after `resend_after_s`, as the edge's outbox does.

Time is accelerated: each device mints `intervals` consecutive 5-minute intervals ending before
now, and they are published as fast as the broker takes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel, ClosedInterval
from edge.minting import ChainState, DeviceIdentity, MintedToken, mint
from mqttlink import BatchSubscription, MqttLink, parse_brokers, rotated
from protocol import cose, topics
from protocol.receipts import Receipt, ReceiptStatus
from protocol.record import TimeQuality

INTERVAL_S = 300


@dataclass
class FleetDevice:
    """One simulated Pi: its identity, key and chain."""

    device_id: str
    site_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    chain: ChainState = field(default_factory=ChainState)
    capacity_w: int = 5000
    generated_total_wh: int = 1_000_000

    @property
    def public_key(self) -> bytes:
        """Raw Ed25519 public key (what the cloud registers)."""
        return cose.public_bytes(self.key.public_key())

    @property
    def kid(self) -> bytes:
        """Key id."""
        return cose.key_id(self.public_key)

    def mint(self, interval_start: int, generated_wh: int, deployment: bytes) -> MintedToken:
        """Sign this device's record of one interval and move its chain on."""
        self.generated_total_wh += generated_wh
        closed = ClosedInterval(
            interval_start=interval_start,
            interval_s=INTERVAL_S,
            energy_wh={Channel.GENERATED: generated_wh},
            totals_wh={Channel.GENERATED: self.generated_total_wh},
            reading_ts=interval_start + INTERVAL_S + 1,
            flags=(),
            estimated=False,
        )
        token = mint(
            closed,
            self.chain,
            DeviceIdentity(self.device_id, "fleet-sim", "gridmint-fleet/1", "", "pv", 5000),
            self.key,
            deployment,
            TimeQuality.SYNCHRONIZED,
            ("ntp", 2),
        )
        self.chain = token.next_chain
        return token


@dataclass
class FleetReport:
    """What happened to every record the fleet minted."""

    devices: int
    minted: int
    published: int = 0
    resent: int = 0
    accepted: int = 0  # distinct records the cloud holds (accepted or duplicate of accepted)
    receipts: int = 0
    # Receipts that said "already stored": a resend, or the broker delivering a message again.
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    mint_s: float = 0.0
    seconds: float = 0.0  # first publish to the last record held by the cloud
    token_ids: set[str] = field(default_factory=set)  # every record minted, to reconcile with
    @property
    def lost(self) -> int:
        """Minted records the cloud does not hold."""
        return self.minted - self.accepted

    @property
    def rate(self) -> float:
        """Records held per second, first publish to last receipt."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def make_fleet(count: int, sites: int | None = None, prefix: str = "fleet") -> list[FleetDevice]:
    """`count` devices over `sites` sites (one device per site by default)."""
    sites = sites or count
    return [
        FleetDevice(f"{prefix}-{i:06d}", f"{prefix}-site-{i % sites:06d}") for i in range(count)
    ]


def first_interval(intervals: int, now: float | None = None) -> int:
    """The start of the first of `intervals` whole intervals that end before `now`."""
    t = int(time.time() if now is None else now)
    return t - t % INTERVAL_S - intervals * INTERVAL_S


async def run_fleet(
    devices: list[FleetDevice],
    broker_url: str,
    *,
    intervals: int,
    deployment: bytes,
    connections: int = 4,
    window: int = 100,
    resend_after_s: float = 30.0,
    timeout_s: float = 600.0,
    progress: Callable[[FleetReport], None] | None = None,
) -> FleetReport:
    """Mint `intervals` records per device, publish them all, and wait for every receipt."""
    started = time.perf_counter()
    first = first_interval(intervals)
    # Interleaved by interval, so every device's chain is published in order on its connection.
    plan: list[tuple[int, str, MintedToken]] = []
    for k in range(intervals):
        for i, d in enumerate(devices):
            token = d.mint(first + k * INTERVAL_S, 100 + (i + k) % 300, deployment)
            plan.append(
                (
                    i % connections,
                    topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS),
                    token,
                )
            )
    report = FleetReport(
        len(devices),
        len(plan),
        mint_s=time.perf_counter() - started,
        token_ids={t.token_id for _, _, t in plan},
    )
    waiting = {t.record_hash.hex(): (c, topic, t.envelope) for c, topic, t in plan}
    held = asyncio.Event()

    async def on_receipts(messages: list[tuple[str, bytes]]) -> None:
        for _topic, payload in messages:
            try:
                r = Receipt.decode(payload)
            except ValueError:
                continue
            report.receipts += 1
            if r.status is ReceiptStatus.DUPLICATE:
                report.duplicates += 1
            if r.held_by_cloud:
                if waiting.pop(r.record_hash, None) is not None:
                    report.accepted += 1
            elif not r.retry and r.record_hash in waiting:
                report.rejected[r.reason] += 1
                waiting.pop(r.record_hash)
        if not waiting:
            held.set()

    addresses = parse_brokers(broker_url)
    stamp = time.monotonic_ns()
    # Receipts come on one clean session: if its node is lost, the receipts sent meanwhile are
    # lost with it and the records are published again after `resend_after_s`, answered as
    # duplicates (what an edge's outbox does).
    receiver = MqttLink(
        rotated(addresses, connections),
        f"fleet-receipts-{stamp}",
        clean_session=True,
        subscriptions=[
            BatchSubscription(topics.subscription(topics.Channel.RECEIPTS), on_receipts)
        ],
    )
    links = [
        MqttLink(
            rotated(addresses, c), f"fleet-{stamp}-{c}", clean_session=True, max_inflight=window
        )
        for c in range(connections)
    ]
    await receiver.start()
    for link in links:
        await link.start()
    try:
        if not await receiver.wait_ready(30) or not all(
            [await link.wait_ready(30) for link in links]
        ):
            raise ConnectionError(f"the fleet could not connect to {broker_url}")
        t0 = time.perf_counter()

        async def publish(c: int, items: list[tuple[str, bytes]]) -> int:
            link, sent = links[c], 0
            for k in range(0, len(items), window):
                chunk = items[k : k + window]
                acked = await asyncio.gather(*(link.publish(t, p, qos=1) for t, p in chunk))
                sent += sum(acked)
            return sent

        async def publish_all(items: list[tuple[int, str, bytes]]) -> int:
            per: list[list[tuple[str, bytes]]] = [[] for _ in links]
            for c, topic, payload in items:
                per[c].append((topic, payload))
            return sum(await asyncio.gather(*(publish(c, x) for c, x in enumerate(per))))

        report.published = await publish_all([(c, topic, t.envelope) for c, topic, t in plan])
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(held.wait(), resend_after_s)
            except TimeoutError:
                again = sorted(waiting.values(), key=lambda x: x[0])
                report.resent += await publish_all(again)
            if progress is not None:
                progress(report)
        report.seconds = time.perf_counter() - t0
        return report
    finally:
        for link in links:
            await link.stop()
        await receiver.stop()
