"""A flooding device for the limits tests, in its own process (its publishing must not share the
aggregator's event loop, or the test would measure the GIL, not the aggregator's fairness).

    python -m tests.helpers.flood BROKER_URL SITE DEVICE ENVELOPES_FILE

publishes the envelopes of ENVELOPES_FILE (a CBOR list of byte strings) on the device's tokens
topic round and round at QoS 1, `WINDOW` unacknowledged at a time, as fast as the broker
acknowledges, until a line arrives on stdin; then it waits until the receipts stop coming and
prints one JSON line: {"sent": N, "receipts": {reason: count}, "retry": [bool, ...]}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cbor2

from mqttlink import BatchSubscription, BrokerAddress, MqttLink
from protocol import topics
from protocol.receipts import Receipt

WINDOW = int(os.environ.get("FLOOD_WINDOW", "20"))


async def main(url: str, site: str, device: str, envelopes_file: str) -> None:
    envelopes: list[bytes] = cbor2.loads(Path(envelopes_file).read_bytes())
    reasons: Counter[str] = Counter()
    retry: set[bool] = set()

    async def on_receipts(messages: list[tuple[str, bytes]]) -> None:
        for _topic, payload in messages:
            r = Receipt.decode(payload)
            reasons[r.reason or r.status.value] += 1
            if r.reason == "rate_limited":
                retry.add(r.retry)

    link = MqttLink(
        BrokerAddress.parse(url),
        f"flood-{device}-{time.monotonic_ns()}",
        clean_session=True,
        subscriptions=[
            BatchSubscription(topics.topic(site, device, topics.Channel.RECEIPTS), on_receipts)
        ],
        max_inflight=WINDOW,
    )
    await link.start()
    assert await link.wait_ready(10)
    topic = topics.topic(site, device, topics.Channel.TOKENS)
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("flooding", flush=True)
    sent, k = 0, 0
    while not stop.done():
        window = [envelopes[(k + i) % len(envelopes)] for i in range(WINDOW)]
        k += WINDOW
        oks = await asyncio.gather(*(link.publish(topic, e, qos=1) for e in window))
        sent += sum(oks)
    # Rate-limited messages past the device's receipt budget are not answered: wait until the
    # receipts stop coming (or all came).
    seen = -1
    while seen != sum(reasons.values()) < sent:
        seen = sum(reasons.values())
        await asyncio.sleep(0.5)
    await link.stop()
    print(json.dumps({"sent": sent, "receipts": dict(reasons), "retry": sorted(retry)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
