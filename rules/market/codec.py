"""Canonical bytes of order events and trades: what a market leaf of the ledger log carries.

Encoding: canonical CBOR maps with small unsigned integer keys, no floats, defaults kept (so one
value has one encoding); `decode_event`/`decode_trade` refuse anything that does not re-encode
to the same bytes. Key 0 is the format version, key 1 the item type.

Imports cbor2 and the market's own types only, so the independent verifier can trust it.

Every map below is written with its keys in ascending order, which for uint keys below 24 is
the canonical order, and holds only ints, text and bytes, which encode alike in either mode: so
cbor2's plain encoder writes the canonical bytes, at a third of the cost of its canonical mode
(which sorts each map). Tests compare the two.
"""

from __future__ import annotations

from typing import Any

import cbor2

from rules.market.orders import (
    Amend,
    Cancel,
    CloseGate,
    Event,
    MarketRuleError,
    Place,
    Side,
    TimeInForce,
    Trade,
)

CODEC_VERSION = 1
_PLACE, _AMEND, _CANCEL, _CLOSE, _TRADE = 0, 1, 2, 3, 4
_NONE = -1  # an Amend field left unchanged


class MarketCodecError(MarketRuleError):
    """Bytes that are not a canonical order event or trade."""


def encode_event(ev: Event) -> bytes:
    """The canonical bytes of one order event."""
    m: dict[int, Any]
    if isinstance(ev, Place):
        m = {
            0: CODEC_VERSION,
            1: _PLACE,
            2: ev.seq,
            3: ev.order_id,
            4: ev.account_id,
            5: ev.site_id,
            6: int(ev.side),
            7: ev.interval_start,
            8: ev.quantity_wh,
            9: ev.limit_price,
            10: ev.tif.value,
            11: ev.min_fill_wh,
            12: ev.source,
        }
    elif isinstance(ev, Amend):
        m = {
            0: CODEC_VERSION,
            1: _AMEND,
            2: ev.seq,
            3: ev.order_id,
            8: _NONE if ev.quantity_wh is None else ev.quantity_wh,
            9: _NONE if ev.limit_price is None else ev.limit_price,
        }
    elif isinstance(ev, Cancel):
        m = {0: CODEC_VERSION, 1: _CANCEL, 2: ev.seq, 3: ev.order_id}
    else:
        m = {0: CODEC_VERSION, 1: _CLOSE, 2: ev.seq, 7: ev.interval_start}
    return cbor2.dumps(m)


def encode_trade(t: Trade) -> bytes:
    """The canonical bytes of one matched trade."""
    return cbor2.dumps(
        {
            0: CODEC_VERSION,
            1: _TRADE,
            2: t.taker_seq,
            3: t.trade_id,
            4: t.interval_start,
            5: t.buy_order_id,
            6: t.sell_order_id,
            7: t.buyer_account_id,
            8: t.buyer_site_id,
            9: t.seller_account_id,
            10: t.seller_site_id,
            11: t.quantity_wh,
            12: t.price,
            13: t.maker_seq,
            14: t.buy_seq,
            15: t.sell_seq,
        }
    )


def decode_event(data: bytes) -> Event:
    """Parse canonical event bytes; MarketCodecError names what is wrong."""
    m = _load(data)
    kind = m.get(1)
    try:
        ev: Event
        if kind == _PLACE:
            _keys(m, range(13))
            ev = Place(
                seq=_uint(m[2]),
                order_id=_text(m[3]),
                account_id=_text(m[4]),
                site_id=_text(m[5]),
                side=Side(_uint(m[6])),
                interval_start=_uint(m[7]),
                quantity_wh=_uint(m[8]),
                limit_price=_uint(m[9]),
                tif=TimeInForce(_text(m[10])),
                min_fill_wh=_uint(m[11]),
                source=_text(m[12]),
            )
        elif kind == _AMEND:
            _keys(m, (0, 1, 2, 3, 8, 9))
            ev = Amend(
                seq=_uint(m[2]),
                order_id=_text(m[3]),
                quantity_wh=_optional_uint(m[8]),
                limit_price=_optional_uint(m[9]),
            )
        elif kind == _CANCEL:
            _keys(m, (0, 1, 2, 3))
            ev = Cancel(seq=_uint(m[2]), order_id=_text(m[3]))
        elif kind == _CLOSE:
            _keys(m, (0, 1, 2, 7))
            ev = CloseGate(seq=_uint(m[2]), interval_start=_uint(m[7]))
        else:
            raise MarketCodecError(f"not an order event (type {kind!r})")
    except (KeyError, ValueError) as exc:
        if isinstance(exc, MarketCodecError):
            raise
        raise MarketCodecError(f"malformed order event: {exc}") from None
    if encode_event(ev) != data:
        raise MarketCodecError("order event bytes are not canonical")
    return ev


def decode_trade(data: bytes) -> Trade:
    """Parse canonical trade bytes; MarketCodecError names what is wrong."""
    m = _load(data)
    if m.get(1) != _TRADE:
        raise MarketCodecError(f"not a trade (type {m.get(1)!r})")
    try:
        _keys(m, range(16))
        t = Trade(
            trade_id=_text(m[3]),
            interval_start=_uint(m[4]),
            buy_order_id=_text(m[5]),
            sell_order_id=_text(m[6]),
            buyer_account_id=_text(m[7]),
            buyer_site_id=_text(m[8]),
            seller_account_id=_text(m[9]),
            seller_site_id=_text(m[10]),
            quantity_wh=_uint(m[11]),
            price=_uint(m[12]),
            taker_seq=_uint(m[2]),
            maker_seq=_uint(m[13]),
            buy_seq=_uint(m[14]),
            sell_seq=_uint(m[15]),
        )
    except (KeyError, ValueError) as exc:
        if isinstance(exc, MarketCodecError):
            raise
        raise MarketCodecError(f"malformed trade: {exc}") from None
    if encode_trade(t) != data:
        raise MarketCodecError("trade bytes are not canonical")
    return t


def _load(data: bytes) -> dict[int, Any]:
    try:
        m = cbor2.loads(data)
    except Exception:  # cbor2 raises several types for bad input
        raise MarketCodecError("market bytes are not CBOR") from None
    if not isinstance(m, dict) or m.get(0) != CODEC_VERSION:
        raise MarketCodecError(f"not a version {CODEC_VERSION} market item")
    return m


def _keys(m: dict[int, Any], allowed: Any) -> None:
    extra = sorted(set(m) - set(allowed), key=repr)
    if extra:
        raise MarketCodecError(f"unknown keys {extra!r}")


def _uint(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise MarketCodecError(f"expected an unsigned integer, got {v!r}")
    return v


def _optional_uint(v: Any) -> int | None:
    if v == _NONE and type(v) is int:
        return None
    return _uint(v)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise MarketCodecError(f"expected text, got {v!r}")
    return v
