"""Canonical bytes of order events and trades: round trips, and refusals of anything else."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.market.codec import (
    MarketCodecError,
    decode_event,
    decode_trade,
    encode_event,
    encode_trade,
)
from rules.market.orders import Amend, Cancel, CloseGate, Place, Side, TimeInForce, Trade

ids = st.text(min_size=1, max_size=12)
u = st.integers(min_value=0, max_value=2**40)
places = st.builds(
    Place, seq=u, order_id=ids, account_id=ids, site_id=ids, side=st.sampled_from(Side),
    interval_start=u, quantity_wh=u, limit_price=u, tif=st.sampled_from(TimeInForce),
    min_fill_wh=u, source=ids,
)
amends = st.builds(
    Amend, seq=u, order_id=ids, limit_price=st.none() | u, quantity_wh=st.none() | u
)
events = places | amends | st.builds(Cancel, seq=u, order_id=ids) | st.builds(
    CloseGate, seq=u, interval_start=u
)
trades = st.builds(
    Trade, trade_id=ids, interval_start=u, buy_order_id=ids, sell_order_id=ids,
    buyer_account_id=ids, buyer_site_id=ids, seller_account_id=ids, seller_site_id=ids,
    quantity_wh=u, price=u, taker_seq=u, maker_seq=u, buy_seq=u, sell_seq=u,
)


@given(events)
def test_events_round_trip(ev: Place | Amend | Cancel | CloseGate) -> None:
    raw = encode_event(ev)
    assert decode_event(raw) == ev
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)  # the fast encoder is canonical


@given(trades)
def test_trades_round_trip(t: Trade) -> None:
    raw = encode_trade(t)
    assert decode_trade(raw) == t
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)


def test_refusals_name_the_problem() -> None:
    place = encode_event(Place(1, "o", "a", "s", Side.SELL, 900, 500, 12))
    with pytest.raises(MarketCodecError, match="not CBOR"):
        decode_event(b"\xff")
    with pytest.raises(MarketCodecError, match="not an order event"):
        decode_event(encode_trade(Trade("1.0", 0, "b", "s", "a", "x", "c", "y", 1, 1, 1, 0, 0, 1)))
    with pytest.raises(MarketCodecError, match="not a trade"):
        decode_trade(place)
    m = cbor2.loads(place)
    with pytest.raises(MarketCodecError, match="unknown keys"):
        decode_event(cbor2.dumps({**m, 99: 1}, canonical=True))
    with pytest.raises(MarketCodecError, match="unsigned integer"):
        decode_event(cbor2.dumps({**m, 8: -5}, canonical=True))
    with pytest.raises(MarketCodecError, match="not canonical"):
        decode_event(_non_canonical(place))
    del m[12]
    with pytest.raises(MarketCodecError, match="malformed"):
        decode_event(cbor2.dumps(m, canonical=True))


def _non_canonical(data: bytes) -> bytes:
    """The same map with its seq (key 2, value 1) written as a two-byte integer."""
    i = data.index(b"\x02\x01")
    return data[:i] + b"\x02\x18\x01" + data[i + 2 :]
