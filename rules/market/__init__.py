"""Energy market rules: order books, continuous matching, the uniform-price call auction, replay.

Pure, integer-only, no I/O, no clock, no randomness; imports only the standard library and
nothing of ours outside this package, so the aggregator's order service and the independent
verifier run the same code. Modules:

* `orders`: the vocabulary (`Side`, `TimeInForce`, `OrderStatus`, `MatchingMode`, `Order`,
  the events `Place`/`Amend`/`Cancel`/`CloseGate`, `Trade`, `MarketRuleError`);
* `book`: one interval's `Book`, continuous double auction with price-time priority (the
  matching rules are in its docstring);
* `auction`: the uniform-price clearing walk used at gate closure in CALL_AUCTION mode;
* `market`: `Market` (one book per interval, `apply(event) -> list[Trade]`) and
  `replay(events, mode) -> (trades, orders)`.
"""

from rules.market.auction import Clearing, clear_uniform, sort_for_auction
from rules.market.book import Book
from rules.market.market import Market, replay
from rules.market.orders import (
    ACTIVE_STATUSES,
    WH_PER_KWH,
    Amend,
    Cancel,
    CancelReason,
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

__all__ = [
    "ACTIVE_STATUSES",
    "WH_PER_KWH",
    "Amend",
    "Book",
    "Cancel",
    "CancelReason",
    "Clearing",
    "CloseGate",
    "Event",
    "Market",
    "MarketRuleError",
    "MatchingMode",
    "Order",
    "OrderStatus",
    "Place",
    "Side",
    "TimeInForce",
    "Trade",
    "clear_uniform",
    "replay",
    "sort_for_auction",
]
