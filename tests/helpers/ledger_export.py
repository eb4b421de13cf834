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
  It also drives a rules.market `Market` the way the aggregator's order service does
  (cloud/services/market.py, without importing it): each accepted order event becomes an
  ORDER_EVENT leaf followed by the TRADE_MATCH leaves of the trades it caused, and `settle`
  settles a matched trade as cloud/services/settlement.py does (P2P_TRADE with the trade id as
  ref, a GRID_PURCHASE for a shortfall); `build_market_export(directory)` is the market scenario.

And a forger's tools, for tampering that the Merkle log alone would not catch: `read_entries`,
`without_entry` (delete one entry and renumber everything after it, seqs inside market leaves and
trade ids included), `with_market` (re-encode a market leaf) and `rewrite_log` (write entries
and re-sign every checkpoint over them with the log key).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel
from edge.minting import MintedToken
from protocol import cose
from protocol.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf, decode_leaf
from protocol.merkle import MerkleLog, leaf_hash
from rules.ledger import (
    MARKET_SITE,
    BatteryParams,
    Entry,
    EntryKind,
    IntervalFlows,
    LedgerEngine,
    TradeTerms,
)
from rules.market import (
    Amend,
    Cancel,
    CloseGate,
    Event,
    Market,
    MatchingMode,
    Place,
    Side,
    TimeInForce,
    Trade,
)
from rules.market.codec import decode_event, decode_trade, encode_event, encode_trade
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
    market_mode: MatchingMode | None = None,
) -> Path:
    """Write the five export files into `directory` (created if needed) and return it.

    `devices` are devices.jsonl rows (see `ExportDevice.row`); `records` are written in device,
    then seq order; `leaves` are the log's leaf bytes in order; `checkpoints` are signed notes in
    increasing size. `market_mode`, when given, is stated in log.json (optional; the cloud's
    exporter does not write it, and the verifier then infers the mode from the trades).
    """
    directory.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "origin": origin,
        "log_key": verifier_key_string(origin, log_public_key),
        "deployment": deployment,
    }
    if market_mode is not None:
        log["market_mode"] = market_mode.value
    (directory / "log.json").write_text(
        json.dumps(log, indent=2, sort_keys=True) + "\n", encoding="utf-8"
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
        market_mode: MatchingMode = MatchingMode.CONTINUOUS,
        state_market_mode: bool = False,
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
        # the market (rules.market), as the aggregator's order service runs it
        self.exchange = Market(market_mode)
        self.state_market_mode = state_market_mode  # write the mode into log.json
        self.market_interval_s = interval_s
        self.matched: dict[str, Trade] = {}  # every matched trade, by id, in trade order
        self.settled: dict[str, list[Entry]] = {}  # trade id -> its settlement entries

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

    # market ----------------------------------------------------------------------------------

    def order_event(self, make: Callable[[int], Event]) -> list[Trade]:
        """Accept one order event as cloud/services/market.py does: its seq is the next log seq;
        it is matched, then logged as an ORDER_EVENT leaf (site: the order's, or MARKET_SITE for
        a gate closure) followed by one TRADE_MATCH leaf per trade it caused, in trade order."""
        ev = make(self.engine.state.next_seq)
        if isinstance(ev, (Place, CloseGate)):
            interval = ev.interval_start
            site = ev.site_id if isinstance(ev, Place) else MARKET_SITE
        else:
            o = self.exchange.order(ev.order_id)
            if o is None:
                raise KeyError(f"unknown order {ev.order_id!r}")
            interval, site = o.interval_start, o.site_id
        trades = self.exchange.apply(ev)
        self.engine.record_market(EntryKind.ORDER_EVENT, site, interval, encode_event(ev))
        for tr in trades:
            self.engine.record_market(
                EntryKind.TRADE_MATCH,
                tr.seller_site_id,
                tr.interval_start,
                encode_trade(tr),
                counterparty=tr.buyer_site_id,
                ref=tr.trade_id,
                requested_wh=tr.quantity_wh,
            )
            self.matched[tr.trade_id] = tr
        self._sync()
        return trades

    def place(
        self,
        order_id: str,
        site_id: str,
        side: Side,
        interval_start: int,
        quantity_wh: int,
        limit_price: int,
        *,
        tif: TimeInForce = TimeInForce.GTC,
        min_fill_wh: int = 0,
        source: str = "manual",
    ) -> list[Trade]:
        """Place an order for the site's account (``acct-{site}``); the trades it caused."""
        return self.order_event(
            lambda seq: Place(
                seq,
                order_id,
                f"acct-{site_id}",
                site_id,
                side,
                interval_start,
                quantity_wh,
                limit_price,
                tif,
                min_fill_wh,
                source,
            )
        )

    def amend(
        self, order_id: str, *, limit_price: int | None = None, quantity_wh: int | None = None
    ) -> list[Trade]:
        return self.order_event(lambda seq: Amend(seq, order_id, limit_price, quantity_wh))

    def cancel(self, order_id: str) -> list[Trade]:
        return self.order_event(lambda seq: Cancel(seq, order_id))

    def close_gate(self, interval_start: int) -> list[Trade]:
        return self.order_event(lambda seq: CloseGate(seq, interval_start))

    def settle(
        self,
        trade_id: str,
        *,
        platform_fee: int = 1,
        dso_fee: int = 4,
        retail_price: int = 32,
        price: int | None = None,
        quantity_wh: int | None = None,
        seller: str | None = None,
        buyer: str | None = None,
    ) -> list[Entry]:
        """Settle a matched trade as cloud/services/settlement.py does: a P2P_TRADE for
        min(traded, delivered) with the trade id as ref and its price as the value rate, then a
        GRID_PURCHASE of any shortfall for the buyer. `price`, `quantity_wh`, `seller` and
        `buyer` override the trade's (a forger's settlement; the ledger rules still hold)."""
        t = self.matched[trade_id]
        qty = t.quantity_wh if quantity_wh is None else quantity_wh
        seller = t.seller_site_id if seller is None else seller
        buyer = t.buyer_site_id if buyer is None else buyer
        terms = TradeTerms(t.price if price is None else price, platform_fee, dso_fee)
        window = (t.interval_start, t.interval_start + self.market_interval_s)
        trade = self.engine.settle_trade(seller, buyer, window, qty, terms, trade_id)
        short = qty - (0 if trade is None else trade.burned_wh)
        if short:
            self.engine.grid_purchase(buyer, t.interval_start, short, retail_price)
        entries = self._sync()
        self.settled[trade_id] = entries
        return entries

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
            market_mode=self.exchange.mode if self.state_market_mode else None,
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


# --------------------------------------------------------------------------------------------
# The market scenario


@dataclass(frozen=True)
class MarketExport:
    """The market export on disk, the builder that made it, and what happened in it."""

    directory: Path
    builder: LedgerExportBuilder
    rounds: list[MarketRound] = field(default_factory=list)

    @property
    def mode(self) -> MatchingMode:
        return self.builder.exchange.mode


@dataclass
class MarketRound:
    """One delivery interval's trading: the seq of each named order event, its trades."""

    interval_start: int
    events: dict[str, int] = field(default_factory=dict)  # "place A1" -> entry seq
    trades: list[Trade] = field(default_factory=list)


Settle = Callable[[LedgerExportBuilder, Trade], object]


def _honest(b: LedgerExportBuilder, t: Trade) -> object:
    return b.settle(t.trade_id)


def build_market_export(
    directory: Path,
    *,
    mode: MatchingMode = MatchingMode.CONTINUOUS,
    rounds: int = 4,
    state_mode: bool = False,
    settle: Settle = _honest,
) -> MarketExport:
    """Three sites trade `rounds` delivery intervals through the market, then one more is
    matched but not yet delivered; every trade of a delivered interval is settled.

    site-a (pi-1) and site-c (pi-4) sell, site-b (pi-3) buys. Per round, for interval t:

    * continuous: A1 sells 200 @ 18, C1 sells 100 @ 16, B1 buys 250 @ 20 (two trades: 100 @ 16
      from C1, 150 @ 18 from A1), B2 buys 100 @ 15 (rests), A1 is amended to 15 (trades its
      last 50 @ 15 with B2, the Amend the taker), C2 sells 80 @ 30 and is cancelled, B3 is an
      IOC bid that finds nothing, the gate closes (B2's rest expires);
    * call auction: the same orders (B3 left out: GTC only) rest, A1 is amended to 17, and the
      gate closure clears them at one price (two trades, both caused by the CloseGate).

    Then the interval is delivered and closed (in the last round site-a under-delivers: one
    trade settles short with a grid purchase for the buyer, one is bought from the grid
    entirely) and its trades are settled through `settle` (the honest settlement by default:
    a forger passes its own); a checkpoint after each round. A P2P trade settled outside the
    market ("otc-1") precedes the market; the final, undelivered round leaves one trade matched
    and unsettled and one order resting.
    """
    b = LedgerExportBuilder(market_mode=mode, state_market_mode=state_mode)
    b.add_device("pi-1", "site-a", capacity_w=6000)
    b.add_device("pi-3", "site-b", capacity_w=2000)
    b.add_device("pi-4", "site-c", capacity_w=4000)
    continuous = mode is MatchingMode.CONTINUOUS
    done: list[MarketRound] = []

    def deliver(t: int, a_gen: int) -> None:
        b.sign("pi-1", generated=a_gen, exported=a_gen - 100)
        b.sign("pi-3", generated=50, imported=300)
        b.sign("pi-4", generated=250, exported=150)
        for site in ("site-a", "site-b", "site-c"):
            b.close(site, t)

    # Before the market opens: an interval delivered, credits paid in, a trade settled outside.
    deliver(b.start, 400)
    b.market("deposit", "site-b", b.start, 20_000)
    b.market("deposit", "site-c", b.start, 5_000)
    b.market(
        "settle_trade",
        "site-a",
        "site-c",
        (b.start, b.start + b.interval_s),
        120,
        TradeTerms(19, 1, 4),
        trade_id="otc-1",
    )
    b.checkpoint()

    def event(r: MarketRound, name: str, trades: list[Trade]) -> None:
        r.events[name] = len(b.leaves) - 1 - len(trades)
        r.trades += trades

    for k in range(1, rounds + 2):
        t = b.start + k * b.interval_s
        r = MarketRound(t)
        event(r, "place A1", b.place(f"A1-{k}", "site-a", Side.SELL, t, 200, 18))
        event(r, "place C1", b.place(f"C1-{k}", "site-c", Side.SELL, t, 100, 16))
        event(r, "place B1", b.place(f"B1-{k}", "site-b", Side.BUY, t, 250, 20))
        if k > rounds:  # the last round is matched, not delivered: leave an order resting
            done.append(r)
            break
        event(r, "place B2", b.place(f"B2-{k}", "site-b", Side.BUY, t, 100, 15))
        event(r, "amend A1", b.amend(f"A1-{k}", limit_price=15 if continuous else 17))
        event(r, "place C2", b.place(f"C2-{k}", "site-c", Side.SELL, t, 80, 30))
        event(r, "cancel C2", b.cancel(f"C2-{k}"))
        if continuous:
            ioc = TimeInForce.IOC
            event(r, "place B3", b.place(f"B3-{k}", "site-b", Side.BUY, t, 60, 14, tif=ioc))
        event(r, "close", b.close_gate(t))
        deliver(t, 400 if k < rounds else 220)  # the last delivered round: 120 Wh tradable
        for tr in r.trades:
            settle(b, tr)
        b.checkpoint()
        done.append(r)
    b.checkpoint()
    b.write(directory)
    return MarketExport(directory, b, done)


# --------------------------------------------------------------------------------------------
# A forger's tools: change the log, then make the Merkle log and the signatures agree again


def read_entries(directory: Path) -> list[Entry]:
    """The entries of an export's entries.jsonl, in order."""
    with (directory / "entries.jsonl").open(encoding="utf-8") as f:
        return [
            Entry.from_bytes(decode_leaf(bytes.fromhex(json.loads(r)["leaf"])).entry) for r in f
        ]


def with_market(entry: Entry, item: Event | Trade) -> Entry:
    """The entry carrying `item`'s canonical bytes instead (a TRADE_MATCH's ref and requested
    Wh follow the trade, so the entry stays consistent with it)."""
    if isinstance(item, Trade):
        return dataclasses.replace(
            entry, market=encode_trade(item), ref=item.trade_id, requested_wh=item.quantity_wh
        )
    return dataclasses.replace(entry, market=encode_event(item))


_TRADE_ID = re.compile(r"(\d+)\.(\d+)", re.ASCII)
_LOT_ID = re.compile(r"(\d+)/(\d+)", re.ASCII)


def without_entry(entries: Sequence[Entry], index: int) -> list[Entry]:
    """Delete entry `index` and renumber what follows, as a forger rebuilding the log would:
    entry seqs, the seq of every later order event, the seqs inside trades (taker, maker, buy,
    sell), the trade ids (``"{taker seq}.{k}"``) in TRADE_MATCH and P2P_TRADE refs, and the
    derived lot ids (``"{seq}/{n}"``) minted and burned. A seq that named the deleted entry
    names its successor."""

    def shift(seq: int) -> int:
        return seq - 1 if seq > index else seq

    def trade_id(ref: str) -> str:
        found = _TRADE_ID.fullmatch(ref)
        return f"{shift(int(found.group(1)))}.{found.group(2)}" if found else ref

    def lot_id(lot: str) -> str:
        found = _LOT_ID.fullmatch(lot)
        return f"{shift(int(found.group(1)))}/{found.group(2)}" if found else lot

    out: list[Entry] = []
    for e in (*entries[:index], *entries[index + 1 :]):
        e = dataclasses.replace(
            e,
            seq=shift(e.seq),
            mints=tuple(dataclasses.replace(x, lot_id=lot_id(x.lot_id)) for x in e.mints),
            burns=tuple(dataclasses.replace(x, lot_id=lot_id(x.lot_id)) for x in e.burns),
        )
        if e.kind is EntryKind.ORDER_EVENT:
            ev = decode_event(e.market)
            e = with_market(e, dataclasses.replace(ev, seq=shift(ev.seq)))
        elif e.kind is EntryKind.TRADE_MATCH:
            t = decode_trade(e.market)
            e = with_market(
                e,
                t._replace(
                    trade_id=trade_id(t.trade_id),
                    taker_seq=shift(t.taker_seq),
                    maker_seq=shift(t.maker_seq),
                    buy_seq=shift(t.buy_seq),
                    sell_seq=shift(t.sell_seq),
                ),
            )
        elif e.kind is EntryKind.P2P_TRADE:
            e = dataclasses.replace(e, ref=trade_id(e.ref))
        out.append(e)
    return out


def rewrite_log(
    directory: Path,
    entries: Sequence[Entry],
    log_key: Ed25519PrivateKey,
    origin: str = ORIGIN,
) -> None:
    """Write `entries` as the export's log and re-sign its checkpoints over them: the same
    sizes as before (capped at the new length, the last covering every entry), each note a
    valid signature by the log key on the new Merkle root. Only checks beyond the Merkle log
    and the signatures can then tell."""
    leaves = [leaf_of(e) for e in entries]
    with (directory / "checkpoints.jsonl").open(encoding="utf-8") as f:
        old = [int(json.loads(r)["note"].split("\n")[1]) for r in f]
    sizes = sorted({*(min(n, len(leaves)) for n in old), len(leaves)})
    log = MerkleLog(leaf_hash(leaf) for leaf in leaves)
    notes = [
        sign_checkpoint(Checkpoint(origin, n, log.root(n)), origin, log_key).decode("utf-8")
        for n in sizes
    ]
    _jsonl(
        directory / "entries.jsonl",
        ({"index": i, "leaf": leaf.hex()} for i, leaf in enumerate(leaves)),
    )
    _jsonl(directory / "checkpoints.jsonl", ({"note": n} for n in notes))
