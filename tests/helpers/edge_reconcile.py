"""Reconciling edges against the ledger after a fault: zero tokens lost, zero counted twice.

Reads each edge's outbox SQLite directly (what the Pi would hold after the fault and the drain):
the `outbox` table holds tokens still waiting for the cloud's receipt, the `proofs` table every
token the cloud confirmed (the outbox moves a token there on its receipt; proven ones are pruned
only after a month, far beyond a test). The ledger side is the aggregator's stored tokens. The
edge's minted set is both tables together; it must equal the stored set token for token and hash
for hash (a re-mint of an interval with other content would differ in its hash), with nothing left
unconfirmed, each device's stored chain unbroken (seq 1..N, each record's prev hash the record
before it) and no interval stored twice. Self-contained on purpose: the cloud-side reconciliation
lives elsewhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cloud.storage.store import Store, TokenRow
from protocol import cose
from protocol.reasons import RejectReason
from protocol.record import IntervalRecord


@dataclass(frozen=True, slots=True)
class EdgeTokens:
    """What one edge's outbox database says it minted."""

    device_id: str
    confirmed: dict[str, bytes]  # token id -> record hash, receipted by the cloud
    waiting: dict[str, bytes]  # token id -> record hash, still in the outbox (any status)
    chain_seq: int  # the chain state's seq: how many tokens this device has minted
    minted_counter: int

    @property
    def minted(self) -> dict[str, bytes]:
        """Every token the edge holds or held: confirmed and waiting."""
        return {**self.confirmed, **self.waiting}


def read_edge_outbox(path: Path, device_id: str) -> EdgeTokens:
    """The tokens of an edge outbox database (the agent must not be writing it)."""
    db = sqlite3.connect(path)
    try:
        confirmed = {
            str(t): bytes(h) for t, h in db.execute("SELECT token_id, record_hash FROM proofs")
        }
        waiting = {
            str(t): bytes(h) for t, h in db.execute("SELECT token_id, record_hash FROM outbox")
        }
        kv = dict(db.execute("SELECT key, value FROM kv"))
    finally:
        db.close()
    chain = json.loads(kv["chain"]) if "chain" in kv else {"seq": 0}
    overlap = set(confirmed) & set(waiting)
    assert not overlap, f"{device_id}: tokens both confirmed and waiting: {sorted(overlap)[:5]}"
    return EdgeTokens(
        device_id, confirmed, waiting, int(chain["seq"]), int(json.loads(kv.get("minted", "0")))
    )


@dataclass(slots=True)
class Reconciliation:
    """The counts a fault test prints and asserts on."""

    minted: int = 0
    stored: int = 0
    lost: int = 0  # minted by an edge, not stored in the ledger
    duplicated: int = 0  # stored for a slot (token id, seq or interval) another record holds
    unconfirmed: int = 0  # still waiting in an outbox
    foreign: int = 0  # stored, but no edge remembers minting it (a lost outbox write)
    gaps: int = 0  # tokens flagged GAP: missed intervals booked on the next one
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"minted {self.minted}, stored {self.stored}, lost {self.lost}, "
            f"duplicated {self.duplicated}, unconfirmed {self.unconfirmed}, "
            f"foreign {self.foreign}, gap-flagged {self.gaps}"
        )


async def stored_tokens(store: Store, device_id: str) -> list[TokenRow]:
    """Every token of the device in the ledger, by seq."""
    rows = await store.list_tokens(device_id=device_id, limit=1_000_000)
    return sorted(rows, key=lambda r: r.seq)


def _check_chain(device_id: str, rows: list[TokenRow], out: Reconciliation) -> None:
    seqs = [r.seq for r in rows]
    if seqs != list(range(1, len(rows) + 1)):
        out.problems.append(f"{device_id}: stored seqs are not 1..{len(rows)}: {seqs}")
    starts = Counter(r.interval_start for r in rows)
    twice = {s: n for s, n in starts.items() if n > 1}
    if twice:
        out.duplicated += sum(n - 1 for n in twice.values())
        out.problems.append(f"{device_id}: intervals stored twice: {twice}")
    ids = Counter(r.token_id for r in rows)
    out.duplicated += sum(n - 1 for n in ids.values() if n > 1)
    for a, b in zip(rows, rows[1:], strict=False):
        if b.prev_hash != a.record_hash:
            out.problems.append(f"{device_id}: seq {b.seq} does not chain to seq {a.seq}")
        if b.interval_start <= a.interval_start:
            out.problems.append(f"{device_id}: seq {b.seq} is not after seq {a.seq} in time")


def _check_energy(device_id: str, rows: list[TokenRow], out: Reconciliation) -> None:
    """Each token's generated energy is the rise of the meter's total since the token before:
    no energy lost or counted twice across the faults. A token after missed intervals must say
    so (GAP), since it books their energy."""
    recs: list[IntervalRecord] = [cose.open_record(r.envelope)[1] for r in rows]
    out.gaps += sum("GAP" in r.status for r in recs)
    for a, b in zip(recs, recs[1:], strict=False):
        rise = b.registers_wh[0] - a.registers_wh[0]
        if b.energy.generated_wh != rise:
            out.problems.append(
                f"{device_id}: seq {b.seq} books {b.energy.generated_wh} Wh, the meter rose "
                f"{rise} Wh since seq {a.seq}"
            )
        if b.interval_start - a.interval_start > b.interval_s and "GAP" not in b.status:
            out.problems.append(f"{device_id}: seq {b.seq} follows missed intervals unflagged")


async def reconcile_edges(
    store: Store, edges: dict[str, Path], *, check_energy: bool = True
) -> Reconciliation:
    """Reconcile each device's outbox (device id -> outbox path) with the ledger; see module doc.

    Returns the counts; `assert_reconciled` turns any discrepancy into a failure."""
    out = Reconciliation()
    for device_id, path in edges.items():
        edge = read_edge_outbox(path, device_id)
        rows = await stored_tokens(store, device_id)
        stored = {r.token_id: r.record_hash for r in rows}
        minted = edge.minted
        out.minted += len(minted)
        out.stored += len(rows)
        out.unconfirmed += len(edge.waiting)
        lost = set(minted) - set(stored)
        out.lost += len(lost)
        foreign = set(stored) - set(minted)
        out.foreign += len(foreign)
        differ = {t for t in set(minted) & set(stored) if minted[t] != stored[t]}
        out.duplicated += len(differ)  # the slot holds another record than the edge minted
        for what, ids in (("lost", lost), ("foreign", foreign), ("different content", differ)):
            if ids:
                out.problems.append(f"{device_id}: {what}: {sorted(ids)[:5]}")
        if edge.waiting:
            out.problems.append(f"{device_id}: unconfirmed: {sorted(edge.waiting)[:5]}")
        if edge.chain_seq != len(minted) or edge.minted_counter != len(minted):
            out.problems.append(
                f"{device_id}: chain seq {edge.chain_seq} and minted counter "
                f"{edge.minted_counter}, but {len(minted)} tokens in the outbox"
            )
        _check_chain(device_id, rows, out)
        if check_energy:
            _check_energy(device_id, rows, out)
    # A resend of a record the cloud holds ("replayed") and the retryable refusals (a record
    # that overtook a lost one, a storage hiccup) are part of recovering; anything else is not.
    refused = [
        r for r in await store.list_rejections(limit=100_000)
        if r.device_id in edges and r.reason != RejectReason.REPLAYED
        and not RejectReason(r.reason).retryable
    ]  # fmt: skip
    if refused:
        out.duplicated += sum(r.reason == "equivocation" for r in refused)
        out.problems.append(f"refused: {Counter(r.reason for r in refused)}")
    return out


def assert_reconciled(rec: Reconciliation, *, at_least: int = 1) -> None:
    """Zero lost, zero duplicated, nothing waiting, every check clean, and real traffic."""
    assert not rec.problems, f"{rec.summary()}; " + "; ".join(rec.problems)
    assert (rec.lost, rec.duplicated, rec.unconfirmed, rec.foreign) == (0, 0, 0, 0), rec.summary()
    assert rec.minted == rec.stored >= at_least, rec.summary()
