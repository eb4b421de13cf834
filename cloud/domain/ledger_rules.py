"""Token ledger rules: pure, integer-only logic (no I/O, no database, no clock reads).

Owns: how the accepted records of a site's interval turn into ledger entries (mint Tgen, burn
self-consumption, exchange Tgen for Tstorage, decay, discharge, reconcile with the measured state
of charge), how trades, grid sales and grid purchases move tokens and payment credits, the
canonical bytes of an entry (a leaf of the Merkle log), and the replay that recomputes every
balance from the entries alone. See docs/tokens.md, "Ledger rules".

Model. Every entry is a set of *lot movements* plus a payment journal:

* a **lot** is a quantity of tokens (Wh) in one pool (Tgen, Tstorage or set-aside) owned by one
  site, with a deterministic id: the token id of the signed record for generation, else
  ``"{entry seq}/{n}"``. A lot is minted once and burned piecewise, front to back, never beyond
  what remains, so "no token spent twice" is a lookup;
* every entry balances in Wh: ``gen_wh + sum(burns) == sum(mints) + exit_wh``, where ``gen_wh``
  is metered generation entering the ledger (MINT_GEN only) and ``exit_wh`` is energy leaving it
  (consumed on site, sold to the grid, lost in storage or distribution);
* every rate is an integer fraction applied with a carried remainder (``Conversion``), so a long
  run of intervals converts exactly ``floor(total * num / den)``: nothing is lost to rounding;
* payments are ``Posting(account, debit, credit)`` in minor currency units; every entry's debits
  equal its credits.

``replay(entries)`` applies the same transition function the engine uses, so an independent
verifier recomputes the engine's state from the log, and refuses (``LedgerRuleError`` naming the
entry index) a double spend, a negative balance, an unbalanced entry, a wrong conversion, or
stored tokens above the measured battery energy.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

import cbor2

from protocol.record import IntervalRecord, token_id

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
        """Sum accepted records (with their envelope hashes) of one site and interval.

        With several SoC readings (several batteries behind one site) the lowest is used: the
        ledger never assumes more stored energy than the most pessimistic reading.
        """
        recs = sorted(records, key=lambda rh: rh[0].device_id)
        if not recs:
            raise ValueError("no records")
        start, length = recs[0][0].interval_start, recs[0][0].interval_s
        if any(r.interval_start != start or r.interval_s != length for r, _ in recs):
            raise ValueError("records belong to different intervals")
        socs = [r.soc_permille for r, _ in recs if r.soc_permille is not None]
        return cls(
            interval_start=start,
            interval_s=length,
            generated_wh=sum(r.energy.generated_wh for r, _ in recs),
            imported_wh=sum(r.energy.imported_wh for r, _ in recs),
            exported_wh=sum(r.energy.exported_wh for r, _ in recs),
            charged_wh=sum(r.energy.charged_wh for r, _ in recs),
            discharged_wh=sum(r.energy.discharged_wh for r, _ in recs),
            soc_permille=min(socs) if socs else None,
            records=tuple(
                RecordRef(
                    token_id=r.token_id,
                    record_hash=h,
                    device_id=r.device_id,
                    generated_wh=r.energy.generated_wh,
                    tech=r.tech[0],
                    zone=r.zone,
                )
                for r, h in recs
            ),
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

    @property
    def burned_wh(self) -> int:
        return sum(b.wh for b in self.burns)

    @property
    def minted_wh(self) -> int:
        return sum(m.wh for m in self.mints)

    def to_bytes(self) -> bytes:
        """Canonical CBOR (uint keys 0..23, defaults omitted, no floats)."""
        return cbor2.dumps(_entry_to_map(self), canonical=True)

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
            3: x.capacity_wh,
            4: x.soh_permille,
            5: x.charge_ppm,
            6: x.discharge_ppm,
            7: x.self_discharge_ppm_per_h,
            8: x.load_tolerance_wh,
        }
        if x.soc_permille is not None:
            mm[2] = x.soc_permille
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
    unknown = [k for k in m if not (type(k) is int and 0 <= k <= 19)]
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
    )


# --------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True, slots=True)
class Lot:
    """A minted lot as created (its remaining Wh live in LedgerState.remaining)."""

    lot_id: str
    site: str
    pool: Pool
    wh: int
    flags: LotFlag
    interval_start: int
    order: int  # mint order, breaks FIFO ties deterministically
    origin_kind: EntryKind


@dataclass(slots=True)
class _IntervalContext:
    interval_start: int
    measurement: Measurement
    gen_lots: tuple[str, ...]
    seen: set[EntryKind] = field(default_factory=set)
    self_burned: int = 0
    charge_burned: int = 0
    discharged_load: int = 0
    discharged_grid: int = 0


@dataclass(slots=True)
class LedgerState:
    """Everything the entries imply: lots, balances, carried remainders, open intervals.

    Build it only by applying entries (``apply``, ``replay`` or the engine).
    """

    lots: dict[str, Lot] = field(default_factory=dict)  # every lot ever minted
    remaining: dict[str, int] = field(default_factory=dict)  # live lots only
    fifo: dict[tuple[str, Pool], list[tuple[int, int, str]]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)  # credit - debit, minor units
    carries: dict[str, int] = field(default_factory=dict)
    contexts: dict[str, _IntervalContext] = field(default_factory=dict)
    closed: set[tuple[str, int]] = field(default_factory=set)  # (site, interval) closed
    gen_wh: int = 0
    exit_wh: int = 0
    next_seq: int = 0

    # queries -----------------------------------------------------------------------------

    def lots_of(self, site: str, pool: Pool) -> list[tuple[Lot, int]]:
        """Live lots of a site and pool, FIFO order, with their remaining Wh."""
        return [
            (self.lots[lid], self.remaining[lid]) for _, _, lid in self.fifo.get((site, pool), [])
        ]

    def pool_wh(self, site: str, pool: Pool) -> int:
        return sum(w for _, w in self.lots_of(site, pool))

    def tgen_wh(self, site: str) -> int:
        return self.pool_wh(site, Pool.TGEN)

    def tradable_wh(self, site: str) -> int:
        return sum(w for lot, w in self.lots_of(site, Pool.TGEN) if lot.flags & LotFlag.TRADABLE)

    def tstorage_wh(self, site: str) -> int:
        return self.pool_wh(site, Pool.TSTORAGE)

    def set_aside_wh(self, site: str) -> int:
        return self.pool_wh(site, Pool.SET_ASIDE)

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def held_wh(self) -> int:
        return sum(self.remaining.values())

    def sites(self) -> list[str]:
        return sorted({s for s, _ in self.fifo} | set(self.contexts))

    def snapshot(self) -> dict[str, Any]:
        """A plain, comparable view (for tests and the verifier's report)."""
        return {
            "lots": {k: (v, self.remaining.get(k, 0)) for k, v in sorted(self.lots.items())},
            "balances": {k: v for k, v in sorted(self.balances.items()) if v},
            "carries": {k: v for k, v in sorted(self.carries.items()) if v},
            "open": sorted(self.contexts),
            "gen_wh": self.gen_wh,
            "exit_wh": self.exit_wh,
            "next_seq": self.next_seq,
        }


def apply(state: LedgerState, entry: Entry) -> LedgerState:
    """Pure transition: a new state with `entry` applied (raises LedgerRuleError)."""
    new = copy.deepcopy(state)
    _apply_in_place(new, entry, entry.seq)
    return new


def replay(entries: Iterable[Entry]) -> LedgerState:
    """Recompute the ledger state from the entries alone, checking every rule."""
    state = LedgerState()
    for i, e in enumerate(entries):
        _apply_in_place(state, e, i)
    return state


def _fail(index: int, message: str) -> LedgerRuleError:
    return LedgerRuleError(message, index)


def _apply_in_place(st: LedgerState, e: Entry, index: int) -> None:
    """Check `e` completely against `st`, then mutate `st`. Nothing changes on a refusal."""
    if e.seq != st.next_seq:
        raise _fail(index, f"seq {e.seq} is not the next sequence number {st.next_seq}")
    if not e.site:
        raise _fail(index, "entry has no site")
    for name, v in (
        ("gen_wh", e.gen_wh),
        ("exit_wh", e.exit_wh),
        ("interval_start", e.interval_start),
    ):
        if v < 0:
            raise _fail(index, f"{name} is negative")

    # --- energy: burns ---------------------------------------------------------------------
    take: dict[str, int] = {}
    for b in e.burns:
        if b.wh <= 0:
            raise _fail(index, f"burn of {b.wh} Wh from lot {b.lot_id}")
        take[b.lot_id] = take.get(b.lot_id, 0) + b.wh
    for lid, wh in take.items():
        if lid not in st.lots:
            raise _fail(index, f"burn names unknown lot {lid}")
        left = st.remaining.get(lid, 0)
        if wh > left:
            raise _fail(index, f"double spend: lot {lid} has {left} Wh left, entry burns {wh} Wh")
        if st.lots[lid].site != e.site:
            raise _fail(index, f"lot {lid} belongs to {st.lots[lid].site}, not {e.site}")

    # --- energy: mints ---------------------------------------------------------------------
    seen_ids: set[str] = set()
    for n, x in enumerate(e.mints):
        if x.wh <= 0:
            raise _fail(index, f"mint of {x.wh} Wh into lot {x.lot_id}")
        if x.lot_id in st.lots or x.lot_id in seen_ids:
            raise _fail(index, f"lot {x.lot_id} is minted twice")
        seen_ids.add(x.lot_id)
        if e.kind is not EntryKind.MINT_GEN and x.lot_id != f"{e.seq}/{n}":
            raise _fail(index, f"lot id {x.lot_id} is not derived as {e.seq}/{n}")
        if not x.site:
            raise _fail(index, "mint without an owner")

    if e.gen_wh + e.burned_wh != e.minted_wh + e.exit_wh:
        raise _fail(
            index,
            f"unbalanced energy: gen {e.gen_wh} + burned {e.burned_wh} != minted "
            f"{e.minted_wh} + exit {e.exit_wh}",
        )

    # --- payments ---------------------------------------------------------------------------
    debit = sum(p.debit for p in e.postings)
    credit = sum(p.credit for p in e.postings)
    if any(p.debit < 0 or p.credit < 0 for p in e.postings):
        raise _fail(index, "negative posting")
    if debit != credit:
        raise _fail(index, f"unbalanced journal: debits {debit} != credits {credit}")
    delta: dict[str, int] = {}
    for p in e.postings:
        delta[p.account] = delta.get(p.account, 0) + p.credit - p.debit
    for acct, d in delta.items():
        if acct != GRID_ACCOUNT and st.balances.get(acct, 0) + d < 0:
            raise _fail(
                index,
                f"negative balance: account {acct} would hold {st.balances.get(acct, 0) + d}",
            )

    # --- conversions ------------------------------------------------------------------------
    carries: dict[str, int] = {}
    for c in e.convs:
        if c.den <= 0 or c.num < 0 or c.in_ < 0 or not 0 <= c.carry_out < c.den:
            raise _fail(index, f"conversion {c.key} has bad terms")
        expected_carry = carries.get(c.key, st.carries.get(c.key, 0))
        if c.carry_in != expected_carry:
            raise _fail(
                index, f"conversion {c.key} starts from carry {c.carry_in}, not {expected_carry}"
            )
        if c.out * c.den + c.carry_out != c.in_ * c.num + c.carry_in:
            raise _fail(index, f"conversion {c.key} does not add up")
        carries[c.key] = c.carry_out

    # --- kind rules -------------------------------------------------------------------------
    ctx = _check_kind(st, e, index)

    # --- commit -----------------------------------------------------------------------------
    for lid, wh in take.items():
        left = st.remaining[lid] - wh
        lot = st.lots[lid]
        if left:
            st.remaining[lid] = left
        else:
            del st.remaining[lid]
            st.fifo[(lot.site, lot.pool)].remove((lot.interval_start, lot.order, lid))
    for x in e.mints:
        order = len(st.lots)
        st.lots[x.lot_id] = Lot(
            x.lot_id, x.site, x.pool, x.wh, x.flags, x.interval_start, order, e.kind
        )
        st.remaining[x.lot_id] = x.wh
        bisect.insort(st.fifo.setdefault((x.site, x.pool), []), (x.interval_start, order, x.lot_id))
    for acct, d in delta.items():
        st.balances[acct] = st.balances.get(acct, 0) + d
    st.carries.update(carries)
    st.gen_wh += e.gen_wh
    st.exit_wh += e.exit_wh
    st.next_seq += 1
    _commit_kind(st, e, ctx)


def _check_kind(st: LedgerState, e: Entry, index: int) -> _IntervalContext | None:
    """Kind-specific rules; returns the context the entry acts in (if any)."""
    k = e.kind
    site = e.site

    def burns_from(pool: Pool, only: Sequence[str] | None = None, tradable: bool = False) -> None:
        for b in e.burns:
            lot = st.lots[b.lot_id]
            if lot.pool is not pool:
                raise _fail(index, f"{k.name} burns lot {b.lot_id} of pool {lot.pool.name}")
            if only is not None and b.lot_id not in only:
                raise _fail(index, f"{k.name} burns lot {b.lot_id} outside this interval's mint")
            if tradable and not lot.flags & LotFlag.TRADABLE:
                raise _fail(index, f"lot {b.lot_id} is not tradable")

    def one_conv(key: str, num: int | None = None, den: int | None = None) -> Conversion:
        cs = [c for c in e.convs if c.key == key]
        if len(cs) != 1:
            raise _fail(index, f"{k.name} needs exactly one conversion {key}")
        c = cs[0]
        if (num is not None and c.num != num) or (den is not None and c.den != den):
            raise _fail(index, f"conversion {key} uses rate {c.num}/{c.den}, not {num}/{den}")
        return c

    def postings_are(expected: dict[str, tuple[int, int]]) -> None:
        got: dict[str, tuple[int, int]] = {}
        for p in e.postings:
            d, c = got.get(p.account, (0, 0))
            got[p.account] = (d + p.debit, c + p.credit)
        want = {a: v for a, v in expected.items() if v != (0, 0)}
        if {a: v for a, v in got.items() if v != (0, 0)} != want:
            raise _fail(index, f"{k.name} postings {got} differ from the rule {want}")

    if k is EntryKind.MINT_GEN:
        m = e.measurement
        if m is None:
            raise _fail(index, "MINT_GEN without its measurement")
        if site in st.contexts:
            raise _fail(index, f"site {site} already has an open interval")
        if (site, e.interval_start) in st.closed:
            raise _fail(index, f"interval {e.interval_start} of {site} is already closed")
        if e.burns or e.postings or e.exit_wh:
            raise _fail(index, "MINT_GEN only mints")
        if e.gen_wh != m.generated_wh or sum(r.generated_wh for r in e.refs) != m.generated_wh:
            raise _fail(index, "minted generation differs from the records")
        if not 0 < m.interval_s <= SECONDS_PER_HOUR:
            raise _fail(index, "bad interval length")
        if (
            (m.soc_permille is not None and m.soc_permille > PERMILLE)
            or m.soh_permille > PERMILLE
            or not 0 < m.charge_ppm <= PPM
            or not 0 < m.discharge_ppm <= PPM
            or m.self_discharge_ppm_per_h > PPM
        ):
            raise _fail(index, "battery parameters out of range")
        producing = [r for r in e.refs if r.generated_wh > 0]
        if len(producing) != len(e.mints):
            raise _fail(index, "one lot per producing record")
        for r, x in zip(producing, e.mints, strict=True):
            if r.token_id != token_id(r.device_id, e.interval_start):
                raise _fail(index, f"token id {r.token_id} is not the record's")
            if (
                x.lot_id != r.token_id
                or x.wh != r.generated_wh
                or x.pool is not Pool.TGEN
                or x.flags != LotFlag.TRADABLE
                or x.site != site
                or x.interval_start != e.interval_start
            ):
                raise _fail(index, f"lot {x.lot_id} does not match record {r.token_id}")
        return None

    if k in INTERVAL_KINDS:
        ctx = st.contexts.get(site)
        if ctx is None or ctx.interval_start != e.interval_start:
            raise _fail(index, f"{k.name} outside an open interval of {site}")
        if k in ctx.seen:
            raise _fail(index, f"{k.name} appears twice in interval {e.interval_start}")
        m = ctx.measurement
        a = m.allocation
        if k is EntryKind.BURN_SELF_CONSUMPTION:
            burns_from(Pool.TGEN, ctx.gen_lots)
            if e.mints or e.postings or e.convs or e.exit_wh != a.gen_to_load:
                raise _fail(index, f"self-consumption must burn exactly {a.gen_to_load} Wh")
        elif k is EntryKind.STORAGE_CHARGE:
            burns_from(Pool.TGEN, ctx.gen_lots)
            c = one_conv(f"charge:{site}", m.charge_ppm, PPM)
            if e.burned_wh != a.gen_to_battery or c.in_ != e.burned_wh:
                raise _fail(index, f"charge must burn exactly {a.gen_to_battery} Wh of Tgen")
            _expect_single_mint(e, index, Pool.TSTORAGE, c.out, LotFlag.NONE)
        elif k is EntryKind.STORAGE_DECAY:
            burns_from(Pool.TSTORAGE)
            c = one_conv(f"decay:{site}", m.self_discharge_ppm_per_h, SECONDS_PER_HOUR * PPM)
            if ctx.seen:
                raise _fail(index, "decay applies to the opening balance, before other movements")
            if c.in_ != st.tstorage_wh(site) * m.interval_s or c.out != e.burned_wh:
                raise _fail(index, "decay is not rate x balance x time")
            if e.mints or e.exit_wh != e.burned_wh:
                raise _fail(index, "decay burns without minting")
        elif k in (EntryKind.STORAGE_DISCHARGE_LOAD, EntryKind.STORAGE_DISCHARGE_GRID):
            burns_from(Pool.TSTORAGE)
            c = one_conv(f"discharge:{site}", PPM, m.discharge_ppm)
            if c.out != e.burned_wh:
                raise _fail(index, "discharge burns what the conversion says")
            limit = (
                a.battery_to_load if k is EntryKind.STORAGE_DISCHARGE_LOAD else a.battery_to_grid
            )
            if c.in_ > limit or e.requested_wh != limit:
                raise _fail(index, f"discharge of {c.in_} Wh exceeds the measured {limit} Wh")
            if k is EntryKind.STORAGE_DISCHARGE_GRID:
                _expect_single_mint(
                    e, index, Pool.TGEN, c.in_, LotFlag.TRADABLE | LotFlag.STORAGE_SOURCED
                )
            elif e.mints:
                raise _fail(index, "discharge to load mints nothing")
        elif k is EntryKind.STORAGE_SET_ASIDE:
            burns_from(Pool.TSTORAGE)
            _expect_single_mint(e, index, Pool.SET_ASIDE, e.burned_wh, LotFlag.NONE)
        elif k is EntryKind.STORAGE_SET_ASIDE_RETURN:
            burns_from(Pool.SET_ASIDE)
            if m.soc_permille is None:
                raise _fail(index, "set-aside is only returned on a SoC reading")
            _expect_single_mint(e, index, Pool.TSTORAGE, e.burned_wh, LotFlag.NONE)
        elif k is EntryKind.STORAGE_SET_ASIDE_BURN:
            burns_from(Pool.SET_ASIDE)
            if m.soc_permille is None:
                raise _fail(index, "set-aside is only burned on a SoC reading")
            if e.mints:
                raise _fail(index, "set-aside burn mints nothing")
        elif k is EntryKind.INTERVAL_CLOSE:
            if e.burns or e.mints or e.postings or e.convs:
                raise _fail(index, "INTERVAL_CLOSE moves nothing")
            if ctx.self_burned != a.gen_to_load or ctx.charge_burned != a.gen_to_battery:
                raise _fail(index, "interval closed before its generation was allocated")
            if e.cap_wh != m.cap_wh or e.flags != m.flags:
                raise _fail(index, "INTERVAL_CLOSE does not state the measured cap and flags")
            held = st.tstorage_wh(site)
            if held > m.cap_wh:
                raise _fail(
                    index,
                    f"storage above the measured cap: Tstorage {held} Wh > {m.cap_wh} Wh",
                )
            if e.tstorage_wh != held or e.set_aside_wh != st.set_aside_wh(site):
                raise _fail(index, "INTERVAL_CLOSE checkpoint differs from the balances")
        if e.postings:
            raise _fail(index, f"{k.name} moves no money")
        return ctx

    if k is EntryKind.GRID_SALE:
        burns_from(Pool.TGEN, tradable=True)
        if site in st.contexts:
            raise _fail(index, "grid sale while the site's interval is open")
        c = one_conv(f"feed_in:{site}", den=WH_PER_KWH)
        if e.mints or e.exit_wh != e.burned_wh or c.in_ != e.burned_wh:
            raise _fail(index, "grid sale burns the sold Tgen without minting")
        postings_are({GRID_ACCOUNT: (c.out, 0), site_account(site): (0, c.out)})
        return None

    if k is EntryKind.P2P_TRADE:
        buyer = e.counterparty
        if not buyer or buyer == site:
            raise _fail(index, "a trade needs a buyer other than the seller")
        if site in st.contexts:
            raise _fail(index, "trade while the seller's interval is open")
        burns_from(Pool.TGEN, tradable=True)
        q = e.burned_wh
        loss = one_conv(f"loss:{site}", den=PPM)
        value = one_conv(f"value:{buyer}", den=WH_PER_KWH)
        fee = one_conv(f"platform:{buyer}", den=WH_PER_KWH)
        dso = one_conv(f"dso:{buyer}", den=WH_PER_KWH)
        if any(c.in_ != q for c in (loss, value, fee, dso)) or loss.out > q:
            raise _fail(index, "trade conversions must apply to the burned quantity")
        if q > e.requested_wh:
            raise _fail(index, "trade burns more than was traded")
        if loss.out != e.exit_wh:
            raise _fail(index, "trade losses must leave the ledger")
        if q - loss.out:
            if len(e.mints) != 1 or e.mints[0].site != buyer:
                raise _fail(index, "trade mints one lot for the buyer")
            _expect_single_mint(e, index, Pool.TGEN, q - loss.out, LotFlag.RECEIVED)
        elif e.mints:
            raise _fail(index, "nothing left to mint after losses")
        postings_are(
            {
                site_account(buyer): (value.out + fee.out + dso.out, 0),
                site_account(site): (0, value.out),
                PLATFORM_FEE_ACCOUNT: (0, fee.out),
                DSO_FEE_ACCOUNT: (0, dso.out),
            }
        )
        return None

    if k is EntryKind.GRID_PURCHASE:
        c = one_conv(f"retail:{site}", den=WH_PER_KWH)
        if e.burns or e.mints or e.gen_wh or e.exit_wh or c.in_ != e.requested_wh:
            raise _fail(index, "grid purchase moves payment only")
        postings_are({site_account(site): (c.out, 0), GRID_ACCOUNT: (0, c.out)})
        return None

    if k is EntryKind.DEPOSIT:
        if e.burns or e.mints or e.convs or e.gen_wh or e.exit_wh:
            raise _fail(index, "deposit moves payment only")
        amount = sum(p.credit for p in e.postings)
        postings_are({GRID_ACCOUNT: (amount, 0), site_account(site): (0, amount)})
        return None

    raise _fail(index, f"unknown entry kind {k!r}")


def _expect_single_mint(e: Entry, index: int, pool: Pool, wh: int, flags: LotFlag) -> None:
    if wh == 0:
        if e.mints:
            raise _fail(index, f"{e.kind.name} mints nothing here")
        return
    if len(e.mints) != 1:
        raise _fail(index, f"{e.kind.name} mints exactly one lot")
    x = e.mints[0]
    owner = e.counterparty if e.kind is EntryKind.P2P_TRADE else e.site
    if (
        x.pool is not pool
        or x.wh != wh
        or x.flags != flags
        or x.site != owner
        or x.interval_start != e.interval_start
    ):
        raise _fail(index, f"{e.kind.name} must mint {wh} Wh of {pool.name} for {owner}")


def _commit_kind(st: LedgerState, e: Entry, ctx: _IntervalContext | None) -> None:
    k = e.kind
    if k is EntryKind.MINT_GEN:
        assert e.measurement is not None
        st.contexts[e.site] = _IntervalContext(
            e.interval_start, e.measurement, tuple(x.lot_id for x in e.mints)
        )
        return
    if ctx is None:
        return
    ctx.seen.add(k)
    if k is EntryKind.BURN_SELF_CONSUMPTION:
        ctx.self_burned += e.burned_wh
    elif k is EntryKind.STORAGE_CHARGE:
        ctx.charge_burned += e.burned_wh
    elif k is EntryKind.STORAGE_DISCHARGE_LOAD:
        ctx.discharged_load += e.convs[0].in_
    elif k is EntryKind.STORAGE_DISCHARGE_GRID:
        ctx.discharged_grid += e.convs[0].in_
    elif k is EntryKind.INTERVAL_CLOSE:
        del st.contexts[e.site]
        st.closed.add((e.site, e.interval_start))


# --------------------------------------------------------------------------------------------
# Engine


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Tolerances of the ledger rules."""

    load_tolerance_wh: int = 10  # |negative derived load| accepted as meter error


@dataclass(frozen=True, slots=True)
class TradeTerms:
    """Price and charges of a P2P trade, integer minor units per kWh and ppm."""

    price_minor_per_kwh: int
    platform_fee_minor_per_kwh: int = 0
    dso_fee_minor_per_kwh: int = 0
    loss_ppm: int = 0  # distribution losses borne by the buyer's token (not the payment)

    def __post_init__(self) -> None:
        if (
            min(
                self.price_minor_per_kwh,
                self.platform_fee_minor_per_kwh,
                self.dso_fee_minor_per_kwh,
                self.loss_ppm,
            )
            < 0
            or self.loss_ppm > PPM
        ):
            raise ValueError("trade terms must be non-negative, losses at most 1e6 ppm")


@dataclass(frozen=True, slots=True)
class CloseResult:
    """Entries of one closed interval and what was found about it."""

    entries: tuple[Entry, ...]
    flags: IntervalFlag
    allocation: Allocation


class LedgerEngine:
    """Decides entries; every state change goes through the same `apply` the verifier replays.

    Not thread-safe; one engine per ledger log.
    """

    def __init__(self, config: LedgerConfig | None = None) -> None:
        self.config = config or LedgerConfig()
        self.state = LedgerState()
        self.entries: list[Entry] = []

    # internals ---------------------------------------------------------------------------

    def _emit(self, **kw: Any) -> Entry:
        e = Entry(seq=self.state.next_seq, **kw)
        _apply_in_place(self.state, e, e.seq)
        self.entries.append(e)
        return e

    def _fifo_burns(
        self,
        site: str,
        pool: Pool,
        wh: int,
        *,
        only: Sequence[str] | None = None,
        tradable: bool = False,
        before: int | None = None,
        window: tuple[int, int] | None = None,
    ) -> tuple[Burn, ...]:
        out: list[Burn] = []
        need = wh
        for lot, left in self.state.lots_of(site, pool):
            if need == 0:
                break
            if only is not None and lot.lot_id not in only:
                continue
            if tradable and not lot.flags & LotFlag.TRADABLE:
                continue
            if before is not None and lot.interval_start >= before:
                continue
            if window is not None and not window[0] <= lot.interval_start < window[1]:
                continue
            n = min(need, left)
            out.append(Burn(lot.lot_id, n))
            need -= n
        if need:
            raise LedgerRuleError(f"{site} lacks {need} Wh of {pool.name}")
        return tuple(out)

    def _carry(self, key: str) -> int:
        return self.state.carries.get(key, 0)

    # intervals ---------------------------------------------------------------------------

    def close_interval(
        self, site: str, flows: IntervalFlows, battery: BatteryParams | None = None
    ) -> CloseResult:
        """Mint, allocate, store, decay, discharge and reconcile one site's interval."""
        b = battery or NO_BATTERY
        t = flows.interval_start
        m = Measurement(
            interval_s=flows.interval_s,
            generated_wh=flows.generated_wh,
            imported_wh=flows.imported_wh,
            exported_wh=flows.exported_wh,
            charged_wh=flows.charged_wh,
            discharged_wh=flows.discharged_wh,
            soc_permille=flows.soc_permille,
            capacity_wh=b.usable_capacity_wh,
            soh_permille=b.soh_permille,
            charge_ppm=b.charge_ppm,
            discharge_ppm=b.discharge_ppm,
            self_discharge_ppm_per_h=b.self_discharge_ppm_per_h,
            load_tolerance_wh=self.config.load_tolerance_wh,
        )
        a = m.allocation
        start = len(self.entries)
        mint = self._emit(
            kind=EntryKind.MINT_GEN,
            site=site,
            interval_start=t,
            mints=tuple(
                Mint(r.token_id, site, Pool.TGEN, r.generated_wh, LotFlag.TRADABLE, t)
                for r in flows.records
                if r.generated_wh > 0
            ),
            gen_wh=flows.generated_wh,
            refs=flows.records,
            measurement=m,
        )
        gen_lots = tuple(x.lot_id for x in mint.mints)
        seq = self.state.next_seq

        # 1. decay of the opening Tstorage balance
        opening = self.state.tstorage_wh(site)
        if m.self_discharge_ppm_per_h and opening:
            key = f"decay:{site}"
            c = convert(
                key,
                opening * m.interval_s,
                m.self_discharge_ppm_per_h,
                SECONDS_PER_HOUR * PPM,
                self._carry(key),
            )
            if c.out or c.carry_out != c.carry_in:
                self._emit(
                    kind=EntryKind.STORAGE_DECAY,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.TSTORAGE, c.out) if c.out else (),
                    exit_wh=c.out,
                    convs=(c,),
                )
        # 2. generation to load
        if a.gen_to_load:
            self._emit(
                kind=EntryKind.BURN_SELF_CONSUMPTION,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TGEN, a.gen_to_load, only=gen_lots),
                exit_wh=a.gen_to_load,
            )
        # 3. generation to battery: Tgen -> Tstorage at the charge efficiency
        if a.gen_to_battery:
            key = f"charge:{site}"
            c = convert(key, a.gen_to_battery, m.charge_ppm, PPM, self._carry(key))
            seq = self.state.next_seq
            self._emit(
                kind=EntryKind.STORAGE_CHARGE,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TGEN, a.gen_to_battery, only=gen_lots),
                mints=(Mint(f"{seq}/0", site, Pool.TSTORAGE, c.out, LotFlag.NONE, t),)
                if c.out
                else (),
                exit_wh=a.gen_to_battery - c.out,
                convs=(c,),
            )
        # 4. battery to load, then to grid (green first, capped by Tstorage)
        for kind, wanted in (
            (EntryKind.STORAGE_DISCHARGE_LOAD, a.battery_to_load),
            (EntryKind.STORAGE_DISCHARGE_GRID, a.battery_to_grid),
        ):
            if not wanted:
                continue
            key = f"discharge:{site}"
            carry = self._carry(key)
            balance = self.state.tstorage_wh(site)
            # largest x with (x * PPM + carry) // discharge_ppm <= balance
            most = ((balance + 1) * m.discharge_ppm - 1 - carry) // PPM
            green = max(0, min(wanted, most))
            if not green:
                continue
            c = convert(key, green, PPM, m.discharge_ppm, carry)
            seq = self.state.next_seq
            to_grid = kind is EntryKind.STORAGE_DISCHARGE_GRID
            self._emit(
                kind=kind,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TSTORAGE, c.out) if c.out else (),
                mints=(
                    Mint(
                        f"{seq}/0",
                        site,
                        Pool.TGEN,
                        green,
                        LotFlag.TRADABLE | LotFlag.STORAGE_SOURCED,
                        t,
                    ),
                )
                if to_grid
                else (),
                exit_wh=c.out - green if to_grid else c.out,
                convs=(c,),
                requested_wh=wanted,
            )
        # 5. reconcile with the measured stored energy
        self._reconcile(site, t, m)
        self._emit(
            kind=EntryKind.INTERVAL_CLOSE,
            site=site,
            interval_start=t,
            flags=m.flags,
            cap_wh=m.cap_wh,
            tstorage_wh=self.state.tstorage_wh(site),
            set_aside_wh=self.state.set_aside_wh(site),
        )
        return CloseResult(tuple(self.entries[start:]), m.flags, a)

    def _reconcile(self, site: str, t: int, m: Measurement) -> None:
        held = self.state.tstorage_wh(site)
        aside = self.state.set_aside_wh(site)
        cap = m.cap_wh
        if m.soc_permille is not None and aside:
            # a later reading decides the earlier set-aside: return what fits, burn the rest
            back = min(aside, max(cap - held, 0))
            if back:
                seq = self.state.next_seq
                self._emit(
                    kind=EntryKind.STORAGE_SET_ASIDE_RETURN,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.SET_ASIDE, back),
                    mints=(Mint(f"{seq}/0", site, Pool.TSTORAGE, back, LotFlag.NONE, t),),
                )
            if aside - back:
                self._emit(
                    kind=EntryKind.STORAGE_SET_ASIDE_BURN,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.SET_ASIDE, aside - back),
                    exit_wh=aside - back,
                )
            held += back
        if held > cap:
            seq = self.state.next_seq
            self._emit(
                kind=EntryKind.STORAGE_SET_ASIDE,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TSTORAGE, held - cap),
                mints=(Mint(f"{seq}/0", site, Pool.SET_ASIDE, held - cap, LotFlag.NONE, t),),
            )

    # market and grid ---------------------------------------------------------------------

    def settle_trade(
        self,
        seller: str,
        buyer: str,
        delivery: tuple[int, int],
        wh: int,
        terms: TradeTerms,
        trade_id: str = "",
    ) -> Entry | None:
        """Settle min(traded, delivered): burn the seller's tradable Tgen of the delivery window
        [start, end) FIFO, mint the buyer `q - losses`, move price and fees. One atomic entry;
        None when nothing was delivered. Raises LedgerRuleError if the buyer cannot pay."""
        if wh <= 0 or seller == buyer:
            raise LedgerRuleError("a trade needs a positive quantity and two parties")
        available = sum(
            left
            for lot, left in self.state.lots_of(seller, Pool.TGEN)
            if lot.flags & LotFlag.TRADABLE and delivery[0] <= lot.interval_start < delivery[1]
        )
        q = min(wh, available)
        if q == 0:
            return None
        burns = self._fifo_burns(seller, Pool.TGEN, q, tradable=True, window=delivery)
        loss = convert(f"loss:{seller}", q, terms.loss_ppm, PPM, self._carry(f"loss:{seller}"))
        convs = [loss]
        outs = []
        for name, rate in (
            ("value", terms.price_minor_per_kwh),
            ("platform", terms.platform_fee_minor_per_kwh),
            ("dso", terms.dso_fee_minor_per_kwh),
        ):
            key = f"{name}:{buyer}"
            c = convert(key, q, rate, WH_PER_KWH, self._carry(key))
            convs.append(c)
            outs.append(c.out)
        value, fee, dso = outs
        seq = self.state.next_seq
        postings = [
            Posting(site_account(buyer), debit=value + fee + dso),
            Posting(site_account(seller), credit=value),
            Posting(PLATFORM_FEE_ACCOUNT, credit=fee),
            Posting(DSO_FEE_ACCOUNT, credit=dso),
        ]
        lot_t = self.state.lots[burns[0].lot_id].interval_start
        return self._emit(
            kind=EntryKind.P2P_TRADE,
            site=seller,
            interval_start=lot_t,
            burns=burns,
            mints=(Mint(f"{seq}/0", buyer, Pool.TGEN, q - loss.out, LotFlag.RECEIVED, lot_t),)
            if q - loss.out
            else (),
            postings=tuple(p for p in postings if p.debit or p.credit),
            exit_wh=loss.out,
            convs=tuple(convs),
            counterparty=buyer,
            ref=trade_id,
            requested_wh=wh,
        )

    def expire_unsold(self, before: int, feed_in_minor_per_kwh: int) -> list[Entry]:
        """Settlement deadline: tradable Tgen of intervals starting before `before` is sold to
        the grid (burned, paid at the feed-in tariff), one entry per site and interval."""
        out: list[Entry] = []
        groups: dict[tuple[str, int], int] = {}
        for (site, pool), items in sorted(self.state.fifo.items()):
            if pool is not Pool.TGEN:
                continue
            for t, _, lid in items:
                if t < before and self.state.lots[lid].flags & LotFlag.TRADABLE:
                    groups[(site, t)] = groups.get((site, t), 0) + self.state.remaining[lid]
        for (site, t), wh in sorted(groups.items()):
            key = f"feed_in:{site}"
            c = convert(key, wh, feed_in_minor_per_kwh, WH_PER_KWH, self._carry(key))
            out.append(
                self._emit(
                    kind=EntryKind.GRID_SALE,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.TGEN, wh, tradable=True, window=(t, t + 1)),
                    exit_wh=wh,
                    convs=(c,),
                    postings=tuple(
                        p
                        for p in (
                            Posting(GRID_ACCOUNT, debit=c.out),
                            Posting(site_account(site), credit=c.out),
                        )
                        if c.out
                    ),
                )
            )
        return out

    def grid_purchase(
        self, site: str, interval_start: int, wh: int, retail_minor_per_kwh: int
    ) -> Entry:
        """Energy bought from the grid: payment only (no green token)."""
        key = f"retail:{site}"
        c = convert(key, wh, retail_minor_per_kwh, WH_PER_KWH, self._carry(key))
        return self._emit(
            kind=EntryKind.GRID_PURCHASE,
            site=site,
            interval_start=interval_start,
            convs=(c,),
            requested_wh=wh,
            postings=tuple(
                p
                for p in (
                    Posting(site_account(site), debit=c.out),
                    Posting(GRID_ACCOUNT, credit=c.out),
                )
                if c.out
            ),
        )

    def deposit(self, site: str, at: int, amount_minor: int) -> Entry:
        """Credits paid in by a homeowner, through the grid settlement account."""
        if amount_minor <= 0:
            raise LedgerRuleError("deposit must be positive")
        return self._emit(
            kind=EntryKind.DEPOSIT,
            site=site,
            interval_start=at,
            postings=(
                Posting(GRID_ACCOUNT, debit=amount_minor),
                Posting(site_account(site), credit=amount_minor),
            ),
        )


# --------------------------------------------------------------------------------------------
# Independent checks


def check_conservation(entries: Sequence[Entry]) -> list[str]:
    """Names of conservation violations (empty when the log is sound).

    Replays the log (any rule broken ends the check with that violation), then checks, from the
    entries alone: per site and interval, generation minted = burned + held + transferred;
    every lot's burns never exceed its mint; total generation = energy that left + energy held;
    payment balances sum to zero.
    """
    problems: list[str] = []
    try:
        state = replay(entries)
    except LedgerRuleError as exc:
        return [str(exc)]

    minted: dict[str, int] = {}
    origin: dict[str, tuple[str, int]] = {}
    per_interval: dict[tuple[str, int], dict[str, int]] = {}
    for e in entries:
        for x in e.mints:
            minted[x.lot_id] = x.wh
            if e.kind is EntryKind.MINT_GEN:
                origin[x.lot_id] = (x.site, x.interval_start)
                row = per_interval.setdefault((x.site, x.interval_start), {})
                row["minted"] = row.get("minted", 0) + x.wh
    spent: dict[str, int] = {}
    for i, e in enumerate(entries):
        for b in e.burns:
            spent[b.lot_id] = spent.get(b.lot_id, 0) + b.wh
            if spent[b.lot_id] > minted.get(b.lot_id, 0):
                problems.append(f"entry {i}: lot {b.lot_id} spent beyond its mint")
            if b.lot_id in origin:
                row = per_interval[origin[b.lot_id]]
                if e.kind is EntryKind.P2P_TRADE:
                    bucket = "transferred"
                elif e.kind in (EntryKind.BURN_SELF_CONSUMPTION, EntryKind.GRID_SALE):
                    bucket = "burned"
                else:
                    bucket = "stored"
                row[bucket] = row.get(bucket, 0) + b.wh
    for lid, (site, t) in origin.items():
        row = per_interval[(site, t)]
        row["held"] = row.get("held", 0) + state.remaining.get(lid, 0)
    for (site, t), row in sorted(per_interval.items()):
        rest = sum(row.get(k, 0) for k in ("burned", "stored", "transferred", "held"))
        if row.get("minted", 0) != rest:
            problems.append(
                f"site {site} interval {t}: minted {row.get('minted', 0)} != burned + stored + "
                f"transferred + held {rest}"
            )
    gen = sum(e.gen_wh for e in entries)
    out = sum(e.exit_wh for e in entries)
    if gen != out + state.held_wh():
        problems.append(f"generation {gen} != exited {out} + held {state.held_wh()}")
    if sum(state.balances.values()) != 0:
        problems.append("payment balances do not sum to zero")
    for acct, bal in state.balances.items():
        if bal < 0 and acct != GRID_ACCOUNT:
            problems.append(f"account {acct} is negative")
    return problems
