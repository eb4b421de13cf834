"""The carbon shop's rules as the ledger log states them: a pure book of listed lots, paid
orders and retirements that refuses (CarbonRuleError) what the shop must never do.

Fed the CARBON leaves in log order (`ShopBook.apply`), it checks that serials are listed before
they are sold, that an order's lines are priced by the price rule and add up to its total, that
no serial is sold or retired twice, that nothing is retired without a paid order covering it,
and, for gridmint's own solar certificates, that every token behind a lot was minted (MINT_GEN)
to the lot's site before the listing, that no Wh of a token backs two lots, and that the lot's kg
do not exceed its Wh times the grid factor it states. The verifier (gridmint/verify.py) runs it;
pure and integer-only, it imports nothing but the codec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rules.carbon.codec import (
    ListingWithdrawn,
    LotListed,
    OrderPaid,
    Retired,
    ShopEvent,
)

KG_PER_TONNE = 1000
WH_G_PER_KG = 1_000_000  # Wh x (g/kWh) / 1e6 = kg
GRIDMINT_SOLAR = "gridmint_solar"
_CURRENCY = re.compile(r"[A-Z]{3}")


class CarbonRuleError(ValueError):
    """A shop event breaks a rule; the message says which, plainly."""


def line_price_minor(kg: int, price_minor_per_t: int) -> int:
    """What `kg` cost at a price per tonne, in minor units: kg x price / 1000, rounded half up
    to the nearest minor unit (a remainder of 500 or more rounds up), per order line. An order's
    total is the sum of its lines' prices."""
    if kg < 0 or price_minor_per_t < 0:
        raise CarbonRuleError("kg and price must be >= 0")
    return (kg * price_minor_per_t + KG_PER_TONNE // 2) // KG_PER_TONNE


def avoided_kg(wh: int, g_co2e_per_kwh: int) -> int:
    """Whole kg CO2e avoided by `wh` of generation at a grid emission factor (rounded down)."""
    if wh < 0 or g_co2e_per_kwh < 0:
        raise CarbonRuleError("energy and factor must be >= 0")
    return wh * g_co2e_per_kwh // WH_G_PER_KG


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A generation token as the log minted it: to which site, how many Wh, from which signed
    record, at which entry."""

    site: str
    wh: int
    record_hash: bytes
    seq: int


Span = tuple[int, int]


def _overlaps(spans: list[Span], a: int, b: int) -> Span | None:
    for x, y in spans:
        if x <= b and a <= y:
            return (x, y)
    return None


@dataclass(slots=True)
class _Lot:
    event: LotListed
    seq: int
    sold: list[Span] = field(default_factory=list)
    retired: list[Span] = field(default_factory=list)
    withdrawn: bool = False


@dataclass(slots=True)
class ShopBook:
    """What the CARBON leaves so far say: lots, paid orders, retirements; counts for a report."""

    lots: dict[str, _Lot] = field(default_factory=dict)
    paid: dict[str, tuple[OrderPaid, int]] = field(default_factory=dict)
    retired_orders: dict[str, int] = field(default_factory=dict)
    certificates: dict[str, str] = field(default_factory=dict)  # certificate -> lot
    token_slices: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    kg_retired: int = 0
    kg_listed: int = 0
    withdrawals: int = 0

    def apply(self, seq: int, ev: ShopEvent, minted: Callable[[str], MintedToken | None]) -> None:
        """Check `ev` (the event of entry `seq`) against the book, then record it; nothing
        changes on a refusal. `minted(token_id)` is the MINT_GEN of a token before `seq`."""
        if isinstance(ev, LotListed):
            self._listed(seq, ev, minted)
        elif isinstance(ev, OrderPaid):
            self._paid(seq, ev)
        elif isinstance(ev, Retired):
            self._retired(seq, ev)
        else:
            self._withdrawn(ev)

    # listings -------------------------------------------------------------------------------

    def _listed(self, seq: int, ev: LotListed, minted: Callable[[str], MintedToken | None]) -> None:
        lot = ev.lot_id
        if not lot or lot in self.lots:
            raise CarbonRuleError(f"lot {lot!r} is listed twice (or has no id)")
        if ev.serial_start > ev.serial_end:
            raise CarbonRuleError(
                f"lot {lot} lists the empty range {ev.serial_start}..{ev.serial_end}"
            )
        if ev.price_minor_per_t <= 0 or not _CURRENCY.fullmatch(ev.currency):
            raise CarbonRuleError(f"lot {lot} has no price or no ISO 4217 currency")
        if not ev.serial_prefix:
            raise CarbonRuleError(f"lot {lot} has no serial prefix")
        for other in self.lots.values():
            o = other.event
            if (
                o.project_id == ev.project_id
                and o.serial_prefix == ev.serial_prefix
                and o.serial_start <= ev.serial_end
                and ev.serial_start <= o.serial_end
            ):
                raise CarbonRuleError(
                    f"lot {lot}'s serials {ev.serial_prefix}-{ev.serial_start}..{ev.serial_end} "
                    f"overlap lot {o.lot_id} (entry {other.seq})"
                )
        staged: dict[str, list[tuple[int, int, str]]] = {}
        if ev.kind == GRIDMINT_SOLAR:
            if not ev.certificate_ids or not ev.site_id or not ev.backing:
                raise CarbonRuleError(
                    f"gridmint_solar lot {lot} does not name its certificates, site and tokens"
                )
            for cert in ev.certificate_ids:
                if cert in self.certificates or ev.certificate_ids.count(cert) > 1:
                    raise CarbonRuleError(
                        f"certificate {cert} is already listed as lot "
                        f"{self.certificates.get(cert, lot)}"
                    )
            if ev.g_co2e_per_kwh <= 0:
                raise CarbonRuleError(f"gridmint_solar lot {lot} states no grid emission factor")
            for b in ev.backing:
                t = minted(b.token_id)
                if t is None:
                    raise CarbonRuleError(
                        f"lot {lot}: token {b.token_id} was never minted before this listing"
                    )
                if t.site != ev.site_id:
                    raise CarbonRuleError(
                        f"lot {lot}: token {b.token_id} was minted to site {t.site} (entry "
                        f"{t.seq}), not to the listing's site {ev.site_id}"
                    )
                if t.record_hash != b.record_hash:
                    raise CarbonRuleError(
                        f"lot {lot}: token {b.token_id} names record {b.record_hash.hex()}, the "
                        f"ledger minted it from record {t.record_hash.hex()} (entry {t.seq})"
                    )
                if not 0 <= b.start_wh < b.end_wh <= t.wh:
                    raise CarbonRuleError(
                        f"lot {lot}: Wh {b.start_wh}..{b.end_wh} of token {b.token_id} are not "
                        f"within the {t.wh} Wh it minted"
                    )
                used = staged.setdefault(b.token_id, list(self.token_slices.get(b.token_id, [])))
                for a, z, other_lot in used:
                    if a < b.end_wh and b.start_wh < z:
                        raise CarbonRuleError(
                            f"lot {lot}: Wh {b.start_wh}..{b.end_wh} of token {b.token_id} "
                            f"already back lot {other_lot} (Wh {a}..{z}): a token backs two "
                            "lots beyond its Wh"
                        )
                used.append((b.start_wh, b.end_wh, lot))
            most = avoided_kg(ev.backing_wh, ev.g_co2e_per_kwh)
            if ev.kg > most:
                raise CarbonRuleError(
                    f"lot {lot} lists {ev.kg} kg, but its {ev.backing_wh} Wh at "
                    f"{ev.g_co2e_per_kwh} g CO2e/kWh avoid only {most} kg"
                )
        elif ev.backing or ev.certificate_ids:
            raise CarbonRuleError(f"lot {lot} of kind {ev.kind} names certificate tokens")
        self.token_slices.update(staged)
        for cert in ev.certificate_ids:
            self.certificates[cert] = lot
        self.lots[lot] = _Lot(ev, seq)
        self.kg_listed += ev.kg

    def _withdrawn(self, ev: ListingWithdrawn) -> None:
        lot = self.lots.get(ev.lot_id)
        if lot is None:
            raise CarbonRuleError(f"lot {ev.lot_id} is withdrawn but was never listed")
        lot.withdrawn = True
        self.withdrawals += 1

    # orders and retirements -----------------------------------------------------------------

    def _paid(self, seq: int, ev: OrderPaid) -> None:
        o = ev.order_id
        if not o or o in self.paid:
            raise CarbonRuleError(f"order {o!r} is paid twice (or has no id)")
        if not ev.lines:
            raise CarbonRuleError(f"order {o} is paid without lines")
        staged: dict[str, list[Span]] = {}
        total = 0
        for x in ev.lines:
            lot = self.lots.get(x.lot_id)
            if lot is None:
                raise CarbonRuleError(f"order {o} buys from lot {x.lot_id}, which is not listed")
            L = lot.event
            if lot.withdrawn:
                raise CarbonRuleError(f"order {o} buys from lot {x.lot_id}, which was withdrawn")
            if L.currency != ev.currency:
                raise CarbonRuleError(
                    f"order {o} is in {ev.currency}, lot {x.lot_id} is priced in {L.currency}"
                )
            if not L.serial_start <= x.serial_start <= x.serial_end <= L.serial_end:
                raise CarbonRuleError(
                    f"order {o} buys serials {x.serial_start}..{x.serial_end}, outside lot "
                    f"{x.lot_id}'s {L.serial_start}..{L.serial_end}"
                )
            if x.kg != x.serial_end - x.serial_start + 1:
                raise CarbonRuleError(
                    f"order {o}: {x.kg} kg is not the count of serials {x.serial_start}.."
                    f"{x.serial_end}"
                )
            want = line_price_minor(x.kg, L.price_minor_per_t)
            if x.price_minor != want:
                raise CarbonRuleError(
                    f"order {o}: {x.kg} kg of lot {x.lot_id} at {L.price_minor_per_t} per tonne "
                    f"cost {want}, not {x.price_minor}"
                )
            sold = staged.setdefault(x.lot_id, list(lot.sold))
            hit = _overlaps(sold, x.serial_start, x.serial_end)
            if hit is not None:
                raise CarbonRuleError(
                    f"order {o} buys serials {x.serial_start}..{x.serial_end} of lot "
                    f"{x.lot_id}, already sold ({hit[0]}..{hit[1]})"
                )
            sold.append((x.serial_start, x.serial_end))
            total += x.price_minor
        if total != ev.total_minor:
            raise CarbonRuleError(
                f"order {o}'s total is {ev.total_minor}, its lines sum to {total}"
            )
        for lot_id, spans in staged.items():
            self.lots[lot_id].sold = spans
        self.paid[o] = (ev, seq)

    def _retired(self, seq: int, ev: Retired) -> None:
        o = ev.order_id
        paid = self.paid.get(o)
        if paid is None:
            raise CarbonRuleError(f"retirement for order {o}, which has no paid order before it")
        if o in self.retired_orders:
            raise CarbonRuleError(
                f"order {o} is retired twice (already at entry {self.retired_orders[o]})"
            )
        if not ev.beneficiary.strip():
            raise CarbonRuleError(f"the retirement of order {o} names no beneficiary")
        if not ev.spans:
            raise CarbonRuleError(f"the retirement of order {o} retires nothing")
        staged: dict[str, list[Span]] = {}
        for s in ev.spans:
            lot = self.lots.get(s.lot_id)
            where = f"serials {s.serial_start}..{s.serial_end} of lot {s.lot_id}"
            if lot is None:
                raise CarbonRuleError(f"order {o} retires {where}, which is not listed")
            L = lot.event
            if not L.serial_start <= s.serial_start <= s.serial_end <= L.serial_end:
                raise CarbonRuleError(
                    f"order {o} retires {where}, outside the lot's {L.serial_start}..{L.serial_end}"
                )
            if not any(
                x.lot_id == s.lot_id
                and x.serial_start <= s.serial_start
                and s.serial_end <= x.serial_end
                for x in paid[0].lines
            ):
                raise CarbonRuleError(
                    f"order {o} retires {where}, which its paid order (entry {paid[1]}) does "
                    "not cover"
                )
            done = staged.setdefault(s.lot_id, list(lot.retired))
            hit = _overlaps(done, s.serial_start, s.serial_end)
            if hit is not None:
                raise CarbonRuleError(
                    f"order {o} retires {where}: serials {hit[0]}..{hit[1]} are already retired"
                )
            done.append((s.serial_start, s.serial_end))
        for cert in ev.certificates:
            lot_id = self.certificates.get(cert)
            if lot_id is None:
                raise CarbonRuleError(f"order {o} retires certificate {cert}, which is not listed")
            lot = self.lots[lot_id]
            retired = sum(b - a + 1 for a, b in staged.get(lot_id, lot.retired))
            if retired != lot.event.kg:
                raise CarbonRuleError(
                    f"order {o} retires certificate {cert} while its lot {lot_id} has "
                    f"{lot.event.kg - retired} kg unretired"
                )
        for lot_id, spans in staged.items():
            self.lots[lot_id].retired = spans
        self.retired_orders[o] = seq
        self.kg_retired += ev.kg
