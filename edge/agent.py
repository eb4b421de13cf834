"""The edge agent: read meters at every interval boundary, mint, store, publish, await receipts.

Owns: the agent's tasks and their wiring (composition of accounting, minting, outbox, uplink).
It runs on any `protocol.clock.Clock`, so the demo can run it faster than real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel, IntervalAccountant, align_down
from edge.minting import ChainState, DeviceIdentity, mint
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from mqttlink import BrokerAddress, MqttLink, Subscription, Will
from protocol import topics
from protocol.clock import Clock, SimClock
from protocol.receipts import Receipt
from protocol.record import TimeQuality

log = logging.getLogger(__name__)

_WH_PER_UNIT = {"Wh": 1.0, "kWh": 1000.0, "MWh": 1_000_000.0}


class MeterReader(Protocol):
    """Anything that returns cumulative energy totals (Wh) per site channel."""

    name: str

    async def read_totals(self) -> dict[Channel, int]:
        """Read the meter; raise an exception with a plain message if it does not answer."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class ModbusMeterReader:
    """A Modbus meter read through the generic, register-map driven driver."""

    def __init__(self, settings: MeterSettings):
        from edge.drivers.modbus_generic import ModbusDevice
        from edge.drivers.register_map import find_register_map, load_register_map

        self.name = settings.name
        self.settings = settings
        self.map = load_register_map(find_register_map(settings.register_map))
        for ch, quantity in settings.channels.items():
            if quantity not in self.map.quantities:
                raise ValueError(
                    f"meter {settings.name}: {self.map.model} has no quantity {quantity!r} "
                    f"for channel {ch.value}"
                )
        self.device = ModbusDevice(
            self.map, settings.host, settings.port, settings.unit_id, timeout_s=settings.timeout_s
        )

    async def read_totals(self) -> dict[Channel, int]:
        """Read the energy registers and convert them to whole Wh."""
        names = list(self.settings.channels.values())
        values = await self.device.read(names)
        out: dict[Channel, int] = {}
        for ch, quantity in self.settings.channels.items():
            unit = self.map.quantities[quantity].unit
            factor = _WH_PER_UNIT.get(unit)
            if factor is None:
                raise ValueError(f"quantity {quantity} has unit {unit}, not an energy unit")
            # float32 kWh registers: subtract in float64, store integers (devices.md).
            out[ch] = round(values[quantity] * factor)
        return out

    async def close(self) -> None:
        """Close the Modbus connection."""
        await self.device.close()


@dataclass(slots=True)
class AgentStats:
    """Live counters for status output and the demo."""

    readings: int = 0
    read_failures: int = 0
    last_error: str = ""
    receipts: int = 0
    meters_unavailable: dict[str, str] = field(default_factory=dict)


class EdgeAgent:
    """One site's agent. `await agent.run(stop)` until `stop` is set."""

    def __init__(
        self,
        settings: EdgeSettings,
        key: Ed25519PrivateKey,
        clock: Clock,
        meters: list[MeterReader],
        outbox: Outbox,
    ):
        self.settings = settings
        self.key = key
        self.clock = clock
        self.meters = meters
        self.outbox = outbox
        self.stats = AgentStats()
        self.identity = DeviceIdentity(
            device_id=settings.device_id,
            meter=";".join(f"{m.name}" for m in settings.meters),
            firmware=settings.firmware,
            zone=settings.zone,
            tech=settings.tech,
            capacity_w=settings.capacity_w,
        )
        self._wake = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self._chain = ChainState()
        self._accountant = IntervalAccountant(settings.interval_s, settings.capacity_w)
        site, dev = settings.site_id, settings.device_id
        self.token_topic = topics.topic(site, dev, topics.Channel.TOKENS)
        status_topic = topics.topic(site, dev, topics.Channel.STATUS)
        self.link = MqttLink(
            BrokerAddress.parse(settings.broker_url),
            client_id=f"edge-{dev}",
            clean_session=False,
            will=Will(status_topic, b"offline"),
            online=(status_topic, b"online"),
            subscriptions=[
                Subscription(topics.topic(site, dev, topics.Channel.RECEIPTS), self._on_receipt)
            ],
        )

    def _time_quality(self) -> tuple[TimeQuality, tuple[str, int]]:
        if isinstance(self.clock, SimClock):
            return TimeQuality.SYNCHRONIZED, ("sim", 0)
        # Clock synchronisation detection on the Pi comes with the field-grade agent (issue 3).
        return TimeQuality.INFORMATIVE, ("system", 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Run sampling and publishing until `stop` is set, then shut down cleanly."""
        self._chain = await self.outbox.start_boot()
        saved = await self.outbox.load_accountant()
        if saved is not None:
            self._accountant.state = saved
        await self.link.start()
        self._sampler = asyncio.create_task(self._sample_loop(stop), name="sample")
        tasks = [self._sampler, asyncio.create_task(self._publish_loop(stop), name="publish")]
        self.started.set()
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.link.stop()
            for m in self.meters:
                with contextlib.suppress(Exception):
                    await m.close()

    async def stop_sampling(self) -> None:
        """Stop reading meters and minting; publishing goes on (to drain the outbox)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the cloud holds every stored token; False if some are still waiting."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.outbox.counters())["waiting"] == 0:
                return True
            self._wake.set()
            await asyncio.sleep(0.1)
        return (await self.outbox.counters())["waiting"] == 0

    async def _read_all(self) -> dict[Channel, int]:
        totals: dict[Channel, int] = {}
        for meter in self.meters:
            for attempt in range(3):
                try:
                    totals.update(await meter.read_totals())
                    self.stats.meters_unavailable.pop(meter.name, None)
                    break
                except Exception as exc:  # a dead meter must not stop the others
                    self.stats.read_failures += 1
                    self.stats.last_error = f"{meter.name}: {exc}"
                    if attempt == 2:
                        self.stats.meters_unavailable[meter.name] = str(exc)
                        log.warning("meter %s unavailable: %s", meter.name, exc)
                    else:
                        await asyncio.sleep(0.05)
        self.stats.readings += 1
        return totals

    async def sample_once(self) -> None:
        """Read every meter now and close an interval if a boundary has passed."""
        totals = await self._read_all()
        ts = self.clock.now()
        if not totals:
            return
        closed = self._accountant.observe(ts, totals)
        if closed is None:
            await self.outbox.save_accountant(self._accountant.state)
            return
        tq, source = self._time_quality()
        token = mint(
            closed,
            self._chain,
            self.identity,
            self.key,
            self.settings.deployment.encode(),
            tq,
            source,
        )
        await self.outbox.commit_mint(token, self._accountant.state, int(time.time() * 1000))
        self._chain = token.next_chain
        self._wake.set()

    async def _sample_loop(self, stop: asyncio.Event) -> None:
        ivl = self.settings.interval_s
        while not stop.is_set():
            boundary = align_down(self.clock.now(), ivl) + ivl
            await self.clock.sleep_until(boundary)
            try:
                await self.sample_once()
            except Exception as exc:
                # Storage trouble (full disk, locked file) is reported, never a crash.
                self.stats.last_error = f"sampling failed: {exc}"
                log.error("sampling failed: %s", exc)

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        resend_ms = int(self.settings.resend_after_s * 1000)
        while not stop.is_set():
            if not self.link.connected.is_set():
                await self.link.wait_connected(5.0)
                continue
            rows = await self.outbox.due(int(time.time() * 1000), resend_ms)
            for row in rows:
                if not await self.link.publish(self.token_topic, row.envelope, qos=1):
                    break
                await self.outbox.mark_sent(row.record_hash, int(time.time() * 1000))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _on_receipt(self, topic: str, payload: bytes) -> None:
        try:
            receipt = Receipt.decode(payload)
            digest = bytes.fromhex(receipt.record_hash)
        except ValueError as exc:
            log.warning("ignoring malformed receipt on %s: %s", topic, exc)
            return
        self.stats.receipts += 1
        if receipt.held_by_cloud:
            await self.outbox.confirm(digest)
        else:
            log.warning("cloud refused a token: %s", receipt.reason)
            await self.outbox.reject(digest, receipt.reason, receipt.retry, int(time.time() * 1000))
            if receipt.retry:
                self._wake.set()
