"""Token ledger rules: pure, integer-only logic (no I/O, no database, no clock reads).

Modules: `entries` (kinds, value types, canonical bytes), `state` (the transition function,
`apply`/`replay`), `engine` (interval closes), `trading` (trades and grid settlement), `checks`
(independent conservation checks). Their public names are re-exported here.

Owns: how the accepted records of a site's interval turn into ledger entries (mint Tgen, burn
self-consumption, exchange Tgen for Tstorage, decay, discharge, reconcile with the measured state
of charge), how trades, grid sales and grid purchases move tokens and payment credits, the
canonical bytes of an entry (a leaf of the Merkle log), and the replay that recomputes every
balance from the entries alone. See docs/tokens.md, "Ledger rules".

Model. Every entry is a set of *lot movements* plus a payment journal:

* a **lot** is a quantity of tokens (Wh) in one pool (Tgen, Tstorage or set-aside) owned by one
  site, with a deterministic id: the token id of the signed record for generation, else
  ``"{entry seq}/{n}"``. A lot is minted once and burned piecewise, front to back, never beyond
  what remains, so "no token spent twice" is a lookup;
* every entry balances in Wh: ``gen_wh + sum(burns) == sum(mints) + exit_wh``, where ``gen_wh``
  is metered generation entering the ledger (MINT_GEN only) and ``exit_wh`` is energy leaving it
  (consumed on site, sold to the grid, lost in storage or distribution);
* every rate is an integer fraction applied with a carried remainder (``Conversion``), so a long
  run of intervals converts exactly ``floor(total * num / den)``: nothing is lost to rounding;
* payments are ``Posting(account, debit, credit)`` in minor currency units; every entry's debits
  equal its credits.

``replay(entries)`` applies the same transition function the engine uses, so an independent
verifier recomputes the engine's state from the log, and refuses (``LedgerRuleError`` naming the
entry index) a double spend, a negative balance, an unbalanced entry, a wrong conversion, or
stored tokens above the measured battery energy.
"""

from __future__ import annotations

from rules.ledger.checks import (
    check_conservation,
)
from rules.ledger.engine import (
    CloseResult,
    LedgerConfig,
    LedgerEngine,
)
from rules.ledger.entries import (
    CARBON_SITE,
    DSO_FEE_ACCOUNT,
    ENTRY_VERSION,
    EVENT_KINDS,
    GRID_ACCOUNT,
    INTERVAL_KINDS,
    MARKET_KINDS,
    MARKET_SITE,
    NO_BATTERY,
    PERMILLE,
    PLATFORM_FEE_ACCOUNT,
    PPM,
    SECONDS_PER_HOUR,
    WH_PER_KWH,
    Allocation,
    BatteryParams,
    Burn,
    Conversion,
    Entry,
    EntryKind,
    IntervalFlag,
    IntervalFlows,
    LedgerRuleError,
    LotFlag,
    Measurement,
    Mint,
    Pool,
    Posting,
    RecordFlows,
    RecordRef,
    allocate,
    convert,
    site_account,
)
from rules.ledger.state import (
    EntryWriter,
    LedgerState,
    Lot,
    apply,
    replay,
)
from rules.ledger.trading import (
    TradeTerms,
    TradingRules,
)

__all__ = [
    "Allocation",
    "BatteryParams",
    "Burn",
    "CARBON_SITE",
    "CloseResult",
    "Conversion",
    "DSO_FEE_ACCOUNT",
    "ENTRY_VERSION",
    "Entry",
    "EntryKind",
    "EntryWriter",
    "EVENT_KINDS",
    "GRID_ACCOUNT",
    "INTERVAL_KINDS",
    "IntervalFlag",
    "IntervalFlows",
    "RecordFlows",
    "LedgerConfig",
    "LedgerEngine",
    "LedgerRuleError",
    "LedgerState",
    "Lot",
    "LotFlag",
    "MARKET_KINDS",
    "MARKET_SITE",
    "Measurement",
    "Mint",
    "NO_BATTERY",
    "PERMILLE",
    "PLATFORM_FEE_ACCOUNT",
    "PPM",
    "Pool",
    "Posting",
    "RecordRef",
    "SECONDS_PER_HOUR",
    "TradeTerms",
    "TradingRules",
    "WH_PER_KWH",
    "allocate",
    "apply",
    "check_conservation",
    "convert",
    "replay",
    "site_account",
]
