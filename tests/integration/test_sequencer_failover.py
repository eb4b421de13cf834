"""Two aggregator processes (`gridmint cloud serve`) on one PostgreSQL database: one holds the
sequencer lock, ingests and writes the ledger; the other stands by. The sequencer is killed with
SIGKILL while a fleet publishes; the standby takes the lock, resumes the broker session and the
ledger, and at the end every minted token is stored once and minted into the ledger once, in one
gap-free log that replays under the rules."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from cloud.services.ledger import LedgerService
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.sequencer_lock import SequencerLock
from cloud.storage.store import Store
from cloud.storage.tables import ledger_entries, ledger_intervals, ledger_refs, tokens
from simulators.fleet import make_fleet, run_fleet
from tests.helpers.services import Mosquitto, create_pg_database, drop_pg_database, free_port
from tests.helpers.waiting import until

pytestmark = [pytest.mark.postgres, pytest.mark.broker, pytest.mark.slow, pytest.mark.fault]

DEPLOYMENT = "gridmint-failover"


class Serve:
    """One `gridmint cloud serve` process."""

    def __init__(self, tmp: Path, name: str, db_url: str, broker_url: str):
        self.port = free_port()
        self.log_path = tmp / f"{name}.log"
        env = {
            **os.environ,
            "GRIDMINT_CLOUD_DEPLOYMENT": DEPLOYMENT,
            "GRIDMINT_CLOUD_LEDGER_KEY_FILE": str(tmp / "ledger.key"),
            "GRIDMINT_CLOUD_LEDGER_CLOSE_EVERY_S": "0.2",
            "GRIDMINT_CLOUD_SEQUENCER_POLL_S": "0.2",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [
                    sys.executable, "-m", "gridmint", "cloud", "serve",
                    "--database-url", db_url, "--broker", broker_url, "--port", str(self.port),
                ],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def health(self) -> dict[str, object] | None:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                r = await http.get(f"http://127.0.0.1:{self.port}/healthz")
            return dict(r.json()) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    async def is_sequencer(self) -> bool:
        health = await self.health()
        return health is not None and health["sequencer"] is True

    async def is_standby(self) -> bool:
        health = await self.health()
        return health is not None and health["sequencer"] is False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def pg_db() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


async def _count(store: Store, table) -> int:  # type: ignore[no-untyped-def]
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_the_standby_takes_over_a_killed_sequencer_and_nothing_is_lost_or_twice(
    mosquitto: Mosquitto, pg_db: str, tmp_path: Path
) -> None:
    store = await Store.connect(pg_db)
    await store.migrate()
    first = Serve(tmp_path, "first", pg_db, mosquitto.url)
    second: Serve | None = None
    try:
        await until(first.is_sequencer, 60)
        second = Serve(tmp_path, "second", pg_db, mosquitto.url)
        await until(second.is_standby, 60)

        # One device per site: each site interval closes as soon as its record is stored, so
        # every token is minted into the ledger (none left "late" by a sibling's head start).
        fleet = make_fleet(120, sites=120, prefix="fo")
        for d in fleet:
            await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
        intervals = 4
        minted_total = len(fleet) * intervals

        async def kill_first_once_some_are_stored() -> None:
            await until(lambda: _at_least(store, tokens, minted_total // 4), 120)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)

        killer = asyncio.create_task(kill_first_once_some_are_stored())
        report = await run_fleet(
            fleet,
            mosquitto.url,
            intervals=intervals,
            deployment=DEPLOYMENT.encode(),
            connections=4,
            resend_after_s=3.0,
            timeout_s=180,
        )
        await killer
        assert first.proc.returncode == -signal.SIGKILL
        assert await second.is_sequencer()
        print(
            f"\nminted {report.minted}, held {report.accepted}, resent {report.resent}, "
            f"duplicate receipts {report.duplicates}, lost {report.lost}"
        )
        assert report.minted == minted_total
        assert report.lost == 0
        assert report.rejected == {} or set(report.rejected) <= {"replayed"}

        # Storage: exactly the minted tokens, each once.
        async with store.engine.connect() as conn:
            stored = [r[0] for r in (await conn.execute(select(tokens.c.token_id))).all()]
        assert len(stored) == len(set(stored)) == minted_total
        assert set(stored) == report.token_ids

        # The ledger: every site interval closed (by either process), every token minted into
        # it once, one gap-free log that replays under the rules and matches its checkpoint.
        sites = {d.site_id for d in fleet}
        await until(lambda: _at_least(store, ledger_intervals, len(sites) * intervals), 60)
        assert await _count(store, ledger_refs) == minted_total
        async with store.engine.connect() as conn:
            seqs = [r[0] for r in (await conn.execute(select(ledger_entries.c.seq))).all()]
        assert sorted(seqs) == list(range(len(seqs)))
        replayed = LedgerService(
            LedgerStore(store.engine), Ed25519PrivateKey.generate(), "audit", time.time
        )
        await replayed.load()  # raises LedgerCorrupted on a bad leaf, rule or checkpoint
        assert replayed.log.size == len(seqs)
        assert "now the ledger sequencer" in second.log_path.read_text()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await store.close()


async def _at_least(store: Store, table, n: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return await _count(store, table) >= n
    except Exception:
        return False


async def test_one_process_holds_the_lock_and_the_next_gets_it_when_it_is_released(
    pg_db: str,
) -> None:
    a, b = await Store.connect(pg_db), await Store.connect(pg_db)
    lock_a = SequencerLock(a.engine, pg_db, DEPLOYMENT)
    lock_b = SequencerLock(b.engine, pg_db, DEPLOYMENT)
    other = SequencerLock(b.engine, pg_db, "another-deployment")
    try:
        assert await lock_a.hold()
        assert not await lock_b.hold()
        assert await lock_a.hold()  # still held, confirmed on its session
        assert await other.hold()  # deployments elect their sequencers independently
        await lock_a.release()
        assert await lock_b.hold()
        assert not await lock_a.hold()
    finally:
        for lock in (lock_a, lock_b, other):
            await lock.release()
        await a.close()
        await b.close()


async def test_a_sqlite_database_has_one_sequencer_per_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cloud.sqlite"
    a, b = await Store.connect(url), await Store.connect(url)
    lock_a, lock_b = (
        SequencerLock(a.engine, url, DEPLOYMENT),
        SequencerLock(b.engine, url, DEPLOYMENT),
    )
    try:
        assert await lock_a.hold()
        assert not await lock_b.hold()
        await lock_a.release()
        assert await lock_b.hold()
    finally:
        await lock_a.release()
        await lock_b.release()
        await a.close()
        await b.close()
