"""Building signed records for tests, the way an edge device does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel, ClosedInterval
from edge.minting import ChainState, DeviceIdentity, MintedToken, mint
from protocol import cose
from protocol.record import TimeQuality


@dataclass
class FakeDevice:
    """A device that signs a chain of records with its own key (pure logic, no I/O)."""

    device_id: str
    site_id: str = "site-t"
    deployment: bytes = b"gridmint-test"
    capacity_w: int = 5000
    interval_s: int = 300
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    chain: ChainState = field(default_factory=ChainState)
    next_start: int = 0
    zone: str = "zone-t"
    tech: str = "pv"
    totals: dict[Channel, int] = field(
        default_factory=lambda: {Channel.GENERATED: 1_000_000, Channel.IMPORTED: 50_000}
    )

    def __post_init__(self) -> None:
        if not self.next_start:
            now = int(time.time())
            self.next_start = now - now % self.interval_s - 50 * self.interval_s

    @property
    def public_key(self) -> bytes:
        """Raw public key."""
        return cose.public_bytes(self.key.public_key())

    @property
    def kid(self) -> bytes:
        """Key id."""
        return cose.key_id(self.public_key)

    def next_token(self, generated_wh: int = 250, imported_wh: int = 10) -> MintedToken:
        """Mint the next interval's token (generation and import) and advance the chain."""
        return self.sign({Channel.GENERATED: generated_wh, Channel.IMPORTED: imported_wh})

    def sign(
        self,
        energy_wh: dict[Channel, int],
        soc_permille: int | None = None,
        flags: tuple[str, ...] = (),
        estimated: bool = False,
    ) -> MintedToken:
        """Mint the next interval's token with these channels (and a state of charge, status
        flags such as "R", an estimated quality)."""
        for ch, wh in energy_wh.items():
            self.totals[ch] = self.totals.get(ch, 0) + wh
        closed = ClosedInterval(
            interval_start=self.next_start,
            interval_s=self.interval_s,
            energy_wh=dict(energy_wh),
            totals_wh=dict(self.totals),
            reading_ts=self.next_start + self.interval_s + 1,
            flags=flags,
            estimated=estimated,
        )
        token = mint(
            closed,
            self.chain,
            DeviceIdentity(
                self.device_id, "test-meter", "test/1", self.zone, self.tech, self.capacity_w
            ),
            self.key,
            self.deployment,
            TimeQuality.SYNCHRONIZED,
            ("ntp", 3),
            soc_permille=soc_permille,
        )
        self.chain = token.next_chain
        self.next_start += self.interval_s
        return token
