"""Market leaves in the ledger: order events and matched trades move nothing, carry their bytes
canonically, and a matched trade settles at most once."""

from __future__ import annotations

import dataclasses

import pytest

from rules.ledger import (
    MARKET_SITE,
    Entry,
    EntryKind,
    LedgerEngine,
    LedgerRuleError,
    Posting,
    TradeTerms,
    check_conservation,
    replay,
)
from tests.unit.test_ledger_rules import T0, flows


def test_market_leaves_round_trip_and_replay() -> None:
    eng = LedgerEngine()
    ev = eng.record_market(EntryKind.ORDER_EVENT, "seller", T0, b"\xa1\x00\x01")
    close = eng.record_market(EntryKind.ORDER_EVENT, MARKET_SITE, T0, b"\xa1\x00\x02")
    tr = eng.record_market(
        EntryKind.TRADE_MATCH, "seller", T0, b"\xa1\x00\x03", counterparty="buyer",
        ref="7.0", requested_wh=500,
    )
    for e in (ev, close, tr):
        assert Entry.from_bytes(e.to_bytes()) == e
    assert replay(eng.entries).snapshot() == eng.state.snapshot()
    assert check_conservation(eng.entries) == []


def test_market_leaves_move_nothing_and_other_kinds_carry_no_market_bytes() -> None:
    eng = LedgerEngine()
    ev = eng.record_market(EntryKind.ORDER_EVENT, "seller", T0, b"\x01")
    moving = dataclasses.replace(ev, postings=(Posting("site:seller", 5, 5),))
    with pytest.raises(LedgerRuleError, match="moves nothing"):
        replay([moving])
    with pytest.raises(LedgerRuleError, match="without its market bytes"):
        replay([dataclasses.replace(ev, market=b"")])
    dep = LedgerEngine().deposit("buyer", T0, 100)
    with pytest.raises(LedgerRuleError, match="carries market bytes"):
        replay([dataclasses.replace(dep, market=b"\x01")])
    with pytest.raises(LedgerRuleError, match="not a market entry kind"):
        eng.record_market(EntryKind.DEPOSIT, "x", T0, b"\x01")


def test_a_matched_trade_settles_once() -> None:
    eng = LedgerEngine()
    eng.close_interval("seller", flows(T0, g=1000, e=1000), None)
    eng.deposit("buyer", T0, 1000)
    first = eng.settle_trade("seller", "buyer", (T0, T0 + 900), 300, TradeTerms(100), "9.0")
    assert first is not None
    with pytest.raises(LedgerRuleError, match="already settled"):
        eng.settle_trade("seller", "buyer", (T0, T0 + 900), 300, TradeTerms(100), "9.0")
    assert replay(eng.entries).snapshot() == eng.state.snapshot()
