"""MQTT side of ingest: subscribe to every device's tokens topic, answer each with a receipt.

Owns: the aggregator's broker connection. Messages reach the ingest service in batches (what is
queued, up to `max_batch`), and each batch is acknowledged to the broker (PUBACK) only after the
service has stored its tokens and rejections in one transaction (mqttlink's manual ack). When
storage fails, the devices get a retryable `storage_error` receipt and the batch stays
unacknowledged, so the broker delivers it again once the link reconnects.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Protocol

from cloud.services.ingest import Outcome
from mqttlink import BatchSubscription, MqttLink, parse_brokers
from protocol import topics


class NotStoredError(RuntimeError):
    """Raised to mqttlink so that a message whose outcome could not be stored is not acked."""


class BatchIngest(Protocol):
    """What judges and stores a batch: `IngestService` in this process, or `IngestWorkers`."""

    async def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """One outcome per message, in order."""
        ...


class MqttIngest:
    """Connects ingest to a broker."""

    def __init__(
        self,
        service: BatchIngest,
        broker_url: str,
        client_id: str,
        tls_context: ssl.SSLContext | None = None,
        max_batch: int = 256,
        pipeline: int = 1,
        extra: Sequence[BatchSubscription] = (),
    ):
        """`pipeline` > 1 only for a service that keeps each device's order across overlapping
        batches (IngestWorkers queues each worker's parts in call order): the link then gathers,
        acknowledges and answers while the workers judge the next batch. `extra`: more
        subscriptions on the same session (the DERMS's telemetry, status and acks)."""
        self.service = service
        self.link = MqttLink(
            # A comma-separated list is a cluster: the link moves on to the next node when
            # its node is lost, and the persistent session (clean_session=False) resumes there.
            parse_brokers(broker_url),
            client_id=client_id,
            clean_session=False,
            subscriptions=[
                BatchSubscription(
                    topics.subscription(topics.Channel.TOKENS),
                    self._on_tokens,
                    qos=1,
                    max_batch=max_batch,
                    pipeline=pipeline,
                ),
                *extra,
            ],
            tls_context=tls_context,
        )

    async def start(self) -> None:
        """Start connecting (returns at once)."""
        await self.link.start()

    async def stop(self) -> None:
        """Disconnect."""
        await self.link.stop()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed to every tokens topic."""
        return await self.link.wait_ready(timeout_s)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self.link.connected.is_set()

    async def _on_tokens(self, messages: list[tuple[str, bytes]]) -> None:
        outcomes = await self.service.handle_batch(messages)
        for outcome in outcomes:
            if outcome.reply_topic is not None:
                # Not awaited: a lost receipt only makes the device resend, and a resend is
                # answered as a duplicate it may drop.
                self.link.publish_nowait(outcome.reply_topic, outcome.receipt.encode(), qos=1)
        unstored = sum(not o.stored for o in outcomes)
        if unstored:
            raise NotStoredError(f"storage failed for {unstored} of {len(outcomes)} message(s)")
