"""Checking, on the Pi, that the cloud's ledger really holds this device's tokens.

Owns: the pure check of one inclusion proof (the cloud's answer for one token) and of the
consistency between two checkpoints. Nothing here trusts the cloud: the checkpoint must be
signed by the pinned ledger key, the leaf must name the device's own record hash, and the path
must lead from that leaf to the signed root. A failure names what did not hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import merkle
from protocol.checkpoint import VerifierKey, parse_signed_checkpoint
from protocol.ledger_leaf import LeafError, decode_leaf


class ProofCheckError(ValueError):
    """The cloud's proof does not show the token in the signed log."""


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A verified checkpoint: the log's size and root."""

    size: int
    root: bytes


def check_token_proof(
    answer: Mapping[str, Any], token_id: str, record_hash: bytes, ledger_key: VerifierKey
) -> TreeHead:
    """Verify one inclusion proof; returns the checkpoint it was proven against."""
    try:
        if answer.get("token_id") != token_id:
            raise ProofCheckError(f"the cloud answered for token {answer.get('token_id')}")
        cp = parse_signed_checkpoint(
            str(answer["checkpoint"]).encode(),
            ledger_key.name,
            ledger_key.public_key,
            origin=ledger_key.name,
        )
        leaf = bytes.fromhex(str(answer["leaf"]))
        index = int(answer["leaf_index"])
        size = int(answer["tree_size"])
        path = [bytes.fromhex(str(h)) for h in answer["path"]]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProofCheckError):
            raise
        raise ProofCheckError(f"malformed or unsigned proof: {exc}") from None
    if size != cp.size:
        raise ProofCheckError(f"proof is for size {size}, the signed checkpoint for {cp.size}")
    try:
        decoded = decode_leaf(leaf)
    except LeafError as exc:
        raise ProofCheckError(f"leaf: {exc}") from None
    if decoded.seq != index:
        raise ProofCheckError(f"leaf says entry {decoded.seq}, proof says {index}")
    if record_hash not in decoded.record_hashes:
        raise ProofCheckError(f"entry {index} does not cover this device's record")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(leaf), index, cp.size, path, cp.root)
    except merkle.ProofError as exc:
        raise ProofCheckError(f"entry {index} is not in the signed log: {exc}") from None
    return TreeHead(cp.size, cp.root)


def check_consistency(old: TreeHead, new: TreeHead, path: Sequence[bytes]) -> None:
    """The log did not rewrite history between two checkpoints this device has seen."""
    if new.size < old.size:
        raise ProofCheckError(f"the log shrank from {old.size} to {new.size} entries")
    try:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, list(path))
    except merkle.ProofError as exc:
        raise ProofCheckError(
            f"checkpoint {new.size} is not an extension of checkpoint {old.size}: {exc}"
        ) from None
