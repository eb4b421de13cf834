"""Which devices and keys may sign: one rule for records arriving over MQTT and for the statements
a device sends over HTTP (probe, key rotation, proof requests).

Owns: the device statuses and the eligibility of a (device, key) pair at a point in time. Pure: the
callers look the device and key up and verify the signature; this only judges what they found.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from cloud.domain.ingest_rules import Refusal
from protocol.reasons import RejectReason


class DeviceStatus(StrEnum):
    """Where a device stands with the approver."""

    PENDING = "pending"  # enrolled, waiting for an approver; its tokens are kept, not yet counted
    APPROVED = "approved"  # its tokens count
    REJECTED = "rejected"  # never approved; final
    REVOKED = "revoked"  # was approved, then withdrawn (lost, sold, compromised); final

    @property
    def may_sign(self) -> bool:
        """Whether records and statements signed by this device are looked at at all."""
        return self in (DeviceStatus.PENDING, DeviceStatus.APPROVED)


class SigningKey(Protocol):
    """What the rule reads of a registered key (Unix seconds; valid_until None = open)."""

    @property
    def device_id(self) -> str: ...
    @property
    def valid_until(self) -> int | None: ...
    @property
    def revoked_ms(self) -> int | None: ...


def signing_refusal(
    device_id: str,
    status: DeviceStatus | None,
    kid: bytes,
    key: SigningKey | None,
    signed_for_s: int,
) -> Refusal | None:
    """Why `key` may not sign for `device_id` at `signed_for_s`, or None if it may.

    `status` is None for an unregistered device, `key` None for an unregistered kid.
    `signed_for_s` is the time the signature speaks for: a record's interval end (a record signed
    before a rotation may wait in the outbox for days and is still good, while a later interval
    signed with the old key is not), or "now" for a live statement.
    A revoked key is refused whatever the time: it may be in someone else's hands.
    """
    if status is None:
        return Refusal(RejectReason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
    if not status.may_sign:
        return Refusal(RejectReason.DEVICE_NOT_APPROVED, f"device {device_id!r} is {status}")
    if key is None or key.device_id != device_id:
        return Refusal(
            RejectReason.UNKNOWN_KEY,
            f"key id {kid.hex()} is not a registered key of {device_id!r}",
        )
    if key.revoked_ms is not None:
        return Refusal(
            RejectReason.KEY_REVOKED,
            f"key {kid.hex()} of {device_id!r} was revoked at {key.revoked_ms // 1000} (Unix s)",
        )
    if key.valid_until is not None and signed_for_s > key.valid_until:
        return Refusal(
            RejectReason.KEY_RETIRED,
            f"key {kid.hex()} was retired at {key.valid_until} (Unix s); "
            f"this signature speaks for {signed_for_s}",
        )
    return None
