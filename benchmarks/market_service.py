"""Durable order placement: through the order service on PostgreSQL (group commits), and through
the HTTP API (uvicorn) under an open-loop load from a separate process.

Run:
    .venv/bin/python -m benchmarks.market_service --orders 20000 --http-rate 100,200,500

A measurement, not a test: it asserts nothing about speed. It exits non-zero only if an order is
lost (the stored orders differ from the accepted ones) or the HTTP load saw errors.

Setup: a fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards), migrated; homeowner
accounts with one site and an approved device each; the buyers' credits deposited in the ledger.
Coverage of offers needs a generation forecast, learnt from signed deliveries; the benchmark
gives every seller a fixed one instead (MarketService.forecast overridden), so what is measured
is the durable path: checks, matching, ledger leaves and rows in one transaction per group.

Baselines, measured in the same run on the same machine: heapq push+pop of ints (CPU), and
single-row INSERT+COMMIT on the same PostgreSQL (the cost of one durable commit), so each figure
is also given as a ratio that survives a noisy, shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
import types
import unittest.mock
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cloud.services.market as market_module
import cloud.storage.accounts as accounts_module
from benchmarks.machine import machine_facts
from cloud.domain.market_checks import MarketConfig
from cloud.gc_policy import LongLivedFreezer
from cloud.services.ledger import LedgerService
from cloud.services.market import MarketService, OrderRequest
from cloud.storage.accounts import AccountStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.market_store import MarketStore
from cloud.storage.store import Store
from rules.ledger import LedgerEngine
from rules.market import Side
from tests.helpers.services import create_pg_database, drop_pg_database

DAY = 86_400
SEED = 20261204


class FixedForecast(MarketService):
    """The order service with a fixed forecast, so sellers may offer without a delivery history,
    and numbered order ids, so the same workload gives the same log (see `log_digest`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = itertools.count()

    def forecast(self, engine: LedgerEngine, site_id: str, interval_start: int) -> int:
        return 10**9

    def new_order_id(self) -> str:
        return f"o-{next(self._ids):016x}"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def heap_baseline(n: int = 1_000_000) -> float:
    """heapq push + pop pairs per second."""
    rnd = random.Random(SEED)
    xs = [rnd.randrange(1 << 30) for _ in range(n)]
    h: list[int] = []
    t0 = time.perf_counter()
    for x in xs:
        heapq.heappush(h, x)
    for _ in xs:
        heapq.heappop(h)
    return n / (time.perf_counter() - t0)


async def commit_baseline(store: Store, n: int = 500) -> float:
    """Single-row INSERT + COMMIT transactions per second on the benchmark's database."""
    from sqlalchemy import text

    async with store.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE bench_commit (k BIGINT PRIMARY KEY)"))
    t0 = time.perf_counter()
    for k in range(n):
        async with store.engine.begin() as conn:
            await conn.execute(text("INSERT INTO bench_commit VALUES (:k)"), {"k": k})
    rate = n / (time.perf_counter() - t0)
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE bench_commit"))
    return rate


async def build(url: str, homes: int, clock: Clock) -> tuple[Store, MarketService, list[str]]:
    store = await Store.connect(url)
    await store.migrate()
    accounts = AccountStore(store.engine)
    ledger = LedgerService(
        LedgerStore(store.engine), Ed25519PrivateKey.generate(), "bench/ledger", clock.now
    )
    await ledger.load()
    owners: list[str] = []
    # Seeded account ids: they are in every order event, and the run's log digest
    # (`log_digest`) must depend on the workload only.
    seeded = random.Random(SEED)
    ids = types.SimpleNamespace(token_hex=lambda n: seeded.randbytes(n).hex())
    for i in range(homes):
        with unittest.mock.patch.object(accounts_module, "secrets", ids):
            a = await accounts.create_account(
                f"home{i}@bench.gridmint", f"home {i}", "a long password", "homeowner", "approved"
            )
        await accounts.create_site(f"site-{i}", a.account_id, f"home {i}")
        await store.add_device(
            f"pi-{i}", f"site-{i}", bytes([i % 256]) * 32, bytes([i % 256, i // 256]) * 4, 5000
        )
        owners.append(a.account_id)
    sites = [f"site-{i}" for i in range(homes)]
    await ledger.append(lambda eng: [eng.deposit(s, int(clock.t), 10**12) for s in sites])
    market = FixedForecast(
        ledger, MarketStore(store.engine), MarketConfig(interval_s=300), clock.now
    )
    await market.load()
    return store, market, owners


def workload(n: int, homes: int, first: int) -> list[tuple[int, OrderRequest]]:
    """Orders over 12 intervals, prices around a crossing band, sellers and buyers apart."""
    rnd = random.Random(SEED)
    out = []
    for k in range(n):
        home = rnd.randrange(homes)
        side = Side.SELL if home % 2 == 0 else Side.BUY
        price = rnd.randrange(14, 24) if side is Side.SELL else rnd.randrange(10, 20)
        out.append(
            (
                home,
                OrderRequest(
                    f"bench-{k}",
                    f"site-{home}",
                    side,
                    first + 300 * rnd.randrange(12),
                    rnd.randrange(10, 500),
                    price,
                ),
            )
        )
    return out


async def log_digest(store: Store, market: MarketService) -> dict[str, str]:
    """What the run stored, as hashes: the Merkle root of the ledger log (every leaf's bytes)
    and SHA-256 over the market's rows in key order. The same workload must give the same
    digests whatever the code's speed: a change that alters a leaf or a row shows here."""
    from sqlalchemy import select

    from cloud.storage.tables import ledger_entries, market_events, market_orders, market_trades

    rows = hashlib.sha256()
    leaves = hashlib.sha256()
    async with store.engine.connect() as conn:
        for table, key in (
            (market_orders, "order_id"),
            (market_trades, "trade_id"),
            (market_events, "seq"),
        ):
            for r in (await conn.execute(select(table).order_by(table.c[key]))).all():
                rows.update(repr(tuple(r)).encode())
        q = select(ledger_entries).order_by(ledger_entries.c.seq)
        for r in (await conn.execute(q)).all():
            m = r._mapping
            leaves.update(
                repr(
                    (
                        m["seq"],
                        m["site_id"],
                        m["interval_start"],
                        m["kind"],
                        bytes(m["leaf"]),
                        bytes(m["leaf_hash"]),
                    )
                ).encode()  # fmt: skip
            )
    return {
        "merkle_root": market.ledger.log.root().hex(),
        "leaf_rows_sha256": leaves.hexdigest(),
        "market_rows_sha256": rows.hexdigest(),
    }


async def durable(url: str, n: int, homes: int, concurrency: int) -> dict[str, Any]:
    clock = Clock((1_800_000_000 // DAY) * DAY + 9 * 3600)
    store, market, owners = await build(url, homes, clock)
    freezing = asyncio.create_task(LongLivedFreezer().run())  # as the runtime does
    try:
        commits = await commit_baseline(store)
        first = market.next_interval()
        work = workload(n, homes, first)
        appends0 = market.ledger.appends
        queue = list(reversed(work))
        accepted = 0
        refused: dict[str, int] = {}

        async def worker() -> None:
            nonlocal accepted
            while queue:
                home, req = queue.pop()
                try:
                    await market.place(owners[home], req)
                    accepted += 1
                except Exception as exc:
                    key = type(exc).__name__
                    refused[key] = refused.get(key, 0) + 1

        # Each site's standing read once before the clock starts: the orders then enter the
        # market in the workload's order, so a run's log is the same whatever the timing.
        # (Trusted for the whole run: a read that expired mid-run would let later orders of
        # other sites overtake the waiting ones.)
        market_module.STANDING_TTL_S = 24 * 3600.0
        for home in range(homes):
            await market._site_standing(f"site-{home}")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        stored = len(await market.store.orders(limit=n + 10))
        group_commits = market.ledger.appends - appends0
        seq_n = min(1000, n)
        seq_work = workload(seq_n, homes, first)
        t1 = time.perf_counter()
        for k, (home, req) in enumerate(seq_work):
            r = OrderRequest(f"seq-{k}", req.site_id, req.side, req.interval_start,
                             req.quantity_wh, req.limit_price)  # fmt: skip
            await market.place(owners[home], r)
        seq_rate = seq_n / (time.perf_counter() - t1)
        return {
            "orders": n,
            "accepted": accepted,
            "refused": refused,
            "stored": stored,
            "concurrency": concurrency,
            "seconds": round(elapsed, 3),
            "orders_per_s": round(n / elapsed),
            "process_cpu_ms_per_order": round(1000 * cpu / n, 4),
            "group_commits": group_commits,
            "sequential_orders_per_s": round(seq_rate),
            "commit_baseline_per_s": round(commits),
            "trades": len(await market.store.trades(limit=10**7)),
            "log": await log_digest(store, market),
        }
    finally:
        freezing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await freezing
        await store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WARM = 64  # keep-alive connections the load opens before it starts
WARMUP = 200  # requests sent one by one before the clock starts


def _requests(tokens: list[str], n: int, path: str, first: int, tag: str) -> list[bytes]:
    """The load's HTTP/1.1 requests, built before the clock starts."""
    rnd = random.Random(SEED)
    out = []
    for k in range(n):
        home = k % len(tokens)
        if not path.startswith("/api/v1/market/orders"):
            out.append(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            continue
        sell = home % 2 == 0
        body = json.dumps(
            {
                "client_order_id": f"http-{tag}-{k}",
                "site_id": f"site-{home}",
                "side": "sell" if sell else "buy",
                "interval_start": first + 300 * rnd.randrange(12),
                "quantity_wh": rnd.randrange(10, 500),
                "limit_price": rnd.randrange(14, 24) if sell else rnd.randrange(10, 20),
            }
        ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {tokens[home]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


def _load_process(port: int, tokens: list[str], rate: float, seconds: float, path: str,
                  first: int, out: Any) -> None:  # fmt: skip
    """Open-loop load: requests at `rate` per second for `seconds`, whatever the answers.

    A small HTTP/1.1 client on keep-alive connections (httpx costs more CPU per request than
    the server under test, on a 2-core machine). Latency is measured from each request's
    scheduled send time, so a slow answer that delays later requests counts against them too
    (no coordinated omission). A request finding no idle connection opens a new one.
    """

    async def run() -> dict[str, Any]:
        total = int(rate * seconds)
        reqs = _requests(tokens, total + WARMUP, path, first, f"{rate:g}")
        lat: list[float] = []
        lag: list[float] = []  # the load's own delay: scheduled time to sending
        slow: list[tuple[float, int, int]] = []
        opened = [0]
        reopened = [0]  # idle connections the server had closed
        errors: dict[str, int] = {}
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def one(k: int, scheduled: float) -> None:
            reused = bool(idle)
            if idle:
                reader, writer = idle.pop()
            else:
                opened[0] += 1
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            lag.append(time.perf_counter() - scheduled)
            writer.write(reqs[k])
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError):
                if not reused:
                    raise
                # The server closed a keep-alive connection that sat idle past its timeout
                # (uvicorn: 5 s) before this request reached it: reconnect and send again, as
                # any HTTP client does. The latency still counts from the scheduled time.
                writer.close()
                reopened[0] += 1
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(reqs[k])
                head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - scheduled)
            slow.append((lat[-1], k, int(status)))
            idle.append((reader, writer))
            if status >= 300:
                errors[str(status)] = errors.get(str(status), 0) + 1

        # Connections are opened before the clock starts (a burst of TCP handshakes in the
        # first milliseconds would otherwise be the p99), and more only when all are busy.
        idle.extend([await asyncio.open_connection("127.0.0.1", port) for _ in range(WARM)])
        # Warm-up, not timed: the first requests to an app build its middleware stack and
        # warm its caches (one stall of ~150 ms on this machine, which alone is > 1 % of 5 s).
        for k in range(total, total + WARMUP):
            await one(k, time.perf_counter())
        lat.clear()
        lag.clear()
        slow.clear()
        errors.clear()
        tasks = []
        start = time.perf_counter()
        for k in range(total):
            scheduled = start + k / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, scheduled)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        connections = len(idle)
        for _, writer in idle:
            writer.close()
        lat.sort()
        lag.sort()
        slow.sort(reverse=True)
        return {
            "slowest_ms_at_request": [f"{a * 1000:.0f}@{b}" for a, b, _ in slow[:5]],
            "opened_during_run": opened[0],
            "reopened_after_idle_close": reopened[0],
            "warmup_requests": WARMUP,
            "send_lag_p99_ms": round(1000 * lag[int(0.99 * (len(lag) - 1))], 2),
            "requests": len(lat),
            "achieved_per_s": round(len(lat) / wall, 1),
            "connections": connections,
            "p50_ms": round(1000 * statistics.median(lat), 2),
            "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2),
            "max_ms": round(1000 * lat[-1], 2),
            "errors": errors,
        }

    out.put(asyncio.run(run()))


async def http(url: str, homes: int, rates: list[float], seconds: float) -> dict[str, Any]:
    import uvicorn

    from cloud.api.app import create_app
    from cloud.runtime import http_config

    clock = Clock((1_800_000_000 // DAY) * DAY + 9 * 3600)
    store, market, owners = await build(url, homes, clock)
    accounts = AccountStore(store.engine)
    tokens = [await accounts.issue_token(a, 3600) for a in owners]
    app = create_app(store, accounts=accounts, ledger=market.ledger, market=market, now=clock.now)
    port = free_port()
    server = uvicorn.Server(http_config(app, "127.0.0.1", port))
    serving = asyncio.create_task(server.serve())
    # The runtime's garbage-collector policy (cloud/gc_policy.py), as `gridmint cloud serve`.
    freezer = LongLivedFreezer()
    freezing = asyncio.create_task(freezer.run())
    while not server.started:
        await asyncio.sleep(0.05)
    ctx = mp.get_context("spawn")
    try:
        parser = server.config.http_protocol_class.__name__  # HttpToolsProtocol or H11Protocol
        results: dict[str, Any] = {"runs": [], "http_parser": parser}
        sent = 0
        for rate in rates:
            run: dict[str, Any] = {"rate_per_s": rate}
            for name, path in (("healthz", "/healthz"), ("orders", "/api/v1/market/orders")):
                q = ctx.Queue()
                p = ctx.Process(
                    target=_load_process,
                    args=(port, tokens, rate, seconds, path, market.next_interval(), q),
                )
                p.start()
                # This process is the server alone (the load runs in its own): its CPU time
                # per request survives a noisy, shared machine better than latency does.
                cpu0 = time.process_time()
                run[name] = await asyncio.to_thread(q.get, True, seconds * 10 + 60)
                cpu = time.process_time() - cpu0
                p.join(30)
                served = run[name]["requests"] + WARMUP
                run[name]["server_cpu_ms_per_request"] = round(1000 * cpu / served, 3)
                run[name]["load_average"] = os.getloadavg()[0]
            run["p99_ratio_to_healthz"] = round(
                run["orders"]["p99_ms"] / max(run["healthz"]["p99_ms"], 0.01), 2
            )
            sent += run["orders"]["requests"] + WARMUP
            results["runs"].append(run)
        results["orders_sent"] = sent
        results["gc_freezes"] = freezer.freezes
        results["stored_orders"] = len(await market.store.orders(limit=10**7))
        return results
    finally:
        freezing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await freezing
        server.should_exit = True
        await serving
        await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--homes", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--http-rate", default="500", help="orders per second; several, comma-separated")
    p.add_argument("--http-seconds", type=float, default=10.0)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-durable", action="store_true")
    args = p.parse_args(argv)
    report: dict[str, Any] = {"machine": machine_facts(("sqlalchemy", "asyncpg", "fastapi"))}
    report["heap_push_pop_per_s"] = round(heap_baseline())
    ok = True
    if not args.skip_durable:
        url = create_pg_database()
        try:
            d = asyncio.run(durable(url, args.orders, args.homes, args.concurrency))
        finally:
            drop_pg_database(url)
        d["ratio_to_commit_baseline"] = round(d["orders_per_s"] / d["commit_baseline_per_s"], 2)
        d["ratio_to_heap"] = round(d["orders_per_s"] / report["heap_push_pop_per_s"], 5)
        report["durable_postgres"] = d
        ok &= d["stored"] == d["accepted"]
    if args.skip_http:
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    url = create_pg_database()
    try:
        rates = [float(r) for r in args.http_rate.split(",")]
        h = asyncio.run(http(url, args.homes, rates, args.http_seconds))
    finally:
        drop_pg_database(url)
    report["http"] = h
    ok &= not any(r["orders"]["errors"] for r in h["runs"])
    ok &= h["stored_orders"] == h["orders_sent"]
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
