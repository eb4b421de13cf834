"""Building a valid ledger export in-process, the way the aggregator writes one.

The export format is the one `gridmint verify` reads (docs/tokens.md, "Verifying the ledger"):
log.json, devices.jsonl, records.jsonl, entries.jsonl, checkpoints.jsonl. Everything here is
real: records are signed by FakeDevices' Ed25519 keys through edge.minting, entries come from
the LedgerEngine, leaves are hashed into a MerkleLog and checkpoints are signed notes.

Two layers, both reusable:

* `write_export(...)` writes the five files from the primitives (what the cloud's exporter
  stores), byte for byte in the cloud exporter's layout;
* `LedgerExportBuilder` drives devices, key rotations, interval closes, trades and checkpoints,
  then writes; `build_sample_export(directory)` is the standard scenario the verifier tests use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel
from edge.minting import MintedToken
from protocol import cose
from protocol.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf
from protocol.merkle import MerkleLog, leaf_hash
from rules.ledger import (
    BatteryParams,
    Entry,
    IntervalFlows,
    LedgerEngine,
    TradeTerms,
)
from tests.helpers.records import FakeDevice

EXPORT_FORMAT = "gridmint-export/v1"
DEPLOYMENT = "gridmint-test"
ORIGIN = "gridmint.test/ledger"
T0 = 1_800_000_000 - 1_800_000_000 % 3600
FILES = ("log.json", "devices.jsonl", "records.jsonl", "entries.jsonl", "checkpoints.jsonl")


# --------------------------------------------------------------------------------------------
# Writing the files


def _jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")
            n += 1
    return n


def leaf_of(entry: Entry) -> bytes:
    """The log leaf of an entry: its seq, the record hashes of its refs, its canonical bytes."""
    return LedgerLeaf(
        entry.seq, tuple(r.record_hash for r in entry.refs), entry.to_bytes()
    ).encode()


def record_row(token: MintedToken) -> dict[str, Any]:
    """One records.jsonl row."""
    return {
        "token_id": token.token_id,
        "device_id": token.record.device_id,
        "seq": token.record.seq,
        "record_hash": token.record_hash.hex(),
        "envelope": token.envelope.hex(),
    }


def write_export(
    directory: Path,
    *,
    origin: str,
    log_public_key: bytes,
    deployment: str,
    devices: Iterable[dict[str, Any]],
    records: Iterable[MintedToken],
    leaves: Sequence[bytes],
    checkpoints: Sequence[bytes],
) -> Path:
    """Write the five export files into `directory` (created if needed) and return it.

    `devices` are devices.jsonl rows (see `ExportDevice.row`); `records` are written in device,
    then seq order; `leaves` are the log's leaf bytes in order; `checkpoints` are signed notes in
    increasing size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "log.json").write_text(
        json.dumps(
            {
                "format": EXPORT_FORMAT,
                "origin": origin,
                "log_key": verifier_key_string(origin, log_public_key),
                "deployment": deployment,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )
    _jsonl(directory / "devices.jsonl", devices)
    ordered = sorted(records, key=lambda t: (t.record.device_id, t.record.seq))
    _jsonl(directory / "records.jsonl", (record_row(t) for t in ordered))
    _jsonl(
        directory / "entries.jsonl",
        ({"index": i, "leaf": leaf.hex()} for i, leaf in enumerate(leaves)),
    )
    _jsonl(directory / "checkpoints.jsonl", ({"note": n.decode("utf-8")} for n in checkpoints))
    return directory


# --------------------------------------------------------------------------------------------
# Building a ledger


@dataclass
class ExportKey:
    """A device signing key as the aggregator registered it (Unix seconds)."""

    public_key: bytes
    valid_from: int
    valid_until: int | None = None

    def row(self) -> dict[str, Any]:
        return {
            "kid": cose.key_id(self.public_key).hex(),
            "public_key": self.public_key.hex(),
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
        }


@dataclass
class ExportDevice:
    """A FakeDevice with its site and registered keys."""

    device: FakeDevice
    tech: str
    keys: list[ExportKey]

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def site_id(self) -> str:
        return self.device.site_id

    def row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "site_id": self.site_id,
            "keys": [k.row() for k in self.keys],
        }


class LedgerExportBuilder:
    """Signs records, closes intervals through the engine, logs leaves, signs checkpoints."""

    def __init__(
        self,
        *,
        deployment: str = DEPLOYMENT,
        origin: str = ORIGIN,
        start: int = T0,
        interval_s: int = 300,
        log_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.deployment = deployment
        self.origin = origin
        self.start = start
        self.interval_s = interval_s
        self.log_key = log_key or Ed25519PrivateKey.generate()
        self.engine = LedgerEngine()
        self.log = MerkleLog()
        self.leaves: list[bytes] = []
        self.checkpoints: list[bytes] = []
        self.devices: dict[str, ExportDevice] = {}
        self.tokens: list[MintedToken] = []
        self.batteries: dict[str, BatteryParams] = {}

    @property
    def log_public_key(self) -> bytes:
        return cose.public_bytes(self.log_key.public_key())

    # devices and records -----------------------------------------------------------------

    def add_device(
        self, device_id: str, site_id: str, *, tech: str = "pv", capacity_w: int = 5000
    ) -> ExportDevice:
        dev = FakeDevice(
            device_id,
            site_id=site_id,
            deployment=self.deployment.encode(),
            capacity_w=capacity_w,
            interval_s=self.interval_s,
            next_start=self.start,
            zone=f"zone-{site_id}",
            tech=tech,
            totals=dict.fromkeys(Channel, 1_000),  # full-channel meter registers
        )
        d = ExportDevice(dev, tech, [ExportKey(dev.public_key, self.start - 86_400)])
        self.devices[device_id] = d
        return d

    def set_battery(self, site_id: str, params: BatteryParams) -> None:
        self.batteries[site_id] = params

    def rotate_key(self, device_id: str, at: int, overlap_s: int = 600) -> ExportKey:
        """The device signs with a new key from now on; the old one retires at `at + overlap_s`."""
        d = self.devices[device_id]
        d.keys[-1].valid_until = at + overlap_s
        d.device.key = Ed25519PrivateKey.generate()
        key = ExportKey(d.device.public_key, at)
        d.keys.append(key)
        return key

    def sign(
        self,
        device_id: str,
        *,
        generated: int = 0,
        imported: int = 0,
        exported: int = 0,
        charged: int = 0,
        discharged: int = 0,
        soc: int | None = None,
    ) -> MintedToken:
        """The device's record for its next interval, continuing its chain."""
        token = self.devices[device_id].device.sign(
            {
                Channel.GENERATED: generated,
                Channel.IMPORTED: imported,
                Channel.EXPORTED: exported,
                Channel.CHARGED: charged,
                Channel.DISCHARGED: discharged,
            },
            soc,
        )
        self.tokens.append(token)
        return token

    # ledger --------------------------------------------------------------------------------

    def _sync(self) -> list[Entry]:
        new = self.engine.entries[len(self.leaves) :]
        for e in new:
            leaf = leaf_of(e)
            self.leaves.append(leaf)
            self.log.append(leaf_hash(leaf))
        return list(new)

    def close(self, site_id: str, interval_start: int) -> list[Entry]:
        """Close a site's interval from the records signed for it (as the ledger service does)."""
        recs = [
            (t.record, t.record_hash)
            for t in self.tokens
            if t.record.interval_start == interval_start
            and self.devices[t.record.device_id].site_id == site_id
        ]
        self.engine.close_interval(
            site_id, IntervalFlows.from_records(recs), self.batteries.get(site_id)
        )
        return self._sync()

    def market(self, action: str, *args: Any, **kwargs: Any) -> list[Entry]:
        """Call an engine method (deposit, settle_trade, expire_unsold, grid_purchase)."""
        getattr(self.engine, action)(*args, **kwargs)
        return self._sync()

    def checkpoint(self) -> bytes:
        cp = Checkpoint(self.origin, self.log.size, self.log.root())
        note = sign_checkpoint(cp, self.origin, self.log_key)
        self.checkpoints.append(note)
        return note

    def write(self, directory: Path) -> Path:
        """Write the export, entries cut at the latest checkpoint (as the cloud's exporter)."""
        size = len(self.leaves)
        if self.checkpoints:
            last = self.checkpoints[-1].decode().split("\n")[1]
            size = int(last)
        return write_export(
            directory,
            origin=self.origin,
            log_public_key=self.log_public_key,
            deployment=self.deployment,
            devices=[d.row() for d in self.devices.values()],
            records=self.tokens,
            leaves=self.leaves[:size],
            checkpoints=self.checkpoints,
        )


# --------------------------------------------------------------------------------------------
# The standard scenario


@dataclass(frozen=True)
class SampleExport:
    """The sample export on disk and the builder that made it (engine state, tokens, keys)."""

    directory: Path
    builder: LedgerExportBuilder
    rotated_device: str
    rotation_interval: int
    open_interval: int  # records signed for this interval are not in the ledger yet


SAMPLE_BATTERY = BatteryParams(
    usable_capacity_wh=5_000,
    soh_permille=950,
    self_discharge_ppm_per_h=2_000,
    round_trip_efficiency_permille=900,
)


def build_sample_export(directory: Path, *, intervals: int = 30, seed: int = 7) -> SampleExport:
    """Two sites, three devices, `intervals` closed 5-minute intervals, a checkpoint after each.

    site-a: pi-1 (PV with the grid meter; its signing key rotates halfway) and pi-2 (a battery
    inverter reporting charge, discharge and state of charge); site-b: pi-3 (PV). After the
    intervals: a deposit, a P2P trade from site-a to site-b, unsold Tgen expires to the grid, a
    grid purchase, a final checkpoint; then one more interval is signed but not closed.
    """
    rng = random.Random(seed)
    b = LedgerExportBuilder()
    b.add_device("pi-1", "site-a", capacity_w=6000)
    b.add_device("pi-2", "site-a", tech="battery", capacity_w=3000)
    b.add_device("pi-3", "site-b", capacity_w=4000)
    b.set_battery("site-a", SAMPLE_BATTERY)
    rotation = intervals // 2
    stored = 1_000.0  # what the battery really holds, Wh (drives the SoC reading)
    usable = SAMPLE_BATTERY.usable_capacity_wh * SAMPLE_BATTERY.soh_permille // 1000

    def site_a(n: int) -> None:
        nonlocal stored
        t = b.start + n * b.interval_s
        gen = max(
            0, int(450 * (1 - abs(n - intervals / 2) / (intervals / 2))) + rng.randint(-40, 40)
        )
        load = rng.randint(80, 260)
        charged = discharged = imported = exported = 0
        if gen >= load:
            charged = min(gen - load, int(max(0.0, usable - stored) / 0.95))
            exported = gen - load - charged
        else:
            discharged = min(load - gen, int(stored * 0.95))
            imported = load - gen - discharged
        if n == intervals - 3:  # evening: the battery also exports
            extra = min(200, max(0, int(stored * 0.95) - discharged))
            discharged += extra
            exported += extra
        stored += charged * 0.95 - discharged / 0.95
        if n == rotation:
            b.rotate_key("pi-1", at=t + 30, overlap_s=900)
        b.sign("pi-1", generated=gen, imported=imported, exported=exported)
        reading = max(0, min(1000, int(stored * 1000 // 5_000)))
        if n == intervals * 2 // 3:
            reading //= 4  # a pessimistic reading: Tstorage is set aside, then returned
        soc = None if n == 4 else reading  # interval 4: no reading, capped at full capacity
        b.sign("pi-2", charged=charged, discharged=discharged, soc=soc)

    def site_b(n: int) -> None:
        gen = max(
            0, int(300 * (1 - abs(n - intervals / 2) / (intervals / 2))) + rng.randint(-20, 20)
        )
        load = rng.randint(50, 200)
        b.sign("pi-3", generated=gen, imported=max(0, load - gen), exported=max(0, gen - load))

    for n in range(intervals):
        t = b.start + n * b.interval_s
        site_a(n)
        site_b(n)
        b.close("site-a", t)
        b.close("site-b", t)
        b.checkpoint()
    end = b.start + intervals * b.interval_s
    b.market("deposit", "site-b", end, 5_000)
    b.market(
        "settle_trade",
        "site-a",
        "site-b",
        (b.start, end),
        600,
        TradeTerms(250, platform_fee_minor_per_kwh=10, dso_fee_minor_per_kwh=30, loss_ppm=20_000),
        trade_id="trade-1",
    )
    b.market("expire_unsold", end, 80)
    b.market("grid_purchase", "site-a", end - b.interval_s, 100, 300)
    b.checkpoint()
    site_a(intervals)  # signed and delivered, not closed yet
    site_b(intervals)
    b.write(directory)
    return SampleExport(directory, b, "pi-1", rotation, end)
