"""The state the entries imply, and the one transition function: `apply`/`replay` check each
entry completely against the state before changing it. The engine and the independent verifier
both go through `_apply_in_place`, so what the engine wrote is what replay accepts.

`EntryWriter` is the engine's base: every entry it emits is applied to its state at once."""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.record import token_id
from rules.ledger.entries import (
    DSO_FEE_ACCOUNT,
    EVENT_KINDS,
    GRID_ACCOUNT,
    INTERVAL_KINDS,
    PERMILLE,
    PLATFORM_FEE_ACCOUNT,
    PPM,
    SECONDS_PER_HOUR,
    WH_PER_KWH,
    Burn,
    Conversion,
    Entry,
    EntryKind,
    LedgerRuleError,
    LotFlag,
    Measurement,
    Pool,
    site_account,
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
    settled_trades: set[str] = field(default_factory=set)  # refs of settled P2P trades
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
    if (
        e.kind in EVENT_KINDS
        and not (e.burns or e.mints or e.postings or e.convs or e.refs)
        and not (e.gen_wh or e.exit_wh)
        and e.measurement is None
    ):
        # A market or shop leaf that moves nothing (every one the market and the shop write,
        # most of the log):
        # of the checks below only the sign of interval_start and the market bytes can fail,
        # and of the commit only the seq changes. Same outcome and the same refusals, without
        # the general path's cost. Anything else goes the general way and is refused there.
        if e.interval_start < 0:
            raise _fail(index, "interval_start is negative")
        if not e.market:
            raise _fail(index, f"{e.kind.name} without its market bytes")
        st.next_seq += 1
        return
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
    if k in EVENT_KINDS:  # first: the market logs many of these, and they move nothing
        if (
            e.burns
            or e.mints
            or e.postings
            or e.convs
            or e.refs
            or e.gen_wh
            or e.exit_wh
            or e.measurement is not None
        ):
            raise _fail(index, f"{k.name} moves nothing")
        if not e.market:
            raise _fail(index, f"{k.name} without its market bytes")
        return None
    if e.market:
        raise _fail(index, f"{k.name} carries market bytes")

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
        if e.ref and e.ref in st.settled_trades:
            raise _fail(index, f"trade {e.ref} is already settled")
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

    if k is EntryKind.FLEX_REWARD:
        c = one_conv(f"reward:{site}", den=WH_PER_KWH)
        if e.burns or e.mints or e.gen_wh or e.exit_wh or c.in_ != e.requested_wh or not e.ref:
            raise _fail(index, "a flexibility reward moves payment only, for its event's Wh")
        if c.in_ <= 0:
            raise _fail(index, "a flexibility reward needs delivered Wh")
        postings_are({GRID_ACCOUNT: (c.out, 0), site_account(site): (0, c.out)})
        return None

    if k is EntryKind.DEPOSIT:
        if e.burns or e.mints or e.convs or e.gen_wh or e.exit_wh:
            raise _fail(index, "deposit moves payment only")
        amount = sum(p.credit for p in e.postings)
        postings_are({GRID_ACCOUNT: (amount, 0), site_account(site): (0, amount)})
        return None

    if k is EntryKind.WITHDRAWAL:
        if e.burns or e.mints or e.convs or e.gen_wh or e.exit_wh or not e.ref:
            raise _fail(index, "a withdrawal moves payment only, for its redemption")
        amount = sum(p.debit for p in e.postings)
        if amount <= 0:
            raise _fail(index, "a withdrawal must be positive")
        postings_are({site_account(site): (amount, 0), GRID_ACCOUNT: (0, amount)})
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
    if k is EntryKind.P2P_TRADE and e.ref:
        st.settled_trades.add(e.ref)
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


class EntryWriter:
    """Holds a state and the entries that built it; every emitted entry is applied at once."""

    def __init__(self) -> None:
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
