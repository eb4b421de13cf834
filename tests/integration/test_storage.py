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
        token_id=f"t{seq}-{start}",
        device_id="d1",
        seq=seq,
        boot=1,
        interval_start=start,
        interval_s=300,
        generated_wh=100,
        imported_wh=0,
        exported_wh=0,
        charged_wh=0,
        discharged_wh=0,
        status="G",
        quality=0,
        record_hash=digest,
        prev_hash=bytes(32),
        envelope=b"x",
        received_ms=1,
        soc_permille=None,
        tech="pv",
        zone="",
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


async def test_tokens_stored_before_0011_get_their_flows_from_their_envelopes(
    db_url: str,
) -> None:
    import dataclasses

    from sqlalchemy import column, insert, table

    from cloud.storage.ledger_store import LedgerStore
    from cloud.storage.tables import tokens
    from edge.accounting import Channel
    from tests.helpers.records import FakeDevice

    battery = FakeDevice("dev-batt", site_id="site-m", zone="zone-9", tech="battery")
    solar = FakeDevice("dev-pv", site_id="site-m", zone="zone-9")
    minted = [
        battery.sign({Channel.DISCHARGED: 40}, soc_permille=615),
        solar.next_token(),
    ]
    s = await Store.connect(db_url)
    try:
        await s.migrate("0010")
        for d in (battery, solar):
            await s.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w, d.zone)
        old_columns = {c.name for c in tokens.columns} - {"soc_permille", "tech", "zone"}
        async with s.engine.begin() as conn:
            for t in minted:
                row = dataclasses.asdict(_row(1, 0, b""))
                rec = t.record
                row.update(
                    token_id=rec.token_id,
                    device_id=rec.device_id,
                    seq=rec.seq,
                    interval_start=rec.interval_start,
                    record_hash=t.record_hash,
                    prev_hash=rec.prev_hash,
                    envelope=t.envelope,
                    generated_wh=rec.energy.generated_wh,
                    imported_wh=rec.energy.imported_wh,
                    discharged_wh=rec.energy.discharged_wh,
                )
                old_table = table("tokens", *(column(c) for c in old_columns))
                await conn.execute(insert(old_table).values({k: row[k] for k in old_columns}))
        await s.migrate()
        interval = (battery.site_id, minted[0].record.interval_start)
        got = {
            r.device_id: r for r in (await LedgerStore(s.engine).records_of([interval]))[interval]
        }
        assert (got["dev-batt"].soc_permille, got["dev-batt"].tech, got["dev-batt"].zone) == (
            615,
            "battery",
            "zone-9",
        )
        assert (got["dev-batt"].discharged_wh, got["dev-pv"].generated_wh) == (40, 250)
        assert (got["dev-pv"].soc_permille, got["dev-pv"].tech, got["dev-pv"].zone) == (
            None,
            "pv",
            "zone-9",
        )
    finally:
        await s.close()
