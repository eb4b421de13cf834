"""MQTT topic names: versioned, one subtree per site and device.

Owns: building and parsing topic names. Imports nothing of ours.

    gridmint/v1/sites/{site}/devices/{device}/<channel>

    tokens     edge -> cloud, QoS 1, signed interval records
    telemetry  edge -> cloud, QoS 0, live readings
    status     edge -> cloud, retained, last-will "offline"
    commands   cloud -> edge, QoS 1, signed dispatch commands (protocol/dispatch.py)
    receipts   cloud -> edge, QoS 1, "stored" or "refused, because" per record
    acks       edge -> cloud, QoS 1, signed dispatch acknowledgements (protocol/dispatch.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ROOT = "gridmint/v1"
LEDGER_CHECKPOINT = f"{ROOT}/ledger/checkpoint"  # retained: the newest signed checkpoint
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class TopicError(ValueError):
    """A topic name or segment that does not follow the gridmint scheme."""


class Channel(StrEnum):
    """The per-device topic leaves."""

    TOKENS = "tokens"
    TELEMETRY = "telemetry"
    STATUS = "status"
    COMMANDS = "commands"
    RECEIPTS = "receipts"
    ACKS = "acks"


def check_segment(value: str, what: str) -> str:
    """Return `value` if it is a safe topic segment (no wildcards, slashes or blanks)."""
    if not _SEGMENT.fullmatch(value):  # not match(): "$" also matches before a final "\n"
        raise TopicError(
            f"{what} {value!r} is not a valid id: use 1-64 letters, digits, '_', '.', ':' or '-'"
        )
    return value


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """The address of one device's channel."""

    site_id: str
    device_id: str
    channel: Channel

    def __post_init__(self) -> None:
        check_segment(self.site_id, "site id")
        check_segment(self.device_id, "device id")

    def __str__(self) -> str:
        return f"{ROOT}/sites/{self.site_id}/devices/{self.device_id}/{self.channel.value}"


def topic(site_id: str, device_id: str, channel: Channel) -> str:
    """Build the topic name of one device's channel."""
    return str(DeviceTopic(site_id, device_id, channel))


def subscription(channel: Channel, share_group: str | None = None) -> str:
    """Topic filter for one channel of every device, or an MQTT v5 shared subscription."""
    flt = f"{ROOT}/sites/+/devices/+/{channel.value}"
    return f"$share/{share_group}/{flt}" if share_group else flt


def parse(name: str) -> DeviceTopic:
    """Parse a topic name into its site, device and channel, or raise TopicError."""
    parts = name.split("/")
    if (
        len(parts) != 7
        or "/".join(parts[:2]) != ROOT
        or parts[2] != "sites"
        or parts[4] != "devices"
    ):
        raise TopicError(f"not a gridmint v1 device topic: {name!r}")
    try:
        channel = Channel(parts[6])
    except ValueError:
        raise TopicError(f"unknown channel {parts[6]!r} in topic {name!r}") from None
    return DeviceTopic(parts[3], parts[5], channel)
