"""The Pi's check of the cloud's inclusion and consistency proofs (pure)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.proofs import ProofCheckError, TreeHead, check_consistency, check_token_proof
from protocol import cose, merkle
from protocol.checkpoint import Checkpoint, parse_verifier_key, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf

ORIGIN = "gridmint/test/ledger"
KEY = Ed25519PrivateKey.generate()
VKEY = parse_verifier_key(verifier_key_string(ORIGIN, cose.public_bytes(KEY.public_key())))


def _h(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def _log(n: int) -> tuple[list[bytes], merkle.MerkleLog]:
    leaves = [LedgerLeaf(i, (_h(i), _h(1000 + i)), b"entry %d" % i).encode() for i in range(n)]
    return leaves, merkle.MerkleLog(merkle.leaf_hash(x) for x in leaves)


def _answer(leaves: list[bytes], log: merkle.MerkleLog, i: int, key: Any = KEY) -> dict[str, Any]:
    note = sign_checkpoint(Checkpoint(ORIGIN, log.size, log.root()), ORIGIN, key)
    return {
        "token_id": f"t{i}",
        "leaf": leaves[i].hex(),
        "leaf_index": i,
        "tree_size": log.size,
        "path": [h.hex() for h in log.inclusion_proof(i, log.size)],
        "checkpoint": note.decode(),
    }


def test_a_good_proof_holds_for_every_leaf() -> None:
    leaves, log = _log(13)
    for i in range(13):
        head = check_token_proof(_answer(leaves, log, i), f"t{i}", _h(1000 + i), VKEY)
        assert head == TreeHead(13, log.root())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(token_id="t9"), "answered for token"),
        (lambda a: a.update(leaf_index=4), "leaf says entry 3"),
        (lambda a: a.update(tree_size=12), "size 12"),
        (lambda a: a.update(path=a["path"][:-1]), "not in the signed log"),
        (lambda a: a.update(path=[("0" * 64)] + a["path"][1:]), "not in the signed log"),
        (lambda a: a.update(checkpoint=a["checkpoint"].replace("13", "14", 1)), "malformed"),
        (lambda a: a.pop("leaf"), "malformed"),
    ],
)
def test_a_bent_proof_is_refused(change: Any, message: str) -> None:
    leaves, log = _log(13)
    answer = _answer(leaves, log, 3)
    change(answer)
    with pytest.raises(ProofCheckError, match=message):
        check_token_proof(answer, "t3", _h(1003), VKEY)


def test_another_records_leaf_or_another_key_is_refused() -> None:
    leaves, log = _log(8)
    with pytest.raises(ProofCheckError, match="does not cover this device's record"):
        check_token_proof(_answer(leaves, log, 2), "t2", _h(1005), VKEY)
    with pytest.raises(ProofCheckError, match="malformed or unsigned"):
        check_token_proof(
            _answer(leaves, log, 2, Ed25519PrivateKey.generate()), "t2", _h(1002), VKEY
        )


def test_consistency_between_checkpoints() -> None:
    leaves, log = _log(20)
    old, new = TreeHead(7, log.root(7)), TreeHead(20, log.root(20))
    check_consistency(old, new, log.consistency_proof(7, 20))
    forked = merkle.MerkleLog(merkle.leaf_hash(x) for x in [*leaves[:5], b"x", *leaves[6:]])
    with pytest.raises(ProofCheckError, match="not an extension"):
        check_consistency(old, TreeHead(20, forked.root()), forked.consistency_proof(7, 20))
    with pytest.raises(ProofCheckError, match="shrank"):
        check_consistency(new, old, [])
