"""Receipts the cloud sends back to a device after it stored or refused a record.

Owns: the receipt message format (canonical CBOR map). The edge deletes a record from its outbox
only on a receipt that says the cloud holds it (stored or already held), which makes delivery safe
end to end even if the broker restarts between its PUBACK and delivering to the aggregator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cbor2


class ReceiptStatus(StrEnum):
    """What happened to a record."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Receipt:
    """The cloud's answer for one record, keyed by the record's hash (hex)."""

    record_hash: str
    status: ReceiptStatus
    reason: str = ""
    retry: bool = False

    @property
    def held_by_cloud(self) -> bool:
        """True when the cloud stores this record, so the edge may drop its copy."""
        return self.status in (ReceiptStatus.ACCEPTED, ReceiptStatus.DUPLICATE)

    def encode(self) -> bytes:
        """Canonical CBOR bytes."""
        return cbor2.dumps(
            {0: self.record_hash, 1: self.status.value, 2: self.reason, 3: self.retry},
            canonical=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        """Parse receipt bytes; raises ValueError on anything malformed."""
        try:
            m = cbor2.loads(data)
            return cls(str(m[0]), ReceiptStatus(m[1]), str(m[2]), bool(m[3]))
        except Exception as exc:  # any decoding failure is a malformed receipt
            raise ValueError(f"malformed receipt: {exc}") from None
