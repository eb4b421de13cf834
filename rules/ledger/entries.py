"""The ledger's entries: kinds, pools, lots' value types, conversions with carried remainders,
the interval inputs (measurement, allocation, flows) and the canonical bytes of an entry.

See rules/ledger/__init__.py for the model. Pure: no I/O, integers only."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import cbor2

from protocol.record import IntervalRecord

ENTRY_VERSION = 1
PPM = 1_000_000
PERMILLE = 1_000
WH_PER_KWH = 1_000
SECONDS_PER_HOUR = 3_600

GRID_ACCOUNT = "grid:settlement"  # the only account allowed below zero
PLATFORM_FEE_ACCOUNT = "fee:platform"
DSO_FEE_ACCOUNT = "fee:dso"


def site_account(site: str) -> str:
    """A homeowner's payment account."""
    return f"site:{site}"


class LedgerRuleError(ValueError):
    """An entry breaks a ledger rule; `index` is its position in the log (None if not logged)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(f"entry {index}: {message}" if index is not None else message)
        self.index = index
        self.reason = message


class EntryKind(IntEnum):
    """Ledger entry kinds; the integer is the wire value (never renumber)."""

    MINT_GEN = 1
    BURN_SELF_CONSUMPTION = 2
    STORAGE_DECAY = 3
    STORAGE_CHARGE = 4
    STORAGE_DISCHARGE_LOAD = 5
    STORAGE_DISCHARGE_GRID = 6
    STORAGE_SET_ASIDE = 7
    STORAGE_SET_ASIDE_RETURN = 8
    STORAGE_SET_ASIDE_BURN = 9
    INTERVAL_CLOSE = 10
    GRID_SALE = 11
    P2P_TRADE = 12
    GRID_PURCHASE = 13
    DEPOSIT = 14
    # The market's leaves: they move nothing themselves. Their `market` bytes are decoded and
    # replayed by rules.market; a matched trade settles later as a P2P_TRADE naming its id.
    ORDER_EVENT = 15
    TRADE_MATCH = 16
    # The DERMS: reward credits for flexibility a site delivered in a dispatch event (`ref`
    # names the event, `requested_wh` the Wh delivered), paid by the grid settlement account.
    FLEX_REWARD = 17
    # The carbon shop's leaves (rules.carbon): a lot listed, an order paid, units retired, a
    # listing withdrawn. They move nothing; their `market` bytes are a rules.carbon event, `ref`
    # the lot or order id. Checked by the verifier's replay of rules.carbon.ShopBook.
    CARBON = 18
    # Payment credits paid out to a homeowner (a redemption through the payment port): the
    # site's account is debited, the grid settlement account credited; `ref` names the
    # redemption. The payout's fee and net are the payment side's business, not the ledger's.
    WITHDRAWAL = 19


MARKET_KINDS = frozenset({EntryKind.ORDER_EVENT, EntryKind.TRADE_MATCH})
MARKET_SITE = "market"  # the `site` of a market leaf that belongs to no site (a gate closure)
# Leaves that move nothing and carry an event's canonical bytes in `market`.
EVENT_KINDS = MARKET_KINDS | {EntryKind.CARBON}
CARBON_SITE = "shop"  # the `site` of a shop leaf that belongs to no site (external projects)


INTERVAL_KINDS = frozenset(
    {
        EntryKind.BURN_SELF_CONSUMPTION,
        EntryKind.STORAGE_DECAY,
        EntryKind.STORAGE_CHARGE,
        EntryKind.STORAGE_DISCHARGE_LOAD,
        EntryKind.STORAGE_DISCHARGE_GRID,
        EntryKind.STORAGE_SET_ASIDE,
        EntryKind.STORAGE_SET_ASIDE_RETURN,
        EntryKind.STORAGE_SET_ASIDE_BURN,
        EntryKind.INTERVAL_CLOSE,
    }
)


class Pool(IntEnum):
    """Which kind of token a lot holds."""

    TGEN = 0
    TSTORAGE = 1
    SET_ASIDE = 2  # Tstorage suspected lost: not tradable, not dischargeable


class LotFlag(IntFlag):
    """Properties of a lot."""

    NONE = 0
    TRADABLE = 1
    STORAGE_SOURCED = 2  # Tgen minted from a battery discharge to the grid
    RECEIVED = 4  # Tgen a buyer received in a P2P trade (its green claim; not resold)


class IntervalFlag(IntFlag):
    """Findings about an interval, carried by its INTERVAL_CLOSE entry."""

    NONE = 0
    NEGATIVE_LOAD = 1  # G + I + D - E - C below -tolerance: meters disagree
    NO_SOC = 2  # battery without a SoC reading: capped at full capacity, no set-aside resolved


# --------------------------------------------------------------------------------------------
# Value types carried by entries


@dataclass(frozen=True, slots=True)
class Burn:
    """Consume `wh` from lot `lot_id` (front to back)."""

    lot_id: str
    wh: int


@dataclass(frozen=True, slots=True)
class Mint:
    """Create lot `lot_id` of `wh` in `pool`, owned by `site`, dated `interval_start`."""

    lot_id: str
    site: str
    pool: Pool
    wh: int
    flags: LotFlag
    interval_start: int


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a payment journal entry, minor currency units."""

    account: str
    debit: int = 0
    credit: int = 0


@dataclass(frozen=True, slots=True)
class Conversion:
    """``out * den + carry_out == in_ * num + carry_in`` with ``0 <= carry_out < den``.

    `key` names the remainder being carried (e.g. ``"charge:site-1"``); the carry of the next
    conversion with the same key must start where this one ended.
    """

    key: str
    in_: int
    num: int
    den: int
    carry_in: int
    carry_out: int
    out: int


def convert(key: str, in_: int, num: int, den: int, carry: int) -> Conversion:
    """Apply the rate num/den to `in_`, carrying the remainder."""
    total = in_ * num + carry
    return Conversion(key, in_, num, den, carry, total % den, total // den)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A signed interval record consumed by a MINT_GEN entry."""

    token_id: str  # hex
    record_hash: bytes  # SHA-256 of the envelope
    device_id: str
    generated_wh: int
    tech: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True)
class BatteryParams:
    """A site's battery, as registered (integers only).

    The round-trip efficiency is split evenly between charge and discharge
    (``charge_ppm = isqrt(rt)``, ``discharge_ppm = rt / charge_ppm``), because Tstorage is
    denominated in energy *inside* the battery, the quantity the SoC measures.
    """

    usable_capacity_wh: int
    soh_permille: int = 1000
    self_discharge_ppm_per_h: int = 0
    round_trip_efficiency_permille: int = 900

    def __post_init__(self) -> None:
        if self.usable_capacity_wh < 0:
            raise ValueError("usable capacity must be >= 0")
        if not 0 <= self.soh_permille <= PERMILLE:
            raise ValueError("state of health must be 0..1000 permille")
        if not 0 <= self.self_discharge_ppm_per_h <= PPM:
            raise ValueError("self-discharge must be 0..1e6 ppm per hour")
        if not 1 <= self.round_trip_efficiency_permille <= PERMILLE:
            raise ValueError("round-trip efficiency must be 1..1000 permille")

    @property
    def charge_ppm(self) -> int:
        """Charge efficiency, ppm (square root of the round trip, rounded down)."""
        return _isqrt(self.round_trip_efficiency_permille * PERMILLE * PPM)

    @property
    def discharge_ppm(self) -> int:
        """Discharge efficiency, ppm, so that charge x discharge ~ round trip."""
        return max(1, self.round_trip_efficiency_permille * PERMILLE * PPM // self.charge_ppm)


NO_BATTERY = BatteryParams(usable_capacity_wh=0)


def _isqrt(n: int) -> int:
    return math.isqrt(n)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a site's interval measured, and the battery parameters in force (MINT_GEN context)."""

    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    soc_permille: int | None
    capacity_wh: int
    soh_permille: int
    charge_ppm: int
    discharge_ppm: int
    self_discharge_ppm_per_h: int
    load_tolerance_wh: int

    @property
    def load_wh(self) -> int:
        """Derived load L = G + I + D - E - C (may be negative: then the interval is flagged)."""
        return (
            self.generated_wh
            + self.imported_wh
            + self.discharged_wh
            - self.exported_wh
            - self.charged_wh
        )

    @property
    def cap_wh(self) -> int:
        """Measured stored energy: SoC x usable capacity x SoH (full capacity without a SoC)."""
        soc = PERMILLE if self.soc_permille is None else self.soc_permille
        return soc * self.capacity_wh * self.soh_permille // (PERMILLE * PERMILLE)

    @property
    def flags(self) -> IntervalFlag:
        f = IntervalFlag.NONE
        if self.load_wh < -self.load_tolerance_wh:
            f |= IntervalFlag.NEGATIVE_LOAD
        if self.soc_permille is None and self.capacity_wh > 0:
            f |= IntervalFlag.NO_SOC
        return f

    @property
    def allocation(self) -> Allocation:
        return allocate(
            self.generated_wh, max(self.load_wh, 0), self.charged_wh, self.discharged_wh
        )


@dataclass(frozen=True, slots=True)
class Allocation:
    """Where generation and battery discharge went (TOKEN-RULES' allocation order)."""

    gen_to_load: int
    gen_to_battery: int
    gen_to_grid: int
    battery_to_load: int
    battery_to_grid: int
    grid_to_battery: int


def allocate(g: int, load: int, c: int, d: int) -> Allocation:
    """Generation serves the home first, then the battery, then the grid; the battery serves
    the home, then the grid; charge not covered by generation came from the grid."""
    if min(g, load, c, d) < 0:
        raise ValueError("flows must be >= 0")
    g_l = min(g, load)
    g_c = min(g - g_l, c)
    d_l = min(d, load - g_l)
    return Allocation(g_l, g_c, g - g_l - g_c, d_l, d - d_l, c - g_c)


@dataclass(frozen=True, slots=True)
class IntervalFlows:
    """One site's accepted records for one interval, summed."""

    interval_start: int
    interval_s: int
    generated_wh: int = 0
    imported_wh: int = 0
    exported_wh: int = 0
    charged_wh: int = 0
    discharged_wh: int = 0
    soc_permille: int | None = None
    records: tuple[RecordRef, ...] = ()

    def __post_init__(self) -> None:
        values = (
            self.generated_wh,
            self.imported_wh,
            self.exported_wh,
            self.charged_wh,
            self.discharged_wh,
        )
        if min(values) < 0 or self.interval_s <= 0 or self.interval_start < 0:
            raise ValueError("flows and interval must be non-negative")
        if self.interval_s > SECONDS_PER_HOUR:
            raise ValueError("intervals longer than an hour are not ledger intervals")
        if self.soc_permille is not None and not 0 <= self.soc_permille <= PERMILLE:
            raise ValueError("soc must be 0..1000 permille")
        if sum(r.generated_wh for r in self.records) != self.generated_wh:
            raise ValueError("generation must equal the sum of the records' generation")
        if len({r.token_id for r in self.records}) != len(self.records):
            raise ValueError("a record appears twice")

    @property
    def load_wh(self) -> int:
        return (
            self.generated_wh
            + self.imported_wh
            + self.discharged_wh
            - self.exported_wh
            - self.charged_wh
        )

    @classmethod
    def from_records(cls, records: Iterable[tuple[IntervalRecord, bytes]]) -> IntervalFlows:
        """Sum accepted records (with their envelope hashes) of one site and interval."""
        return cls.from_flows(RecordFlows.of(r, h) for r, h in records)

    @classmethod
    def from_flows(cls, records: Iterable[RecordFlows]) -> IntervalFlows:
        """Sum accepted records' flows of one site and interval.

        With several SoC readings (several batteries behind one site) the lowest is used: the
        ledger never assumes more stored energy than the most pessimistic reading.
        """
        recs = sorted(records, key=lambda r: r.device_id)
        if not recs:
            raise ValueError("no records")
        start, length = recs[0].interval_start, recs[0].interval_s
        if any(r.interval_start != start or r.interval_s != length for r in recs):
            raise ValueError("records belong to different intervals")
        socs = [r.soc_permille for r in recs if r.soc_permille is not None]
        return cls(
            interval_start=start,
            interval_s=length,
            generated_wh=sum(r.generated_wh for r in recs),
            imported_wh=sum(r.imported_wh for r in recs),
            exported_wh=sum(r.exported_wh for r in recs),
            charged_wh=sum(r.charged_wh for r in recs),
            discharged_wh=sum(r.discharged_wh for r in recs),
            soc_permille=min(socs) if socs else None,
            records=tuple(
                RecordRef(
                    token_id=r.token_id,
                    record_hash=r.record_hash,
                    device_id=r.device_id,
                    generated_wh=r.generated_wh,
                    tech=r.tech,
                    zone=r.zone,
                )
                for r in recs
            ),
        )


@dataclass(frozen=True, slots=True)
class RecordFlows:
    """What closing an interval takes from one accepted record: its energy and attributes.

    The aggregator keeps these as columns next to the envelope, so closing does not decode
    envelopes again; `of` derives them from a decoded record (what an auditor does).
    """

    token_id: str
    record_hash: bytes
    device_id: str
    interval_start: int
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    soc_permille: int | None
    tech: str
    zone: str

    @classmethod
    def of(cls, rec: IntervalRecord, record_hash: bytes) -> RecordFlows:
        """The flows of a decoded record."""
        e = rec.energy
        return cls(
            rec.token_id,
            record_hash,
            rec.device_id,
            rec.interval_start,
            rec.interval_s,
            e.generated_wh,
            e.imported_wh,
            e.exported_wh,
            e.charged_wh,
            e.discharged_wh,
            rec.soc_permille,
            rec.tech[0],
            rec.zone,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry: a leaf of the Merkle log.

    Fields unused by a kind keep their defaults (and are left out of the bytes).
    `site` is the owner of the burned lots (the seller for a trade); `counterparty` the buyer.
    """

    kind: EntryKind
    seq: int
    site: str
    interval_start: int
    burns: tuple[Burn, ...] = ()
    mints: tuple[Mint, ...] = ()
    postings: tuple[Posting, ...] = ()
    gen_wh: int = 0
    exit_wh: int = 0
    refs: tuple[RecordRef, ...] = ()
    convs: tuple[Conversion, ...] = ()
    measurement: Measurement | None = None
    counterparty: str = ""
    ref: str = ""  # trade id or other external reference
    requested_wh: int = 0  # what was asked (trade quantity, discharge) before capping
    flags: IntervalFlag = IntervalFlag.NONE
    cap_wh: int = 0  # INTERVAL_CLOSE: measured stored energy
    tstorage_wh: int = 0  # INTERVAL_CLOSE: checkpoint of the site's Tstorage
    set_aside_wh: int = 0  # INTERVAL_CLOSE: checkpoint of the site's set-aside
    market: bytes = b""  # ORDER_EVENT / TRADE_MATCH / CARBON: the event or trade, canonical CBOR

    @property
    def burned_wh(self) -> int:
        return sum(b.wh for b in self.burns)

    @property
    def minted_wh(self) -> int:
        return sum(m.wh for m in self.mints)

    def to_bytes(self) -> bytes:
        """Canonical CBOR (uint keys 0..23, defaults omitted, no floats)."""
        # _entry_to_map inserts every map's keys in ascending order, and for uint keys below
        # 24 that is the canonical order; ints, text, bytes and arrays encode alike in either
        # mode. So the plain encoder writes the canonical bytes, at a fifth of the cost of
        # cbor2's canonical mode (which sorts every map); tests compare the two.
        return cbor2.dumps(_entry_to_map(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Parse canonical entry bytes; raises LedgerRuleError on anything else."""
        try:
            obj = cbor2.loads(data)
        except Exception as exc:
            raise LedgerRuleError(f"entry bytes are not CBOR: {exc}") from None
        try:
            entry = _entry_from_map(obj)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise LedgerRuleError(f"malformed entry: {exc}") from None
        if entry.to_bytes() != data:
            raise LedgerRuleError("entry bytes are not canonical")
        return entry


# --------------------------------------------------------------------------------------------
# Serialisation


def _entry_to_map(e: Entry) -> dict[int, Any]:
    """The entry's map, every map's keys inserted in ascending order (see Entry.to_bytes)."""
    m: dict[int, Any] = {0: ENTRY_VERSION, 1: int(e.kind), 2: e.seq, 3: e.site, 4: e.interval_start}
    if e.burns:
        m[5] = [[b.lot_id, b.wh] for b in e.burns]
    if e.mints:
        m[6] = [
            [x.lot_id, x.site, int(x.pool), x.wh, int(x.flags), x.interval_start] for x in e.mints
        ]
    if e.postings:
        m[7] = [[p.account, p.debit, p.credit] for p in e.postings]
    if e.gen_wh:
        m[8] = e.gen_wh
    if e.exit_wh:
        m[9] = e.exit_wh
    if e.refs:
        m[10] = [
            [r.token_id, r.record_hash, r.device_id, r.generated_wh, r.tech, r.zone] for r in e.refs
        ]
    if e.convs:
        m[11] = [[c.key, c.in_, c.num, c.den, c.carry_in, c.carry_out, c.out] for c in e.convs]
    if e.measurement is not None:
        x = e.measurement
        mm: dict[int, Any] = {
            0: x.interval_s,
            1: [x.generated_wh, x.imported_wh, x.exported_wh, x.charged_wh, x.discharged_wh],
        }
        if x.soc_permille is not None:
            mm[2] = x.soc_permille
        mm[3] = x.capacity_wh
        mm[4] = x.soh_permille
        mm[5] = x.charge_ppm
        mm[6] = x.discharge_ppm
        mm[7] = x.self_discharge_ppm_per_h
        mm[8] = x.load_tolerance_wh
        m[12] = mm
    if e.counterparty:
        m[13] = e.counterparty
    if e.ref:
        m[14] = e.ref
    if e.requested_wh:
        m[15] = e.requested_wh
    if e.flags:
        m[16] = int(e.flags)
    if e.cap_wh:
        m[17] = e.cap_wh
    if e.tstorage_wh:
        m[18] = e.tstorage_wh
    if e.set_aside_wh:
        m[19] = e.set_aside_wh
    if e.market:
        m[20] = e.market
    return m


def _int(v: Any, signed: bool = False) -> int:
    if type(v) is not int or (v < 0 and not signed):
        raise TypeError(f"expected an unsigned integer, got {v!r}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise TypeError(f"expected bytes, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected text, got {v!r}")
    return v


def _entry_from_map(m: Any) -> Entry:
    if not isinstance(m, dict):
        raise TypeError("entry is not a map")
    unknown = [k for k in m if not (type(k) is int and 0 <= k <= 20)]
    if unknown:
        raise ValueError(f"unknown keys {unknown!r}")
    if m[0] != ENTRY_VERSION:
        raise ValueError(f"unsupported entry version {m[0]!r}")
    meas = None
    if 12 in m:
        mm = m[12]
        flows = [_int(v) for v in mm[1]]
        if len(flows) != 5 or set(mm) - set(range(9)):
            raise ValueError("bad measurement")
        meas = Measurement(
            interval_s=_int(mm[0]),
            generated_wh=flows[0],
            imported_wh=flows[1],
            exported_wh=flows[2],
            charged_wh=flows[3],
            discharged_wh=flows[4],
            soc_permille=_int(mm[2]) if 2 in mm else None,
            capacity_wh=_int(mm[3]),
            soh_permille=_int(mm[4]),
            charge_ppm=_int(mm[5]),
            discharge_ppm=_int(mm[6]),
            self_discharge_ppm_per_h=_int(mm[7]),
            load_tolerance_wh=_int(mm[8]),
        )
    return Entry(
        kind=EntryKind(_int(m[1])),
        seq=_int(m[2]),
        site=_str(m[3]),
        interval_start=_int(m[4]),
        burns=tuple(Burn(_str(a), _int(b)) for a, b in m.get(5, [])),
        mints=tuple(
            Mint(_str(a), _str(b), Pool(_int(c)), _int(d), LotFlag(_int(f)), _int(t))
            for a, b, c, d, f, t in m.get(6, [])
        ),
        postings=tuple(Posting(_str(a), _int(d), _int(c)) for a, d, c in m.get(7, [])),
        gen_wh=_int(m.get(8, 0)),
        exit_wh=_int(m.get(9, 0)),
        refs=tuple(
            RecordRef(_str(t), _bytes(h), _str(d), _int(g), _str(te), _str(z))
            for t, h, d, g, te, z in m.get(10, [])
        ),
        convs=tuple(
            Conversion(_str(k), _int(i), _int(n), _int(d), _int(ci), _int(co), _int(o))
            for k, i, n, d, ci, co, o in m.get(11, [])
        ),
        measurement=meas,
        counterparty=_str(m.get(13, "")),
        ref=_str(m.get(14, "")),
        requested_wh=_int(m.get(15, 0)),
        flags=IntervalFlag(_int(m.get(16, 0))),
        cap_wh=_int(m.get(17, 0)),
        tstorage_wh=_int(m.get(18, 0)),
        set_aside_wh=_int(m.get(19, 0)),
        market=_bytes(m.get(20, b"")),
    )
