"""An MQTT broker embedded in the process (amqtt), for the demo's one-command, no-service run.

Production and the tests use Mosquitto; this broker exists so `gridmint demo` needs nothing
installed beyond the Python package.
"""

from __future__ import annotations

import logging
from typing import Any

from amqtt.broker import Broker


class EmbeddedBroker:
    """A plain-TCP broker on loopback."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._broker = Broker(config)

    @property
    def url(self) -> str:
        """The broker's address."""
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start listening."""
        await self._broker.start()

    async def stop(self) -> None:
        """Stop the broker."""
        await self._broker.shutdown()
