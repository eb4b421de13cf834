"""Virtual meter export: one site-year of 5-minute data (105,120 intervals) as Green Button,
from the database through MeterService.green_button: time and peak memory.

Run: .venv/bin/python -m benchmarks.meter_export [--days 365] [--database-url postgresql://postgres@127.0.0.1:5432]

A measurement, not a test. The site's records are written straight into the tokens and
ledger_refs tables (bulk rows with the columns the meter reads; the envelopes are
placeholders: the export never reads them, and minting 105,120 signed records would measure
signing, not the export). Then, each the best of --repeats:

* baseline: stream the site's intervals from the database (MeterStore.intervals), nothing
  else: the cost of reading the data;
* export: the whole feed (4 readings: import, export, generation, net; 4 reads of the
  period) consumed chunk by chunk into a SHA-256;
* export of 30 days, to show that memory does not grow with the period.

Peak memory is tracemalloc's over a separate, untimed run (tracing slows Python).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime

from benchmarks.machine import machine_facts
from cloud.services.virtual_meter import MeterService
from cloud.storage.meter_store import MeterStore
from cloud.storage.store import Store
from cloud.storage.tables import accounts, devices, ledger_refs, sites, tokens

SITE = "bench-site"
DEVICE = "bench-pi"
START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


async def _fill(store: Store, days: int) -> int:
    n = days * 288
    async with store.engine.begin() as conn:
        await conn.execute(
            accounts.insert().values(
                account_id="acct-bench",
                email="bench@example.org",
                display_name="Bench",
                role="homeowner",
                status="approved",
                password_hash="x",
                created_ms=0,
            )
        )
        await conn.execute(
            sites.insert().values(
                site_id=SITE,
                owner_account_id="acct-bench",
                name="Bench home",
                zone="",
                created_ms=0,
                time_zone="America/New_York",
            )
        )
        await conn.execute(
            devices.insert().values(
                device_id=DEVICE, site_id=SITE, status="approved", capacity_w=5000, created_ms=0
            )
        )
        batch: list[dict[str, object]] = []
        refs: list[dict[str, object]] = []
        for i in range(n):
            start = START + i * 300
            tid = f"tok-{i:08d}"
            batch.append(
                {
                    "token_id": tid,
                    "device_id": DEVICE,
                    "seq": i,
                    "boot": 1,
                    "interval_start": start,
                    "interval_s": 300,
                    "generated_wh": (i * 7) % 400,
                    "imported_wh": (i * 3) % 150,
                    "exported_wh": (i * 5) % 90,
                    "charged_wh": 0,
                    "discharged_wh": 0,
                    "status": "G",
                    "quality": 0,
                    "record_hash": i.to_bytes(32, "big"),
                    "prev_hash": b"\0" * 32,
                    "envelope": b"-",
                    "received_ms": 0,
                    "soc_permille": None,
                    "tech": "pv",
                    "zone": "",
                }
            )
            refs.append({"record_hash": i.to_bytes(32, "big"), "token_id": tid, "seq": i})
            if len(batch) == 5000:
                await conn.execute(tokens.insert(), batch)
                await conn.execute(ledger_refs.insert(), refs)
                batch, refs = [], []
        if batch:
            await conn.execute(tokens.insert(), batch)
            await conn.execute(ledger_refs.insert(), refs)
    return n


async def _baseline(meter: MeterService, end: int) -> int:
    n = 0
    async for chunk in meter.store.intervals(SITE, START, end):
        n += len(chunk)
    return n


async def _export(meter: MeterService, end: int) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    async for piece in meter.green_button(
        SITE, START, end, updated=datetime(2026, 1, 1, tzinfo=UTC)
    ):
        h.update(piece)
        size += len(piece)
    return size, h.hexdigest()


async def _best(fn, repeats: int):  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = await fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


async def _peak(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        await fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="meter-bench-")
    if args.database_url:
        import asyncpg

        name = f"meter_bench_{os.getpid()}"
        conn = await asyncpg.connect(f"{args.database_url}/postgres")
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        url = f"{args.database_url.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp}/meter.db"
    store = await Store.connect(url)
    try:
        await store.migrate()
        t0 = time.perf_counter()
        n = await _fill(store, args.days)
        print(f"filled {n:,} intervals in {time.perf_counter() - t0:.1f} s ({url.split('://')[0]})")
        meter = MeterService(MeterStore(store.engine))
        end = START + n * 300
        month_end = START + 30 * 86400
        base_s, rows = await _best(lambda: _baseline(meter, end), args.repeats)
        assert rows == n
        exp_s, (size, digest) = await _best(lambda: _export(meter, end), args.repeats)
        month_s, (msize, _d) = await _best(lambda: _export(meter, month_end), args.repeats)
        peak_year = await _peak(lambda: _export(meter, end))
        peak_month = await _peak(lambda: _export(meter, month_end))
        peak_base = await _peak(lambda: _baseline(meter, end))
        print(
            f"baseline: stream {n:,} intervals from the database: {base_s:.3f} s, "
            f"peak {peak_base / 2**20:.2f} MiB"
        )
        print(
            f"export {args.days} days: {exp_s:.3f} s ({exp_s / base_s:.2f}x baseline), "
            f"{size / 2**20:.1f} MiB of XML, peak {peak_year / 2**20:.2f} MiB, sha256 {digest[:16]}"
        )
        print(
            f"export 30 days: {month_s:.3f} s, {msize / 2**20:.1f} MiB, "
            f"peak {peak_month / 2**20:.2f} MiB "
            f"(year/month peak {peak_year / peak_month:.2f}x)"
        )
    finally:
        await store.close()
        if args.database_url:
            import asyncpg

            conn = await asyncpg.connect(f"{args.database_url}/postgres")
            await conn.execute(f"DROP DATABASE IF EXISTS meter_bench_{os.getpid()}")
            await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--database-url", default="", help="a PostgreSQL server (default: SQLite)")
    args = p.parse_args(argv)
    print(f"machine: {machine_facts()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()}")
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
