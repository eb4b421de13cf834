"""`gridmint verify` on a demo run's data: it passes, and it fails, naming the item, after one
stored byte of a record, a ledger entry or a checkpoint is changed, or a record is deleted.

The tampering is done in the aggregator's database (what an insider could touch), then the
ledger is exported again exactly as `gridmint cloud export-ledger` does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from cloud.services.ledger_export import export_ledger
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from gridmint.demo import DemoOptions, run_demo
from gridmint.verify import VerifyReport, verify_export
from protocol.checkpoint import parse_verifier_key

pytestmark = [pytest.mark.slow]

START = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("demo")
    opts = DemoOptions(homes=2, speed=300, duration_s=12, start=START, http_port=0, data_dir=data)
    summary = asyncio.run(run_demo(opts, Console(quiet=True), asyncio.Event()))
    assert summary["accepted"] > 10 and summary["rejected"] == 0, summary
    assert summary["ledger"]["verified"], summary["ledger"]
    assert summary["ledger"]["entries"] > 20
    assert summary["ledger"]["shop"]["retirements"] == 2, summary["ledger"]  # the shop's leaves
    return data


def _reexport(data: Path, tamper: Callable[[sqlite3.Connection], None], into: Path) -> VerifyReport:
    work = into / "db"
    work.mkdir()
    db = work / "cloud.sqlite"
    shutil.copy(data / "cloud.sqlite", db)
    with sqlite3.connect(db) as conn:
        tamper(conn)
    log = json.loads((data / "ledger-export" / "log.json").read_text())

    async def export() -> None:
        store = await Store.connect(f"sqlite:///{db}")
        try:
            await export_ledger(
                LedgerStore(store.engine),
                into / "export",
                origin=log["origin"],
                log_public_key=parse_verifier_key(log["log_key"]).public_key,
                deployment=log["deployment"],
            )
        finally:
            await store.close()

    asyncio.run(export())
    return verify_export(into / "export")


def _flip(table: str, column: str, key: str, position: int) -> Callable[[sqlite3.Connection], None]:
    def tamper(conn: sqlite3.Connection) -> None:
        row = conn.execute(
            f"SELECT {key}, {column} FROM {table} ORDER BY {key} LIMIT 1 OFFSET 3"
        ).fetchone()  # noqa: S608
        value = bytearray(row[1] if isinstance(row[1], bytes) else row[1].encode())
        value[position % len(value)] ^= 0x01
        stored = bytes(value) if isinstance(row[1], bytes) else value.decode("latin-1")
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (stored, row[0]))  # noqa: S608

    return tamper


def test_the_demo_export_verifies_with_the_cli(demo_data: Path) -> None:
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gridmint", "verify", str(demo_data / "ledger-export"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["error"] is None
    assert report["balances"]["sites"], report  # balances recomputed for the demo's sites


def test_unchanged_copy_verifies(demo_data: Path, tmp_path: Path) -> None:
    assert _reexport(demo_data, lambda _c: None, tmp_path).ok


@pytest.mark.parametrize("position", [0, 7, 40, 90, 150, -70, -1])
def test_a_changed_record_byte_is_named(demo_data: Path, tmp_path: Path, position: int) -> None:
    report = _reexport(demo_data, _flip("tokens", "envelope", "token_id", position), tmp_path)
    assert not report.ok
    assert "records.jsonl line" in str(report.error), report.error


@pytest.mark.parametrize("position", [0, 5, 30, 64, -40, -2, -1])
def test_a_changed_entry_byte_is_named(demo_data: Path, tmp_path: Path, position: int) -> None:
    report = _reexport(demo_data, _flip("ledger_entries", "leaf", "seq", position), tmp_path)
    assert not report.ok
    text = str(report.error)
    # The entry itself (it no longer decodes or breaks a rule), or the checkpoint range that
    # contains it (its leaf hash no longer matches the signed root).
    assert (
        "entries.jsonl entry 3" in text
        or "entries.jsonl line 4" in text
        or ("checkpoints.jsonl" in text and "entries" in text)
    ), text


@pytest.mark.parametrize("position", [0, 20, 45, -30, -3])
def test_a_changed_checkpoint_byte_is_named(demo_data: Path, tmp_path: Path, position: int) -> None:
    report = _reexport(demo_data, _flip("ledger_checkpoints", "note", "size", position), tmp_path)
    assert not report.ok
    assert "checkpoints.jsonl line 4" in str(report.error), report.error


def test_a_deleted_record_is_found(demo_data: Path, tmp_path: Path) -> None:
    def delete(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM tokens WHERE token_id = "
            "(SELECT token_id FROM tokens ORDER BY device_id, seq LIMIT 1 OFFSET 5)"
        )

    report = _reexport(demo_data, delete, tmp_path)
    assert not report.ok
    assert "records.jsonl" in str(report.error) or "entries.jsonl" in str(report.error)


def test_verify_from_a_running_aggregator_api(demo_data: Path, tmp_path: Path) -> None:
    from cloud.runtime import CloudRuntime
    from cloud.settings import CloudSettings
    from cloud.storage.accounts import AccountStore

    shutil.copy(demo_data / "cloud.sqlite", tmp_path / "cloud.sqlite")
    shutil.copy(demo_data / "cloud.sqlite.ledger-key", tmp_path / "cloud.sqlite.ledger-key")
    (tmp_path / "cloud.sqlite.ledger-key").chmod(0o600)
    log = json.loads((demo_data / "ledger-export" / "log.json").read_text())

    async def run() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        rt = CloudRuntime(
            CloudSettings(
                database_url=f"sqlite:///{tmp_path / 'cloud.sqlite'}",
                deployment=log["deployment"],
                http_port=0,
            )
        )
        await rt.start(connect_mqtt=False)
        try:
            assert rt.store is not None
            accounts = AccountStore(rt.store.engine)
            op = await accounts.create_account(
                "verifier@example.org", "v", "a long password", "grid_operator", "approved"
            )
            token = await accounts.issue_token(op.account_id, 600)
            base = [sys.executable, "-m", "gridmint", "verify", "--api", rt.url]
            good = await asyncio.to_thread(
                subprocess.run,
                [*base, "--token", token, "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            refused = await asyncio.to_thread(
                subprocess.run,
                [*base, "--token", "not-a-token"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            return good, refused
        finally:
            await rt.stop()

    good, refused = asyncio.run(run())
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout.strip().splitlines()[-1])["ok"]
    assert refused.returncode == 1
    assert "refused (401" in refused.stderr and "Traceback" not in refused.stderr
