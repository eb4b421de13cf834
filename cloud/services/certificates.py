"""The certificate service: issues energy attribute certificates from the ledger, stores them,
transfers, retires and expires them.

Owns: feeding the pure `cloud.domain.certificates.CertificateRegistry` and storing what it
decides. For each issuance the registry of the producing site is rebuilt from the ledger's
entries (what is eligible: `eligible_from_ledger`) and from the stored certificates of that site
(what is already certified, replayed through the registry's own issue rules), so "no Wh twice"
holds across restarts; the database enforces it once more (migration 0008's trigger), which also
covers two aggregator processes issuing at the same moment.

Owners are sites: a certificate is issued to the site whose generation it certifies and may be
transferred to another site. Times are Unix milliseconds (the registry is unit-agnostic: it is
built with the lifetime in ms). Expiry follows the clock: every read and change first expires
what is past its lifetime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cloud.domain.certificates import (
    Certificate,
    CertificateError,
    CertificateRegistry,
    CertKind,
    CertStatus,
    EligibleEnergy,
    Slice,
    eligible_from_ledger,
    plan_rec_bundles,
)
from cloud.services.ledger import LedgerService
from cloud.storage.certificates_store import (
    CertificateStore,
    SliceOverlapError,
    StaleCertificateError,
    StoredCertificate,
    StoredSlice,
)

DEFAULT_LIFETIME_S = 365 * 24 * 3600


class CertificateNotFound(LookupError):
    """No certificate has this id."""


class CertificateConflict(ValueError):
    """The certificate is not active (retired, expired), or its Wh are already certified."""


class CertificatesCorrupted(RuntimeError):
    """A stored certificate does not replay against the ledger."""


class CertificateService:
    """Certificates of one aggregator, issued from its ledger."""

    def __init__(
        self,
        store: CertificateStore,
        ledger: LedgerService,
        now: Callable[[], float] | None = None,
        lifetime_s: int = DEFAULT_LIFETIME_S,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.now = now or ledger.now
        self.lifetime_s = lifetime_s
        self._lock = asyncio.Lock()

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    def _new_registry(self) -> CertificateRegistry:
        return CertificateRegistry(self.lifetime_s * 1000)

    def eligible(self, site_id: str) -> list[EligibleEnergy]:
        """The site's eligible generation ranges, from the ledger's entries."""
        return eligible_from_ledger(e for e in self.ledger.engine.entries if e.site == site_id)

    async def registry(self, site_id: str) -> CertificateRegistry:
        """The pure registry of one producing site: eligible ranges plus what was issued."""
        reg = self._new_registry()
        reg.add_eligible(self.eligible(site_id))
        for sc in await self.store.query(issued_site_id=site_id):
            slices = [Slice(s.token_id, s.start_wh, s.end_wh) for s in sc.slices]
            try:
                if sc.kind == CertKind.GRANULAR.value:
                    (only,) = slices
                    replayed = reg.issue_granular(only, sc.owner_site_id, sc.issued_ms)
                else:
                    replayed = reg.issue_rec(slices, sc.owner_site_id, sc.issued_ms)
            except (CertificateError, ValueError) as exc:
                raise CertificatesCorrupted(f"certificate {sc.certificate_id}: {exc}") from None
            del reg.certificates[replayed.certificate_id]
            reg.certificates[sc.certificate_id] = to_domain(sc)
        return reg

    async def uncertified_wh(self, site_id: str) -> int:
        """Eligible Wh of the site not yet in any certificate."""
        return sum(i.slice.wh for i in (await self.registry(site_id)).uncertified())

    async def issue_granular(self, site_id: str) -> list[StoredCertificate]:
        """A granular certificate for every uncertified eligible range of the site."""
        async with self._lock:
            reg = await self.registry(site_id)
            at = self._now_ms()
            new = [reg.issue_granular(i.slice, site_id, at) for i in reg.uncertified()]
            return await self._store(new, site_id)

    async def issue_recs(self, site_id: str) -> list[StoredCertificate]:
        """As many 1 MWh RECs as the site's uncertified eligible energy fills (per technology
        and market zone); the remainder waits for more generation."""
        async with self._lock:
            reg = await self.registry(site_id)
            at = self._now_ms()
            groups: dict[tuple[str, str], list[EligibleEnergy]] = {}
            for item in reg.uncertified():
                groups.setdefault((item.technology, item.market_zone), []).append(item)
            new = [
                reg.issue_rec([b.slice for b in bundle], site_id, at)
                for items in groups.values()
                for bundle in plan_rec_bundles(items)
            ]
            return await self._store(new, site_id)

    async def issue_due_recs(self) -> list[StoredCertificate]:
        """RECs for every site whose uncertified eligible energy reached 1 MWh (for a periodic
        task after the ledger closes intervals)."""
        out: list[StoredCertificate] = []
        for site in sorted({e.site for e in self.ledger.engine.entries}):
            out += await self.issue_recs(site)
        return out

    async def _store(self, new: list[Certificate], site_id: str) -> list[StoredCertificate]:
        rows = [to_stored(c, site_id) for c in new]
        try:
            await self.store.add(rows)
        except SliceOverlapError as exc:
            raise CertificateConflict(str(exc)) from None
        return rows

    async def get(self, certificate_id: str) -> StoredCertificate:
        """One certificate, its status brought up to the clock."""
        await self.expire()
        sc = await self.store.get(certificate_id)
        if sc is None:
            raise CertificateNotFound(f"certificate {certificate_id} does not exist")
        return sc

    async def owned_by(self, site_id: str) -> list[StoredCertificate]:
        """Certificates the site owns now, statuses brought up to the clock."""
        await self.expire()
        return await self.store.query(owner_site_id=site_id)

    async def transfer(
        self, certificate_id: str, to_site_id: str, by_account: str
    ) -> StoredCertificate:
        """Give an active certificate to another site (CertificateConflict if not active)."""
        sc = await self.get(certificate_id)
        _not_listed(sc)
        if sc.owner_site_id == to_site_id:
            raise CertificateConflict(
                f"certificate {certificate_id} already belongs to {to_site_id}"
            )
        reg = self._new_registry()
        reg.certificates[sc.certificate_id] = to_domain(sc)
        at = self._now_ms()
        try:
            reg.transfer(sc.certificate_id, sc.owner_site_id, to_site_id, at)
            await self.store.transfer(
                sc.certificate_id, sc.owner_site_id, to_site_id, by_account, at
            )
        except (CertificateError, StaleCertificateError) as exc:
            raise CertificateConflict(str(exc)) from None
        return await self.get(certificate_id)

    async def retire(self, certificate_id: str, beneficiary: str) -> StoredCertificate:
        """Claim an active certificate's energy for `beneficiary`; final."""
        sc = await self.get(certificate_id)
        _not_listed(sc)
        reg = self._new_registry()
        reg.certificates[sc.certificate_id] = to_domain(sc)
        at = self._now_ms()
        try:
            reg.retire(sc.certificate_id, sc.owner_site_id, beneficiary, at)
            await self.store.retire(sc.certificate_id, sc.owner_site_id, beneficiary, at)
        except (CertificateError, StaleCertificateError) as exc:
            raise CertificateConflict(str(exc)) from None
        return await self.get(certificate_id)

    async def expire(self) -> list[str]:
        """Mark active certificates past their lifetime expired; returns their ids."""
        now = self._now_ms()
        reg = self._new_registry()
        for sc in await self.store.query(status=CertStatus.ACTIVE.value, expires_by_ms=now):
            if sc.listed_lot_id is not None:
                continue  # on sale: its claim waits for the shop's buyers
            reg.certificates[sc.certificate_id] = to_domain(sc)
        ids = [c.certificate_id for c in reg.expire(now)]
        if ids:
            await self.store.mark_expired(ids)
        return ids


def _not_listed(sc: StoredCertificate) -> None:
    """A certificate on sale in the carbon shop is the shop's to retire (for its buyers)."""
    if sc.listed_lot_id is not None and sc.status == CertStatus.ACTIVE.value:
        raise CertificateConflict(
            f"certificate {sc.certificate_id} is listed for sale in the carbon shop (lot "
            f"{sc.listed_lot_id}): it is retired for its buyers when the lot sells out"
        )


def to_domain(sc: StoredCertificate) -> Certificate:
    """The registry's view of a stored certificate (owner: the owning site)."""
    return Certificate(
        certificate_id=sc.certificate_id,
        kind=CertKind(sc.kind),
        device_ids=sc.device_ids,
        production_start=sc.production_start,
        production_end=sc.production_end,
        energy_wh=sc.energy_wh,
        technology=sc.technology,
        market_zone=sc.market_zone,
        issuance_time=sc.issued_ms,
        expiry_time=sc.expires_ms,
        status=CertStatus(sc.status),
        owner=sc.owner_site_id,
        slices=tuple(Slice(s.token_id, s.start_wh, s.end_wh) for s in sc.slices),
        beneficiary=sc.beneficiary,
        retirement_time=sc.retired_ms,
    )


def to_stored(c: Certificate, issued_site_id: str) -> StoredCertificate:
    """A registry certificate as a row (times already in ms)."""
    return StoredCertificate(
        certificate_id=c.certificate_id,
        kind=c.kind.value,
        status=c.status.value,
        owner_site_id=c.owner,
        issued_site_id=issued_site_id,
        device_ids=c.device_ids,
        technology=c.technology,
        market_zone=c.market_zone,
        production_start=c.production_start,
        production_end=c.production_end,
        energy_wh=c.energy_wh,
        issued_ms=c.issuance_time,
        expires_ms=c.expiry_time,
        retired_ms=c.retirement_time,
        beneficiary=c.beneficiary,
        slices=tuple(StoredSlice(s.token_id, s.start_wh, s.end_wh) for s in c.slices),
    )
