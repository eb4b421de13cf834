"""The market: one book per delivery interval, one event stream, and its replay.

Pure and integer-only; imports only the standard library and `rules.market` modules.

`Market.apply(event)` checks the event completely against the current state (raising
`MarketRuleError` and changing nothing if it breaks a rule), then dispatches it: a Place to the
book of its ``interval_start`` (created on first use), an Amend or Cancel to the book of the
order it names, a CloseGate to the book it closes. It returns the trades the event caused, in
trade-id order. `replay(events, mode)` runs a whole stream through a fresh market: the same
stream always gives the same trades and orders, which is what the verifier re-runs.

Rules checked here (the books apply the matching rules; see `rules.market.book`):

* every event's ``seq`` is an int greater than the previous accepted event's (the first >= 1);
* Place: a new ``order_id`` (never seen by this market, unless its interval was released), a
  non-empty account, ``side`` a `Side`, ``tif`` a `TimeInForce`, ints with
  ``interval_start >= 0``, ``quantity_wh > 0``, ``limit_price >= 0`` and
  ``0 <= min_fill_wh <= quantity_wh``, into an interval whose gate has not closed. In
  CALL_AUCTION mode only GTC orders without min_fill are accepted (an auction has no "now" for
  IOC/FOK, and minimum fills would make the uniform clearing a combinatorial problem);
* Amend: an order that is resting (open or partially filled), at least one of price and
  quantity given, a price >= 0, a new total quantity > ``filled_wh``;
* Cancel: an order that is resting;
* CloseGate: an int ``interval_start >= 0`` not closed before. Closing an interval nobody
  traded in is allowed (it just closes).

Memory: a market keeps every order until `Market.release` drops a closed interval's. The rules
create no reference cycles (reference counting frees everything), so a caller holding many
orders may call ``gc.freeze()`` now and then, or replay with the cyclic collector disabled: on
CPython 3.11 its repeated traversals of the live orders are a large share of a long replay
(benchmarks/RESULTS.md, "Market matching").
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from rules.market.book import Book
from rules.market.orders import (
    Amend,
    Cancel,
    CloseGate,
    Event,
    MarketRuleError,
    MatchingMode,
    Order,
    OrderStatus,
    Place,
    Side,
    TimeInForce,
    Trade,
)

_BUY = Side.BUY
_SELL = Side.SELL
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_OPEN = OrderStatus.OPEN
_CALL_AUCTION = MatchingMode.CALL_AUCTION
# Order.__new__ without __init__: see Market._place.
_new_order = object.__new__


class Market:
    """All books of one market (one matching mode), fed by one event stream."""

    __slots__ = ("_books", "_closed", "_last_seq", "_orders", "mode")

    def __init__(self, mode: MatchingMode = MatchingMode.CONTINUOUS) -> None:
        if not isinstance(mode, MatchingMode):
            raise MarketRuleError(f"unknown matching mode {mode!r}")
        self.mode = mode
        self._books: dict[int, Book] = {}  # open intervals
        self._closed: dict[int, Book | None] = {}  # closed intervals; None once released/empty
        self._orders: dict[str, Order] = {}
        self._last_seq = 0

    # ----------------------------------------------------------------------------------------
    # Queries

    @property
    def last_seq(self) -> int:
        """Seq of the last accepted event (0 before any)."""
        return self._last_seq

    @property
    def orders(self) -> Mapping[str, Order]:
        """Every order this market holds (not released), by id, in placement order."""
        return MappingProxyType(self._orders)

    def order(self, order_id: str) -> Order | None:
        """The order with `order_id`, or None."""
        return self._orders.get(order_id)

    def book(self, interval_start: int) -> Book | None:
        """The book of an interval: open, or closed and not yet released; else None."""
        book = self._books.get(interval_start)
        return book if book is not None else self._closed.get(interval_start)

    def is_closed(self, interval_start: int) -> bool:
        """True once the interval's gate has closed."""
        return interval_start in self._closed

    def open_intervals(self) -> list[int]:
        """Intervals with an open book, ascending."""
        return sorted(self._books)

    def crosses_own_order(
        self, interval_start: int, account_id: str, side: Side, limit_price: int
    ) -> bool:
        """Would this order cross a resting order of the same account in its interval's book?

        The order service calls this to refuse an order that could self-trade before placing
        it; the book would otherwise cancel it at the self-trade (see `rules.market.book`).
        Cost: continuous, O(the other side's orders priced through the limit); call auction,
        O(the account's orders in the book).
        """
        book = self._books.get(interval_start)
        return book is not None and book.crosses_own_order(account_id, side, limit_price)

    def would_self_trade(
        self, interval_start: int, account_id: str, side: Side, limit_price: int, quantity_wh: int
    ) -> bool:
        """Would continuous matching of this order meet a resting order of the same account
        before `quantity_wh` is filled (and so cancel its rest for self-trade)?

        Narrower than `crosses_own_order` (an own order deeper than the quantity reaches does
        not count) and costs at most what matching the order would. Changes nothing.
        """
        book = self._books.get(interval_start)
        return book is not None and book.would_self_trade(
            account_id, side, limit_price, quantity_wh
        )

    # ----------------------------------------------------------------------------------------
    # Transitions

    def apply(self, event: Event) -> list[Trade]:
        """Apply one event; the trades it caused. Raises MarketRuleError (state unchanged)."""
        seq = event.seq
        if type(seq) is not int or seq <= self._last_seq:
            raise MarketRuleError(f"seq {seq!r} does not follow the last seq {self._last_seq}")
        if type(event) is Place:
            trades = self._place(event, seq)
        elif type(event) is Cancel:
            o = self._orders.get(event.order_id)
            if o is None or o._book_seq < 0:
                o = self._resting(event.order_id)  # raises
            self._books[o.interval_start].cancel(o)
            trades = []
        elif type(event) is Amend:
            trades = self._amend(event, seq)
        elif type(event) is CloseGate:
            trades = self._close(event, seq)
        else:
            raise MarketRuleError(f"unknown event type {type(event).__name__}")
        self._last_seq = seq
        return trades

    def release(self, interval_start: int) -> list[Order]:
        """Forget a closed interval's orders (the service stored them); returns them.

        Keeps the memory of a long-running market bounded. The interval stays closed; its order
        ids are no longer checked for duplicates (the service assigns unique ids).
        """
        if interval_start not in self._closed:
            raise MarketRuleError(f"interval {interval_start} is not closed")
        book = self._closed[interval_start]
        if book is None:
            return []
        self._closed[interval_start] = None
        orders = self._orders
        for o in book.placed:
            del orders[o.order_id]
        return list(book.placed)

    # ----------------------------------------------------------------------------------------
    # Internals

    def _resting(self, order_id: str) -> Order:
        o = self._orders.get(order_id)
        if o is None:
            raise MarketRuleError(f"unknown order {order_id!r}")
        if o._book_seq < 0:  # not resting (is_active, without the property call)
            raise MarketRuleError(f"order {order_id!r} is {o.status.value}, not resting")
        return o

    def _place(self, ev: Place, seq: int) -> list[Trade]:
        t = ev.interval_start
        book = self._books.get(t)
        if book is None:
            if type(t) is not int or t < 0:
                raise MarketRuleError(f"interval_start {t!r} is not an int >= 0")
            if t in self._closed:
                raise MarketRuleError(f"gate of interval {t} is closed")
        oid = ev.order_id
        if type(oid) is not str or not oid:
            raise MarketRuleError("order_id must be a non-empty str")
        orders = self._orders
        if oid in orders:
            raise MarketRuleError(f"duplicate order_id {oid!r}")
        acct = ev.account_id
        if type(acct) is not str or not acct:
            raise MarketRuleError("account_id must be a non-empty str")
        site = ev.site_id
        source = ev.source
        if type(site) is not str or type(source) is not str:
            raise MarketRuleError("site_id and source must be str")
        side = ev.side
        if side is not _BUY and side is not _SELL:
            raise MarketRuleError(f"side {side!r} is not a Side")
        tif = ev.tif
        if tif is not _GTC and tif is not _IOC and tif is not _FOK:
            raise MarketRuleError(f"tif {tif!r} is not a TimeInForce")
        qty = ev.quantity_wh
        if type(qty) is not int or qty <= 0:
            raise MarketRuleError(f"quantity_wh {qty!r} is not an int > 0")
        price = ev.limit_price
        if type(price) is not int or price < 0:
            raise MarketRuleError(f"limit_price {price!r} is not an int >= 0")
        min_fill = ev.min_fill_wh
        if type(min_fill) is not int or not 0 <= min_fill <= qty:
            raise MarketRuleError(f"min_fill_wh {min_fill!r} is not an int in 0..quantity_wh")
        if self.mode is _CALL_AUCTION and (tif is not _GTC or min_fill):
            raise MarketRuleError("a call auction takes only GTC orders without min_fill_wh")
        if book is None:
            book = self._books[t] = Book(t, self.mode)
        # Order(...) field by field: calling the dataclass costs its C-level __init__ dispatch,
        # about a twentieth of a replay. Every field of Order is set here (a test checks this
        # order equals the one the constructor builds).
        o = _new_order(Order)
        o.order_id = oid
        o.account_id = acct
        o.site_id = site
        o.side = side
        o.interval_start = t
        o.quantity_wh = qty
        o.limit_price = price
        o.tif = tif
        o.min_fill_wh = min_fill
        o.source = source
        o.priority = seq
        o.placed_seq = seq
        o.status = _OPEN
        o.filled_wh = 0
        o.remaining_wh = qty
        o.filled_notional = 0
        o.cancel_reason = None
        o._book_seq = -1
        orders[oid] = o
        book.placed.append(o)
        return book.place(o, seq)

    def _amend(self, ev: Amend, seq: int) -> list[Trade]:
        o = self._orders.get(ev.order_id)
        if o is None or o._book_seq < 0:
            o = self._resting(ev.order_id)  # raises
        price, qty = ev.limit_price, ev.quantity_wh
        if price is None and qty is None:
            raise MarketRuleError("amend changes neither price nor quantity")
        if price is not None and (type(price) is not int or price < 0):
            raise MarketRuleError(f"limit_price {price!r} is not an int >= 0")
        if qty is not None and (type(qty) is not int or qty <= o.filled_wh):
            raise MarketRuleError(
                f"quantity_wh {qty!r} must be an int above the filled {o.filled_wh} Wh"
            )
        return self._books[o.interval_start].amend(o, seq, price, qty)

    def _close(self, ev: CloseGate, seq: int) -> list[Trade]:
        t = ev.interval_start
        if type(t) is not int or t < 0:
            raise MarketRuleError(f"interval_start {t!r} is not an int >= 0")
        if t in self._closed:
            raise MarketRuleError(f"gate of interval {t} is already closed")
        book = self._books.pop(t, None)
        self._closed[t] = book
        return book.close(seq) if book is not None else []


def replay(
    events: Iterable[Event], mode: MatchingMode = MatchingMode.CONTINUOUS
) -> tuple[list[Trade], dict[str, Order]]:
    """Run `events` through a fresh market: (all trades in order, all orders by id).

    Deterministic: the same stream always gives equal results. Raises MarketRuleError at the
    first event that breaks a rule (a logged stream never should).
    """
    market = Market(mode)
    trades: list[Trade] = []
    extend = trades.extend
    apply = market.apply
    # The cyclic collector is paused: the rules make no reference cycles (refcounting frees
    # everything; tests/unit/test_market_matching.py checks), and on a long replay every
    # collection re-walks all the orders kept so far, a third of the time (benchmarks/market.py).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for ev in events:
            extend(apply(ev))
    finally:
        if collecting:
            gc.enable()
    return trades, dict(market.orders)
