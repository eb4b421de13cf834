"""Settlement of matched trades against signed delivery.

Owns: when a trade settles and what its settlement writes. A trade settles once the seller's
delivery interval is closed in the ledger (its signed records are in), or, for a seller that
never delivered, once the ledger stopped waiting for it. It settles for the smaller of traded
and delivered energy through the ledger rules (a P2P_TRADE entry: the seller's tradable Tgen of
that interval burned, the buyer's minted, price, platform fee and distribution charge moved in
the payment journal); a shortfall is bought by the buyer from the grid at the retail price (a
GRID_PURCHASE entry). The trade's row records what was delivered and paid, in the same unit of
work as the entries. A surplus (tradable Tgen no trade took) is sold to the grid at the feed-in
price once its interval's trades are settled (GRID_SALE entries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.services.ledger import LedgerService
from cloud.services.market import MarketService
from cloud.storage.market_store import MarketStore, Settlement, TradeRow
from rules.ledger import (
    DSO_FEE_ACCOUNT,
    PLATFORM_FEE_ACCOUNT,
    Entry,
    LedgerEngine,
    LedgerRuleError,
    TradeTerms,
    site_account,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Settled:
    entries: list[Entry] = field(default_factory=list)
    settlement: Settlement | None = None


class SettlementService:
    """Settles the market's matched trades as their delivery intervals close."""

    def __init__(
        self,
        ledger: LedgerService,
        market: MarketService,
        store: MarketStore,
        now: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.market = market
        self.store = store
        self.now = now
        self.settled_count = 0
        self.surplus_sold_wh = 0  # sold to the grid at the feed-in price since the start

    def due(self) -> list[TradeRow]:
        """Unsettled trades whose seller's interval is closed, or waited for long enough."""
        now = int(self.now())
        closed = self.ledger.engine.state.closed
        give_up = self.ledger.max_wait_s
        return [
            t
            for t in self.market.unsettled()
            if (t.seller_site_id, t.interval_start) in closed
            or t.interval_start + t.interval_s + give_up <= now
        ]

    async def settle_due(self) -> int:
        """Settle every due trade (one unit of work each); returns how many settled."""
        done = 0
        for trade in self.due():
            if await self._settle(trade):
                done += 1
        self.settled_count += done
        return done

    async def sell_surplus(self) -> int:
        """The surplus settles with the grid: a seller's tradable Tgen that no trade took (it
        delivered more than it sold, or did not trade) is sold at the feed-in price, one
        GRID_SALE entry per site and interval. Only intervals that have ended (so their gates
        are closed) are sold, and a seller's interval with a trade still to settle keeps its
        Tgen for that trade. Returns the Wh sold."""
        now = int(self.now())
        keep = [
            (t.seller_site_id, t.interval_start, t.interval_start + t.interval_s)
            for t in self.market.unsettled()
        ]
        price = self.market.config.feed_in_price
        entries = await self.ledger.append(lambda engine: engine.expire_unsold(now, price, keep))
        sold = sum(e.exit_wh for e in entries)
        self.surplus_sold_wh += sold
        return sold

    async def _settle(self, t: TradeRow) -> bool:
        cfg = self.market.config
        now_ms = int(self.now() * 1000)
        out = _Settled()

        def emit(engine: LedgerEngine) -> list[Entry]:
            if t.trade_id in engine.state.settled_trades:
                return []
            terms = TradeTerms(t.price, cfg.platform_fee, cfg.dso_fee)
            window = (t.interval_start, t.interval_start + t.interval_s)
            try:
                trade = engine.settle_trade(
                    t.seller_site_id, t.buyer_site_id, window, t.quantity_wh, terms, t.trade_id
                )
            except LedgerRuleError as exc:  # the buyer cannot pay now: try again next round
                log.warning("trade %s cannot settle yet: %s", t.trade_id, exc)
                return []
            delivered = 0 if trade is None else trade.burned_wh
            short = t.quantity_wh - delivered
            purchase = None
            if short:
                try:
                    purchase = engine.grid_purchase(
                        t.buyer_site_id, t.interval_start, short, cfg.retail_price
                    )
                except LedgerRuleError as exc:
                    log.warning("trade %s: the shortfall purchase failed: %s", t.trade_id, exc)
            entries = [e for e in (trade, purchase) if e is not None]
            if not entries:  # nothing delivered and the buyer cannot pay the grid: wait
                return []
            paid = _moved(trade)
            out.entries = entries
            out.settlement = Settlement(
                trade_id=t.trade_id,
                status="settled" if short == 0 else "short",
                settled_wh=delivered,
                settlement_seq=None if trade is None else trade.seq,
                shortfall_seq=None if purchase is None else purchase.seq,
                buyer_paid_minor=paid[site_account(t.buyer_site_id)][0],
                seller_received_minor=paid[site_account(t.seller_site_id)][1],
                platform_fee_minor=paid[PLATFORM_FEE_ACCOUNT][1],
                dso_fee_minor=paid[DSO_FEE_ACCOUNT][1],
                shortfall_cost_minor=_moved(purchase)[site_account(t.buyer_site_id)][0],
                settled_ms=now_ms,
            )
            return entries

        async def also(conn: AsyncConnection) -> None:
            if out.settlement is not None:
                await self.store.write_settlements(conn, [out.settlement])

        await self.ledger.append(emit, also)
        if out.settlement is None:
            return False
        self.market.settled(t.trade_id)
        return True


class _Moves(dict[str, tuple[int, int]]):
    def __missing__(self, key: str) -> tuple[int, int]:
        return (0, 0)


def _moved(entry: Entry | None) -> _Moves:
    """(debit, credit) per account of an entry's postings."""
    out = _Moves()
    for p in () if entry is None else entry.postings:
        d, c = out[p.account]
        out[p.account] = (d + p.debit, c + p.credit)
    return out
