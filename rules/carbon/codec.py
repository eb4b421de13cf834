"""Canonical bytes of the carbon shop's events: what a CARBON leaf of the ledger log carries.

Four events: a lot listed (for a gridmint_solar lot also the certificate, the site, the grid
emission factor and the generation tokens behind it), an order paid (its lines and total), an
order's units retired for its beneficiary, and a listing withdrawn. Encoding: canonical CBOR
maps with small unsigned integer keys, every key written (defaults kept, so one value has one
encoding), no floats; key 0 is the format version, key 1 the event type, key 2 the time (Unix
ms). `decode_shop_event` refuses anything that does not re-encode to the same bytes.

Every map is built with its keys in ascending order and holds only ints, text, bytes and arrays,
which is cbor2's canonical form for uint keys below 24 (see rules/market/codec.py); a test
compares with cbor2's canonical mode. Pure: imports cbor2 only, so the verifier can trust it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

CARBON_CODEC_VERSION = 1
_LISTED, _PAID, _RETIRED, _WITHDRAWN = 0, 1, 2, 3


class CarbonCodecError(ValueError):
    """Bytes that are not a canonical shop event."""


@dataclass(frozen=True, slots=True)
class Backing:
    """Wh [start_wh, end_wh) of generation token `token_id` (its signed record's hash) behind a
    gridmint_solar lot: one slice of the certificate the lot sells."""

    token_id: str
    record_hash: bytes
    start_wh: int
    end_wh: int

    @property
    def wh(self) -> int:
        return self.end_wh - self.start_wh


@dataclass(frozen=True, slots=True)
class LotListed:
    """A lot put on sale: serials `serial_prefix-serial_start..serial_end` (one per kg) at a
    price per tonne. A gridmint_solar lot also names its certificates (one or more of one site:
    a home's granular certificate alone rarely avoids a whole kg), the site whose generation
    they certify, the grid factor its kg were computed with (g CO2e per kWh) and the token
    slices."""

    at_ms: int
    lot_id: str
    project_id: str
    kind: str
    serial_prefix: str
    serial_start: int
    serial_end: int
    price_minor_per_t: int
    currency: str
    certificate_ids: tuple[str, ...] = ()
    site_id: str = ""
    g_co2e_per_kwh: int = 0
    backing: tuple[Backing, ...] = ()

    @property
    def kg(self) -> int:
        return self.serial_end - self.serial_start + 1

    @property
    def backing_wh(self) -> int:
        return sum(b.wh for b in self.backing)


@dataclass(frozen=True, slots=True)
class PaidLine:
    """Serials [serial_start, serial_end] of a lot in a paid order, and what they cost."""

    lot_id: str
    serial_start: int
    serial_end: int
    kg: int
    price_minor: int


@dataclass(frozen=True, slots=True)
class OrderPaid:
    """An order whose payment succeeded: its buyer (account id), lines, total and payment."""

    at_ms: int
    order_id: str
    buyer: str
    currency: str
    total_minor: int
    payment_id: str
    lines: tuple[PaidLine, ...]


@dataclass(frozen=True, slots=True)
class RetiredSpan:
    """Serials [serial_start, serial_end] of a lot, retired."""

    lot_id: str
    serial_start: int
    serial_end: int

    @property
    def kg(self) -> int:
        return self.serial_end - self.serial_start + 1


@dataclass(frozen=True, slots=True)
class Retired:
    """A paid order's units retired for its beneficiary; `certificates` are the gridmint
    certificates whose lots this retirement sold out (retired with it)."""

    at_ms: int
    order_id: str
    beneficiary: str
    reason: str
    spans: tuple[RetiredSpan, ...]
    certificates: tuple[str, ...] = ()

    @property
    def kg(self) -> int:
        return sum(s.kg for s in self.spans)


@dataclass(frozen=True, slots=True)
class ListingWithdrawn:
    """A lot taken off sale: its unsold serials are no longer offered."""

    at_ms: int
    lot_id: str
    reason: str


ShopEvent = LotListed | OrderPaid | Retired | ListingWithdrawn


def encode_shop_event(ev: ShopEvent) -> bytes:
    """The canonical bytes of one shop event."""
    m: dict[int, Any]
    if isinstance(ev, LotListed):
        m = {
            0: CARBON_CODEC_VERSION,
            1: _LISTED,
            2: ev.at_ms,
            3: ev.lot_id,
            4: ev.project_id,
            5: ev.kind,
            6: ev.serial_prefix,
            7: ev.serial_start,
            8: ev.serial_end,
            9: ev.price_minor_per_t,
            10: ev.currency,
            11: list(ev.certificate_ids),
            12: ev.site_id,
            13: ev.g_co2e_per_kwh,
            14: [[b.token_id, b.record_hash, b.start_wh, b.end_wh] for b in ev.backing],
        }
    elif isinstance(ev, OrderPaid):
        m = {
            0: CARBON_CODEC_VERSION,
            1: _PAID,
            2: ev.at_ms,
            3: ev.order_id,
            4: ev.buyer,
            5: ev.currency,
            6: ev.total_minor,
            7: ev.payment_id,
            8: [[x.lot_id, x.serial_start, x.serial_end, x.kg, x.price_minor] for x in ev.lines],
        }
    elif isinstance(ev, Retired):
        m = {
            0: CARBON_CODEC_VERSION,
            1: _RETIRED,
            2: ev.at_ms,
            3: ev.order_id,
            4: ev.beneficiary,
            5: ev.reason,
            6: [[s.lot_id, s.serial_start, s.serial_end] for s in ev.spans],
            7: list(ev.certificates),
        }
    else:
        m = {0: CARBON_CODEC_VERSION, 1: _WITHDRAWN, 2: ev.at_ms, 3: ev.lot_id, 4: ev.reason}
    return cbor2.dumps(m)


def _uint(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise CarbonCodecError(f"expected an unsigned integer, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise CarbonCodecError(f"expected text, got {v!r}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise CarbonCodecError(f"expected bytes, got {v!r}")
    return v


def _texts(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise CarbonCodecError(f"expected a list of text, got {v!r}")
    return tuple(_text(x) for x in v)


def _rows(v: Any, width: int) -> list[list[Any]]:
    if not isinstance(v, list) or any(not isinstance(r, list) or len(r) != width for r in v):
        raise CarbonCodecError(f"expected a list of {width}-item arrays, got {v!r}")
    return v


def _keys(m: dict[Any, Any], n: int) -> None:
    if set(m) != set(range(n)):
        raise CarbonCodecError(f"keys {sorted(m, key=repr)!r} are not 0..{n - 1}")


def decode_shop_event(data: bytes) -> ShopEvent:
    """Parse canonical shop event bytes; CarbonCodecError names what is wrong."""
    try:
        m = cbor2.loads(data)
    except Exception as exc:
        raise CarbonCodecError(f"not CBOR: {exc}") from None
    if not isinstance(m, dict):
        raise CarbonCodecError("not a map")
    if m.get(0) != CARBON_CODEC_VERSION:
        raise CarbonCodecError(f"unsupported shop event version {m.get(0)!r}")
    kind = m.get(1)
    ev: ShopEvent
    if kind == _LISTED:
        _keys(m, 15)
        ev = LotListed(
            at_ms=_uint(m[2]),
            lot_id=_text(m[3]),
            project_id=_text(m[4]),
            kind=_text(m[5]),
            serial_prefix=_text(m[6]),
            serial_start=_uint(m[7]),
            serial_end=_uint(m[8]),
            price_minor_per_t=_uint(m[9]),
            currency=_text(m[10]),
            certificate_ids=_texts(m[11]),
            site_id=_text(m[12]),
            g_co2e_per_kwh=_uint(m[13]),
            backing=tuple(
                Backing(_text(t), _bytes(h), _uint(a), _uint(b)) for t, h, a, b in _rows(m[14], 4)
            ),
        )
    elif kind == _PAID:
        _keys(m, 9)
        ev = OrderPaid(
            at_ms=_uint(m[2]),
            order_id=_text(m[3]),
            buyer=_text(m[4]),
            currency=_text(m[5]),
            total_minor=_uint(m[6]),
            payment_id=_text(m[7]),
            lines=tuple(
                PaidLine(_text(a), _uint(s), _uint(e), _uint(k), _uint(p))
                for a, s, e, k, p in _rows(m[8], 5)
            ),
        )
    elif kind == _RETIRED:
        _keys(m, 8)
        ev = Retired(
            at_ms=_uint(m[2]),
            order_id=_text(m[3]),
            beneficiary=_text(m[4]),
            reason=_text(m[5]),
            spans=tuple(RetiredSpan(_text(a), _uint(s), _uint(e)) for a, s, e in _rows(m[6], 3)),
            certificates=_texts(m[7]),
        )
    elif kind == _WITHDRAWN:
        _keys(m, 5)
        ev = ListingWithdrawn(at_ms=_uint(m[2]), lot_id=_text(m[3]), reason=_text(m[4]))
    else:
        raise CarbonCodecError(f"not a shop event (type {kind!r})")
    if encode_shop_event(ev) != data:
        raise CarbonCodecError("shop event bytes are not canonical")
    return ev
