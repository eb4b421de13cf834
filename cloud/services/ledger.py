"""The ledger service: closes intervals into ledger entries, logs them, signs checkpoints.

Owns: when a site's interval is closed (every approved device of the site delivered it, so an
outage backlog closes as it arrives; or a silent device was waited for `max_wait_s`), turning the
stored records into `rules.ledger` entries, appending them as leaves of the Merkle log, signing a
checkpoint after every round of closes and publishing it (retained MQTT topic; HTTP reads it
from storage).

The rules are the pure `rules.ledger`; this module only feeds them and stores what
they decide. At start-up the engine state is rebuilt by replaying every stored entry with the
same rules the independent verifier uses, so a corrupted log stops the service instead of
being extended.

Known limit: one close per (site, interval). A record that arrives after its interval was closed
(a device silent for longer than `max_wait_s`, or approved after its site's intervals closed)
stays stored and counted (`late_records`) but is not minted; see docs/tokens.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.pki import write_private_key
from cloud.storage.ledger_store import LeafRow, LedgerStore, StoredCheckpoint
from cloud.storage.unit_of_work import UnitOfWork
from protocol import cose, merkle
from protocol.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf, decode_leaf
from rules.ledger import (
    PERMILLE,
    BatteryParams,
    Entry,
    EntryKind,
    IntervalFlows,
    LedgerEngine,
    LedgerRuleError,
    Pool,
    RecordFlows,
    replay,
)

log = logging.getLogger(__name__)

Publish = Callable[[bytes], Awaitable[None]]


class PipelineAborted(RuntimeError):
    """A staged append was not written because an earlier one failed."""


@dataclass(frozen=True, slots=True)
class StagedAppend:
    """Entries decided by `LedgerService.stage`, and their write in progress."""

    entries: list[Entry]
    write: asyncio.Future[None] | None

    async def committed(self) -> list[Entry]:
        """Wait until the entries are stored (raises what the write raised)."""
        if self.write is not None:
            await asyncio.shield(self.write)
        return self.entries


class NotSequencerError(RuntimeError):
    """This process is a standby: another aggregator process holds the sequencer lock and is
    the ledger's one writer (see cloud.storage.sequencer_lock)."""

    def __init__(self) -> None:
        super().__init__(
            "this aggregator process is a standby, not the ledger sequencer: "
            "send ledger writes to the process whose /healthz says sequencer true"
        )


class LedgerCorrupted(RuntimeError):
    """The stored log does not replay: the service refuses to extend it."""


@dataclass(frozen=True, slots=True)
class ClosedInterval:
    """One interval's decided entries, as leaves and record references, not yet stored."""

    site_id: str
    interval_start: int
    rows: list[LeafRow]
    refs: list[tuple[bytes, str, int]]
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Proof:
    """Inclusion of one token's minting entry in the log, against a signed checkpoint."""

    token_id: str
    record_hash: bytes
    leaf_index: int
    leaf: bytes
    tree_size: int
    path: list[bytes]
    checkpoint: str


@dataclass(frozen=True, slots=True)
class LeafProof:
    """Inclusion of one log leaf (any entry, e.g. an order event) in a signed checkpoint."""

    leaf_index: int
    leaf: bytes
    tree_size: int
    path: list[bytes]
    checkpoint: str


def leaf_for(entry: Entry) -> LedgerLeaf:
    """The log leaf of an entry: its bytes and the record hashes it accounts for."""
    return LedgerLeaf(entry.seq, tuple(r.record_hash for r in entry.refs), entry.to_bytes())


class LedgerService:
    """One ledger log on one database."""

    def __init__(
        self,
        store: LedgerStore,
        key: Ed25519PrivateKey,
        origin: str,
        now: Callable[[], float],
        *,
        grace_s: int = 60,
        max_wait_s: int = 24 * 3600,
        lookback_s: int = 8 * 24 * 3600,
        battery: Callable[[str], BatteryParams | None] = lambda _site: None,
        registered_batteries: Callable[[], Awaitable[dict[str, BatteryParams]]] | None = None,
        publish: Publish | None = None,
    ):
        self.store = store
        self.key = key
        self.origin = origin
        self.now = now
        self.grace_s = grace_s  # the least wait after an interval's end
        self.max_wait_s = max(max_wait_s, grace_s)  # the most, for a site with a silent device
        # Records older than the ingest backfill window cannot arrive, so older intervals are
        # not looked for; the default is a day more than ingest's default window.
        self.lookback_s = lookback_s
        self.battery = battery  # the default for a site without a registered battery
        self.registered_batteries = registered_batteries
        self._batteries: dict[str, BatteryParams] = {}
        self.publish = publish
        self.engine = LedgerEngine()
        self.log = merkle.MerkleLog()
        self._lock = asyncio.Lock()
        self._tail: asyncio.Future[None] | None = None  # the newest staged write
        self._broken = False  # a staged write failed after its entries were decided
        self.closed_intervals = 0
        self.appends = 0  # committed append() calls (a group commit counts once)
        self.minted_wh: dict[str, int] = {}  # per site, Tgen minted for generation
        # False in a standby process: only the process holding the sequencer lock writes.
        self.writable = True

    def _count_mints(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.kind == EntryKind.MINT_GEN:
                self.minted_wh[e.site] = self.minted_wh.get(e.site, 0) + e.gen_wh

    @property
    def public_key(self) -> bytes:
        """The raw Ed25519 key that signs checkpoints."""
        return cose.public_bytes(self.key.public_key())

    @property
    def verifier_key(self) -> str:
        """The C2SP verifier key string (name+keyid+key) devices and verifiers pin."""
        return verifier_key_string(self.origin, self.public_key)

    async def load(self) -> None:
        """Rebuild the engine and the Merkle log from storage, checking every entry."""
        rows = await self.store.leaves()
        entries: list[Entry] = []
        for row in rows:
            if merkle.leaf_hash(row.leaf) != row.leaf_hash:
                raise LedgerCorrupted(f"entry {row.seq}: stored leaf hash does not match")
            try:
                entries.append(Entry.from_bytes(decode_leaf(row.leaf).entry))
            except ValueError as exc:
                raise LedgerCorrupted(f"entry {row.seq}: {exc}") from None
        try:
            state = replay(entries)
        except LedgerRuleError as exc:
            raise LedgerCorrupted(f"entry {exc.index}: {exc}") from None
        self.engine = LedgerEngine()
        self.engine.state = state
        self.engine.entries = entries
        self.minted_wh = {}
        self._count_mints(entries)
        self.log = merkle.MerkleLog(r.leaf_hash for r in rows)
        latest = await self.store.latest_checkpoint()
        if latest is not None and (
            latest.size > self.log.size or self.log.root(latest.size) != latest.root
        ):
            raise LedgerCorrupted(
                f"checkpoint of size {latest.size} does not match the stored entries"
            )

    async def close_due(self, limit: int = 2000) -> int:
        """Close every interval that is complete or has waited long enough; returns how many.

        Complete: every approved device of the site that was sending by then has delivered its
        record for it (a device sends in order, so a backlog after an outage closes interval
        by interval as it arrives). Waited long enough: `max_wait_s` after its end; a device
        still silent then is late, and its record will be counted but not minted.

        The due intervals' records are read in one query and their entries written in one
        transaction (storage is most of the cost of a close; see benchmarks/RESULTS.md).
        """
        self._check_writable()
        async with self._lock:
            await self._settle_pipeline()  # interval entries follow every staged append
            now = int(self.now())
            candidates = await self.store.open_intervals(
                now - self.grace_s, since=now - self.grace_s - self.lookback_s
            )
            if not candidates:
                return 0
            spans = await self.store.device_spans()

            def expected(site_id: str, t: int) -> int:
                # A device is expected from its first record on, until it has been silent for
                # max_wait_s: a Pi taken away without being revoked delays its site only once.
                return sum(
                    1
                    for first, last in spans.get(site_id, [])
                    if first <= t <= last + self.max_wait_s
                )

            due = [
                c
                for c in candidates
                if c.devices >= expected(c.site_id, c.interval_start)
                or c.interval_start + c.interval_s <= now - self.max_wait_s
            ][:limit]
            if not due:
                return 0
            if self.registered_batteries is not None:
                self._batteries = await self.registered_batteries()
            records = await self.store.records_of([(c.site_id, c.interval_start) for c in due])
            written = 0
            batch: list[ClosedInterval] = []
            for c in due:
                recs = records.get((c.site_id, c.interval_start), [])
                if not recs:
                    continue
                try:
                    batch.append(self._decide(c.site_id, c.interval_start, recs))
                except LedgerRuleError as exc:
                    # The rules refused this interval (not expected for stored, verified
                    # records): keep what was decided before it, rebuild the engine from the
                    # stored log, and leave this interval open for an operator.
                    log.error("ledger: cannot close %s/%s: %s", c.site_id, c.interval_start, exc)
                    written += await self._write(batch)
                    batch = []
                    await self.load()
            written += await self._write(batch)
            if written:
                await self._checkpoint()
            return written

    def _decide(
        self, site_id: str, interval_start: int, records: list[RecordFlows]
    ) -> ClosedInterval:
        """Run the rules for one interval (LedgerRuleError if they refuse it)."""
        flows = IntervalFlows.from_flows(records)
        battery = self._batteries.get(site_id) or self.battery(site_id)
        result = self.engine.close_interval(site_id, flows, battery)
        rows = [_leaf_row(e) for e in result.entries]
        refs = [(r.record_hash, r.token_id, e.seq) for e in result.entries for r in e.refs]
        return ClosedInterval(site_id, interval_start, rows, refs, list(result.entries))

    async def _write(self, batch: list[ClosedInterval]) -> int:
        """Store decided intervals in one transaction, then extend the in-memory log."""
        if not batch:
            return 0
        try:
            await self.store.append_intervals(
                [(b.site_id, b.interval_start, b.rows, b.refs) for b in batch]
            )
        except Exception:
            # Storage failed: the engine must not run ahead of the stored log.
            await self.load()
            raise
        for b in batch:
            for row in b.rows:
                self.log.append(row.leaf_hash)
            self._count_mints(b.entries)
        self.closed_intervals += len(batch)
        return len(batch)

    async def append(
        self,
        decide: Callable[[LedgerEngine], Sequence[Entry]],
        also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    ) -> list[Entry]:
        """The ledger's append API for entries that are not an interval close (market leaves,
        settlements): `decide` emits entries through the engine, under the ledger's lock so
        sequence numbers are the log's; they are written with `also`'s rows in one unit of
        work. On any failure nothing is stored and the engine is rebuilt from the stored log,
        so it never runs ahead of storage for long; the error is raised to the caller.

        No checkpoint is signed here: the close loop signs one when the log has grown
        (`checkpoint_if_grown`), so a burst of orders costs one signature, not one each.
        """
        staged = await self.stage(decide, also)
        try:
            return await staged.committed()
        except Exception:
            await self.recover()
            raise

    async def stage(
        self,
        decide: Callable[[LedgerEngine], Sequence[Entry]],
        also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    ) -> StagedAppend:
        """The first half of `append`: decide under the lock and start the write, returning as
        soon as the entries are decided, so the caller can decide its next batch while this
        one is written (a group commit pipeline: CPU and the database overlap). Writes commit
        in decision order, each after the one before it; if one fails, every later one fails
        unwritten and the next `stage` rebuilds the engine from the stored log."""
        self._check_writable()
        async with self._lock:
            if self._broken:  # an earlier staged write failed: rebuild before deciding on
                await self._settle_pipeline()
            try:
                entries = list(decide(self.engine))
            except Exception:
                # `decide` may have emitted some entries: rebuild once the writes in flight
                # (decided before it, so stored before it) are done.
                self._broken = True
                await self._settle_pipeline()
                raise
            if not entries:
                return StagedAppend(entries, None)
            rows = [_leaf_row(e) for e in entries]
            refs = [(r.record_hash, r.token_id, e.seq) for e in entries for r in e.refs]
            write = asyncio.ensure_future(self._write_staged(self._tail, entries, rows, refs, also))
            self._tail = write
            return StagedAppend(entries, write)

    async def _write_staged(
        self,
        before: asyncio.Future[None] | None,
        entries: list[Entry],
        rows: list[LeafRow],
        refs: list[tuple[bytes, str, int]],
        also: Callable[[AsyncConnection], Awaitable[None]] | None,
    ) -> None:
        if before is not None:
            try:
                await asyncio.shield(before)
            except BaseException:
                # The earlier write failed, or this task was cancelled while waiting for it:
                # either way these entries are decided and will not be written.
                self._broken = True
                raise PipelineAborted("an earlier ledger write failed; nothing stored") from None
        try:
            async with UnitOfWork(self.store.engine) as conn:
                await self.store.write_entries(conn, rows, refs)
                if also is not None:
                    await also(conn)
        except BaseException:
            self._broken = True  # the engine ran ahead of storage: rebuilt at the next stage
            raise
        for row in rows:
            self.log.append(row.leaf_hash)
        self._count_mints(entries)
        self.appends += 1

    async def _settle_pipeline(self) -> None:
        """Under the lock: wait for staged writes, and rebuild the engine if one failed."""
        tail, self._tail = self._tail, None
        if tail is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(tail)
        if self._broken:
            await self.load()
            self._broken = False

    def _check_writable(self) -> None:
        if not self.writable:
            raise NotSequencerError()

    async def recover(self) -> None:
        """Wait for staged writes and, if one failed, rebuild the engine from storage."""
        async with self._lock:
            await self._settle_pipeline()

    async def checkpoint_if_grown(self) -> StoredCheckpoint | None:
        """Sign a checkpoint when entries were appended since the newest one."""
        self._check_writable()
        async with self._lock:
            await self._settle_pipeline()
            latest = await self.store.latest_checkpoint()
            if self.log.size == 0 or (latest is not None and latest.size >= self.log.size):
                return None
            return await self._checkpoint()

    async def _checkpoint(self) -> StoredCheckpoint:
        size = self.log.size
        root = self.log.root(size)
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.origin, self.key)
        cp = StoredCheckpoint(size, root, note.decode(), int(self.now() * 1000))
        await self.store.add_checkpoint(cp)
        if self.publish is not None:
            try:
                await self.publish(note)
            except Exception as exc:  # the checkpoint is stored; HTTP still serves it
                log.warning("publishing checkpoint %s failed: %s", size, exc)
        return cp

    async def proof_for_token(self, token_id: str, size: int | None = None) -> Proof | None:
        """Inclusion proof of the entry that minted `token_id`, against a stored checkpoint
        (the latest, or the one of `size`); None if the token is not in the log yet."""
        return (await self.proofs_for_tokens([token_id], size)).get(token_id)

    async def proofs_for_tokens(
        self, token_ids: list[str], size: int | None = None
    ) -> dict[str, Proof]:
        """Inclusion proofs of several tokens against one checkpoint, in three queries; tokens
        not (yet) in a checkpointed entry are left out."""
        cp = (
            await self.store.latest_checkpoint()
            if size is None
            else await self.store.checkpoint_of_size(size)
        )
        if cp is None:
            return {}
        found = {
            t: (seq, h)
            for t, (seq, h) in (await self.store.seqs_of_tokens(token_ids)).items()
            if seq < cp.size
        }
        leaves = await self.store.leaves_at(sorted({seq for seq, _ in found.values()}))
        return {
            t: Proof(
                t, h, seq, leaves[seq], cp.size, self.log.inclusion_proof(seq, cp.size), cp.note
            )
            for t, (seq, h) in found.items()
        }

    async def proofs_for_seqs(self, seqs: list[int]) -> dict[int, LeafProof]:
        """Inclusion proofs of log leaves by position, against the latest checkpoint; leaves
        not covered by a checkpoint yet are left out."""
        cp = await self.store.latest_checkpoint()
        if cp is None:
            return {}
        wanted = sorted({s for s in seqs if 0 <= s < cp.size})
        leaves = await self.store.leaves_at(wanted)
        return {
            s: LeafProof(s, leaves[s], cp.size, self.log.inclusion_proof(s, cp.size), cp.note)
            for s in wanted
            if s in leaves
        }

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two sizes of the log."""
        return self.log.consistency_proof(old_size, new_size)

    def battery_state(self, site_id: str) -> tuple[int, int]:
        """A site's battery as the ledger sees it: (stored Wh, usable capacity Wh).

        Stored is the remaining Tstorage of the site (green energy in the battery); capacity the
        registered battery's usable capacity times its state of health, 0 without a battery."""
        stored = sum(w for _, w in self.engine.state.lots_of(site_id, Pool.TSTORAGE))
        battery = self._batteries.get(site_id) or self.battery(site_id)
        if battery is None:
            return stored, 0
        return stored, battery.usable_capacity_wh * battery.soh_permille // PERMILLE


def _leaf_row(e: Entry) -> LeafRow:
    leaf = leaf_for(e).encode()
    return LeafRow(e.seq, e.site, e.interval_start, int(e.kind), leaf, merkle.leaf_hash(leaf))


def default_ledger_key_path(database_url: str, configured: Path | None) -> Path | None:
    """Where the checkpoint key lives: as configured, else next to a SQLite database file."""
    if configured is not None:
        return configured
    u = make_url(database_url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database + ".ledger-key")
    return None


def default_origin(deployment: str, configured: str = "") -> str:
    """The log's name (checkpoint origin and signing key name)."""
    return configured or f"gridmint/{deployment}/ledger"


def load_or_create_ledger_key(path: Path) -> Ed25519PrivateKey:
    """The aggregator's checkpoint signing key (PKCS#8 PEM, mode 0600), created if missing."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise OSError(f"{path} is readable by others; run: chmod 600 {path}")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise OSError(f"{path} does not hold an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    write_private_key(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key
