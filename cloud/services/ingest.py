"""Ingest service: verify an incoming record, store it or its rejection, and answer with a receipt.

Owns: the order of checks and the counters. Every message ends in exactly one of: stored as a
token, refused as a replay of a stored token, or stored as a rejection with its reason. Nothing
here raises on bad input.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.domain.ingest_rules import (
    IngestLimits,
    Refusal,
    check_chain,
    check_interval,
    check_key_window,
    check_plausible,
    check_storable,
)
from cloud.storage.store import DuplicateTokenError, Store, TokenRow
from protocol import cose, topics
from protocol import record as record_mod
from protocol.reasons import RejectReason
from protocol.receipts import Receipt, ReceiptStatus

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestCounters:
    """In-memory counters since start (the database holds the durable ones)."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message, and where to send the receipt (if anywhere)."""

    receipt: Receipt
    reply_topic: str | None
    device_id: str | None


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
        """Process one message from a tokens topic."""
        received = self.now()
        digest = hashlib.sha256(payload).hexdigest()
        reply: str | None = None
        topic_device: str | None = None
        try:
            t = topics.parse(topic)
            topic_device = t.device_id
            reply = topics.topic(t.site_id, t.device_id, topics.Channel.RECEIPTS)
        except topics.TopicError as exc:
            return await self._refuse(
                topic, payload, digest, Refusal(RejectReason.TOPIC_MISMATCH, str(exc)), None, None
            )
        refusal, status = await self._check_and_store(topic_device, payload, digest, received)
        if refusal is None:
            self.counters.accepted += 1
            return Outcome(Receipt(digest, ReceiptStatus.ACCEPTED), reply, topic_device)
        return await self._refuse(topic, payload, digest, refusal, reply, topic_device, status)

    async def _refuse(
        self,
        topic: str,
        payload: bytes,
        digest: str,
        refusal: Refusal,
        reply: str | None,
        device_id: str | None,
        status: ReceiptStatus = ReceiptStatus.REJECTED,
    ) -> Outcome:
        self.counters.rejected[refusal.reason.value] += 1
        try:
            await self.store.add_rejection(
                topic,
                payload,
                refusal.reason.value,
                refusal.detail,
                int(self.now() * 1000),
                device_id,
            )
        except Exception as exc:  # the rejection log must never take ingest down
            log.error("could not store a rejection (%s): %s", refusal.reason, exc)
        log.info("refused record on %s: %s (%s)", topic, refusal.reason, refusal.detail)
        receipt = Receipt(digest, status, refusal.reason.value, refusal.reason.retryable)
        return Outcome(receipt, reply, device_id)

    async def _check_and_store(
        self, topic_device: str, payload: bytes, digest: str, received: float
    ) -> tuple[Refusal | None, ReceiptStatus]:
        rejected = ReceiptStatus.REJECTED
        if len(payload) > self.max_message_bytes:
            return Refusal(
                RejectReason.TOO_LARGE,
                f"message is {len(payload)} bytes, over the limit of {self.max_message_bytes}",
            ), rejected
        try:
            envelope = cose.parse(payload)
        except cose.EnvelopeError as exc:
            reason = RejectReason.NON_CANONICAL if exc.non_canonical else RejectReason.MALFORMED
            if len(payload) > cose.MAX_RECORD_BYTES:
                reason = RejectReason.TOO_LARGE
            return Refusal(reason, str(exc)), rejected
        try:
            rec = record_mod.decode(envelope.payload)
        except record_mod.RecordFormatError as exc:
            if exc.non_canonical:
                reason = RejectReason.NON_CANONICAL
            elif exc.version:
                reason = RejectReason.UNSUPPORTED_VERSION
            else:
                reason = RejectReason.BAD_FIELD
            return Refusal(reason, str(exc)), rejected
        if rec.device_id != topic_device:
            return Refusal(
                RejectReason.TOPIC_MISMATCH,
                f"record of device {rec.device_id!r} published on the topic of {topic_device!r}",
            ), rejected
        record_hash = cose.record_hash(payload)
        ctx = await self.store.ingest_context(
            rec.device_id, envelope.kid, record_hash, rec.seq, rec.interval_start
        )
        device = ctx.device
        if device is None:
            return Refusal(
                RejectReason.UNKNOWN_DEVICE, f"device {rec.device_id!r} is not registered"
            ), rejected
        if device.status not in ("approved", "pending"):
            # Pending devices' tokens are verified and kept; they count once approved.
            return Refusal(
                RejectReason.DEVICE_NOT_APPROVED,
                f"device {rec.device_id!r} is {device.status}",
            ), rejected
        key = ctx.key
        if key is None or key.device_id != rec.device_id:
            return Refusal(
                RejectReason.UNKNOWN_KEY,
                f"key id {envelope.kid.hex()} is not a registered key of {rec.device_id!r}",
            ), rejected
        try:
            cose.verify(envelope, key.public_key, self.deployment)
        except cose.SignatureError as exc:
            return Refusal(RejectReason.BAD_SIGNATURE, str(exc)), rejected
        if key.revoked_ms is not None:
            return Refusal(
                RejectReason.KEY_REVOKED,
                f"key {envelope.kid.hex()} of {rec.device_id!r} was revoked at "
                f"{key.revoked_ms // 1000} (Unix s)",
            ), rejected
        refusal = check_key_window(rec, key.valid_until)
        if refusal is not None:
            return refusal, rejected
        if ctx.already_stored:
            return Refusal(
                RejectReason.REPLAYED,
                f"record seq {rec.seq} of {rec.device_id!r} is already stored",
            ), ReceiptStatus.DUPLICATE
        for refusal in (
            check_storable(rec),
            check_interval(rec, received, self.limits),
        ):
            if refusal is not None:
                return refusal, rejected
        head = ctx.head
        refusal = check_chain(
            rec, head.seq if head else None, head.record_hash if head else None, ctx.conflict
        ) or check_plausible(rec, device.capacity_w, self.limits)
        if refusal is not None:
            return refusal, rejected
        e = rec.energy
        row = TokenRow(
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
            envelope=payload,
            received_ms=int(received * 1000),
        )
        try:
            await self.store.insert_token(row)
        except DuplicateTokenError:
            # Lost a race with another worker that stored the same slot first.
            if await self.store.has_record(record_hash):
                return Refusal(
                    RejectReason.REPLAYED, "stored concurrently"
                ), ReceiptStatus.DUPLICATE
            return Refusal(RejectReason.EQUIVOCATION, "conflicting record stored"), rejected
        except Exception as exc:  # database down: tell the device to keep the record
            log.error("storing token %s failed: %s", rec.token_id, exc)
            return Refusal(
                RejectReason.STORAGE_ERROR, "the aggregator could not store it"
            ), rejected
        _ = digest
        return None, ReceiptStatus.ACCEPTED
