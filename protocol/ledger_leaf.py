"""A leaf of the ledger's Merkle log, readable without the ledger's rules.

Owns: the leaf envelope. The ledger entry itself (rules/ledger.Entry, canonical CBOR)
is carried as opaque bytes; around it the leaf names the entry's sequence number and the hashes
of the signed records the entry accounts for. So a device, which knows only its own records,
can check that a leaf covers one of them and that the leaf is in the log (protocol.merkle),
without knowing anything about burns, lots or payments.

Encoding: canonical CBOR array `["gridmint/ledger/v1", seq, [record_hash, ...], entry]`.
Imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

LEAF_CONTEXT = "gridmint/ledger/v1"


class LeafError(ValueError):
    """Bytes that are not a canonical ledger leaf."""


@dataclass(frozen=True, slots=True)
class LedgerLeaf:
    """One log leaf: entry sequence number, record hashes it covers, the entry's bytes."""

    seq: int
    record_hashes: tuple[bytes, ...]
    entry: bytes

    def encode(self) -> bytes:
        """The leaf's canonical bytes (what the Merkle log hashes)."""
        if self.seq < 0:
            raise LeafError("seq must not be negative")
        if any(len(h) != 32 for h in self.record_hashes):
            raise LeafError("record hashes are 32 bytes")
        return cbor2.dumps(
            [LEAF_CONTEXT, self.seq, list(self.record_hashes), self.entry], canonical=True
        )


def decode_leaf(data: bytes) -> LedgerLeaf:
    """Parse and check a leaf; LeafError names what is wrong."""
    try:
        items: Any = cbor2.loads(data)
    except Exception:  # cbor2 raises several types for bad input
        raise LeafError("leaf is not CBOR") from None
    if not isinstance(items, list) or len(items) != 4 or items[0] != LEAF_CONTEXT:
        raise LeafError(f"not a {LEAF_CONTEXT} leaf")
    _, seq, hashes, entry = items
    if type(seq) is not int or seq < 0:
        raise LeafError("leaf seq must be an unsigned integer")
    if not isinstance(hashes, list) or any(
        not isinstance(h, bytes) or len(h) != 32 for h in hashes
    ):
        raise LeafError("leaf record hashes must be 32-byte strings")
    if not isinstance(entry, bytes):
        raise LeafError("leaf entry must be a byte string")
    leaf = LedgerLeaf(seq, tuple(hashes), entry)
    if leaf.encode() != data:
        raise LeafError("leaf is not canonical CBOR")
    return leaf
