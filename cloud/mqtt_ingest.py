"""MQTT side of ingest: subscribe to every device's tokens topic, answer each with a receipt.

Owns: the aggregator's broker connection. The broker's message is acknowledged (PUBACK) only after
the ingest service has stored the token or its rejection (mqttlink's manual ack). When storage
fails, the device gets a retryable `storage_error` receipt and the message stays unacknowledged,
so the broker delivers it again once the link reconnects.
"""

from __future__ import annotations

import ssl

from cloud.services.ingest import IngestService
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import topics


class NotStoredError(RuntimeError):
    """Raised to mqttlink so that a message whose outcome could not be stored is not acked."""


class MqttIngest:
    """Connects ingest to a broker."""

    def __init__(
        self,
        service: IngestService,
        broker_url: str,
        client_id: str,
        tls_context: ssl.SSLContext | None = None,
    ):
        self.service = service
        self.link = MqttLink(
            BrokerAddress.parse(broker_url),
            client_id=client_id,
            clean_session=False,
            subscriptions=[
                Subscription(topics.subscription(topics.Channel.TOKENS), self._on_token, qos=1)
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

    async def _on_token(self, topic: str, payload: bytes) -> None:
        outcome = await self.service.handle(topic, payload)
        if outcome.reply_topic is not None:
            # Not awaited: a lost receipt only makes the device resend, and a resend is answered
            # as a duplicate it may drop.
            self.link.publish_nowait(outcome.reply_topic, outcome.receipt.encode(), qos=1)
        if not outcome.stored:
            raise NotStoredError(f"storage failed for a message on {topic}")
