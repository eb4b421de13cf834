"""Why a record was refused: one vocabulary for edge logs, cloud counters and the API.

Owns: the rejection reasons and whether the sender should retry. Imports nothing of ours.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """A distinct, stable reason for refusing an incoming record."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    NON_CANONICAL = "non_canonical"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_FIELD = "bad_field"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_NOT_APPROVED = "device_not_approved"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_RETIRED = "key_retired"
    KEY_REVOKED = "key_revoked"
    MISALIGNED_INTERVAL = "misaligned_interval"
    FUTURE_INTERVAL = "future_interval"
    STALE_INTERVAL = "stale_interval"
    REPLAYED = "replayed"
    EQUIVOCATION = "equivocation"
    SEQUENCE_GAP = "sequence_gap"
    CHAIN_BROKEN = "chain_broken"
    IMPLAUSIBLE_ENERGY = "implausible_energy"
    STORAGE_ERROR = "storage_error"
    RATE_LIMITED = "rate_limited"

    @property
    def retryable(self) -> bool:
        """True when the same record may be accepted later, so the sender must keep it."""
        return self in _RETRYABLE


# A gap means an earlier record has not arrived yet; a storage error is ours, not the sender's;
# a rate-limited record was not looked at (its device sent faster than its limit): all three
# say "send it again later".
_RETRYABLE = frozenset(
    {RejectReason.SEQUENCE_GAP, RejectReason.STORAGE_ERROR, RejectReason.RATE_LIMITED}
)
