"""Trades and grid settlement: a P2P trade settled against delivered Tgen with price, platform fee
and distribution charge; unsold Tgen sold to the grid at the feed-in tariff; grid purchases at
the retail tariff; deposits of payment credit. Each is one atomic entry."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rules.ledger.entries import (
    DSO_FEE_ACCOUNT,
    GRID_ACCOUNT,
    MARKET_KINDS,
    PLATFORM_FEE_ACCOUNT,
    PPM,
    WH_PER_KWH,
    Entry,
    EntryKind,
    LedgerRuleError,
    LotFlag,
    Mint,
    Pool,
    Posting,
    convert,
    site_account,
)
from rules.ledger.state import (
    EntryWriter,
)


@dataclass(frozen=True, slots=True)
class TradeTerms:
    """Price and charges of a P2P trade, integer minor units per kWh and ppm."""

    price_minor_per_kwh: int
    platform_fee_minor_per_kwh: int = 0
    dso_fee_minor_per_kwh: int = 0
    loss_ppm: int = 0  # distribution losses borne by the buyer's token (not the payment)

    def __post_init__(self) -> None:
        if (
            min(
                self.price_minor_per_kwh,
                self.platform_fee_minor_per_kwh,
                self.dso_fee_minor_per_kwh,
                self.loss_ppm,
            )
            < 0
            or self.loss_ppm > PPM
        ):
            raise ValueError("trade terms must be non-negative, losses at most 1e6 ppm")


class TradingRules(EntryWriter):
    """The engine's trade and grid-settlement entries (mixed into LedgerEngine)."""

    def settle_trade(
        self,
        seller: str,
        buyer: str,
        delivery: tuple[int, int],
        wh: int,
        terms: TradeTerms,
        trade_id: str = "",
    ) -> Entry | None:
        """Settle min(traded, delivered): burn the seller's tradable Tgen of the delivery window
        [start, end) FIFO, mint the buyer `q - losses`, move price and fees. One atomic entry;
        None when nothing was delivered. Raises LedgerRuleError if the buyer cannot pay."""
        if wh <= 0 or seller == buyer:
            raise LedgerRuleError("a trade needs a positive quantity and two parties")
        available = sum(
            left
            for lot, left in self.state.lots_of(seller, Pool.TGEN)
            if lot.flags & LotFlag.TRADABLE and delivery[0] <= lot.interval_start < delivery[1]
        )
        q = min(wh, available)
        if q == 0:
            return None
        burns = self._fifo_burns(seller, Pool.TGEN, q, tradable=True, window=delivery)
        loss = convert(f"loss:{seller}", q, terms.loss_ppm, PPM, self._carry(f"loss:{seller}"))
        convs = [loss]
        outs = []
        for name, rate in (
            ("value", terms.price_minor_per_kwh),
            ("platform", terms.platform_fee_minor_per_kwh),
            ("dso", terms.dso_fee_minor_per_kwh),
        ):
            key = f"{name}:{buyer}"
            c = convert(key, q, rate, WH_PER_KWH, self._carry(key))
            convs.append(c)
            outs.append(c.out)
        value, fee, dso = outs
        seq = self.state.next_seq
        postings = [
            Posting(site_account(buyer), debit=value + fee + dso),
            Posting(site_account(seller), credit=value),
            Posting(PLATFORM_FEE_ACCOUNT, credit=fee),
            Posting(DSO_FEE_ACCOUNT, credit=dso),
        ]
        lot_t = self.state.lots[burns[0].lot_id].interval_start
        return self._emit(
            kind=EntryKind.P2P_TRADE,
            site=seller,
            interval_start=lot_t,
            burns=burns,
            mints=(Mint(f"{seq}/0", buyer, Pool.TGEN, q - loss.out, LotFlag.RECEIVED, lot_t),)
            if q - loss.out
            else (),
            postings=tuple(p for p in postings if p.debit or p.credit),
            exit_wh=loss.out,
            convs=tuple(convs),
            counterparty=buyer,
            ref=trade_id,
            requested_wh=wh,
        )

    def expire_unsold(
        self,
        before: int,
        feed_in_minor_per_kwh: int,
        keep: Collection[tuple[str, int, int]] = (),
    ) -> list[Entry]:
        """Settlement deadline: tradable Tgen of intervals starting before `before` is sold to
        the grid (burned, paid at the feed-in tariff), one entry per site and interval. `keep`
        names (site, start, end) windows still needed, e.g. by a trade not settled yet."""
        out: list[Entry] = []
        groups: dict[tuple[str, int], int] = {}
        kept: dict[str, list[tuple[int, int]]] = {}
        for site, start, end in keep:
            kept.setdefault(site, []).append((start, end))
        for (site, pool), items in sorted(self.state.fifo.items()):
            if pool is not Pool.TGEN:
                continue
            windows = kept.get(site, ())
            for t, _, lid in items:
                if any(a <= t < b for a, b in windows):
                    continue
                if t < before and self.state.lots[lid].flags & LotFlag.TRADABLE:
                    groups[(site, t)] = groups.get((site, t), 0) + self.state.remaining[lid]
        for (site, t), wh in sorted(groups.items()):
            key = f"feed_in:{site}"
            c = convert(key, wh, feed_in_minor_per_kwh, WH_PER_KWH, self._carry(key))
            out.append(
                self._emit(
                    kind=EntryKind.GRID_SALE,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.TGEN, wh, tradable=True, window=(t, t + 1)),
                    exit_wh=wh,
                    convs=(c,),
                    postings=tuple(
                        p
                        for p in (
                            Posting(GRID_ACCOUNT, debit=c.out),
                            Posting(site_account(site), credit=c.out),
                        )
                        if c.out
                    ),
                )
            )
        return out

    def grid_purchase(
        self, site: str, interval_start: int, wh: int, retail_minor_per_kwh: int
    ) -> Entry:
        """Energy bought from the grid: payment only (no green token)."""
        key = f"retail:{site}"
        c = convert(key, wh, retail_minor_per_kwh, WH_PER_KWH, self._carry(key))
        return self._emit(
            kind=EntryKind.GRID_PURCHASE,
            site=site,
            interval_start=interval_start,
            convs=(c,),
            requested_wh=wh,
            postings=tuple(
                p
                for p in (
                    Posting(site_account(site), debit=c.out),
                    Posting(GRID_ACCOUNT, credit=c.out),
                )
                if c.out
            ),
        )

    def flex_reward(
        self,
        site: str,
        interval_start: int,
        event_id: str,
        delivered_wh: int,
        reward_minor_per_kwh: int,
    ) -> Entry:
        """Reward credits for `delivered_wh` of flexibility in dispatch event `event_id`:
        payment only (the energy was already tokenised by the site's interval records), from
        the grid settlement account, at the reward rate per kWh with the remainder carried."""
        if delivered_wh <= 0 or not event_id:
            raise LedgerRuleError("a reward needs delivered Wh and its event")
        key = f"reward:{site}"
        c = convert(key, delivered_wh, reward_minor_per_kwh, WH_PER_KWH, self._carry(key))
        return self._emit(
            kind=EntryKind.FLEX_REWARD,
            site=site,
            interval_start=interval_start,
            convs=(c,),
            requested_wh=delivered_wh,
            ref=event_id,
            postings=tuple(
                p
                for p in (
                    Posting(GRID_ACCOUNT, debit=c.out),
                    Posting(site_account(site), credit=c.out),
                )
                if c.out
            ),
        )

    def record_market(
        self,
        kind: EntryKind,
        site: str,
        interval_start: int,
        market: bytes,
        *,
        counterparty: str = "",
        ref: str = "",
        requested_wh: int = 0,
    ) -> Entry:
        """Log a market leaf: an accepted order event or a matched trade (rules.market's canonical
        bytes). It moves nothing; a matched trade moves tokens and money when it settles."""
        if kind not in MARKET_KINDS:
            raise LedgerRuleError(f"{kind.name} is not a market entry kind")
        return self._emit(
            kind=kind,
            site=site,
            interval_start=interval_start,
            market=market,
            counterparty=counterparty,
            ref=ref,
            requested_wh=requested_wh,
        )

    def record_carbon(self, site: str, ref: str, event: bytes) -> Entry:
        """Log a carbon shop leaf (rules.carbon's canonical bytes of a listing, a paid order, a
        retirement or a withdrawal; `ref` the lot or order id). It moves nothing."""
        if not event:
            raise LedgerRuleError("a CARBON leaf carries its shop event")
        return self._emit(kind=EntryKind.CARBON, site=site, interval_start=0, market=event, ref=ref)

    def deposit(self, site: str, at: int, amount_minor: int, ref: str = "") -> Entry:
        """Credits paid in by a homeowner, through the grid settlement account (`ref`: the
        top-up that paid them, if any)."""
        if amount_minor <= 0:
            raise LedgerRuleError("deposit must be positive")
        return self._emit(
            kind=EntryKind.DEPOSIT,
            site=site,
            interval_start=at,
            ref=ref,
            postings=(
                Posting(GRID_ACCOUNT, debit=amount_minor),
                Posting(site_account(site), credit=amount_minor),
            ),
        )

    def withdraw(self, site: str, at: int, amount_minor: int, ref: str) -> Entry:
        """Credits paid out to a homeowner (redemption `ref`), through the grid settlement
        account; refused like any posting that would take the site's account below zero."""
        if amount_minor <= 0:
            raise LedgerRuleError("a withdrawal must be positive")
        if not ref:
            raise LedgerRuleError("a withdrawal names its redemption")
        return self._emit(
            kind=EntryKind.WITHDRAWAL,
            site=site,
            interval_start=at,
            ref=ref,
            postings=(
                Posting(site_account(site), debit=amount_minor),
                Posting(GRID_ACCOUNT, credit=amount_minor),
            ),
        )
