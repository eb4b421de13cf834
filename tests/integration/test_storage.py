"""Storage on both backends: migrations match the table definitions; uniqueness holds."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloud.storage.store import DuplicateTokenError, Store, TokenRow, normalise_url
from cloud.storage.tables import metadata


async def test_migrated_schema_matches_table_definitions(store: Store) -> None:
    def diff(sync_conn):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == []


async def test_migrate_twice_is_harmless(store: Store) -> None:
    await store.migrate()
    assert (await store.stats()).accepted == 0


def _row(seq: int, start: int, digest: bytes) -> TokenRow:
    return TokenRow(
        token_id=f"t{seq}-{start}", device_id="d1", seq=seq, boot=1, interval_start=start,
        interval_s=300, generated_wh=100, imported_wh=0, exported_wh=0, charged_wh=0,
        discharged_wh=0, status="G", quality=0, record_hash=digest, prev_hash=bytes(32),
        envelope=b"x", received_ms=1,
    )


async def test_one_token_per_device_slot(store: Store) -> None:
    await store.add_device("d1", "s1", b"\x01" * 32, b"\x02" * 8, 5000)
    await store.insert_token(_row(1, 300, b"\x03" * 32))
    for dup in (_row(1, 600, b"\x04" * 32), _row(2, 300, b"\x05" * 32), _row(3, 900, b"\x03" * 32)):
        with pytest.raises(DuplicateTokenError):
            await store.insert_token(dup)
    head = await store.chain_head("d1")
    assert head is not None and head.seq == 1
    assert [d.tokens for d in await store.list_devices()] == [1]


async def test_rejection_keeps_large_payload_head_size_and_hash(store: Store) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    await store.add_rejection("t", payload, "too_large", "big", 5)
    (rej,) = await store.list_rejections()
    assert rej.size == len(payload)
    assert rej.reason == "too_large"
    assert (await store.stats()).rejected_by_reason == {"too_large": 1}


def test_database_urls_pick_async_drivers() -> None:
    assert normalise_url("sqlite:///x.db").startswith("sqlite+aiosqlite")
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+asyncpg")
    with pytest.raises(ValueError, match="only sqlite and postgresql"):
        normalise_url("mysql://u@h/db")
