"""Market value types: sides, time in force, statuses, orders, the order events, and trades.

Owns the vocabulary the matching rules (`book`, `auction`, `market`) speak. Imports only the
standard library and nothing of ours, so the independent verifier can trust it.

Units, all integers (no floats anywhere):

* energy in Wh (``quantity_wh``, ``filled_wh``, ``remaining_wh``, ``min_fill_wh``);
* prices in minor currency units per kWh (``limit_price``, ``Trade.price``), one tick = 1;
* ``filled_notional`` = sum over the order's fills of ``wh * price``, in Wh x minor/kWh, i.e.
  thousandths of a minor unit (divide by 1000 for money). It is exact, so the average price is
  the exact fraction ``filled_notional / filled_wh``; `Order.average_price_floor` rounds it down.

Events carry a ``seq`` the order service assigns; it is strictly increasing over one market's
stream and is the order's *time priority* (``Order.priority`` is the seq of the event that last
gave the order its place in the queue: its Place, or an Amend that lost priority).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

WH_PER_KWH = 1_000


class MarketRuleError(ValueError):
    """An event breaks a market rule. The book it was applied to is unchanged.

    The order service validates before it logs an event, so a replay of a logged stream never
    meets one: a verifier that does has found a corrupt or forged log.
    """


class Side(IntEnum):
    """Which way an order trades; the integer is the wire value (never renumber)."""

    BUY = 0
    SELL = 1


class TimeInForce(StrEnum):
    """How long an order may wait.

    GTC: good until gate closure of its delivery interval (then it expires). IOC: trade what
    crosses now, cancel the rest. FOK: fill completely now or do nothing (cancelled).
    """

    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(StrEnum):
    """Server state of an order. OPEN and PARTIALLY_FILLED orders rest in a book; the others
    are final (a CANCELLED or EXPIRED order may have fills, which stand)."""

    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class CancelReason(StrEnum):
    """Why a CANCELLED order was cancelled."""

    USER = "user"  # a Cancel event
    IOC_REMAINDER = "ioc_remainder"  # an IOC's unfilled rest
    FOK_UNFILLABLE = "fok_unfillable"  # a FOK that could not fill completely at once
    MIN_FILL_UNMET = "min_fill_unmet"  # less than min_fill_wh was fillable at entry
    SELF_TRADE = "self_trade"  # the next match was with the same account (cancel newest)


class MatchingMode(StrEnum):
    """How a market matches, chosen per market.

    CONTINUOUS: continuous double auction, price-time priority, trades at the resting order's
    price as orders arrive. CALL_AUCTION: orders rest without matching; at gate closure the book
    clears at one uniform price (see `rules.market.auction`).
    """

    CONTINUOUS = "continuous"
    CALL_AUCTION = "call_auction"


ACTIVE_STATUSES = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED})


@dataclass(slots=True)
class Order:
    """One order: what was asked (first block) and the server state the rules maintain.

    Invariants the book keeps: ``filled_wh + remaining_wh == quantity_wh``; ``filled_wh`` is
    the sum of the order's trades' quantities and ``filled_notional`` the sum of their
    ``quantity_wh * price``. Mutated only by the book; callers read it.
    """

    order_id: str
    account_id: str
    site_id: str
    side: Side
    interval_start: int  # delivery interval, Unix s
    quantity_wh: int  # total quantity (an amend sets a new total)
    limit_price: int  # minor units per kWh
    tif: TimeInForce
    min_fill_wh: int  # 0 = none; tested once, at entry
    source: str  # "manual" or a policy id
    priority: int  # seq of the event that gave the order its time priority
    placed_seq: int  # seq of its Place
    status: OrderStatus = OrderStatus.OPEN
    filled_wh: int = 0
    remaining_wh: int = 0
    filled_notional: int = 0  # sum of wh * price (Wh x minor/kWh)
    cancel_reason: CancelReason | None = None
    # The priority under which the order sits in a book queue, -1 when it rests nowhere. A
    # queue entry (priority, order) is live only while this matches: that is how cancel and a
    # priority-losing amend stay O(1) (the queue skips dead entries lazily).
    _book_seq: int = field(default=-1, init=False, repr=False, compare=False)

    @property
    def is_active(self) -> bool:
        """True while the order rests in its book (open or partially filled)."""
        return self._book_seq >= 0

    def average_price_floor(self) -> int | None:
        """Average fill price, minor units per kWh, rounded down; None before any fill."""
        if self.filled_wh == 0:
            return None
        return self.filled_notional // self.filled_wh


# --------------------------------------------------------------------------------------------
# Events: the order service's log. Each has a strictly increasing seq.


@dataclass(frozen=True, slots=True)
class Place:
    """A new order. Its seq becomes the order's priority."""

    seq: int
    order_id: str
    account_id: str
    site_id: str
    side: Side
    interval_start: int
    quantity_wh: int
    limit_price: int
    tif: TimeInForce = TimeInForce.GTC
    min_fill_wh: int = 0
    source: str = "manual"


@dataclass(frozen=True, slots=True)
class Amend:
    """Change a resting order's limit price and/or total quantity (None = unchanged).

    A price change or a quantity increase loses priority (the order takes this seq and goes to
    the back of its level; a new price that crosses trades at once, as a taker). A quantity
    decrease keeps priority. The new quantity is the order's total and must exceed filled_wh.
    """

    seq: int
    order_id: str
    limit_price: int | None = None
    quantity_wh: int | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel a resting order's unfilled rest."""

    seq: int
    order_id: str


@dataclass(frozen=True, slots=True)
class CloseGate:
    """Gate closure of one delivery interval: no more orders for it.

    CONTINUOUS: resting orders expire. CALL_AUCTION: the book clears at one uniform price,
    then whatever rests expires.
    """

    seq: int
    interval_start: int


Event = Place | Amend | Cancel | CloseGate


class Trade(NamedTuple):
    """One fill between a buy and a sell order (immutable).

    ``trade_id`` is ``f"{taker_seq}.{k}"``, k counting the trades one event caused from 0, so
    a replay derives the same ids. ``taker_seq`` is the event that caused the trade (a Place,
    an Amend, or in a call auction the CloseGate). ``buy_seq`` and ``sell_seq`` are the two
    orders' priorities when they traded, and ``maker_seq`` is the older of them: in continuous
    matching the resting order (the taker's priority is ``taker_seq`` itself); in a call
    auction both orders rested, and both are named by ``buy_seq``/``sell_seq``.

    A NamedTuple rather than a frozen dataclass: it is built in the matching loop, and a frozen
    dataclass costs about five times as much to construct.
    """

    trade_id: str
    interval_start: int
    buy_order_id: str
    sell_order_id: str
    buyer_account_id: str
    buyer_site_id: str
    seller_account_id: str
    seller_site_id: str
    quantity_wh: int
    price: int  # minor units per kWh
    taker_seq: int
    maker_seq: int
    buy_seq: int
    sell_seq: int

    @property
    def notional(self) -> int:
        """quantity_wh * price (Wh x minor/kWh; divide by 1000 for minor units)."""
        return self.quantity_wh * self.price

    @property
    def aggressor(self) -> Side | None:
        """The taker's side in continuous matching; None for a call-auction trade."""
        if self.buy_seq == self.taker_seq:
            return Side.BUY
        if self.sell_seq == self.taker_seq:
            return Side.SELL
        return None
