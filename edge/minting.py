"""Minting: a closed interval becomes a signed interval record, the generation token.

Owns: the device's hash chain (sequence number, boot counter, previous record hash) and building
the record. Pure logic apart from the Ed25519 signature; no I/O. The caller persists the new chain
state in the same transaction as the token (edge.outbox) before anything is published.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import CHANNEL_ORDER, Channel, ClosedInterval
from protocol import cose
from protocol.record import (
    ZERO_HASH,
    Channels,
    Energy,
    IntervalRecord,
    Quality,
    TimeQuality,
)

_CHANNEL_FLAG = {
    Channel.GENERATED: Channels.GENERATED,
    Channel.IMPORTED: Channels.IMPORTED,
    Channel.EXPORTED: Channels.EXPORTED,
    Channel.CHARGED: Channels.CHARGED,
    Channel.DISCHARGED: Channels.DISCHARGED,
}


@dataclass(frozen=True, slots=True)
class ChainState:
    """The device's position in its own record chain."""

    seq: int = 0
    boot: int = 0
    prev_hash: bytes = ZERO_HASH


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What the device says about itself in every record."""

    device_id: str
    meter: str
    firmware: str
    zone: str
    tech: str
    capacity_w: int


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A signed record and the chain state that follows it."""

    record: IntervalRecord
    envelope: bytes
    record_hash: bytes
    next_chain: ChainState

    @property
    def token_id(self) -> str:
        """The token id (device, interval start)."""
        return self.record.token_id


def mint(
    closed: ClosedInterval,
    chain: ChainState,
    identity: DeviceIdentity,
    key: Ed25519PrivateKey,
    deployment: bytes,
    time_quality: TimeQuality,
    time_source: tuple[str, int],
    soc_permille: int | None = None,
) -> MintedToken:
    """Build and sign the record for `closed`, continuing `chain`."""
    energy = Energy(*(closed.energy_wh.get(ch, 0) for ch in CHANNEL_ORDER))
    totals = tuple(closed.totals_wh.get(ch, 0) for ch in CHANNEL_ORDER)
    measured = Channels.NONE
    for ch in closed.totals_wh:
        measured |= _CHANNEL_FLAG[ch]
    record = IntervalRecord(
        device_id=identity.device_id,
        meter=identity.meter,
        seq=chain.seq + 1,
        boot=chain.boot,
        interval_start=closed.interval_start,
        interval_s=closed.interval_s,
        energy=energy,
        registers_wh=(totals[0], totals[1], totals[2], totals[3], totals[4]),
        channels=measured,
        soc_permille=soc_permille,
        reading_ms=int(closed.reading_ts * 1000),
        time_quality=time_quality,
        time_source=time_source,
        status=closed.status,
        quality=Quality.ESTIMATED if closed.estimated else Quality.MEASURED,
        prev_hash=chain.prev_hash,
        firmware=identity.firmware,
        zone=identity.zone,
        tech=(identity.tech, identity.capacity_w),
    )
    envelope = cose.seal(record, key, deployment)
    digest = cose.record_hash(envelope)
    return MintedToken(
        record=record,
        envelope=envelope,
        record_hash=digest,
        next_chain=ChainState(seq=record.seq, boot=chain.boot, prev_hash=digest),
    )
