"""One device floods the aggregator through a real Mosquitto while honest devices publish as
usual: the flood's excess is refused as `rate_limited` (retryable, counted, nothing stored)
before any signature check, so the honest devices' receipts come about as fast as without the
flood (a generous ratio against a baseline measured in the same test: this checks fairness, it
is not a benchmark); every honest token is stored once, and once the flood stops the flooder's
tokens, sent again, are all accepted."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import pytest

from cloud.broker_config import AGGREGATOR_INFLIGHT, PACKET_OVERHEAD, input_limit_lines
from edge.minting import MintedToken
from mqttlink import BatchSubscription, BrokerAddress, MqttLink
from protocol import topics
from protocol.reasons import RejectReason
from protocol.receipts import Receipt
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEPLOYMENT = "gridmint-test"
RATE_PER_S, BURST = 10.0, 10  # the test's limit; honest devices send 5 tokens/s each
HONEST, PER_PHASE, GAP_S = 3, 10, 0.2
FLOOD_CHAIN = 40  # distinct tokens the flooder cycles through
MAX_MESSAGE = 4096
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Client:
    """One device's MQTT connection: publishes its tokens, collects the receipts."""

    dev: FakeDevice
    link: MqttLink = field(init=False)
    sent_at: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)

    def connect(self, url: str, max_inflight: int = 20) -> None:
        d = self.dev
        self.topic = topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS)
        self.link = MqttLink(
            BrokerAddress.parse(url),
            f"{d.device_id}-{time.monotonic_ns()}",
            clean_session=True,
            subscriptions=[
                BatchSubscription(
                    topics.topic(d.site_id, d.device_id, topics.Channel.RECEIPTS), self._receipts
                )
            ],
            max_inflight=max_inflight,
        )

    async def _receipts(self, messages: list[tuple[str, bytes]]) -> None:
        now = time.monotonic()
        for _topic, payload in messages:
            r = Receipt.decode(payload)
            self.receipts.append(r)
            if r.held_by_cloud and r.record_hash in self.sent_at:
                self.latency.setdefault(r.record_hash, now - self.sent_at[r.record_hash])

    async def send(self, envelope: bytes, digest: str) -> None:
        self.sent_at[digest] = time.monotonic()
        assert await self.link.publish(self.topic, envelope, qos=1)

    def held(self) -> set[str]:
        return {r.record_hash for r in self.receipts if r.held_by_cloud}


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto as cloud.broker_config sets it up: the aggregator's batch in flight, the
    packet size limit."""
    conf = [f"max_inflight_messages {AGGREGATOR_INFLIGHT}", *input_limit_lines(MAX_MESSAGE)]
    m = Mosquitto(tmp_path, extra_config="\n".join(conf) + "\n")
    m.start()
    try:
        yield m
    finally:
        m.stop()


async def test_a_flooding_device_is_rate_limited_and_the_others_are_not_delayed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    mosquitto = broker
    runtime = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        mosquitto.url,
        DEPLOYMENT,
        ingest_device_rate_per_s=RATE_PER_S,
        ingest_device_burst=BURST,
    )
    await runtime.start(serve_http=False)
    assert runtime.store is not None and runtime.mqtt is not None and runtime.ingest is not None
    store, counters = runtime.store, runtime.ingest.counters
    honest = [Client(FakeDevice(f"pi-honest-{i}")) for i in range(HONEST)]
    flooder = Client(FakeDevice("pi-flood"))
    flooder.dev.next_start -= 100 * flooder.dev.interval_s  # its whole chain lies in the past
    chain = [flooder.dev.next_token() for _ in range(FLOOD_CHAIN)]
    for c in [*honest, flooder]:
        d = c.dev
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
        c.connect(mosquitto.url)
    for c in honest:
        await c.link.start()
    try:
        assert await runtime.mqtt.wait_ready(10)
        for c in honest:
            assert await c.link.wait_ready(10)

        async def honest_phase() -> list[float]:
            async def one(c: Client) -> list[str]:
                digests = []
                for _ in range(PER_PHASE):
                    t = c.dev.next_token()
                    digests.append(t.record_hash.hex())
                    await c.send(t.envelope, digests[-1])
                    await asyncio.sleep(GAP_S)
                return digests

            sent = await asyncio.gather(*(one(c) for c in honest))

            async def all_held() -> bool:
                return all(set(s) <= c.held() for c, s in zip(honest, sent, strict=True))

            await until(all_held, 30)
            return [c.latency[d] for c, s in zip(honest, sent, strict=True) for d in s]

        baseline = await honest_phase()

        # The flood, from its own process: the flooder's chain over and over, as fast as the
        # broker acknowledges, until the honest devices' second phase is over.
        envelopes = tmp_path / "flood.cbor"
        envelopes.write_bytes(cbor2.dumps([t.envelope for t in chain]))
        d = flooder.dev
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.helpers.flood",
            mosquitto.url,
            d.site_id,
            d.device_id,
            str(envelopes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"flooding"

            async def limited() -> bool:
                return counters.rejected[RejectReason.RATE_LIMITED] >= 500

            await until(limited, 20)
            under_flood = await honest_phase()
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        flood_sent = int(report["sent"])

        # Every message the flooder sent got exactly one outcome (none dropped silently).
        total = HONEST * PER_PHASE * 2 + flood_sent

        async def all_judged() -> bool:
            return counters.accepted + sum(counters.rejected.values()) >= total

        await until(all_judged, 30)
        base, flood_p95 = p95(baseline), p95(under_flood)
        print(
            f"\nflood: {flood_sent} sent, {counters.rejected[RejectReason.RATE_LIMITED]} "
            f"rate limited; honest receipt p95 {base * 1000:.0f} ms without, "
            f"{flood_p95 * 1000:.0f} ms under flood"
        )
        assert counters.accepted + sum(counters.rejected.values()) == total
        assert flood_p95 <= 5 * base + 0.25, (base, flood_p95)
        # Its refusals were answered with retryable receipts up to its rate limit's worth (the
        # rest acknowledged unanswered: the edge resends those after its resend delay as well).
        answered = report["receipts"]["rate_limited"]
        assert 0 < answered < counters.rejected[RejectReason.RATE_LIMITED]
        assert report["retry"] == [True]  # every rate_limited receipt says "send it again"
        # Nothing of a rate-limited message is stored: no rejection rows for them.
        assert "rate_limited" not in {r.reason for r in await store.list_rejections(100_000)}
        for c in honest:  # every honest token stored exactly once
            rows = await store.list_tokens(device_id=c.dev.device_id, limit=1000)
            assert sorted(r.seq for r in rows) == list(range(1, 2 * PER_PHASE + 1))
        assert not any(r.reason == "rate_limited" for c in honest for r in c.receipts)

        # The flood is over: the flooder resends its chain in order, as its outbox would after
        # the retryable receipts, and every token is held, each stored once.
        await flooder.link.start()
        assert await flooder.link.wait_ready(10)

        def missing() -> list[MintedToken]:
            return [t for t in chain if t.record_hash.hex() not in flooder.held()]

        for _round in range(10):
            if not missing():
                break
            for t in missing():
                await flooder.send(t.envelope, t.record_hash.hex())
            await asyncio.sleep(BURST / RATE_PER_S)  # the edge's resend delay, scaled down

        async def flooder_held() -> bool:
            return not missing()

        await until(flooder_held, 10)
        rows = await store.list_tokens(device_id="pi-flood", limit=1000)
        assert sorted(r.seq for r in rows) == list(range(1, FLOOD_CHAIN + 1))
    finally:
        for c in [*honest, flooder]:
            await c.link.stop()  # (stopping a link never started is harmless)
        await runtime.stop()


async def test_an_oversized_message_is_refused_by_ingest_or_cut_off_by_the_broker(
    broker: Mosquitto, tmp_path: Path
) -> None:
    runtime = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        broker.url,
        DEPLOYMENT,
        max_message_bytes=MAX_MESSAGE,
    )
    await runtime.start(serve_http=False)
    assert runtime.store is not None and runtime.mqtt is not None and runtime.ingest is not None
    counters = runtime.ingest.counters
    c = Client(FakeDevice("pi-big"))
    c.connect(broker.url)
    await c.link.start()
    try:
        assert await runtime.mqtt.wait_ready(10) and await c.link.wait_ready(10)
        # Over the ingest limit but inside the packet limit: refused by ingest, and counted.
        await c.send(b"x" * (MAX_MESSAGE + 1), "big")

        async def too_large() -> bool:
            return counters.rejected[RejectReason.TOO_LARGE] == 1

        await until(too_large, 10)
        # the receipt travels back through the broker after the count: wait for it too
        await until(lambda: len(c.receipts) >= 1, 10)
        assert [r.reason for r in c.receipts] == ["too_large"]
        # A packet over the broker's limit: the broker drops the client before anything is
        # delivered (no PUBACK), and ingest never sees it.
        ok = await c.link.publish(c.topic, b"x" * (MAX_MESSAGE + PACKET_OVERHEAD + 1), timeout_s=2)
        assert not ok
        assert counters.accepted + sum(counters.rejected.values()) == 1
    finally:
        await c.link.stop()
        await runtime.stop()
