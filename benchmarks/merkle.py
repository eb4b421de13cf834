"""Merkle log cost: raw SHA-256, MerkleLog append, roots, and proof generation and verification.

Run: .venv/bin/python -m benchmarks.merkle --leaves 100000

A measurement, not a test: it asserts nothing about speed. Every proof it times is also checked
(verification raises on a bad proof), and it exits non-zero only if one fails.

Historical sizes, proof indexes and old/new size pairs are drawn uniformly at random (fixed seed)
over the whole log, so the figures are for proofs against past checkpoints, not only the newest.
The last column expresses each operation's cost in raw SHA-256 hashes of a 64-byte input, the
cost of one node hash without Python's overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import ssl
import sys
import time
from collections.abc import Callable

from benchmarks.machine import machine_facts as shared_machine_facts
from protocol import merkle

SEED = 20261129


def _rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    """Operations per second for `fn`, which performs `n` of them: the best of `repeats` runs,
    since on a shared machine the slower runs measure the neighbours, not the code."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def machine_facts() -> dict[str, str]:
    """The machine, OpenSSL and cryptography."""
    return {**shared_machine_facts(("cryptography",)), "openssl": ssl.OPENSSL_VERSION}


def run(n_leaves: int, n_ops: int, repeats: int) -> list[tuple[str, float]]:
    """(measurement, ops/s) rows; the first row is the raw hash rate the others are compared to."""
    rng = random.Random(SEED)
    blocks = [rng.randbytes(64) for _ in range(min(n_ops * 10, 200_000))]
    pairs = [(b[:32], b[32:]) for b in blocks]
    leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n_leaves)]
    rows: list[tuple[str, float]] = []

    def row(name: str, n: int, fn: Callable[[], object]) -> None:
        rows.append((name, _rate(n, fn, repeats)))

    def raw_hash() -> None:
        sha256 = hashlib.sha256
        for b in blocks:
            sha256(b).digest()

    def node_hashes() -> None:
        for left, right in pairs:
            merkle.node_hash(left, right)

    def append_all() -> merkle.MerkleLog:
        fresh = merkle.MerkleLog()
        for leaf in leaves:
            fresh.append(leaf)
        return fresh

    row("SHA-256 of 64 bytes (hashlib, raw)", len(blocks), raw_hash)
    row("merkle.node_hash (0x01 || 64 bytes)", len(pairs), node_hashes)
    row(f"MerkleLog.append, {n_leaves:,} leaves from empty", n_leaves, append_all)
    row(
        f"MerkleLog(leaves) reload, {n_leaves:,} leaves", n_leaves, lambda: merkle.MerkleLog(leaves)
    )
    row(
        f"root_from_leaves, {n_leaves:,} leaves (per leaf)",
        n_leaves,
        lambda: merkle.root_from_leaves(leaves),
    )

    log = merkle.MerkleLog(leaves)
    sizes = [rng.randint(1, n_leaves) for _ in range(n_ops)]
    incl = [(rng.randrange(s), s) for s in sizes]
    cons = [(rng.randint(1, s), s) for s in sizes]
    roots = {s: log.root(s) for s in {n_leaves, *sizes, *(old for old, _ in cons)}}
    incl_proofs = [log.inclusion_proof(i, s) for i, s in incl]
    cons_proofs = [log.consistency_proof(old, new) for old, new in cons]

    def check_inclusion() -> None:
        for (i, s), proof in zip(incl, incl_proofs, strict=True):
            merkle.verify_inclusion(leaves[i], i, s, proof, roots[s])

    def check_consistency() -> None:
        for (old, new), proof in zip(cons, cons_proofs, strict=True):
            merkle.verify_consistency(old, new, roots[old], roots[new], proof)

    # The most hashing a proof needs: leaf 0 of a size 2**k - 1, whose one incomplete sibling is
    # the right half minus a leaf (k - 2 node hashes on top of the lookups).
    worst = (1 << (n_leaves.bit_length() - 1)) - 1

    row("MerkleLog.root() at the current size", n_ops, lambda: [log.root() for _ in range(n_ops)])
    row("MerkleLog.root(size), random past size", n_ops, lambda: [log.root(s) for s in sizes])
    row(
        "inclusion_proof(index, size), random past size",
        n_ops,
        lambda: [log.inclusion_proof(i, s) for i, s in incl],
    )
    row(
        f"inclusion_proof(0, {worst:,}): the most hashing",
        n_ops,
        lambda: [log.inclusion_proof(0, worst) for _ in range(n_ops)],
    )
    row("verify_inclusion", n_ops, check_inclusion)
    row(
        "consistency_proof(old, new), random past sizes",
        n_ops,
        lambda: [log.consistency_proof(old, new) for old, new in cons],
    )
    row("verify_consistency", n_ops, check_consistency)

    if log.root() != merkle.root_from_leaves(leaves):
        raise RuntimeError("MerkleLog root differs from the reference")
    return rows


def print_report(
    facts: dict[str, str], rows: list[tuple[str, float]], args: argparse.Namespace
) -> None:
    """The table."""
    print("machine")
    for k, v in facts.items():
        print(f"  {k:<13} {v}")
    print(
        f"\nworkload: {args.leaves:,} leaves, {args.ops:,} operations per proof row, "
        f"best of {args.repeats} runs, seed {SEED}\n"
    )
    raw = rows[0][1]
    print(f"{'measurement':<58} {'ops/s':>12} {'us/op':>9} {'raw hashes':>11}")
    print("-" * 93)
    for name, rate in rows:
        print(f"{name:<58} {rate:>12,.0f} {1e6 / rate:>9.2f} {raw / rate:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaves", type=int, default=100_000)
    p.add_argument("--ops", type=int, default=20_000, help="operations per root/proof row")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the best is reported")
    args = p.parse_args(argv)
    if args.leaves < 2 or args.ops < 1 or args.repeats < 1:
        p.error("need --leaves >= 2, --ops >= 1 and --repeats >= 1")
    facts = machine_facts()
    try:
        rows = run(args.leaves, args.ops, args.repeats)
    except (merkle.ProofError, RuntimeError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print_report(facts, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
