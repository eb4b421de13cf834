"""Reconciling what the edges minted with what the ledger stored, after a fault.

The edges' outboxes are the ground truth of what was minted: a token is committed there (with
the chain state) before anything is published, and it leaves the `outbox` table only when the
cloud's receipt says the cloud holds it (it then moves to `proofs`, kept for the ledger proof
check). So the union of both tables is every token ever minted, and `proofs` is every token
confirmed. The ledger database is what the cloud holds. Between them sit the broker and the
aggregator's counters; the broker keeps nothing of its own once every outbox is confirmed, so
if the two ends agree exactly, nothing was lost or doubled on the way.

`reconcile` asserts, and returns a report whose line the tests print, so that CI output shows
"minted N, stored N, lost 0, duplicated 0" for every fault scenario.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from cloud.services.ingest import IngestCounters
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from cloud.storage.tables import ledger_refs, rejections, tokens
from protocol.reasons import RejectReason

# Refusals a fault may cause without anything being wrong: a copy of a stored token (a resend or
# a redelivery), and a record that arrived before one it follows (lost in the broker, resent
# later). The edge keeps both kinds of token and tries again; any other refusal is a bug here.
HARMLESS_REFUSALS = frozenset({RejectReason.REPLAYED.value, RejectReason.SEQUENCE_GAP.value})


@dataclass(frozen=True, slots=True)
class OutboxBook:
    """What one edge's outbox says: every token it minted and which the cloud confirmed."""

    path: Path
    minted: dict[str, bytes]  # token id -> record hash
    confirmed: frozenset[str]
    waiting: frozenset[str]  # pending or sent, no receipt yet
    refused: dict[str, str]  # token id -> reason of a permanent refusal
    minted_counter: int
    chain_seq: int


def read_outbox(path: Path) -> OutboxBook:
    """Read an edge's outbox file (read-only; the agent may still have it open, WAL mode)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT token_id, record_hash, status, reason FROM outbox").fetchall()
        proofs = db.execute("SELECT token_id, record_hash FROM proofs").fetchall()
        kv = dict(db.execute("SELECT key, value FROM kv").fetchall())
    finally:
        db.close()
    minted = {str(t): bytes(h) for t, h, _s, _r in rows}
    minted.update({str(t): bytes(h) for t, h in proofs})
    chain = json.loads(kv["chain"]) if "chain" in kv else {"seq": 0}
    return OutboxBook(
        path=path,
        minted=minted,
        confirmed=frozenset(str(t) for t, _h in proofs),
        waiting=frozenset(str(t) for t, _h, s, _r in rows if s in ("pending", "sent")),
        refused={str(t): str(r) for t, _h, s, r in rows if s == "rejected"},
        minted_counter=int(json.loads(kv.get("minted", "0"))),
        chain_seq=int(chain["seq"]),
    )


@dataclass(frozen=True, slots=True)
class LedgerBook:
    """What the cloud's database holds: stored tokens and the refusals it recorded."""

    token_ids: list[str]  # one entry per stored row
    record_hashes: dict[str, bytes]  # token id -> record hash
    device_seqs: list[tuple[str, int]]
    refusals: Counter[str]
    refused_hashes: dict[str, list[bytes]]  # reason -> SHA-256 of each refused message
    in_log: list[str]  # token ids the Merkle log's closed intervals minted (one row each)
    late: int  # stored tokens of a closed interval that its close left out


async def read_ledger(database_url: str) -> LedgerBook:
    """Read every stored token and refusal, on a connection of its own."""
    store = await Store.connect(database_url)
    try:
        async with store.engine.connect() as conn:
            t = tokens.c
            stored = (
                await conn.execute(select(t.token_id, t.record_hash, t.device_id, t.seq))
            ).all()
            refused = (await conn.execute(select(rejections.c.reason, rejections.c.sha256))).all()
            in_log = (await conn.execute(select(ledger_refs.c.token_id))).scalars().all()
        late = await LedgerStore(store.engine).late_records()
    finally:
        await store.close()
    hashes: dict[str, list[bytes]] = {}
    for reason, sha in refused:
        hashes.setdefault(str(reason), []).append(bytes(sha))
    return LedgerBook(
        token_ids=[str(r[0]) for r in stored],
        record_hashes={str(r[0]): bytes(r[1]) for r in stored},
        device_seqs=[(str(r[2]), int(r[3])) for r in stored],
        refusals=Counter(str(r[0]) for r in refused),
        refused_hashes=hashes,
        in_log=[str(t) for t in in_log],
        late=late,
    )


@dataclass(slots=True)
class Reconciliation:
    """The numbers of one reconciliation (all of them checked by `reconcile`)."""

    edges: int
    minted: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int  # stored but never minted by these edges
    confirmed: int
    unconfirmed: int
    answered_as_duplicates: int  # copies refused as `replayed`: resends and redeliveries
    other_refusals: dict[str, int] = field(default_factory=dict)
    in_log: int = 0  # minted into the Merkle log by the intervals closed so far
    storage_errors: int = 0
    uncounted: int = 0  # rows written whose answer was lost (see `reconcile`)

    def line(self) -> str:
        """One line for the test's output."""
        extra = "".join(f", {k} {v}" for k, v in sorted(self.other_refusals.items()))
        source = f"{self.edges} edges; confirmed {self.confirmed}" if self.edges else "no outbox"
        return (
            f"minted {self.minted}, stored {self.stored}, lost {self.lost}, "
            f"duplicated {self.duplicated} ({source}, "
            f"copies answered as duplicates {self.answered_as_duplicates}{extra}, "
            f"storage_error answers {self.storage_errors}, written unanswered {self.uncounted}; "
            f"in the Merkle log {self.in_log})"
        )


async def reconcile(
    database_url: str,
    outboxes: Iterable[Path] = (),
    *,
    minted: Mapping[str, bytes] | None = None,
    counters: Iterable[IngestCounters] = (),
) -> Reconciliation:
    """Check the ledger against the edges; AssertionError naming the first discrepancy.

    `outboxes`: the edges' outbox files (the usual case). `minted`: token id -> record hash of
    tokens published by a test's own publisher instead (no outbox, so no confirmations to
    check). `counters`: the ingest counters of every aggregator (or worker pool) that ran on
    this database since it was created; their sums must match what the database holds.
    """
    books = [read_outbox(p) for p in outboxes]
    expected: dict[str, bytes] = dict(minted or {})
    for book in books:
        # The outbox's own bookkeeping agrees with its rows: nothing minted went missing on
        # the edge itself (the chain's seq counts every token since the first).
        assert len(book.minted) == book.minted_counter == book.chain_seq, (
            f"{book.path}: {len(book.minted)} tokens, counter {book.minted_counter}, "
            f"chain seq {book.chain_seq}"
        )
        assert not book.refused, f"{book.path}: permanently refused {book.refused}"
        overlap = expected.keys() & book.minted.keys()
        assert not overlap, f"token ids minted by two edges: {sorted(overlap)[:5]}"
        expected.update(book.minted)

    ledger = await read_ledger(database_url)
    stored_ids = Counter(ledger.token_ids)
    doubled = {t: n for t, n in stored_ids.items() if n > 1}
    doubled_slots = {s: n for s, n in Counter(ledger.device_seqs).items() if n > 1}
    lost = sorted(expected.keys() - stored_ids.keys())
    unexpected = sorted(stored_ids.keys() - expected.keys())
    wrong_bytes = sorted(
        t for t in expected.keys() & stored_ids.keys() if ledger.record_hashes[t] != expected[t]
    )
    confirmed = sum(len(b.confirmed) for b in books)
    unconfirmed = sorted(t for b in books for t in b.waiting)
    stored_hashes = set(ledger.record_hashes.values())
    copies = ledger.refused_hashes.get(RejectReason.REPLAYED.value, [])
    other = {r: n for r, n in ledger.refusals.items() if r != RejectReason.REPLAYED.value}
    report = Reconciliation(
        edges=len(books),
        minted=len(expected),
        stored=len(ledger.token_ids),
        lost=len(lost),
        duplicated=sum(n - 1 for n in [*doubled.values(), *doubled_slots.values()]),
        unexpected=len(unexpected),
        confirmed=confirmed,
        unconfirmed=len(unconfirmed),
        answered_as_duplicates=len(copies),
        other_refusals=other,
        in_log=len(ledger.in_log),
    )
    counters = list(counters)
    report.storage_errors = sum(c.storage_errors for c in counters)

    assert not lost, f"{len(lost)} minted token(s) not in the ledger: {lost[:5]}"
    assert not doubled and not doubled_slots, f"stored twice: {doubled or doubled_slots}"
    assert not unexpected, f"stored but never minted: {unexpected[:5]}"
    assert not wrong_bytes, f"stored with other bytes than minted: {wrong_bytes[:5]}"
    assert report.stored == report.minted
    # The signed log: every token its closed intervals minted is a stored one, none twice, and
    # no close left out a token of its interval (a fault must not make a token miss its close;
    # the intervals still open, waiting for a site's other device, close later).
    twice_in_log = [t for t, n in Counter(ledger.in_log).items() if n > 1]
    assert not twice_in_log, f"minted twice into the log: {twice_in_log[:5]}"
    assert set(ledger.in_log) <= stored_ids.keys(), "the log minted a token that is not stored"
    assert ledger.late == 0, f"{ledger.late} token(s) arrived after their interval closed"
    if books:
        assert not unconfirmed, f"{len(unconfirmed)} token(s) still wait for a receipt"
        assert confirmed == report.minted, (confirmed, report.minted)
    # Every refusal is one a fault may cause harmlessly, and every copy refused as `replayed`
    # is a copy of a stored token: answered as a duplicate, never stored a second time.
    assert set(ledger.refusals) <= HARMLESS_REFUSALS, dict(ledger.refusals)
    assert set(copies) <= stored_hashes, "a message refused as replayed is not a stored token"
    if counters:
        # The aggregators counted what they wrote, never more: one accepted per stored token,
        # one refusal per refusal row. They may count less only where a write succeeded but
        # its answer was lost (a COMMIT whose reply died with a terminated connection, a worker
        # killed between its commit and its reply): that message was answered storage_error,
        # its redelivery was refused as a copy, and the counters saw only those two.
        accepted = sum(c.accepted for c in counters)
        refused: Counter[str] = Counter()
        for c in counters:
            refused.update(c.rejected)
        unseen = report.stored - accepted + sum((ledger.refusals - refused).values())
        assert accepted <= report.stored, f"counted {accepted} accepted, stored {report.stored}"
        assert not refused - ledger.refusals, (dict(refused), dict(ledger.refusals))
        assert unseen <= report.storage_errors, (
            f"{unseen} stored row(s) the counters never saw, only "
            f"{report.storage_errors} storage_error answer(s) to explain them"
        )
        report.uncounted = unseen
    return report
