"""Ingest service: verify incoming records, store them or their rejections, answer with receipts.

Owns: the order of checks, the per-device rate limit and the counters. Every message ends in
exactly one of: stored as a token, refused as a replay of a stored token, stored as a rejection
with its reason, refused unread because its device is over its rate limit (retryable
`rate_limited`: nothing stored, counted in memory, the device sends it again later), or, when
storage fails, nothing stored and `Outcome.stored` False so the message is not acknowledged.
Messages are handled in batches (one is a batch of one): a pure pass decodes each, one storage
read fetches what the batch's checks need, the rules run in arrival order with the chain heads the
batch itself advances, and one transaction stores every token and rejection of the batch.
Decoding goes through protocol.verify's one classifier; who may sign is cloud.domain.devices'
rule. Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cloud.domain.devices import signing_refusal
from cloud.domain.ingest_rules import (
    IngestLimits,
    Refusal,
    check_chain,
    check_interval,
    check_plausible,
    check_storable,
)
from cloud.domain.rate_limit import BucketLimit, RateLimiter
from cloud.storage.store import (
    ChainHead,
    ChainTail,
    DuplicateTokenError,
    IngestKey,
    IngestLookup,
    NewRejection,
    Store,
    TokenRow,
)
from protocol import cose, topics, verify
from protocol import record as record_mod
from protocol.reasons import RejectReason
from protocol.receipts import Receipt, ReceiptStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class IngestCounters:
    """In-memory counters since start (the database holds the durable ones)."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Messages answered `storage_error` and left unacknowledged: nothing about them could be
    # stored, so they are counted here only, and the broker will deliver them again.
    storage_errors: int = 0

    def count(self, outcome: Outcome) -> None:
        """Count one message by what its outcome says."""
        if not outcome.stored:
            self.storage_errors += 1
        elif outcome.receipt.reason:
            self.rejected[outcome.receipt.reason] += 1
        else:
            self.accepted += 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message, and where to send the receipt (if anywhere).

    `stored` is False when storage failed: neither the token nor a rejection was written, so the
    message must not be acknowledged to the broker. A `rate_limited` refusal is acknowledged
    (`stored` True) though nothing of it is written: its retryable receipt tells the device to
    keep the token and send it again later, so the broker need not hold it.
    """

    receipt: Receipt
    reply_topic: str | None
    device_id: str | None
    stored: bool = True


@dataclass(slots=True)
class _Message:
    """One message on its way through a batch: decoded, then judged."""

    topic: str
    payload: bytes
    received: float
    digest: str
    reply: str | None = None
    device_id: str | None = None
    envelope: cose.Sign1 | None = None
    rec: record_mod.IntervalRecord | None = None
    record_hash: bytes = b""
    refusal: Refusal | None = None
    status: ReceiptStatus = ReceiptStatus.REJECTED
    row: TokenRow | None = None
    limited: bool = False  # refused by the rate limit: not judged, not stored


class _StorageFailure(Exception):
    """A storage call failed (database down, disk full, lost connection)."""


async def _stored(call: Awaitable[T]) -> T:
    """Await a storage call; any failure becomes a _StorageFailure (pure checks never raise)."""
    try:
        return await call
    except DuplicateTokenError:
        raise
    except Exception as exc:
        raise _StorageFailure(f"{type(exc).__name__}: {exc}") from exc


class IngestService:
    """Verifies and stores records. One instance per aggregator process."""

    def __init__(
        self,
        store: Store,
        deployment: bytes,
        now: Callable[[], float],
        limits: IngestLimits | None = None,
        max_message_bytes: int = 65536,
        device_rate: BucketLimit | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.deployment = deployment
        self.now = now
        self.limits = limits or IngestLimits()
        self.max_message_bytes = max_message_bytes
        # One bucket per device id (of the topic), in this process: with ingest workers each
        # device always reaches the same worker (cloud.ingest_workers), so its bucket is there.
        self.device_rate = device_rate
        on = device_rate is not None and device_rate.enabled
        self.rate_limiter = RateLimiter(device_rate) if device_rate and on else None
        # The refusals' receipts have the same budget: a flooding device gets at most its rate
        # limit's worth of `rate_limited` receipts; past that a refusal is counted and
        # acknowledged without a receipt (each receipt costs the aggregator's MQTT link as much
        # as the message), and the edge resends an unanswered token after `resend_after_s`,
        # exactly as it resends one answered `rate_limited`.
        self.receipt_limiter = RateLimiter(device_rate) if device_rate and on else None
        self.monotonic = monotonic
        self.counters = IngestCounters()

    async def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message from a tokens topic (a batch of one; see `handle_batch`)."""
        return (await self.handle_batch([(topic, payload)]))[0]

    async def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Process messages from tokens topics, in arrival order; one outcome per message.

        Each ends in one of: the token stored (accepted), a replay of a stored token (duplicate),
        a rejection stored with its reason, or, when storage fails, a retryable `storage_error`
        receipt with `stored=False` and nothing of the batch written. Records of one device may
        follow each other in a batch: each is checked against the chain head the one before it
        made.

        A device over its rate limit has its excess refused here, before any decoding, storage
        read or signature check (`rate_limited`, retryable, nothing stored), so a flooding device
        costs the batch little and the other devices' records are judged and stored at once.
        """
        return await self._handle([self._decode(topic, payload) for topic, payload in messages])

    async def _handle(self, batch: list[_Message]) -> list[Outcome]:
        limited = [m for m in batch if m.limited]
        if limited:
            by_device = Counter(m.device_id for m in limited)
            log.info(
                "rate limited %d message(s): %s",
                len(limited),
                ", ".join(f"{d} x{n}" for d, n in by_device.most_common(5)),
            )
        try:
            decoded = [m for m in batch if m.rec is not None and m.refusal is None]
            if decoded:
                keys = [_lookup_key(m) for m in decoded]
                lookup = await _stored(self.store.ingest_lookup(keys))
                self._judge(decoded, lookup)
            rows = [m.row for m in batch if m.row is not None]
            refused = [self._rejection(m) for m in batch if m.refusal is not None and not m.limited]
            if rows or refused:  # a batch the rate limit refused whole writes nothing
                await _stored(self.store.store_ingested(rows, refused))
        except DuplicateTokenError:
            # Another worker stored one of these slots since the read: nothing of the batch was
            # written. One by one, each message is judged against what is stored now (a message
            # the rate limit refused stays refused, and no message is charged to it twice).
            if len(batch) > 1:
                return [
                    (
                        await self._handle(
                            [m if m.limited else self._decode(m.topic, m.payload, False)]
                        )
                    )[0]
                    for m in batch
                ]
            outcome = await self._lost_race(batch[0])
            self.counters.count(outcome)
            return [outcome]
        except _StorageFailure as exc:
            log.error("storage failed for %d message(s), left for redelivery: %s", len(batch), exc)
            outcomes = [
                self._outcome(m) if m.limited else storage_error_outcome(m.topic, m.payload)
                for m in batch
            ]
        else:
            outcomes = [self._outcome(m) for m in batch]
        for o in outcomes:
            self.counters.count(o)
        return outcomes

    def _decode(self, topic: str, payload: bytes, charge: bool = True) -> _Message:
        """The pure pass: topic, rate limit (when `charge`), size and the record's decoding (no
        storage, no signature)."""
        record_hash = cose.record_hash(payload)  # SHA-256 of the bytes; the receipt's digest
        m = _Message(topic, payload, self.now(), record_hash.hex(), record_hash=record_hash)
        try:
            t = topics.parse(topic)
        except topics.TopicError as exc:
            m.refusal = Refusal(RejectReason.TOPIC_MISMATCH, str(exc))
            return m
        m.device_id = t.device_id
        m.reply = topics.topic(t.site_id, t.device_id, topics.Channel.RECEIPTS)
        if charge and self.rate_limiter is not None:
            wait_s = self.rate_limiter.take(t.device_id, self.monotonic())
            if wait_s > 0:
                m.refusal = Refusal(
                    RejectReason.RATE_LIMITED,
                    f"device {t.device_id!r} is over its rate limit; send again in {wait_s:.1f} s",
                )
                m.limited = True
                if self.receipt_limiter is not None and self.receipt_limiter.take(
                    t.device_id, self.monotonic()
                ):
                    m.reply = None
                return m
        if len(payload) > self.max_message_bytes:
            m.refusal = Refusal(
                RejectReason.TOO_LARGE,
                f"message is {len(payload)} bytes, over the limit of {self.max_message_bytes}",
            )
            return m
        try:
            envelope, rec = verify.classify(payload)
        except verify.RecordRejected as exc:
            m.refusal = Refusal(exc.reason, exc.detail)
            return m
        if rec.device_id != t.device_id:
            m.refusal = Refusal(
                RejectReason.TOPIC_MISMATCH,
                f"record of device {rec.device_id!r} published on the topic of {t.device_id!r}",
            )
            return m
        m.envelope, m.rec = envelope, rec
        return m

    def _judge(self, decoded: list[_Message], lookup: IngestLookup) -> None:
        """Signature and rules for each decoded message, in arrival order.

        What the batch accepts moves its device's chain head and fills its slots, so the next
        record of that device in the same batch is judged as if the earlier one were stored.
        """
        heads = dict(lookup.heads)
        tails = dict(lookup.tails)
        stored = set(lookup.stored_hashes)
        taken_seqs = set(lookup.taken_seqs)
        taken_intervals = set(lookup.taken_intervals)
        for m in decoded:
            envelope, rec = m.envelope, m.rec
            assert envelope is not None
            assert rec is not None
            device = lookup.devices.get(rec.device_id)
            key = lookup.keys.get(envelope.kid)
            # Pending devices' tokens are verified and kept; they count once approved.
            m.refusal = signing_refusal(
                rec.device_id,
                None if device is None else device.status,
                envelope.kid,
                key,
                rec.interval_end,
            )
            if m.refusal is not None:
                continue
            assert device is not None
            assert key is not None
            try:
                cose.verify(envelope, key.public_key, self.deployment)
            except cose.SignatureError as exc:
                m.refusal = Refusal(RejectReason.BAD_SIGNATURE, str(exc))
                continue
            if m.record_hash in stored:
                m.refusal = Refusal(
                    RejectReason.REPLAYED,
                    f"record seq {rec.seq} of {rec.device_id!r} is already stored",
                )
                m.status = ReceiptStatus.DUPLICATE
                continue
            head = heads.get(rec.device_id)
            tail = tails.get(rec.device_id)
            below_tail = tail is not None and rec.seq < tail.seq
            conflict = (rec.device_id, rec.seq) in taken_seqs or (
                rec.device_id,
                rec.interval_start,
            ) in taken_intervals
            m.refusal = (
                check_storable(rec)
                or check_interval(rec, m.received, self.limits)
                or check_chain(
                    rec,
                    head.seq if head else None,
                    head.record_hash if head else None,
                    conflict,
                    None if tail is None else (tail.seq, tail.prev_hash),
                    m.record_hash,
                )
                or check_plausible(
                    rec,
                    device.capacity_w,
                    self.limits,
                    head.interval_start if head and not below_tail else None,
                )
            )
            if m.refusal is not None:
                continue
            m.status = ReceiptStatus.ACCEPTED
            m.row = _token_row(rec, m.record_hash, m.payload, m.received)
            stored.add(m.record_hash)
            if below_tail:
                tails[rec.device_id] = ChainTail(rec.seq, rec.prev_hash)
            else:
                heads[rec.device_id] = ChainHead(rec.seq, m.record_hash, rec.interval_start)
                if tail is None:
                    tails[rec.device_id] = ChainTail(rec.seq, rec.prev_hash)
            taken_seqs.add((rec.device_id, rec.seq))
            taken_intervals.add((rec.device_id, rec.interval_start))

    async def _lost_race(self, m: _Message) -> Outcome:
        """A lone token whose insert hit a stored one: a replay, or a conflicting record."""
        try:
            if await _stored(self.store.has_record(m.record_hash)):
                m.refusal = Refusal(RejectReason.REPLAYED, "stored concurrently")
                m.status = ReceiptStatus.DUPLICATE
            else:
                m.refusal = Refusal(RejectReason.EQUIVOCATION, "conflicting record stored")
                m.status = ReceiptStatus.REJECTED
            m.row = None
            await _stored(self.store.store_ingested([], [self._rejection(m)]))
        except _StorageFailure as exc:
            log.error("storage failed for a message on %s, left for redelivery: %s", m.topic, exc)
            return storage_error_outcome(m.topic, m.payload)
        return self._outcome(m)

    def _rejection(self, m: _Message) -> NewRejection:
        assert m.refusal is not None
        return NewRejection(
            m.topic,
            m.payload,
            m.refusal.reason.value,
            m.refusal.detail,
            int(m.received * 1000),
            m.device_id,
        )

    def _outcome(self, m: _Message) -> Outcome:
        """The receipt of a stored message."""
        if m.refusal is None:
            return Outcome(Receipt(m.digest, ReceiptStatus.ACCEPTED), m.reply, m.device_id)
        if not m.limited:  # rate-limited ones are logged a batch at a time
            log.info("refused record on %s: %s (%s)", m.topic, m.refusal.reason, m.refusal.detail)
        receipt = Receipt(m.digest, m.status, m.refusal.reason.value, m.refusal.reason.retryable)
        return Outcome(receipt, m.reply, m.device_id)


def storage_error_outcome(topic: str, payload: bytes) -> Outcome:
    """The outcome of a message that could not be stored: a retryable `storage_error` receipt,
    and `stored=False`, so the message is not acknowledged and the broker delivers it again."""
    reply: str | None = None
    device_id: str | None = None
    try:
        t = topics.parse(topic)
    except topics.TopicError:
        pass
    else:
        device_id = t.device_id
        reply = topics.topic(t.site_id, t.device_id, topics.Channel.RECEIPTS)
    reason = RejectReason.STORAGE_ERROR
    receipt = Receipt(
        cose.record_hash(payload).hex(),
        ReceiptStatus.REJECTED,
        reason.value,
        reason.retryable,
    )
    return Outcome(receipt, reply, device_id, stored=False)


def _lookup_key(m: _Message) -> IngestKey:
    assert m.envelope is not None
    assert m.rec is not None
    return IngestKey(
        m.rec.device_id, m.envelope.kid, m.record_hash, m.rec.seq, m.rec.interval_start
    )


def _token_row(
    rec: record_mod.IntervalRecord, record_hash: bytes, envelope: bytes, received: float
) -> TokenRow:
    e = rec.energy
    return TokenRow(
        token_id=rec.token_id,
        device_id=rec.device_id,
        seq=rec.seq,
        boot=rec.boot,
        interval_start=rec.interval_start,
        interval_s=rec.interval_s,
        generated_wh=e.generated_wh,
        imported_wh=e.imported_wh,
        exported_wh=e.exported_wh,
        charged_wh=e.charged_wh,
        discharged_wh=e.discharged_wh,
        status=rec.status,
        quality=int(rec.quality),
        record_hash=record_hash,
        prev_hash=rec.prev_hash,
        envelope=envelope,
        received_ms=int(received * 1000),
        soc_permille=rec.soc_permille,
        tech=rec.tech[0],
        zone=rec.zone,
    )
