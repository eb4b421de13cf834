"""One delivery interval's order book: continuous double auction, or resting for a call auction.

Pure and integer-only; imports only the standard library and `rules.market` modules. `Market`
(in `rules.market.market`) validates every event and then drives a book through `place`,
`amend`, `cancel` and `close`; the queries (`best_bid`, `depth`, `crosses_own_order`, ...) are
for anyone.

Continuous matching rules:

* **Price-time priority.** An incoming order (the *taker*) trades against the best-priced
  resting order on the other side, oldest first within a price (lowest ``priority`` seq), for
  as long as prices cross (buy limit >= sell limit) and it has quantity left.
* **Resting price.** Every trade is at the resting order's (the *maker's*) limit price.
* **Partial fills.** A trade is ``min(taker rest, maker rest)``; a partly filled maker keeps its
  place at the front of its queue.
* **Rest or not.** A GTC remainder rests until it fills, is cancelled, or gate closure expires
  it. An IOC remainder is cancelled (IOC_REMAINDER).
* **FOK.** Before trading, the quantity fillable at once is counted (in matching order,
  stopping at the first resting order of the same account, where self-trade prevention would
  stop the fill). Less than the whole order: it trades nothing and is cancelled (FOK_UNFILLABLE).
* **min_fill_wh** (tested at entry only; 0 = none). The fillable quantity is counted the same
  way. If it is below ``min_fill_wh`` the order trades nothing; then an IOC or FOK is cancelled
  (MIN_FILL_UNMET; FOK_UNFILLABLE for a FOK), and a GTC rests untouched *if it does not cross
  the book* (nothing is on offer at its price yet, so it waits, and later takers may fill it in
  any size); a GTC that crosses is cancelled (MIN_FILL_UNMET), because resting it would leave a
  crossed book. If enough is fillable, the order trades normally for its time in force.
* **Self-trade prevention, "cancel newest".** A taker never trades with a resting order of its
  own account: when the next match would be one, the taker's remainder is cancelled
  (SELF_TRADE) and its earlier fills stand; the resting order is untouched. `would_self_trade`
  (exactly this outcome) and `crosses_own_order` (any own order priced through the limit) let
  the order service refuse such an order before it is placed.
* **Amend.** A quantity decrease keeps priority (in place). A price change or a quantity
  increase loses it: the order takes the amend's seq as priority and goes to the back of its
  (new) level; a new price that crosses trades at once as a taker (with the GTC rules above;
  min_fill is not re-tested).

Structure (per side): ``dict price -> _Level`` (a FIFO ``deque`` of ``(priority, order)`` plus
live order count and live Wh) and a heap of the level prices (bids negated, so both heaps are
min-heaps). Insert is O(log P) for a new price level, else O(1); cancel is O(1): the order is
marked dead (``Order._book_seq = -1``) and its level's counts adjusted, and the queue drops dead
entries lazily (when they reach the front, or by compaction once dead entries outnumber live
ones, which keeps memory linear). Empty levels stay in the heap until they surface at its top
(then they leave the heap but keep their object in the dict, ready for the next order at that
price), so each price is in the heap at most once and heap and dict are bounded by the number
of distinct prices. Matching cost is proportional to the trades made plus dead entries
skipped; no transition scans the resting orders.

Own orders. A continuous book keeps no per-account index: maintaining one (a cold per-account
structure touched on every rest, cancel and fill) cost about a quarter of the matching
throughput when measured. The self-trade questions are answered by walking the orders priced
through the limit instead: `would_self_trade` and the FOK/min-fill count walk them in matching
order and stop when the quantity is reached, so they cost at most what matching would;
`crosses_own_order` looks at all of them (the crossing part of the other side). A call-auction
book rests crossed, so there it keeps a per-account list (appended once per order, dead
entries dropped when the list doubles), and `crosses_own_order` costs O(the account's orders).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from heapq import heappop, heappush

from rules.market.auction import clear_uniform
from rules.market.orders import (
    CancelReason,
    MatchingMode,
    Order,
    OrderStatus,
    Side,
    TimeInForce,
    Trade,
)

_BUY = Side.BUY
_SELL = Side.SELL
_GTC = TimeInForce.GTC
_FOK = TimeInForce.FOK
_OPEN = OrderStatus.OPEN
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_FILLED = OrderStatus.FILLED
_CANCELLED = OrderStatus.CANCELLED
_EXPIRED = OrderStatus.EXPIRED
_CONTINUOUS = MatchingMode.CONTINUOUS
_CALL_AUCTION = MatchingMode.CALL_AUCTION
_USER = CancelReason.USER
_IOC_REMAINDER = CancelReason.IOC_REMAINDER
_FOK_UNFILLABLE = CancelReason.FOK_UNFILLABLE
_MIN_FILL_UNMET = CancelReason.MIN_FILL_UNMET
_SELF_TRADE = CancelReason.SELF_TRADE
# (Module constants: in CPython 3.11 reading Enum.MEMBER costs ~6x a global lookup.)

# Trade(...) without the NamedTuple's Python-level __new__ (the matching loop builds many).
_new_trade = tuple.__new__

# Compact a level's queue when it holds more than 2 x live + this many entries.
_COMPACT_SLACK = 16


class _Level:
    """One price level: a FIFO of (priority, order) entries, some of them dead."""

    __slots__ = ("count", "in_heap", "price", "qty", "queue")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[tuple[int, Order]] = deque()
        self.count = 0  # live orders in the queue
        self.qty = 0  # their remaining Wh
        self.in_heap = True  # its price is in the side's heap (once)


class _Own(list[Order]):
    """An account's orders in a call-auction book: appended when placed, never removed one by
    one; dead entries are dropped when the list outgrows ``cap`` (about twice the live ones)."""

    __slots__ = ("cap",)

    def __init__(self) -> None:
        super().__init__()
        self.cap = 8


class Book:
    """The book of one delivery interval (see the module docstring for the rules)."""

    __slots__ = (
        "_ask_heap",
        "_asks",
        "_bid_heap",
        "_bids",
        "_own",
        "clearing_price",
        "closed",
        "interval_start",
        "mode",
        "placed",
    )

    def __init__(self, interval_start: int, mode: MatchingMode = _CONTINUOUS) -> None:
        self.interval_start = interval_start
        self.mode = mode
        self.placed: list[Order] = []  # every order placed here, in placement order
        self.closed = False
        self.clearing_price: int | None = None  # call auction: the uniform price, if any trade
        self._bids: dict[int, _Level] = {}
        self._asks: dict[int, _Level] = {}
        self._bid_heap: list[int] = []  # -price
        self._ask_heap: list[int] = []  # price
        self._own: dict[str, _Own] = {}  # call auction only: account -> its orders

    # ----------------------------------------------------------------------------------------
    # Queries

    @property
    def orders(self) -> dict[str, Order]:
        """Every order placed in this book, by id, in placement order (built on each call,
        O(n): the book itself keeps a list, `placed`, which is cheaper to append to)."""
        return {o.order_id: o for o in self.placed}

    def best_bid(self) -> int | None:
        """Highest resting buy limit, or None."""
        heap, levels = self._bid_heap, self._bids
        while heap and levels[-heap[0]].count == 0:
            levels[-heappop(heap)].in_heap = False
        return -heap[0] if heap else None

    def best_ask(self) -> int | None:
        """Lowest resting sell limit, or None."""
        heap, levels = self._ask_heap, self._asks
        while heap and levels[heap[0]].count == 0:
            levels[heappop(heap)].in_heap = False
        return heap[0] if heap else None

    def depth(self, side: Side) -> list[tuple[int, int, int]]:
        """(price, resting Wh, resting orders) per non-empty level of `side`, best first."""
        levels = self._bids if side is _BUY else self._asks
        prices = sorted(levels, reverse=side is _BUY)
        return [(p, levels[p].qty, levels[p].count) for p in prices if levels[p].count]

    def resting(self, side: Side) -> list[Order]:
        """Resting orders of `side` in priority order (best price, then oldest): O(n + P log P)."""
        levels = self._bids if side is _BUY else self._asks
        out: list[Order] = []
        for p in sorted(levels, reverse=side is _BUY):
            lvl = levels[p]
            if lvl.count:
                out += [o for prio, o in lvl.queue if o._book_seq == prio]
        return out

    def resting_count(self) -> int:
        """Number of resting orders (both sides)."""
        return sum(lvl.count for lvl in self._bids.values()) + sum(
            lvl.count for lvl in self._asks.values()
        )

    def crosses_own_order(self, account_id: str, side: Side, limit_price: int) -> bool:
        """Would an order of `account_id` on `side` at `limit_price` cross one of the same
        account's resting orders? (Then it could self-trade; the service may refuse it.)

        Continuous: O(resting orders on the other side priced through `limit_price`), the
        orders a new order at that limit could trade with. Call auction: O(the account's
        orders in this book). Changes nothing.
        """
        if self.mode is _CALL_AUCTION:
            own = self._own.get(account_id)
            if not own:
                return False
            if side is _BUY:
                return any(
                    m._book_seq >= 0 and m.side is _SELL and m.limit_price <= limit_price
                    for m in own
                )
            return any(
                m._book_seq >= 0 and m.side is _BUY and m.limit_price >= limit_price for m in own
            )
        for lvl in self._through(side, limit_price, ordered=False):
            for prio, m in lvl.queue:
                if m._book_seq == prio and m.account_id == account_id:
                    return True
        return False

    def would_self_trade(
        self, account_id: str, side: Side, limit_price: int, quantity_wh: int
    ) -> bool:
        """Would a new order like this meet a resting order of its own account before
        `quantity_wh` is filled (so continuous matching would cancel its rest, SELF_TRADE)?

        Walks the crossing orders in matching order and stops at the quantity: at most the
        cost of matching the order. Changes nothing. (In a call auction, see
        `crosses_own_order`.)
        """
        filled = 0
        for lvl in self._through(side, limit_price):
            for prio, m in lvl.queue:
                if m._book_seq != prio:
                    continue
                if m.account_id == account_id:
                    return True
                filled += m.remaining_wh
                if filled >= quantity_wh:
                    return False
        return False

    # ----------------------------------------------------------------------------------------
    # Transitions (driven by Market after it validated the event)

    def place(self, o: Order, seq: int) -> list[Trade]:
        """Enter a new order (priority `seq`); the trades it caused."""
        trades: list[Trade] = []
        if self.mode is _CALL_AUCTION:
            self._rest(o)
            own = self._own.get(o.account_id)
            if own is None:
                own = self._own[o.account_id] = _Own()
            own.append(o)
            if len(own) > own.cap:
                own[:] = [m for m in own if m._book_seq >= 0]
                own.cap = 2 * len(own) + 8
            return trades
        tif = o.tif
        if tif is _GTC and not o.min_fill_wh:  # the common case: rest at once if nothing crosses
            # (a stale empty level on top just sends it the long way)
            price = o.limit_price
            if o.side is _BUY:
                heap = self._ask_heap
                if not heap or heap[0] > price:
                    lvl = self._bids.get(price)
                    if lvl is None or not lvl.in_heap:
                        lvl = self._level_in_heap(_BUY, price)
                    # (_rest inline: about half the events rest a new order here)
                    prio = o.priority
                    lvl.queue.append((prio, o))
                    lvl.count += 1
                    lvl.qty += o.remaining_wh
                    o._book_seq = prio
                    return trades
            else:
                heap = self._bid_heap
                if not heap or -heap[0] < price:
                    lvl = self._asks.get(price)
                    if lvl is None or not lvl.in_heap:
                        lvl = self._level_in_heap(_SELL, price)
                    prio = o.priority
                    lvl.queue.append((prio, o))
                    lvl.count += 1
                    lvl.qty += o.remaining_wh
                    o._book_seq = prio
                    return trades
        elif tif is _FOK or o.min_fill_wh:
            need = o.quantity_wh if tif is _FOK else o.min_fill_wh
            fillable, crosses = self._fillable(o, need)
            if fillable < need:
                if tif is _GTC and not crosses:
                    self._rest(o)
                    return trades
                o.status = _CANCELLED
                o.cancel_reason = _FOK_UNFILLABLE if tif is _FOK else _MIN_FILL_UNMET
                return trades
        self._take(o, seq, trades)
        return trades

    def amend(
        self, o: Order, seq: int, limit_price: int | None, quantity_wh: int | None
    ) -> list[Trade]:
        """Amend a resting order (values already validated); the trades it caused."""
        trades: list[Trade] = []
        price_changed = limit_price is not None and limit_price != o.limit_price
        new_qty = o.quantity_wh if quantity_wh is None else quantity_wh
        if not price_changed and new_qty <= o.quantity_wh:
            delta = o.quantity_wh - new_qty
            if delta:  # a decrease keeps priority
                o.quantity_wh = new_qty
                o.remaining_wh -= delta
                (self._bids if o.side is _BUY else self._asks)[o.limit_price].qty -= delta
            return trades
        self._unrest(o)
        o.remaining_wh += new_qty - o.quantity_wh
        o.quantity_wh = new_qty
        if limit_price is not None:
            o.limit_price = limit_price
        o.priority = seq
        if price_changed and self.mode is _CONTINUOUS:
            self._take(o, seq, trades)
        else:
            self._rest(o)
        return trades

    def cancel(self, o: Order) -> None:
        """Cancel a resting order's unfilled rest."""
        self._unrest(o)
        o.status = _CANCELLED
        o.cancel_reason = _USER

    def close(self, seq: int) -> list[Trade]:
        """Gate closure: a call auction clears first; then every resting order expires."""
        trades = self._clear(seq) if self.mode is _CALL_AUCTION else []
        for levels in (self._bids, self._asks):
            for lvl in levels.values():
                for prio, o in lvl.queue:
                    if o._book_seq == prio:
                        o._book_seq = -1
                        o.status = _EXPIRED
        self._bids.clear()
        self._asks.clear()
        self._bid_heap.clear()
        self._ask_heap.clear()
        self._own.clear()
        self.closed = True
        return trades

    # ----------------------------------------------------------------------------------------
    # Internals

    def _rest(self, o: Order) -> None:
        """Append `o` to the back of its price level under its current priority."""
        price = o.limit_price
        lvl = (self._bids if o.side is _BUY else self._asks).get(price)
        if lvl is None or not lvl.in_heap:
            lvl = self._level_in_heap(o.side, price)
        prio = o.priority
        lvl.queue.append((prio, o))
        lvl.count += 1
        lvl.qty += o.remaining_wh
        o._book_seq = prio

    def _level_in_heap(self, side: Side, price: int) -> _Level:
        """The level of `price` on `side`, created if new, its price pushed on the heap if it
        was not there."""
        if side is _BUY:
            levels, heap, key = self._bids, self._bid_heap, -price
        else:
            levels, heap, key = self._asks, self._ask_heap, price
        lvl = levels.get(price)
        if lvl is None:
            lvl = levels[price] = _Level(price)
            heappush(heap, key)
        elif not lvl.in_heap:
            lvl.in_heap = True
            heappush(heap, key)
        return lvl

    def _unrest(self, o: Order) -> None:
        """Take resting `o` out of its level in O(1) (its queue entry becomes dead)."""
        lvl = (self._bids if o.side is _BUY else self._asks)[o.limit_price]
        o._book_seq = -1
        count = lvl.count - 1
        lvl.count = count
        lvl.qty -= o.remaining_wh
        if count == 0:
            lvl.queue.clear()
        elif len(lvl.queue) > 2 * count + _COMPACT_SLACK:
            lvl.queue = deque(e for e in lvl.queue if e[1]._book_seq == e[0])

    def _take(self, o: Order, seq: int, trades: list[Trade]) -> None:
        """Match `o` as a taker, then settle its status and rest a GTC remainder."""
        if self._match(o, seq, trades):
            o.status = _CANCELLED
            o.cancel_reason = _SELF_TRADE
        elif o.remaining_wh == 0:
            o.status = _FILLED
        elif o.tif is not _GTC:
            o.status = _CANCELLED
            o.cancel_reason = _IOC_REMAINDER
        else:
            o.status = _PARTIAL if o.filled_wh else _OPEN
            self._rest(o)

    def _match(self, o: Order, seq: int, trades: list[Trade]) -> bool:
        """Trade taker `o` against the other side while prices cross; True if it stopped at a
        resting order of its own account (self-trade prevention)."""
        buy = o.side is _BUY
        if buy:
            levels, heap, bound, sign = self._asks, self._ask_heap, o.limit_price, 1
        else:
            levels, heap, bound, sign = self._bids, self._bid_heap, -o.limit_price, -1
        rem = o.remaining_wh
        if not heap or heap[0] > bound or rem == 0:
            return False
        acct, site, oid, t = o.account_id, o.site_id, o.order_id, o.interval_start
        k = len(trades)
        append = trades.append
        filled = notional = 0
        stopped = False
        while heap:
            key = heap[0]
            if key > bound:
                break
            price = key * sign
            lvl = levels[price]
            if lvl.count == 0:
                heappop(heap)
                lvl.in_heap = False
                continue
            q = lvl.queue
            while True:
                prio, m = q[0]
                if m._book_seq != prio:
                    q.popleft()
                    continue
                if m.account_id == acct:
                    stopped = True
                    break
                m_rem = m.remaining_wh
                fill = rem if rem < m_rem else m_rem
                rem -= fill
                value = fill * price
                filled += fill
                notional += value
                m.filled_wh += fill
                m.filled_notional += value
                lvl.qty -= fill
                if buy:
                    append(
                        _new_trade(Trade, (
                            f"{seq}.{k}", t, oid, m.order_id, acct, site, m.account_id,
                            m.site_id, fill, price, seq, prio, seq, prio,
                        ))
                    )  # fmt: skip
                else:
                    append(
                        _new_trade(Trade, (
                            f"{seq}.{k}", t, m.order_id, oid, m.account_id, m.site_id, acct,
                            site, fill, price, seq, prio, prio, seq,
                        ))
                    )  # fmt: skip
                k += 1
                if fill == m_rem:
                    m.remaining_wh = 0
                    m.status = _FILLED
                    m._book_seq = -1
                    q.popleft()
                    lvl.count -= 1
                    if lvl.count == 0:
                        q.clear()
                        break
                else:
                    m.remaining_wh = m_rem - fill
                    m.status = _PARTIAL
                if rem == 0:
                    break
            if stopped or rem == 0:
                break
        o.filled_wh += filled
        o.remaining_wh = rem
        o.filled_notional += notional
        return stopped

    def _through(self, side: Side, limit_price: int, ordered: bool = True) -> Iterator[_Level]:
        """Non-empty levels of the side an order on `side` at `limit_price` trades against,
        priced through the limit: best first if `ordered` (a lazy walk of the heap in key
        order, O(k log k) for k levels), else in heap order. Only the crossing part of the heap
        is visited (a heap's children are never better than their parent)."""
        if side is _BUY:
            levels, heap, bound, sign = self._asks, self._ask_heap, limit_price, 1
        else:
            levels, heap, bound, sign = self._bids, self._bid_heap, -limit_price, -1
        n = len(heap)
        if n == 0 or heap[0] > bound:
            return
        if not ordered:
            stack = [0]
            while stack:
                i = stack.pop()
                if heap[i] <= bound:
                    lvl = levels[heap[i] * sign]
                    if lvl.count:
                        yield lvl
                    stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < n)
            return
        frontier = [(heap[0], 0)]
        while frontier:
            key, i = heappop(frontier)
            lvl = levels[key * sign]
            if lvl.count:
                yield lvl
            for c in (2 * i + 1, 2 * i + 2):
                if c < n and heap[c] <= bound:
                    heappush(frontier, (heap[c], c))

    def _fillable(self, o: Order, need: int) -> tuple[int, bool]:
        """(Wh taker `o` could fill at once, counted up to `need` or more; whether it crosses).

        Counts in matching order up to the first resting order of o's account (where
        self-trade prevention would stop it). If all crossing levels together hold less than
        `need`, that is known from their totals without walking any order.
        """
        total = 0
        crosses = False
        for lvl in self._through(o.side, o.limit_price, ordered=False):
            crosses = True
            total += lvl.qty
            if total >= need:
                break
        if total < need:
            return total, crosses
        acct = o.account_id
        filled = 0
        for lvl in self._through(o.side, o.limit_price):
            for prio, m in lvl.queue:
                if m._book_seq != prio:
                    continue
                if m.account_id == acct:
                    return filled, True
                filled += m.remaining_wh
                if filled >= need:
                    return filled, True
        return filled, True

    def _clear(self, seq: int) -> list[Trade]:
        """Call auction at gate closure: uniform-price clearing of the resting orders."""
        bids, offers = self.resting(_BUY), self.resting(_SELL)
        result = clear_uniform(bids, offers)
        for o in result.cancelled:
            o._book_seq = -1
            o.status = _CANCELLED
            o.cancel_reason = _SELF_TRADE
        trades: list[Trade] = []
        price = result.price
        if price is None:
            return trades
        self.clearing_price = price
        t = self.interval_start
        append = trades.append
        for k, (b, s, q) in enumerate(result.fills):
            value = q * price
            b.filled_wh += q
            b.filled_notional += value
            b.remaining_wh -= q
            if b.remaining_wh == 0:
                b._book_seq = -1
                b.status = _FILLED
            s.filled_wh += q
            s.filled_notional += value
            s.remaining_wh -= q
            if s.remaining_wh == 0:
                s._book_seq = -1
                s.status = _FILLED
            bp, sp = b.priority, s.priority
            append(
                _new_trade(Trade, (
                    f"{seq}.{k}", t, b.order_id, s.order_id, b.account_id, b.site_id,
                    s.account_id, s.site_id, q, price, seq, bp if bp < sp else sp, bp, sp,
                ))
            )  # fmt: skip
        # (partly filled orders are left for `close` to expire)
        return trades
