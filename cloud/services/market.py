"""The order service of the VPP market: place, amend and cancel orders, close gates.

Owns: the pre-trade checks in order (idempotency, terms, site, self-trade, coverage), the
in-memory market (rules.market) and its consistency with the log. Every accepted order event
becomes an ORDER_EVENT leaf of the ledger's Merkle log, every trade it causes a TRADE_MATCH leaf,
and the order and trade rows are written in the same unit of work (LedgerService.append): an
order fill and its ledger entry commit together or not at all. If storage fails, the market is
rebuilt from the stored log, so it never runs ahead of what was stored.

At start the market is rebuilt by replaying the logged order events through the same matching
rules the verifier runs, and the trades it gets must equal the logged TRADE_MATCH leaves.
Settlement against delivery is cloud.services.settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.domain.forecast import forecast_wh
from cloud.domain.market_checks import (
    MarketConfig,
    MarketReason,
    MarketRefusal,
    bid_cost_minor,
    check_terms,
    offer_allowance,
)
from cloud.domain.policies import TradingPolicy
from cloud.services.ledger import LeafProof, LedgerService, StagedAppend
from cloud.storage.market_store import (
    EventRow,
    IntervalSummary,
    MarketStore,
    OrderRow,
    OrderState,
    TradeRow,
)
from rules.ledger import MARKET_SITE, Entry, EntryKind, LedgerEngine, LotFlag, Pool, site_account
from rules.market import (
    Amend,
    Book,
    Cancel,
    CancelReason,
    CloseGate,
    Event,
    Market,
    MarketRuleError,
    Order,
    OrderStatus,
    Place,
    Side,
    TimeInForce,
    Trade,
)
from rules.market.codec import decode_event, decode_trade, encode_event, encode_trade

log = logging.getLogger(__name__)

_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call
_json_str = json.encoder.encode_basestring_ascii  # a JSON string as json.dumps writes it
RECENT_S = 24 * 3600  # deliveries the forecast is scaled by
STANDING_TTL_S = 10.0  # how long a site's owner and approval are trusted without a read


class MarketError(Exception):
    """A refused market request: `refusal.reason`, a plain message, an HTTP status."""

    def __init__(self, refusal: MarketRefusal) -> None:
        super().__init__(f"{refusal.reason}: {refusal.detail}")
        self.refusal = refusal


class MarketCorrupted(RuntimeError):
    """The logged order events do not replay to the logged trades."""


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What a client asks for; `client_order_id` makes a retried request safe."""

    client_order_id: str
    site_id: str
    side: Side
    interval_start: int
    quantity_wh: int
    limit_price: int
    tif: TimeInForce = TimeInForce.GTC
    min_fill_wh: int = 0
    source: str = "manual"

    def digest(self) -> bytes:
        """SHA-256 of the request's terms: the same key with other terms is a conflict.

        The terms are hashed as the compact JSON array [site, side, interval, quantity, price,
        tif, min fill, source] (stored with the order, so the bytes must not change). With plain
        ints, the usual case, the array is written here as json.dumps would write it, without
        building a JSON encoder per call (a tenth of a durable order's cost)."""
        t, q, p, f = self.interval_start, self.quantity_wh, self.limit_price, self.min_fill_wh
        if type(t) is int and type(q) is int and type(p) is int and type(f) is int:
            text = (
                f"[{_json_str(self.site_id)},{int(self.side)},{t},{q},{p},"
                f"{_json_str(self.tif.value)},{f},{_json_str(self.source)}]"
            )
        else:
            terms = [self.site_id, int(self.side), t, q, p, self.tif.value, f, self.source]
            text = _COMPACT_JSON.encode(terms)
        return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """The order after a request, the trades the request caused, and whether it was new."""

    order: Order | None  # None for a gate closure
    trades: list[Trade]
    created: bool = True
    trade_rows: list[TradeRow] = field(default_factory=list)  # as stored with the trades


@dataclass(frozen=True, slots=True)
class MarketChange:
    """What changed, for live subscribers (the trading desk)."""

    interval_start: int
    seq: int
    trades: int


class MarketService:
    """One market on one ledger. Create, `await load()`, then serve requests."""

    def __init__(
        self,
        ledger: LedgerService,
        store: MarketStore,
        config: MarketConfig,
        now: Callable[[], float],
        *,
        latitude_deg: float = 48.0,
        longitude_deg: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.config = config
        self.now = now
        self.latitude_deg = latitude_deg
        self.longitude_deg = longitude_deg
        self.market = Market(config.mode)
        self._client_keys: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._unsettled: dict[str, TradeRow] = {}  # trade id -> matched, not yet settled
        self._unsettled_cost: dict[str, int] = {}  # buyer site -> reserved for its unsettled
        # What the coverage checks read, kept per order and summed per site, so a check costs
        # the same whatever a site has resting: Wh committed by sell orders per (site,
        # interval), and credits reserved by active buy orders per site.
        self._committed: dict[tuple[str, int], int] = {}
        self._reserved: dict[str, int] = {}
        self._share: dict[str, int] = {}  # order id -> its part of one of the two sums
        self._recent: dict[str, list[tuple[int, int, int]]] = {}
        self._recent_at = -1
        self._pending: list[_Op] = []  # requests waiting for the next group commit
        self._standing: dict[str, tuple[str | None, bool, float]] = {}
        self._standing_reads: dict[str, asyncio.Future[tuple[str | None, bool]]] = {}
        self._standing_refreshing: set[str] = set()
        self._standing_slot = asyncio.Semaphore(1)
        self._background: set[asyncio.Task[None]] = set()
        self._committing = False
        self._committer: asyncio.Task[None] | None = None  # the running commit loop
        self._broken = False  # a staged batch failed: rebuild the market before matching on
        self._version = 0
        self._changed = asyncio.Condition()
        self.last_change: MarketChange | None = None

    # ----------------------------------------------------------------------------------------
    # start-up

    async def load(self) -> None:
        """Rebuild the market from the logged order events and check them against the logged
        trades; load the idempotency keys and the unsettled trades."""
        self.market = self._replay(self.ledger.engine.entries)
        self._client_keys = await self.store.client_keys()
        self._unsettled, self._unsettled_cost = {}, {}
        for row in await self.store.unsettled_trades():
            self._add_unsettled(row)
        self._retrack()

    def _retrack(self) -> None:
        self._committed, self._reserved, self._share = {}, {}, {}
        for o in self.market.orders.values():
            self._track(o)

    def _track(self, o: Order) -> None:
        """Bring the per-site sums in step with one order's state."""
        old = self._share.pop(o.order_id, 0)
        if o.side is Side.SELL:
            key = (o.site_id, o.interval_start)
            now = o.quantity_wh if o.is_active else o.filled_wh
            self._committed[key] = self._committed.get(key, 0) + now - old
        else:
            now = bid_cost_minor(self.config, o.remaining_wh, o.limit_price) if o.is_active else 0
            self._reserved[o.site_id] = self._reserved.get(o.site_id, 0) + now - old
        if now:
            self._share[o.order_id] = now

    def _replay(self, entries: Iterable[Entry]) -> Market:
        market = Market(self.config.mode)
        expected: list[Trade] = []
        logged: list[Trade] = []
        for e in entries:
            if e.kind is EntryKind.ORDER_EVENT:
                try:
                    expected += market.apply(decode_event(e.market))
                except MarketRuleError as exc:
                    raise MarketCorrupted(f"entry {e.seq}: {exc}") from None
            elif e.kind is EntryKind.TRADE_MATCH:
                logged.append(decode_trade(e.market))
        if expected != logged:
            first = next(
                (i for i, (a, b) in enumerate(zip(expected, logged, strict=False)) if a != b),
                min(len(expected), len(logged)),
            )
            raise MarketCorrupted(f"replayed trades differ from the logged ones at trade {first}")
        return market

    def new_order_id(self) -> str:
        """A fresh order id (random: ids say nothing about who placed what, or when)."""
        return "o-" + secrets.token_hex(8)

    def next_interval(self) -> int:
        """The first delivery interval still open for orders."""
        c = self.config
        earliest = int(self.now()) + c.gate_closure_s + 1
        return -(-earliest // c.interval_s) * c.interval_s

    # ----------------------------------------------------------------------------------------
    # requests

    async def place(self, account_id: str, req: OrderRequest) -> OrderOutcome:
        """Check and place an order; a retry with the same client id returns the first result,
        and the same client id with other terms is an idempotency conflict."""
        known = self._client_keys.get((account_id, req.client_order_id))
        if known is not None:
            return await self._retried(known, req)
        self._refuse(
            check_terms(
                self.config,
                side=req.side,
                interval_start=req.interval_start,
                quantity_wh=req.quantity_wh,
                limit_price=req.limit_price,
                tif=req.tif,
                min_fill_wh=req.min_fill_wh,
                now_s=int(self.now()),
            )
        )
        standing = self._standing.get(req.site_id)
        if standing is not None and standing[2] > (now_m := time.monotonic()):
            self._check_standing(account_id, req.site_id, standing[0], standing[1])
            if standing[2] - now_m < STANDING_TTL_S / 2:
                self._refresh_standing(req.site_id)
        else:  # not known or expired: read it (no coroutine per order for the cached case)
            await self._check_site(account_id, req.site_id)
        order_id = self.new_order_id()
        digest = req.digest()
        # A partial, not a closure: fewer objects per order that outlive a young GC collection
        # while the batch is written (each is then traversed by the full collections).
        make_event = functools.partial(self._place_event, account_id, req, order_id)
        # _apply's steps inline (one coroutine less per order).
        future = self._enqueue(make_event, (req.client_order_id, digest))
        self._start_committing()
        outcome = await future
        self._client_keys[(account_id, req.client_order_id)] = (order_id, digest)
        return outcome

    def _place_event(
        self, account_id: str, req: OrderRequest, order_id: str, engine: LedgerEngine
    ) -> Event:
        """The Place event of a new order, checked against the market as it is now."""
        self._check_self_trade(account_id, req.interval_start, req.side, req.limit_price)
        self._check_coverage(engine, account_id, req, None)
        return Place(
            seq=engine.state.next_seq,
            order_id=order_id,
            account_id=account_id,
            site_id=req.site_id,
            side=req.side,
            interval_start=req.interval_start,
            quantity_wh=req.quantity_wh,
            limit_price=req.limit_price,
            tif=req.tif,
            min_fill_wh=req.min_fill_wh,
            source=req.source,
        )

    async def amend(
        self,
        account_id: str,
        order_id: str,
        *,
        limit_price: int | None = None,
        quantity_wh: int | None = None,
    ) -> OrderOutcome:
        """Change a resting order's limit price and/or total quantity (rules.market's Amend:
        a price change or an increase loses time priority, a decrease keeps it)."""
        o = self._own_resting(account_id, order_id)
        if limit_price is None and quantity_wh is None:
            self._refuse(MarketRefusal(MarketReason.INVALID, "give a new price or quantity"))
        price = o.limit_price if limit_price is None else limit_price
        total = o.quantity_wh if quantity_wh is None else quantity_wh
        if total <= o.filled_wh:
            self._refuse(
                MarketRefusal(
                    MarketReason.INVALID,
                    f"the new quantity must exceed the {o.filled_wh} Wh filled",
                )
            )
        self._refuse(
            check_terms(
                self.config,
                side=o.side,
                interval_start=o.interval_start,
                quantity_wh=total,
                limit_price=price,
                tif=TimeInForce.GTC,
                min_fill_wh=0,
                now_s=int(self.now()),
            )
        )
        wanted = OrderRequest("", o.site_id, o.side, o.interval_start, total, price)

        def event(engine: LedgerEngine) -> Event:
            if limit_price is not None:
                self._check_self_trade(account_id, o.interval_start, o.side, price)
            self._check_coverage(engine, account_id, wanted, o)
            return Amend(engine.state.next_seq, order_id, limit_price, quantity_wh)

        return await self._apply(event)

    async def cancel(self, account_id: str, order_id: str) -> OrderOutcome:
        """Cancel a resting order's unfilled rest (its fills stand)."""
        self._own_resting(account_id, order_id)

        def event(engine: LedgerEngine) -> Event:
            return Cancel(engine.state.next_seq, order_id)

        return await self._apply(event)

    async def close_due_gates(self) -> int:
        """Close every open interval whose gate time has passed (in a call auction this is
        when the book clears); returns how many closed."""
        now = int(self.now())
        due = [t for t in self.market.open_intervals() if self.config.gate_of(t) <= now]
        for t in due:

            def event(engine: LedgerEngine, t: int = t) -> Event:
                return CloseGate(engine.state.next_seq, t)

            await self._apply(event)
            for o in self.market.release(t):  # stored; keeps memory bounded
                self._track(o)  # expired: reserves nothing
                self._share.pop(o.order_id, None)
                self._committed.pop((o.site_id, t), None)
        return len(due)

    # ----------------------------------------------------------------------------------------
    # checks

    @staticmethod
    def _refuse(refusal: MarketRefusal | None) -> None:
        if refusal is not None:
            raise MarketError(refusal)

    async def _check_site(self, account_id: str, site_id: str) -> None:
        owner, approved = await self._site_standing(site_id)
        self._check_standing(account_id, site_id, owner, approved)

    def _check_standing(
        self, account_id: str, site_id: str, owner: str | None, approved: bool
    ) -> None:
        if owner != account_id:
            self._refuse(
                MarketRefusal(MarketReason.NOT_YOUR_SITE, f"site {site_id!r} is not this account's")
            )
        if not approved:
            self._refuse(
                MarketRefusal(
                    MarketReason.SITE_NOT_APPROVED,
                    f"site {site_id!r} has no approved device to measure its delivery",
                )
            )

    async def _site_standing(self, site_id: str, fresh: bool = False) -> tuple[str | None, bool]:
        """Owner and approval of a site, read at most every STANDING_TTL_S per site: a busy
        trader should not cost a database read per order. A device revoked by an approver stops
        its site's new orders within that time. `fresh` reads even if the entry is live."""
        now = time.monotonic()
        cached = self._standing.get(site_id)
        if not fresh and cached is not None and cached[2] > now:
            return cached[0], cached[1]
        # One read per site at a time: a burst of orders for a site whose entry expired waits
        # on the same read instead of each taking a pooled connection (which starved the
        # group commit of connections under load).
        reading = self._standing_reads.get(site_id)
        if reading is None:
            reading = asyncio.ensure_future(self.store.site_standing(site_id))
            self._standing_reads[site_id] = reading
            try:
                owner, approved = await asyncio.shield(reading)
            finally:
                del self._standing_reads[site_id]
            self._standing[site_id] = (owner, approved, now + STANDING_TTL_S)
            return owner, approved
        return await asyncio.shield(reading)

    def _refresh_standing(self, site_id: str) -> None:
        """Read a site's standing again in the background once its entry is past half its
        life, one site at a time: entries read together expire together, and a burst of
        reads on expiry took the pool from the group commit (benchmarks/RESULTS.md)."""
        if site_id in self._standing_reads or site_id in self._standing_refreshing:
            return
        self._standing_refreshing.add(site_id)

        async def run() -> None:
            try:
                async with self._standing_slot:
                    await self._site_standing(site_id, fresh=True)
            except Exception as exc:  # the entry expires as usual; an order then reads it
                log.warning("refreshing the standing of %s failed: %s", site_id, exc)
            finally:
                self._standing_refreshing.discard(site_id)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_self_trade(self, account_id: str, interval: int, side: Side, price: int) -> None:
        if self.market.crosses_own_order(interval, account_id, side, price):
            self._refuse(
                MarketRefusal(
                    MarketReason.SELF_TRADE,
                    "the order would trade with one of this account's own resting orders",
                )
            )

    def _own_resting(self, account_id: str, order_id: str) -> Order:
        o = self.market.order(order_id)
        if o is None or o.account_id != account_id:
            self._refuse(MarketRefusal(MarketReason.UNKNOWN_ORDER, f"no order {order_id!r} here"))
        assert o is not None
        if not o.is_active:
            self._refuse(
                MarketRefusal(
                    MarketReason.NOT_RESTING, f"order {order_id!r} is {o.status.value}, not resting"
                )
            )
        return o

    def _check_coverage(
        self, engine: LedgerEngine, account_id: str, req: OrderRequest, replacing: Order | None
    ) -> None:
        """An offer within tradable Tgen plus the forecast share; a bid within credits."""
        cfg = self.config
        site, t = req.site_id, req.interval_start
        own = 0 if replacing is None else self._share.get(replacing.order_id, 0)
        if req.side is Side.SELL:
            tradable = sum(
                w
                for lot, w in engine.state.lots_of(site, Pool.TGEN)
                if lot.flags & LotFlag.TRADABLE and t <= lot.interval_start < t + cfg.interval_s
            )
            allowance = offer_allowance(cfg, tradable, self.forecast(engine, site, t))
            committed = self._committed.get((site, t), 0) - own
            if committed + req.quantity_wh > allowance:
                self._refuse(
                    MarketRefusal(
                        MarketReason.INSUFFICIENT_TOKENS,
                        f"site {site!r} may offer {max(0, allowance - committed)} Wh more for "
                        f"interval {t} ({tradable} Wh tradable Tgen + "
                        f"{cfg.forecast_share_permille / 10:g} % of its forecast)",
                    )
                )
            return
        free = engine.state.balance(site_account(site)) + cfg.credit_limit_minor
        reserved = self._unsettled_cost.get(site, 0) + self._reserved.get(site, 0) - own
        filled = replacing.filled_wh if replacing is not None else 0
        need = bid_cost_minor(cfg, req.quantity_wh - filled, req.limit_price)
        if reserved + need > free:
            self._refuse(
                MarketRefusal(
                    MarketReason.INSUFFICIENT_CREDIT,
                    f"the bid may cost {need} and site {site!r} has {max(0, free - reserved)} "
                    "payment credits free (bids are reserved at the higher of their price with "
                    "fees and the retail price)",
                )
            )

    def held_credits(self, site_id: str) -> int:
        """Payment credits the site's resting bids and unsettled trades hold (minor units):
        what a redemption may not take."""
        return self._unsettled_cost.get(site_id, 0) + self._reserved.get(site_id, 0)

    def offer_room(self, site_id: str, interval_start: int) -> int:
        """What the site may still offer for an interval (tradable Tgen of it plus the forecast
        share, less what its orders already committed); the final check runs at placement."""
        engine = self.ledger.engine
        cfg = self.config
        t = interval_start
        tradable = sum(
            w
            for lot, w in engine.state.lots_of(site_id, Pool.TGEN)
            if lot.flags & LotFlag.TRADABLE and t <= lot.interval_start < t + cfg.interval_s
        )
        allowance = offer_allowance(cfg, tradable, self.forecast(engine, site_id, t))
        return max(0, allowance - self._committed.get((site_id, t), 0))

    def order_for_key(self, account_id: str, client_order_id: str) -> Order | None:
        """The in-market order placed with this idempotency key, if any."""
        known = self._client_keys.get((account_id, client_order_id))
        return None if known is None else self.market.order(known[0])

    def knows_key(self, account_id: str, client_order_id: str) -> bool:
        """Whether an order was ever placed with this idempotency key."""
        return (account_id, client_order_id) in self._client_keys

    def forecast(self, engine: LedgerEngine, site_id: str, interval_start: int) -> int:
        """The site's expected generation (Wh) in an interval: the clear-sky shape scaled by
        what it delivered over the last day (signed records, as minted)."""
        if self._recent_at != self.ledger.closed_intervals:
            self._recent = _recent_generation(engine.entries, int(self.now()) - RECENT_S)
            self._recent_at = self.ledger.closed_intervals
        return forecast_wh(
            interval_start,
            self.config.interval_s,
            self._recent.get(site_id, ()),
            self.latitude_deg,
            self.longitude_deg,
        )

    async def _retried(self, known: tuple[str, bytes], req: OrderRequest) -> OrderOutcome:
        order_id, digest = known
        if digest != req.digest():
            self._refuse(
                MarketRefusal(
                    MarketReason.IDEMPOTENCY_CONFLICT,
                    f"client order id {req.client_order_id!r} was used for other terms",
                )
            )
        o = self.market.order(order_id)
        if o is None:  # its interval is closed and released: answer from storage
            row = await self.store.order(order_id)
            assert row is not None
            o = order_from_row(row)
        return OrderOutcome(o, [], created=False)

    # ----------------------------------------------------------------------------------------
    # the one write path

    async def _apply(
        self,
        make_event: Callable[[LedgerEngine], Event],
        *,
        new_order: tuple[str, bytes] | None = None,
    ) -> OrderOutcome:
        """Queue one request for the next group commit and wait for its outcome.

        Requests that arrive while a commit is being written wait and go together in the
        next one (up to MAX_BATCH): one ledger append and one transaction for all of them, so
        durable placement is not one commit per order. Each is still checked, matched and
        logged in arrival order, and each gets its own answer or refusal.
        """
        future = self._enqueue(make_event, new_order)
        self._start_committing()
        return await future

    def _enqueue(
        self, make_event: Callable[[LedgerEngine], Event], new_order: tuple[str, bytes] | None
    ) -> asyncio.Future[OrderOutcome]:
        """Queue one request for the next group commit; its outcome will be in the future."""
        op = _Op(make_event, new_order, asyncio.get_running_loop().create_future())
        self._pending.append(op)
        return op.future

    def _start_committing(self) -> None:
        """Run the commit loop in a task of its own unless it is running.

        Not in the caller's request: the loop runs as long as requests keep arriving, and the
        request that started it would wait for all of them (at 500 orders/s, seconds), though
        its own answer was ready after the first commit.
        """
        if not self._committing:
            self._committing = True
            self._committer = asyncio.create_task(self._commit_pending())

    async def _commit_pending(self) -> None:
        """The commit loop, until nothing is pending or being written."""
        self._committing = True
        try:
            # One turn of the loop first: requests that are ready to run (e.g. the callers
            # the previous commit just answered) join this commit instead of the next.
            await asyncio.sleep(0)
            await self._commit_loop()
        except BaseException as exc:
            # A fault in the loop itself (not a storage error, which _finish answers): no
            # request may wait for an answer that will never come.
            waiting, self._pending = self._pending, []
            failure = exc if isinstance(exc, Exception) else RuntimeError("commit loop stopped")
            self._fail(waiting, failure)
            raise
        finally:
            self._committing = False
            if self._pending:
                # Requests that arrived while the loop was finishing (its last rebuild after a
                # failed write awaits storage) found it running and did not start one.
                self._start_committing()

    async def _commit_loop(self) -> None:
        """Match and stage batches while earlier ones are written: batch N+1 is matched (CPU)
        while batch N is in the database, and answers go out in order as each commits. If a
        write fails, its batch and every later staged one fail unwritten, and the market is
        rebuilt from the stored log before the next batch is matched."""
        writing: list[asyncio.Task[None]] = []
        while self._pending or writing:
            if self._pending and len(writing) < PIPELINE_DEPTH:
                if self._broken:
                    await asyncio.gather(*writing, return_exceptions=True)
                    writing = []
                    if not await self._rebuild():
                        continue
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                staged = await self._stage(batch)
                if staged is not None:
                    writing.append(asyncio.ensure_future(self._finish(*staged)))
            else:
                await writing.pop(0)
        if self._broken:
            await self._rebuild()

    async def _rebuild(self) -> bool:
        """After a failed write: the ledger rebuilds its engine from storage and the market is
        replayed from it, so neither runs ahead of what was stored. If storage is still down,
        the waiting requests fail (nothing of theirs was matched) and the next request tries
        again; returns whether the market is whole."""
        try:
            await self.ledger.recover()
        except Exception as exc:
            waiting, self._pending = self._pending, []
            self._fail(waiting, exc)
            return False
        self.market = self._replay(self.ledger.engine.entries)
        self._retrack()
        self._broken = False
        return True

    async def _stage(self, batch: list[_Op]) -> tuple[StagedAppend, list[_Op]] | None:
        """Under the ledger's lock: build each event (its seq is the next log seq), match it,
        emit its leaves; start writing every leaf and row of the batch in one unit of work."""
        now_ms = int(self.now() * 1000)
        accepted: list[_Op] = []

        def emit(engine: LedgerEngine) -> list[Entry]:
            out: list[Entry] = []
            for op in batch:
                try:
                    ev = op.make_event(engine)
                    interval = _interval_of(ev, self.market)
                    closing = self.market.book(interval) if isinstance(ev, CloseGate) else None
                    touched = {o.order_id: o for o in closing.orders.values()} if closing else {}
                    trades = self.market.apply(ev)  # a refusal leaves the market unchanged
                except MarketError as exc:
                    op.future.set_exception(exc)
                    continue
                except MarketRuleError as exc:
                    op.future.set_exception(
                        MarketError(MarketRefusal(MarketReason.INVALID, str(exc)))
                    )
                    continue
                subject = _subject(ev)
                if subject is not None:
                    touched[subject] = self.market.orders[subject]
                for tr in trades:
                    for oid in (tr.buy_order_id, tr.sell_order_id):
                        touched[oid] = self.market.orders[oid]
                site = MARKET_SITE if subject is None else touched[subject].site_id
                entries = [
                    engine.record_market(EntryKind.ORDER_EVENT, site, interval, encode_event(ev))
                ]
                entries += [
                    engine.record_market(
                        EntryKind.TRADE_MATCH,
                        tr.seller_site_id,
                        tr.interval_start,
                        encode_trade(tr),
                        counterparty=tr.buyer_site_id,
                        ref=tr.trade_id,
                        requested_wh=tr.quantity_wh,
                    )
                    for tr in trades
                ]
                op.trade_rows = [
                    _trade_row(tr, e.seq, self.config.interval_s, now_ms)
                    for tr, e in zip(trades, entries[1:], strict=True)
                ]
                op.event, op.interval, op.trades, op.touched = ev, interval, trades, touched
                op.event_row = EventRow(entries[0].seq, subject, interval, _kind(ev))
                for o in touched.values():
                    self._track(o)
                for row in op.trade_rows:  # the next request of this batch sees the fills
                    self._add_unsettled(row)
                accepted.append(op)
                out += entries
            return out

        rows: dict[str, list[Any]] = {}  # the batch's rows, read when it was matched

        def snapshot(entries: list[Entry]) -> list[Entry]:
            # Orders are written once, in their state after the whole batch, read now: the
            # Order objects are the market's own, and the next batch may change them while
            # this one is being written.
            new: dict[str, OrderRow] = {}
            for op in accepted:
                subject = _subject(op.event)
                if op.new_order is not None and subject is not None:
                    o = op.touched[subject]
                    new[subject] = _order_row(o, *op.new_order, self.config.interval_s, now_ms)
            rows["new_orders"] = list(new.values())
            changed = {oid: o for op in accepted for oid, o in op.touched.items() if oid not in new}
            rows["changed_orders"] = [_order_state(o, now_ms) for o in changed.values()]
            rows["trades"] = [r for op in accepted for r in op.trade_rows]
            rows["events"] = [op.event_row for op in accepted if op.event_row is not None]
            return entries

        async def also(conn: AsyncConnection) -> None:
            await self.store.write(conn, **rows)

        try:
            staged = await self.ledger.stage(lambda engine: snapshot(emit(engine)), also)
        except Exception as exc:
            # A rule refused a leaf, or storage was down when the ledger had to rebuild: the
            # market may have run ahead of the log.
            self._fail(batch, exc)
            return None
        return (staged, accepted) if accepted else None

    async def _finish(self, staged: StagedAppend, accepted: list[_Op]) -> None:
        """Wait for a staged batch's commit, then answer its requests (or fail them)."""
        try:
            await staged.committed()
        except Exception as exc:
            self._fail(accepted, exc)
            return
        for op in accepted:
            ev = op.event
            subject = _subject(ev)
            op.future.set_result(
                OrderOutcome(
                    None if subject is None else op.touched[subject],
                    op.trades,
                    trade_rows=op.trade_rows,
                )
            )
        last = accepted[-1]
        trades = sum(len(op.trades) for op in accepted)
        await self._notify(MarketChange(last.interval, last.event.seq, trades))

    def _fail(self, ops: list[_Op], exc: Exception) -> None:
        """Storage failed after matching: the market must be rebuilt before the next batch;
        the requests not answered yet get the error."""
        self._broken = True
        for op in ops:
            for row in op.trade_rows if op.event is not None else ():  # matched ones only
                self.settled(row.trade_id)  # never stored: nothing to settle
            if not op.future.done():
                op.future.set_exception(exc)

    # ----------------------------------------------------------------------------------------
    # reads: what the API shows (rows from the market store, live state from the market)

    def open_intervals(self) -> list[int]:
        """Delivery intervals with an open book."""
        return self.market.open_intervals()

    def book(self, interval_start: int) -> Book | None:
        """The in-memory book of an interval (None: nobody ordered, or released)."""
        return self.market.book(interval_start)

    def is_closed(self, interval_start: int) -> bool:
        """Whether the interval's gate has closed."""
        return self.market.is_closed(interval_start)

    def live(self, order_id: str) -> Order | None:
        """An order of an open interval, in its live state."""
        return self.market.order(order_id)

    async def order(self, order_id: str) -> OrderRow | None:
        """A stored order."""
        return await self.store.order(order_id)

    async def orders(
        self,
        *,
        account_id: str | None,
        interval_start: int | None,
        active_only: bool,
        limit: int,
    ) -> list[OrderRow]:
        """Stored orders, newest first."""
        return await self.store.orders(
            account_id=account_id,
            interval_start=interval_start,
            active_only=active_only,
            limit=limit,
        )

    async def trade(self, trade_id: str) -> TradeRow | None:
        """A stored trade with its settlement."""
        return await self.store.trade(trade_id)

    async def trades(
        self, *, account_id: str | None, interval_start: int | None, limit: int
    ) -> list[TradeRow]:
        """Stored trades, newest first."""
        return await self.store.trades(
            account_id=account_id, interval_start=interval_start, limit=limit
        )

    async def history(self, limit: int) -> list[IntervalSummary]:
        """Volume and prices per delivery interval, newest first."""
        return await self.store.interval_summaries(limit)

    async def order_proofs(self, order_id: str) -> list[LeafProof]:
        """Inclusion proofs of an order's event leaves (those a checkpoint covers)."""
        seqs = (await self.store.event_seqs([order_id])).get(order_id, [])
        return await self.entry_proofs(seqs)

    async def entry_proofs(self, seqs: Sequence[int]) -> list[LeafProof]:
        """Inclusion proofs of ledger entries by seq, in the order given."""
        proofs = await self.ledger.proofs_for_seqs(list(seqs))
        return [proofs[s] for s in seqs if s in proofs]

    async def policy(self, site_id: str) -> TradingPolicy | None:
        """A site's trading policy, if set."""
        found = await self.store.policies(site_id)
        return found[0] if found else None

    async def set_policy(self, policy: TradingPolicy) -> None:
        """Create or replace a site's trading policy."""
        await self.store.set_policy(policy, int(self.now() * 1000))

    # ----------------------------------------------------------------------------------------
    # unsettled trades (settlement reads and clears them)

    def _add_unsettled(self, row: TradeRow) -> None:
        self._unsettled[row.trade_id] = row
        cost = bid_cost_minor(self.config, row.quantity_wh, row.price)
        self._unsettled_cost[row.buyer_site_id] = (
            self._unsettled_cost.get(row.buyer_site_id, 0) + cost
        )

    def settled(self, trade_id: str) -> None:
        """A trade was settled: release the buyer's reservation."""
        row = self._unsettled.pop(trade_id, None)
        if row is None:
            return
        cost = bid_cost_minor(self.config, row.quantity_wh, row.price)
        left = self._unsettled_cost.get(row.buyer_site_id, 0) - cost
        if left > 0:
            self._unsettled_cost[row.buyer_site_id] = left
        else:
            self._unsettled_cost.pop(row.buyer_site_id, None)

    def unsettled(self) -> list[TradeRow]:
        """Matched trades waiting for their delivery interval's close, oldest first."""
        return sorted(self._unsettled.values(), key=lambda r: r.entry_seq)

    # ----------------------------------------------------------------------------------------
    # live updates

    async def _notify(self, change: MarketChange) -> None:
        async with self._changed:
            self._version += 1
            self.last_change = change
            self._changed.notify_all()

    async def wait_change(self, seen: int, timeout_s: float) -> int:
        """Wait until the market changed after version `seen` (or the timeout); the version."""
        async with self._changed:
            if self._version == seen:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._version != seen), timeout_s
                    )
            return self._version

    @property
    def version(self) -> int:
        """Bumped on every accepted event."""
        return self._version


MAX_BATCH = 500  # requests in one group commit
PIPELINE_DEPTH = 2  # group commits in flight: one written while the next is matched


@dataclass(slots=True)
class _Op:
    """One queued request and, once matched, what it decided."""

    make_event: Callable[[LedgerEngine], Event]
    new_order: tuple[str, bytes] | None
    future: asyncio.Future[OrderOutcome]
    event: Event = None  # type: ignore[assignment]  # None until matched
    # Set when matched, together with `event` (no empty containers made per request: each
    # would outlive a young GC collection while its batch waits, and cost full collections).
    interval: int = field(init=False)
    trades: list[Trade] = field(init=False)
    touched: dict[str, Order] = field(init=False)
    trade_rows: list[TradeRow] = field(init=False)
    event_row: EventRow | None = None


def _subject(ev: Event) -> str | None:
    return None if isinstance(ev, CloseGate) else ev.order_id


def _kind(ev: Event) -> str:
    return {Place: "place", Amend: "amend", Cancel: "cancel", CloseGate: "close"}[type(ev)]


def _interval_of(ev: Event, market: Market) -> int:
    if isinstance(ev, (Place, CloseGate)):
        return ev.interval_start
    o = market.order(ev.order_id)
    if o is None:
        raise MarketRuleError(f"unknown order {ev.order_id!r}")
    return o.interval_start


def _recent_generation(
    entries: Sequence[Entry], since: int
) -> dict[str, list[tuple[int, int, int]]]:
    """(start, length, generated Wh) per site of the MINT_GEN entries since `since`, read from
    the end of the log (intervals close in time order, so the scan stops an hour past it)."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for e in reversed(entries):
        if e.kind is not EntryKind.MINT_GEN or e.measurement is None:
            continue
        if e.interval_start < since - 3600:
            break
        if e.interval_start >= since:
            out.setdefault(e.site, []).append(
                (e.interval_start, e.measurement.interval_s, e.gen_wh)
            )
    return out


def _order_row(o: Order, client_id: str, digest: bytes, interval_s: int, now_ms: int) -> OrderRow:
    return OrderRow(
        order_id=o.order_id,
        account_id=o.account_id,
        client_order_id=client_id,
        request_sha256=digest,
        site_id=o.site_id,
        side=int(o.side),
        interval_start=o.interval_start,
        interval_s=interval_s,
        quantity_wh=o.quantity_wh,
        limit_price=o.limit_price,
        tif=o.tif.value,
        min_fill_wh=o.min_fill_wh,
        source=o.source,
        priority=o.priority,
        placed_seq=o.placed_seq,
        status=o.status.value,
        cancel_reason=None if o.cancel_reason is None else o.cancel_reason.value,
        filled_wh=o.filled_wh,
        remaining_wh=o.remaining_wh,
        filled_notional=o.filled_notional,
        created_ms=now_ms,
        updated_ms=now_ms,
    )


def _order_state(o: Order, now_ms: int) -> OrderState:
    return OrderState(
        order_id=o.order_id,
        limit_price=o.limit_price,
        quantity_wh=o.quantity_wh,
        priority=o.priority,
        status=o.status.value,
        cancel_reason=None if o.cancel_reason is None else o.cancel_reason.value,
        filled_wh=o.filled_wh,
        remaining_wh=o.remaining_wh,
        filled_notional=o.filled_notional,
        updated_ms=now_ms,
    )


def _trade_row(t: Trade, entry_seq: int, interval_s: int, now_ms: int) -> TradeRow:
    return TradeRow(
        trade_id=t.trade_id,
        entry_seq=entry_seq,
        interval_start=t.interval_start,
        interval_s=interval_s,
        buy_order_id=t.buy_order_id,
        sell_order_id=t.sell_order_id,
        buyer_account_id=t.buyer_account_id,
        buyer_site_id=t.buyer_site_id,
        seller_account_id=t.seller_account_id,
        seller_site_id=t.seller_site_id,
        quantity_wh=t.quantity_wh,
        price=t.price,
        taker_seq=t.taker_seq,
        maker_seq=t.maker_seq,
        created_ms=now_ms,
    )


def order_from_row(r: OrderRow) -> Order:
    """An order as stored (for orders whose interval the market has released)."""
    return Order(
        r.order_id,
        r.account_id,
        r.site_id,
        Side(r.side),
        r.interval_start,
        r.quantity_wh,
        r.limit_price,
        TimeInForce(r.tif),
        r.min_fill_wh,
        r.source,
        r.priority,
        r.placed_seq,
        OrderStatus(r.status),
        r.filled_wh,
        r.remaining_wh,
        r.filled_notional,
        None if r.cancel_reason is None else CancelReason(r.cancel_reason),
    )
