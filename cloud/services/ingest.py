"""Ingest service: verify an incoming record, store it or its rejection, and answer with a receipt.

Owns: the order of checks and the counters. Every message ends in exactly one of: stored as a
token, refused as a replay of a stored token, stored as a rejection with its reason, or, when
storage fails, nothing stored and `Outcome.stored` False so the message is not acknowledged.
Decoding goes through protocol.verify's one classifier; who may sign is cloud.domain.devices'
rule. Nothing here raises on bad input.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
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
from cloud.storage.store import DuplicateTokenError, Store, TokenRow
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message, and where to send the receipt (if anywhere).

    `stored` is False when storage failed: neither the token nor a rejection was written, so the
    message must not be acknowledged to the broker.
    """

    receipt: Receipt
    reply_topic: str | None
    device_id: str | None
    stored: bool = True


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
    ):
        self.store = store
        self.deployment = deployment
        self.now = now
        self.limits = limits or IngestLimits()
        self.max_message_bytes = max_message_bytes
        self.counters = IngestCounters()

    async def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message from a tokens topic.

        Ends in one of: the token stored (accepted), a replay of a stored token (duplicate), a
        rejection stored with its reason, or, when storage fails, a retryable `storage_error`
        receipt with `stored=False` and nothing written.
        """
        received = self.now()
        digest = hashlib.sha256(payload).hexdigest()
        reply: str | None = None
        device_id: str | None = None
        try:
            try:
                t = topics.parse(topic)
            except topics.TopicError as exc:
                refusal: Refusal | None = Refusal(RejectReason.TOPIC_MISMATCH, str(exc))
                status = ReceiptStatus.REJECTED
            else:
                device_id = t.device_id
                reply = topics.topic(t.site_id, t.device_id, topics.Channel.RECEIPTS)
                refusal, status = await self._check_and_store(device_id, payload, received)
            if refusal is None:
                self.counters.accepted += 1
                return Outcome(Receipt(digest, ReceiptStatus.ACCEPTED), reply, device_id)
            await _stored(
                self.store.add_rejection(
                    topic,
                    payload,
                    refusal.reason.value,
                    refusal.detail,
                    int(self.now() * 1000),
                    device_id,
                )
            )
        except _StorageFailure as exc:
            self.counters.storage_errors += 1
            log.error("storage failed for a message on %s, left for redelivery: %s", topic, exc)
            reason = RejectReason.STORAGE_ERROR
            receipt = Receipt(digest, ReceiptStatus.REJECTED, reason.value, reason.retryable)
            return Outcome(receipt, reply, device_id, stored=False)
        self.counters.rejected[refusal.reason.value] += 1
        log.info("refused record on %s: %s (%s)", topic, refusal.reason, refusal.detail)
        receipt = Receipt(digest, status, refusal.reason.value, refusal.reason.retryable)
        return Outcome(receipt, reply, device_id)

    async def _check_and_store(
        self, topic_device: str, payload: bytes, received: float
    ) -> tuple[Refusal | None, ReceiptStatus]:
        rejected = ReceiptStatus.REJECTED
        if len(payload) > self.max_message_bytes:
            return Refusal(
                RejectReason.TOO_LARGE,
                f"message is {len(payload)} bytes, over the limit of {self.max_message_bytes}",
            ), rejected
        try:
            envelope, rec = verify.classify(payload)
        except verify.RecordRejected as exc:
            return Refusal(exc.reason, exc.detail), rejected
        if rec.device_id != topic_device:
            return Refusal(
                RejectReason.TOPIC_MISMATCH,
                f"record of device {rec.device_id!r} published on the topic of {topic_device!r}",
            ), rejected
        record_hash = cose.record_hash(payload)
        ctx = await _stored(
            self.store.ingest_context(
                rec.device_id, envelope.kid, record_hash, rec.seq, rec.interval_start
            )
        )
        device, key = ctx.device, ctx.key
        # Pending devices' tokens are verified and kept; they count once approved.
        refusal = signing_refusal(
            rec.device_id,
            None if device is None else device.status,
            envelope.kid,
            key,
            rec.interval_end,
        )
        if refusal is not None:
            return refusal, rejected
        assert device is not None
        assert key is not None
        try:
            cose.verify(envelope, key.public_key, self.deployment)
        except cose.SignatureError as exc:
            return Refusal(RejectReason.BAD_SIGNATURE, str(exc)), rejected
        if ctx.already_stored:
            return Refusal(
                RejectReason.REPLAYED,
                f"record seq {rec.seq} of {rec.device_id!r} is already stored",
            ), ReceiptStatus.DUPLICATE
        head = ctx.head
        refusal = (
            check_storable(rec)
            or check_interval(rec, received, self.limits)
            or check_chain(
                rec, head.seq if head else None, head.record_hash if head else None, ctx.conflict
            )
            or check_plausible(rec, device.capacity_w, self.limits)
        )
        if refusal is not None:
            return refusal, rejected
        try:
            await _stored(self.store.insert_token(_token_row(rec, record_hash, payload, received)))
        except DuplicateTokenError:
            # Lost a race with another worker that stored the same slot first.
            if await _stored(self.store.has_record(record_hash)):
                return Refusal(
                    RejectReason.REPLAYED, "stored concurrently"
                ), ReceiptStatus.DUPLICATE
            return Refusal(RejectReason.EQUIVOCATION, "conflicting record stored"), rejected
        return None, ReceiptStatus.ACCEPTED


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
    )
