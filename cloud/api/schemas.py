"""Wire schemas of the HTTP API (pydantic): what clients send and receive."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cloud.domain.devices import DeviceStatus
from protocol.topics import check_segment


class DevicePublic(BaseModel):
    """A registered device as the fleet table shows it."""

    device_id: str
    site_id: str
    status: str
    capacity_w: int
    zone: str
    tokens: int
    generated_wh: int
    last_interval_start: datetime | None


class DeviceCreate(BaseModel):
    """Admin registration of a device and its signing key."""

    device_id: str = Field(min_length=1, max_length=64)
    site_id: str = Field(min_length=1, max_length=64)
    public_key: str = Field(description="raw Ed25519 public key, 64 hex digits")
    capacity_w: int = Field(gt=0, le=10_000_000)
    zone: str = ""
    status: Literal[DeviceStatus.PENDING, DeviceStatus.APPROVED] = DeviceStatus.APPROVED


class DeviceStatusChange(BaseModel):
    """An approver's decision on a device; rejecting or revoking needs a reason."""

    status: Literal[DeviceStatus.APPROVED, DeviceStatus.REJECTED, DeviceStatus.REVOKED]
    reason: str = Field(
        "", max_length=500, description="why; required (non-blank) to reject or revoke"
    )

    def missing_reason(self) -> str | None:
        """A plain message when the decision needs a reason and has none, else None."""
        if self.status is not DeviceStatus.APPROVED and not self.reason.strip():
            verb = "reject" if self.status is DeviceStatus.REJECTED else "revoke"
            return f"a reason is required to {verb} a device"
        return None


class TokenPublic(BaseModel):
    """An accepted generation token: the signed record's figures and its bytes."""

    token_id: str
    device_id: str
    seq: int
    interval_start: datetime
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    status: str
    quality: int
    record_hash: str
    envelope: str = Field(description="the COSE_Sign1 record, hex")
    received_at: datetime


class IntervalGeneration(BaseModel):
    """Fleet generation in one interval."""

    interval_start: datetime
    generated_wh: int


class StatsPublic(BaseModel):
    """Ingest counters and generation."""

    accepted: int = Field(description="tokens of approved devices, stored and counted")
    held: int = Field(description="tokens of devices pending approval: stored, not yet counted")
    rejected: int
    rejected_by_reason: dict[str, int]
    generated_wh: int
    kwh: float = Field(description="generated_wh / 1000, for display only")
    per_interval: list[IntervalGeneration]


class RejectionPublic(BaseModel):
    """One refused message."""

    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int
    sha256: str


class Health(BaseModel):
    """Liveness and the state of the parts the aggregator depends on."""

    status: str
    database: str
    broker: str
    # True in the one process that writes the ledger (market orders, settlements, interval
    # closes); a standby answers ledger writes with 503. Route writes by this.
    sequencer: bool


def device_identity(public_key_hex: str, *ids: tuple[str, str]) -> bytes:
    """Check device/site ids (as topic segments) and a raw Ed25519 key; return the key bytes.

    `ids` are (value, what) pairs. Raises ValueError with a plain message for the 422 body.
    """
    for value, what in ids:
        check_segment(value, what)
    try:
        key = bytes.fromhex(public_key_hex)
    except ValueError:
        raise ValueError("public_key must be hex") from None
    if len(key) != 32:
        raise ValueError("public_key must be 32 bytes (64 hex digits)")
    return key
