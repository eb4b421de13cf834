"""The policy engine: runs homeowners' automated trading policies every round.

Owns: turning each enabled policy into resting orders for the next delivery interval open for
orders (cloud.domain.policies decides what, from the forecast, the room to offer and the
battery's live state in the ledger; this places them, or re-prices and resizes them, through the
order service, which applies every pre-trade check). Each order carries its policy as `source`,
and its idempotency key names the policy, interval and side, so a restart never doubles an order.
"""

from __future__ import annotations

import logging

from cloud.domain.policies import TradingPolicy, intents
from cloud.services.market import MarketError, MarketService, OrderRequest
from cloud.storage.market_store import MarketStore
from rules.market import Side

log = logging.getLogger(__name__)


class PolicyEngine:
    """Places and amends the orders of every enabled policy."""

    def __init__(self, market: MarketService, store: MarketStore) -> None:
        self.market = market
        self.store = store
        self.placed = 0
        self.amended = 0
        self.refused = 0

    async def run_once(self) -> int:
        """One round for the next open interval; returns orders placed or amended."""
        t = self.market.next_interval()
        changed = 0
        for policy in await self.store.policies():
            if policy.enabled:
                changed += await self._run(policy, t)
        return changed

    async def _run(self, p: TradingPolicy, t: int) -> int:
        m = self.market
        forecast = m.forecast(m.ledger.engine, p.site_id, t)
        stored, capacity = m.ledger.battery_state(p.site_id)
        keys = {side: self._key(p, t, side) for side in (Side.BUY, Side.SELL)}
        # The room counts the policy's own resting offer as committed; it is the policy's to
        # resize, so it is added back (else a second round would shrink the offer by itself).
        room = m.offer_room(p.site_id, t)
        own_offer = m.order_for_key(p.account_id, keys[Side.SELL])
        if own_offer is not None and own_offer.is_active:
            room += own_offer.quantity_wh
        wants = intents(
            p, offer_room_wh=room, forecast_wh=forecast, stored_wh=stored, capacity_wh=capacity
        )
        changed = 0
        for want in wants:
            key = keys[want.side]
            try:
                if not m.knows_key(p.account_id, key):
                    await m.place(
                        p.account_id,
                        OrderRequest(
                            key,
                            p.site_id,
                            want.side,
                            t,
                            want.quantity_wh,
                            want.limit_price,
                            source=p.source,
                        ),
                    )
                    self.placed += 1
                    changed += 1
                    continue
                o = m.order_for_key(p.account_id, key)
                if o is None or not o.is_active:
                    continue
                # Only what differs: a price change loses time priority, and so does a larger
                # quantity; a smaller one keeps it (the market's rule). The total must stay
                # above what was filled, so a wish at or below that leaves the quantity be.
                price = None if o.limit_price == want.limit_price else want.limit_price
                quantity = (
                    want.quantity_wh
                    if want.quantity_wh != o.quantity_wh and want.quantity_wh > o.filled_wh
                    else None
                )
                if price is None and quantity is None:
                    continue
                await m.amend(p.account_id, o.order_id, limit_price=price, quantity_wh=quantity)
                self.amended += 1
                changed += 1
            except MarketError as exc:  # e.g. not enough tokens or credits yet: next round
                self.refused += 1
                log.debug("policy %s: %s", p.source, exc)
        return changed

    @staticmethod
    def _key(p: TradingPolicy, t: int, side: Side) -> str:
        """The idempotency key of the policy's order for one interval and side."""
        return f"{p.source}:{t}:{'buy' if side is Side.BUY else 'sell'}"
