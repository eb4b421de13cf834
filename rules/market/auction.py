"""Uniform-price call auction: which resting orders match at gate closure, and at what price.

Pure: reads orders, mutates nothing (the book applies the result). Imports only the standard
library and `rules.market.orders`.

Rules, all deterministic:

* **Order**: bids by limit price descending, then priority ascending (older first); offers by
  limit price ascending, then priority ascending. Priorities are event seqs, unique per book,
  so there are no further ties.
* **Allocation**: one walk down both lists. While the current bid's limit is at least the
  current offer's, they trade ``min(bid rest, offer rest)`` and the exhausted one(s) give way to
  the next. This matches the highest bids with the lowest offers, so the matched volume is the
  maximum ``max_p min(demand at >= p, supply at <= p)`` (absent self-trades), and at a marginal
  price time priority decides who fills: the older order fills first.
* **Self-trades, "cancel newest"**: when the current bid and offer belong to the same
  account, the newer of the two (higher priority seq) is taken out of the auction (its rest is
  cancelled with reason SELF_TRADE; fills it already got in this walk stand) and the walk goes
  on with the next order on that side. The same rule as continuous matching, where the newer
  (incoming) order's remainder is cancelled. With self-trades removed the volume can be below
  the unconstrained maximum.
* **Price**: the midpoint of the marginal (last) matched bid's and offer's limit prices,
  rounded down: ``(b + a) // 2``. Every matched bid's limit is >= b >= price and every matched
  offer's limit is <= a <= price, so the one price is within every matched order's limit.
  No match, no price.

Cost: the walk is O(n); sorting is O(n log n) (the book avoids it: its price levels are already
queues in priority order, so it only sorts the distinct prices).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from rules.market.orders import Order, Side


class Clearing(NamedTuple):
    """The result of a clearing walk.

    ``fills`` are (bid, offer, wh) in walk order (the order the trades are numbered in);
    ``cancelled`` the orders taken out by the self-trade rule, in walk order.
    """

    price: int | None
    volume_wh: int
    fills: list[tuple[Order, Order, int]]
    cancelled: list[Order]


def sort_for_auction(orders: Iterable[Order]) -> tuple[list[Order], list[Order]]:
    """(bids, offers) of `orders` in auction order (see the module docstring)."""
    bids: list[Order] = []
    offers: list[Order] = []
    buy = Side.BUY
    for o in orders:
        (bids if o.side is buy else offers).append(o)
    bids.sort(key=lambda o: (-o.limit_price, o.priority))
    offers.sort(key=lambda o: (o.limit_price, o.priority))
    return bids, offers


def clear_uniform(bids: Sequence[Order], offers: Sequence[Order]) -> Clearing:
    """Walk `bids` and `offers` (already in auction order) to the uniform-price clearing.

    Quantities come from each order's ``remaining_wh``; nothing is mutated.
    """
    fills: list[tuple[Order, Order, int]] = []
    cancelled: list[Order] = []
    nb, no = len(bids), len(offers)
    if nb == 0 or no == 0:
        return Clearing(None, 0, fills, cancelled)
    i = j = 0
    b, s = bids[0], offers[0]
    b_left, s_left = b.remaining_wh, s.remaining_wh
    volume = 0
    marginal_bid = marginal_offer = 0
    append = fills.append
    while b.limit_price >= s.limit_price:
        if b.account_id == s.account_id:
            if b.priority > s.priority:
                cancelled.append(b)
                i += 1
                if i == nb:
                    break
                b = bids[i]
                b_left = b.remaining_wh
            else:
                cancelled.append(s)
                j += 1
                if j == no:
                    break
                s = offers[j]
                s_left = s.remaining_wh
            continue
        q = b_left if b_left < s_left else s_left
        append((b, s, q))
        volume += q
        marginal_bid, marginal_offer = b.limit_price, s.limit_price
        b_left -= q
        s_left -= q
        if b_left == 0:
            i += 1
            if i == nb:
                break
            b = bids[i]
            b_left = b.remaining_wh
        if s_left == 0:
            j += 1
            if j == no:
                break
            s = offers[j]
            s_left = s.remaining_wh
    if not fills:
        return Clearing(None, 0, fills, cancelled)
    return Clearing((marginal_bid + marginal_offer) // 2, volume, fills, cancelled)
