"""The storage adapter: one async API over SQLite (embedded default) and PostgreSQL.

Owns: connections, migrations, and every query the aggregator makes. Callers pass and receive
plain dataclasses, never SQLAlchemy rows, so the services stay independent of the database.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ARRAY, any_, event, func, insert, literal, select, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cloud.domain.devices import DeviceStatus
from cloud.storage.tables import device_keys, devices, rejections, tokens

MIGRATIONS = Path(__file__).parent / "migrations"
# Rejected payloads are kept whole up to this size; beyond it, the head, size and hash.
KEEP_PAYLOAD_BYTES = 65536


class DuplicateTokenError(Exception):
    """A token with the same id, (device, seq) or record hash is already stored."""


class StorageUrlError(ValueError):
    """A database URL we cannot use."""


@dataclass(frozen=True, slots=True)
class EnergySums:
    """Energy in a period, summed over tokens (Wh)."""

    generated_wh: int = 0
    imported_wh: int = 0
    exported_wh: int = 0
    charged_wh: int = 0
    discharged_wh: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device."""

    device_id: str
    site_id: str
    status: DeviceStatus
    capacity_w: int
    zone: str


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's public signing key and its validity (Unix seconds)."""

    kid: bytes
    device_id: str
    public_key: bytes
    valid_from: int
    valid_until: int | None
    revoked_ms: int | None = None  # compromised: refused from then on, whatever the interval


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest accepted record of a device."""

    seq: int
    record_hash: bytes
    interval_start: int


@dataclass(frozen=True, slots=True)
class IngestKey:
    """What ingest looks up for one record: its device, key, bytes and slot."""

    device_id: str
    kid: bytes
    record_hash: bytes
    seq: int
    interval_start: int


@dataclass(frozen=True, slots=True)
class ChainTail:
    """The oldest accepted record of a device: the record before it is the one whose hash is
    `prev_hash`, should it arrive after the chain was anchored above it."""

    seq: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class IngestLookup:
    """What storage knows about a batch of records' devices, keys and chains (one round trip)."""

    devices: dict[str, Device]
    keys: dict[bytes, DeviceKey]
    stored_hashes: set[bytes]
    heads: dict[str, ChainHead]
    tails: dict[str, ChainTail]
    # (device, seq) and (device, interval start) slots that already hold a stored record.
    taken_seqs: set[tuple[str, int]]
    taken_intervals: set[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class NewRejection:
    """A refused message to store, with its reason."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_ms: int
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An accepted generation token."""

    token_id: str
    device_id: str
    seq: int
    boot: int
    interval_start: int
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    status: str
    quality: int
    record_hash: bytes
    prev_hash: bytes
    envelope: bytes
    received_ms: int
    soc_permille: int | None
    tech: str
    zone: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused message, as stored."""

    id: int
    received_ms: int
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """A device with its token totals, for the fleet table."""

    device: Device
    tokens: int
    generated_wh: int
    last_interval_start: int | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Ingest counters and per-interval generation."""

    accepted: int
    rejected_by_reason: dict[str, int]
    generated_wh: int
    per_interval_wh: list[tuple[int, int]]
    held: int = 0

    @property
    def rejected(self) -> int:
        """All refusals."""
        return sum(self.rejected_by_reason.values())


# PostgreSQL: each device's newest and oldest record through its (device_id, seq) index, and
# exactly the batch's (device, seq) and (device, interval) slots: index lookups whatever the
# table's size (a GROUP BY over the devices' rows read every row of them, per batch).
_PG_HEADS = text(
    "SELECT d.device_id, t.seq, t.record_hash, t.interval_start "
    "FROM unnest(CAST(:ids AS varchar[])) AS d(device_id) CROSS JOIN LATERAL ("
    " SELECT seq, record_hash, interval_start FROM tokens"
    " WHERE tokens.device_id = d.device_id ORDER BY seq DESC LIMIT 1) AS t"
)
_PG_TAILS = text(
    "SELECT d.device_id, t.seq, t.prev_hash "
    "FROM unnest(CAST(:ids AS varchar[])) AS d(device_id) CROSS JOIN LATERAL ("
    " SELECT seq, prev_hash FROM tokens"
    " WHERE tokens.device_id = d.device_id ORDER BY seq ASC LIMIT 1) AS t"
)
_PG_TAKEN = text(
    "SELECT t.device_id, t.seq, t.interval_start FROM tokens t"
    " JOIN unnest(CAST(:devs AS varchar[]), CAST(:seqs AS bigint[])) AS k(device_id, seq)"
    " ON t.device_id = k.device_id AND t.seq = k.seq "
    "UNION "
    "SELECT t.device_id, t.seq, t.interval_start FROM tokens t"
    " JOIN unnest(CAST(:devs AS varchar[]), CAST(:starts AS bigint[]))"
    " AS k(device_id, interval_start)"
    " ON t.device_id = k.device_id AND t.interval_start = k.interval_start"
)


async def _pg_chain_lookup(
    conn: AsyncConnection, keys: Sequence[IngestKey], device_ids: list[str]
) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    heads = (await conn.execute(_PG_HEADS, {"ids": device_ids})).all()
    tails = (await conn.execute(_PG_TAILS, {"ids": device_ids})).all()
    taken = (
        await conn.execute(
            _PG_TAKEN,
            {
                "devs": [k.device_id for k in keys],
                "seqs": [k.seq for k in keys],
                "starts": [k.interval_start for k in keys],
            },
        )
    ).all()
    return heads, tails, taken


def _in_list(column: Any, values: Sequence[Any]) -> Any:
    """`column IN (...)`: one bound parameter per value."""
    return column.in_(values)


def _any_of(column: Any, values: Sequence[Any]) -> Any:
    """`column = ANY(:array)` on PostgreSQL: one array parameter, so the statement's text is the
    same whatever the batch's size and asyncpg's prepared statement is reused (an IN list of a
    new length is a new statement for the server to parse and plan; that was most of the
    server's work per ingest batch)."""
    return column == any_(literal(list(values), ARRAY(column.type)))


def normalise_url(url: str) -> str:
    """Accept sqlite:///path and postgresql://... and pick the async drivers."""
    try:
        u = make_url(url)
    except Exception:
        raise StorageUrlError(f"database url {url!r} is not a URL") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        return str(u.set(drivername="sqlite+aiosqlite"))
    if backend == "postgresql":
        return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise StorageUrlError(f"database url {url!r}: only sqlite and postgresql are supported")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


# A pooled connection idle for longer than this is pinged before use; one back from use more
# recently is trusted (see _ping_idle_connections).
IDLE_PING_S = 1.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """SQLAlchemy's pool_pre_ping, for connections that sat idle only.

    The asyncpg dialect's pre-ping is three round trips (BEGIN, an empty query, ROLLBACK) on
    every checkout: under load that was as many round trips as the order's own transaction.
    The ping is for connections that died while idle (a restarted server, a dropped NAT
    entry); one back in the pool within IDLE_PING_S is used at once. If the server went away
    in that second, the first statement on it fails as a disconnect, which invalidates the
    whole pool as a failed ping does, and the caller's retry gets a fresh connection.
    """
    dialect = engine.sync_engine.dialect

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < IDLE_PING_S:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # dead: the pool replaces it (and its idle siblings)
            raise InvalidatePoolError(f"idle connection failed its ping: {exc}") from exc

    event.listen(engine.sync_engine, "checkin", checkin)
    event.listen(engine.sync_engine, "checkout", checkout)


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection outside any transaction, for one statement (a read that needs no
    snapshot beyond its own): one round trip instead of three (BEGIN, it, ROLLBACK)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


class Store:
    """Async storage; `await Store.connect(url)`, then `await store.migrate()`."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    async def connect(cls, url: str) -> Store:
        """Create the engine (and, for SQLite, the file's folder)."""
        full = normalise_url(url)
        u = make_url(full)
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(full)
        if u.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            _ping_idle_connections(engine)
        return cls(engine)

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema up to `revision` with Alembic."""

        def run(sync_conn: Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, revision)

        async with self.engine.begin() as conn:
            await conn.run_sync(run)

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()

    # devices and keys

    async def add_device(
        self,
        device_id: str,
        site_id: str,
        public_key: bytes,
        kid: bytes,
        capacity_w: int,
        zone: str = "",
        status: DeviceStatus = DeviceStatus.APPROVED,
        valid_from: int = 0,
    ) -> Device:
        """Register a device and its first key; re-registering the same key is a no-op."""
        now = int(time.time() * 1000)
        async with self.engine.begin() as conn:
            existing = (
                await conn.execute(select(devices).where(devices.c.device_id == device_id))
            ).first()
            if existing is None:
                await conn.execute(
                    insert(devices).values(
                        device_id=device_id,
                        site_id=site_id,
                        status=status,
                        capacity_w=capacity_w,
                        zone=zone,
                        created_ms=now,
                    )
                )
            key = (await conn.execute(select(device_keys).where(device_keys.c.kid == kid))).first()
            if key is None:
                await conn.execute(
                    insert(device_keys).values(
                        kid=kid,
                        device_id=device_id,
                        public_key=public_key,
                        valid_from=valid_from,
                        valid_until=None,
                    )
                )
            elif key.device_id != device_id:
                raise ValueError("this key is already registered to another device")
        dev = await self.get_device(device_id)
        assert dev is not None
        return dev

    async def get_device(self, device_id: str) -> Device | None:
        """Look up a device."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(devices).where(devices.c.device_id == device_id))
            ).first()
        return None if row is None else _device(row)

    async def get_key(self, kid: bytes) -> DeviceKey | None:
        """Look up a public key by key id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(device_keys).where(device_keys.c.kid == kid))).first()
        return None if row is None else _key(row)

    async def list_keys(self, device_id: str) -> list[DeviceKey]:
        """A device's keys, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(device_keys)
                    .where(device_keys.c.device_id == device_id)
                    # oldest first; within a second, the rotated-out key before its successor
                    .order_by(
                        device_keys.c.valid_from,
                        device_keys.c.valid_until.is_(None),
                        device_keys.c.kid,
                    )
                )
            ).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, device_id: str, kid: bytes, now_ms: int) -> DeviceKey:
        """Mark a device's key compromised (idempotent: the first revocation time stays).

        Raises KeyError if the key is not one of the device's.
        """
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(device_keys).where(device_keys.c.kid == kid))).first()
            if row is None or row.device_id != device_id:
                raise KeyError(f"key {kid.hex()} is not a key of {device_id!r}")
            if row.revoked_ms is None:
                await conn.execute(
                    update(device_keys).where(device_keys.c.kid == kid).values(revoked_ms=now_ms)
                )
        key = await self.get_key(kid)
        assert key is not None
        return key

    async def rotate_key(
        self,
        device_id: str,
        current_kid: bytes,
        new_public_key: bytes,
        new_kid: bytes,
        now_s: int,
        overlap_s: int,
    ) -> tuple[DeviceKey, DeviceKey]:
        """Make `new_public_key` the device's key from `now_s`; the current one retires after
        `overlap_s` (records of intervals ending by then still verify with it).

        Raises KeyError if the device or key is unknown, ValueError if the current key is not
        the device's live key or the new key is already registered.
        """
        async with self.engine.begin() as conn:
            current = (
                await conn.execute(select(device_keys).where(device_keys.c.kid == current_kid))
            ).first()
            if current is None or current.device_id != device_id:
                raise KeyError(f"key {current_kid.hex()} is not a key of {device_id!r}")
            # A key gets an end only by being rotated out: rotating from it again would fork
            # the device's key history (two successors of one key).
            if current.valid_until is not None:
                raise ValueError(f"key {current_kid.hex()} was already replaced")
            if current.revoked_ms is not None:
                raise ValueError(f"key {current_kid.hex()} is revoked")
            if (
                await conn.execute(select(device_keys.c.kid).where(device_keys.c.kid == new_kid))
            ).first() is not None:
                raise ValueError("the new key is already registered")
            until = now_s + overlap_s
            if current.valid_until is None or current.valid_until > until:
                await conn.execute(
                    update(device_keys)
                    .where(device_keys.c.kid == current_kid)
                    .values(valid_until=until)
                )
            await conn.execute(
                insert(device_keys).values(
                    kid=new_kid,
                    device_id=device_id,
                    public_key=new_public_key,
                    valid_from=now_s,
                    valid_until=None,
                )
            )
        old, new = await self.get_key(current_kid), await self.get_key(new_kid)
        assert old is not None
        assert new is not None
        return new, old

    async def list_devices(self) -> list[DeviceSummary]:
        """Every device with its token count, total generation and newest interval."""
        agg = (
            select(
                tokens.c.device_id,
                func.count().label("n"),
                func.coalesce(func.sum(tokens.c.generated_wh), 0).label("gen"),
                func.max(tokens.c.interval_start).label("last"),
            )
            .group_by(tokens.c.device_id)
            .subquery()
        )
        q = (
            select(devices, agg.c.n, agg.c.gen, agg.c.last)
            .select_from(devices.outerjoin(agg, agg.c.device_id == devices.c.device_id))
            .order_by(devices.c.site_id, devices.c.device_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [DeviceSummary(_device(r), int(r.n or 0), int(r.gen or 0), r.last) for r in rows]

    # tokens

    async def ingest_lookup(self, keys: list[IngestKey]) -> IngestLookup:
        """Everything ingest needs about a batch of records, read on one connection.

        Devices and keys by id, which record hashes are stored, each device's chain head and
        tail, and which (device, seq) and (device, interval) slots hold a record: six queries
        whatever the batch's size.
        """
        pg = self.engine.dialect.name == "postgresql"
        isin = _any_of if pg else _in_list
        device_ids = sorted({k.device_id for k in keys})
        kids = sorted({k.kid for k in keys})
        hashes = sorted({k.record_hash for k in keys})
        seqs = sorted({k.seq for k in keys})
        starts = sorted({k.interval_start for k in keys})
        newest = (
            select(tokens.c.device_id, func.max(tokens.c.seq).label("seq"))
            .where(isin(tokens.c.device_id, device_ids))
            .group_by(tokens.c.device_id)
            .subquery()
        )
        oldest = (
            select(tokens.c.device_id, func.min(tokens.c.seq).label("seq"))
            .where(isin(tokens.c.device_id, device_ids))
            .group_by(tokens.c.device_id)
            .subquery()
        )
        async with self.engine.connect() as conn:
            devs = (
                await conn.execute(select(devices).where(isin(devices.c.device_id, device_ids)))
            ).all()
            key_rows = (
                await conn.execute(select(device_keys).where(isin(device_keys.c.kid, kids)))
            ).all()
            stored = (
                await conn.execute(
                    select(tokens.c.record_hash).where(isin(tokens.c.record_hash, hashes))
                )
            ).all()
            if pg:
                heads, tails, taken = await _pg_chain_lookup(conn, keys, device_ids)
            else:
                heads = (
                    await conn.execute(
                        select(
                            tokens.c.device_id,
                            tokens.c.seq,
                            tokens.c.record_hash,
                            tokens.c.interval_start,
                        ).join(
                            newest,
                            (tokens.c.device_id == newest.c.device_id)
                            & (tokens.c.seq == newest.c.seq),
                        )
                    )
                ).all()
                tails = (
                    await conn.execute(
                        select(tokens.c.device_id, tokens.c.seq, tokens.c.prev_hash).join(
                            oldest,
                            (tokens.c.device_id == oldest.c.device_id)
                            & (tokens.c.seq == oldest.c.seq),
                        )
                    )
                ).all()
                taken = (
                    await conn.execute(
                        select(tokens.c.device_id, tokens.c.seq, tokens.c.interval_start).where(
                            isin(tokens.c.device_id, device_ids),
                            isin(tokens.c.seq, seqs) | isin(tokens.c.interval_start, starts),
                        )
                    )
                ).all()
        return IngestLookup(
            devices={d.device_id: _device(d) for d in devs},
            keys={bytes(k.kid): _key(k) for k in key_rows},
            stored_hashes={bytes(r.record_hash) for r in stored},
            heads={
                h.device_id: ChainHead(h.seq, bytes(h.record_hash), h.interval_start) for h in heads
            },
            tails={t.device_id: ChainTail(t.seq, bytes(t.prev_hash)) for t in tails},
            taken_seqs={(t.device_id, t.seq) for t in taken},
            taken_intervals={(t.device_id, t.interval_start) for t in taken},
        )

    async def store_ingested(self, rows: list[TokenRow], refused: list[NewRejection]) -> None:
        """Store a batch's accepted tokens and refusals in one transaction: all or none.

        Raises DuplicateTokenError if any token conflicts with a stored one (nothing is then
        written, and the caller retries the batch's messages one by one).
        """
        try:
            async with self.engine.begin() as conn:
                if rows:
                    await conn.execute(insert(tokens), [_asdict(r) for r in rows])
                if refused:
                    await conn.execute(insert(rejections), [_rejection_values(r) for r in refused])
        except IntegrityError:
            raise DuplicateTokenError(", ".join(r.token_id for r in rows)) from None

    async def chain_head(self, device_id: str) -> ChainHead | None:
        """The device's accepted record with the highest sequence number."""
        q = (
            select(tokens.c.seq, tokens.c.record_hash, tokens.c.interval_start)
            .where(tokens.c.device_id == device_id)
            .order_by(tokens.c.seq.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return (
            None if row is None else ChainHead(row.seq, bytes(row.record_hash), row.interval_start)
        )

    async def has_record(self, record_hash: bytes) -> bool:
        """True if a record with these exact bytes is stored."""
        q = select(tokens.c.token_id).where(tokens.c.record_hash == record_hash)
        async with self.engine.connect() as conn:
            return (await conn.execute(q)).first() is not None

    async def insert_token(self, row: TokenRow) -> None:
        """Store an accepted token; raises DuplicateTokenError on any uniqueness conflict."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(tokens).values(**_asdict(row)))
        except IntegrityError:
            raise DuplicateTokenError(row.token_id) from None

    async def list_tokens(
        self,
        device_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
        offset: int = 0,
        site_ids: list[str] | None = None,
    ) -> list[TokenRow]:
        """Accepted tokens, newest interval first; `since`/`until` bound the interval start.

        `site_ids` limits them to devices of those sites (None: every site).
        """
        q = select(tokens)
        if site_ids is not None:
            q = q.where(
                tokens.c.device_id.in_(
                    select(devices.c.device_id).where(devices.c.site_id.in_(site_ids))
                )
            )
        if device_id is not None:
            q = q.where(tokens.c.device_id == device_id)
        if since is not None:
            q = q.where(tokens.c.interval_start >= since)
        if until is not None:
            q = q.where(tokens.c.interval_start < until)
        q = (
            q.order_by(tokens.c.interval_start.desc(), tokens.c.device_id)
            .limit(limit)
            .offset(offset)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_token(r) for r in rows]

    async def energy_sums(self, site_ids: Sequence[str], since: int, until: int) -> EnergySums:
        """Wh summed over the tokens of these sites' devices whose interval starts in
        [since, until) (one query; a homeowner's "today" and "this month")."""
        c = tokens.c
        q = select(
            func.coalesce(func.sum(c.generated_wh), 0),
            func.coalesce(func.sum(c.imported_wh), 0),
            func.coalesce(func.sum(c.exported_wh), 0),
            func.coalesce(func.sum(c.charged_wh), 0),
            func.coalesce(func.sum(c.discharged_wh), 0),
            func.count(),
        ).where(
            c.device_id.in_(
                select(devices.c.device_id).where(devices.c.site_id.in_(list(site_ids)))
            ),
            c.interval_start >= since,
            c.interval_start < until,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).one()
        return EnergySums(*(int(v) for v in row))

    # rejections and stats

    async def add_rejection(
        self,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str,
        received_ms: int,
        device_id: str | None = None,
    ) -> None:
        """Store a refused message with its reason; large payloads keep their head and hash."""
        row = NewRejection(topic, payload, reason, detail, received_ms, device_id)
        async with self.engine.begin() as conn:
            await conn.execute(insert(rejections).values(**_rejection_values(row)))

    async def list_rejections(self, limit: int = 100) -> list[Rejection]:
        """Newest refusals first."""
        q = select(rejections).order_by(rejections.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            Rejection(
                r.id,
                r.received_ms,
                r.topic,
                r.device_id,
                r.reason,
                r.detail,
                r.size,
                bytes(r.sha256),
            )
            for r in rows
        ]

    async def ping(self) -> None:
        """One round trip to the database (raises if it is unreachable): for liveness checks,
        which must not cost more as the tables grow."""
        async with single_statement(self.engine) as conn:
            await conn.execute(select(1))

    async def stats(self, intervals: int = 96) -> Stats:
        """Counts and generation per interval (newest intervals) of approved devices' tokens.

        Tokens of devices still pending approval are stored but only reported as `held`.
        """
        approved = select(devices.c.device_id).where(devices.c.status == DeviceStatus.APPROVED)
        counted = tokens.c.device_id.in_(approved.scalar_subquery())
        async with self.engine.connect() as conn:
            accepted, gen = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(tokens.c.generated_wh), 0)).where(
                        counted
                    )
                )
            ).one()
            held = (
                await conn.execute(select(func.count()).select_from(tokens).where(~counted))
            ).scalar_one()
            by_reason = (
                await conn.execute(
                    select(rejections.c.reason, func.count()).group_by(rejections.c.reason)
                )
            ).all()
            per = (
                await conn.execute(
                    select(tokens.c.interval_start, func.sum(tokens.c.generated_wh))
                    .where(counted)
                    .group_by(tokens.c.interval_start)
                    .order_by(tokens.c.interval_start.desc())
                    .limit(intervals)
                )
            ).all()
        return Stats(
            accepted=int(accepted),
            rejected_by_reason={r: int(n) for r, n in by_reason},
            generated_wh=int(gen),
            per_interval_wh=[(int(s), int(w)) for s, w in reversed(per)],
            held=int(held),
        )

    async def set_device_status(self, device_id: str, status: DeviceStatus | str) -> Device:
        """Approve, reject or revoke a device; raises KeyError if it is not registered."""
        try:
            status = DeviceStatus(status)
        except ValueError:
            raise ValueError(f"status must be one of {', '.join(DeviceStatus)}") from None
        async with self.engine.begin() as conn:
            result = await conn.execute(
                devices.update().where(devices.c.device_id == device_id).values(status=status)
            )
            if result.rowcount == 0:
                raise KeyError(device_id)
        dev = await self.get_device(device_id)
        assert dev is not None
        return dev


def _key(row: Any) -> DeviceKey:
    return DeviceKey(
        bytes(row.kid),
        row.device_id,
        bytes(row.public_key),
        row.valid_from,
        row.valid_until,
        row.revoked_ms,
    )


def _device(r: Any) -> Device:
    return Device(r.device_id, r.site_id, DeviceStatus(r.status), r.capacity_w, r.zone)


def _token(r: Any) -> TokenRow:
    m = dict(r._mapping)
    for k in ("record_hash", "prev_hash", "envelope"):
        m[k] = bytes(m[k])
    return TokenRow(**m)


def _rejection_values(r: NewRejection) -> dict[str, Any]:
    return {
        "received_ms": r.received_ms,
        "topic": r.topic[:1024],
        "device_id": r.device_id[:64] if r.device_id else None,
        "reason": r.reason,
        "detail": r.detail[:2000],
        "size": len(r.payload),
        "sha256": hashlib.sha256(r.payload).digest(),
        "payload": r.payload[:KEEP_PAYLOAD_BYTES],
        "truncated": int(len(r.payload) > KEEP_PAYLOAD_BYTES),
    }


def _asdict(row: TokenRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in TokenRow.__slots__}
