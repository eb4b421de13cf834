"""Pre-trade checks of the VPP market: pure rules the order service applies before it logs an
order event. Each refusal has its own stable reason and HTTP status.

Owns: the market's configuration (interval, matching mode, tick, price band, fees, gate closure,
how far ahead the book opens, the forecast share offers may use, the credit limit) and the
arithmetic of coverage: what an offer may sell and what a bid may cost. Integers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rules.market import MatchingMode, Side, TimeInForce

WH_PER_KWH = 1_000
PERMILLE = 1_000


class MarketReason(StrEnum):
    """Why an order request was refused (stable: clients may branch on it)."""

    INVALID = "invalid"
    OFF_TICK = "off_tick"
    PRICE_OUT_OF_BAND = "price_out_of_band"
    MISALIGNED_INTERVAL = "misaligned_interval"
    GATE_CLOSED = "gate_closed"
    NOT_OPEN_YET = "not_open_yet"
    NOT_YOUR_SITE = "not_your_site"
    SITE_NOT_APPROVED = "site_not_approved"
    SELF_TRADE = "self_trade"
    INSUFFICIENT_TOKENS = "insufficient_tokens"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    UNKNOWN_ORDER = "unknown_order"
    NOT_RESTING = "not_resting"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    UNAVAILABLE = "unavailable"


_STATUS = {
    MarketReason.INVALID: 422,
    MarketReason.OFF_TICK: 422,
    MarketReason.PRICE_OUT_OF_BAND: 422,
    MarketReason.MISALIGNED_INTERVAL: 422,
    MarketReason.GATE_CLOSED: 409,
    MarketReason.NOT_OPEN_YET: 422,
    MarketReason.NOT_YOUR_SITE: 403,
    MarketReason.SITE_NOT_APPROVED: 403,
    MarketReason.SELF_TRADE: 409,
    MarketReason.INSUFFICIENT_TOKENS: 422,
    MarketReason.INSUFFICIENT_CREDIT: 422,
    MarketReason.UNKNOWN_ORDER: 404,
    MarketReason.NOT_RESTING: 409,
    MarketReason.IDEMPOTENCY_CONFLICT: 409,
    MarketReason.UNAVAILABLE: 503,
}


@dataclass(frozen=True, slots=True)
class MarketRefusal:
    """A refused request: the reason, a plain sentence, and the HTTP status it maps to."""

    reason: MarketReason
    detail: str

    @property
    def status(self) -> int:
        return _STATUS[self.reason]


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """One market's rules. Prices are whole minor currency units per kWh."""

    interval_s: int = 300
    mode: MatchingMode = MatchingMode.CONTINUOUS
    tick: int = 1
    feed_in_price: int = 8  # the band's floor: what the grid pays for exported energy
    retail_price: int = 32  # the band's ceiling: what the grid charges for imported energy
    platform_fee: int = 1  # per kWh, paid by the buyer
    dso_fee: int = 4  # distribution charge per kWh, paid by the buyer
    gate_closure_s: int = 300  # no orders for an interval once it starts in less than this
    horizon_s: int = 24 * 3600  # the book of an interval opens this long before it starts
    forecast_share_permille: int = 500  # share of the forecast an offer may sell ahead
    credit_limit_minor: int = 0  # how far a buyer may bid beyond its payment credits

    def __post_init__(self) -> None:
        if self.interval_s not in (300, 900):
            raise ValueError("a market's interval is 300 or 900 s")
        if self.tick <= 0 or not 0 <= self.feed_in_price <= self.retail_price:
            raise ValueError("the tick must be positive and the band feed-in <= retail")
        if min(self.platform_fee, self.dso_fee, self.credit_limit_minor, self.gate_closure_s) < 0:
            raise ValueError("fees, credit limit and gate closure are not negative")
        if not 0 <= self.forecast_share_permille <= PERMILLE:
            raise ValueError("the forecast share is 0..1000 permille")
        if self.credit_limit_minor > 0:
            # A bid allowed past the buyer's credits could never settle: the ledger rules keep
            # every account but the grid's at or above zero (docs/market.md).
            raise ValueError("a credit limit above 0 is not supported yet")

    def gate_of(self, interval_start: int) -> int:
        """When orders for the interval stop (Unix s)."""
        return interval_start - self.gate_closure_s


def check_terms(
    cfg: MarketConfig,
    *,
    side: Side,
    interval_start: int,
    quantity_wh: int,
    limit_price: int,
    tif: TimeInForce,
    min_fill_wh: int,
    now_s: int,
) -> MarketRefusal | None:
    """The order's own terms against the market's rules and the clock."""
    if quantity_wh <= 0 or not 0 <= min_fill_wh <= quantity_wh:
        return MarketRefusal(MarketReason.INVALID, "quantity must be > 0 and min fill 0..quantity")
    if cfg.mode is MatchingMode.CALL_AUCTION and (tif is not TimeInForce.GTC or min_fill_wh):
        return MarketRefusal(
            MarketReason.INVALID, "this market is a call auction: GTC orders without min fill"
        )
    if limit_price % cfg.tick:
        return MarketRefusal(
            MarketReason.OFF_TICK, f"limit price {limit_price} is not a multiple of {cfg.tick}"
        )
    if not cfg.feed_in_price <= limit_price <= cfg.retail_price:
        return MarketRefusal(
            MarketReason.PRICE_OUT_OF_BAND,
            f"limit price {limit_price} is outside {cfg.feed_in_price}..{cfg.retail_price} "
            "(feed-in tariff to retail price)",
        )
    if interval_start % cfg.interval_s:
        return MarketRefusal(
            MarketReason.MISALIGNED_INTERVAL,
            f"interval {interval_start} is not a multiple of {cfg.interval_s} s",
        )
    if now_s >= cfg.gate_of(interval_start):
        return MarketRefusal(
            MarketReason.GATE_CLOSED,
            f"the gate of interval {interval_start} closed at {cfg.gate_of(interval_start)}",
        )
    if interval_start - now_s > cfg.horizon_s:
        return MarketRefusal(
            MarketReason.NOT_OPEN_YET,
            f"the book of interval {interval_start} opens {cfg.horizon_s} s before it starts",
        )
    _ = side
    return None


def bid_cost_minor(cfg: MarketConfig, wh: int, limit_price: int) -> int:
    """The most a bid of `wh` at `limit_price` can cost the buyer, rounded up: the trade with
    both fees, or, should the seller under-deliver, the grid's retail price for the rest."""
    per_kwh = max(limit_price + cfg.platform_fee + cfg.dso_fee, cfg.retail_price)
    return -(-wh * per_kwh // WH_PER_KWH)


def offer_allowance(cfg: MarketConfig, tradable_wh: int, forecast_wh: int) -> int:
    """What a site may offer for an interval: its tradable Tgen of that interval plus the
    market's share of its forecast."""
    return tradable_wh + forecast_wh * cfg.forecast_share_permille // PERMILLE
