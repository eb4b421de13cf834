"""The policy engine: runs homeowners' automated trading policies every round.

Owns: turning each enabled policy into resting orders for the next delivery interval open for
orders (cloud.domain.policies decides what; this places or re-prices them through the order
service, which applies every pre-trade check). Each order carries its policy as `source`, and its
idempotency key names the policy, interval and side, so a restart never doubles an order.
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
        changed = 0
        for want in intents(p, offer_room_wh=m.offer_room(p.site_id, t), forecast_wh=forecast):
            key = f"{p.source}:{t}:{'buy' if want.side is Side.BUY else 'sell'}"
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
                if o is not None and o.is_active and o.limit_price != want.limit_price:
                    await m.amend(p.account_id, o.order_id, limit_price=want.limit_price)
                    self.amended += 1
                    changed += 1
            except MarketError as exc:  # e.g. not enough tokens or credits yet: next round
                self.refused += 1
                log.debug("policy %s: %s", p.source, exc)
        return changed
