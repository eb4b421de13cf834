"""Ingest in batches on real storage (SQLite and PostgreSQL): one read, rules in arrival order
with the batch's own chain heads, one transaction; a conflicting write since the read sends the
batch round message by message."""

from __future__ import annotations

import time

from cloud.services.ingest import IngestService
from cloud.storage.store import IngestKey, IngestLookup, Store
from protocol import topics
from protocol.receipts import ReceiptStatus
from tests.helpers.records import FakeDevice

DEPLOYMENT = b"gridmint-test"


def _topic(dev: FakeDevice) -> str:
    return topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)


async def _register(store: Store, *devs: FakeDevice) -> None:
    for d in devs:
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)


async def test_a_batch_chains_records_of_one_device_and_refuses_each_bad_one(store) -> None:  # type: ignore[no-untyped-def]
    a, b, stranger = FakeDevice("pi-a"), FakeDevice("pi-b"), FakeDevice("pi-x")
    await _register(store, a, b)
    ingest = IngestService(store, DEPLOYMENT, time.time)
    a1, a2, a3 = (a.next_token(generated_wh=100 + i).envelope for i in range(3))
    b1 = b.next_token(generated_wh=50).envelope
    forged = bytearray(b.next_token(generated_wh=60).envelope)
    forged[-1] ^= 1  # the signature's last byte
    messages = [
        (_topic(a), a1),
        (_topic(b), b1),
        (_topic(a), a2),
        (_topic(a), a2),  # the same bytes again in the same batch: a replay
        (_topic(a), b"not a COSE record"),
        (_topic(b), bytes(forged)),
        (_topic(stranger), stranger.next_token().envelope),
        (_topic(a), a3),
    ]
    outcomes = await ingest.handle_batch(messages)

    assert [(o.receipt.status, o.receipt.reason) for o in outcomes] == [
        (ReceiptStatus.ACCEPTED, ""),
        (ReceiptStatus.ACCEPTED, ""),
        (ReceiptStatus.ACCEPTED, ""),
        (ReceiptStatus.DUPLICATE, "replayed"),
        (ReceiptStatus.REJECTED, "malformed"),
        (ReceiptStatus.REJECTED, "bad_signature"),
        (ReceiptStatus.REJECTED, "unknown_device"),
        (ReceiptStatus.ACCEPTED, ""),
    ]
    assert all(o.stored for o in outcomes)
    assert [r.seq for r in await store.list_tokens(device_id="pi-a")] == [3, 2, 1]
    assert [r.seq for r in await store.list_tokens(device_id="pi-b")] == [1]
    stored = sorted(r.reason for r in await store.list_rejections())
    assert stored == ["bad_signature", "malformed", "replayed", "unknown_device"]
    assert ingest.counters.accepted == 4
    assert sum(ingest.counters.rejected.values()) == 4

    # The next batch continues each chain from what the last one stored.
    a4 = a.next_token().envelope
    again = await ingest.handle_batch([(_topic(a), a4), (_topic(a), a1)])
    assert [o.receipt.status for o in again] == [ReceiptStatus.ACCEPTED, ReceiptStatus.DUPLICATE]


async def test_a_gap_inside_a_batch_is_refused_and_the_record_after_it_too(store) -> None:  # type: ignore[no-untyped-def]
    a = FakeDevice("pi-gap")
    await _register(store, a)
    ingest = IngestService(store, DEPLOYMENT, time.time)
    first, _lost, third, fourth = (a.next_token().envelope for _ in range(4))
    outcomes = await ingest.handle_batch(
        [(_topic(a), first), (_topic(a), third), (_topic(a), fourth)]
    )
    assert [o.receipt.reason for o in outcomes] == ["", "sequence_gap", "sequence_gap"]
    assert [r.seq for r in await store.list_tokens(device_id="pi-gap")] == [1]


class _RacingStore(Store):
    """Real storage in which another worker stores one record right after the batch's read."""

    racing: tuple[IngestService, str, bytes] | None = None

    async def ingest_lookup(self, keys: list[IngestKey]) -> IngestLookup:
        lookup = await super().ingest_lookup(keys)
        if self.racing is not None:
            other, topic, payload = self.racing
            self.racing = None
            assert (await other.handle(topic, payload)).receipt.status is ReceiptStatus.ACCEPTED
        return lookup


async def test_a_batch_that_lost_a_race_is_judged_again_one_by_one(store) -> None:  # type: ignore[no-untyped-def]
    racing = _RacingStore(store.engine)
    a, b = FakeDevice("pi-race-a"), FakeDevice("pi-race-b")
    await _register(store, a, b)
    ours = IngestService(racing, DEPLOYMENT, time.time)
    theirs = IngestService(store, DEPLOYMENT, time.time)
    a1, b1, b2 = a.next_token().envelope, b.next_token().envelope, b.next_token().envelope
    racing.racing = (theirs, _topic(a), a1)

    outcomes = await ours.handle_batch([(_topic(b), b1), (_topic(a), a1), (_topic(b), b2)])

    # The transaction that would have stored a1 twice wrote nothing; one by one, b1 and b2 are
    # stored and a1 is a replay of what the other worker stored.
    assert [o.receipt.status for o in outcomes] == [
        ReceiptStatus.ACCEPTED,
        ReceiptStatus.DUPLICATE,
        ReceiptStatus.ACCEPTED,
    ]
    assert [r.seq for r in await store.list_tokens(device_id="pi-race-b")] == [2, 1]
    assert len(await store.list_tokens(device_id="pi-race-a")) == 1
    assert ours.counters.accepted == 2
    assert dict(ours.counters.rejected) == {"replayed": 1}


async def test_records_lost_before_the_anchor_are_taken_when_resent_in_chain_order(store) -> None:  # type: ignore[no-untyped-def]
    # A broker that restarted without its sessions dropped seq 1 and 2; seq 3 arrived first
    # and anchored the chain. The resends must be stored, not refused as equivocation, but only
    # as the exact records the chain names, from the anchor down.
    dev = FakeDevice("pi-lost")
    await _register(store, dev)
    ingest = IngestService(store, DEPLOYMENT, time.time)
    r1, r2, r3, r4 = (dev.next_token(generated_wh=100 + i) for i in range(4))
    impostor = FakeDevice("pi-lost", key=dev.key, next_start=r1.record.interval_start)
    other_seq2 = [impostor.next_token(generated_wh=7) for _ in range(2)][1]  # seq 2, other bytes

    async def judge(*tokens) -> list[tuple[ReceiptStatus, str]]:  # type: ignore[no-untyped-def]
        outcomes = await ingest.handle_batch([(_topic(dev), t.envelope) for t in tokens])
        return [(o.receipt.status, o.receipt.reason) for o in outcomes]

    assert await judge(r3) == [(ReceiptStatus.ACCEPTED, "")]
    assert await judge(r1, other_seq2) == [
        (ReceiptStatus.REJECTED, "sequence_gap"),  # retryable: seq 2 must come first
        (ReceiptStatus.REJECTED, "chain_broken"),  # not the record seq 3 follows
    ]
    # In one batch, in the order an outbox resends them: 2 links below 3, then 1 below 2.
    assert await judge(r2, r1, r4) == [(ReceiptStatus.ACCEPTED, "")] * 3
    assert sorted(t.seq for t in await store.list_tokens(device_id="pi-lost")) == [1, 2, 3, 4]
    assert await judge(r1) == [(ReceiptStatus.DUPLICATE, "replayed")]
