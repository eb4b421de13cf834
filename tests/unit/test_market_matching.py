"""Market matching rules (pure): worked examples per rule, refusals, and property tests.

The property tests run random streams of place/amend/cancel/close events (a small price range so
orders cross often, a few accounts so self-trades come up) through `Market` and through
`RefMarket`, a slow matcher written here for obviousness (every match is a linear scan and a
sort of the whole book), and require identical trades, identical refusals and identical orders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.market import (
    Amend,
    Cancel,
    CancelReason,
    CloseGate,
    Event,
    Market,
    MarketRuleError,
    MatchingMode,
    Order,
    OrderStatus,
    Place,
    Side,
    TimeInForce,
    Trade,
    clear_uniform,
    replay,
    sort_for_auction,
)

BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
CONT, AUCTION = MatchingMode.CONTINUOUS, MatchingMode.CALL_AUCTION
T = 1_800_000_000  # an interval start
T2 = T + 900


class Stream:
    """Builds events with consecutive seqs."""

    def __init__(self, market: Market) -> None:
        self.m = market
        self.seq = market.last_seq

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def place(
        self,
        oid: str,
        acct: str,
        side: Side,
        qty: int,
        price: int,
        tif: TimeInForce = GTC,
        min_fill: int = 0,
        t: int = T,
    ) -> list[Trade]:
        ev = Place(self._next(), oid, acct, f"site-{acct}", side, t, qty, price, tif, min_fill)
        return self.m.apply(ev)

    def amend(self, oid: str, price: int | None = None, qty: int | None = None) -> list[Trade]:
        return self.m.apply(Amend(self._next(), oid, price, qty))

    def cancel(self, oid: str) -> list[Trade]:
        return self.m.apply(Cancel(self._next(), oid))

    def close(self, t: int = T) -> list[Trade]:
        return self.m.apply(CloseGate(self._next(), t))


def new(mode: MatchingMode = CONT) -> tuple[Market, Stream]:
    m = Market(mode)
    return m, Stream(m)


def fills(trades: list[Trade]) -> list[tuple[str, str, int, int]]:
    return [(t.buy_order_id, t.sell_order_id, t.quantity_wh, t.price) for t in trades]


def state(m: Market, oid: str) -> tuple[OrderStatus, int, int]:
    o = m.orders[oid]
    return o.status, o.filled_wh, o.remaining_wh


# --- continuous matching: worked examples ----------------------------------------------------


def test_a_placed_order_is_the_one_the_constructor_builds() -> None:
    """Market builds orders field by field (faster than the dataclass call): every field set,
    equal to Order(...) with the same values."""
    for mode, tif, min_fill in ((CONT, IOC, 5), (CONT, GTC, 0), (AUCTION, GTC, 0)):
        m, s = new(mode)
        s.place("o1", "a", BUY, 10, 40, tif, min_fill)
        o = m.orders["o1"]
        expected = Order("o1", "a", "site-a", BUY, T, 10, 40, tif, min_fill, "manual", 1, 1)
        expected.remaining_wh = 10
        if tif is IOC:  # nothing to trade with: cancelled at once
            expected.status = OrderStatus.CANCELLED
            expected.cancel_reason = CancelReason.MIN_FILL_UNMET
        for f in dataclasses.fields(Order):  # every field set (else AttributeError)
            if f.compare:
                assert getattr(o, f.name) == getattr(expected, f.name), f.name
            else:  # the book's own field: where the order rests
                assert getattr(o, f.name) == (1 if o.is_active else -1), f.name
        assert o == expected
        assert o.is_active is (tif is GTC)


def test_price_time_priority() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 52)
    s.place("s2", "b", SELL, 100, 50)  # better price, newer: first
    s.place("s3", "c", SELL, 100, 50)  # same price, newer than s2: after it
    trades = s.place("b1", "d", BUY, 250, 55)
    assert fills(trades) == [("b1", "s2", 100, 50), ("b1", "s3", 100, 50), ("b1", "s1", 50, 52)]
    assert state(m, "s1") == (OrderStatus.PARTIALLY_FILLED, 50, 50)
    assert m.orders["b1"].status is OrderStatus.FILLED
    assert m.orders["b1"].filled_notional == 100 * 50 + 100 * 50 + 50 * 52
    assert m.orders["b1"].average_price_floor() == 12_600 // 250


def test_trades_at_the_resting_price_both_ways() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 10, 40)
    assert fills(s.place("b1", "b", BUY, 10, 70)) == [("b1", "s1", 10, 40)]
    s.place("b2", "b", BUY, 10, 65)
    assert fills(s.place("s2", "a", SELL, 10, 30)) == [("b2", "s2", 10, 65)]


def test_partial_fill_rests_and_keeps_its_place() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)
    s.place("s2", "b", SELL, 100, 50)
    s.place("b1", "c", BUY, 30, 50)
    assert state(m, "s1") == (OrderStatus.PARTIALLY_FILLED, 30, 70)
    assert fills(s.place("b2", "c", BUY, 80, 50)) == [("b2", "s1", 70, 50), ("b2", "s2", 10, 50)]
    # GTC remainder rests at its limit
    s.place("b3", "c", BUY, 500, 49)
    book = m.book(T)
    assert book is not None
    assert book.depth(BUY) == [(49, 500, 1)]
    assert book.depth(SELL) == [(50, 90, 1)]
    assert (book.best_bid(), book.best_ask()) == (49, 50)


def test_trade_ids_and_the_events_they_name() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 10, 50)  # seq 1
    s.place("s2", "b", SELL, 10, 51)  # seq 2
    trades = s.place("b1", "c", BUY, 20, 60)  # seq 3
    assert [t.trade_id for t in trades] == ["3.0", "3.1"]
    assert [(t.taker_seq, t.maker_seq, t.buy_seq, t.sell_seq) for t in trades] == [
        (3, 1, 3, 1),
        (3, 2, 3, 2),
    ]
    assert trades[0].aggressor is BUY
    assert trades[0].interval_start == T
    assert (trades[0].buyer_account_id, trades[0].buyer_site_id) == ("c", "site-c")
    assert (trades[0].seller_account_id, trades[0].seller_site_id) == ("a", "site-a")
    assert trades[1].notional == 10 * 51


def test_amend_quantity_down_keeps_priority() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)
    s.place("s2", "b", SELL, 100, 50)
    assert s.amend("s1", qty=40) == []
    assert m.orders["s1"].priority == 1
    assert fills(s.place("b1", "c", BUY, 50, 50)) == [("b1", "s1", 40, 50), ("b1", "s2", 10, 50)]


def test_amend_quantity_up_loses_priority() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)
    s.place("s2", "b", SELL, 100, 50)
    s.amend("s1", qty=150)  # seq 3
    assert m.orders["s1"].priority == 3
    assert fills(s.place("b1", "c", BUY, 120, 50)) == [("b1", "s2", 100, 50), ("b1", "s1", 20, 50)]
    assert state(m, "s1") == (OrderStatus.PARTIALLY_FILLED, 20, 130)


def test_amend_price_loses_priority_and_can_cross_as_taker() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)  # 1
    s.place("s2", "b", SELL, 100, 51)  # 2
    s.amend("s2", price=50)  # 3: now at 50, behind s1
    assert fills(s.place("b1", "c", BUY, 150, 50)) == [("b1", "s1", 100, 50), ("b1", "s2", 50, 50)]
    s.place("b2", "c", BUY, 100, 45)  # 5
    trades = s.amend("b2", price=50)  # 6: crosses s2 (50 left) and trades as taker
    assert fills(trades) == [("b2", "s2", 50, 50)]
    assert (trades[0].trade_id, trades[0].taker_seq, trades[0].maker_seq) == ("6.0", 6, 3)
    assert state(m, "b2") == (OrderStatus.PARTIALLY_FILLED, 50, 50)
    book = m.book(T)
    assert book is not None
    assert book.depth(BUY) == [(50, 50, 1)]
    assert book.depth(SELL) == []


def test_amend_quantity_must_exceed_filled() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)
    s.place("b1", "b", BUY, 60, 50)
    with pytest.raises(MarketRuleError, match="above the filled"):
        s.amend("s1", qty=60)
    s.amend("s1", qty=61)
    assert state(m, "s1") == (OrderStatus.PARTIALLY_FILLED, 60, 1)


def test_ioc_trades_what_crosses_and_cancels_the_rest() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("s2", "a", SELL, 40, 60)
    assert fills(s.place("b1", "b", BUY, 100, 55, IOC)) == [("b1", "s1", 40, 50)]
    o = m.orders["b1"]
    assert (o.status, o.cancel_reason, o.filled_wh) == (
        OrderStatus.CANCELLED,
        CancelReason.IOC_REMAINDER,
        40,
    )
    book = m.book(T)
    assert book is not None
    assert book.depth(BUY) == []  # nothing rests


def test_fok_fills_completely_or_does_nothing() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("s2", "b", SELL, 40, 52)
    assert s.place("b1", "c", BUY, 81, 60, FOK) == []
    assert m.orders["b1"].cancel_reason is CancelReason.FOK_UNFILLABLE
    assert s.place("b2", "c", BUY, 60, 51, FOK) == []  # only 40 within its limit
    assert fills(s.place("b3", "c", BUY, 80, 52, FOK)) == [
        ("b3", "s1", 40, 50),
        ("b3", "s2", 40, 52),
    ]
    assert m.orders["b3"].status is OrderStatus.FILLED


def test_fok_counts_only_up_to_an_own_order() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("s2", "c", SELL, 40, 51)  # c's own order: self-trade prevention would stop here
    s.place("s3", "b", SELL, 40, 52)
    assert s.place("b1", "c", BUY, 60, 52, FOK) == []
    assert m.orders["b1"].cancel_reason is CancelReason.FOK_UNFILLABLE
    assert fills(s.place("b2", "c", BUY, 40, 52, FOK)) == [("b2", "s1", 40, 50)]


def test_min_fill_ioc() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 30, 50)
    assert s.place("b1", "b", BUY, 100, 50, IOC, min_fill=31) == []
    assert m.orders["b1"].cancel_reason is CancelReason.MIN_FILL_UNMET
    assert fills(s.place("b2", "b", BUY, 100, 50, IOC, min_fill=30)) == [("b2", "s1", 30, 50)]
    assert m.orders["b2"].cancel_reason is CancelReason.IOC_REMAINDER


def test_min_fill_gtc_rests_when_nothing_crosses_else_is_cancelled() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 30, 50)
    assert s.place("b1", "b", BUY, 100, 49, GTC, min_fill=50) == []  # crosses nothing: rests
    assert state(m, "b1") == (OrderStatus.OPEN, 0, 100)
    assert s.place("b2", "b", BUY, 100, 50, GTC, min_fill=50) == []  # crosses, 30 < 50
    assert m.orders["b2"].cancel_reason is CancelReason.MIN_FILL_UNMET
    # min fill is tested at entry only: the resting b1 fills in any size later
    assert fills(s.place("s2", "c", SELL, 10, 49)) == [("b1", "s2", 10, 49)]
    # enough fillable: trades, and the rest rests
    s.place("s3", "c", SELL, 60, 50)
    assert fills(s.place("b3", "d", BUY, 100, 50, GTC, min_fill=90)) == [
        ("b3", "s1", 30, 50),
        ("b3", "s3", 60, 50),
    ]
    assert state(m, "b3") == (OrderStatus.PARTIALLY_FILLED, 90, 10)


def test_self_trade_cancels_the_newest_and_earlier_fills_stand() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("s2", "c", SELL, 40, 51)  # c's own
    s.place("s3", "b", SELL, 40, 52)
    trades = s.place("b1", "c", BUY, 100, 55)
    assert fills(trades) == [("b1", "s1", 40, 50)]
    o = m.orders["b1"]
    assert (o.status, o.cancel_reason, o.filled_wh, o.remaining_wh) == (
        OrderStatus.CANCELLED,
        CancelReason.SELF_TRADE,
        40,
        60,
    )
    assert state(m, "s2") == (OrderStatus.OPEN, 0, 40)  # the resting order is untouched


def test_crosses_own_order() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("b1", "a", BUY, 40, 45)
    assert m.crosses_own_order(T, "a", BUY, 50)
    assert not m.crosses_own_order(T, "a", BUY, 49)
    assert m.crosses_own_order(T, "a", SELL, 45)
    assert not m.crosses_own_order(T, "a", SELL, 46)
    assert not m.crosses_own_order(T, "b", BUY, 99)
    assert not m.crosses_own_order(T2, "a", BUY, 99)
    s.cancel("s1")
    assert not m.crosses_own_order(T, "a", BUY, 50)


def test_would_self_trade_stops_at_the_quantity() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("s2", "c", SELL, 40, 51)  # c's own, behind 40 Wh of a's
    assert m.crosses_own_order(T, "c", BUY, 51)
    assert not m.would_self_trade(T, "c", BUY, 51, 40)  # filled before reaching s2
    assert m.would_self_trade(T, "c", BUY, 51, 41)
    assert not m.would_self_trade(T, "c", BUY, 50, 1000)  # s2 is beyond the limit
    assert not m.would_self_trade(T2, "c", BUY, 99, 1000)
    assert fills(s.place("b1", "c", BUY, 40, 51)) == [("b1", "s1", 40, 50)]


def test_crosses_own_order_in_a_call_auction() -> None:
    m, s = new(AUCTION)
    s.place("b1", "a", BUY, 40, 60)
    s.place("s1", "b", SELL, 40, 50)  # the book rests crossed
    assert m.crosses_own_order(T, "a", SELL, 60)
    assert not m.crosses_own_order(T, "a", SELL, 61)
    assert not m.crosses_own_order(T, "b", SELL, 1)
    s.cancel("b1")
    assert not m.crosses_own_order(T, "a", SELL, 60)
    for i in range(100):  # the account's list drops dead entries as it grows
        s.place(f"x{i}", "a", BUY, 1, 10)
        s.cancel(f"x{i}")
    book = m.book(T)
    assert book is not None
    assert len(book._own["a"]) <= 10  # 2 x live (1 at the last compaction) + 8


def test_gate_closure_expires_resting_orders() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    s.place("b1", "b", BUY, 100, 50)  # 40 filled, 60 rest
    s.place("x", "c", SELL, 10, 60, t=T2)
    assert s.close(T) == []
    assert state(m, "b1") == (OrderStatus.EXPIRED, 40, 60)
    assert m.orders["s1"].status is OrderStatus.FILLED
    assert m.orders["x"].status is OrderStatus.OPEN  # other interval untouched
    closed = m.book(T)
    assert closed is not None and closed.closed
    assert list(closed.orders) == ["s1", "b1"] and closed.resting(BUY) == []
    assert m.is_closed(T)
    assert m.open_intervals() == [T2]
    with pytest.raises(MarketRuleError, match="closed"):
        s.place("late", "c", BUY, 1, 1)
    with pytest.raises(MarketRuleError, match="not resting"):
        s.cancel("b1")
    with pytest.raises(MarketRuleError, match="already closed"):
        s.close(T)
    assert s.close(T + 7 * 900) == []  # an interval nobody traded in just closes


def test_release_forgets_a_closed_interval() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 40, 50)
    with pytest.raises(MarketRuleError, match="not closed"):
        m.release(T)
    s.close(T)
    assert [o.order_id for o in m.release(T)] == ["s1"]
    assert m.order("s1") is None
    assert m.release(T) == []
    with pytest.raises(MarketRuleError, match="closed"):
        s.place("s9", "a", SELL, 1, 1)


def test_cancelled_levels_are_compacted_and_reused() -> None:
    m, s = new()
    for i in range(1000):
        s.place(f"s{i}", "a", SELL, 1, 50)
        if i:
            s.cancel(f"s{i}")
    book = m.book(T)
    assert book is not None
    level = book._asks[50]
    assert level.count == 1
    assert len(level.queue) <= 2 * level.count + 16
    for i in range(100):
        s.place(f"t{i}", "b", SELL, 1, 70)
        s.cancel(f"t{i}")
    assert sorted(book._ask_heap) == [50, 70]  # each price in the heap once
    assert fills(s.place("b", "c", BUY, 5, 70)) == [("b", "s0", 1, 50)]
    assert book.best_ask() is None


def test_markets_create_no_reference_cycles() -> None:
    """Everything is freed by reference counting (so callers may freeze or disable the GC)."""
    gc.collect()
    gc.disable()
    try:
        for mode in (CONT, AUCTION):
            m, s = new(mode)
            for i in range(200):
                side = BUY if i % 2 else SELL
                s.place(f"o{i}", f"acct{i % 7}", side, 10 + i % 5, 40 + i % 11)
                if i % 3 == 0 and m.orders[f"o{i}"].is_active:
                    s.amend(f"o{i}", price=45)
                if i % 5 == 4 and m.orders[f"o{i - 1}"].is_active:
                    s.cancel(f"o{i - 1}")
            s.close(T)
            m.release(T)
            del m, s
        assert gc.collect() == 0
    finally:
        gc.enable()


# --- call auction: worked examples -----------------------------------------------------------


def test_call_auction_uniform_price_and_time_priority_at_the_margin() -> None:
    m, s = new(AUCTION)
    s.place("b1", "a", BUY, 100, 60)  # 1
    s.place("b2", "b", BUY, 100, 55)  # 2
    s.place("b3", "c", BUY, 100, 55)  # 3: ties b2 on price, newer
    s.place("s1", "d", SELL, 150, 50)  # 4
    s.place("s2", "e", SELL, 100, 54)  # 5
    s.place("s3", "f", SELL, 100, 58)  # 6: above the margin
    book = m.book(T)
    assert book is not None
    assert book.best_bid() == 60 and book.best_ask() == 50  # rests crossed until the gate
    trades = s.close(T)  # 7
    # bids 60,55(b2),55(b3) vs offers 50,54: 250 Wh matched; marginal bid 55, offer 54
    assert fills(trades) == [
        ("b1", "s1", 100, 54),
        ("b2", "s1", 50, 54),
        ("b2", "s2", 50, 54),
        ("b3", "s2", 50, 54),
    ]
    assert book.clearing_price == (55 + 54) // 2 == 54
    assert [(t.trade_id, t.taker_seq, t.buy_seq, t.sell_seq, t.maker_seq) for t in trades] == [
        ("7.0", 7, 1, 4, 1),
        ("7.1", 7, 2, 4, 2),
        ("7.2", 7, 2, 5, 2),
        ("7.3", 7, 3, 5, 3),
    ]
    assert trades[0].aggressor is None
    assert state(m, "b3") == (OrderStatus.EXPIRED, 50, 50)  # b2 was older: it filled first
    assert state(m, "b2") == (OrderStatus.FILLED, 100, 0)
    assert state(m, "s3") == (OrderStatus.EXPIRED, 0, 100)


def test_call_auction_price_rounds_down_and_amend_reorders() -> None:
    m, s = new(AUCTION)
    s.place("b1", "a", BUY, 10, 61)
    s.place("b2", "b", BUY, 10, 61)
    s.place("s1", "c", SELL, 10, 50)
    s.amend("b1", qty=11)  # loses priority to b2
    trades = s.close(T)
    assert fills(trades) == [("b2", "s1", 10, 55)]  # (61 + 50) // 2


def test_call_auction_refuses_ioc_fok_and_min_fill() -> None:
    m, s = new(AUCTION)
    for tif, mf in ((IOC, 0), (FOK, 0), (GTC, 5)):
        with pytest.raises(MarketRuleError, match="call auction"):
            s.place("x", "a", BUY, 10, 50, tif, mf)
    assert m.orders == {}


def test_call_auction_self_trade_cancels_the_newer_order() -> None:
    m, s = new(AUCTION)
    s.place("b1", "a", BUY, 100, 60)  # 1
    s.place("s1", "b", SELL, 50, 40)  # 2
    s.place("s2", "a", SELL, 100, 45)  # 3: a's own offer, newer than b1
    s.place("s3", "c", SELL, 100, 50)  # 4
    trades = s.close(T)
    assert fills(trades) == [("b1", "s1", 50, 55), ("b1", "s3", 50, 55)]
    assert m.orders["s2"].cancel_reason is CancelReason.SELF_TRADE
    assert state(m, "s3") == (OrderStatus.EXPIRED, 50, 50)


def test_clear_uniform_directly() -> None:
    def order(oid: str, acct: str, side: Side, qty: int, price: int, prio: int) -> Order:
        return Order(
            oid, acct, "x", side, T, qty, price, GTC, 0, "manual", prio, prio, remaining_wh=qty
        )

    bids, offers = sort_for_auction(
        [order("b", "a", BUY, 5, 10, 1), order("s", "b", SELL, 5, 11, 2)]
    )
    assert clear_uniform(bids, offers).price is None  # does not cross
    assert clear_uniform([], offers).volume_wh == 0


# --- refusals leave the market unchanged -----------------------------------------------------


def snapshot(m: Market) -> Any:
    orders = tuple((dataclasses.astuple(o), o.is_active) for o in m.orders.values())
    books = []
    for t in m.open_intervals():
        b = m.book(t)
        assert b is not None
        books.append((t, b.depth(BUY), b.depth(SELL), b.resting(BUY), b.resting(SELL)))
    return m.last_seq, orders, books, [m.is_closed(t) for t in (T, T2)]


def test_refused_events_leave_the_market_unchanged() -> None:
    m, s = new()
    s.place("s1", "a", SELL, 100, 50)
    s.place("b1", "b", BUY, 60, 50)
    s.place("b2", "b", BUY, 10, 40)
    s.place("y", "b", BUY, 10, 40, t=T2)
    s.close(T2)
    seq = m.last_seq
    bad: list[tuple[Event, str]] = [
        (Place(seq, "n", "a", "s", BUY, T, 1, 50), "seq"),
        (Place(seq + 1, "s1", "a", "s", BUY, T, 1, 50), "duplicate"),
        (Place(seq + 1, "n", "a", "s", BUY, T, 0, 50), "quantity"),
        (Place(seq + 1, "n", "a", "s", BUY, T, 5, -1), "limit_price"),
        (Place(seq + 1, "n", "a", "s", BUY, T, 5, 50, GTC, 6), "min_fill"),
        (Place(seq + 1, "n", "a", "s", BUY, T2, 5, 50), "closed"),
        (Place(seq + 1, "n", "", "s", BUY, T, 5, 50), "account"),
        (Place(seq + 1, "n", "a", "s", 0, T, 5, 50), "Side"),  # type: ignore[arg-type]
        (Place(seq + 1, "n", "a", "s", BUY, T, 5, 50.0), "limit_price"),  # type: ignore[arg-type]
        (Place(seq + 1, "n", "a", "s", BUY, -900, 5, 50), "interval"),
        (Amend(seq + 1, "nope", 50, None), "unknown"),
        (Amend(seq + 1, "b1", 51, None), "not resting"),  # filled
        (Amend(seq + 1, "s1", None, 60), "above the filled"),
        (Amend(seq + 1, "s1", None, None), "neither"),
        (Amend(seq + 1, "s1", -3, None), "limit_price"),
        (Cancel(seq + 1, "nope"), "unknown"),
        (Cancel(seq + 1, "y"), "not resting"),  # expired
        (Cancel(seq - 1, "s1"), "seq"),
        (CloseGate(seq + 1, T2), "already closed"),
    ]
    before = snapshot(m)
    for ev, message in bad:
        with pytest.raises(MarketRuleError, match=message):
            m.apply(ev)
        assert snapshot(m) == before, ev
    assert fills(m.apply(Place(seq + 1, "b3", "c", "s", BUY, T, 40, 50))) == [("b3", "s1", 40, 50)]


# --- the reference matcher -------------------------------------------------------------------


class RefMarket:
    """Slow, obviously correct: resting orders in a dict; every match sorts the candidates."""

    def __init__(self, mode: MatchingMode) -> None:
        self.mode = mode
        self.orders: dict[str, Order] = {}
        self.resting: dict[str, Order] = {}
        self.closed: set[int] = set()
        self.last_seq = 0

    def apply(self, ev: Event) -> list[Trade]:
        if ev.seq <= self.last_seq:
            raise MarketRuleError("seq")
        if isinstance(ev, Place):
            trades = self._place(ev)
        elif isinstance(ev, Amend):
            trades = self._amend(ev)
        elif isinstance(ev, Cancel):
            o = self._live(ev.order_id)
            del self.resting[o.order_id]
            o.status, o.cancel_reason = OrderStatus.CANCELLED, CancelReason.USER
            trades = []
        else:
            if ev.interval_start in self.closed or ev.interval_start < 0:
                raise MarketRuleError("close")
            self.closed.add(ev.interval_start)
            trades = self._close(ev)
        self.last_seq = ev.seq
        return trades

    def _live(self, oid: str) -> Order:
        if oid not in self.resting:
            raise MarketRuleError("not resting")
        return self.resting[oid]

    def _place(self, ev: Place) -> list[Trade]:
        bad = (
            ev.interval_start in self.closed
            or ev.interval_start < 0
            or ev.order_id in self.orders
            or ev.quantity_wh <= 0
            or ev.limit_price < 0
            or not 0 <= ev.min_fill_wh <= ev.quantity_wh
            or (self.mode is AUCTION and (ev.tif is not GTC or ev.min_fill_wh > 0))
        )
        if bad:
            raise MarketRuleError("place")
        o = Order(
            ev.order_id, ev.account_id, ev.site_id, ev.side, ev.interval_start, ev.quantity_wh,
            ev.limit_price, ev.tif, ev.min_fill_wh, ev.source, ev.seq, ev.seq,
            remaining_wh=ev.quantity_wh,
        )  # fmt: skip
        self.orders[o.order_id] = o
        if self.mode is AUCTION:
            self.resting[o.order_id] = o
            return []
        if o.tif is FOK or o.min_fill_wh:
            need = o.quantity_wh if o.tif is FOK else o.min_fill_wh
            makers = self._makers(o)
            fillable = 0
            for m in makers:
                if m.account_id == o.account_id:
                    break
                fillable += m.remaining_wh
            if fillable < need:
                if o.tif is GTC and not makers:
                    self.resting[o.order_id] = o
                    return []
                o.status = OrderStatus.CANCELLED
                o.cancel_reason = (
                    CancelReason.FOK_UNFILLABLE if o.tif is FOK else CancelReason.MIN_FILL_UNMET
                )
                return []
        return self._take(o, ev.seq)

    def _makers(self, o: Order) -> list[Order]:
        """Resting orders `o` crosses, in the order it would trade with them."""
        here = [m for m in self.resting.values() if m.interval_start == o.interval_start]
        if o.side is BUY:
            c = [m for m in here if m.side is SELL and m.limit_price <= o.limit_price]
            return sorted(c, key=lambda m: (m.limit_price, m.priority))
        c = [m for m in here if m.side is BUY and m.limit_price >= o.limit_price]
        return sorted(c, key=lambda m: (-m.limit_price, m.priority))

    def _take(self, o: Order, seq: int) -> list[Trade]:
        trades: list[Trade] = []
        stopped = False
        while o.remaining_wh > 0:
            makers = self._makers(o)
            if not makers:
                break
            m = makers[0]
            if m.account_id == o.account_id:
                stopped = True
                break
            q = min(o.remaining_wh, m.remaining_wh)
            p = m.limit_price
            for x in (o, m):
                x.filled_wh += q
                x.remaining_wh -= q
                x.filled_notional += q * p
            b, s = (o, m) if o.side is BUY else (m, o)
            trades.append(self._trade(seq, len(trades), b, s, q, p, m.priority))
            if m.remaining_wh == 0:
                m.status = OrderStatus.FILLED
                del self.resting[m.order_id]
            else:
                m.status = OrderStatus.PARTIALLY_FILLED
        if stopped:
            o.status, o.cancel_reason = OrderStatus.CANCELLED, CancelReason.SELF_TRADE
        elif o.remaining_wh == 0:
            o.status = OrderStatus.FILLED
        elif o.tif is not GTC:
            o.status, o.cancel_reason = OrderStatus.CANCELLED, CancelReason.IOC_REMAINDER
        else:
            o.status = OrderStatus.PARTIALLY_FILLED if o.filled_wh else OrderStatus.OPEN
            self.resting[o.order_id] = o
        return trades

    @staticmethod
    def _trade(seq: int, k: int, b: Order, s: Order, q: int, p: int, maker: int) -> Trade:
        return Trade(
            f"{seq}.{k}", b.interval_start, b.order_id, s.order_id, b.account_id, b.site_id,
            s.account_id, s.site_id, q, p, seq, maker, b.priority, s.priority,
        )  # fmt: skip

    def _amend(self, ev: Amend) -> list[Trade]:
        o = self._live(ev.order_id)
        if ev.limit_price is None and ev.quantity_wh is None:
            raise MarketRuleError("neither")
        if ev.limit_price is not None and ev.limit_price < 0:
            raise MarketRuleError("price")
        if ev.quantity_wh is not None and ev.quantity_wh <= o.filled_wh:
            raise MarketRuleError("qty")
        new_price = o.limit_price if ev.limit_price is None else ev.limit_price
        new_qty = o.quantity_wh if ev.quantity_wh is None else ev.quantity_wh
        o.remaining_wh += new_qty - o.quantity_wh
        keeps = new_price == o.limit_price and new_qty <= o.quantity_wh
        price_changed = new_price != o.limit_price
        o.quantity_wh, o.limit_price = new_qty, new_price
        if keeps:
            return []
        o.priority = ev.seq
        if price_changed and self.mode is CONT:
            del self.resting[o.order_id]
            return self._take(o, ev.seq)
        return []

    def _close(self, ev: CloseGate) -> list[Trade]:
        t = ev.interval_start
        trades: list[Trade] = []
        if self.mode is AUCTION:
            here = [o for o in self.resting.values() if o.interval_start == t]
            bids = sorted(
                (o for o in here if o.side is BUY), key=lambda o: (-o.limit_price, o.priority)
            )
            offers = sorted(
                (o for o in here if o.side is SELL), key=lambda o: (o.limit_price, o.priority)
            )
            left = {o.order_id: o.remaining_wh for o in here}
            pairs: list[tuple[Order, Order, int]] = []
            i = j = 0
            while (
                i < len(bids) and j < len(offers) and bids[i].limit_price >= offers[j].limit_price
            ):
                b, s = bids[i], offers[j]
                if b.account_id == s.account_id:
                    newer = b if b.priority > s.priority else s
                    newer.status, newer.cancel_reason = (
                        OrderStatus.CANCELLED,
                        CancelReason.SELF_TRADE,
                    )
                    del self.resting[newer.order_id]
                    if newer is b:
                        i += 1
                    else:
                        j += 1
                    continue
                q = min(left[b.order_id], left[s.order_id])
                pairs.append((b, s, q))
                left[b.order_id] -= q
                left[s.order_id] -= q
                i += left[b.order_id] == 0
                j += left[s.order_id] == 0
            if pairs:
                price = (pairs[-1][0].limit_price + pairs[-1][1].limit_price) // 2
                for k, (b, s, q) in enumerate(pairs):
                    trades.append(
                        self._trade(ev.seq, k, b, s, q, price, min(b.priority, s.priority))
                    )
                    for x in (b, s):
                        x.filled_wh += q
                        x.remaining_wh -= q
                        x.filled_notional += q * price
                        if x.remaining_wh == 0:
                            x.status = OrderStatus.FILLED
                            self.resting.pop(x.order_id, None)
        for o in [o for o in self.resting.values() if o.interval_start == t]:
            o.status = OrderStatus.EXPIRED
            del self.resting[o.order_id]
        return trades


# --- random streams --------------------------------------------------------------------------

ACCOUNTS = ["A", "B", "C", "D"]
INTERVALS = [T, T2, T2 + 900]


@st.composite
def streams(draw: st.DrawFn, mode: MatchingMode, split_accounts: bool = False) -> list[Event]:
    """Random event streams, mostly valid; a few refusals on purpose (bad seq, unknown or done
    orders, closed gates, bad quantities). With `split_accounts`, A/B only buy and C/D only sell
    (no self-trade is possible)."""
    n = draw(st.integers(1, 70))
    events: list[Event] = []
    seq = 0
    n_ids = 0
    closed: set[int] = set()
    for _ in range(n):
        seq += draw(st.sampled_from([1] * 8 + [2, 0] + [1] * 8))  # rare ones mid-list
        kind = draw(
            st.sampled_from(
                ["place"] * 9 + ["close"] + ["place"] * 9 + ["amend"] * 8 + ["cancel"] * 4
            )
        )
        if kind == "place":
            side = draw(st.sampled_from([BUY, SELL]))
            if split_accounts:
                acct = draw(st.sampled_from(ACCOUNTS[:2] if side is BUY else ACCOUNTS[2:]))
            else:
                acct = draw(st.sampled_from(ACCOUNTS))
            qty = draw(st.sampled_from([10, 20, 30]) | st.integers(1, 60))
            if mode is AUCTION:
                tif = draw(st.sampled_from([GTC] * 30 + [IOC]))
                min_fill = 0
            else:
                tif = draw(st.sampled_from([GTC] * 4 + [IOC, FOK]))
                min_fill = draw(st.sampled_from([0] * 8 + [1]) | st.integers(0, qty + 1))
            fresh = draw(st.sampled_from([True] * 15 + [False] + [True] * 15))
            oid = f"o{n_ids}" if fresh else f"o{max(n_ids - 1, 0)}"
            n_ids += 1
            open_ts = [t for t in INTERVALS if t not in closed]
            if open_ts and draw(st.sampled_from([True] * 15 + [False] + [True] * 15)):
                t = draw(st.sampled_from(open_ts[:1] * 4 + open_ts))  # mostly the first
            else:  # now and then into a closed gate
                t = draw(st.sampled_from(INTERVALS))
            events.append(
                Place(
                    seq, oid, acct, f"site-{acct}", side, t, qty, draw(st.integers(8, 12)), tif,
                    min_fill,
                )
            )  # fmt: skip
        elif kind in ("amend", "cancel"):
            oid = f"o{n_ids - 1 - draw(st.integers(0, min(n_ids, 12)))}"  # recent; o-1 unknown
            if kind == "cancel":
                events.append(Cancel(seq, oid))
            else:
                price = draw(st.none() | st.integers(8, 12))
                qty_new = draw(st.none() | st.integers(1, 60))
                events.append(Amend(seq, oid, price, qty_new))
        else:
            t = draw(st.sampled_from(INTERVALS))
            closed.add(t)
            events.append(CloseGate(seq, t))
    return events


def closing(events: list[Event]) -> list[Event]:
    """`events` followed by the closure of every interval."""
    seq = max(e.seq for e in events)
    return [*events, *(CloseGate(seq + 1 + i, t) for i, t in enumerate(INTERVALS))]


def run_checked(events: list[Event], mode: MatchingMode) -> tuple[Market, list[Trade]]:
    """Apply `events` to a Market and a RefMarket side by side, checking the invariants after
    every event; refused events must be refused by both."""
    m, ref = Market(mode), RefMarket(mode)
    all_trades: list[Trade] = []
    traded: dict[str, list[Trade]] = defaultdict(list)
    for ev in events:
        self_trade = None
        if isinstance(ev, Place):  # the pre-trade queries, against a brute force over orders
            t, acct, side, limit = ev.interval_start, ev.account_id, ev.side, ev.limit_price
            crosses = any(
                o.is_active
                and o.interval_start == t
                and o.account_id == acct
                and o.side is not side
                and (o.limit_price <= limit if side is BUY else o.limit_price >= limit)
                for o in m.orders.values()
            )
            assert m.crosses_own_order(t, acct, side, limit) == crosses
            self_trade = m.would_self_trade(t, acct, side, limit, ev.quantity_wh)
            assert crosses or not self_trade
        try:
            trades = m.apply(ev)
        except MarketRuleError:
            with pytest.raises(MarketRuleError):
                ref.apply(ev)
            continue
        assert ref.apply(ev) == trades, ev
        if isinstance(ev, Place) and mode is CONT and ev.tif is not FOK and not ev.min_fill_wh:
            cancelled_for_self_trade = (
                m.orders[ev.order_id].cancel_reason is CancelReason.SELF_TRADE
            )
            assert self_trade == cancelled_for_self_trade
        all_trades += trades
        for tr in trades:
            b, s = m.orders[tr.buy_order_id], m.orders[tr.sell_order_id]
            assert tr.quantity_wh > 0
            assert s.limit_price <= tr.price <= b.limit_price  # within both limits
            assert b.account_id != s.account_id  # never a self-trade
            assert b.interval_start == s.interval_start == tr.interval_start
            if mode is CONT:
                maker = b if tr.buy_seq == tr.maker_seq else s
                assert tr.price == maker.limit_price  # trades at the resting order's price
                assert tr.maker_seq < tr.taker_seq
            traded[b.order_id].append(tr)
            traded[s.order_id].append(tr)
        if mode is AUCTION and isinstance(ev, CloseGate):
            assert len({tr.price for tr in trades}) <= 1  # one uniform price
        for o in m.orders.values():  # conservation per order, after every event
            assert o.filled_wh + o.remaining_wh == o.quantity_wh
            assert o.remaining_wh > 0 or o.status is OrderStatus.FILLED
            assert o.filled_wh == sum(tr.quantity_wh for tr in traded[o.order_id])
            assert o.filled_notional == sum(tr.quantity_wh * tr.price for tr in traded[o.order_id])
            assert o.is_active == (o.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED))
        assert dict(m.orders) == ref.orders
        assert m.last_seq == ref.last_seq
    return m, all_trades


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(CONT))
def test_continuous_matches_the_reference(events: list[Event]) -> None:
    m, trades = run_checked(closing(events), CONT)
    assert all(not o.is_active for o in m.orders.values())  # everything ended at the gates
    assert len({tr.trade_id for tr in trades}) == len(trades)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(AUCTION))
def test_call_auction_matches_the_reference(events: list[Event]) -> None:
    run_checked(closing(events), AUCTION)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(CONT) | streams(AUCTION), st.sampled_from([CONT, AUCTION]))
def test_replay_is_deterministic(events: list[Event], mode: MatchingMode) -> None:
    valid: list[Event] = []
    m = Market(mode)
    for ev in closing(events):
        try:
            m.apply(ev)
        except MarketRuleError:
            continue
        valid.append(ev)
    first = replay(valid, mode)
    second = replay(valid, mode)
    assert first == second
    assert first[1] == dict(m.orders)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(AUCTION, split_accounts=True))
def test_call_auction_volume_is_the_maximum(events: list[Event]) -> None:
    m = Market(AUCTION)
    for ev in closing(events):
        if isinstance(ev, CloseGate) and not m.is_closed(ev.interval_start) and ev.seq > m.last_seq:
            here = [
                o
                for o in m.orders.values()
                if o.interval_start == ev.interval_start and o.is_active
            ]
            best = 0
            for p in {o.limit_price for o in here}:
                demand = sum(o.remaining_wh for o in here if o.side is BUY and o.limit_price >= p)
                supply = sum(o.remaining_wh for o in here if o.side is SELL and o.limit_price <= p)
                best = max(best, min(demand, supply))
            trades = m.apply(ev)
            assert sum(tr.quantity_wh for tr in trades) == best
            assert len({tr.price for tr in trades}) <= 1
            for tr in trades:
                b, s = m.orders[tr.buy_order_id], m.orders[tr.sell_order_id]
                assert s.limit_price <= tr.price <= b.limit_price
            continue
        with contextlib.suppress(MarketRuleError):
            m.apply(ev)
