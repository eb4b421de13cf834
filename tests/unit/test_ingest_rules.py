"""Ingest rules (pure): interval, chain and plausibility checks."""

from __future__ import annotations

from dataclasses import replace

from cloud.domain.ingest_rules import (
    IngestLimits,
    check_chain,
    check_interval,
    check_plausible,
    check_storable,
)
from protocol.reasons import RejectReason
from protocol.record import Channels, Energy, IntervalRecord

T0 = 1_800_000_000 - 1_800_000_000 % 300
REC = IntervalRecord(
    device_id="d",
    seq=5,
    boot=1,
    interval_start=T0,
    interval_s=300,
    energy=Energy(400, 0, 130, 0, 0),
    registers_wh=(1, 0, 1, 0, 0),
    channels=Channels.GENERATED | Channels.EXPORTED,
    reading_ms=(T0 + 301) * 1000,
    prev_hash=b"\x01" * 32,
)
LIMITS = IngestLimits()


def test_interval_checks() -> None:
    assert check_interval(REC, T0 + 301, LIMITS) is None
    r = check_interval(replace(REC, interval_start=T0 + 7), T0 + 900, LIMITS)
    assert r is not None and r.reason is RejectReason.MISALIGNED_INTERVAL
    r = check_interval(REC, T0 + 100, LIMITS)  # interval not closed yet
    assert r is not None and r.reason is RejectReason.FUTURE_INTERVAL
    r = check_interval(REC, T0 + LIMITS.backfill_window_s + 10, LIMITS)
    assert r is not None and r.reason is RejectReason.STALE_INTERVAL


def test_chain_checks() -> None:
    assert check_chain(REC, None, None, conflict=False) is None  # first record anchors
    assert check_chain(REC, 4, b"\x01" * 32, conflict=False) is None
    cases = [
        ((4, b"\x02" * 32, False), RejectReason.CHAIN_BROKEN),
        ((3, b"\x01" * 32, False), RejectReason.SEQUENCE_GAP),
        ((5, b"\x01" * 32, False), RejectReason.EQUIVOCATION),
        ((4, b"\x01" * 32, True), RejectReason.EQUIVOCATION),
    ]
    for (seq, head, conflict), reason in cases:
        r = check_chain(REC, seq, head, conflict)
        assert r is not None and r.reason is reason, (seq, reason)
    assert RejectReason.SEQUENCE_GAP.retryable
    assert not RejectReason.CHAIN_BROKEN.retryable


def test_plausibility_bound_follows_capacity() -> None:
    # 4 kW for 300 s is 333 Wh, plus the 10 % margin: 367 Wh. 400 Wh is too much.
    r = check_plausible(REC, 4000, LIMITS)
    assert r is not None and r.reason is RejectReason.IMPLAUSIBLE_ENERGY
    assert check_plausible(REC, 5000, LIMITS) is None


def test_a_record_after_missed_intervals_is_bounded_over_the_time_it_covers() -> None:
    # The agent was down across two boundaries: the record after it books 15 minutes of sun
    # (flagged GAP), which is plausible over 900 s at 4 kW, not over one interval.
    gap = replace(REC, energy=Energy(1000, 0, 0, 0, 0), status="G,GAP")
    assert check_plausible(gap, 4000, LIMITS, prev_interval_start=T0 - 900) is None
    r = check_plausible(gap, 4000, LIMITS, prev_interval_start=T0 - 300)  # consecutive
    assert r is not None and r.reason is RejectReason.IMPLAUSIBLE_ENERGY
    r = check_plausible(replace(gap, energy=Energy(1200, 0, 0, 0, 0)), 4000, LIMITS, T0 - 900)
    assert r is not None  # 1100 Wh is the bound over 900 s


def test_values_beyond_signed_64_bit_are_refused_before_storage() -> None:
    r = check_storable(replace(REC, seq=2**63))
    assert r is not None and r.reason is RejectReason.BAD_FIELD
    assert check_storable(REC) is None
