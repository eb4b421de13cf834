"""Ingest rules for signed interval records: pure checks, no I/O.

Owns: deciding, from a parsed record and what the aggregator already knows, whether the record
is accepted and, if not, the one reason why. The service (cloud.services.ingest) gathers the facts
and stores the outcome. See docs/tokens.md, "Ingest checks".
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.reasons import RejectReason
from protocol.record import IntervalRecord

MAX_SIGNED_BIGINT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Tolerances of the ingest checks."""

    future_skew_s: int = 120
    backfill_window_s: int = 7 * 24 * 3600
    capacity_margin: float = 1.1  # as FEA's CAPACITY_MARGIN: 10 % over rated power


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a record is refused."""

    reason: RejectReason
    detail: str


def check_storable(rec: IntervalRecord) -> Refusal | None:
    """Values must fit the database's signed 64-bit columns."""
    for name, v in (
        ("seq", rec.seq),
        ("boot", rec.boot),
        *zip(
            ("generated", "imported", "exported", "charged", "discharged"),
            rec.energy.as_list(),
            strict=True,
        ),
    ):
        if v > MAX_SIGNED_BIGINT:
            return Refusal(RejectReason.BAD_FIELD, f"{name} {v} is out of range")
    return None


def check_interval(rec: IntervalRecord, received_s: float, limits: IngestLimits) -> Refusal | None:
    """The interval must be aligned, already closed, and inside the backfill window."""
    if rec.interval_start % rec.interval_s:
        return Refusal(
            RejectReason.MISALIGNED_INTERVAL,
            f"interval start {rec.interval_start} is not a multiple of {rec.interval_s} s",
        )
    if rec.interval_end > received_s + limits.future_skew_s:
        return Refusal(
            RejectReason.FUTURE_INTERVAL,
            f"interval ends at {rec.interval_end}, after the receive time {int(received_s)}",
        )
    if rec.interval_start < received_s - limits.backfill_window_s:
        return Refusal(
            RejectReason.STALE_INTERVAL,
            f"interval start {rec.interval_start} is older than the backfill window",
        )
    return None


def check_chain(
    rec: IntervalRecord,
    head_seq: int | None,
    head_hash: bytes | None,
    conflict: bool,
    tail: tuple[int, bytes] | None = None,
    record_hash: bytes = b"",
) -> Refusal | None:
    """The record must extend the device's chain by exactly one, at its newest end or, for a
    record that arrives after the chain was anchored above it, at its oldest end.

    `conflict` says whether a different record is stored for the same seq or interval: signing two
    different records for one slot is equivocation, evidence of a faulty or dishonest device.
    `tail` is the oldest stored record's (seq, prev hash) and `record_hash` this record's hash.

    The first record heard anchors the chain. If an earlier one was lost on its way (a broker
    that restarted without its sessions drops what it holds for the aggregator) and the device
    resends it, it is accepted when it is exactly the record the anchor names as its
    predecessor; refusing it as equivocation would lose a genuine token for good.
    """
    if conflict:
        return Refusal(
            RejectReason.EQUIVOCATION,
            f"another record is already stored for seq {rec.seq} or interval {rec.interval_start}",
        )
    if head_seq is None or head_hash is None:
        return None  # the first record we hear of anchors the chain
    if tail is not None and rec.seq < tail[0]:
        tail_seq, tail_prev = tail
        if rec.seq < tail_seq - 1:
            return Refusal(
                RejectReason.SEQUENCE_GAP,
                f"seq {rec.seq} is older than the oldest stored seq {tail_seq} by more than "
                "one; waiting for the records in between",
            )
        if record_hash != tail_prev:
            return Refusal(
                RejectReason.CHAIN_BROKEN,
                f"seq {rec.seq} is not the record the stored seq {tail_seq} follows",
            )
        return None
    if rec.seq <= head_seq:
        return Refusal(
            RejectReason.EQUIVOCATION,
            f"seq {rec.seq} is not after the newest accepted seq {head_seq}",
        )
    if rec.seq > head_seq + 1:
        return Refusal(
            RejectReason.SEQUENCE_GAP,
            f"seq {rec.seq} skips ahead of {head_seq}; waiting for the missing records",
        )
    if rec.prev_hash != head_hash:
        return Refusal(
            RejectReason.CHAIN_BROKEN,
            f"prev hash does not match the stored record seq {head_seq}",
        )
    return None


def check_plausible(
    rec: IntervalRecord,
    capacity_w: int,
    limits: IngestLimits,
    prev_interval_start: int | None = None,
) -> Refusal | None:
    """Energy must be possible for the device's rated capacity in the time the record covers.

    A record covers its interval, and, when the device missed boundaries (an agent restarted
    or a meter silent across them, flagged GAP), everything since the end of the record before
    it in the chain (`prev_interval_start`, that record's start): edge.accounting books the
    missed intervals' energy on the next one rather than inventing a split. Bounding that by one
    interval refused a sunny restart for good and blocked the device's chain behind it.
    """
    span_s: float = rec.interval_s
    if prev_interval_start is not None:
        # The energy rose between the reading that closed the record before (at or after its
        # end) and this record's reading, which a device takes before the next boundary (a
        # later one would have closed the next interval): a restart that read late books more
        # than one interval's worth on a consecutive record too.
        read_s = min(rec.reading_ms / 1000, rec.interval_end + rec.interval_s)
        span_s = max(span_s, read_s - (prev_interval_start + rec.interval_s))
    bound = int(capacity_w * span_s / 3600 * limits.capacity_margin) + 1
    for name, v in (
        ("generated", rec.energy.generated_wh),
        ("charged", rec.energy.charged_wh),
        ("discharged", rec.energy.discharged_wh),
    ):
        if v > bound:
            return Refusal(
                RejectReason.IMPLAUSIBLE_ENERGY,
                f"{name} {v} Wh exceeds {bound} Wh possible at {capacity_w} W in "
                f"{span_s} s",
            )
    return None

