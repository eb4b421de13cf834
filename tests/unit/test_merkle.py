"""The Merkle log against published RFC 6962 vectors, a naive reference, and corrupted proofs.

Known answers: the 8-leaf test set used by certificate-transparency and transparency-dev/merkle
(`testonly/constants.go`, `proof/verify_test.go`). The naive reference below hashes with hashlib
directly and follows the RFC 9162 recursions literally, so it shares no code with protocol.merkle.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    ProofError,
    consistency_proof_length,
    inclusion_proof_length,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
# Published roots for sizes 0..8.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# Published leaf hashes (level 0 of the complete subtrees).
LEAF_HASHES = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
    h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
    h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
    h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
]
# (0-based leaf index, tree size, proof) from proof/verify_test.go (which counts leaves from 1).
INCLUSION_VECTORS = [
    (0, 8, [LEAF_HASHES[1], h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [LEAF_HASHES[4], h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            ROOTS[4]]),
    (2, 3, [ROOTS[2]]),
    (1, 5, [LEAF_HASHES[0], h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            LEAF_HASHES[4]]),
]  # fmt: skip
# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 8, [LEAF_HASHES[1], h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"), ROOTS[4]]),
    (2, 5, [h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"), LEAF_HASHES[4]]),
    (6, 7, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            LEAF_HASHES[6], ROOTS[4]]),
]  # fmt: skip
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- naive reference: hashlib and the RFC 9162 recursions, nothing from protocol.merkle -------


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 section 2.1.1)."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = ref_k(len(d))
    return ref_node(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 section 2.1.3.1)."""
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) (RFC 9162 section 2.1.4.1)."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def distinct_leaves(n: int) -> list[bytes]:
    return [ref_leaf(i.to_bytes(4, "big")) for i in range(n)]


def rejected(verify: Callable[..., None], *args: object) -> bool:
    """True if `verify(*args)` raises ProofError; any other exception propagates."""
    try:
        verify(*args)
    except ProofError:
        return True
    return False


def assert_rejected(check: Callable[[], object]) -> ProofError:
    with pytest.raises(ProofError) as info:
        check()
    return info.value


# --- known answers ---------------------------------------------------------------------------


def test_hash_primitives_match_published_values() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    assert [leaf_hash(x) for x in LEAF_INPUTS] == LEAF_HASHES
    assert node_hash(LEAF_HASHES[0], LEAF_HASHES[1]) == ROOTS[2]


def test_naive_reference_matches_published_roots() -> None:
    # Guards the reference itself, so the property tests below compare against something right.
    assert [ref_mth([ref_leaf(x) for x in LEAF_INPUTS[:n]]) for n in range(9)] == ROOTS


def test_published_size_1_and_size_8_roots() -> None:
    log = MerkleLog(leaf_hash(x) for x in LEAF_INPUTS)
    assert log.root(1).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert log.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize("size", range(9))
def test_roots_for_every_size(size: int) -> None:
    hashes = [leaf_hash(x) for x in LEAF_INPUTS]
    assert root_from_leaves(hashes[:size]) == ROOTS[size]
    assert MerkleLog(hashes).root(size) == ROOTS[size]  # historical size of a longer log
    assert MerkleLog(hashes[:size]).root() == ROOTS[size]  # current size


def test_root_after_each_append() -> None:
    log = MerkleLog()
    assert log.root() == ROOTS[0]
    for i, data in enumerate(LEAF_INPUTS):
        assert log.append(leaf_hash(data)) == i
        assert len(log) == log.size == i + 1
        assert log.root() == ROOTS[i + 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    log = MerkleLog(LEAF_HASHES)
    assert log.inclusion_proof(index, size) == proof
    assert root_from_inclusion(LEAF_HASHES[index], index, size, proof) == ROOTS[size]
    verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    log = MerkleLog(LEAF_HASHES)
    assert log.consistency_proof(old, new) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def test_single_leaf_tree_has_empty_proof_and_root_equal_to_leaf() -> None:
    leaf = leaf_hash(b"data")
    assert MerkleLog([leaf]).inclusion_proof(0, 1) == []
    verify_inclusion(leaf, 0, 1, [], leaf)
    assert_rejected(lambda: verify_inclusion(leaf, 0, 1, [], SOME_HASH))
    assert_rejected(lambda: verify_inclusion(SOME_HASH, 0, 1, [], leaf))
    assert_rejected(lambda: verify_inclusion(b"", 0, 1, [], b""))


# --- negative vectors ------------------------------------------------------------------------


def true_root(size: int) -> bytes:
    """The published root of `size` leaves of the test set (a stand-in past 8)."""
    return ROOTS[size] if 0 <= size < len(ROOTS) else SOME_HASH


def flipped(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ bit]) + out[i][1:]
    return out


def inclusion_corruptions(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """(description, index, size, proof, root, leaf) that must all be rejected."""
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("index = size", size, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size // 2", index, size // 2, proof, root, leaf),
        ("size 0", index, 0, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, SOME_HASH),
        ("short leaf", index, size, proof, root, b"WrongLeaf"),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing empty", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding empty", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        probes.append((f"proof[{i}] bit 3 flipped", index, size, flipped(proof, i, 8), root, leaf))
        probes.append(
            (
                f"proof[{i}] last byte",
                index,
                size,
                [*proof[:i], proof[i][:-1] + bytes([proof[i][-1] ^ 1]), *proof[i + 1 :]],
                root,
                leaf,
            )
        )
        probes.append((f"proof[{i}] removed", index, size, proof[:i] + proof[i + 1 :], root, leaf))
    probes += [  # other sizes, each with its true root
        (f"size {other}", index, other, proof, true_root(other), leaf)
        for other in range(size + 2)
        if other != size
    ]
    if proof:
        probes.append(("truncated", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(("inserted", index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf))
        probes.append(("swapped", index, size, [proof[1], proof[0], *proof[2:]], root, leaf))
    return [p for p in probes if p[1] >= 0]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_corrupted_inclusion_proofs_are_rejected(index: int, size: int, proof: list[bytes]) -> None:
    leaf = LEAF_HASHES[index]
    probes = inclusion_corruptions(index, size, proof, ROOTS[size], leaf)
    accepted = [
        desc
        for desc, i, n, p, root, lf in probes
        if not rejected(verify_inclusion, lf, i, n, p, root)
    ]
    assert accepted == []


def consistency_corruptions(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """(description, old, new, old root, new root, proof) that must all be rejected."""
    probes = [
        ("old - 1", old - 1, new, old_root, new_root, proof),
        ("old + 1", old + 1, new, old_root, new_root, proof),
        ("old ^ 2", old ^ 2, new, old_root, new_root, proof),
        ("new * 2", old, new * 2, old_root, new_root, proof),
        ("new // 2", old, new // 2, old_root, new_root, proof),
        ("sizes swapped", new, old, old_root, new_root, proof),
        ("wrong old root", old, new, SOME_HASH, new_root, proof),
        ("wrong new root", old, new, old_root, SOME_HASH, proof),
        ("short old root", old, new, b"WrongRoot", new_root, proof),
        ("roots swapped", old, new, new_root, old_root, proof),
        ("empty proof", old, new, old_root, new_root, []),
        ("trailing empty", old, new, old_root, new_root, [*proof, b""]),
        ("trailing old root", old, new, old_root, new_root, [*proof, old_root]),
        ("trailing new root", old, new, old_root, new_root, [*proof, new_root]),
        ("preceding empty", old, new, old_root, new_root, [b"", *proof]),
        ("preceding old root", old, new, old_root, new_root, [old_root, *proof]),
        ("preceding new root", old, new, old_root, new_root, [new_root, *proof]),
        ("preceding proof[0]", old, new, old_root, new_root, [proof[0], *proof]),
        ("truncated", old, new, old_root, new_root, proof[:-1]),
    ]
    for i in range(len(proof)):
        probes.append(
            (f"proof[{i}] bit 4 flipped", old, new, old_root, new_root, flipped(proof, i, 16))
        )
        probes.append(
            (f"proof[{i}] removed", old, new, old_root, new_root, proof[:i] + proof[i + 1 :])
        )
    if len(proof) > 1:
        probes.append(("swapped", old, new, old_root, new_root, [proof[1], proof[0], *proof[2:]]))
    for m, n in itertools.product(range(new + 2), repeat=2):
        if (m, n) != (old, new):  # other sizes, with those sizes' true roots
            probes.append((f"sizes {m}->{n}", m, n, true_root(m), true_root(n), proof))
    return [p for p in probes if p[1] >= 0 and p[2] >= 0]


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_corrupted_consistency_proofs_are_rejected(old: int, new: int, proof: list[bytes]) -> None:
    probes = consistency_corruptions(old, new, ROOTS[old], ROOTS[new], proof)
    accepted = [
        desc
        for desc, m, n, r1, r2, p in probes
        if not rejected(verify_consistency, m, n, r1, r2, p)
    ]
    assert accepted == []


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (0, 0, SOME_HASH, SOME_HASH, []),  # the empty tree has one root
        (0, 1, SOME_HASH, ROOTS[1], []),
        (1, 1, ROOTS[1], ROOTS[2], []),  # same size, two roots
        (1, 0, ROOTS[1], ROOTS[0], []),  # shrinking
        (2, 1, ROOTS[2], ROOTS[1], []),
        (-1, 1, ROOTS[0], ROOTS[1], []),
        (1, 2, ROOTS[1], ROOTS[2], []),  # a real step with no proof
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # trivial pairs take no proof
        (0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT]),
        (1, 1, ROOTS[1], ROOTS[1], [EMPTY_ROOT]),
    ],
)
def test_trivial_consistency_cases_rejected(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    assert_rejected(lambda: verify_consistency(old, new, old_root, new_root, proof))


def test_a_root_paired_with_the_wrong_size_is_only_caught_by_the_proof_shape() -> None:
    """RFC 9162 verification uses the size only for the shape of the proof. Leaf 0's path has the
    same shape in trees of 7 and 8 leaves, so a size-8 root presented as size 7 still verifies:
    no proof can tell, because the verifier never sees the leaves. What prevents this is that the
    size and root come together from one signed checkpoint (protocol.checkpoint), never from two
    sources. With the true root of the claimed size, every other size is rejected (see the
    exhaustive tests below)."""
    log = MerkleLog(LEAF_HASHES)
    proof = log.inclusion_proof(0, 8)
    verify_inclusion(LEAF_HASHES[0], 0, 7, proof, ROOTS[8])
    assert_rejected(lambda: verify_inclusion(LEAF_HASHES[0], 0, 7, proof, ROOTS[7]))
    cproof = log.consistency_proof(1, 8)
    verify_consistency(1, 7, ROOTS[1], ROOTS[8], cproof)
    assert_rejected(lambda: verify_consistency(1, 7, ROOTS[1], ROOTS[7], cproof))


def test_trivial_consistency_cases_accepted() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 4), (8, 8)])
def test_inclusion_index_outside_tree_rejected(index: int, size: int) -> None:
    err = assert_rejected(lambda: verify_inclusion(SOME_HASH, index, size, [], SOME_HASH))
    assert "not inside a tree" in str(err)


def test_error_messages_say_what_failed() -> None:
    proof = INCLUSION_VECTORS[0][2]
    err = assert_rejected(lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, proof[:2], ROOTS[8]))
    assert "has 3 hashes, this one has 2" in str(err)
    err = assert_rejected(lambda: verify_inclusion(LEAF_HASHES[1], 0, 8, proof, ROOTS[8]))
    assert "does not lead to root" in str(err)
    err = assert_rejected(lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, proof, ROOTS[8][:31]))
    assert "root must be 32 bytes" in str(err)
    _old, _new, cproof = CONSISTENCY_VECTORS[1]
    err = assert_rejected(lambda: verify_consistency(6, 8, ROOTS[5], ROOTS[8], cproof))
    assert "old root" in str(err)
    err = assert_rejected(lambda: verify_consistency(6, 8, ROOTS[6], ROOTS[7], cproof))
    assert "new root" in str(err)
    err = assert_rejected(lambda: verify_consistency(6, 8, ROOTS[6], ROOTS[8], cproof[:2]))
    assert "from 6 to 8 has 3 hashes, this one has 2" in str(err)
    err = assert_rejected(lambda: verify_consistency(9, 8, ROOTS[6], ROOTS[8], cproof))
    assert "between 0 and the new size" in str(err)


def test_proof_errors_are_value_errors() -> None:
    assert issubclass(ProofError, ValueError)


# Exhaustive over a 16-leaf log: a proof is only ever accepted for the sizes it was made for.

N_SMALL = 16
SMALL_LEAVES = distinct_leaves(N_SMALL)
SMALL_ROOTS = [ref_mth(SMALL_LEAVES[:n]) for n in range(N_SMALL + 1)]


def test_consistency_proof_never_accepted_for_other_sizes() -> None:
    log = MerkleLog(SMALL_LEAVES)
    pairs = [(m, n) for n in range(N_SMALL + 1) for m in range(n + 1)]
    accepted = []
    for m, n in pairs:
        proof = log.consistency_proof(m, n)
        verify_consistency(m, n, SMALL_ROOTS[m], SMALL_ROOTS[n], proof)
        for m2, n2 in itertools.product(range(-1, N_SMALL + 2), repeat=2):
            if (m2, n2) == (m, n) or (not proof and (m2 == 0 or m2 == n2)):
                continue  # empty proofs are right for every trivial pair
            r1 = SMALL_ROOTS[m2] if 0 <= m2 <= N_SMALL else SOME_HASH
            r2 = SMALL_ROOTS[n2] if 0 <= n2 <= N_SMALL else SOME_HASH
            if not rejected(verify_consistency, m2, n2, r1, r2, proof):
                accepted.append(f"proof for {m}->{n} accepted as {m2}->{n2}")
    assert accepted == []


def test_inclusion_proof_never_accepted_for_other_index_or_size() -> None:
    log = MerkleLog(SMALL_LEAVES)
    accepted = []
    for n in range(1, N_SMALL + 1):
        for i in range(n):
            proof = log.inclusion_proof(i, n)
            verify_inclusion(SMALL_LEAVES[i], i, n, proof, SMALL_ROOTS[n])
            for i2, n2 in itertools.product(range(-1, N_SMALL + 1), range(0, N_SMALL + 2)):
                if (i2, n2) == (i, n):
                    continue
                leaf = SMALL_LEAVES[i2] if 0 <= i2 < N_SMALL else SOME_HASH
                root = SMALL_ROOTS[n2] if n2 <= N_SMALL else SOME_HASH
                if not rejected(verify_inclusion, leaf, i2, n2, proof, root):
                    accepted.append(f"proof for {i}/{n} accepted as {i2}/{n2}")
    assert accepted == []


# --- the log object --------------------------------------------------------------------------


def test_log_argument_errors() -> None:
    log = MerkleLog(SMALL_LEAVES[:5])
    with pytest.raises(ValueError, match="32 bytes"):
        log.append(b"short")
    with pytest.raises(ValueError, match="outside 0..5"):
        log.root(6)
    with pytest.raises(ValueError, match="outside 0..5"):
        log.root(-1)
    with pytest.raises(ValueError, match="not inside a tree of 3"):
        log.inclusion_proof(3, 3)
    with pytest.raises(ValueError, match="not inside a tree"):
        log.inclusion_proof(-1, 3)
    with pytest.raises(ValueError, match="outside 0..5"):
        log.inclusion_proof(0, 6)
    with pytest.raises(ValueError, match="between 0 and the new size"):
        log.consistency_proof(4, 3)
    with pytest.raises(ValueError, match="outside 0..5"):
        log.consistency_proof(1, 6)
    with pytest.raises(IndexError):
        log.leaf_at(5)
    assert log.leaf_at(4) == SMALL_LEAVES[4]
    assert len(log) == 5  # nothing above changed it


def test_reloaded_log_equals_appended_log() -> None:
    leaves = distinct_leaves(100)
    appended = MerkleLog()
    for x in leaves:
        appended.append(x)
    reloaded = MerkleLog(iter(leaves))  # any iterable, as a database cursor gives it
    for n in (0, 1, 37, 64, 99, 100):
        assert reloaded.root(n) == appended.root(n) == ref_mth(leaves[:n])
    assert reloaded.inclusion_proof(42, 77) == appended.inclusion_proof(42, 77)
    assert reloaded.consistency_proof(13, 100) == appended.consistency_proof(13, 100)


def test_roots_and_proofs_for_past_sizes_cost_at_most_log2_node_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Catches any fallback to rehashing leaves: an O(n) root or proof would need far more.
    log = MerkleLog(distinct_leaves(5000))
    calls = 0
    real = merkle.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    worst = 0
    for size in (1, 2, 3, 1023, 1024, 1025, 3333, 4095, 5000):
        bound = size.bit_length()
        for i in range(size):
            for method, args in [
                (log.root, (i + 1,)),
                (log.inclusion_proof, (i, size)),
                (log.consistency_proof, (i, size)),
            ]:
                calls = 0
                method(*args)
                assert calls <= bound, (size, i)
                worst = max(worst, calls)
    assert worst >= 8  # the counter really counted (4095 = 0b111111111111 needs hashing)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=33), st.binary(min_size=1, max_size=8))
def test_all_proofs_of_a_random_log_match_the_reference(n: int, salt: bytes) -> None:
    leaves = [ref_leaf(salt + i.to_bytes(2, "big")) for i in range(n)]
    log = MerkleLog(leaves)
    roots = [ref_mth(leaves[:m]) for m in range(n + 1)]
    for m in range(n + 1):
        assert log.root(m) == roots[m] == root_from_leaves(leaves[:m])
        for i in range(m):
            proof = log.inclusion_proof(i, m)
            assert proof == ref_path(i, leaves[:m])
            assert len(proof) == inclusion_proof_length(i, m)
            verify_inclusion(leaves[i], i, m, proof, roots[m])
        for old in range(m + 1):
            proof = log.consistency_proof(old, m)
            if 0 < old < m:
                assert proof == ref_subproof(old, leaves[:m], True)
            assert len(proof) == consistency_proof_length(old, m)
            verify_consistency(old, m, roots[old], roots[m], proof)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.data())
def test_historical_proofs_in_a_large_log(n: int, data: st.DataObject) -> None:
    leaves = distinct_leaves(n)
    log = MerkleLog(leaves)
    for _ in range(4):
        new = data.draw(st.integers(min_value=1, max_value=n), label="new size")
        old = data.draw(st.integers(min_value=0, max_value=new), label="old size")
        index = data.draw(st.integers(min_value=0, max_value=new - 1), label="index")
        new_root = root_from_leaves(leaves[:new])
        old_root = root_from_leaves(leaves[:old])
        assert log.root(new) == new_root
        assert log.root(old) == old_root
        proof = log.inclusion_proof(index, new)
        assert proof == ref_path(index, leaves[:new])
        verify_inclusion(leaves[index], index, new, proof, new_root)
        verify_consistency(old, new, old_root, new_root, log.consistency_proof(old, new))
