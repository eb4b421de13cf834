"""The carbon shop on the ledger: pure, integer-only.

`codec`: the canonical bytes of the shop's events (a lot listed, an order paid, units retired, a
listing withdrawn) that CARBON leaves of the ledger log carry. `book`: the price rule and
`ShopBook`, which replays those events and refuses a serial sold or retired twice, a retirement
without a paid order, a total that is not the sum of its lines, or a gridmint_solar lot whose
tokens were minted to another site, back another lot, or do not cover its kg. See
docs/carbon-shop.md, "On the ledger".
"""

from __future__ import annotations

from rules.carbon.book import (
    GRIDMINT_SOLAR,
    CarbonRuleError,
    MintedToken,
    ShopBook,
    avoided_kg,
    line_price_minor,
)
from rules.carbon.codec import (
    Backing,
    CarbonCodecError,
    ListingWithdrawn,
    LotListed,
    OrderPaid,
    PaidLine,
    Retired,
    RetiredSpan,
    ShopEvent,
    decode_shop_event,
    encode_shop_event,
)

__all__ = [
    "GRIDMINT_SOLAR",
    "Backing",
    "CarbonCodecError",
    "CarbonRuleError",
    "ListingWithdrawn",
    "LotListed",
    "MintedToken",
    "OrderPaid",
    "PaidLine",
    "Retired",
    "RetiredSpan",
    "ShopBook",
    "ShopEvent",
    "avoided_kg",
    "decode_shop_event",
    "encode_shop_event",
    "line_price_minor",
]
