"""An asyncio face on paho-mqtt, shared by the edge agent and the cloud aggregator.

Owns: one MQTT connection with automatic reconnect (paho's network thread), publishing that waits
for the broker's PUBACK, and subscriptions whose messages are handed to the asyncio loop and
acknowledged only when the handler has finished without raising (manual ack), so "acknowledged"
means "stored". A `BatchSubscription`'s handler gets its messages in batches (what is queued, up to
a size, gathered for at most a few milliseconds) and the batch is acknowledged after it, in
arrival order. A handler that raises leaves its message unacknowledged: the link drops what it
holds of that connection and reconnects (after a back-off), and the broker, which keeps the
session, delivers every unacknowledged message again, in order. A message is acknowledged only
on the connection it came by: message ids start again on a new session, so an acknowledgement
sent on the next connection could acknowledge a different message.
`ready` is set once the broker has confirmed every subscription (SUBACK) on the current
connection; wait on it, not on a sleep, before publishing something a subscriber must see.
A link may be given several brokers (the nodes of a cluster, `parse_brokers`): it connects to
the first and, when a connection attempt fails or an open connection is lost, moves on to the
next in turn (each node of a NATS cluster serves the same MQTT sessions).
Imports nothing of ours; it is the only place that imports paho.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]
_EARLY_ACK_TTL_S = 5.0


class BrokerUrlError(ValueError):
    """A broker address that is not mqtt://host:port or mqtts://host:port."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse mqtt://host[:port] (plain) or mqtts://host[:port] (TLS)."""
        if "," in url:
            raise BrokerUrlError(
                f"broker url {url!r} is a list of brokers: read it with parse_brokers"
            )
        u = urlparse(url.strip())
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise BrokerUrlError(f"broker url {url!r} must look like mqtt://host:1883")
        try:
            port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        except ValueError:
            raise BrokerUrlError(f"broker url {url!r} has an invalid port") from None
        return cls(u.hostname, port, u.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_brokers(urls: str | Sequence[str]) -> tuple[BrokerAddress, ...]:
    """One broker URL, a comma-separated failover list (`mqtt://a:1883,mqtt://b:1883`) or a
    list of URLs, as addresses in the order they are tried.

    Every address must use the same scheme: one link has one TLS context for all of them.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    if not items or any(not u.strip() for u in items):
        raise BrokerUrlError(f"broker url list {urls!r} has an empty entry")
    addresses = tuple(BrokerAddress.parse(u.strip()) for u in items)
    if len({a.tls for a in addresses}) > 1:
        raise BrokerUrlError(f"broker url list {urls!r} mixes mqtt:// and mqtts://")
    if len(set(addresses)) != len(addresses):
        raise BrokerUrlError(f"broker url list {urls!r} names a broker twice")
    return addresses


def rotated(addresses: Sequence[BrokerAddress], first: int) -> tuple[BrokerAddress, ...]:
    """The same failover list starting at entry `first` (modulo its length): clients that
    share a list spread over its brokers and each still falls back on all the others."""
    k = first % len(addresses)
    return tuple(addresses[k:]) + tuple(addresses[:k])


def client_tls_context(
    ca_file: str | Path, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS context that trusts `ca_file` and, when given, presents a client certificate.

    Raises OSError or ssl.SSLError with the file's name when a file is missing or not PEM.
    """
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None or key_file is not None:
        if cert_file is None or key_file is None:
            raise ValueError("a client certificate needs both its certificate and its key file")
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True, slots=True)
class Will:
    """The last-will message the broker publishes if the connection dies."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter and the coroutine that handles its messages."""

    topic_filter: str
    handler: MessageHandler
    qos: int = 1


@dataclass(frozen=True, slots=True)
class BatchSubscription:
    """A topic filter whose messages reach `handler` as a list, in arrival order.

    A batch is what is queued when the handler is free, up to `max_batch` messages, waiting at
    most `linger_s` after its first message for more. The handler sees each message once per
    delivery; every message of the batch is acknowledged after it returns, none if it raises.

    `pipeline` > 1 lets the next batch's handler start before the last one has returned (up to
    that many calls in flight; acknowledgements still go in arrival order). Only for a handler
    that keeps order itself across overlapping calls, such as one that queues each batch to
    worker processes in order: the link then gathers and acknowledges while the handler works.
    """

    topic_filter: str
    handler: BatchHandler
    qos: int = 1
    max_batch: int = 256
    linger_s: float = 0.002
    pipeline: int = 1


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A message from the broker waiting for its handler (made on paho's thread)."""

    sub: Subscription | BatchSubscription
    topic: str
    payload: bytes
    mid: int
    qos: int
    epoch: int


class MqttLink:
    """One MQTT connection. Create, `await start()`, use, `await stop()`."""

    def __init__(
        self,
        address: BrokerAddress | Sequence[BrokerAddress],
        client_id: str,
        *,
        clean_session: bool = False,
        will: Will | None = None,
        online: tuple[str, bytes] | None = None,
        subscriptions: list[Subscription | BatchSubscription] | None = None,
        tls_context: ssl.SSLContext | None = None,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 10,
        max_inflight: int = 20,
        redeliver_min_s: float = 0.5,
    ):
        self.addresses = (address,) if isinstance(address, BrokerAddress) else tuple(address)
        if not self.addresses:
            raise ValueError("a link needs at least one broker address")
        if len({a.tls for a in self.addresses}) > 1:
            raise ValueError("one link cannot mix TLS and plain brokers (one TLS context)")
        # Index of the broker being used or tried; moved on by paho's thread (see _fail_over).
        self._current = 0
        self.failovers = 0
        self.client_id = client_id
        self._online = online
        self._subs = list(subscriptions or [])
        # Each filter split into levels once: matching a message's topic is then a split and a
        # few comparisons (paho's topic_matches_sub builds a matcher tree on every call, ~15 us,
        # on paho's thread, for every message and every subscription before the one it hits).
        self._filters = [(tuple(_strip_share(s.topic_filter).split("/")), s) for s in self._subs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        # Connected, and the broker confirmed every subscription on this connection.
        self.ready = asyncio.Event()
        self._suback_mid: int | None = None
        self._suback_refusals = 0  # refused SUBACKs in a row (back-off before asking again)
        self._lock = threading.Lock()
        self._acks: dict[int, asyncio.Future[None]] = {}
        # PUBACKs that arrived before publish() registered its future, with their arrival time.
        # Message ids repeat after 65535, so an entry is trusted only briefly.
        self._early_acks: dict[int, float] = {}
        # Message ids of `publish_nowait` messages whose PUBACK has not come: nobody waits for
        # those acks, so they must not pile up in `_early_acks` (a scan there per PUBACK made
        # receipts cost O(pending) each at ingest rates).
        self._unawaited: set[int] = set()
        self._inbox: asyncio.Queue[_Delivery] = asyncio.Queue()
        # Messages from paho's thread wait here until the loop moves them to `_inbox`: one
        # wake-up of the loop per burst instead of one per message (a self-pipe write each).
        self._arrived: collections.deque[_Delivery] = collections.deque()
        self._moving = False  # a move to `_inbox` is scheduled on the loop
        self._worker: asyncio.Task[None] | None = None
        # Handler calls started and not yet acknowledged, oldest first (see `pipeline`).
        self._in_flight: collections.deque[tuple[asyncio.Task[None], list[_Delivery]]] = (
            collections.deque()
        )
        # Each connection has an epoch (counted on paho's thread); after a handler failed, the
        # worker drops the failed connection's remaining messages: the broker resends them.
        self._epoch = 0
        self._epoch_lock = threading.Lock()
        self._abandoned_epoch = 0
        self._failure_streak = 0
        self._redeliver_min_s = redeliver_min_s
        self._redeliver_max_s = float(reconnect_max_s)
        self._conn_lock = threading.Lock()  # serialises reconnect-for-redelivery with stop()
        self._stopping = False
        self.connects = 0
        self.disconnects = 0
        self.handler_failures = 0
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        c.manual_ack_set(True)
        c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if tls_context is not None:
            c.tls_set_context(tls_context)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._client = c
        self._keepalive = 15

    @property
    def address(self) -> BrokerAddress:
        """The broker this link is connected to, or trying next."""
        return self.addresses[self._current]

    async def start(self) -> None:
        """Start connecting in the background; returns at once (see `connected`)."""
        self._loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._work())
        self._client.connect_async(self.address.host, self.address.port, self._keepalive)
        self._client.loop_start()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the connection; False if it did not come."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until connected with every subscription confirmed."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Disconnect cleanly (no last-will) and stop the network thread."""
        self._stopping = True
        await asyncio.to_thread(self._shut)
        self.connected.clear()
        self.ready.clear()
        for task, _batch in self._in_flight:
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for fut in self._acks.values():
            if not fut.done():
                fut.cancel()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 10.0,
    ) -> bool:
        """Publish; for QoS 1 wait for the broker's PUBACK. False if not acknowledged in time."""
        loop = asyncio.get_running_loop()
        if not self.connected.is_set():
            # paho would queue it and resend on reconnect; the caller's outbox does that instead.
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if qos == 0:
            return True
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            acked_at = self._early_acks.pop(info.mid, None)
            if acked_at is not None and time.monotonic() - acked_at < _EARLY_ACK_TTL_S:
                fut.set_result(None)
            else:
                self._acks[info.mid] = fut
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            with self._lock:
                self._acks.pop(info.mid, None)
            return False
        return True

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Hand a message to paho without waiting for the PUBACK; False if not connected."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        with self._lock:
            if self._early_acks.pop(info.mid, None) is None:  # its PUBACK has not come yet
                self._unawaited.add(info.mid)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # paho callbacks: they run on paho's network thread; hand everything to the loop.

    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def _shut(self) -> None:
        with self._conn_lock:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client.loop_stop()

    def _reconnect(self) -> None:
        """Drop the connection and open a new one (blocking; run in a thread)."""
        with self._conn_lock:
            if self._stopping:
                return
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client.loop_stop()
            self._client.connect_async(self.address.host, self.address.port, self._keepalive)
            self._client.loop_start()

    def _fail_over(self, client: paho.Client, why: str) -> None:
        """Point paho's next reconnect at the next broker of the list (on paho's thread).

        paho's network thread reconnects by itself, after its back-off, to the host and port
        it was last given; `connect_async` is paho's public way to change them while its loop
        runs (it only records them and marks the client as connecting).
        """
        if len(self.addresses) < 2 or self._stopping:
            return
        failed = self.address
        self._current = (self._current + 1) % len(self.addresses)
        self.failovers += 1
        log.warning("broker %s %s; trying %s next", failed, why, self.address)
        client.connect_async(self.address.host, self.address.port, self._keepalive)

    def _on_connect_fail(self, client, userdata):  # type: ignore[no-untyped-def]
        # The TCP (or TLS) connection could not be opened: the node is down or unreachable.
        self._fail_over(client, "cannot be reached")

    def _on_connect(self, client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            # The broker closes the connection next; _on_disconnect moves on to the next one.
            log.warning("broker %s refused the connection: %s", self.address, reason_code)
            return
        self.connects += 1
        with self._epoch_lock:  # no acknowledgement of the last connection's messages after this
            self._epoch += 1
        # The SUBACK is read by this same thread after this callback returns, so the mid is
        # recorded before it can arrive.
        self._suback_mid = None
        self._subscribe(client)
        if self._online is not None:
            client.publish(self._online[0], self._online[1], qos=1, retain=True)
        self._call(self.connected.set)
        if not self._subs:
            self._call(self.ready.set)

    def _subscribe(self, client: paho.Client) -> None:
        """Ask for every subscription; the SUBACK carrying the recorded mid makes us ready."""
        if not self._subs:
            return
        # The lock keeps _on_subscribe (paho's thread) from reading the mid before it is set
        # when this runs on the loop (a retry).
        with self._lock:
            rc, mid = client.subscribe([(s.topic_filter, s.qos) for s in self._subs])
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._suback_mid = mid

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):  # type: ignore[no-untyped-def]
        with self._lock:
            if mid != self._suback_mid:
                return
        refused = [
            s.topic_filter for s, rc in zip(self._subs, reason_codes, strict=False) if rc.is_failure
        ]
        if refused:
            # A broker may refuse for a while and then accept: a NATS node refuses a QoS 1
            # subscription while JetStream cannot create its consumer (a node of the cluster
            # was just lost). Ask again after a back-off, on the same connection.
            epoch = self._epoch
            delay = min(self._redeliver_max_s, 2.0**self._suback_refusals)
            self._suback_refusals += 1
            log.error(
                "broker %s refused the subscriptions %s; asking again in %.0f s",
                self.address,
                refused,
                delay,
            )
            self._call(lambda: self._retry_subscribe(epoch, delay))
            return
        self._suback_refusals = 0
        self._call(self.ready.set)

    def _retry_subscribe(self, epoch: int, delay: float) -> None:
        loop = self._loop
        if loop is None:
            return

        def again() -> None:
            # A newer connection subscribes by itself; a stopped link not at all.
            if not self._stopping and epoch == self._epoch and self.connected.is_set():
                self._subscribe(self._client)

        loop.call_later(delay, again)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        self.disconnects += 1
        if reason_code.is_failure:  # lost or refused, not a disconnect we asked for
            self._fail_over(client, "dropped the connection")

        def lost() -> None:
            self.connected.clear()
            self.ready.clear()

        self._call(lost)

    def _on_publish(self, client, userdata, mid, reason_code, properties):  # type: ignore[no-untyped-def]
        with self._lock:
            if mid in self._unawaited:
                self._unawaited.discard(mid)
                return
            fut = self._acks.pop(mid, None)
            if fut is None:
                # An ack that came before `publish` registered its waiter, or one for a
                # publish that timed out. Entries are in arrival order: drop the stale head.
                now = time.monotonic()
                self._early_acks.pop(mid, None)  # a reused id goes to the back
                self._early_acks[mid] = now
                for old, at in list(itertools.islice(self._early_acks.items(), 8)):
                    if now - at <= _EARLY_ACK_TTL_S:
                        break
                    del self._early_acks[old]
                return

        def resolve() -> None:
            if not fut.done():
                fut.set_result(None)

        self._call(resolve)

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        sub = self._subscription_for(msg.topic)
        if sub is None or self._loop is None:
            client.ack(msg.mid, msg.qos)
            return
        self._arrived.append(
            _Delivery(sub, msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._epoch)
        )
        # Appended before the flag is read, and the loop clears the flag before it empties the
        # deque: a message is either moved by a scheduled move or schedules one itself.
        if not self._moving:
            self._moving = True
            self._call(self._move_arrived)

    def _move_arrived(self) -> None:
        self._moving = False
        arrived, inbox = self._arrived, self._inbox
        while arrived:
            inbox.put_nowait(arrived.popleft())

    async def _work(self) -> None:
        # One worker keeps each connection's messages in arrival order (records of one device
        # arrive in sequence), and acknowledges each only after its handler has finished.
        held: _Delivery | None = None  # taken from the queue but not of the batch before it
        in_flight = self._in_flight
        while True:
            if held is None:
                # Nothing queued: settle (acknowledge) finished calls rather than wait.
                while in_flight and self._inbox.empty():
                    await self._settle_oldest()
                first = await self._inbox.get()
            else:
                first, held = held, None
            if first.epoch <= self._abandoned_epoch:
                continue  # unacknowledged on a connection we dropped: the broker resends it
            # Room in the pipeline for this one's handler (1: every earlier call settled).
            while in_flight and len(in_flight) >= _pipeline(first.sub):
                if not await self._settle_oldest():
                    break
            if first.epoch <= self._abandoned_epoch:
                continue
            batch = [first]
            sub = first.sub
            if isinstance(sub, BatchSubscription):
                held = await self._gather(batch, sub)
                call = sub.handler([(d.topic, d.payload) for d in batch])
            else:
                call = sub.handler(first.topic, first.payload)
            in_flight.append((asyncio.ensure_future(call), batch))

    async def _settle_oldest(self) -> bool:
        """Wait for the oldest handler call and acknowledge its batch; False if it failed (then
        nothing in flight is acknowledged and the link reconnects for redelivery)."""
        task, batch = self._in_flight[0]
        try:
            await task
        except Exception as exc:
            # Not acknowledged: the handler could not keep the message. Later messages of
            # this connection are dropped too (so order holds), and a new connection
            # brings them all again.
            self.handler_failures += 1
            self._abandoned_epoch = max(self._abandoned_epoch, batch[0].epoch)
            for later, _batch in self._in_flight:  # started after it: left for redelivery too
                with contextlib.suppress(Exception):
                    await later
            self._in_flight.clear()
            delay = min(self._redeliver_max_s, self._redeliver_min_s * 2**self._failure_streak)
            self._failure_streak += 1
            log.warning(
                "handler for %s failed (%s); %d message(s) not acknowledged, reconnecting "
                "in %.1f s for redelivery",
                batch[0].topic,
                exc,
                len(batch),
                delay,
            )
            await asyncio.sleep(delay)
            await asyncio.to_thread(self._reconnect)
            return False
        self._in_flight.popleft()
        self._failure_streak = 0
        with self._epoch_lock:
            # Only on the connection the messages came by. A message id means nothing on
            # the next connection: after a broker restart without persistence the ids start
            # again, and this PUBACK would acknowledge a new message with the same id
            # before its handler ran (the broker would drop it even if that handler
            # failed). Left unacknowledged, a message whose session survived comes again
            # and is handled as a copy; one whose session was lost is the publisher's to
            # resend, as for any message the broker lost.
            if batch[0].epoch == self._epoch:
                for d in batch:
                    self._client.ack(d.mid, d.qos)
        return True

    async def _gather(self, batch: list[_Delivery], sub: BatchSubscription) -> _Delivery | None:
        """Add to `batch` the queued messages of the same subscription and connection.

        Returns a message taken from the queue that belongs to the next batch (another
        subscription or connection), or None.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + sub.linger_s
        epoch = batch[0].epoch
        while len(batch) < sub.max_batch:
            try:
                item = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    item = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    return None
            if item.epoch <= self._abandoned_epoch:
                continue
            if item.sub is not sub or item.epoch != epoch:
                return item
            batch.append(item)
        return None

    def _subscription_for(self, topic: str) -> Subscription | BatchSubscription | None:
        levels = topic.split("/")
        for filter_levels, sub in self._filters:
            if topic_matches(filter_levels, levels):
                return sub
        return None


def _pipeline(sub: Subscription | BatchSubscription | None) -> int:
    """How many handler calls may be in flight when one for `sub` is next (1: none other)."""
    return sub.pipeline if isinstance(sub, BatchSubscription) else 1


def topic_matches(filter_levels: Sequence[str], topic_levels: Sequence[str]) -> bool:
    """MQTT topic matching (as paho.topic_matches_sub) of a topic filter and a topic name,
    both split at "/": `+` is one level, `#` the rest (and the parent level itself), and a
    wildcard in the first level does not match a topic beginning with `$`."""
    if topic_levels and topic_levels[0][:1] == "$" and filter_levels[0] in ("+", "#"):
        return False
    n = len(topic_levels)
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= n or (f != "+" and f != topic_levels[i]):
            return False
    return len(filter_levels) == n


def _strip_share(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter
