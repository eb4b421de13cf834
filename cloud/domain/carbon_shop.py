"""The retail carbon shop's rules: projects, lots, prices, order states, reservations, serials.

Pure and integer-only. Quantities are whole kilograms of CO2e (one kg = one serial number),
prices are minor currency units (ISO 4217) per tonne, times are Unix milliseconds. The model
follows Patch's project / inventory / order (docs/carbon-shop.md): a *project* (who, where, what
kind, which standard and verifier) offers *lots* (a serial range of a vintage at one price); an
*order* reserves kilograms of lots, is paid, and its units are retired on behalf of a named
beneficiary (EnergyTag: the cancellation names the consumer).

Serials: a lot covers the inclusive serial range `prefix-start..end`, one number per kg. Units
are handed out as sub-ranges of it, lowest free first (`allocate`); a range is never handed out
while another reservation or retirement holds any of its numbers (`SerialBook` is the model the
storage follows, and the property test checks it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rules.carbon.book import line_price_minor

KG_PER_TONNE = 1000
MAX_KG = 10**12  # a million tonnes per line or lot: far beyond any retail order
MAX_PRICE_MINOR_PER_T = 10**9
MIN_VINTAGE = 1990
MAX_SERIAL = 10**15


class ShopError(ValueError):
    """A shop rule is broken; the message is a plain reason for the caller."""


class ProjectKind(StrEnum):
    FORESTRY = "forestry"
    RENEWABLE_ENERGY = "renewable_energy"
    METHANE_CAPTURE = "methane_capture"
    DIRECT_AIR_CAPTURE = "direct_air_capture"
    COOKSTOVES = "cookstoves"
    GRIDMINT_SOLAR = "gridmint_solar"  # our own homeowners' certificates


class ProjectStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"  # no more issuance; what was listed may still sell out
    WITHDRAWN = "withdrawn"  # taken off the shop


class OrderState(StrEnum):
    RESERVED = "reserved"  # units held, waiting for the payment
    PLACED = "placed"  # paid; retirement under way
    COMPLETE = "complete"  # units retired for the beneficiary; final
    CANCELLED = "cancelled"  # payment failed (or cancelled); units released; final
    EXPIRED = "expired"  # reservation ran out before payment; units released; final


# Which state may follow which. PLACED -> COMPLETE is written in the same transaction as the
# retirement, so a stored order is only ever seen PLACED if retirement could not finish.
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    OrderState.RESERVED: frozenset({OrderState.PLACED, OrderState.CANCELLED, OrderState.EXPIRED}),
    OrderState.PLACED: frozenset({OrderState.COMPLETE}),
    OrderState.COMPLETE: frozenset(),
    OrderState.CANCELLED: frozenset(),
    OrderState.EXPIRED: frozenset(),
}
# States whose lines hold their serials (reserved, or sold).
HOLDING = frozenset({OrderState.RESERVED, OrderState.PLACED, OrderState.COMPLETE})
FINAL = frozenset({OrderState.COMPLETE, OrderState.CANCELLED, OrderState.EXPIRED})


def can_transition(old: OrderState, new: OrderState) -> bool:
    return new in TRANSITIONS[old]


# A project's life: a retired project takes no new lots but what it listed still sells out; a
# withdrawn one is off the shop (no search, no checkout). Neither comes back.
PROJECT_TRANSITIONS: dict[ProjectStatus, frozenset[ProjectStatus]] = {
    ProjectStatus.ACTIVE: frozenset({ProjectStatus.RETIRED, ProjectStatus.WITHDRAWN}),
    ProjectStatus.RETIRED: frozenset({ProjectStatus.WITHDRAWN}),
    ProjectStatus.WITHDRAWN: frozenset(),
}
SELLABLE = frozenset({ProjectStatus.ACTIVE, ProjectStatus.RETIRED})


def check_project_transition(old: ProjectStatus, new: ProjectStatus) -> None:
    """ShopError unless a project may go from `old` to `new`."""
    if new not in PROJECT_TRANSITIONS[old]:
        raise ShopError(f"a project that is {old.value} cannot become {new.value}")


# validation ---------------------------------------------------------------------------------

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,39}")
_SERIALS = re.compile(r"(?P<prefix>.+)-(?P<start>[0-9]{1,16})\.\.(?P<end>[0-9]{1,16})")


def check_currency(currency: str) -> str:
    """An ISO 4217 alphabetic code: three upper-case letters."""
    if not _CURRENCY.fullmatch(currency):
        raise ShopError(f"currency {currency!r} is not an ISO 4217 code (three letters, e.g. EUR)")
    return currency


def check_country(country: str) -> str:
    """An ISO 3166-1 alpha-2 code."""
    if not _COUNTRY.fullmatch(country):
        raise ShopError(f"country {country!r} is not an ISO 3166-1 code (two letters, e.g. DE)")
    return country


def check_kg(kg: int, what: str = "quantity") -> int:
    """A positive whole number of kilograms."""
    if isinstance(kg, bool) or not isinstance(kg, int) or kg <= 0:
        raise ShopError(f"{what} must be a positive whole number of kg, not {kg!r}")
    if kg > MAX_KG:
        raise ShopError(f"{what} of {kg} kg is over the limit of {MAX_KG} kg")
    return kg


def check_price(price_minor_per_t: int) -> int:
    if isinstance(price_minor_per_t, bool) or not isinstance(price_minor_per_t, int):
        raise ShopError("the price must be a whole number of minor units per tonne")
    if not 0 < price_minor_per_t <= MAX_PRICE_MINOR_PER_T:
        raise ShopError(
            f"the price per tonne must be between 1 and {MAX_PRICE_MINOR_PER_T} minor units"
        )
    return price_minor_per_t


def check_vintage(vintage: int, this_year: int) -> int:
    """The year the reductions happened: not before 1990, not in the future."""
    if not MIN_VINTAGE <= vintage <= this_year:
        raise ShopError(f"vintage {vintage} must be between {MIN_VINTAGE} and {this_year}")
    return vintage


@dataclass(frozen=True, slots=True)
class SerialRange:
    """Serial numbers `prefix-start..end`, both ends included; one number per kg."""

    prefix: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ShopError(f"serial prefix {self.prefix!r} is not letters, digits, . _ / -")
        if not 0 <= self.start <= self.end <= MAX_SERIAL:
            raise ShopError(f"serial range {self.start}..{self.end} is empty or out of range")

    @property
    def kg(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"{self.prefix}-{self.start}..{self.end}"


def parse_serials(text: str) -> SerialRange:
    """`VCS-1234-2021-1..5000` -> SerialRange('VCS-1234-2021', 1, 5000)."""
    m = _SERIALS.fullmatch(text.strip())
    if m is None:
        raise ShopError(f"serial range {text!r} is not of the form prefix-start..end")
    return SerialRange(m["prefix"], int(m["start"]), int(m["end"]))


@dataclass(frozen=True, slots=True)
class Listing:
    """A lot as offered: its serials (whose count is the quantity), price and currency."""

    serials: SerialRange
    price_minor_per_t: int
    currency: str

    @property
    def kg(self) -> int:
        return self.serials.kg


def check_listing(serials: str, price_minor_per_t: int, currency: str) -> Listing:
    """A lot's serial range, price per tonne and currency, checked (ShopError with the reason)."""
    rng = parse_serials(serials)
    check_kg(rng.kg, "a lot")
    return Listing(rng, check_price(price_minor_per_t), check_currency(currency))


# prices -------------------------------------------------------------------------------------


def price_minor(kg: int, price_minor_per_t: int) -> int:
    """What `kg` cost at a price per tonne, in minor units.

    Rounding rule: half up to the nearest minor unit, per line (kg x price / 1000, a remainder
    of 500 or more rounds up). An order's total is the sum of its lines' prices. The rule itself
    is rules.carbon's, which the independent verifier applies to the ledger's paid orders.
    """
    check_kg(kg)
    check_price(price_minor_per_t)
    return line_price_minor(kg, price_minor_per_t)


# reservations -------------------------------------------------------------------------------

DEFAULT_RESERVATION_S = 15 * 60


def reservation_expiry(now_ms: int, reservation_s: int = DEFAULT_RESERVATION_S) -> int:
    """When a reservation made at `now_ms` runs out."""
    if reservation_s <= 0:
        raise ShopError("a reservation lasts a positive number of seconds")
    return now_ms + reservation_s * 1000


def is_expired(state: OrderState, expires_ms: int, now_ms: int) -> bool:
    """A reserved order whose time is up (at `expires_ms` exactly it is already over)."""
    return state is OrderState.RESERVED and now_ms >= expires_ms


# search -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectFilter:
    """What a buyer searches for; None matches anything."""

    kind: ProjectKind | None = None
    country: str | None = None
    vintage: int | None = None
    max_price_minor: int | None = None  # per tonne, in the lot's currency
    standard: str | None = None
    own_solar: bool | None = None  # True: only gridmint_solar; False: only external projects


@dataclass(frozen=True, slots=True)
class Offer:
    """A project as search sees it: its fields and the lots that still have units."""

    kind: ProjectKind
    country: str
    vintage: int
    standard: str
    status: ProjectStatus
    prices_minor_per_t: tuple[int, ...]  # of lots with units left


def matches(f: ProjectFilter, o: Offer) -> bool:
    """Whether a project on sale (active, or retired with lots left) fits the filter (price:
    some lot at or under the maximum)."""
    if o.status not in SELLABLE:
        return False
    if f.kind is not None and o.kind is not f.kind:
        return False
    if f.country is not None and o.country.upper() != f.country.upper():
        return False
    if f.vintage is not None and o.vintage != f.vintage:
        return False
    if f.standard is not None and o.standard.lower() != f.standard.lower():
        return False
    if f.own_solar is not None and (o.kind is ProjectKind.GRIDMINT_SOLAR) != f.own_solar:
        return False
    return f.max_price_minor is None or any(p <= f.max_price_minor for p in o.prices_minor_per_t)


# serial allocation --------------------------------------------------------------------------

Span = tuple[int, int]  # inclusive serial numbers


def free_spans(lot: Span, taken: Iterable[Span]) -> list[Span]:
    """The lot's serials not in any taken span, lowest first (taken spans may be unsorted;
    ShopError if two of them overlap or one leaves the lot: the book is corrupt)."""
    lo, hi = lot
    out: list[Span] = []
    pos = lo
    last_end = lo - 1
    for a, b in sorted(taken):
        if a > b or a < lo or b > hi:
            raise ShopError(f"serials {a}..{b} are outside the lot {lo}..{hi}")
        if a <= last_end:
            raise ShopError(f"serials {a}..{b} overlap serials already taken")
        if a > pos:
            out.append((pos, a - 1))
        pos = b + 1
        last_end = b
    if pos <= hi:
        out.append((pos, hi))
    return out


def allocate(lot: Span, taken: Iterable[Span], kg: int) -> list[Span]:
    """`kg` free serials of the lot as spans, lowest free first (ShopError if fewer are free)."""
    check_kg(kg)
    got: list[Span] = []
    need = kg
    for a, b in free_spans(lot, taken):
        take = min(need, b - a + 1)
        got.append((a, a + take - 1))
        need -= take
        if need == 0:
            return got
    raise ShopError(f"only {kg - need} kg are left in this lot")


@dataclass
class SerialBook:
    """One lot's serials: who holds which (reservations by order) and which are retired.

    The storage keeps the same book in rows (order lines of holding orders; retirements); this
    in-memory form is what the property test drives.
    """

    lot: Span
    held: dict[str, list[Span]] = field(default_factory=dict)  # order -> spans, not retired
    retired: dict[str, list[Span]] = field(default_factory=dict)  # order -> spans

    def taken(self) -> list[Span]:
        return [s for spans in (*self.held.values(), *self.retired.values()) for s in spans]

    @property
    def available(self) -> int:
        return sum(b - a + 1 for a, b in free_spans(self.lot, self.taken()))

    def reserve(self, order: str, kg: int) -> list[Span]:
        if order in self.held or order in self.retired:
            raise ShopError(f"order {order} already holds serials of this lot")
        spans = allocate(self.lot, self.taken(), kg)
        self.held[order] = spans
        return spans

    def release(self, order: str) -> list[Span]:
        """Give back an order's reserved serials (nothing for an unknown or retired order)."""
        return self.held.pop(order, [])

    def retire(self, order: str) -> list[Span]:
        """Retire an order's reserved serials (idempotent: a retired order retires nothing)."""
        if order in self.retired:
            return []
        spans = self.held.pop(order, None)
        if spans is None:
            raise ShopError(f"order {order} holds no serials of this lot")
        self.retired[order] = spans
        return spans


def spans_overlap(a: Sequence[Span], b: Sequence[Span]) -> bool:
    return any(x0 <= y1 and y0 <= x1 for x0, x1 in a for y0, y1 in b)
