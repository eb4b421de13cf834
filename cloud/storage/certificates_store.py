"""Energy attribute certificates on the aggregator's database (tables certificates,
certificate_slices, certificate_transfers).

Owns: storing issued certificates with their slices in one transaction, reading them back, and
the conditional status and owner changes (a change applies only if the certificate is still in
the state the caller saw, so two concurrent retirements cannot both succeed). The database
refuses a slice that overlaps one already stored (migration 0008's trigger); that surfaces here
as `SliceOverlapError`. The rules themselves live in cloud.domain.certificates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.storage.tables import certificate_slices, certificate_transfers, certificates


class SliceOverlapError(ValueError):
    """The database refused a certificate: some of its Wh are already certified."""


class StaleCertificateError(ValueError):
    """The certificate changed (status or owner) since it was read."""


@dataclass(frozen=True, slots=True)
class StoredSlice:
    """Wh [start_wh, end_wh) of generation token `token_id`."""

    token_id: str
    start_wh: int
    end_wh: int


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """One row of `certificates` with its slices."""

    certificate_id: str
    kind: str
    status: str
    owner_site_id: str
    issued_site_id: str
    device_ids: tuple[str, ...]
    technology: str
    market_zone: str
    production_start: int
    production_end: int
    energy_wh: int
    issued_ms: int
    expires_ms: int
    retired_ms: int | None
    beneficiary: str
    slices: tuple[StoredSlice, ...]
    listed_lot_id: str | None = None  # held by this carbon shop lot (migration 0021)


@dataclass(frozen=True, slots=True)
class StoredTransfer:
    """One change of owner."""

    certificate_id: str
    from_site_id: str
    to_site_id: str
    by_account: str
    at_ms: int


class CertificateStore:
    """Certificates on one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, certs: Sequence[StoredCertificate]) -> None:
        """Store certificates and their slices, all or none (SliceOverlapError on any Wh
        already certified, or a certificate id already used)."""
        if not certs:
            return
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(certificates),
                    [
                        {
                            "certificate_id": c.certificate_id,
                            "kind": c.kind,
                            "status": c.status,
                            "owner_site_id": c.owner_site_id,
                            "issued_site_id": c.issued_site_id,
                            "device_ids": ",".join(c.device_ids),
                            "technology": c.technology,
                            "market_zone": c.market_zone,
                            "production_start": c.production_start,
                            "production_end": c.production_end,
                            "energy_wh": c.energy_wh,
                            "issued_ms": c.issued_ms,
                            "expires_ms": c.expires_ms,
                            "retired_ms": c.retired_ms,
                            "beneficiary": c.beneficiary,
                        }
                        for c in certs
                    ],
                )
                await conn.execute(
                    insert(certificate_slices),
                    [
                        {
                            "token_id": s.token_id,
                            "start_wh": s.start_wh,
                            "end_wh": s.end_wh,
                            "certificate_id": c.certificate_id,
                        }
                        for c in certs
                        for s in c.slices
                    ],
                )
        except IntegrityError as exc:
            raise SliceOverlapError(
                "energy already certified: the database refused the certificate"
            ) from exc

    async def add_slice(self, certificate_id: str, s: StoredSlice) -> None:
        """Attach one more slice to a stored certificate (SliceOverlapError if refused).

        Not used by the service (a certificate's slices are written with it); it exists so the
        database's guarantee can be exercised without the service's own check.
        """
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(certificate_slices).values(
                        token_id=s.token_id,
                        start_wh=s.start_wh,
                        end_wh=s.end_wh,
                        certificate_id=certificate_id,
                    )
                )
        except IntegrityError as exc:
            raise SliceOverlapError(str(exc.orig)) from exc

    async def get(self, certificate_id: str) -> StoredCertificate | None:
        """One certificate, or None."""
        found = await self._select(certificates.c.certificate_id == certificate_id)
        return found[0] if found else None

    async def query(
        self,
        *,
        owner_site_id: str | None = None,
        issued_site_id: str | None = None,
        status: str | None = None,
        expires_by_ms: int | None = None,
    ) -> list[StoredCertificate]:
        """Certificates, oldest issue first, filtered by current owner, issuing site, status,
        and expiry at or before a time."""
        conds: list[Any] = []
        if expires_by_ms is not None:
            conds.append(certificates.c.expires_ms <= expires_by_ms)
        if owner_site_id is not None:
            conds.append(certificates.c.owner_site_id == owner_site_id)
        if issued_site_id is not None:
            conds.append(certificates.c.issued_site_id == issued_site_id)
        if status is not None:
            conds.append(certificates.c.status == status)
        return await self._select(*conds)

    async def _select(self, *conds: Any) -> list[StoredCertificate]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(certificates)
                    .where(*conds)
                    .order_by(certificates.c.issued_ms, certificates.c.certificate_id)
                )
            ).all()
            ids = [r.certificate_id for r in rows]
            slices: dict[str, list[StoredSlice]] = {i: [] for i in ids}
            for chunk in _chunks(ids, 500):
                for s in (
                    await conn.execute(
                        select(certificate_slices)
                        .where(certificate_slices.c.certificate_id.in_(chunk))
                        .order_by(certificate_slices.c.token_id, certificate_slices.c.start_wh)
                    )
                ).all():
                    slices[s.certificate_id].append(StoredSlice(s.token_id, s.start_wh, s.end_wh))
        return [_cert(r, slices[r.certificate_id]) for r in rows]

    async def transfer(
        self, certificate_id: str, from_site_id: str, to_site_id: str, by_account: str, at_ms: int
    ) -> None:
        """Change the owner of an active certificate still owned by `from_site_id`, and log it
        (StaleCertificateError if it is no longer so)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(certificates)
                .where(
                    certificates.c.certificate_id == certificate_id,
                    certificates.c.owner_site_id == from_site_id,
                    certificates.c.status == "active",
                    certificates.c.listed_lot_id.is_(None),  # not while the shop sells it
                )
                .values(owner_site_id=to_site_id)
            )
            if done.rowcount != 1:
                raise StaleCertificateError(f"certificate {certificate_id} changed meanwhile")
            await conn.execute(
                insert(certificate_transfers).values(
                    certificate_id=certificate_id,
                    from_site_id=from_site_id,
                    to_site_id=to_site_id,
                    by_account=by_account,
                    at_ms=at_ms,
                )
            )

    async def retire(
        self, certificate_id: str, owner_site_id: str, beneficiary: str, at_ms: int
    ) -> None:
        """Retire an active certificate still owned by `owner_site_id` (else
        StaleCertificateError)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(certificates)
                .where(
                    certificates.c.certificate_id == certificate_id,
                    certificates.c.owner_site_id == owner_site_id,
                    certificates.c.status == "active",
                    certificates.c.listed_lot_id.is_(None),  # the shop retires a listed one
                )
                .values(status="retired", beneficiary=beneficiary, retired_ms=at_ms)
            )
            if done.rowcount != 1:
                raise StaleCertificateError(f"certificate {certificate_id} changed meanwhile")

    async def mark_expired(self, certificate_ids: Iterable[str]) -> int:
        """Mark these certificates expired if they are still active; returns how many."""
        ids = list(certificate_ids)
        n = 0
        async with self.engine.begin() as conn:
            for chunk in _chunks(ids, 500):
                done = await conn.execute(
                    update(certificates)
                    .where(
                        certificates.c.certificate_id.in_(chunk),
                        certificates.c.status == "active",
                        # a certificate on sale keeps its claim until its lot sells out
                        certificates.c.listed_lot_id.is_(None),
                    )
                    .values(status="expired")
                )
                n += done.rowcount
        return n

    async def transfers(self, certificate_id: str) -> list[StoredTransfer]:
        """The owners a certificate had, oldest change first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(certificate_transfers)
                    .where(certificate_transfers.c.certificate_id == certificate_id)
                    .order_by(certificate_transfers.c.id)
                )
            ).all()
        return [
            StoredTransfer(r.certificate_id, r.from_site_id, r.to_site_id, r.by_account, r.at_ms)
            for r in rows
        ]


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _cert(r: Any, slices: list[StoredSlice]) -> StoredCertificate:
    return StoredCertificate(
        certificate_id=r.certificate_id,
        kind=r.kind,
        status=r.status,
        owner_site_id=r.owner_site_id,
        issued_site_id=r.issued_site_id,
        device_ids=tuple(d for d in r.device_ids.split(",") if d),
        technology=r.technology,
        market_zone=r.market_zone,
        production_start=r.production_start,
        production_end=r.production_end,
        energy_wh=r.energy_wh,
        issued_ms=r.issued_ms,
        expires_ms=r.expires_ms,
        retired_ms=r.retired_ms,
        beneficiary=r.beneficiary,
        slices=tuple(slices),
        listed_lot_id=r.listed_lot_id,
    )
