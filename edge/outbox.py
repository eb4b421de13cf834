"""The edge's durable outbox and state: SQLite in WAL mode through aiosqlite.

Owns: storing every minted token together with the chain and accounting state in one transaction,
before anything is published, and dropping a token only when the cloud's receipt says it holds
it. Counters (minted, delivered, confirmed, rejected) live beside them for status and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

from edge.accounting import AccountantState
from edge.minting import ChainState, MintedToken
from protocol.reasons import RejectReason

RATE_LIMITED = RejectReason.RATE_LIMITED.value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    token_id TEXT NOT NULL UNIQUE,
    record_hash BLOB NOT NULL UNIQUE,
    interval_start INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS proofs (
    token_id TEXT PRIMARY KEY,
    record_hash BLOB NOT NULL,
    interval_start INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'waiting',
    detail TEXT,
    checked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS dispatch (
    event_id TEXT PRIMARY KEY,
    modification INTEGER NOT NULL,
    digest BLOB NOT NULL,
    state TEXT,
    keep_until INTEGER NOT NULL DEFAULT 0
);
"""

# A confirmed token waits here until the ledger's inclusion proof for it has been checked.
PROOF_STATES = ("waiting", "proven", "failed")

COUNTERS = ("minted", "delivered", "confirmed", "rejected")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored token waiting for the cloud's receipt."""

    seq: int
    token_id: str
    record_hash: bytes
    envelope: bytes
    status: str
    attempts: int


P = ParamSpec("P")
R = TypeVar("R")


def _serialized(
    fn: Callable[Concatenate[Outbox, P], Awaitable[R]],
) -> Callable[Concatenate[Outbox, P], Awaitable[R]]:
    """Run one public operation at a time on the shared connection. aiosqlite serialises single
    calls, not sequences: another task's commit between a SELECT and its fetch fails with
    "cannot commit transaction - SQL statements in progress"."""

    @functools.wraps(fn)
    async def run(self: Outbox, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._lock:
            try:
                return await fn(self, *args, **kwargs)
            except Exception:
                # A write that failed half way (a full disk fails the statement, not always
                # the transaction) must not stay open for the next operation to commit.
                with contextlib.suppress(Exception):
                    if self._db.in_transaction:
                        await self._db.rollback()
                raise

    return run


class Outbox:
    """SQLite-backed outbox; open with `await Outbox.open(path)`."""

    def __init__(self, db: aiosqlite.Connection):
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Outbox:
        """Open (creating if needed) the outbox database."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        # FULL: a token the agent reported as minted must survive a power cut.
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(_SCHEMA)
        await db.commit()
        return cls(db)

    @_serialized
    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def _get(self, key: str) -> Any:
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else json.loads(row[0])

    async def _put(self, key: str, value: Any) -> None:
        await self._db.execute(
            "INSERT INTO kv(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    async def _bump(self, counter: str, by: int = 1) -> None:
        await self._put(counter, int(await self._get(counter) or 0) + by)

    @_serialized
    async def load_chain(self) -> ChainState:
        """The chain state after the last minted token."""
        return await self._load_chain()

    async def _load_chain(self) -> ChainState:
        data = await self._get("chain")
        if data is None:
            return ChainState()
        return ChainState(seq=data["seq"], boot=data["boot"], prev_hash=bytes.fromhex(data["prev"]))

    @_serialized
    async def start_boot(self) -> ChainState:
        """Count one more agent start in the chain state and return it."""
        chain = await self._load_chain()
        chain = ChainState(seq=chain.seq, boot=chain.boot + 1, prev_hash=chain.prev_hash)
        await self._put_chain(chain)
        await self._db.commit()
        return chain

    async def _put_chain(self, chain: ChainState) -> None:
        await self._put(
            "chain", {"seq": chain.seq, "boot": chain.boot, "prev": chain.prev_hash.hex()}
        )

    @_serialized
    async def load_accountant(self) -> AccountantState | None:
        """The interval accounting state, if any was saved."""
        data = await self._get("accountant")
        return None if data is None else AccountantState.from_json(data)

    @_serialized
    async def save_accountant(self, state: AccountantState) -> None:
        """Persist the accounting state alone (a boundary reading that closed nothing)."""
        await self._put("accountant", state.to_json())
        await self._db.commit()

    @_serialized
    async def commit_mint(self, token: MintedToken, state: AccountantState, now_ms: int) -> None:
        """Store a token, the chain after it and the accounting state in one transaction."""
        try:
            await self._db.execute(
                "INSERT INTO outbox(seq, token_id, record_hash, interval_start, envelope, "
                "created_ms) VALUES(?, ?, ?, ?, ?, ?)",
                (
                    token.record.seq,
                    token.token_id,
                    token.record_hash,
                    token.record.interval_start,
                    token.envelope,
                    now_ms,
                ),
            )
            await self._put_chain(token.next_chain)
            await self._put("accountant", state.to_json())
            await self._bump("minted")
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    @_serialized
    async def due(self, now_ms: int, resend_after_ms: int, limit: int = 100) -> list[OutboxRow]:
        """Tokens to publish now: never sent, or sent with no receipt for too long, oldest first."""
        async with self._db.execute(
            "SELECT seq, token_id, record_hash, envelope, status, attempts FROM outbox "
            "WHERE status = 'pending' OR (status = 'sent' AND sent_ms < ?) ORDER BY seq LIMIT ?",
            (now_ms - resend_after_ms, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], r[5]) for r in rows]

    async def mark_sent(self, record_hash: bytes, now_ms: int) -> None:
        """The broker acknowledged the token (PUBACK); see `mark_sent_many`."""
        await self.mark_sent_many([record_hash], now_ms)

    @_serialized
    async def mark_sent_many(self, record_hashes: list[bytes], now_ms: int) -> None:
        """The broker acknowledged these tokens (PUBACK), in one transaction (one fsync for a
        window of publishes, not one per token). The first PUBACK of a token counts it
        delivered, unless the cloud's receipt was handled first and counted it (see
        `_count_delivery`)."""
        first = 0
        for record_hash in record_hashes:
            async with self._db.execute(
                "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_ms = ? "
                "WHERE record_hash = ? AND status IN ('pending', 'sent') RETURNING attempts",
                (now_ms, record_hash),
            ) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] == 1:
                first += 1
        if first:
            await self._bump("delivered", first)
        await self._db.commit()

    async def confirm(self, record_hash: bytes) -> bool:
        """The cloud holds the token; see `confirm_many`. False if it was not here."""
        return await self.confirm_many([record_hash]) == 1

    @_serialized
    async def confirm_many(self, record_hashes: list[bytes]) -> int:
        """The cloud holds these tokens: drop them from the outbox (remembering each for the
        ledger proof check), in one transaction. Returns how many were here."""
        dropped = delivered = 0
        for record_hash in record_hashes:
            await self._db.execute(
                "INSERT OR IGNORE INTO proofs (token_id, record_hash, interval_start) "
                "SELECT token_id, record_hash, interval_start FROM outbox WHERE record_hash = ?",
                (record_hash,),
            )
            async with self._db.execute(
                "DELETE FROM outbox WHERE record_hash = ? RETURNING attempts", (record_hash,)
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                dropped += 1
                delivered += int(row[0]) == 0  # see _count_delivery
        if dropped:
            await self._bump("confirmed", dropped)
        if delivered:
            await self._bump("delivered", delivered)
        await self._db.commit()
        return dropped

    async def _count_delivery(self, attempts: int) -> None:
        """Count a token as delivered when the cloud's receipt for it is handled before the
        publisher marked it sent (attempts 0): the PUBACK and the receipt are handled by
        different tasks, so under load the receipt can win, and mark_sent then finds no row.
        A token is counted once, by whichever of the two comes first."""
        if attempts == 0:
            await self._bump("delivered")

    @_serialized
    async def reject(self, record_hash: bytes, reason: str, retry: bool, now_ms: int) -> None:
        """The cloud refused the token.

        A permanent refusal keeps the token, marked, for inspection. A retryable one (an earlier
        record has not arrived) queues every earlier unconfirmed token for sending again at once,
        and this one after the usual resend delay, so the chain is replayed in order. A
        `rate_limited` one (the device sent faster than the cloud's limit for it) only waits the
        resend delay: hurrying the earlier tokens would keep the device over its limit.
        """
        if retry and reason == RATE_LIMITED:
            await self._db.execute(
                "UPDATE outbox SET status = 'sent', sent_ms = ?, reason = ? "
                "WHERE record_hash = ? AND status IN ('pending', 'sent')",
                (now_ms, reason, record_hash),
            )
        elif retry:
            async with self._db.execute(
                "SELECT seq FROM outbox WHERE record_hash = ?", (record_hash,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return
            await self._db.execute(
                "UPDATE outbox SET status = 'pending' WHERE seq < ? AND status = 'sent'", (row[0],)
            )
            await self._db.execute(
                "UPDATE outbox SET status = 'sent', sent_ms = ?, reason = ? WHERE seq = ?",
                (now_ms, reason, row[0]),
            )
        else:
            async with self._db.execute(
                "UPDATE outbox SET status = 'rejected', reason = ? "
                "WHERE record_hash = ? AND status != 'rejected' RETURNING attempts",
                (reason, record_hash),
            ) as cur2:
                refused = await cur2.fetchone()
            if refused is not None:
                await self._bump("rejected")
                await self._count_delivery(int(refused[0]))
        await self._db.commit()

    @_serialized
    async def proofs_waiting(self, limit: int = 50) -> list[tuple[str, bytes]]:
        """(token id, record hash) of confirmed tokens whose ledger proof is not checked yet."""
        cur = await self._db.execute(
            "SELECT token_id, record_hash FROM proofs WHERE status = 'waiting' "
            "ORDER BY interval_start LIMIT ?",
            (limit,),
        )
        return [(str(r[0]), bytes(r[1])) for r in await cur.fetchall()]

    @_serialized
    async def mark_proof(self, token_id: str, status: str, detail: str, now_ms: int) -> None:
        """Record the outcome of a proof check."""
        if status not in PROOF_STATES:
            raise ValueError(f"unknown proof state {status!r}")
        await self._db.execute(
            "UPDATE proofs SET status = ?, detail = ?, checked_ms = ? WHERE token_id = ?",
            (status, detail, now_ms, token_id),
        )
        await self._db.commit()

    @_serialized
    async def prune_proofs(self, checked_before_ms: int) -> int:
        """Forget proven tokens checked before the cutoff (the SD card should not grow for
        ever); waiting and failed ones stay. Returns how many were removed."""
        cur = await self._db.execute(
            "DELETE FROM proofs WHERE status = 'proven' AND checked_ms < ?", (checked_before_ms,)
        )
        await self._db.commit()
        return int(cur.rowcount)

    @_serialized
    async def proof_counts(self) -> dict[str, int]:
        """How many confirmed tokens are waiting, proven, or failed their ledger proof."""
        cur = await self._db.execute("SELECT status, COUNT(*) FROM proofs GROUP BY status")
        found = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
        return {s: found.get(s, 0) for s in PROOF_STATES}

    @_serialized
    async def load_tree_head(self) -> tuple[int, bytes] | None:
        """The newest ledger checkpoint this device has verified (size, root)."""
        value = await self._get("ledger_tree_head")
        return None if value is None else (int(value[0]), bytes.fromhex(value[1]))

    @_serialized
    async def save_tree_head(self, size: int, root: bytes) -> None:
        """Remember a verified checkpoint, to check the next one extends it."""
        await self._put("ledger_tree_head", [size, root.hex()])
        await self._db.commit()

    @_serialized
    async def load_dispatch(self) -> list[tuple[str, int, bytes, str | None]]:
        """Every dispatch event the device remembers: (event id, last accepted modification,
        its payload digest, the runner's state of it as JSON or None)."""
        async with self._db.execute(
            "SELECT event_id, modification, digest, state FROM dispatch ORDER BY event_id"
        ) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), int(r[1]), bytes(r[2]), r[3]) for r in rows]

    @_serialized
    async def save_dispatch(self, rows: list[tuple[str, int, bytes, str | None, int]]) -> None:
        """Store dispatch events (event id, modification, digest, state, keep until), in one
        transaction; a row whose keep-until is 0 and state None is forgotten."""
        for event_id, modification, digest, state, keep_until in rows:
            if state is None and keep_until == 0:
                await self._db.execute("DELETE FROM dispatch WHERE event_id = ?", (event_id,))
                continue
            await self._db.execute(
                "INSERT INTO dispatch(event_id, modification, digest, state, keep_until) "
                "VALUES(?, ?, ?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET "
                "modification = excluded.modification, digest = excluded.digest, "
                "state = excluded.state, keep_until = excluded.keep_until",
                (event_id, modification, digest, state, keep_until),
            )
        await self._db.commit()

    @_serialized
    async def counters(self) -> dict[str, int]:
        """minted, delivered, confirmed, rejected and the number still waiting."""
        out = {c: int(await self._get(c) or 0) for c in COUNTERS}
        async with self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sent')"
        ) as cur:
            row = await cur.fetchone()
        out["waiting"] = int(row[0]) if row else 0
        return out
