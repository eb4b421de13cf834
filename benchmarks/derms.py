"""The DERMS at fleet scale: fleet API latency, dispatch acknowledgements, live totals' delay.

Run: .venv/bin/python -m benchmarks.derms --devices 10000
     .venv/bin/python -m benchmarks.derms --devices 10000 --database-url postgresql://postgres@127.0.0.1:5432

A measurement, not a test: it asserts nothing about speed. It exits non-zero only if a run does
not end with every device acknowledged and every totals change seen.

Parts, all real: Mosquitto on a free port (configured as cloud/broker_config.py and
docs/operations.md say: 256 in flight, a queue above the fleet's burst); the aggregator
(`CloudRuntime` with its HTTP API, SQLite in a temp dir by default, or a fresh database on the
PostgreSQL server of `--database-url`, dropped afterwards) in this process; the simulated Pis
(`simulators.fleet_derms.DermsFleet`: CBOR telemetry every `--telemetry-s`, by default over
`RawPublisher` (`--fleet-publish`), commands checked with the protocol's own code, signed
acknowledgements, QoS 1, over the same publisher) in `--fleet-processes` separate
processes; the HTTP load (httpx, keep-alive, `--concurrency` requests in flight) in another
process, so that neither shares the aggregator's GIL.

Phases, each with the fleet's telemetry running:

1. latency: for `--latency-s`, GET /api/v1/fleet/live (a page of `--page` devices at a random
   offset), /api/v1/fleet/totals, /api/v1/fleet/groups and /api/v1/dispatch/key in turn;
   p50/p99 of each. /api/v1/dispatch/key (public, no query, a constant answer) is the
   baseline: the same server, event loop, load and machine, with no work of its own, so a
   ratio to its p99 is what the fleet endpoints add. (/healthz is not used: its database
   ping waits on the database driver's thread and is the slowest of all on a busy machine.)
2. totals: `--totals-rounds` times, every simulated home's load changes and the fleet
   publishes a telemetry round at once; the delay is from the change until GET
   /api/v1/fleet/totals (polled every 10 ms) shows the new grid total, and also from the
   fleet's last publish of the round (one process publishing 10,000 samples takes a while; a
   real fleet publishes in parallel).
3. dispatch: POST /api/v1/dispatch/events for group "all", opModFixedW; the time from the
   event's creation (its `created_ms`) until the last device's first acknowledgement arrived
   (the commands' `first_ack_ms`, as the API's /devices view reports them), and the time until
   GET /api/v1/dispatch/events/{id} (polled every 100 ms) shows no device unanswered.

With `--baseline-devices M` (default 100) the same three phases run first at M devices, and
the 10,000-device figures are also given as a ratio to those (how they scale with the fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from benchmarks.ingest import _thread_cpu
from benchmarks.machine import machine_facts
from cloud.broker_config import AGGREGATOR_INFLIGHT
from cloud.domain.devices import DeviceStatus
from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from cloud.storage.store import Store
from cloud.storage.tables import device_keys, devices
from simulators.fleet import FleetDevice
from simulators.fleet_derms import DermsFleet
from tests.helpers.services import Mosquitto

DEPLOYMENT = b"gridmint-bench-derms"
ADMIN = "bench-derms-admin"
ZONES = 10
PV_W, LOAD_W = 3000, 800  # SimHome's defaults: grid_w = load - pv with the battery idle
ENDPOINTS = ("live", "totals", "groups", "key")
log = logging.getLogger("benchmarks.derms")


def bench_devices(n: int, first: int = 0, count: int | None = None) -> list[FleetDevice]:
    """Devices `first`..`first+count` of an n-device fleet, with keys derived from the index, so
    the aggregator (which registers the public keys) and the fleet processes (which sign) agree
    without passing keys around."""
    count = n - first if count is None else count
    out = []
    for i in range(first, first + count):
        seed = hashlib.sha256(b"gridmint-bench-derms/%d" % i).digest()
        out.append(
            FleetDevice(
                f"bench-{i:06d}",
                f"bench-site-{i:06d}",
                key=Ed25519PrivateKey.from_private_bytes(seed),
            )
        )
    return out


def zone_of(i: int) -> str:
    return f"z{i % ZONES}"


# the fleet's processes


def _fleet_process(
    n: int,
    first: int,
    count: int,
    broker_url: str,
    dispatch_key: bytes,
    telemetry_s: float,
    connections: int,
    pipe: Any,
    profile: str = "",
    raw_publish: bool = True,
) -> None:
    logging.basicConfig(level=logging.WARNING)
    main = _fleet_main(
        n, first, count, broker_url, dispatch_key, telemetry_s, connections, pipe, raw_publish
    )
    try:
        if not profile:
            asyncio.run(main)
            return
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(asyncio.run, main)
        finally:
            prof.dump_stats(f"{profile}.{n}.fleet-{first}")
    except BaseException as exc:  # tell the parent rather than die silently
        with contextlib.suppress(Exception):
            pipe.send(("error", repr(exc)))


async def _fleet_main(
    n: int,
    first: int,
    count: int,
    broker_url: str,
    dispatch_key: bytes,
    telemetry_s: float,
    connections: int,
    pipe: Any,
    raw_publish: bool,
) -> None:
    devices = bench_devices(n, first, count)
    fleet = DermsFleet(
        devices,
        broker_url,
        DEPLOYMENT,
        dispatch_key,
        connections=connections,
        telemetry_every_s=telemetry_s,
        raw_publish=raw_publish,
    )
    await fleet.start()
    pipe.send(("ready", count))
    try:
        while True:
            msg = await asyncio.to_thread(pipe.recv)
            if msg[0] == "load":
                changed_at = time.time()
                for s in fleet.sims.values():
                    s.home.load_w = int(msg[1])
                sent = fleet.publish_telemetry()
                grid = sum(s.home.grid_w for s in fleet.sims.values())
                pipe.send(("published", sent, grid, changed_at, time.time()))
            elif msg[0] == "report":
                r = fleet.report
                pipe.send(("report", r.telemetry, r.commands, dict(r.acks), time.process_time()))
            else:
                break
    finally:
        await fleet.stop()


class FleetProcs:
    """The fleet's processes and their pipes."""

    def __init__(self, n: int, procs: int, broker_url: str, dispatch_key: bytes, args: Any):
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        per = math.ceil(n / procs)
        for k in range(procs):
            first, count = k * per, min(per, n - k * per)
            if count <= 0:
                break
            mine, theirs = ctx.Pipe()
            p = ctx.Process(
                target=_fleet_process,
                args=(
                    n,
                    first,
                    count,
                    broker_url,
                    dispatch_key,
                    args.telemetry_s,
                    args.connections,
                    theirs,
                    args.profile,
                    args.fleet_publish == "raw",
                ),
                daemon=True,
            )
            p.start()
            self.pipes.append(mine)
            self.procs.append(p)

    async def ask(self, msg: tuple[Any, ...], timeout_s: float = 120.0) -> list[tuple[Any, ...]]:
        """Send `msg` to every process, return their answers (in process order)."""
        for pipe in self.pipes:
            pipe.send(msg)
        return [await self.recv(pipe, timeout_s) for pipe in self.pipes]

    async def recv(self, pipe: Any, timeout_s: float) -> tuple[Any, ...]:
        if not await asyncio.to_thread(pipe.poll, timeout_s):
            raise TimeoutError("a fleet process did not answer")
        got = pipe.recv()
        if got[0] == "error":
            raise RuntimeError(f"fleet process: {got[1]}")
        return tuple(got)

    async def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop",))
        for p in self.procs:
            await asyncio.to_thread(p.join, 15)
            if p.is_alive():
                p.kill()


# the HTTP load process


def _latency_process(
    url: str, seconds: float, concurrency: int, n: int, page: int, results: Any
) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        results.put(asyncio.run(_latency_main(url, seconds, concurrency, n, page)))
    except BaseException as exc:
        results.put({"error": repr(exc)})


async def _latency_main(
    url: str, seconds: float, concurrency: int, n: int, page: int
) -> dict[str, Any]:
    lat: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    errors: dict[str, int] = {e: 0 for e in ENDPOINTS}
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, limits=limits, timeout=30
    ) as http:

        def request(name: str) -> tuple[str, dict[str, Any]]:
            if name == "live":
                offset = rng.randrange(0, max(1, n - page))
                return "/api/v1/fleet/live", {"limit": page, "offset": offset}
            if name == "totals":
                return "/api/v1/fleet/totals", {}
            if name == "groups":
                return "/api/v1/fleet/groups", {}
            return "/api/v1/dispatch/key", {}

        for name in ENDPOINTS:  # warm up: connections, first-call paths
            path, params = request(name)
            await http.get(path, params=params)
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                name = ENDPOINTS[i % len(ENDPOINTS)]
                i += 1
                path, params = request(name)
                t0 = time.perf_counter()
                r = await http.get(path, params=params)
                took = time.perf_counter() - t0
                if r.status_code != 200:
                    errors[name] += 1
                else:
                    lat[name].append(took)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {"latency": lat, "errors": errors}


# one run


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank), or nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


@dataclass
class RunResult:
    """One fleet size's figures (times in seconds)."""

    devices: int
    setup_s: float = math.nan
    latency: dict[str, list[float]] = field(default_factory=dict)
    latency_errors: dict[str, int] = field(default_factory=dict)
    latency_window_s: float = math.nan
    aggregator_cpu: float = math.nan  # share of one core during the latency window
    broker_cpu: float = math.nan
    telemetry_per_s: float = math.nan  # telemetry messages the aggregator took per second
    cpu_by_thread: dict[str, float] = field(default_factory=dict)  # share of a core, by thread
    totals_delays: list[float] = field(default_factory=list)
    totals_publish_s: list[float] = field(default_factory=list)  # the fleet's publishing
    totals_after_publish: list[float] = field(default_factory=list)  # last publish -> seen
    totals_first: list[float] = field(default_factory=list)  # change -> first sample counted
    totals_missed: int = 0
    post_s: float = math.nan
    targeted: int = 0
    acked: int = 0
    all_acked_s: float = math.nan  # created_ms -> last first_ack_ms
    ack_p50_s: float = math.nan  # per device: sent_ms -> first_ack_ms
    api_all_answered_s: float = math.nan  # POST sent -> GET shows nobody unanswered
    responses: dict[str, int] = field(default_factory=dict)
    # CPU seconds during the dispatch phase (POST to all answered): where the time went
    dispatch_wall_s: float = math.nan
    dispatch_cpu_s: float = math.nan  # the aggregator's process
    dispatch_fleet_cpu_s: float = math.nan  # the fleet's processes
    fleet_acks: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.targeted == self.devices
            and self.acked == self.devices
            and self.totals_missed == 0
        )

    def p(self, name: str, q: float) -> float:
        return pct(self.latency.get(name, []), q)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settings(db_url: str, broker_url: str) -> CloudSettings:
    return CloudSettings(
        database_url=db_url,
        broker_url=broker_url,
        deployment=DEPLOYMENT.decode(),
        http_port=0,
        client_id=f"bench-derms-{time.monotonic_ns()}",
        admin_token=ADMIN,
        # one client makes all the requests: the per-client limit is not what is measured
        http_rate_per_s=1e6,
        http_burst=1_000_000,
    )


async def _register(db_url: str, n: int) -> None:
    """The fleet is registered (approved) before the aggregator starts, as in production after
    a restart: rows written in bulk, the same as `Store.add_device` writes one by one (which
    takes minutes for 10,000 on this machine and is not what is measured)."""
    store = await Store.connect(db_url)
    try:
        await store.migrate()
        now = int(time.time() * 1000)
        fleet = bench_devices(n)
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(devices),
                [
                    {
                        "device_id": d.device_id,
                        "site_id": d.site_id,
                        "status": DeviceStatus.APPROVED,
                        "capacity_w": d.capacity_w,
                        "zone": zone_of(i),
                        "created_ms": now,
                    }
                    for i, d in enumerate(fleet)
                ],
            )
            await conn.execute(
                insert(device_keys),
                [
                    {
                        "kid": d.kid,
                        "device_id": d.device_id,
                        "public_key": d.public_key,
                        "valid_from": 0,
                        "valid_until": None,
                    }
                    for d in fleet
                ],
            )
    finally:
        await store.close()


async def _wait(pred: Any, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(every_s)


async def run(n: int, db_url: str, broker: Mosquitto, args: Any) -> RunResult:
    """Start the aggregator and the fleet, measure the three phases, stop everything."""
    res = RunResult(n)
    t_setup = time.perf_counter()
    await _register(db_url, n)
    runtime = CloudRuntime(_settings(db_url, broker.url))
    await runtime.start()
    fleet: FleetProcs | None = None
    http = httpx.AsyncClient(
        base_url=runtime.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    )
    try:
        assert runtime.fleet is not None
        assert runtime.dispatch is not None
        assert runtime.mqtt is not None
        if len(runtime.fleet.state.devices) != n:
            raise RuntimeError("the aggregator did not load every device")
        if not await runtime.mqtt.wait_ready(10):
            raise RuntimeError("the aggregator could not subscribe at the broker")
        fleet = FleetProcs(n, args.fleet_processes, broker.url, runtime.dispatch.public_key, args)
        for pipe in fleet.pipes:
            await fleet.recv(pipe, 120)
        state = runtime.fleet.state
        await _wait(lambda: state.totals["all"].online == n, 60, "every device online")
        res.setup_s = time.perf_counter() - t_setup

        await _latency_phase(runtime, broker, n, args, res)
        await _totals_phase(http, fleet, n, args, res)
        pids = [p.pid for p in fleet.procs if p.pid is not None]
        cpu0 = time.process_time()
        fleet0 = sum(_cpu_of(pid) for pid in pids)
        t0 = time.perf_counter()
        await _dispatch_phase(http, runtime, fleet, n, res)
        res.dispatch_wall_s = time.perf_counter() - t0
        res.dispatch_cpu_s = time.process_time() - cpu0
        res.dispatch_fleet_cpu_s = sum(_cpu_of(pid) for pid in pids) - fleet0
        reports = await fleet.ask(("report",))
        for _kind, _tel, _cmds, acks, _cpu in reports:
            for k, v in acks.items():
                res.fleet_acks[k] = res.fleet_acks.get(k, 0) + v
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        log.exception("run at %d devices failed", n)
    finally:
        await http.aclose()
        if fleet is not None:
            await fleet.stop()
        await runtime.stop()
    return res


async def _latency_phase(
    runtime: CloudRuntime, broker: Mosquitto, n: int, args: Any, res: RunResult
) -> None:
    assert runtime.fleet is not None
    assert broker.proc is not None
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(
        target=_latency_process,
        args=(runtime.url, args.latency_s, args.concurrency, n, args.page, results),
        daemon=True,
    )
    tel0 = runtime.fleet.counters.telemetry
    threads0 = _thread_cpu()
    cpu0, bcpu0, t0 = time.process_time(), _cpu_of(broker.proc.pid), time.perf_counter()
    proc.start()
    got = await asyncio.to_thread(results.get, True, args.latency_s + 120)
    wall = time.perf_counter() - t0
    res.aggregator_cpu = (time.process_time() - cpu0) / wall
    res.broker_cpu = (_cpu_of(broker.proc.pid) - bcpu0) / wall
    res.telemetry_per_s = (runtime.fleet.counters.telemetry - tel0) / wall
    res.cpu_by_thread = {
        name: round((cpu - threads0.get(name, 0.0)) / wall, 3)
        for name, cpu in sorted(_thread_cpu().items(), key=lambda kv: -kv[1])
        if cpu - threads0.get(name, 0.0) > 0.005 * wall
    }
    await asyncio.to_thread(proc.join, 10)
    if "error" in got:
        raise RuntimeError(f"HTTP load: {got['error']}")
    res.latency = got["latency"]
    res.latency_errors = got["errors"]
    res.latency_window_s = args.latency_s


async def _totals_phase(
    http: httpx.AsyncClient, fleet: FleetProcs, n: int, args: Any, res: RunResult
) -> None:
    """Both processes read the same clock (time.time() on one machine)."""
    for r in range(args.totals_rounds):
        load = LOAD_W + 10 * (r + 1)
        expected = n * (load - PV_W)
        for pipe in fleet.pipes:
            pipe.send(("load", load))
        seen_at = first_at = None
        before = (await http.get("/api/v1/fleet/totals")).json()["grid_w"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = (await http.get("/api/v1/fleet/totals")).json()
            if first_at is None and t["grid_w"] != before:
                first_at = time.time()  # the round's first sample is in the totals
            if t["grid_w"] == expected:
                seen_at = time.time()
                break
            await asyncio.sleep(0.01)
        answers = [await fleet.recv(pipe, 60) for pipe in fleet.pipes]
        if sum(a[2] for a in answers) != expected:
            raise RuntimeError(f"the fleet's grid total is {answers}, expected {expected}")
        changed_at = min(a[3] for a in answers)
        published_at = max(a[4] for a in answers)
        res.totals_publish_s.append(published_at - changed_at)
        if seen_at is None:
            res.totals_missed += 1
        else:
            res.totals_delays.append(seen_at - changed_at)
            res.totals_after_publish.append(seen_at - published_at)
            res.totals_first.append((first_at or seen_at) - changed_at)


async def _dispatch_phase(
    http: httpx.AsyncClient, runtime: CloudRuntime, fleet: FleetProcs, n: int, res: RunResult
) -> None:
    assert runtime.dispatch is not None
    body = {
        "group": "all",
        "control": "opModFixedW",
        "value": 1000 * n,  # 20 % of every 5 kW battery
        "duration_s": 120,
        "name": "benchmark",
    }
    t0 = time.perf_counter()
    r = await http.post("/api/v1/dispatch/events", json=body)
    res.post_s = time.perf_counter() - t0
    if r.status_code != 201:
        raise RuntimeError(f"POST event: {r.status_code} {r.text}")
    event = r.json()
    res.targeted = int(event["devices"])
    event_id = event["event_id"]

    async def answered() -> bool:
        v = (await http.get(f"/api/v1/dispatch/events/{event_id}")).json()
        res.responses = dict(v["responses"])
        return res.responses.get("sent", 0) == 0

    await _wait(answered, 120, "every device answered", every_s=0.1)
    res.api_all_answered_s = time.perf_counter() - t0
    rows = await runtime.dispatch.device_responses(event_id)
    acked = [c for c in rows if c.first_ack_ms is not None]
    res.acked = len(acked)
    if acked:
        res.all_acked_s = (max(c.first_ack_ms or 0 for c in acked) - event["created_ms"]) / 1000
        res.ack_p50_s = pct([(c.first_ack_ms or 0) - c.sent_ms for c in acked], 50) / 1000
    # the fleet's batteries stop: the next run (or nothing) starts from rest
    await http.post(f"/api/v1/dispatch/events/{event_id}/cancel")


# database and broker


async def _pg(server: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _server_of(url: str) -> str:
    """postgresql://user@host:port from a URL with or without a database."""
    rest = url.split("://", 1)[1]
    return "postgresql://" + rest.split("/", 1)[0]


@contextlib.contextmanager
def database(url: str | None, tmp: Path, tag: str) -> Any:
    """A fresh database for one run: a SQLite file in `tmp`, or a new PostgreSQL database on
    `url`'s server (dropped afterwards)."""
    if url is None:
        yield f"sqlite:///{tmp / tag}.sqlite"
        return
    server = _server_of(url)
    name = f"gridmint_bench_derms_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(server, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(_pg(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


BROKER_CONF = (
    f"max_inflight_messages {AGGREGATOR_INFLIGHT}\n"
    # docs/operations.md: above the fleet's burst (10,000 commands to one fleet connection)
    "max_queued_messages 100000\n"
)


def run_size(n: int, args: Any) -> RunResult:
    """One fleet size on its own broker and database."""
    with tempfile.TemporaryDirectory(prefix="gridmint-bench-derms-") as tmp:
        broker = Mosquitto(Path(tmp), extra_config=BROKER_CONF)
        broker.start()
        try:
            with database(args.database_url, Path(tmp), f"derms-{n}") as db_url:
                if not args.profile:
                    return asyncio.run(run(n, db_url, broker, args))
                import cProfile

                prof = cProfile.Profile()
                try:
                    return prof.runcall(asyncio.run, run(n, db_url, broker, args))
                finally:
                    prof.dump_stats(f"{args.profile}.{n}")
        finally:
            broker.stop()


# report


def _ms(s: float) -> str:
    return "-" if math.isnan(s) else f"{s * 1000:.1f}"


def summary(res: RunResult, base: RunResult | None, args: Any) -> str:
    lines = [f"== {res.devices} devices ({'ok' if res.ok else 'NOT OK'})"]
    if res.error:
        lines.append(f"error: {res.error}")
    lines.append(
        f"setup {res.setup_s:.1f} s; latency window {res.latency_window_s:.0f} s, "
        f"aggregator CPU {res.aggregator_cpu:.0%} of a core, broker {res.broker_cpu:.0%}, "
        f"telemetry taken {res.telemetry_per_s:,.0f}/s"
    )
    lines.append(f"aggregator CPU by thread (share of a core): {res.cpu_by_thread}")
    hz99 = res.p("key", 99)
    lines.append(
        f"{'endpoint':<10}{'n':>7}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'p99/key':>13}" + (f"{'p99/base':>10}" if base else "")
    )
    for e in ENDPOINTS:
        v = res.latency.get(e, [])
        row = (
            f"{e:<10}{len(v):>7}{res.latency_errors.get(e, 0):>5}{_ms(pct(v, 50)):>9}"
            f"{_ms(pct(v, 99)):>9}{_ms(max(v) if v else math.nan):>9}"
            f"{res.p(e, 99) / hz99:>13.2f}"
        )
        if base:
            row += f"{res.p(e, 99) / base.p(e, 99):>10.2f}"
        lines.append(row)
    d = res.totals_delays
    lines.append(
        f"totals delay over {len(d)} rounds (missed {res.totals_missed}): "
        f"median {_ms(pct(d, 50))} ms, max {_ms(max(d) if d else math.nan)} ms; "
        f"the fleet's publishing took up to {_ms(max(res.totals_publish_s, default=math.nan))} "
        f"ms; after its last publish: median {_ms(pct(res.totals_after_publish, 50))} ms, max "
        f"{_ms(max(res.totals_after_publish, default=math.nan))} ms; the round's first sample "
        f"counted after median {_ms(pct(res.totals_first, 50))} ms"
        + (
            f"; x{pct(d, 50) / pct(base.totals_delays, 50):.1f} the baseline's median"
            if base and base.totals_delays
            else ""
        )
    )
    lines.append(
        f"dispatch: {res.acked} of {res.targeted} acknowledged; POST {_ms(res.post_s)} ms; "
        f"created -> last first ack {res.all_acked_s:.2f} s (per device p50 "
        f"{_ms(res.ack_p50_s)} ms); API showed all answered after {res.api_all_answered_s:.2f} s"
        + (
            f"; x{res.all_acked_s / base.all_acked_s:.1f} the baseline's"
            if base and base.all_acked_s > 0
            else ""
        )
    )
    lines.append(
        f"dispatch phase: {res.dispatch_wall_s:.1f} s wall, aggregator CPU "
        f"{res.dispatch_cpu_s:.1f} s, fleet CPU {res.dispatch_fleet_cpu_s:.1f} s"
    )
    lines.append(f"responses {res.responses}; the fleet sent {res.fleet_acks}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (also what tests/integration/test_derms_bench.py runs with)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument(
        "--baseline-devices",
        type=int,
        default=100,
        help="run the same phases first at this many devices (0: skip)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (postgresql://postgres@127.0.0.1:5432): a fresh database is "
        "made there for each run and dropped; default SQLite in a temp dir",
    )
    p.add_argument("--telemetry-s", type=float, default=5.0, help="each device's sample period")
    p.add_argument("--latency-s", type=float, default=30.0, help="length of the latency window")
    p.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight")
    p.add_argument("--page", type=int, default=100, help="devices per /fleet/live page")
    p.add_argument("--totals-rounds", type=int, default=5)
    p.add_argument("--fleet-processes", type=int, default=2)
    p.add_argument("--connections", type=int, default=4, help="MQTT connections per process")
    p.add_argument(
        "--fleet-publish",
        choices=("raw", "paho"),
        default="raw",
        help="how the simulated fleet sends its samples and acknowledgements: pre-framed "
        "PUBLISH packets over a socket (raw) or its MQTT links (paho: a socket write per "
        "message to wake paho's thread, which took most of the fleet's CPU on the machine the "
        "aggregator shares)",
    )
    p.add_argument(
        "--profile",
        default="",
        help="cProfile the aggregator's process and the fleet's; stats to PROFILE.<devices> and "
        "PROFILE.<devices>.fleet-<first device> (slows everything down)",
    )
    args = p.parse_args(argv)
    if args.devices < 1 or args.fleet_processes < 1 or args.connections < 1:
        p.error("devices, fleet processes and connections must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    facts = machine_facts(("fastapi", "uvicorn", "paho-mqtt", "sqlalchemy", "cryptography"))
    print(f"machine: {facts}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"load average at the start: {os.getloadavg()}")
    base = None
    if args.baseline_devices:
        base = run_size(args.baseline_devices, args)
        print(summary(base, None, args), flush=True)
    res = run_size(args.devices, args)
    print(summary(res, base, args))
    print(f"load average at the end: {os.getloadavg()}")
    return 0 if res.ok and (base is None or base.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
