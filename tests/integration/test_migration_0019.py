"""Migration 0019 (account profiles) on both backends, over accounts that existed before it:
they count as verified (email_verified_ms = created_ms), providers get the provider
affiliation, the new CHECKs hold, and a downgrade keeps the accounts and what references
them."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from cloud.storage.accounts import AccountStore
from cloud.storage.store import MIGRATIONS, Store


async def _downgrade(store: Store, revision: str) -> None:
    def run(sync_conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, revision)

    async with store.engine.begin() as conn:
        await conn.run_sync(run)


async def test_existing_accounts_count_as_verified(db_url: str) -> None:
    store = await Store.connect(db_url)
    try:
        await store.migrate("0018")
        async with store.engine.begin() as conn:
            for account_id, role, created in (
                ("a-prov", "provider", 111),
                ("a-home", "homeowner", 222),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO accounts (account_id, email, display_name, password_hash, "
                        "role, status, created_ms) VALUES (:id, :email, 'X', 'h', :role, "
                        "'approved', :created)"
                    ),
                    {
                        "id": account_id,
                        "email": f"{account_id}@x.org",
                        "role": role,
                        "created": created,
                    },
                )
            await conn.execute(
                text(
                    "INSERT INTO sites (site_id, owner_account_id, name, zone, created_ms) "
                    "VALUES ('site-1', 'a-home', 'Home', '', 1)"
                )
            )
        await store.migrate()
        accounts = AccountStore(store.engine)
        prov = await accounts.get_account_by_id("a-prov")
        home = await accounts.get_account_by_id("a-home")
        assert prov is not None and home is not None
        assert (prov.email_verified_ms, prov.affiliation, prov.account_type) == (
            111,
            "provider",
            "individual",
        )
        assert (home.email_verified_ms, home.affiliation, home.business_name) == (222, "none", "")
        for column, value in (("account_type", "alien"), ("affiliation", "installer")):
            with pytest.raises(IntegrityError):
                async with store.engine.begin() as conn:
                    await conn.execute(
                        text(f"UPDATE accounts SET {column} = :v WHERE account_id = 'a-home'"),
                        {"v": value},
                    )

        # Down to 0019 first, then 0019 itself in a transaction of its own: on SQLite the
        # rebuild of `accounts` must run before any DML of the same transaction (alembic's
        # version updates of the later revisions), or `foreign_keys = OFF` is ignored
        # (docs/operations.md: downgrade SQLite one revision at a time past 0019).
        await _downgrade(store, "0019")
        await _downgrade(store, "0018")
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT account_id FROM accounts ORDER BY account_id"))
            ).all()
            site = (await conn.execute(text("SELECT owner_account_id FROM sites"))).scalar_one()
        assert [r.account_id for r in rows] == ["a-home", "a-prov"] and site == "a-home"
        await store.migrate()
        assert (await AccountStore(store.engine).get_account_by_id("a-home")) is not None
    finally:
        await store.close()
