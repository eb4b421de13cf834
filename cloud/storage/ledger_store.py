"""Storage of the token ledger: Merkle-log leaves, the records they cover, closed intervals and
signed checkpoints (migration 0005).

Owns: those tables and their queries. Append-only by construction: rows are inserted, never
updated or deleted; one transaction writes an interval's leaves, its record references and its
closed marker together, so a crash leaves either all of it or none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    func,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.domain.devices import DeviceStatus
from cloud.storage.bulk import insert_rows
from cloud.storage.tables import (
    device_keys,
    devices,
    ledger_checkpoints,
    ledger_entries,
    ledger_intervals,
    ledger_refs,
    tokens,
)
from cloud.storage.unit_of_work import UnitOfWork
from rules.ledger import RecordFlows


@dataclass(slots=True)  # not frozen: built per market leaf, and a frozen init costs 8x
class LeafRow:
    """One stored log leaf."""

    seq: int
    site_id: str
    interval_start: int
    kind: int
    leaf: bytes
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class OpenInterval:
    """A (site, interval) with accepted records of approved devices and no ledger close yet."""

    site_id: str
    interval_start: int
    interval_s: int
    devices: int  # how many devices delivered a record for it


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An accepted record as the ledger and the export need it."""

    token_id: str
    device_id: str
    site_id: str
    seq: int
    interval_start: int
    record_hash: bytes
    envelope: bytes


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    """A closed (site, interval): the energy of the records the ledger accounted for in it (Wh,
    summed over the site's devices), and the highest log index its close wrote."""

    site_id: str
    interval_start: int
    last_seq: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint."""

    size: int
    root: bytes
    note: str
    created_ms: int


class LedgerStore:
    """The ledger's tables on the aggregator's database."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def leaves(self, start: int = 0, limit: int | None = None) -> list[LeafRow]:
        """Leaves in log order from `start`."""
        q = select(ledger_entries).where(ledger_entries.c.seq >= start)
        q = q.order_by(ledger_entries.c.seq)
        if limit is not None:
            q = q.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            LeafRow(r.seq, r.site_id, r.interval_start, r.kind, bytes(r.leaf), bytes(r.leaf_hash))
            for r in rows
        ]

    async def size(self) -> int:
        """How many entries the stored log has (its sequence numbers are 0..size-1)."""
        async with self.engine.connect() as conn:
            top = (await conn.execute(select(func.max(ledger_entries.c.seq)))).scalar()
        return 0 if top is None else int(top) + 1

    async def open_intervals(self, ends_by: int, since: int = 0) -> list[OpenInterval]:
        """(site, interval) pairs with approved devices' records, ended by `ends_by`, not closed
        yet, oldest first, with how many devices delivered; only intervals starting at or after
        `since` (the ingest backfill window bounds what can still arrive, so the scan stays
        bounded as the tokens table grows)."""
        end = tokens.c.interval_start + tokens.c.interval_s
        q = (
            select(
                devices.c.site_id,
                tokens.c.interval_start,
                func.max(tokens.c.interval_s).label("interval_s"),
                func.count(func.distinct(tokens.c.device_id)).label("devices"),
            )
            .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
            .outerjoin(
                ledger_intervals,
                and_(
                    ledger_intervals.c.site_id == devices.c.site_id,
                    ledger_intervals.c.interval_start == tokens.c.interval_start,
                ),
            )
            .where(
                devices.c.status == DeviceStatus.APPROVED,
                tokens.c.interval_start >= since,
                end <= ends_by,
                ledger_intervals.c.site_id.is_(None),
            )
            .group_by(devices.c.site_id, tokens.c.interval_start)
            .order_by(tokens.c.interval_start, devices.c.site_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            OpenInterval(r.site_id, r.interval_start, int(r.interval_s), int(r.devices))
            for r in rows
        ]

    async def device_spans(self) -> dict[str, list[tuple[int, int]]]:
        """Per site, (first, last) interval start of each approved device that has sent records:
        between them (and for a while after the last) the site's intervals expect its record."""
        q = (
            select(
                devices.c.site_id,
                func.min(tokens.c.interval_start).label("first"),
                func.max(tokens.c.interval_start).label("last"),
            )
            .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
            .where(devices.c.status == DeviceStatus.APPROVED)
            .group_by(devices.c.site_id, devices.c.device_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out: dict[str, list[tuple[int, int]]] = {}
        for r in rows:
            out.setdefault(r.site_id, []).append((int(r.first), int(r.last)))
        return out

    async def records_of(
        self, intervals: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], list[RecordFlows]]:
        """Approved devices' records of several (site, interval) pairs, in one query: the
        columns ingest copied from each verified record, not the envelopes (closing an interval
        needs the flows only, and decoding every envelope again was most of its cost)."""
        wanted = set(intervals)
        if not wanted:
            return {}
        starts = sorted({t for _, t in wanted})
        sites_ = sorted({s for s, _ in wanted})
        t = tokens.c
        q = (
            select(
                t.token_id,
                t.record_hash,
                t.device_id,
                t.interval_start,
                t.interval_s,
                t.generated_wh,
                t.imported_wh,
                t.exported_wh,
                t.charged_wh,
                t.discharged_wh,
                t.soc_permille,
                t.tech,
                t.zone,
                devices.c.site_id,
            )
            .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
            .where(
                devices.c.status == DeviceStatus.APPROVED,
                tokens.c.interval_start >= starts[0],
                tokens.c.interval_start <= starts[-1],
                devices.c.site_id.in_(sites_),
            )
            .order_by(tokens.c.device_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out: dict[tuple[str, int], list[RecordFlows]] = {}
        for r in rows:
            key = (r.site_id, r.interval_start)
            if key in wanted:
                out.setdefault(key, []).append(
                    RecordFlows(
                        r.token_id,
                        bytes(r.record_hash),
                        r.device_id,
                        r.interval_start,
                        r.interval_s,
                        r.generated_wh,
                        r.imported_wh,
                        r.exported_wh,
                        r.charged_wh,
                        r.discharged_wh,
                        r.soc_permille,
                        r.tech,
                        r.zone,
                    )
                )
        return out

    async def append_intervals(
        self,
        batch: Sequence[tuple[str, int, Sequence[LeafRow], Sequence[tuple[bytes, str, int]]]],
        now_ms: int | None = None,
    ) -> None:
        """Write several closed intervals (leaves, references, closed markers) atomically."""
        if not batch:
            return
        if any(not rows for _, _, rows, _ in batch):
            raise ValueError("an interval close writes at least one entry")
        async with UnitOfWork(self.engine) as conn:
            await self.write_entries(
                conn,
                [row for _, _, rows, _ in batch for row in rows],
                [ref for _, _, _, rs in batch for ref in rs],
                now_ms,
            )
            await conn.execute(
                insert(ledger_intervals),
                [
                    {
                        "site_id": site,
                        "interval_start": start,
                        "first_seq": rows[0].seq,
                        "last_seq": rows[-1].seq,
                        "closed_ms": _ms(now_ms),
                    }
                    for site, start, rows, _ in batch
                ],
            )

    async def write_entries(
        self,
        conn: AsyncConnection,
        leaves: Sequence[LeafRow],
        refs: Sequence[tuple[bytes, str, int]] = (),
        now_ms: int | None = None,
    ) -> None:
        """Write log leaves (and the record references they account for) in the caller's
        unit of work: the ledger's append API, for entries of any shape."""
        if not leaves:
            return
        ms = _ms(now_ms)
        await insert_rows(
            conn,
            ledger_entries,
            ("seq", "site_id", "interval_start", "kind", "leaf", "leaf_hash", "created_ms"),
            [(r.seq, r.site_id, r.interval_start, r.kind, r.leaf, r.leaf_hash, ms) for r in leaves],
        )
        await insert_rows(conn, ledger_refs, ("record_hash", "token_id", "seq"), refs)

    async def closed_energy(self, after_seq: int, limit: int = 5000) -> list[IntervalEnergy]:
        """Closed intervals whose close wrote log entries past `after_seq`, in close order, with
        their energy per site. Only records the ledger accounted for (ledger_refs) count: a late
        record of an already closed interval is not in the ledger, so not in the series either.
        `last_seq` grows with every close, so it serves as the caller's watermark."""
        energy = [
            func.sum(getattr(tokens.c, f)).label(f)
            for f in ("generated_wh", "imported_wh", "exported_wh", "charged_wh", "discharged_wh")
        ]
        q = (
            select(
                ledger_intervals.c.site_id,
                ledger_intervals.c.interval_start,
                ledger_intervals.c.last_seq,
                *energy,
            )
            .select_from(
                ledger_intervals.join(devices, devices.c.site_id == ledger_intervals.c.site_id)
                .join(
                    tokens,
                    and_(
                        tokens.c.device_id == devices.c.device_id,
                        tokens.c.interval_start == ledger_intervals.c.interval_start,
                    ),
                )
                .join(ledger_refs, ledger_refs.c.record_hash == tokens.c.record_hash)
            )
            .where(ledger_intervals.c.last_seq > after_seq)
            .group_by(
                ledger_intervals.c.site_id,
                ledger_intervals.c.interval_start,
                ledger_intervals.c.last_seq,
            )
            .order_by(ledger_intervals.c.last_seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            IntervalEnergy(
                r.site_id,
                int(r.interval_start),
                int(r.last_seq),
                int(r.generated_wh),
                int(r.imported_wh),
                int(r.exported_wh),
                int(r.charged_wh),
                int(r.discharged_wh),
            )
            for r in rows
        ]

    async def late_records(self) -> int:
        """Approved devices' records that arrived after their interval was closed."""
        q = (
            select(func.count())
            .select_from(
                tokens.join(devices, tokens.c.device_id == devices.c.device_id)
                .join(
                    ledger_intervals,
                    and_(
                        ledger_intervals.c.site_id == devices.c.site_id,
                        ledger_intervals.c.interval_start == tokens.c.interval_start,
                    ),
                )
                .outerjoin(ledger_refs, ledger_refs.c.record_hash == tokens.c.record_hash)
            )
            .where(devices.c.status == DeviceStatus.APPROVED, ledger_refs.c.seq.is_(None))
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def seqs_of_tokens(self, token_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """For each token in the log: the index of the entry that minted it, and its record
        hash."""
        if not token_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(ledger_refs).where(ledger_refs.c.token_id.in_(list(token_ids)))
                )
            ).all()
        return {r.token_id: (int(r.seq), bytes(r.record_hash)) for r in rows}

    async def leaves_at(self, seqs: Sequence[int]) -> dict[int, bytes]:
        """The leaves at these log indexes."""
        if not seqs:
            return {}
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(ledger_entries.c.seq, ledger_entries.c.leaf).where(
                        ledger_entries.c.seq.in_(list(seqs))
                    )
                )
            ).all()
        return {int(r.seq): bytes(r.leaf) for r in rows}

    async def add_checkpoint(self, cp: StoredCheckpoint) -> None:
        """Store a signed checkpoint (one per size)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(ledger_checkpoints).values(
                    size=cp.size, root=cp.root, note=cp.note, created_ms=cp.created_ms
                )
            )

    async def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint, smallest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(ledger_checkpoints).order_by(ledger_checkpoints.c.size))
            ).all()
        return [StoredCheckpoint(r.size, bytes(r.root), r.note, r.created_ms) for r in rows]

    async def checkpoint_of_size(self, size: int) -> StoredCheckpoint | None:
        """The checkpoint signed at exactly `size` entries, if there is one."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(ledger_checkpoints).where(ledger_checkpoints.c.size == size)
                )
            ).first()
        return None if r is None else StoredCheckpoint(r.size, bytes(r.root), r.note, r.created_ms)

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The newest checkpoint."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(ledger_checkpoints).order_by(ledger_checkpoints.c.size.desc()).limit(1)
                )
            ).first()
        return None if r is None else StoredCheckpoint(r.size, bytes(r.root), r.note, r.created_ms)

    # export -------------------------------------------------------------------------------

    async def all_records(self) -> list[StoredRecord]:
        """Every accepted record, by device then seq."""
        q = (
            select(tokens, devices.c.site_id)
            .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
            .order_by(tokens.c.device_id, tokens.c.seq)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_record(r) for r in rows]

    async def records_of_tokens(self, token_ids: Sequence[str]) -> dict[str, StoredRecord]:
        """The accepted records of these tokens (a chain-of-custody report shows them)."""
        if not token_ids:
            return {}
        q = (
            select(tokens, devices.c.site_id)
            .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
            .where(tokens.c.token_id.in_(list(token_ids)))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {r.token_id: _record(r) for r in rows}

    async def device_keys(
        self, device_ids: Sequence[str] | None = None
    ) -> list[tuple[str, str, bytes, bytes, int, int | None]]:
        """(device, site, kid, public key, valid_from, valid_until) for every key (of these
        devices only, when given)."""
        q = (
            select(
                devices.c.device_id,
                devices.c.site_id,
                device_keys.c.kid,
                device_keys.c.public_key,
                device_keys.c.valid_from,
                device_keys.c.valid_until,
            )
            .select_from(devices.join(device_keys, device_keys.c.device_id == devices.c.device_id))
            .order_by(devices.c.device_id, device_keys.c.valid_from, device_keys.c.kid)
        )
        if device_ids is not None:
            q = q.where(devices.c.device_id.in_(list(device_ids)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            (r[0], r[1], bytes(r[2]), bytes(r[3]), int(r[4]), None if r[5] is None else int(r[5]))
            for r in rows
        ]


def _record(r: Any) -> StoredRecord:
    return StoredRecord(
        token_id=r.token_id,
        device_id=r.device_id,
        site_id=r.site_id,
        seq=r.seq,
        interval_start=r.interval_start,
        record_hash=bytes(r.record_hash),
        envelope=bytes(r.envelope),
    )


def _ms(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms
