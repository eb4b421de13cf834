"""Faults on the cloud side (the broker, the database) while homes generate, each scenario ended
by reconciling the edges' outboxes with the ledger: zero tokens lost, zero counted twice.

The edges are real `EdgeAgent`s with their real SQLite outboxes, on a simulated clock shared
with the aggregator (5 minutes of the homes' time pass in half a real second), so an outage of
"an hour" closes a dozen intervals per home in a few real seconds. Only the meters are short-cut:
each agent reads its home's PV meter model directly instead of over Modbus TCP, since the faults
under test are the broker's and the database's and the machine's two cores are better spent on
them (the Modbus path has its own tests: test_edge_faults.py, test_edge_agent.py).

Every test ends the same way: sampling stops, the outboxes drain, and `tests.helpers.reconcile`
checks that every minted token is stored exactly once, every outbox entry was confirmed, and
the aggregator's counters agree with what it stored. It prints the numbers, e.g.
"minted 120, stored 120, lost 0, duplicated 0" (pytest -s, or the captured output on failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from cloud.runtime import CloudRuntime
from cloud.storage.store import Store
from cloud.storage.tables import devices, ledger_refs, tokens
from edge.accounting import Channel
from edge.agent import EdgeAgent
from edge.drivers.register_map import find_register_map, load_register_map
from edge.meters import MeterReader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from protocol import cose
from protocol.clock import SimClock
from simulators.modbus_meter import SimulatedMeter
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.reconcile import Reconciliation, read_ledger, reconcile
from tests.helpers.services import Mosquitto, set_database_open
from tests.helpers.waiting import at_least, until

pytestmark = [pytest.mark.fault, pytest.mark.broker, pytest.mark.slow]

DEPLOYMENT = "gridmint-test"
T0 = int(datetime(2026, 6, 21, 10, 0, tzinfo=UTC).timestamp())  # a sunny June morning
SPEED = 600.0  # one 5-minute interval every 0.5 real seconds
EDGES = 4
INTERVAL_REAL_S = 300 / SPEED


class ModelMeter:
    """A PV meter's lifetime export total, read from the simulator's home model (a `Driver`)."""

    def __init__(self, meter: SimulatedMeter):
        self.meter = meter

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        _import_kwh, export_kwh = self.meter.energy_kwh()
        return {"export_energy": export_kwh}

    async def close(self) -> None:
        return None


@dataclass
class Edges:
    """A few homes' edge agents running in this process, each with its own outbox file."""

    agents: list[EdgeAgent]
    paths: list[Path]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    async def minted(self) -> int:
        return sum([(await a.outbox.counters())["minted"] for a in self.agents])

    async def waiting(self) -> int:
        return sum([(await a.outbox.counters())["waiting"] for a in self.agents])

    async def unreceipted(self) -> set[str]:
        """Token ids the broker acknowledged (PUBACK) that no receipt has confirmed yet."""
        held: set[str] = set()
        for a in self.agents:
            rows = await a.outbox.due(now_ms=2**62, resend_after_ms=0, limit=100_000)
            held.update(r.token_id for r in rows if r.status == "sent")
        return held

    async def queued_in_broker(self, database_url: str) -> set[str]:
        """With the aggregator away: tokens the broker acknowledged and the ledger does not
        hold, so the broker's queue is their only copy outside the edges. (An unreceipted
        token may also be one the aggregator stored just before it stopped, its receipt lost
        with the connection; the edge resends it later and is answered "duplicate".)"""
        stored = set((await read_ledger(database_url)).token_ids)
        return await self.unreceipted() - stored

    async def drain(self, store: Store, timeout_s: float = 60.0) -> None:
        """Stop minting, then wait until every token is confirmed, the database holds them, and
        the ledger has closed every interval that both homes of a site delivered."""
        for a in self.agents:
            await a.stop_sampling()
        minted = await self.minted()

        async def drained() -> bool:
            if await self.waiting():
                for a in self.agents:
                    a._wake.set()  # publish what is due now, not at the next 1 s round
                return False
            return await at_least(lambda: _stored(store), minted)

        await until(drained, timeout_s)
        await until(lambda: _log_caught_up(store), timeout_s)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for a in self.agents:
            await a.outbox.close()


async def start_edges(
    tmp_path: Path, broker_url: str, clock: SimClock, store: Store, resend_after_s: float
) -> Edges:
    """Register EDGES homes (two per site) with the aggregator and start their agents."""
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    agents, paths = [], []
    for i in range(EDGES):
        key = Ed25519PrivateKey.generate()
        meter_settings = MeterSettings(
            name="pv",
            register_map="eastron/sdm630",
            channels={Channel.GENERATED: "export_energy"},
            serial=f"SIM-{i}",
        )
        settings = EdgeSettings(
            device_id=f"pi-fault-{i}",
            site_id=f"site-fault-{i // 2}",
            deployment=DEPLOYMENT,
            key_file=tmp_path / f"edge-{i}.key",
            state_db=tmp_path / f"edge-{i}.sqlite",
            broker_url=broker_url,
            capacity_w=5000,
            resend_after_s=resend_after_s,
            telemetry_interval_s=1.0,
            meters=[meter_settings],
        )
        # 3 kW of panels against a 5 kW rating: a boundary reading that runs late on a busy
        # machine books a little more into one interval, never past the plausibility bound.
        home = SimulatedMeter(rmap, "pv", clock, capacity_w=3000, seed=i)
        reader = MeterReader(meter_settings, ModelMeter(home), {"export_energy": "kWh"})
        outbox = await Outbox.open(settings.state_db)
        agents.append(EdgeAgent(settings, key, clock, [reader], outbox))
        paths.append(settings.state_db)
        public = cose.public_bytes(key.public_key())
        await store.add_device(
            settings.device_id, settings.site_id, public, cose.key_id(public), settings.capacity_w
        )
    edges = Edges(agents, paths)
    edges.tasks = [asyncio.create_task(a.run(edges.stop)) for a in agents]
    return edges


async def _stored(store: Store) -> int:
    return (await store.stats()).accepted


async def _log_caught_up(store: Store) -> bool:
    """Has the ledger minted every token of every interval that all of its site's devices
    delivered? (The others wait for the missing device, up to ledger_max_wait_s.)"""
    site_devices = (
        select(devices.c.site_id, func.count().label("n")).group_by(devices.c.site_id).subquery()
    )
    delivered = (
        select(devices.c.site_id, tokens.c.interval_start, func.count().label("n"))
        .select_from(tokens.join(devices, tokens.c.device_id == devices.c.device_id))
        .group_by(devices.c.site_id, tokens.c.interval_start)
        .subquery()
    )
    complete = (
        select(func.coalesce(func.sum(delivered.c.n), 0))
        .select_from(delivered.join(site_devices, delivered.c.site_id == site_devices.c.site_id))
        .where(delivered.c.n == site_devices.c.n)
    )
    try:
        async with store.engine.connect() as conn:
            want = int((await conn.execute(complete)).scalar_one())
            have = int(
                (await conn.execute(select(func.count()).select_from(ledger_refs))).scalar_one()
            )
    except Exception:  # the database is still coming back
        return False
    return have >= want


async def start_aggregator(
    database_url: str, broker_url: str, clock: SimClock, client_id: str | None = None
) -> CloudRuntime:
    # The market is off: it is not under test here, and its gate closures would take CPU
    # from the ingest path that is. The ledger looks for intervals to close every 0.5 real s
    # (5 simulated minutes) instead of 2, so a drained backlog is closed soon after.
    runtime = aggregator_runtime(
        database_url,
        broker_url,
        DEPLOYMENT,
        clock,
        client_id=client_id,
        market_enabled=False,
        ledger_close_every_s=0.5,
    )
    await runtime.start(serve_http=False)
    return runtime


async def stop_aggregator(runtime: CloudRuntime, cleanup: list[Edges | CloudRuntime]) -> None:
    """Stop an aggregator now (its counters stay readable), not again at the end."""
    cleanup.remove(runtime)
    await runtime.stop()


@pytest.fixture
def clock() -> SimClock:
    return SimClock.starting_at(T0, SPEED)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Edges | CloudRuntime]]:
    """Edges and aggregators to stop at the end, whatever happened."""
    parts: list[Edges | CloudRuntime] = []
    try:
        yield parts
    finally:
        for part in reversed(parts):
            if isinstance(part, Edges):
                await part.close()
            else:
                await part.stop()


def _show(scenario: str, report: Reconciliation) -> None:
    print(f"\n[fault] {scenario}: {report.line()}")


async def test_broker_down_for_an_hour_while_homes_generate(
    mosquitto: Mosquitto, tmp_path: Path, clock: SimClock, cleanup: list[Edges | CloudRuntime]
) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    runtime = await start_aggregator(db, mosquitto.url, clock)
    cleanup.append(runtime)
    assert runtime.store is not None
    assert runtime.mqtt is not None
    store = runtime.store
    assert await runtime.mqtt.wait_ready(10)
    edges = await start_edges(tmp_path, mosquitto.url, clock, store, resend_after_s=5.0)
    cleanup.append(edges)
    await until(lambda: at_least(lambda: _stored(store), 2 * EDGES))

    mosquitto.stop()
    down_at = await edges.minted()
    # An hour of the homes' time with no broker: twelve intervals each are minted into the
    # outboxes, and none of them can have reached the cloud.
    await until(lambda: at_least(edges.minted, down_at + 12 * EDGES))
    stored_in_outage = await _stored(store)
    assert await edges.waiting() >= 12 * EDGES
    mosquitto.start()

    # The backlog drains while the homes go on generating, then everything is confirmed.
    await until(lambda: at_least(lambda: _stored(store), down_at + 12 * EDGES))
    await edges.drain(store)
    assert stored_in_outage <= down_at
    await edges.close()
    await stop_aggregator(runtime, cleanup)
    assert runtime.ingest is not None
    report = await reconcile(db, edges.paths, counters=[runtime.ingest.counters])
    _show("broker down for an hour", report)
    assert report.minted >= down_at + 12 * EDGES


async def test_broker_restarted_with_persistence_delivers_what_it_had_queued(
    tmp_path: Path, clock: SimClock, cleanup: list[Edges | CloudRuntime]
) -> None:
    broker = Mosquitto(tmp_path, persistence_dir=tmp_path / "mosquitto-data")
    broker.start()
    try:
        db = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
        first = await start_aggregator(db, broker.url, clock, client_id="agg-persistent")
        cleanup.append(first)
        assert first.store is not None
        assert first.mqtt is not None
        store = first.store
        assert await first.mqtt.wait_ready(10)
        # Edges that do not resend within the test: whatever reaches the ledger after the
        # restart was kept by the broker, not sent again.
        edges = await start_edges(tmp_path, broker.url, clock, store, resend_after_s=600)
        cleanup.append(edges)
        await until(lambda: at_least(lambda: _stored(store), 2 * EDGES))

        # The aggregator goes away (a deploy); its persistent session stays on the broker,
        # which acknowledges the edges' tokens and queues them for it.
        await stop_aggregator(first, cleanup)
        await until(lambda: at_least(lambda: len_of(edges.queued_in_broker(db)), 4 * EDGES))
        queued = await edges.queued_in_broker(db)

        broker.stop()  # polite: Mosquitto writes its sessions and queues to disk
        assert (tmp_path / "mosquitto-data" / "mosquitto.db").exists()
        broker.start()
        second = await start_aggregator(db, broker.url, clock, client_id="agg-persistent")
        cleanup.append(second)
        assert second.store is not None

        await edges.drain(second.store)
        await edges.close()
        await stop_aggregator(second, cleanup)
        assert first.ingest is not None
        assert second.ingest is not None
        report = await reconcile(
            db, edges.paths, counters=[first.ingest.counters, second.ingest.counters]
        )
        _show(f"broker restarted with persistence ({len(queued)} queued in it)", report)
        assert len(queued) >= 4 * EDGES
    finally:
        broker.stop()


async def test_broker_killed_without_persistence_loses_its_queue_and_edges_resend(
    mosquitto: Mosquitto, tmp_path: Path, clock: SimClock, cleanup: list[Edges | CloudRuntime]
) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    first = await start_aggregator(db, mosquitto.url, clock, client_id="agg-volatile")
    cleanup.append(first)
    assert first.store is not None
    assert first.mqtt is not None
    store = first.store
    assert await first.mqtt.wait_ready(10)
    edges = await start_edges(tmp_path, mosquitto.url, clock, store, resend_after_s=3.0)
    cleanup.append(edges)
    await until(lambda: at_least(lambda: _stored(store), 2 * EDGES))

    # First with everyone connected: the broker dies mid-traffic, whatever it and the
    # aggregator held in flight is gone, and both sides come back to a broker with no sessions.
    mosquitto.kill()
    killed_at = await edges.minted()
    mosquitto.start()
    await until(lambda: at_least(lambda: _stored(store), killed_at + 2 * EDGES))

    # Then with the aggregator behind (here: away), so the broker holds a queue of tokens it
    # has acknowledged to the edges; the broker dies mid-traffic again, its queue with it.
    await stop_aggregator(first, cleanup)
    await until(lambda: at_least(lambda: len_of(edges.queued_in_broker(db)), 4 * EDGES))
    mosquitto.kill()
    queued = await edges.queued_in_broker(db)
    mosquitto.start()
    second = await start_aggregator(db, mosquitto.url, clock, client_id="agg-volatile")
    cleanup.append(second)
    assert second.store is not None

    # The broker lost every one of `queued`; only the edges' resends can bring them.
    await edges.drain(second.store)
    await edges.close()
    await stop_aggregator(second, cleanup)
    assert first.ingest is not None
    assert second.ingest is not None
    report = await reconcile(
        db, edges.paths, counters=[first.ingest.counters, second.ingest.counters]
    )
    _show(f"broker SIGKILLed without persistence ({len(queued)} lost in it)", report)
    assert len(queued) >= 4 * EDGES


@pytest.mark.postgres
async def test_database_restart_under_load_with_edges_publishing(
    mosquitto: Mosquitto,
    pg_url: str,
    tmp_path: Path,
    clock: SimClock,
    cleanup: list[Edges | CloudRuntime],
) -> None:
    runtime = await start_aggregator(pg_url, mosquitto.url, clock)
    cleanup.append(runtime)
    assert runtime.store is not None
    assert runtime.mqtt is not None
    assert runtime.ingest is not None
    store, link = runtime.store, runtime.mqtt.link
    assert await runtime.mqtt.wait_ready(10)
    edges = await start_edges(tmp_path, mosquitto.url, clock, store, resend_after_s=3.0)
    cleanup.append(edges)
    await until(lambda: at_least(lambda: _stored(store), 2 * EDGES))

    # A PostgreSQL restart, for this database only: the server is shared with other tests
    # running now, so it is not restarted. What a restart does to the aggregator is that every
    # connection it holds is cut (pg_terminate_backend) and new ones are refused until the
    # server is back (ALLOW_CONNECTIONS false); set_database_open does exactly that to the
    # test's own database, and undoes it.
    await set_database_open(pg_url, False)
    try:
        down_at = await edges.minted()
        # Edges keep minting and publishing; the aggregator fails, answers storage_error and
        # goes for redelivery (with back-off) more than once, storing nothing.
        await until(lambda: at_least(lambda: link.handler_failures, 2))
        await until(lambda: at_least(edges.minted, down_at + 6 * EDGES))
    finally:
        await set_database_open(pg_url, True)
    await edges.drain(store)
    await edges.close()
    await stop_aggregator(runtime, cleanup)
    report = await reconcile(pg_url, edges.paths, counters=[runtime.ingest.counters])
    _show("PostgreSQL restarted under load", report)
    assert report.storage_errors > 0


async def len_of(items: Awaitable[set[str]]) -> int:
    return len(await items)
