"""Carbon figures and energy attribute certificates: pure, integer-only.

Owns: avoided CO2 (grams) from a grid emission factor, the forest-area equivalent (milli-acres),
and a registry of certificates issued from ledger Wh ranges: granular certificates (one per
generation token range, EnergyTag-style fields) and 1 MWh renewable energy certificates bundled
from explicit (token id, Wh range) slices. A Wh of a token is certified at most once, whatever the
certificate type; any overlap raises. See docs/tokens.md, "Carbon and certificates".

Eligibility (kept simple, and coherent with the ledger): a certificate carries the green claim of
generation *used on site* (the ledger's BURN_SELF_CONSUMPTION ranges of a generation token).
Exported generation carries its claim elsewhere — in the buyer's P2P token, or to the grid buyer
(a GRID_SALE) — so it is not certified; nor is storage-sourced or received Tgen, which would
count one generation twice.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from rules.ledger import Entry, EntryKind

# Default grid emission factor, grams CO2 per kWh: the US EPA Greenhouse Gas Equivalencies
# Calculator ("Calculations and References", electricity reductions) converts avoided kWh with
# the AVERT U.S. national weighted average CO2 *marginal* emission rate, 1,559 lb CO2/MWh:
# 1559 x 453.59237 g / 1000 kWh = 707 g/kWh. Marginal, because rooftop PV displaces the plants
# that follow demand, not baseload. Configure the zone's own factor where one is published.
DEFAULT_GRID_G_CO2_PER_KWH = 707

# One acre of good forest offsets about 2.5 t CO2 a year (the project's brief). EPA's figure for
# an *average* U.S. forest is lower (about 0.82 t CO2 per acre per year, same EPA page): pass it
# to `forest_milliacres` for the conservative equivalent.
FOREST_G_CO2_PER_ACRE_YEAR = 2_500_000

REC_WH = 1_000_000  # one MWh


class CertificateError(ValueError):
    """A certificate operation breaks a rule (overlap, wrong owner, not active, ...)."""


def avoided_co2_g(wh: int, g_per_kwh: int = DEFAULT_GRID_G_CO2_PER_KWH) -> int:
    """Grams of CO2 avoided by `wh` of renewable energy (rounded down)."""
    if wh < 0 or g_per_kwh < 0:
        raise ValueError("energy and factor must be >= 0")
    return wh * g_per_kwh // 1000


def forest_milliacres(co2_g: int, g_per_acre_year: int = FOREST_G_CO2_PER_ACRE_YEAR) -> int:
    """Acres of forest (in thousandths) that would take a year to absorb `co2_g` grams."""
    if co2_g < 0 or g_per_acre_year <= 0:
        raise ValueError("mass must be >= 0 and the forest rate > 0")
    return co2_g * 1000 // g_per_acre_year


class CertKind(Enum):
    GRANULAR = "granular"  # one token range, one interval (EnergyTag granular certificate)
    REC = "rec"  # exactly 1 MWh, bundled from slices of several tokens


class CertStatus(Enum):
    ACTIVE = "active"
    RETIRED = "retired"  # claimed for a beneficiary; final
    EXPIRED = "expired"  # lifetime ran out before a claim; final


@dataclass(frozen=True, slots=True, order=True)
class Slice:
    """Wh [start_wh, end_wh) of generation token `token_id` (Wh counted from the token's first)."""

    token_id: str
    start_wh: int
    end_wh: int

    @property
    def wh(self) -> int:
        return self.end_wh - self.start_wh


@dataclass(frozen=True, slots=True)
class EligibleEnergy:
    """A range of a generation token that may be certified, with the token's attributes."""

    slice: Slice
    device_id: str
    interval_start: int
    interval_s: int
    technology: str
    market_zone: str


@dataclass(frozen=True, slots=True)
class Certificate:
    """An energy attribute certificate (EnergyTag-style fields)."""

    certificate_id: str
    kind: CertKind
    device_ids: tuple[str, ...]
    production_start: int  # Unix s, inclusive
    production_end: int  # Unix s, exclusive
    energy_wh: int
    technology: str
    market_zone: str
    issuance_time: int
    expiry_time: int
    status: CertStatus
    owner: str
    slices: tuple[Slice, ...]
    beneficiary: str = ""
    retirement_time: int | None = None


def _cert_id(kind: CertKind, slices: Sequence[Slice]) -> str:
    h = hashlib.sha256(f"gridmint/cert/v1\x00{kind.value}".encode())
    for s in sorted(slices):
        h.update(f"\x00{s.token_id}:{s.start_wh}:{s.end_wh}".encode())
    return h.hexdigest()


def eligible_from_ledger(
    entries: Iterable[Entry],
    kinds: frozenset[EntryKind] = frozenset({EntryKind.BURN_SELF_CONSUMPTION}),
) -> list[EligibleEnergy]:
    """Wh ranges of generation tokens that the ledger consumed through `kinds`.

    A lot is consumed front to back, so the n-th burned Wh of a token is Wh n of that token:
    ranges follow from the order of the burns.
    """
    info: dict[str, tuple[str, int, int, str, str]] = {}
    used: dict[str, int] = {}
    out: list[EligibleEnergy] = []
    for e in entries:
        if e.kind is EntryKind.MINT_GEN and e.measurement is not None:
            for r in e.refs:
                info[r.token_id] = (
                    r.device_id,
                    e.interval_start,
                    e.measurement.interval_s,
                    r.tech,
                    r.zone,
                )
        for b in e.burns:
            if b.lot_id not in info:
                continue  # not a generation token (storage, set-aside, received lots)
            start = used.get(b.lot_id, 0)
            used[b.lot_id] = start + b.wh
            if e.kind in kinds:
                dev, t, length, tech, zone = info[b.lot_id]
                out.append(
                    EligibleEnergy(Slice(b.lot_id, start, start + b.wh), dev, t, length, tech, zone)
                )
    return out


def plan_rec_bundles(pending: Sequence[EligibleEnergy]) -> list[list[EligibleEnergy]]:
    """Cut eligible ranges, in order, into bundles of exactly 1 MWh (a range may be split across
    two bundles); the remainder under 1 MWh waits for more generation."""
    bundles: list[list[EligibleEnergy]] = []
    current: list[EligibleEnergy] = []
    need = REC_WH
    for item in pending:
        s = item.slice
        start = s.start_wh
        while start < s.end_wh:
            take = min(need, s.end_wh - start)
            current.append(replace(item, slice=Slice(s.token_id, start, start + take)))
            start += take
            need -= take
            if need == 0:
                bundles.append(current)
                current, need = [], REC_WH
    return bundles


class CertificateRegistry:
    """Issues, transfers, retires and expires certificates; never certifies a Wh twice.

    Pure: no clock (times are arguments), no storage (the caller persists what it returns).
    """

    def __init__(self, lifetime_s: int = 365 * 24 * 3600) -> None:
        if lifetime_s <= 0:
            raise ValueError("lifetime must be positive")
        self.lifetime_s = lifetime_s
        self.certificates: dict[str, Certificate] = {}
        self._eligible: dict[str, list[EligibleEnergy]] = {}  # token -> ranges, sorted
        self._issued: dict[str, list[tuple[int, int]]] = {}  # token -> issued ranges, sorted

    # eligibility ------------------------------------------------------------------------

    def add_eligible(self, items: Iterable[EligibleEnergy]) -> None:
        """Register ranges that may be certified (idempotent for identical ranges)."""
        for item in items:
            s = item.slice
            if s.start_wh < 0 or s.end_wh <= s.start_wh:
                raise CertificateError(f"empty or negative range {s}")
            ranges = self._eligible.setdefault(s.token_id, [])
            if item in ranges:
                continue
            if any(r.slice.start_wh < s.end_wh and s.start_wh < r.slice.end_wh for r in ranges):
                raise CertificateError(f"eligible range {s} overlaps another of the same token")
            ranges.append(item)
            ranges.sort(key=lambda r: r.slice.start_wh)

    def _eligible_for(self, s: Slice) -> EligibleEnergy:
        for r in self._eligible.get(s.token_id, []):
            if r.slice.start_wh <= s.start_wh and s.end_wh <= r.slice.end_wh:
                return r
        raise CertificateError(f"{s} is not eligible energy")

    def uncertified(self) -> list[EligibleEnergy]:
        """Eligible ranges (or their parts) not yet in any certificate, in token order."""
        out: list[EligibleEnergy] = []
        for token in sorted(self._eligible):
            done = self._issued.get(token, [])
            for r in self._eligible[token]:
                pos = r.slice.start_wh
                for a, b in done:
                    if b <= pos or a >= r.slice.end_wh:
                        continue
                    if a > pos:
                        out.append(replace(r, slice=Slice(token, pos, a)))
                    pos = max(pos, b)
                if pos < r.slice.end_wh:
                    out.append(replace(r, slice=Slice(token, pos, r.slice.end_wh)))
        return out

    def _claim(self, slices: Sequence[Slice]) -> None:
        """Mark ranges issued; raise (changing nothing) on any overlap."""
        staged: dict[str, list[tuple[int, int]]] = {}
        for s in slices:
            if s.wh <= 0:
                raise CertificateError(f"empty range {s}")
            ranges = staged.setdefault(s.token_id, list(self._issued.get(s.token_id, [])))
            i = bisect.bisect_left(ranges, (s.start_wh, s.end_wh))
            if (i > 0 and ranges[i - 1][1] > s.start_wh) or (
                i < len(ranges) and ranges[i][0] < s.end_wh
            ):
                raise CertificateError(f"{s} overlaps energy already certified")
            ranges.insert(i, (s.start_wh, s.end_wh))
        self._issued.update(staged)

    # issuance ---------------------------------------------------------------------------

    def issue_granular(self, s: Slice, owner: str, issued_at: int) -> Certificate:
        """A granular certificate for one eligible token range."""
        e = self._eligible_for(s)
        cert = Certificate(
            certificate_id=_cert_id(CertKind.GRANULAR, [s]),
            kind=CertKind.GRANULAR,
            device_ids=(e.device_id,),
            production_start=e.interval_start,
            production_end=e.interval_start + e.interval_s,
            energy_wh=s.wh,
            technology=e.technology,
            market_zone=e.market_zone,
            issuance_time=issued_at,
            expiry_time=issued_at + self.lifetime_s,
            status=CertStatus.ACTIVE,
            owner=owner,
            slices=(s,),
        )
        self._claim([s])
        self.certificates[cert.certificate_id] = cert
        return cert

    def issue_rec(self, slices: Sequence[Slice], owner: str, issued_at: int) -> Certificate:
        """A 1 MWh renewable energy certificate covering exactly the given slices."""
        if sum(s.wh for s in slices) != REC_WH:
            raise CertificateError(f"a REC covers exactly {REC_WH} Wh")
        items = [self._eligible_for(s) for s in slices]
        zones = {e.market_zone for e in items}
        techs = {e.technology for e in items}
        if len(zones) != 1 or len(techs) != 1:
            raise CertificateError("a REC bundles one technology in one market zone")
        cert = Certificate(
            certificate_id=_cert_id(CertKind.REC, slices),
            kind=CertKind.REC,
            device_ids=tuple(sorted({e.device_id for e in items})),
            production_start=min(e.interval_start for e in items),
            production_end=max(e.interval_start + e.interval_s for e in items),
            energy_wh=REC_WH,
            technology=techs.pop(),
            market_zone=zones.pop(),
            issuance_time=issued_at,
            expiry_time=issued_at + self.lifetime_s,
            status=CertStatus.ACTIVE,
            owner=owner,
            slices=tuple(sorted(slices)),
        )
        self._claim(slices)
        self.certificates[cert.certificate_id] = cert
        return cert

    # lifecycle --------------------------------------------------------------------------

    def _active(self, cert_id: str, owner: str, at: int) -> Certificate:
        cert = self.certificates.get(cert_id)
        if cert is None:
            raise CertificateError(f"unknown certificate {cert_id}")
        if cert.status is not CertStatus.ACTIVE or at >= cert.expiry_time:
            raise CertificateError(f"certificate {cert_id} is not active")
        if cert.owner != owner:
            raise CertificateError(f"certificate {cert_id} is not owned by {owner}")
        return cert

    def transfer(self, cert_id: str, from_owner: str, to_owner: str, at: int) -> Certificate:
        cert = replace(self._active(cert_id, from_owner, at), owner=to_owner)
        self.certificates[cert_id] = cert
        return cert

    def retire(self, cert_id: str, owner: str, beneficiary: str, at: int) -> Certificate:
        """Claim the certificate's energy for `beneficiary`; final."""
        if not beneficiary:
            raise CertificateError("a retirement names its beneficiary")
        cert = replace(
            self._active(cert_id, owner, at),
            status=CertStatus.RETIRED,
            beneficiary=beneficiary,
            retirement_time=at,
        )
        self.certificates[cert_id] = cert
        return cert

    def expire(self, now: int) -> list[Certificate]:
        """Mark active certificates past their lifetime as expired (their Wh stay issued)."""
        out = []
        for cid, cert in sorted(self.certificates.items()):
            if cert.status is CertStatus.ACTIVE and now >= cert.expiry_time:
                self.certificates[cid] = replace(cert, status=CertStatus.EXPIRED)
                out.append(self.certificates[cid])
        return out

    def certified_wh(self, token: str) -> int:
        return sum(b - a for a, b in self._issued.get(token, []))
