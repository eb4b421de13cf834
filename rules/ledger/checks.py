"""Independent checks of a log, beyond replay: conservation per site and interval, per lot, in
total, and of payment balances."""

from __future__ import annotations

from collections.abc import Sequence

from rules.ledger.entries import (
    GRID_ACCOUNT,
    Entry,
    EntryKind,
    LedgerRuleError,
)
from rules.ledger.state import (
    replay,
)

# --------------------------------------------------------------------------------------------
# Independent checks


def check_conservation(entries: Sequence[Entry]) -> list[str]:
    """Names of conservation violations (empty when the log is sound).

    Replays the log (any rule broken ends the check with that violation), then checks, from the
    entries alone: per site and interval, generation minted = burned + held + transferred;
    every lot's burns never exceed its mint; total generation = energy that left + energy held;
    payment balances sum to zero.
    """
    problems: list[str] = []
    try:
        state = replay(entries)
    except LedgerRuleError as exc:
        return [str(exc)]

    minted: dict[str, int] = {}
    origin: dict[str, tuple[str, int]] = {}
    per_interval: dict[tuple[str, int], dict[str, int]] = {}
    for e in entries:
        for x in e.mints:
            minted[x.lot_id] = x.wh
            if e.kind is EntryKind.MINT_GEN:
                origin[x.lot_id] = (x.site, x.interval_start)
                row = per_interval.setdefault((x.site, x.interval_start), {})
                row["minted"] = row.get("minted", 0) + x.wh
    spent: dict[str, int] = {}
    for i, e in enumerate(entries):
        for b in e.burns:
            spent[b.lot_id] = spent.get(b.lot_id, 0) + b.wh
            if spent[b.lot_id] > minted.get(b.lot_id, 0):
                problems.append(f"entry {i}: lot {b.lot_id} spent beyond its mint")
            if b.lot_id in origin:
                row = per_interval[origin[b.lot_id]]
                if e.kind is EntryKind.P2P_TRADE:
                    bucket = "transferred"
                elif e.kind in (EntryKind.BURN_SELF_CONSUMPTION, EntryKind.GRID_SALE):
                    bucket = "burned"
                else:
                    bucket = "stored"
                row[bucket] = row.get(bucket, 0) + b.wh
    for lid, (site, t) in origin.items():
        row = per_interval[(site, t)]
        row["held"] = row.get("held", 0) + state.remaining.get(lid, 0)
    for (site, t), row in sorted(per_interval.items()):
        rest = sum(row.get(k, 0) for k in ("burned", "stored", "transferred", "held"))
        if row.get("minted", 0) != rest:
            problems.append(
                f"site {site} interval {t}: minted {row.get('minted', 0)} != burned + stored + "
                f"transferred + held {rest}"
            )
    gen = sum(e.gen_wh for e in entries)
    out = sum(e.exit_wh for e in entries)
    if gen != out + state.held_wh():
        problems.append(f"generation {gen} != exited {out} + held {state.held_wh()}")
    if sum(state.balances.values()) != 0:
        problems.append("payment balances do not sum to zero")
    for acct, bal in state.balances.items():
        if bal < 0 and acct != GRID_ACCOUNT:
            problems.append(f"account {acct} is negative")
    return problems
