"""Ingest spread over worker processes, partitioned by device.

Owns: N child processes, each with its own database connections and `IngestService`, and the
routing of every message to the worker of its device (a stable hash of the device id in the
topic), so one device's records are always judged, in arrival order, by the same worker (and
its rate limit bucket lives there). A batch
from the broker is split by worker, the parts are handled at the same time on separate cores,
and the outcomes come back in the batch's order; only then does the MQTT side acknowledge it.

A worker that dies (killed, out of memory) fails only the messages it held: they come back as
not stored (so they are not acknowledged and the broker delivers them again), and a new worker
takes its place before the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from cloud.domain.ingest_rules import IngestLimits
from cloud.domain.rate_limit import BucketLimit
from cloud.services.ingest import IngestCounters, IngestService, Outcome, storage_error_outcome
from cloud.storage.store import Store
from protocol import topics
from protocol.clock import SimClock, SystemClock

log = logging.getLogger(__name__)

Message = tuple[str, bytes]


def partition_of(topic: str, workers: int) -> int:
    """The worker of a message: a stable hash of its topic's device id (worker 0 for a topic
    that names no device: it is refused whoever judges it)."""
    try:
        device_id = topics.parse(topic).device_id
    except topics.TopicError:
        return 0
    return zlib.crc32(device_id.encode()) % workers


class IngestWorkers:
    """`handle_batch` like `IngestService`, over `count` worker processes.

    The clock is handed to each worker, so it must be one that reads the same in every process
    (the system clock, or a simulated clock with a fixed origin).
    """

    def __init__(
        self,
        count: int,
        database_url: str,
        deployment: bytes,
        clock: SystemClock | SimClock,
        limits: IngestLimits | None = None,
        max_message_bytes: int = 65536,
        device_rate: BucketLimit | None = None,
    ):
        if count < 1:
            raise ValueError("ingest workers: at least one")
        self.count = count
        self._setup = _WorkerSetup(
            database_url,
            deployment,
            clock,
            limits or IngestLimits(),
            max_message_bytes,
            device_rate,
        )
        self._ctx = mp.get_context("spawn")  # no fork of a process with threads and a loop
        self._workers: list[tuple[BaseProcess, Connection] | None] = [None] * count
        # One exchange at a time per worker, taken in call order (asyncio.Lock is first come,
        # first served): overlapping batches reach each worker, and so each device, in the
        # order they came from the broker.
        self._turns = [asyncio.Lock() for _ in range(count)]
        self.counters = IngestCounters()
        self.restarts = 0

    async def start(self) -> None:
        """Start every worker and wait until each has its database open."""
        await asyncio.gather(*(self._start(k) for k in range(self.count)))

    async def stop(self) -> None:
        """Ask each worker to finish, then make sure it has."""
        for k, w in enumerate(self._workers):
            if w is None:
                continue
            proc, conn = w
            with contextlib.suppress(OSError):
                conn.send(None)
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
            conn.close()
            self._workers[k] = None

    def pids(self) -> list[int]:
        """The workers' process ids (for operations and the fault tests)."""
        return [w[0].pid or 0 for w in self._workers if w is not None]

    async def handle_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Judge and store `messages`; one outcome per message, in their order."""
        parts: dict[int, list[int]] = {}
        for i, (topic, _payload) in enumerate(messages):
            parts.setdefault(partition_of(topic, self.count), []).append(i)
        results = await asyncio.gather(
            *(self._run(k, [messages[i] for i in idx]) for k, idx in parts.items())
        )
        outcomes: list[Outcome | None] = [None] * len(messages)
        for idx, part in zip(parts.values(), results, strict=True):
            for i, outcome in zip(idx, part, strict=True):
                outcomes[i] = outcome
        done = [o for o in outcomes if o is not None]
        assert len(done) == len(messages)
        for o in done:
            self.counters.count(o)
        return done

    async def _start(self, k: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self._setup), name=f"gridmint-ingest-{k}", daemon=True
        )
        proc.start()
        child.close()
        ready = await asyncio.to_thread(parent.recv)
        if ready != "ready":
            raise RuntimeError(f"ingest worker {k} could not start: {ready}")
        self._workers[k] = (proc, parent)

    async def _run(self, k: int, part: list[Message]) -> list[Outcome]:
        async with self._turns[k]:
            return await self._run_now(k, part)

    async def _run_now(self, k: int, part: list[Message]) -> list[Outcome]:
        w = self._workers[k]
        try:
            if w is None:
                await self._start(k)
                self.restarts += 1
                w = self._workers[k]
                assert w is not None
            return await asyncio.to_thread(_exchange, w[1], part)
        except (EOFError, OSError, RuntimeError) as exc:
            # The worker died with the batch: nothing of it is known to be stored, so nothing
            # is acknowledged; a stored part comes back as duplicates when the broker resends.
            log.error(
                "ingest worker %d failed (%s); %d message(s) left for redelivery", k, exc, len(part)
            )
            if w is not None:
                w[0].kill()
                w[1].close()
            self._workers[k] = None
            return [storage_error_outcome(topic, payload) for topic, payload in part]


def _exchange(conn: Connection, part: list[Message]) -> list[Outcome]:
    conn.send(part)
    answer: list[Outcome] = conn.recv()
    return answer


@dataclass(frozen=True, slots=True)
class _WorkerSetup:
    """What a worker process needs to build its own storage and ingest service."""

    database_url: str
    deployment: bytes
    clock: SystemClock | SimClock
    limits: IngestLimits
    max_message_bytes: int
    device_rate: BucketLimit | None


def _worker_main(conn: Connection, setup: _WorkerSetup) -> None:
    asyncio.run(_serve(conn, setup))


async def _serve(conn: Connection, setup: _WorkerSetup) -> None:
    try:
        store = await Store.connect(setup.database_url)  # the parent has migrated it
    except Exception as exc:  # a bad URL: say so to the parent instead of dying silently
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    service = IngestService(
        store,
        setup.deployment,
        setup.clock.now,
        setup.limits,
        setup.max_message_bytes,
        setup.device_rate,
    )
    conn.send("ready")
    try:
        while True:
            part = await asyncio.to_thread(conn.recv)
            if part is None:
                return
            conn.send(await service.handle_batch(part))
    except EOFError:
        return  # the parent is gone
    finally:
        await store.close()
