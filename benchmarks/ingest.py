"""Ingest throughput: Ed25519 verify rate, protocol decode+verify rate, and end-to-end MQTT ingest.

Run: .venv/bin/python -m benchmarks.ingest --tokens 5000 --devices 50 --backend both

A measurement, not a test: it asserts nothing about speed. It exits non-zero only if a run does
not end with every published token accepted and nothing rejected.

End-to-end path: a real Mosquitto on a free port; a CloudRuntime (no HTTP) on SQLite (a file in a
temp dir) or a fresh PostgreSQL database; publishers (mqttlink.MqttLink, QoS 1, a bounded window
of unacknowledged publishes per connection) in a separate process so they do not share the GIL
with the aggregator. Each device is published by exactly one connection, so its chain arrives in
order. Time runs from the first publish until the aggregator's counters have every token
stored (polled every 0.2 s); the stored counts are then checked with store.stats().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks.machine import machine_facts as shared_machine_facts
from cloud.broker_config import AGGREGATOR_INFLIGHT
from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from mqttlink import BrokerAddress, MqttLink
from protocol import cose, topics
from protocol import record as record_mod
from tests.helpers.records import FakeDevice
from tests.helpers.services import Mosquitto, create_pg_database, drop_pg_database

DEPLOYMENT = b"gridmint-bench"
INTERVAL_S = 300
POLL_S = 0.2
STALL_S = 30.0  # give up if the accepted count does not move for this long


# workload


@dataclass
class Workload:
    """Devices with their keys, and the tokens to publish in publishing order."""

    devices: list[FakeDevice]
    plan: list[tuple[int, str, bytes]]  # (device index, topic, envelope)
    mint_s: float
    backfill_s: int


def mint_workload(n_tokens: int, n_devices: int) -> Workload:
    """Pre-mint every token, interleaved across devices (each device's chain stays in order)."""
    per = [n_tokens // n_devices + (1 if i < n_tokens % n_devices else 0) for i in range(n_devices)]
    longest = max(per)
    now = int(time.time())
    first_start = now - now % INTERVAL_S - (longest + 2) * INTERVAL_S
    devices = [
        FakeDevice(
            f"bench-{i:04d}",
            site_id=f"site-{i % 10:02d}",
            deployment=DEPLOYMENT,
            interval_s=INTERVAL_S,
            next_start=first_start,
        )
        for i in range(n_devices)
    ]
    token_topics = [topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS) for d in devices]
    plan: list[tuple[int, str, bytes]] = []
    t0 = time.perf_counter()
    for r in range(longest):
        for i, dev in enumerate(devices):
            if r < per[i]:
                plan.append((i, token_topics[i], dev.next_token().envelope))
    mint_s = time.perf_counter() - t0
    # The oldest interval must stay inside the aggregator's backfill window.
    backfill_s = max(7 * 24 * 3600, (longest + 10) * INTERVAL_S)
    return Workload(devices, plan, mint_s, backfill_s)


# protocol-only rates (no I/O)


def _rate(n: int, fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _cpu_rate(n: int, fn: Any) -> float:
    """Ops per second of this thread's CPU time: what one core does when it is not shared."""
    t0 = time.thread_time()
    fn()
    return n / (time.thread_time() - t0)


def bench_verify(work: Workload, n_ops: int) -> dict[str, float]:
    """Raw Ed25519 verify over real Sig_structures, and full parse+decode+verify per envelope."""
    pub_by_kid = {d.kid: d.public_key for d in work.devices}
    envs = [env for _i, _t, env in work.plan]
    envs = (envs * math.ceil(n_ops / len(envs)))[:n_ops]
    parsed = [cose.parse(e) for e in envs]
    keys = {kid: Ed25519PublicKey.from_public_bytes(pk) for kid, pk in pub_by_kid.items()}
    raw = [(keys[s.kid], s.signature, s.sig_structure(DEPLOYMENT)) for s in parsed]

    def raw_verify() -> None:
        for key, sig, msg in raw:
            key.verify(sig, msg)

    def protocol() -> None:
        for env in envs:
            s1 = cose.parse(env)
            record_mod.decode(s1.payload)
            cose.verify(s1, pub_by_kid[s1.kid], DEPLOYMENT)

    raw_verify()  # warm up
    return {
        "verify": _rate(len(raw), raw_verify),
        "verify_cpu": _cpu_rate(len(raw), raw_verify),
        "protocol": _rate(len(envs), protocol),
    }


# publisher process


def _publisher_process(
    port: int,
    batches: list[list[tuple[str, bytes]]],
    window: int,
    ready: Any,
    go: Any,
    results: Any,
    kind: str = "raw",
) -> None:
    logging.basicConfig(level=logging.WARNING)
    publish_all = _publish_all_raw if kind == "raw" else _publish_all
    try:
        results.put(asyncio.run(publish_all(port, batches, window, ready, go)))
    except BaseException as exc:  # report to the parent instead of dying silently
        results.put({"error": repr(exc)})
        ready.set()


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 packet: the fixed header (type and flags, remaining length) and its body."""
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first_byte]) + bytes(length) + body


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


async def _publish_all_raw(
    port: int,
    batches: list[list[tuple[str, bytes]]],
    window: int,
    ready: Any,
    go: Any,
) -> dict[str, Any]:
    """The load generator without a client library: every PUBLISH (QoS 1) is encoded before
    the start, then written over a plain socket with at most `window` unacknowledged per
    connection, PUBACKs read as they come. A real MQTT 3.1.1 exchange with the real broker, at a
    few microseconds of CPU per message, so that on a small machine the CPU goes to the broker
    and the aggregator under test rather than to the fleet's stand-in (the edge's own publishing
    cost is benchmarks/edge.py's)."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for k in range(len(batches)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client_id = f"bench-raw-{os.getpid()}-{k}".encode()
        # protocol "MQTT" level 4, clean session, keep-alive off (the run is short)
        writer.write(
            _mqtt_packet(0x10, _mqtt_str(b"MQTT") + b"\x04\x02\x00\x00" + _mqtt_str(client_id))
        )
        connack = await asyncio.wait_for(reader.readexactly(4), 10)
        if connack[0] != 0x20 or connack[3] != 0:
            return {"error": f"broker refused the publisher: CONNACK {connack.hex()}"}
        conns.append((reader, writer))
    packets = [
        [
            _mqtt_packet(
                0x32, _mqtt_str(topic.encode()) + (i % 65535 + 1).to_bytes(2, "big") + payload
            )
            for i, (topic, payload) in enumerate(batch)
        ]
        for batch in batches
    ]
    ready.set()
    await asyncio.to_thread(go.wait)

    async def run(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: list[bytes]
    ) -> None:
        acked = 0
        room = asyncio.Event()
        room.set()

        async def read_acks() -> None:
            nonlocal acked
            while acked < len(out):
                head = await reader.readexactly(4)
                if head[0] != 0x40:
                    raise RuntimeError(f"unexpected packet from the broker: {head.hex()}")
                acked += 1
                room.set()

        acks = asyncio.create_task(read_acks())
        for sent, packet in enumerate(out):
            while sent - acked >= window:
                room.clear()
                await room.wait()
            writer.write(packet)
            if sent % 64 == 63:
                await writer.drain()
        await acks

    first = time.monotonic()
    await asyncio.gather(*(run(r, w, out) for (r, w), out in zip(conns, packets, strict=True)))
    last_ack = time.monotonic()
    for _, writer in conns:
        writer.write(b"\xe0\x00")  # DISCONNECT
        writer.close()
    return {"first": first, "last_ack": last_ack, "failed": 0}


async def _publish_all(
    port: int,
    batches: list[list[tuple[str, bytes]]],
    window: int,
    ready: Any,
    go: Any,
) -> dict[str, Any]:
    address = BrokerAddress("127.0.0.1", port)
    links = [
        MqttLink(address, f"bench-pub-{os.getpid()}-{k}", clean_session=True, max_inflight=window)
        for k in range(len(batches))
    ]
    for link in links:
        await link.start()
    try:
        for link in links:
            if not await link.wait_connected(10):
                return {"error": "publisher could not connect"}
        ready.set()
        await asyncio.to_thread(go.wait)
        failed = 0

        async def run(link: MqttLink, batch: list[tuple[str, bytes]]) -> None:
            nonlocal failed
            sem = asyncio.Semaphore(window)

            async def one(topic: str, payload: bytes) -> None:
                nonlocal failed
                try:
                    if not await link.publish(topic, payload, qos=1, timeout_s=60):
                        failed += 1
                finally:
                    sem.release()

            tasks = []
            for topic, payload in batch:
                await sem.acquire()  # tasks start in order, so paho sends in order
                tasks.append(asyncio.create_task(one(topic, payload)))
            await asyncio.gather(*tasks)

        first = time.monotonic()
        await asyncio.gather(*(run(link, b) for link, b in zip(links, batches, strict=True)))
        last_ack = time.monotonic()
        return {"first": first, "last_ack": last_ack, "failed": failed}
    finally:
        for link in links:
            await link.stop()


# end-to-end run


@dataclass
class RunResult:
    """One backend's end-to-end figures."""

    backend: str
    tokens: int
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    wall_s: float = math.nan
    cpu_s: float = math.nan  # aggregator process CPU (all its threads) during the run
    publish_s: float = math.nan
    publish_failed: int = 0
    direct_tokens: int = 0
    direct_s: float = math.nan
    error: str = ""
    # The aggregator's CPU seconds during the run by thread (event loop, paho's network
    # thread, the database driver's thread...): where the time per token goes.
    cpu_by_thread: dict[str, float] = field(default_factory=dict)
    worker_cpu_s: float = 0.0  # the ingest worker processes' CPU during the run, all together

    @property
    def rate(self) -> float:
        """End-to-end tokens per second."""
        return self.accepted / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def ok(self) -> bool:
        """Every token accepted, nothing rejected."""
        return (
            not self.error
            and self.accepted == self.tokens
            and not self.rejected
            and self.publish_failed == 0
        )


def _settings(db_url: str, broker_url: str, backfill_s: int, workers: int = 0) -> CloudSettings:
    return CloudSettings(
        ingest_workers=workers,
        database_url=db_url,
        broker_url=broker_url,
        deployment=DEPLOYMENT.decode(),
        http_port=0,
        backfill_window_s=backfill_s,
        client_id=f"bench-agg-{time.monotonic_ns()}",
    )


async def _register(runtime: CloudRuntime, work: Workload) -> None:
    assert runtime.store is not None
    for d in work.devices:
        await runtime.store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)


async def run_direct(db_url: str, work: Workload, n: int, batch: int = 256) -> float:
    """IngestService.handle_batch on batches of `batch` messages, as the MQTT side hands them
    over under load: the aggregator's per-token cost without MQTT."""
    runtime = CloudRuntime(_settings(db_url, "mqtt://127.0.0.1:1", work.backfill_s))
    await runtime.start(serve_http=False, connect_mqtt=False)
    try:
        await _register(runtime, work)
        assert runtime.ingest is not None
        assert runtime.store is not None
        t0 = time.perf_counter()
        messages = [(topic, env) for _i, topic, env in work.plan[:n]]
        for k in range(0, n, batch):
            await runtime.ingest.handle_batch(messages[k : k + batch])
        elapsed = time.perf_counter() - t0
        stats = await runtime.store.stats()
        if stats.accepted != n or stats.rejected:
            rejected = stats.rejected_by_reason
            raise RuntimeError(f"direct run: accepted {stats.accepted} of {n}, rejected {rejected}")
        return elapsed
    finally:
        await runtime.stop()


async def run_e2e(
    db_url: str,
    broker: Mosquitto,
    work: Workload,
    publishers: int,
    window: int,
    res: RunResult,
    workers: int = 0,
    publisher: str = "raw",
) -> None:
    """Publish every token through the broker and wait until the store has accepted them all."""
    runtime = CloudRuntime(_settings(db_url, broker.url, work.backfill_s, workers))
    await runtime.start(serve_http=False)
    ctx = mp.get_context("spawn")
    proc = None
    try:
        await _register(runtime, work)
        assert runtime.mqtt is not None
        assert runtime.store is not None
        if not await runtime.mqtt.wait_ready(10):
            raise RuntimeError("the aggregator could not connect and subscribe to the broker")
        batches: list[list[tuple[str, bytes]]] = [[] for _ in range(publishers)]
        for i, topic, env in work.plan:
            batches[i % publishers].append((topic, env))
        ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=_publisher_process,
            args=(broker.port, batches, window, ready, go, results, publisher),
            daemon=True,
        )
        proc.start()
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("publisher process did not get ready")
        if not proc.is_alive():  # it reported an error instead of waiting for `go`
            pub = await asyncio.to_thread(results.get, True, 5)
            raise RuntimeError(f"publisher: {pub.get('error', pub)}")
        threads0 = _thread_cpu()
        workers0 = _workers_cpu(runtime)
        cpu0 = time.process_time()
        go.set()
        store = runtime.store
        n = len(work.plan)
        last_change, last_seen = time.monotonic(), -1
        # Progress from the in-memory counters of whatever ingests (no query competing with
        # ingest for the process and the database); the stored figures are read at the end.
        ingesting = runtime.workers or runtime.ingest
        assert ingesting is not None
        counters = ingesting.counters
        while True:
            await asyncio.sleep(POLL_S)
            done_at, cpu1 = time.monotonic(), time.process_time()
            seen = counters.accepted + sum(counters.rejected.values())
            if seen >= n:
                res.worker_cpu_s = _workers_cpu(runtime) - workers0
                threads1 = _thread_cpu()
                res.cpu_by_thread = {
                    name: round(cpu - threads0.get(name, 0.0), 3)
                    for name, cpu in sorted(threads1.items(), key=lambda kv: -kv[1])
                    if cpu - threads0.get(name, 0.0) > 0.005
                }
                break
            if seen != last_seen:
                last_change, last_seen = done_at, seen
            elif done_at - last_change > STALL_S:
                res.error = f"stalled at {seen} of {n} tokens"
                break
        stats = await store.stats()
        res.accepted = stats.accepted
        res.rejected = dict(stats.rejected_by_reason)
        pub = await asyncio.to_thread(results.get, True, 60)
        if "error" in pub:
            res.error = res.error or f"publisher: {pub['error']}"
            return
        res.publish_failed = int(pub["failed"])
        res.publish_s = pub["last_ack"] - pub["first"]
        res.wall_s = done_at - pub["first"]
        res.cpu_s = cpu1 - cpu0
    finally:
        if proc is not None:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
        await runtime.stop()


def _workers_cpu(runtime: CloudRuntime) -> float:
    """CPU seconds so far of the runtime's ingest worker processes."""
    import psutil

    if runtime.workers is None:
        return 0.0
    total = 0.0
    for pid in runtime.workers.pids():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by a name that says what it runs."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    totals: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, f"native-{t.id}")
        if name == threading.main_thread().name:
            name = "event loop (main)"
        elif name.startswith("paho-mqtt-client"):
            name = "paho network thread"
        elif name.startswith("asyncio_"):
            name = "asyncio executor"
        elif name.startswith("Thread-"):
            name = "other (aiosqlite connection, ...)"
        totals[name] = totals.get(name, 0.0) + t.user_time + t.system_time
    return totals


def run_backend(
    backend: str, work: Workload, args: argparse.Namespace, workers: int = 0
) -> RunResult:
    """Direct and end-to-end runs on one backend, each on its own fresh database; with
    `workers`, end to end through that many ingest worker processes (no direct run)."""
    label = backend if not workers else f"{backend}, {workers} ingest workers"
    res = RunResult(label, len(work.plan))
    n_direct = 0 if workers else min(args.direct_tokens, len(work.plan))
    with tempfile.TemporaryDirectory(prefix="gridmint-bench-") as tmp:
        broker_conf = (
            f"max_queued_messages {args.broker_queue}\n"
            f"max_inflight_messages {AGGREGATOR_INFLIGHT}\n"
        )
        broker = Mosquitto(Path(tmp), extra_config=broker_conf)
        broker.start()
        made: list[str] = []
        try:

            def db(name: str) -> str:
                if backend == "sqlite":
                    return f"sqlite:///{Path(tmp) / name}.sqlite"
                made.append(create_pg_database())
                return made[-1]

            if n_direct:
                res.direct_tokens = n_direct
                res.direct_s = asyncio.run(run_direct(db("direct"), work, n_direct))
            asyncio.run(
                run_e2e(
                    db("e2e"),
                    broker,
                    work,
                    args.publishers,
                    args.window,
                    res,
                    workers,
                    args.publisher,
                )
            )
        except Exception as exc:
            res.error = res.error or repr(exc)
        finally:
            broker.stop()
            for url in made:
                with contextlib.suppress(Exception):
                    drop_pg_database(url)
    return res


# report


def machine_facts() -> dict[str, str]:
    """The machine, the packages the ingest path uses, and the Mosquitto version."""
    facts = shared_machine_facts(
        ("cryptography", "paho-mqtt", "sqlalchemy", "aiosqlite", "asyncpg", "cbor2")
    )
    try:
        out = subprocess.run(  # mosquitto -h prints usage and exits non-zero
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        facts["mosquitto"] = (out.stdout or out.stderr).splitlines()[0].strip()
    except Exception as exc:
        facts["mosquitto"] = f"unknown ({exc})"
    return facts


def print_report(
    facts: dict[str, str],
    work: Workload,
    rates: dict[str, float],
    results: list[RunResult],
    args: argparse.Namespace,
) -> None:
    """The table."""
    print("machine")
    for k, v in facts.items():
        print(f"  {k:<13} {v}")
    print(
        f"\nworkload: {len(work.plan)} tokens, {len(work.devices)} devices, "
        f"{args.publishers} {args.publisher} publisher connection(s), window {args.window}, "
        f"broker max_queued_messages {args.broker_queue} "
        f"(minted in {work.mint_s:.1f} s, {len(work.plan) / work.mint_s:,.0f}/s)\n"
    )
    verify = rates["verify"]
    rows: list[tuple[str, float]] = [
        ("Ed25519 verify (raw, cryptography)", verify),
        ("cose.parse + record.decode + cose.verify", rates["protocol"]),
    ]
    for r in results:
        if r.direct_tokens:
            direct = r.direct_tokens / r.direct_s
            rows.append((f"{r.backend}: IngestService.handle_batch(256), no MQTT", direct))
        publish = r.tokens / r.publish_s
        rows.append((f"{r.backend}: publishers (first publish to last PUBACK)", publish))
        rows.append((f"{r.backend}: ingest end to end (MQTT -> store)", r.rate))
    print(
        f"raw verify measured before the runs {rates['verify_before']:,.0f}/s, after "
        f"{rates['verify_after']:,.0f}/s; the faster is the baseline below\n"
    )
    print(f"{'measurement':<54} {'ops/s':>10} {'/ verify':>9}")
    print("-" * 75)
    for name, rate in rows:
        print(f"{name:<54} {rate:>10,.0f} {rate / verify:>9.3f}")
    print()
    verify_cpu_us = 1e6 / rates["verify_cpu"]
    print(
        f"CPU per token (process CPU time, not wall): raw verify {verify_cpu_us:.0f} us; "
        "an aggregator that had a core to itself would run at (verify CPU / its CPU per token) "
        "of the verify rate:"
    )
    for r in results:
        if r.accepted and "workers" not in r.backend:
            per = r.cpu_s / r.accepted * 1e6
            print(f"  {r.backend}: {per:.0f} us/token -> {verify_cpu_us / per:.3f} x verify")
    print()
    for r in results:
        status = "ok" if r.ok else "FAILED"
        print(
            f"{r.backend}: {status}: accepted {r.accepted}/{r.tokens}, rejected {r.rejected or 0}, "
            f"publish failures {r.publish_failed}, wall {r.wall_s:.2f} s, aggregator CPU "
            f"{r.cpu_s:.1f} s ({r.cpu_s / r.wall_s:.0%} of one core, "
            + ("workers not counted, " if "workers" in r.backend else "")
            + f"{r.cpu_s / max(r.accepted, 1) * 1e3:.2f} ms/token)"
            + (f", error: {r.error}" if r.error else "")
        )
        if r.worker_cpu_s and r.accepted:
            print(
                f"    ingest workers: {r.worker_cpu_s:.1f} s CPU, "
                f"{r.worker_cpu_s / r.accepted * 1e6:.0f} us/token"
            )
        if r.cpu_by_thread and r.accepted:
            print(
                "    by thread (us/token): "
                + ", ".join(f"{k} {v / r.accepted * 1e6:.0f}" for k, v in r.cpu_by_thread.items())
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=5000)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--verify-ops", type=int, default=3000, help="ops for the protocol-only rates")
    p.add_argument("--publishers", type=int, default=2, help="publisher connections")
    p.add_argument("--window", type=int, default=100, help="unacknowledged publishes/connection")
    p.add_argument(
        "--publisher",
        choices=("raw", "paho"),
        default="raw",
        help="the fleet's stand-in: pre-encoded packets over a socket (raw, a few us of CPU "
        "per message) or mqttlink/paho (as an edge publishes, ~10x the CPU)",
    )
    p.add_argument(
        "--direct-tokens",
        type=int,
        default=3000,
        help="tokens fed straight to IngestService.handle_batch (no MQTT) per backend; 0 skips it",
    )
    p.add_argument(
        "--broker-queue",
        type=int,
        default=0,
        help="Mosquitto max_queued_messages (0 = unlimited; Mosquitto's default is 1000)",
    )
    p.add_argument(
        "--workers",
        default="0",
        help="comma-separated ingest worker counts to run end to end (0 = in the aggregator)",
    )
    args = p.parse_args(argv)
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error("--workers takes counts such as 0,2")
    if any(w < 0 or w > 64 for w in worker_counts):
        p.error("--workers: each count 0..64")
    if args.tokens < 1 or args.devices < 1 or args.devices > args.tokens:
        p.error("need 1 <= devices <= tokens")
    args.publishers = max(1, min(args.publishers, args.devices))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    facts = machine_facts()
    work = mint_workload(args.tokens, args.devices)
    before = bench_verify(work, args.verify_ops)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = [run_backend(b, work, args, w) for b in backends for w in worker_counts]
    after = bench_verify(work, args.verify_ops)
    # On a shared machine the baseline moves with the neighbours' load: it is measured before
    # and after the runs, and the faster of the two is the one every ratio divides by.
    rates = max(before, after, key=lambda r: r["verify"])
    rates["verify_before"], rates["verify_after"] = before["verify"], after["verify"]
    print_report(facts, work, rates, results, args)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
