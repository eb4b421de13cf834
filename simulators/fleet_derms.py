"""The fleet simulator's DERMS side: thousands of Pis that report telemetry and obey commands.

Owns: per simulated device, a small home (PV output with a generation limit, a battery that
charges or discharges at its setpoint within its limits and state of charge), its live
telemetry (protocol/telemetry.py, QoS 0) and its command handling, which is the edge's own
protocol code: `protocol.dispatch.check_command` against the pinned dispatch key, signed
acknowledgements (received, started, completed, cancelled, superseded, or the rejection code),
the setpoint applied at the command's start and released at its end. Everything shares a few
MQTT connections, as simulators/fleet.py does for tokens, so 10,000 devices fit in one process.

Randomised start delays are honoured as 0 here (the benchmark measures the aggregator's side:
how soon every device has answered), which the ack's timing makes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mqttlink import BatchSubscription, BrokerAddress, MqttLink, parse_brokers, rotated
from protocol import dispatch, telemetry, topics
from protocol.dispatch import (
    FULL_SCALE,
    ControlMode,
    DispatchAck,
    DispatchCommand,
    ResponseStatus,
)
from simulators.fleet import FleetDevice

SUPPORTED = frozenset({ControlMode.OP_MOD_FIXED_W, ControlMode.OP_MOD_MAX_LIM_W})


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 packet: fixed header (type and flags, remaining length) and body."""
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first_byte]) + bytes(length) + body


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


class RawPublisher:
    """PUBLISH packets written straight to a plain socket: a real MQTT 3.1.1 exchange with the
    broker without a client library. paho wakes its network thread with a socket write for
    every publish (and sends from the caller's thread), which made a simulated fleet of 10,000
    spend most of its CPU (shared with the aggregator it loads) on those writes; a Pi publishes
    one sample, not 10,000. QoS 1 packets get packet ids; the broker's PUBACKs are read and
    counted (`acked`), not waited for, and nothing is resent: a simulator's loopback
    connection that drops loses what was in flight, and `unacked` says how much."""

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        if address.tls:
            raise ValueError("the raw publisher needs a plain (mqtt://) broker")
        self.address = address
        self.client_id = client_id
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._next_id = 0
        self.sent_qos1 = 0
        self.acked = 0

    @property
    def unacked(self) -> int:
        return self.sent_qos1 - self.acked

    async def start(self, timeout_s: float) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address.host, self.address.port), timeout_s
        )
        # protocol "MQTT" level 4, clean session, keep-alive off (the broker never pings it)
        writer.write(
            _mqtt_packet(
                0x10, _mqtt_str(b"MQTT") + b"\x04\x02\x00\x00" + _mqtt_str(self.client_id.encode())
            )
        )
        connack = await asyncio.wait_for(reader.readexactly(4), timeout_s)
        if connack[0] != 0x20 or connack[3] != 0:
            writer.close()
            raise ConnectionError(f"the broker refused the raw publisher: {connack.hex()}")
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_acks(reader))

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        """PUBACKs (0x40, length 2, packet id): all a publisher-only session receives."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(4)
                if head[0] == 0x40:
                    self.acked += 1

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        w = self._writer
        if w is None or w.is_closing():
            return False
        if qos == 0:
            w.write(_mqtt_packet(0x30, _mqtt_str(topic.encode()) + payload))
            return True
        self._next_id = self._next_id % 0xFFFF + 1
        w.write(
            _mqtt_packet(
                0x32, _mqtt_str(topic.encode()) + self._next_id.to_bytes(2, "big") + payload
            )
        )
        self.sent_qos1 += 1
        return True

    async def stop(self) -> None:
        w, self._writer = self._writer, None
        if w is not None and not w.is_closing():
            w.write(b"\xe0\x00")  # DISCONNECT
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None


@dataclass
class SimHome:
    """One device's plant: steady PV (the benchmark needs no sun), a load and a battery."""

    pv_available_w: int = 3000
    load_w: int = 800
    battery_wh: int = 10_000
    battery_max_w: int = 5000
    stored_wh_x1000: int = 6_000_000  # mWh: integer bookkeeping of the battery's energy
    pv_limit_permyriad: int = FULL_SCALE
    rating_w: int = 5000
    battery_setpoint_w: int = 0  # + discharge, - charge
    at: float = 0.0

    @property
    def soc_permille(self) -> int:
        return self.stored_wh_x1000 // self.battery_wh if self.battery_wh else 0

    def advance(self, now: float) -> None:
        """Integrate the battery from the last call to `now` (stops at empty and full)."""
        if self.at == 0.0:
            self.at = now
            return
        dt = max(0.0, now - self.at)
        self.at = now
        delta = int(self.battery_w * dt * 1000 / 3600)
        self.stored_wh_x1000 = max(0, min(self.battery_wh * 1000, self.stored_wh_x1000 - delta))

    @property
    def battery_w(self) -> int:
        sp = self.battery_setpoint_w
        if sp > 0 and self.stored_wh_x1000 <= 0:
            return 0
        if sp < 0 and self.stored_wh_x1000 >= self.battery_wh * 1000:
            return 0
        return max(-self.battery_max_w, min(self.battery_max_w, sp))

    @property
    def pv_w(self) -> int:
        return min(self.pv_available_w, self.rating_w * self.pv_limit_permyriad // FULL_SCALE)

    @property
    def grid_w(self) -> int:
        return self.load_w - self.pv_w - self.battery_w


@dataclass
class SimDevice:
    """A fleet device's DERMS state."""

    device: FleetDevice
    home: SimHome
    seen: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    active: DispatchCommand | None = None
    seq: int = 0
    telemetry_topic: str = ""
    acks_topic: str = ""

    def __post_init__(self) -> None:
        d = self.device
        self.telemetry_topic = topics.topic(d.site_id, d.device_id, topics.Channel.TELEMETRY)
        self.acks_topic = topics.topic(d.site_id, d.device_id, topics.Channel.ACKS)


@dataclass
class DermsReport:
    """Counters for the benchmark and tests."""

    telemetry: int = 0
    commands: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    first_command_at: dict[str, float] = field(default_factory=dict)  # event -> monotonic


class DermsFleet:
    """Simulated Pis on a broker: `await fleet.start()`, then `await fleet.stop()`."""

    def __init__(
        self,
        devices: list[FleetDevice],
        broker_url: str,
        deployment: bytes,
        dispatch_key: bytes,
        *,
        connections: int = 4,
        telemetry_every_s: float = 1.0,
        now: Callable[[], float] = time.time,
        homes: Callable[[int], SimHome] | None = None,
        raw_publish: bool = False,
    ) -> None:
        """`raw_publish`: send the samples and the acknowledgements with `RawPublisher` (plain
        brokers only) instead of the MQTT links, for fleets of thousands in one process."""
        self.deployment = deployment
        self.dispatch_key = dispatch_key
        self.now = now
        self.telemetry_every_s = telemetry_every_s
        self.report = DermsReport()
        self.sims = {
            d.device_id: SimDevice(d, homes(i) if homes else SimHome(rating_w=d.capacity_w))
            for i, d in enumerate(devices)
        }
        self._index = {d.device_id: i for i, d in enumerate(devices)}
        addresses = parse_brokers(broker_url)
        stamp = time.monotonic_ns()
        self.links = [
            MqttLink(rotated(addresses, c), f"derms-{stamp}-{c}", clean_session=True)
            for c in range(connections)
        ]
        self.receiver = MqttLink(
            rotated(addresses, connections),
            f"derms-commands-{stamp}",
            clean_session=True,
            subscriptions=[
                BatchSubscription(
                    topics.subscription(topics.Channel.COMMANDS), self._on_commands, max_batch=2048
                )
            ],
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self.raw = (
            [
                RawPublisher(rotated(addresses, c)[0], f"derms-{stamp}-{c}-raw")
                for c in range(connections)
            ]
            if raw_publish
            else []
        )

    async def start(self, timeout_s: float = 30.0) -> None:
        await self.receiver.start()
        for link in self.links:
            await link.start()
        ready = [await self.receiver.wait_ready(timeout_s)]
        ready += [await link.wait_ready(timeout_s) for link in self.links]
        if not all(ready):
            raise ConnectionError("the DERMS fleet could not connect to its broker")
        for pub in self.raw:
            await pub.start(timeout_s)
        self._tasks.append(asyncio.create_task(self._telemetry_loop()))

    async def stop(self) -> None:
        """Disconnect (again: a no-op)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for h in self._timers:
            h.cancel()
        for pub in self.raw:
            await pub.stop()
        for link in self.links:
            await link.stop()
        await self.receiver.stop()

    def _link(self, device_id: str) -> MqttLink:
        return self.links[self._index[device_id] % len(self.links)]

    def publish_telemetry(self) -> int:
        """One sample from every device now; returns how many went out."""
        now = self.now()
        sent = 0
        for s in self.sims.values():
            h = s.home
            h.advance(now)
            s.seq += 1
            t = telemetry.Telemetry(
                device_id=s.device.device_id,
                boot=1,
                seq=s.seq,
                at_ms=int(now * 1000),
                pv_w=h.pv_w,
                battery_w=h.battery_w,
                soc_permille=h.soc_permille,
                grid_w=h.grid_w,
            )
            payload = telemetry.encode(t)
            if self.raw:
                k = self._index[s.device.device_id] % len(self.raw)
                sent += self.raw[k].publish(s.telemetry_topic, payload)
            else:
                sent += self._link(s.device.device_id).publish_nowait(
                    s.telemetry_topic, payload, qos=0
                )
        self.report.telemetry += sent
        return sent

    async def _telemetry_loop(self) -> None:
        while True:
            self.publish_telemetry()
            await asyncio.sleep(self.telemetry_every_s)

    def _ack(self, s: SimDevice, ack: DispatchAck) -> None:
        d = s.device
        envelope = dispatch.sign_ack(ack, d.key, self.deployment)
        if self.raw:
            self.raw[self._index[d.device_id] % len(self.raw)].publish(
                s.acks_topic, envelope, qos=1
            )
        else:
            self._link(d.device_id).publish_nowait(s.acks_topic, envelope, qos=1)
        self.report.acks[ack.status.name.lower()] += 1

    def _answer(self, s: SimDevice, cmd: DispatchCommand, status: ResponseStatus) -> None:
        measured = s.home.battery_w if cmd.control is ControlMode.OP_MOD_FIXED_W else s.home.pv_w
        self._ack(
            s,
            DispatchAck(
                cmd.event_id,
                cmd.modification,
                s.device.device_id,
                status,
                int(self.now() * 1000),
                measured_w=measured,
            ),
        )

    async def _on_commands(self, messages: list[tuple[str, bytes]]) -> None:
        now = self.now()
        for topic, payload in messages:
            try:
                device_id = topics.parse(topic).device_id
            except topics.TopicError:
                continue
            s = self.sims.get(device_id)
            if s is None:
                continue  # another fleet's device on the same broker
            self.report.commands += 1
            verdict = dispatch.check_command(
                payload,
                self.dispatch_key,
                self.deployment,
                device_id,
                s.seen,
                int(now),
                SUPPORTED,
            )
            if isinstance(verdict, dispatch.Rejected):
                self._ack(s, dispatch.reject_ack(verdict, device_id, int(now * 1000)))
                continue
            cmd = verdict.command
            self.report.first_command_at.setdefault(cmd.event_id, time.monotonic())
            if verdict.duplicate:
                self._answer(s, cmd, ResponseStatus.RECEIVED)
                continue
            dispatch.remember(s.seen, cmd)
            old = s.active
            if old is not None and old.event_id == cmd.event_id:
                self._release(s)
                if not cmd.status.runs:
                    self._answer(s, cmd, ResponseStatus.CANCELLED)
                    continue
                self._answer(s, old, ResponseStatus.SUPERSEDED)
            elif not cmd.status.runs:
                self._answer(s, cmd, ResponseStatus.CANCELLED)
                continue
            self._answer(s, cmd, ResponseStatus.RECEIVED)
            self._schedule(s, cmd, now)

    def _later(self, delay_s: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            fn()

        handle = loop.call_later(max(0.0, delay_s), run)
        self._timers.add(handle)

    def _schedule(self, s: SimDevice, cmd: DispatchCommand, now: float) -> None:
        s.active = cmd

        def begin() -> None:
            if s.active is not cmd:
                return
            self._apply(s, cmd)
            self._answer(s, cmd, ResponseStatus.STARTED)

        def end() -> None:
            if s.active is not cmd:
                return
            self._release(s)
            s.active = None
            self._answer(s, cmd, ResponseStatus.COMPLETED)

        self._later(cmd.start - now, begin)
        self._later(cmd.end_s - now, end)

    def _apply(self, s: SimDevice, cmd: DispatchCommand) -> None:
        s.home.advance(self.now())
        if cmd.control is ControlMode.OP_MOD_FIXED_W:
            s.home.battery_setpoint_w = s.home.battery_max_w * cmd.value // FULL_SCALE
        elif cmd.control is ControlMode.OP_MOD_MAX_LIM_W:
            s.home.pv_limit_permyriad = cmd.value

    def _release(self, s: SimDevice) -> None:
        s.home.advance(self.now())
        s.home.battery_setpoint_w = 0
        s.home.pv_limit_permyriad = FULL_SCALE
