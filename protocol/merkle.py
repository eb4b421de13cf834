"""The ledger's Merkle log: RFC 6962 / RFC 9162 tree hashing, proofs and their verification.

Owns: leaf and node hashing (SHA-256 with the 0x00 / 0x01 domain prefixes), the append-only
`MerkleLog` that answers roots, inclusion proofs and consistency proofs for any size it has ever
had, and the pure verifiers of RFC 9162 sections 2.1.3.2 and 2.1.4.2. Imports nothing of ours and
does no I/O: the cloud keeps the leaf hashes in its database and rebuilds a log from them at
start-up.

Every tree here is the RFC's: a tree of n > 1 leaves splits at the largest power of two below n,
and a lone last node is never duplicated, so different leaf lists never share a root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves (RFC 9162 section 2.1.1)."""


class ProofError(ValueError):
    """A proof, size or hash that does not verify."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) computed straight from the definition; the reference the log is checked against.

    O(n) hashes and O(log n) recursion depth. Use `MerkleLog.root` for a log that keeps growing.
    """

    def mth(start: int, end: int) -> bytes:
        n = end - start
        if n == 1:
            return leaf_hashes[start]
        k = _split(n)
        return node_hash(mth(start, start + k), mth(start + k, end))

    if not leaf_hashes:
        return EMPTY_ROOT
    return mth(0, len(leaf_hashes))


class MerkleLog:
    """An append-only list of leaf hashes with every complete subtree hash kept.

    `_levels[h][j]` is the hash of the complete subtree of 2**h leaves starting at leaf j * 2**h.
    Appending a leaf adds at most one hash per level (amortised one node hash per append), and any
    subtree the RFC tree of ANY size up to `len(self)` uses is either one of those complete
    subtrees or a right edge made of at most log2(n) of them, so roots and proofs for past sizes
    come from stored hashes without replaying history.

    Costs, n = size asked about: `root`, `inclusion_proof` and `consistency_proof` each take
    O(log n) stored-hash lookups and fewer than log2(n) node hashes. A proof node is an incomplete
    subtree only where the walk from the root turns left off the right edge, and from there on
    every range is complete, so at most one proof node per proof costs any hashing. Memory is
    about 2n hashes.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def leaf_at(self, index: int) -> bytes:
        """The leaf hash stored at `index`."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf index {index} is outside a log of {self.size} leaves")
        return self._levels[0][index]

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash (see `leaf_hash`) and return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}")
        levels = self._levels
        index = len(levels[0])
        levels[0].append(bytes(leaf))
        # Each level whose length just became even gained a complete pair: hash it one level up.
        # The carry stops at the first odd level, so this runs once per append on average.
        height = 0
        while len(levels[height]) % 2 == 0:
            row = levels[height]
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].append(node_hash(row[-2], row[-1]))
            height += 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all of them)."""
        n = self.size if size is None else self._check_size(size, "size")
        if n == 0:
            return EMPTY_ROOT
        return self._range_hash(0, n)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, ordered from the leaf up."""
        self._check_size(size, "size")
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is not inside a tree of {size} leaves")
        # Walk down from the root; at each split the sibling of the side holding `index` is a
        # proof node. The RFC lists them bottom-up, so the walk's order is reversed at the end.
        siblings: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            mid = start + _split(end - start)
            if index < mid:
                siblings.append(self._range_hash(mid, end))
                end = mid
            else:
                siblings.append(self._range_hash(start, mid))
                start = mid
        siblings.reverse()
        return siblings

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1.

        Empty when old_size is 0 or equal to new_size: those pairs are consistent by definition,
        and `verify_consistency` checks them by comparing roots.
        """
        self._check_size(new_size, "new size")
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} must be between 0 and the new size {new_size}")
        if old_size in (0, new_size):
            return []
        # SUBPROOF(m, D[start:end], b) unrolled: each step keeps the side that holds the old
        # tree's right edge and records the other side; at the bottom, the old tree's own
        # subtree is included unless it is the whole old tree (b still true).
        tail: list[bytes] = []
        start, end, m, whole_old_tree = 0, new_size, old_size, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                tail.append(self._range_hash(start + k, end))
                end = start + k
            else:
                tail.append(self._range_hash(start, start + k))
                start += k
                m -= k
                whole_old_tree = False
        tail.reverse()
        if whole_old_tree:
            return tail
        return [self._range_hash(start, end), *tail]

    # internals

    def _check_size(self, size: int, what: str) -> int:
        if not 0 <= size <= self.size:
            raise ValueError(f"{what} {size} is outside 0..{self.size}, the sizes this log has had")
        return size

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a subtree of the RFC tree: start is a multiple of a power of two
        at least end - start, so the range is whole stored subtrees, largest first."""
        levels = self._levels
        count = end - start
        if count & (count - 1) == 0:  # one complete subtree: most proof nodes are
            height = count.bit_length() - 1
            return levels[height][start >> height]
        # Peel complete subtrees off the left (the binary digits of end - start, high to low),
        # then fold them right to left: that is the RFC's split-at-largest-power-of-two shape.
        peaks: list[bytes] = []
        pos, remaining = start, end - start
        while remaining:
            height = remaining.bit_length() - 1
            peaks.append(levels[height][pos >> height])
            pos += 1 << height
            remaining -= 1 << height
        acc = peaks.pop()
        while peaks:
            acc = node_hash(peaks.pop(), acc)
        return acc


# verification


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def inclusion_proof_length(index: int, size: int) -> int:
    """How many hashes PATH(index, D[size]) holds: the levels where index and size - 1 differ,
    plus one per left sibling above them."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not inside a tree of {size} leaves")
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """How many hashes PROOF(old_size, D[new_size]) holds (0 when old_size is 0 or new_size)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} must be between 0 and the new size {new_size}")
    if old_size in (0, new_size):
        return 0
    # The old tree's right edge is a complete subtree of 2**shift leaves; from there on the proof
    # is an inclusion proof of that subtree in the new tree, plus the subtree itself unless it is
    # the whole old tree (old_size a power of two).
    shift = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size == 1 << shift else 1
    return seed + inclusion_proof_length((old_size - 1) >> shift, ((new_size - 1) >> shift) + 1)


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` links `leaf` (at `index` in a tree of `size` leaves) to.

    RFC 9162 section 2.1.3.2 steps 1-5 without the final comparison. Raises ProofError if the
    proof cannot belong to that index and size.
    """
    _check_hash(leaf, "leaf hash")
    expected = inclusion_proof_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"an inclusion proof for leaf {index} of {size} has {expected} hashes, "
            f"this one has {len(proof)}"
        )
    fn, sn = index, size - 1
    r = leaf
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is tall")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is tall")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree of `size` with `root`."""
    _check_hash(root, "root")
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise ProofError(f"the inclusion proof for leaf {index} of {size} does not lead to root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless the tree of `new_size` with `new_root` extends the tree of
    `old_size` with `old_root` (RFC 9162 section 2.1.4.2).

    Sizes 0 and equal sizes need an empty proof; then the roots are compared directly (the empty
    tree's root must be EMPTY_ROOT, equal sizes need equal roots).
    """
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    expected = consistency_proof_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(
            f"a consistency proof from {old_size} to {new_size} has {expected} hashes, "
            f"this one has {len(proof)}"
        )
    if old_size == 0:
        if old_root != EMPTY_ROOT:
            raise ProofError("the old root is not the empty tree's root, but the old size is 0")
        return
    if old_size == new_size:
        if old_root != new_root:
            raise ProofError(f"two different roots for the same size {old_size}")
        return
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old tree is itself a proof node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the new tree is tall")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the new tree is tall")
    if fr != old_root:
        raise ProofError(f"the consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"the consistency proof does not lead to the new root (size {new_size})")
