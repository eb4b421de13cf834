"""The edge agent: read meters, close intervals, mint, store, publish, await receipts.

Owns: the agent's tasks and their wiring (composition of meters, accounting, minting, outbox and
the MQTT link). It runs on any `protocol.clock.Clock`, so the demo can run it faster than real
time. Three tasks: a boundary task that reads every meter right after each interval boundary, a
telemetry task that polls at `telemetry_interval_s` (live values at QoS 0, status, and readings
for the accountant so swaps and resets inside an interval are seen), and a publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import systemd
from edge.accounting import Channel, IntervalAccountant, Reading, align_down
from edge.cloud_http import CloudHttpError, http_json
from edge.controls import Actuator
from edge.dispatch_runner import CommandRunner
from edge.meters import MeterReader
from edge.minting import ChainState, DeviceIdentity, mint
from edge.outbox import Outbox, OutboxRow
from edge.proofs import ProofCheckError, TreeHead, check_consistency, check_token_proof
from edge.settings import EdgeSettings
from edge.systemd import Heartbeat
from mqttlink import (
    BatchSubscription,
    MqttLink,
    Subscription,
    Will,
    client_tls_context,
    parse_brokers,
)
from protocol import statements, topics
from protocol import telemetry as tele
from protocol.checkpoint import VerifierKey, parse_verifier_key
from protocol.clock import Clock, SimClock
from protocol.receipts import Receipt
from protocol.record import TimeQuality

if TYPE_CHECKING:
    from edge.gpio import StatusPanel

log = logging.getLogger(__name__)

ClockCheck = Callable[[], tuple[TimeQuality, tuple[str, int]]]


def _sim_clock_check() -> tuple[TimeQuality, tuple[str, int]]:
    return TimeQuality.SYNCHRONIZED, ("sim", 0)


class SystemClockCheck:
    """The Pi's clock synchronisation state, asked of the OS at most every `every_s` seconds."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self._cached: tuple[TimeQuality, tuple[str, int]] | None = None
        self._at = 0.0

    def __call__(self) -> tuple[TimeQuality, tuple[str, int]]:
        from edge import clocksync

        now = time.monotonic()
        if self._cached is None or now - self._at > self.every_s:
            status = clocksync.read_clock_status()
            self._cached = clocksync.time_quality_for(status, time.time(), clocksync.clock_epoch())
            self._at = now
        return self._cached


PROVEN_KEPT_MS = 30 * 24 * 3600 * 1000  # proven tokens are remembered for a month


@dataclass(slots=True)
class AgentStats:
    """Live counters for status output and the demo."""

    polls: int = 0
    read_failures: int = 0
    last_error: str = ""
    receipts: int = 0
    held_unsynced: int = 0
    meters_unavailable: dict[str, str] = field(default_factory=dict)
    proofs_verified: int = 0
    proof_failures: int = 0
    # Storage alarm: failed writes of the outbox (disk full, SD card read-only, I/O errors),
    # counted, and what the last one said while it lasts ("" once a write succeeded again).
    storage_failures: int = 0
    storage_alarm: str = ""
    # Dispatch commands: accepted (new modifications), rejected (252/253/254), failed (251).
    commands_accepted: int = 0
    commands_rejected: int = 0
    commands_failed: int = 0


# Storage errors are logged at error level when an episode starts, then at most this often, so
# a full disk does not flood the journal (which may live on the same full disk).
STORAGE_LOG_EVERY_S = 60.0


def is_storage_error(exc: BaseException) -> bool:
    """A failure to read or write the agent's own state (SQLite or the file system)."""
    return isinstance(exc, sqlite3.Error | OSError)


class EdgeAgent:
    """One site's agent. `await agent.run(stop)` until `stop` is set."""

    def __init__(
        self,
        settings: EdgeSettings,
        key: Ed25519PrivateKey,
        clock: Clock,
        meters: list[MeterReader],
        outbox: Outbox,
        clock_check: ClockCheck | None = None,
        panel: StatusPanel | None = None,
        actuators: list[Actuator] | None = None,
    ):
        self.settings = settings
        self.key = key
        self.clock = clock
        self.meters = meters
        self.outbox = outbox
        self.stats = AgentStats()
        self._clock_check = clock_check or (
            _sim_clock_check if isinstance(clock, SimClock) else SystemClockCheck()
        )
        self.panel = panel
        self._beats = {
            "telemetry": Heartbeat(settings.telemetry_interval_s * 3 + 60),
            "publish": Heartbeat(60),
        }
        self._disconnected_since: float | None = time.monotonic()
        self.identity = DeviceIdentity(
            device_id=settings.device_id,
            meter=";".join(m.serial or m.name for m in settings.meters)[:256],
            firmware=settings.firmware,
            zone=settings.zone,
            tech=settings.tech,
            capacity_w=settings.capacity_w,
        )
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._chain = ChainState()
        self._accountant = IntervalAccountant(settings.interval_s, settings.capacity_w)
        self._soc: int | None = None
        self._last_status = ""
        self._storage_logged_at = 0.0
        self.started = asyncio.Event()
        site, dev = settings.site_id, settings.device_id
        self.token_topic = topics.topic(site, dev, topics.Channel.TOKENS)
        self.telemetry_topic = topics.topic(site, dev, topics.Channel.TELEMETRY)
        self.status_topic = topics.topic(site, dev, topics.Channel.STATUS)
        self.commands_topic = topics.topic(site, dev, topics.Channel.COMMANDS)
        self.acks_topic = topics.topic(site, dev, topics.Channel.ACKS)
        self._telemetry_seq = 0
        subscriptions: list[Subscription | BatchSubscription] = [
            BatchSubscription(topics.topic(site, dev, topics.Channel.RECEIPTS), self._on_receipts)
        ]
        # Without the aggregator's dispatch key no command could be checked: no subscription.
        self.runner: CommandRunner | None = None
        if settings.dispatch_key:
            subscriptions.append(BatchSubscription(self.commands_topic, self._on_commands))
        else:
            log.info("no dispatch_key configured: dispatch commands are not subscribed to")
        self.link = MqttLink(
            parse_brokers(settings.broker_url),  # one broker, or a cluster's failover list
            client_id=f"edge-{dev}",
            clean_session=False,
            will=Will(self.status_topic, json.dumps({"state": "offline"}).encode()),
            online=(self.status_topic, json.dumps({"state": "online"}).encode()),
            subscriptions=subscriptions,
            max_inflight=settings.publish_window,
            tls_context=client_tls_context(
                settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
            )
            if settings.tls_ca_file is not None
            else None,
        )

        if settings.dispatch_key:
            self.runner = CommandRunner(
                device_id=dev,
                deployment=settings.deployment.encode(),
                dispatch_key=bytes.fromhex(settings.dispatch_key),
                device_key=key,
                clock=clock,
                link=self.link,
                acks_topic=self.acks_topic,
                actuators=actuators or [],
                outbox=outbox,
                silence_revert_s=settings.dispatch_silence_revert_s,
                stats=self.stats,
            )

    # lifecycle

    async def resume(self) -> None:
        """Count a boot and pick up the chain and accounting state where the last run left it."""
        self._chain = await self.outbox.start_boot()
        saved = await self.outbox.load_accountant()
        if saved is not None:
            self._accountant.state = saved

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        await self.resume()
        await self.link.start()
        self._tasks = {
            "boundary": asyncio.create_task(self._boundary_loop(stop), name="boundary"),
            "telemetry": asyncio.create_task(self._telemetry_loop(stop), name="telemetry"),
            "publish": asyncio.create_task(self._publish_loop(stop), name="publish"),
            "watchdog": asyncio.create_task(systemd.run_watchdog(self.healthy, stop)),
            "led": asyncio.create_task(self._led_loop(stop), name="led"),
            "proofs": asyncio.create_task(self._proof_loop(stop), name="proofs"),
        }
        if self.runner is not None:
            self._tasks["dispatch"] = asyncio.create_task(self.runner.run(stop), name="dispatch")
        self.started.set()
        systemd.ready(f"minting for {self.settings.device_id}")
        try:
            await stop.wait()
        finally:
            systemd.stopping()
            for t in self._tasks.values():
                t.cancel()
            for t in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.link.stop()
            for m in self.meters:
                with contextlib.suppress(Exception):
                    await m.close()
            if self.panel is not None:
                self.panel.close()

    def healthy(self) -> bool:
        """For the systemd watchdog: the loops are alive and making progress."""
        for name in ("telemetry", "publish"):
            task = self._tasks.get(name)
            if task is None or task.done() or not self._beats[name].healthy():
                return False
        return True

    async def _led_loop(self, stop: asyncio.Event) -> None:
        if self.panel is None:
            return
        from edge.gpio import led_state_for  # gpiozero only where there is a panel

        while not stop.is_set():
            connected = self.link.connected.is_set()
            if connected:
                self._disconnected_since = None
            elif self._disconnected_since is None:
                self._disconnected_since = time.monotonic()
            waiting = (await self.outbox.counters())["waiting"]
            self.panel.set_state(
                led_state_for(
                    connected,
                    waiting,
                    len(self.stats.meters_unavailable),
                    self.panel.provisioning,
                    meters_total=len(self.meters),
                    disconnected_s=0.0
                    if self._disconnected_since is None
                    else time.monotonic() - self._disconnected_since,
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def stop_sampling(self) -> None:
        """Stop reading meters and minting; publishing goes on (to drain the outbox)."""
        for name in ("boundary", "telemetry"):
            task = self._tasks.get(name)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the cloud holds every stored token; False if some are still waiting."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.outbox.counters())["waiting"] == 0:
                return True
            self._wake.set()
            await asyncio.sleep(0.1)
        return (await self.outbox.counters())["waiting"] == 0

    # reading and minting

    async def _poll_all(
        self, all_values: bool
    ) -> tuple[float, dict[Channel, Reading], dict[str, dict[str, float]]]:
        readings: dict[Channel, Reading] = {}
        values: dict[str, dict[str, float]] = {}
        for meter in self.meters:
            # One try per poll: the bus retries a lost frame itself, and a meter that keeps
            # failing backs off without holding the bus (edge.drivers.modbus_generic).
            try:
                poll = await meter.poll(self.clock.now(), all_values)
            except Exception as exc:  # a dead meter must not stop the others
                self.stats.read_failures += 1
                self.stats.last_error = f"{meter.name}: {exc}"
                if meter.name not in self.stats.meters_unavailable:
                    log.warning("meter %s unavailable: %s", meter.name, exc)
                self.stats.meters_unavailable[meter.name] = str(exc)
                continue
            if meter.name in self.stats.meters_unavailable:
                log.warning("meter %s is back", meter.name)
                self.stats.meters_unavailable.pop(meter.name, None)
            readings.update(poll.readings)
            values[meter.name] = poll.values
            if poll.soc_permille is not None:
                self._soc = poll.soc_permille
        self.stats.polls += 1
        return self.clock.now(), readings, values

    def _time_quality(self) -> tuple[TimeQuality, tuple[str, int]]:
        return self._clock_check()

    async def sample_once(self, all_values: bool = False) -> dict[str, dict[str, float]]:
        """Read every meter now, feed the accountant, and mint if an interval closed."""
        async with self._read_lock:
            ts, readings, values = await self._poll_all(all_values)
            tq, source = self._time_quality()
            if tq is TimeQuality.UNKNOWN:
                # No trustworthy time: hold. The next synchronised reading books the energy,
                # flagged GAP/ESTIMATED; nothing is minted on a guessed clock.
                self.stats.held_unsynced += 1
                return values
            if not readings:
                return values
            closed = self._accountant.observe(ts, readings)
            if closed is None:
                # Persist at boundaries and on anything flagged; not on every telemetry poll,
                # which would fsync the Pi's SD card each second. A crash then restarts from a
                # slightly older total, which books the same energy later, never more.
                if not all_values or self._accountant.state.flags:
                    await self.outbox.save_accountant(self._accountant.state)
                    self._storage_ok()
                return values
            token = mint(
                closed,
                self._chain,
                self.identity,
                self.key,
                self.settings.deployment.encode(),
                tq,
                source,
                self._soc,
            )
            await self.outbox.commit_mint(token, self._accountant.state, int(time.time() * 1000))
            self._storage_ok()
            self._chain = token.next_chain
            self._wake.set()
            return values

    async def _boundary_loop(self, stop: asyncio.Event) -> None:
        ivl = self.settings.interval_s
        while not stop.is_set():
            boundary = align_down(self.clock.now(), ivl) + ivl
            await self.clock.sleep_until(boundary)
            try:
                await self.sample_once()
            except Exception as exc:
                # Storage trouble (full disk, locked file) is reported, never a crash; the
                # accounting state was not saved, so the next reading books the energy again.
                self.stats.last_error = f"sampling failed: {exc}"
                if is_storage_error(exc):
                    self._storage_failed("minting", exc)
                else:
                    log.error("sampling failed: %s", exc)
                saved = await self._reload_state()
                if not saved:
                    await asyncio.sleep(1.0)

    async def _reload_state(self) -> bool:
        try:
            state = await self.outbox.load_accountant()
            self._chain = await self.outbox.load_chain()
        except Exception:
            return False
        if state is not None:
            self._accountant.state = state
        return True

    async def _telemetry_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._beats["telemetry"].beat()
            try:
                values = await self.sample_once(all_values=True)
                await self._publish_telemetry(values)
            except Exception as exc:
                self.stats.last_error = f"telemetry failed: {exc}"
                if is_storage_error(exc):
                    self._storage_failed("saving the accounting state", exc)
                    await self._reload_state()
                    # The status still goes out (reading needs no room): the alarm must be
                    # seen while the disk is full, not once it is fixed.
                    with contextlib.suppress(Exception):
                        await self._publish_status()
                else:
                    log.error("telemetry failed: %s", exc)
            await asyncio.sleep(self.settings.telemetry_interval_s)

    # MQTT

    def status(self, waiting: int) -> dict[str, object]:
        """The retained status: online, buffering (tokens waiting) or fault (meters down)."""
        if self.stats.storage_alarm or (
            self.meters and len(self.stats.meters_unavailable) == len(self.meters)
        ):
            state = "fault"
        elif waiting > 0 or self._time_quality()[0] is TimeQuality.UNKNOWN:
            state = "buffering"
        else:
            state = "online"
        return {
            "state": state,
            "waiting": waiting,
            "unavailable": dict(self.stats.meters_unavailable),
            "seq": self._chain.seq,
            "boot": self._chain.boot,
            "storage": self.stats.storage_alarm,
            "storage_failures": self.stats.storage_failures,
        }

    def _storage_failed(self, doing: str, exc: BaseException) -> None:
        """Raise the storage alarm: counted, logged at error level (once an episode starts,
        then every STORAGE_LOG_EVERY_S), shown in the MQTT status and the systemd status. Every
        stored token stays where it is; an interval that could not be minted is booked on the
        first one minted after (flagged GAP), so nothing is dropped, only delayed."""
        self.stats.storage_failures += 1
        first = not self.stats.storage_alarm
        self.stats.storage_alarm = f"{doing}: {exc}"
        now = time.monotonic()
        if first or now - self._storage_logged_at >= STORAGE_LOG_EVERY_S:
            self._storage_logged_at = now
            log.error(
                "STORAGE ALARM: %s failed: %s (%d failure(s)); stored tokens are kept, "
                "minting resumes when the state database can be written",
                doing,
                exc,
                self.stats.storage_failures,
            )
            systemd.status(f"STORAGE ALARM: {doing} failed: {exc}")

    def _storage_ok(self) -> None:
        """A write went through: clear the alarm (the count stays)."""
        if self.stats.storage_alarm:
            log.warning(
                "storage alarm cleared after %d failure(s): the state database is writable",
                self.stats.storage_failures,
            )
            self.stats.storage_alarm = ""
            systemd.status(f"minting for {self.settings.device_id}")

    def telemetry(
        self, values: dict[str, dict[str, float]], at_ms: int, waiting: int
    ) -> tele.Telemetry:
        """The live sample (protocol/telemetry.py) from one poll's values: each flow summed
        over the meters configured for it (`MeterSettings.flows`), None where none is."""
        flows: dict[str, float] = {}
        for m in self.settings.meters:
            got = values.get(m.name)
            if got is None:
                continue
            for flow, quantity in m.flows.items():
                name = quantity.removeprefix("-")
                if name in got and math.isfinite(got[name]):
                    sign = -1.0 if quantity.startswith("-") else 1.0
                    flows[flow] = flows.get(flow, 0.0) + sign * got[name]

        def watts(flow: str) -> int | None:
            if flow not in flows:
                return None
            return max(-tele.MAX_ABS_W, min(tele.MAX_ABS_W, round(flows[flow])))

        pv = watts("pv")
        health = tele.Health.OK
        if self.stats.storage_alarm or (
            self.meters and len(self.stats.meters_unavailable) == len(self.meters)
        ):
            health |= tele.Health.FAULT
        if self._time_quality()[0] is TimeQuality.UNKNOWN:
            health |= tele.Health.CLOCK_UNSYNCHRONISED
        sample = tele.Telemetry(
            device_id=self.settings.device_id,
            boot=self._chain.boot,
            seq=self._telemetry_seq,
            at_ms=at_ms,
            pv_w=None if pv is None else max(0, pv),  # standby draw at night is 0
            battery_w=watts("battery"),
            soc_permille=self._soc,
            grid_w=watts("grid"),
            health=health,
            backlog=waiting,
        )
        self._telemetry_seq += 1
        return sample

    async def _publish_telemetry(self, values: dict[str, dict[str, float]]) -> None:
        if not self.link.connected.is_set():
            return
        waiting = (await self.outbox.counters())["waiting"]
        sample = self.telemetry(values, int(self.clock.now() * 1000), waiting)
        self.link.publish_nowait(self.telemetry_topic, tele.encode(sample), qos=0)
        await self._publish_status(waiting)

    async def _publish_status(self, waiting: int | None = None) -> None:
        """The retained status, when it changed (`waiting`: the outbox count, if just read)."""
        if not self.link.connected.is_set():
            return
        if waiting is None:
            waiting = (await self.outbox.counters())["waiting"]
        status = self.status(waiting)
        text = json.dumps(status, sort_keys=True)
        if text != self._last_status:
            self._last_status = text
            self.link.publish_nowait(self.status_topic, text.encode(), qos=1, retain=True)

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        resend_ms = int(self.settings.resend_after_s * 1000)
        while not stop.is_set():
            self._beats["publish"].beat()
            if not self.link.connected.is_set():
                await self.link.wait_connected(5.0)
                continue
            try:
                rows = await self.outbox.due(int(time.time() * 1000), resend_ms)
                await self._publish_rows(rows)
            except Exception as exc:
                if not is_storage_error(exc):
                    raise
                # A PUBACK that could not be written leaves its token due: it is sent again
                # and the cloud answers "duplicate". The publisher must outlive a full disk,
                # or nothing would be sent once there is room again.
                self._storage_failed("recording what was sent", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _publish_rows(self, rows: list[OutboxRow]) -> None:
        """Publish tokens a window at a time: up to `publish_window` unacknowledged at once (in
        sequence order on the wire), then every PUBACKed one marked sent in one transaction.
        A window with a publish that was not acknowledged ends the round; what was not marked
        stays due."""
        window = self.settings.publish_window
        for k in range(0, len(rows), window):
            chunk = rows[k : k + window]
            # Each task hands its message to paho before its first await, so the messages go
            # out in the chunk's (sequence) order.
            acked = await asyncio.gather(
                *(self.link.publish(self.token_topic, row.envelope, qos=1) for row in chunk)
            )
            sent = [row.record_hash for row, ok in zip(chunk, acked, strict=True) if ok]
            if sent:
                await self.outbox.mark_sent_many(sent, int(time.time() * 1000))
                self._storage_ok()
            if len(sent) < len(chunk):
                return

    async def _proof_loop(self, stop: asyncio.Event) -> None:
        """Now and then, check that the cloud's signed ledger holds the tokens it confirmed."""
        s = self.settings
        if not (s.cloud_url and s.ledger_key):
            return  # not enrolled with a ledger key: nothing to check against
        ledger_key = parse_verifier_key(s.ledger_key)
        while not stop.is_set():
            try:
                await self.check_proofs(ledger_key)
            except CloudHttpError as exc:  # offline or refused: try again next round
                log.info("ledger proofs: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), s.proof_check_interval_s)

    async def check_proofs(self, ledger_key: VerifierKey) -> int:
        """Ask for and verify inclusion proofs of confirmed tokens; returns how many held."""
        waiting = await self.outbox.proofs_waiting(50)
        if not waiting:
            return 0
        s = self.settings
        base = s.cloud_url.rstrip("/")
        probe = statements.make_probe(
            s.device_id, int(self.clock.now() * 1000), self.key, s.deployment.encode()
        )
        answers = await asyncio.to_thread(
            http_json,
            "POST",
            f"{base}/api/v1/devices/{s.device_id}/proofs",
            {"statement": probe.hex(), "token_ids": [t for t, _ in waiting]},
            20.0,
        )
        now_ms = int(time.time() * 1000)
        newest: TreeHead | None = None
        proven = 0
        for (token_id, record_hash), answer in zip(waiting, answers, strict=False):
            if answer is None:
                continue  # not closed into the ledger yet
            try:
                head = check_token_proof(answer, token_id, record_hash, ledger_key)
            except ProofCheckError as exc:
                self.stats.proof_failures += 1
                log.error("ledger proof for token %s FAILED: %s", token_id, exc)
                await self.outbox.mark_proof(token_id, "failed", str(exc), now_ms)
                continue
            await self.outbox.mark_proof(token_id, "proven", f"in log of {head.size}", now_ms)
            self.stats.proofs_verified += 1
            proven += 1
            if newest is None or head.size > newest.size:
                newest = head
        if newest is not None:
            await self._check_log_grew(base, newest)
        await self.outbox.prune_proofs(now_ms - PROVEN_KEPT_MS)
        return proven

    async def _check_log_grew(self, base: str, head: TreeHead) -> None:
        saved = await self.outbox.load_tree_head()
        if saved is not None and head.size > saved[0]:
            answer = await asyncio.to_thread(
                http_json,
                "GET",
                f"{base}/api/v1/ledger/consistency?old={saved[0]}&new={head.size}",
                None,
                20.0,
            )
            try:
                check_consistency(
                    TreeHead(*saved), head, [bytes.fromhex(h) for h in answer["path"]]
                )
            except (ProofCheckError, KeyError, TypeError, ValueError) as exc:
                self.stats.proof_failures += 1
                log.error("the cloud's ledger rewrote its history: %s", exc)
                return
        if saved is None or head.size > saved[0]:
            await self.outbox.save_tree_head(head.size, head.root)

    async def _on_commands(self, messages: list[tuple[str, bytes]]) -> None:
        """Dispatch commands from the cloud: the runner checks, stores and answers them."""
        runner = self.runner
        if runner is None:
            return
        await runner.on_commands(messages)

    async def _on_receipts(self, messages: list[tuple[str, bytes]]) -> None:
        """The cloud's receipts, a batch at a time: every token it holds is dropped from the
        outbox in one transaction; refusals are handled one by one."""
        held: list[bytes] = []
        for topic, payload in messages:
            try:
                receipt = Receipt.decode(payload)
                digest = bytes.fromhex(receipt.record_hash)
            except ValueError as exc:
                log.warning("ignoring malformed receipt on %s: %s", topic, exc)
                continue
            self.stats.receipts += 1
            if receipt.held_by_cloud:
                held.append(digest)
                continue
            log.warning("cloud refused a token: %s", receipt.reason)
            await self.outbox.reject(digest, receipt.reason, receipt.retry, int(time.time() * 1000))
            if receipt.retry:
                self._wake.set()
        if held:
            await self.outbox.confirm_many(held)
