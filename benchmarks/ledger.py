"""Ledger cost: rules, replay, the service on SQLite/PostgreSQL, proofs and restart.

Run: .venv/bin/python -m benchmarks.ledger --sites 50 --intervals 40 --backend both

A measurement, not a test: it asserts nothing about speed. It exits non-zero only if a check
fails: a record not accepted, the service's log root differing from the pure engine's over the
same flows, a reloaded log with another root, or a proof that does not verify.

Workload: one device per site, a signed record per site and interval (FakeDevice keys, seeded
random flows); half the sites (the even ones) have a 5 kWh battery whose charge, discharge and
state of charge the records report, so their intervals also produce storage entries. The
records are ingested through IngestService (not timed), then the service closes them the way
the runtime does: the clock steps one interval at a time and each close_due() closes every site
of the interval that just passed its grace period and signs one checkpoint.

The pure rows (hashing, rules, replay, proofs without the database) are the best of --repeats
runs. The close_due row is one run (it writes the log); proof_for_token and load() are the best
of --repeats runs. The last column expresses each operation's cost in raw SHA-256 hashes of a
64-byte input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.machine import machine_facts as shared_machine_facts
from cloud.domain.ingest_rules import IngestLimits
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService, leaf_for
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from edge.accounting import Channel
from edge.minting import MintedToken
from protocol import cose, merkle, topics
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.ledger_leaf import decode_leaf
from rules.ledger import (
    BatteryParams,
    Entry,
    EntryKind,
    IntervalFlows,
    LedgerEngine,
    replay,
)
from tests.helpers.records import FakeDevice
from tests.helpers.services import create_pg_database, drop_pg_database

SEED = 20261129
DEPLOYMENT = b"gridmint-bench"
ORIGIN = "gridmint/bench/ledger"
INTERVAL_S = 300
GRACE_S = 600
CAPACITY_W = 5000
BATTERY = BatteryParams(usable_capacity_wh=5000, self_discharge_ppm_per_h=200)


# workload


@dataclass
class Workload:
    """Devices (one per site), their signed records, and the flows in the service's close order."""

    devices: list[FakeDevice]
    tokens: list[MintedToken]  # interval by interval, sites in order: each chain stays in order
    flows: list[tuple[str, IntervalFlows]]  # (site, flows), ordered by interval then site
    battery_sites: frozenset[str]
    first_start: int
    intervals: int
    mint_s: float

    def battery(self, site: str) -> BatteryParams | None:
        """The site's registered battery (None for sites without one)."""
        return BATTERY if site in self.battery_sites else None


def make_workload(n_sites: int, n_intervals: int, seed: int) -> Workload:
    """Sign every record (seeded flows), and sum each (site, interval) into IntervalFlows."""
    rng = random.Random(seed)
    now = int(time.time())
    first_start = now - now % INTERVAL_S - (n_intervals + 2) * INTERVAL_S
    sites = [f"site-{k:03d}" for k in range(n_sites)]
    battery_sites = frozenset(s for k, s in enumerate(sites) if k % 2 == 0)
    devices = []
    for k, site in enumerate(sites):
        channels = [Channel.GENERATED, Channel.IMPORTED, Channel.EXPORTED]
        if site in battery_sites:
            channels += [Channel.CHARGED, Channel.DISCHARGED]
        devices.append(
            FakeDevice(
                f"bench-{k:03d}",
                site_id=site,
                deployment=DEPLOYMENT,
                capacity_w=CAPACITY_W,
                interval_s=INTERVAL_S,
                next_start=first_start,
                totals={ch: 1_000_000 for ch in channels},
            )
        )
    stored = {s: BATTERY.usable_capacity_wh // 2 for s in battery_sites}  # Wh inside, measured
    tokens: list[MintedToken] = []
    t0 = time.perf_counter()
    for _j in range(n_intervals):
        for dev in devices:
            gen = rng.randint(0, 400)
            load = rng.randint(20, 300)
            site = dev.site_id
            if site in battery_sites:
                surplus = gen - load
                charge = min(max(surplus, 0), BATTERY.usable_capacity_wh - stored[site])
                discharge = min(max(-surplus, 0), stored[site])
                stored[site] += charge * 949 // 1000 - discharge
                energy = {
                    Channel.GENERATED: gen,
                    Channel.IMPORTED: max(-surplus, 0) - discharge,
                    Channel.EXPORTED: max(surplus, 0) - charge,
                    Channel.CHARGED: charge,
                    Channel.DISCHARGED: discharge,
                }
                soc: int | None = stored[site] * 1000 // BATTERY.usable_capacity_wh
            else:
                energy = {
                    Channel.GENERATED: gen,
                    Channel.IMPORTED: max(load - gen, 0),
                    Channel.EXPORTED: max(gen - load, 0),
                }
                soc = None
            tokens.append(dev.sign(energy, soc))
    mint_s = time.perf_counter() - t0
    # One record per (site, interval); the service closes by interval, then site id.
    site_of = {d.device_id: d.site_id for d in devices}
    flows = [
        (site_of[t.record.device_id], _flows(t))
        for t in sorted(tokens, key=lambda t: (t.record.interval_start, t.record.device_id))
    ]
    return Workload(devices, tokens, flows, battery_sites, first_start, n_intervals, mint_s)


def _flows(token: MintedToken) -> IntervalFlows:
    _, rec = cose.open_record(token.envelope)
    return IntervalFlows.from_records([(rec, token.record_hash)])


# timing helpers


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, Any]:
    """Seconds of the fastest of `repeats` runs of `fn`, and its last result. On a shared
    machine the slower runs measure the neighbours, not the code."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


async def _best_async(
    fn: Callable[[], Awaitable[object]], repeats: int
) -> tuple[float, Any, float]:
    """As _best, for a coroutine function; also the total seconds of all runs."""
    best, out, total = float("inf"), None, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = await fn()
        took = time.perf_counter() - t0
        best, total = min(best, took), total + took
    return best, out, total


def _time_calls(obj: object, names: list[str], spent: dict[str, float]) -> None:
    """Wrap `obj`'s async methods `names` so their wall time adds up in `spent`."""
    for name in names:
        fn = getattr(obj, name)

        async def wrapped(*a: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await _fn(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(obj, name, wrapped)


@dataclass
class Row:
    """One measurement: `rate` operations of `unit` per second."""

    name: str
    rate: float
    unit: str


# pure rows (no I/O)


def raw_hash_rate(repeats: int) -> float:
    """hashlib.sha256(64 bytes).digest() per second: the unit of the last column."""
    rng = random.Random(SEED)
    blocks = [rng.randbytes(64) for _ in range(100_000)]

    def raw_hash() -> None:
        sha256 = hashlib.sha256
        for b in blocks:
            sha256(b).digest()

    s, _ = _best(raw_hash, repeats)
    return len(blocks) / s


@dataclass
class PureResult:
    """The figures without storage, and what the service's run is checked against."""

    rows: list[Row]
    entries: list[Entry]
    root: bytes
    checkpoint_sizes: list[int]
    kinds: dict[str, int]
    cost: dict[str, float]  # seconds of each in-memory step of a close, for the whole workload
    raw_readings: tuple[float, float] = (0.0, 0.0)  # raw hash rate at the start and the end


def bench_pure(work: Workload, n_ops: int, repeats: int) -> PureResult:
    """Raw SHA-256, decoding, rules, leaf hashing, signing, replay and proofs, in memory."""
    rng = random.Random(SEED)
    rows = [Row("SHA-256 of 64 bytes (hashlib, raw)", raw_hash_rate(repeats), "hashes")]

    envelopes = [t.envelope for t in work.tokens]
    hashes = [t.record_hash for t in work.tokens]

    def decode() -> None:
        for env, h in zip(envelopes, hashes, strict=True):
            _, rec = cose.open_record(env)
            IntervalFlows.from_records([(rec, h)])

    cost: dict[str, float] = {}
    s, _ = _best(decode, repeats)
    cost["decode records"] = s
    rows.append(Row("open_record + IntervalFlows.from_records", len(envelopes) / s, "intervals"))

    def close_all() -> tuple[LedgerEngine, list[int]]:
        eng = LedgerEngine()
        sizes = []
        per_interval = len(work.flows) // work.intervals
        for n, (site, flows) in enumerate(work.flows, 1):
            eng.close_interval(site, flows, work.battery(site))
            if n % per_interval == 0:
                sizes.append(len(eng.entries))
        return eng, sizes

    s, (engine, cp_sizes) = _best(close_all, repeats)
    cost["rules"] = s
    entries = engine.entries
    n_entries, n_intervals = len(entries), len(work.flows)
    rows.append(Row("LedgerEngine.close_interval", n_entries / s, "entries"))
    rows.append(Row("LedgerEngine.close_interval", n_intervals / s, "intervals"))

    def leaves() -> list[bytes]:
        return [leaf_for(e).encode() for e in entries]

    s, leaf_bytes = _best(leaves, repeats)
    cost["leaf encoding"] = s
    rows.append(Row("entry -> leaf bytes (Entry.to_bytes + leaf CBOR)", n_entries / s, "entries"))

    def hash_and_append() -> merkle.MerkleLog:
        log = merkle.MerkleLog()
        for leaf in leaf_bytes:
            log.append(merkle.leaf_hash(leaf))
        return log

    s, log = _best(hash_and_append, repeats)
    cost["leaf hash + append"] = s
    rows.append(Row("merkle.leaf_hash + MerkleLog.append", n_entries / s, "entries"))

    key = Ed25519PrivateKey.generate()
    root = log.root()

    def sign() -> None:
        for size in cp_sizes:
            sign_checkpoint(Checkpoint(ORIGIN, size, log.root(size)), ORIGIN, key)

    s, _ = _best(sign, repeats)
    cost["checkpoint signing"] = s
    rows.append(Row("root(size) + sign_checkpoint (Ed25519)", len(cp_sizes) / s, "checkpoints"))

    def decode_leaves() -> list[Entry]:
        out = []
        for leaf, h in zip(leaf_bytes, log_hashes, strict=True):
            if merkle.leaf_hash(leaf) != h:
                raise RuntimeError("leaf hash mismatch")
            out.append(Entry.from_bytes(decode_leaf(leaf).entry))
        return out

    log_hashes = [merkle.leaf_hash(leaf) for leaf in leaf_bytes]
    s, decoded = _best(decode_leaves, repeats)
    rows.append(Row("load: leaf hash check + decode_leaf + from_bytes", n_entries / s, "entries"))
    s, state = _best(lambda: replay(decoded), repeats)
    rows.append(Row("replay(entries)", n_entries / s, "entries"))
    if state.snapshot() != engine.state.snapshot():
        raise RuntimeError("replay does not reach the engine's state")
    s, _ = _best(lambda: merkle.MerkleLog(log_hashes), repeats)
    rows.append(Row("MerkleLog(leaf hashes) rebuild", n_entries / s, "entries"))

    # proofs against the checkpoints the service signs (one per interval)
    cp_roots = {size: log.root(size) for size in cp_sizes}
    incl = []
    for _ in range(n_ops):
        size = rng.choice(cp_sizes)
        incl.append((rng.randrange(size), size))
    cons = []
    for _ in range(n_ops):
        a, b = sorted(rng.sample(cp_sizes, 2)) if len(cp_sizes) > 1 else (cp_sizes[0],) * 2
        cons.append((a, b))
    s, incl_proofs = _best(lambda: [log.inclusion_proof(i, sz) for i, sz in incl], repeats)
    rows.append(Row("MerkleLog.inclusion_proof, random checkpoint", n_ops / s, "proofs"))

    def verify_incl() -> None:
        for (i, sz), proof in zip(incl, incl_proofs, strict=True):
            merkle.verify_inclusion(log_hashes[i], i, sz, proof, cp_roots[sz])

    s, _ = _best(verify_incl, repeats)
    rows.append(Row("merkle.verify_inclusion", n_ops / s, "proofs"))
    s, cons_proofs = _best(lambda: [log.consistency_proof(a, b) for a, b in cons], repeats)
    rows.append(Row("consistency_proof, random checkpoint pair", n_ops / s, "proofs"))

    def verify_cons() -> None:
        for (a, b), proof in zip(cons, cons_proofs, strict=True):
            merkle.verify_consistency(a, b, cp_roots[a], cp_roots[b], proof)

    s, _ = _best(verify_cons, repeats)
    rows.append(Row("merkle.verify_consistency", n_ops / s, "proofs"))

    kinds: dict[str, int] = defaultdict(int)
    for e in entries:
        kinds[EntryKind(e.kind).name] += 1
    return PureResult(rows, entries, root, cp_sizes, dict(kinds), cost)


# the service on a database


@dataclass
class ServiceResult:
    """One backend's figures."""

    backend: str
    ingest_s: float = 0.0
    close_s: float = 0.0
    closed: int = 0
    entries: int = 0
    checkpoints: int = 0
    close_spent: dict[str, float] = field(default_factory=dict)
    proofs: int = 0
    proof_s: float = 0.0
    proof_spent: dict[str, float] = field(default_factory=dict)
    load_s: float = 0.0
    load_spent: dict[str, float] = field(default_factory=dict)
    error: str = ""


class _Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t


STORE_CALLS = [
    "open_intervals",
    "device_spans",
    "records_of",
    "append_intervals",
    "add_checkpoint",
    "seqs_of_tokens",
    "leaves_at",
    "checkpoints",
    "leaves",
    "latest_checkpoint",
]


async def run_service(
    url: str, work: Workload, pure: PureResult, n_proofs: int, repeats: int, res: ServiceResult
) -> None:
    """Ingest (untimed), close every interval, prove random tokens, reload the log."""
    store = await Store.connect(url)
    try:
        await store.migrate()
        for d in work.devices:
            await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
        limits = IngestLimits(backfill_window_s=max(7 * 24 * 3600, (work.intervals + 10) * 300))
        ingest = IngestService(store, DEPLOYMENT, time.time, limits)
        site_of = {d.device_id: d.site_id for d in work.devices}
        t0 = time.perf_counter()
        for tok in work.tokens:
            rec = tok.record
            topic = topics.topic(site_of[rec.device_id], rec.device_id, topics.Channel.TOKENS)
            out = await ingest.handle(topic, tok.envelope)
            if out.receipt.status != "accepted":
                raise RuntimeError(f"{rec.token_id}: {out.receipt.status} {out.receipt}")
        res.ingest_s = time.perf_counter() - t0

        spent: dict[str, float] = defaultdict(float)
        lstore = LedgerStore(store.engine)
        _time_calls(lstore, STORE_CALLS, spent)
        clock = _Clock(work.first_start)
        key = Ed25519PrivateKey.generate()
        svc = LedgerService(lstore, key, ORIGIN, clock.now, grace_s=GRACE_S, battery=work.battery)
        await svc.load()
        spent.clear()
        t0 = time.perf_counter()
        for j in range(work.intervals):
            # the runtime's loop: the clock passes interval j's end plus the grace period
            clock.t = work.first_start + (j + 1) * INTERVAL_S + GRACE_S
            res.closed += await svc.close_due()
        res.close_s = time.perf_counter() - t0
        res.close_spent = dict(spent)
        res.entries = svc.log.size
        cps = await lstore.checkpoints()
        res.checkpoints = len(cps)
        if res.closed != len(work.flows):
            raise RuntimeError(f"closed {res.closed} of {len(work.flows)} intervals")
        if svc.log.root() != pure.root or [c.size for c in cps] != pure.checkpoint_sizes:
            raise RuntimeError("the service's log differs from the pure engine's")

        # proofs for random tokens, each against the latest checkpoint (DB lookups included)
        rng = random.Random(SEED)
        ids = [rng.choice(work.tokens).record.token_id for _ in range(n_proofs)]
        roots = {c.size: c.root for c in cps}

        async def prove() -> list[Any]:
            return [await svc.proof_for_token(t) for t in ids]

        spent.clear()
        res.proof_s, proofs, total = await _best_async(prove, repeats)
        res.proof_spent = {k: v * res.proof_s / total for k, v in spent.items()}
        res.proofs = n_proofs
        for tid, p in zip(ids, proofs, strict=True):
            if p is None:
                raise RuntimeError(f"no proof for {tid}")
            merkle.verify_inclusion(
                merkle.leaf_hash(p.leaf), p.leaf_index, p.tree_size, p.path, roots[p.tree_size]
            )
            if p.record_hash not in decode_leaf(p.leaf).record_hashes:
                raise RuntimeError(f"the proven leaf does not cover {tid}")

        # restart: a fresh service rebuilds engine state and log from the stored entries
        async def restart() -> LedgerService:
            again = LedgerService(lstore, key, ORIGIN, clock.now, battery=work.battery)
            await again.load()
            return again

        spent.clear()
        res.load_s, again, total = await _best_async(restart, repeats)
        res.load_spent = {k: v * res.load_s / total for k, v in spent.items()}
        if again.log.root() != pure.root:
            raise RuntimeError("the reloaded log has another root")
    finally:
        await store.close()


def run_backend(backend: str, work: Workload, pure: PureResult, args: Any) -> ServiceResult:
    """The service run on a fresh database of one backend."""
    res = ServiceResult(backend)
    with tempfile.TemporaryDirectory(prefix="gridmint-bench-") as tmp:
        url = ""
        try:
            url = (
                f"sqlite:///{Path(tmp) / 'ledger.sqlite'}"
                if backend == "sqlite"
                else create_pg_database()
            )
            asyncio.run(run_service(url, work, pure, args.proofs, args.repeats, res))
        except Exception as exc:
            res.error = repr(exc)
        finally:
            if backend == "postgres" and url:
                with contextlib.suppress(Exception):
                    drop_pg_database(url)
    return res


# report


def machine_facts() -> dict[str, str]:
    """The machine and the libraries the ledger path uses."""
    return shared_machine_facts(("cryptography", "cbor2", "sqlalchemy", "aiosqlite", "asyncpg"))


def service_rows(r: ServiceResult) -> list[Row]:
    """The table rows of one backend."""
    b = r.backend
    return [
        Row(f"{b}: close_due (store + rules + signing)", r.entries / r.close_s, "entries"),
        Row(f"{b}: close_due (store + rules + signing)", r.closed / r.close_s, "intervals"),
        Row(f"{b}: proof_for_token, random token", r.proofs / r.proof_s, "proofs"),
        Row(f"{b}: LedgerService.load() (restart)", r.entries / r.load_s, "entries"),
    ]


def _spent(spent: dict[str, float], total: float) -> str:
    parts = [f"{k} {v:.2f} s" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v]
    storage = sum(spent.values())
    return f"storage {storage:.2f} s of {total:.2f} s ({storage / total:.0%}): " + ", ".join(parts)


def print_report(
    facts: dict[str, str],
    work: Workload,
    pure: PureResult,
    results: list[ServiceResult],
    args: argparse.Namespace,
) -> None:
    """The table, then where each backend's time went."""
    print("machine")
    for k, v in facts.items():
        print(f"  {k:<13} {v}")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(pure.kinds.items(), key=lambda kv: -kv[1]))
    print(
        f"\nworkload: {args.sites} sites ({len(work.battery_sites)} with a battery) x "
        f"{args.intervals} intervals = {len(work.flows)} records and interval closes -> "
        f"{len(pure.entries)} entries ({len(pure.entries) / len(work.flows):.2f} per interval), "
        f"{len(pure.checkpoint_sizes)} checkpoints; {args.proofs} proofs per DB proof row, "
        f"{args.ops} per in-memory proof row; best of {args.repeats}; seed {SEED} "
        f"(signed in {work.mint_s:.1f} s)\nentry kinds: {kinds}\n"
    )
    rows = list(pure.rows)
    for r in results:
        if not r.error:
            rows += service_rows(r)
    raw = rows[0].rate
    start, end = pure.raw_readings
    print(f"raw SHA-256: {start:,.0f}/s at the start, {end:,.0f}/s at the end; the better is 1.0\n")
    print(f"{'measurement':<52} {'rate':>11} {'unit/s':<12} {'us/op':>9} {'raw hashes':>11}")
    print("-" * 99)
    for row in rows:
        print(
            f"{row.name:<52} {row.rate:>11,.0f} {row.unit:<12} {1e6 / row.rate:>9.2f} "
            f"{raw / row.rate:>11.1f}"
        )
    print()
    for r in results:
        if r.error:
            print(f"{r.backend}: FAILED: {r.error}")
            continue
        print(
            f"{r.backend}: ok: ingest (untimed) {r.ingest_s:.1f} s; close_due {r.close_s:.2f} s "
            f"for {r.closed} intervals, {r.entries} entries, {r.checkpoints} checkpoints"
        )
        print(f"  close_due   {_spent(r.close_spent, r.close_s)}")
        storage = sum(r.close_spent.values())
        rest = r.close_s - storage - sum(pure.cost.values())
        split = [("storage calls", storage), *pure.cost.items(), ("the rest", rest)]
        print(
            "  close_due per interval, ms: "
            + ", ".join(f"{k} {v / r.closed * 1e3:.3f} ({v / r.close_s:.0%})" for k, v in split)
        )
        print(f"  proofs      {_spent(r.proof_spent, r.proof_s)} (per run of {r.proofs})")
        print(f"  load()      {_spent(r.load_spent, r.load_s)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=50)
    p.add_argument("--intervals", type=int, default=40)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--proofs", type=int, default=500, help="proof_for_token calls per backend run")
    p.add_argument("--ops", type=int, default=20_000, help="operations per in-memory proof row")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the best is reported")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the flows")
    args = p.parse_args(argv)
    if args.sites < 1 or args.intervals < 2 or min(args.proofs, args.ops, args.repeats) < 1:
        p.error("need --sites >= 1, --intervals >= 2, and --proofs, --ops, --repeats >= 1")

    facts = machine_facts()
    work = make_workload(args.sites, args.intervals, args.seed)
    try:
        pure = bench_pure(work, args.ops, args.repeats)
    except (merkle.ProofError, RuntimeError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = [run_backend(b, work, pure, args) for b in backends]
    # The hash rate again at the end; the better reading is the unit (a neighbour's burst
    # during one reading would otherwise skew every ratio).
    pure.raw_readings = (pure.rows[0].rate, raw_hash_rate(args.repeats))
    pure.rows[0].rate = max(pure.raw_readings)
    print_report(facts, work, pure, results, args)
    return 0 if not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
