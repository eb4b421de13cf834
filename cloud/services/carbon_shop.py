"""The retail carbon shop: providers list projects and lots, buyers reserve, pay and have the
units retired on their behalf (docs/carbon-shop.md).

Owns: the shop's flow over cloud.storage.carbon_store, with the rules of
cloud.domain.carbon_shop. Payments are not ours: the shop is given `start_payment(ref,
amount_minor, currency, description) -> payment_id` and the payment service calls back
`succeeded(ref, payment_id)` or `failed(ref, payment_id, reason)`; `ref` is the order id. Both
callbacks and `expire` are idempotent (a conditional state change: a second call changes
nothing), so the payment service may deliver them more than once.

Nothing is acknowledged before it is stored: `checkout` stores the reservation (units taken,
serials allocated) before it asks for a payment, and a payment that cannot be started cancels
the reservation again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.domain.carbon_shop import (
    DEFAULT_RESERVATION_S,
    SELLABLE,
    Offer,
    OrderState,
    ProjectFilter,
    ProjectKind,
    ProjectStatus,
    ShopError,
    check_country,
    check_currency,
    check_kg,
    check_listing,
    check_project_transition,
    check_vintage,
    matches,
    reservation_expiry,
)
from cloud.domain.certificates import DEFAULT_GRID_G_CO2_PER_KWH
from cloud.services.ledger import LedgerService
from cloud.storage.carbon_store import (
    CarbonStore,
    CertificateNotHeld,
    InsufficientUnits,
    OrderNotPlaced,
    OrderNotReserved,
    SoldOut,
    StoredEvent,
    StoredLot,
    StoredOrder,
    StoredProject,
    StoredRetirement,
    new_id,
)
from cloud.storage.certificates_store import CertificateStore, StoredCertificate
from protocol import cose
from protocol.ledger_leaf import decode_leaf
from protocol.merkle import leaf_hash
from rules.carbon import (
    GRIDMINT_SOLAR,
    Backing,
    LotListed,
    OrderPaid,
    PaidLine,
    Retired,
    RetiredSpan,
    ShopEvent,
    avoided_kg,
    decode_shop_event,
    encode_shop_event,
)
from rules.ledger import CARBON_SITE, Entry, EntryKind, LedgerEngine

SOLAR_STANDARD = "gridmint GC (EnergyTag-style granular certificate)"
SOLAR_VERIFIER = "gridmint ledger (signed records)"
MAX_CERTIFICATES_PER_LOT = 500
PROOF_PENDING = "no signed checkpoint covers this leaf yet: proof pending"

# start_payment(ref, amount_minor, currency, description) -> the provider's payment id
StartPayment = Callable[[str, int, str, str], Awaitable[str]]


class ShopNotFound(LookupError):
    """No such project, lot or order (or not the caller's)."""


class ShopInvalid(ValueError):
    """The request breaks a rule (quantity, currency, serials, ...); the message says which."""


class ShopForbidden(PermissionError):
    """The caller may not act on this project."""


class ShopConflict(Exception):
    """The units are not there (any more), or the order is no longer in a state for this."""


class PaymentUnavailable(RuntimeError):
    """No payment provider is configured (the API answers 503)."""


class LedgerUnavailable(RuntimeError):
    """The shop runs without the ledger here, so it cannot list certificates (503)."""


async def no_payment_provider(ref: str, amount_minor: int, currency: str, description: str) -> str:
    """The `start_payment` of a shop without a payment port: refuses every payment."""
    raise PaymentUnavailable("no payment provider configured")


@dataclass(frozen=True, slots=True)
class ProjectView:
    project: StoredProject
    lots: tuple[StoredLot, ...]

    @property
    def available_kg(self) -> int:
        return sum(lot.available_kg for lot in self.lots)


class ShopService:
    """The carbon shop of one aggregator."""

    def __init__(
        self,
        store: CarbonStore,
        start_payment: StartPayment,
        now: Callable[[], float] = time.time,
        reservation_s: int = DEFAULT_RESERVATION_S,
        *,
        ledger: LedgerService | None = None,
        certificates: CertificateStore | None = None,
        grid_g_co2e_per_kwh: int = DEFAULT_GRID_G_CO2_PER_KWH,
        solar_country: str = "US",
        deployment: str = "",
    ) -> None:
        """With `ledger`, every lot listed, order paid and retirement is also a CARBON leaf of
        the ledger log, written in the same transaction as the shop's rows (docs/carbon-shop.md,
        "On the ledger"), and homeowners may list their certificates (`certificates`): kg =
        Wh x `grid_g_co2e_per_kwh` / 1e6, rounded down. `deployment` is the records' COSE
        external AAD, shown in chain-of-custody reports so they can be checked."""
        self.store = store
        self.start_payment = start_payment
        self.now = now
        self.reservation_s = reservation_s
        self.ledger = ledger
        self.certificates = certificates
        if grid_g_co2e_per_kwh <= 0:
            raise ValueError("the grid emission factor must be positive")
        self.grid_g_co2e_per_kwh = grid_g_co2e_per_kwh
        self.solar_country = check_country(solar_country)
        self.deployment = deployment
        # Shop changes that write ledger leaves are decided one at a time in this process (the
        # ledger's one writer): a state read and the append that depends on it never interleave
        # with another's, so a payment reported twice writes one retirement leaf.
        self._ledger_lock = asyncio.Lock()

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    # projects and lots ----------------------------------------------------------------------

    async def register_project(
        self,
        provider_account_id: str,
        *,
        name: str,
        kind: str,
        country: str,
        standard: str,
        verifier: str,
        serial_prefix: str,
        vintage: int,
        start_date: str | None = None,
        end_date: str | None = None,
        description: str = "",
    ) -> StoredProject:
        """A new active project of `provider_account_id` (the route checks the role)."""
        now_ms = self._now_ms()
        try:
            pkind = ProjectKind(kind)
        except ValueError:
            raise ShopInvalid(
                f"kind {kind!r} is not one of {', '.join(k.value for k in ProjectKind)}"
            ) from None
        if pkind is ProjectKind.GRIDMINT_SOLAR:
            raise ShopInvalid("gridmint_solar projects are made from gridmint certificates")
        try:
            check_country(country)
            check_vintage(vintage, datetime.fromtimestamp(now_ms / 1000, UTC).year)
            check_listing(f"{serial_prefix}-1..1", 1, "EUR")  # the prefix's form
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        for label, d in (("start_date", start_date), ("end_date", end_date)):
            try:
                if d is not None:
                    datetime.strptime(d, "%Y-%m-%d")  # noqa: DTZ007 (a date, no time)
            except ValueError:
                raise ShopInvalid(f"{label} must be a date YYYY-MM-DD") from None
        if start_date and end_date and end_date < start_date:
            raise ShopInvalid("end_date is before start_date")
        for label, text in (("name", name), ("standard", standard), ("verifier", verifier)):
            if not text.strip():
                raise ShopInvalid(f"{label} must not be empty")
        p = StoredProject(
            project_id=new_id("prj"),
            provider_account_id=provider_account_id,
            name=name.strip(),
            kind=pkind.value,
            country=country,
            standard=standard.strip(),
            verifier=verifier.strip(),
            serial_prefix=serial_prefix,
            start_date=start_date,
            end_date=end_date,
            vintage=vintage,
            status=ProjectStatus.ACTIVE.value,
            description=description,
            created_ms=now_ms,
        )
        await self.store.add_project(p, provider_account_id)
        return p

    async def add_lot(
        self,
        by_account_id: str,
        project_id: str,
        *,
        serials: str,
        price_minor_per_t: int,
        currency: str,
        admin: bool = False,
    ) -> StoredLot:
        """A lot of the project: its serial range (prefix = the project's), price, currency.
        Only the project's provider (or an admin) adds lots; serial ranges never overlap."""
        project = await self._project(project_id)
        if not admin and project.provider_account_id != by_account_id:
            raise ShopForbidden(f"project {project_id} belongs to another provider")
        if project.status != ProjectStatus.ACTIVE.value:
            raise ShopConflict(f"project {project_id} is {project.status}")
        try:
            listing = check_listing(serials, price_minor_per_t, currency)
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        if listing.serials.prefix != project.serial_prefix:
            raise ShopInvalid(
                f"serials of project {project_id} start with {project.serial_prefix!r}"
            )
        s = listing.serials
        async with self._ledger_lock:  # the overlap check holds until the lot is stored
            for other in await self.store.lots(project_id=project_id):
                if other.serial_start <= s.end and s.start <= other.serial_end:
                    raise ShopConflict(f"serials {s} overlap lot {other.lot_id}")
            lot = StoredLot(
                lot_id=new_id("lot"),
                project_id=project_id,
                serial_start=s.start,
                serial_end=s.end,
                price_minor_per_t=listing.price_minor_per_t,
                currency=listing.currency,
                available_kg=s.kg,
                created_ms=self._now_ms(),
            )
            if self.ledger is None:
                await self.store.add_lot(lot, by_account_id)
                return lot
            event = LotListed(
                at_ms=lot.created_ms,
                lot_id=lot.lot_id,
                project_id=project_id,
                kind=project.kind,
                serial_prefix=project.serial_prefix,
                serial_start=s.start,
                serial_end=s.end,
                price_minor_per_t=lot.price_minor_per_t,
                currency=lot.currency,
            )
            return await self._list_on_ledger(lot, event, CARBON_SITE, by_account_id)

    async def _list_on_ledger(
        self,
        lot: StoredLot,
        event: LotListed,
        site: str,
        actor: str,
        hold: tuple[Sequence[str], str] | None = None,
    ) -> StoredLot:
        """Write the lot and its listing leaf in one unit of work (with `hold` = (certificates,
        owner site): the certificates held by the lot in it too)."""
        assert self.ledger is not None
        seqs: list[int] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            e = engine.record_carbon(site, lot.lot_id, encode_shop_event(event))
            seqs.append(e.seq)
            return [e]

        async def also(conn: AsyncConnection) -> None:
            if hold is not None:
                for certificate_id in hold[0]:
                    await self.store.hold_certificate(conn, certificate_id, hold[1], lot.lot_id)
            await self.store.add_lot(dataclasses.replace(lot, ledger_seq=seqs[0]), actor, conn=conn)

        try:
            await self.ledger.append(decide, also)
        except CertificateNotHeld as exc:
            raise ShopConflict(str(exc)) from None
        await self._checkpoint()
        return dataclasses.replace(lot, ledger_seq=seqs[0])

    async def _checkpoint(self) -> None:
        """Sign a checkpoint over the new shop leaves at once, so their proofs are there
        (shop events are rare; the close loop would sign one within a round anyway)."""
        assert self.ledger is not None
        with contextlib.suppress(Exception):  # best effort: proofs stay pending until then
            await self.ledger.checkpoint_if_grown()

    # homeowners' certificates ----------------------------------------------------------------

    async def list_certificates(
        self,
        owner_account_id: str,
        certificate_ids: Sequence[str],
        *,
        price_minor_per_t: int,
        currency: str,
        site_name: str = "",
    ) -> tuple[StoredProject, StoredLot]:
        """Put active certificates of one site on sale as one gridmint_solar lot of the site's
        project (made on its first listing): kg = their Wh x the grid factor / 1e6, rounded
        down (a home's granular certificate covers one interval, well under a kg: several are
        listed together), serials `GC-<first certificate>-1..kg` (a hash of the set for
        several). The caller (the route) has checked that `owner_account_id` owns the site.
        While listed, the certificates are held by the lot: not transferred, retired or
        expired outside the shop; the shop retires them for its buyers when the lot sells out.

        ShopNotFound: no such certificate; ShopConflict: not active, already listed,
        transferred (only a site's own generation is listed), or of another site; ShopInvalid:
        0 kg, none or repeated, bad price or currency; LedgerUnavailable: no ledger here."""
        if self.ledger is None or self.certificates is None:
            raise LedgerUnavailable("certificates are listed on the ledger, not running here")
        ids = list(certificate_ids)
        if not ids or len(set(ids)) != len(ids) or len(ids) > MAX_CERTIFICATES_PER_LOT:
            raise ShopInvalid(
                f"list 1 to {MAX_CERTIFICATES_PER_LOT} different certificates in one lot"
            )
        try:
            check_currency(currency)
            check_listing("GC-1..1", price_minor_per_t, currency)
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        async with self._ledger_lock:
            now_ms = self._now_ms()
            certs: list[StoredCertificate] = []
            for certificate_id in ids:
                cert = await self.certificates.get(certificate_id)
                if cert is None:
                    raise ShopNotFound(f"certificate {certificate_id} does not exist")
                if cert.listed_lot_id is not None:
                    raise ShopConflict(
                        f"certificate {certificate_id} is already listed (lot {cert.listed_lot_id})"
                    )
                if cert.status != "active" or now_ms >= cert.expires_ms:
                    status = "expired" if cert.status == "active" else cert.status
                    raise ShopConflict(f"certificate {certificate_id} is {status}, not active")
                if cert.owner_site_id != cert.issued_site_id:
                    raise ShopConflict(
                        f"certificate {certificate_id} was transferred to site "
                        f"{cert.owner_site_id}: only a site's own generation is listed"
                    )
                if certs and cert.owner_site_id != certs[0].owner_site_id:
                    raise ShopConflict("the certificates of one lot belong to one site")
                certs.append(cert)
            wh = sum(c.energy_wh for c in certs)
            kg = avoided_kg(wh, self.grid_g_co2e_per_kwh)
            if kg <= 0:
                what = "certificate " + ids[0] if len(ids) == 1 else f"{len(ids)} certificates"
                raise ShopInvalid(
                    f"{what} certify {wh} Wh, which avoid 0 kg CO2e at "
                    f"{self.grid_g_co2e_per_kwh} g/kWh: nothing to sell (list more together)"
                )
            backing: tuple[Backing, ...] = ()
            for c in certs:
                backing += await self._backing(c)
            site = certs[0].owner_site_id
            project = await self._solar_project(owner_account_id, site, site_name, certs[0], now_ms)
            lot = StoredLot(
                lot_id=new_id("lot"),
                project_id=project.project_id,
                serial_start=1,
                serial_end=kg,
                price_minor_per_t=price_minor_per_t,
                currency=currency,
                available_kg=kg,
                created_ms=now_ms,
                certificate_id=ids[0],
                serial_prefix=solar_lot_prefix(ids),
            )
            event = LotListed(
                at_ms=now_ms,
                lot_id=lot.lot_id,
                project_id=project.project_id,
                kind=GRIDMINT_SOLAR,
                serial_prefix=lot.prefix(project.serial_prefix),
                serial_start=1,
                serial_end=kg,
                price_minor_per_t=price_minor_per_t,
                currency=currency,
                certificate_ids=tuple(ids),
                site_id=site,
                g_co2e_per_kwh=self.grid_g_co2e_per_kwh,
                backing=backing,
            )
            listed = await self._list_on_ledger(
                lot, event, site, owner_account_id, hold=(ids, site)
            )
            return project, listed

    async def _backing(self, cert: StoredCertificate) -> tuple[Backing, ...]:
        """The certificate's slices with the signed records the ledger minted them from."""
        assert self.ledger is not None
        minted = await self.ledger.store.seqs_of_tokens([s.token_id for s in cert.slices])
        out = []
        for s in cert.slices:
            found = minted.get(s.token_id)
            if found is None:
                raise ShopConflict(f"token {s.token_id} of the certificate is not in the ledger")
            out.append(Backing(s.token_id, found[1], s.start_wh, s.end_wh))
        return tuple(sorted(out, key=lambda b: (b.token_id, b.start_wh)))

    async def _solar_project(
        self,
        owner_account_id: str,
        site_id: str,
        site_name: str,
        cert: StoredCertificate,
        now_ms: int,
    ) -> StoredProject:
        """The site's gridmint_solar project (one per site, made on its first listing)."""
        project_id = "prj_gm_" + hashlib.sha256(site_id.encode()).hexdigest()[:20]
        vintage = datetime.fromtimestamp(cert.production_start, UTC).year
        p = StoredProject(
            project_id=project_id,
            provider_account_id=owner_account_id,
            name=f"Rooftop solar of {site_name or site_id}",
            kind=ProjectKind.GRIDMINT_SOLAR.value,
            country=self.solar_country,
            standard=SOLAR_STANDARD,
            verifier=SOLAR_VERIFIER,
            serial_prefix=solar_project_prefix(site_id),
            start_date=None,
            end_date=None,
            vintage=vintage,
            status=ProjectStatus.ACTIVE.value,
            description=(
                f"Generation of site {site_id}, metered and signed by its devices, minted on "
                f"the gridmint ledger and certified; avoided CO2e at {self.grid_g_co2e_per_kwh} "
                "g/kWh (US EPA AVERT national marginal rate)."
            ),
            created_ms=now_ms,
        )
        return await self.store.create_project_once(p, owner_account_id)

    async def set_project_status(
        self,
        by_account_id: str,
        project_id: str,
        status: str,
        reason: str = "",
        *,
        admin: bool = False,
    ) -> StoredProject:
        """Retire (no new lots; what is listed still sells) or withdraw (off the shop) a
        project: its provider or an admin. ShopInvalid: unknown status or a reason too long;
        ShopForbidden: another provider's; ShopConflict: not a change the project may make."""
        project = await self._project(project_id)
        if not admin and project.provider_account_id != by_account_id:
            raise ShopForbidden(f"project {project_id} belongs to another provider")
        try:
            new = ProjectStatus(status)
        except ValueError:
            raise ShopInvalid(
                f"status {status!r} is not one of {', '.join(x.value for x in ProjectStatus)}"
            ) from None
        try:
            check_project_transition(ProjectStatus(project.status), new)
        except ShopError as exc:
            raise ShopConflict(str(exc)) from None
        if not await self.store.set_project_status(
            project_id, project.status, new.value, self._now_ms(), by_account_id, reason.strip()
        ):
            raise ShopConflict(f"project {project_id} changed meanwhile; read it again")
        return await self._project(project_id)

    async def _project(self, project_id: str) -> StoredProject:
        p = await self.store.get_project(project_id)
        if p is None:
            raise ShopNotFound(f"project {project_id} does not exist")
        return p

    async def project(self, project_id: str) -> ProjectView:
        """One project with its lots."""
        p = await self._project(project_id)
        return ProjectView(p, tuple(await self.store.lots(project_id=project_id)))

    async def search(self, f: ProjectFilter) -> list[ProjectView]:
        """Active projects that fit the filter, oldest first, with their lots."""
        lots: dict[str, list[StoredLot]] = {}
        for lot in await self.store.lots():
            lots.setdefault(lot.project_id, []).append(lot)
        out = []
        for p in await self.store.projects():
            mine = lots.get(p.project_id, [])
            offer = Offer(
                ProjectKind(p.kind),
                p.country,
                p.vintage,
                p.standard,
                ProjectStatus(p.status),
                tuple(lot.price_minor_per_t for lot in mine if lot.available_kg > 0),
            )
            if matches(f, offer):
                out.append(ProjectView(p, tuple(mine)))
        return out

    async def custody(self, project_id: str) -> dict[str, Any]:
        """The project's chain of custody, from the stored rows and the event log: who
        registered it and when, standard, verifier, serials, and every reservation, placement,
        release and retirement of its units.

        With the ledger, each lot's `ledger` lists its CARBON leaves (listing, paid orders,
        retirements: seq, leaf hash, the decoded event, and the inclusion proof against the
        newest signed checkpoint, or `pending` when none covers it yet), `ledger_events` all of
        them; a gridmint_solar lot's `certificate` and `tokens` show each generation token
        behind it: its signed record (COSE envelope, device, the device key that signed it)
        and the inclusion proof of the MINT_GEN leaf that minted it."""
        view = await self.project(project_id)
        p = view.project
        events = await self.store.events(project_id=project_id)
        lot_ids = [lot.lot_id for lot in view.lots]
        retired = await self.store.retirements(lot_ids=lot_ids)
        prefixes = {lot.lot_id: lot.prefix(p.serial_prefix) for lot in view.lots}
        seqs: dict[str, list[int]] = {
            lot.lot_id: [] if lot.ledger_seq is None else [lot.ledger_seq] for lot in view.lots
        }
        for lot_id, _order, paid_seq, retired_seq in await self.store.paid_orders_of_lots(lot_ids):
            seqs[lot_id] += [paid_seq, retired_seq]
        leaves = await self._leaves(sorted({q for qs in seqs.values() for q in qs}))
        lots = []
        for lot in view.lots:
            row: dict[str, Any] = {
                "lot_id": lot.lot_id,
                "serials": f"{prefixes[lot.lot_id]}-{lot.serial_start}..{lot.serial_end}",
                "kg": lot.kg,
                "available_kg": lot.available_kg,
                "retired_kg": sum(
                    r.serial_end - r.serial_start + 1 for r in retired if r.lot_id == lot.lot_id
                ),
                "price_minor_per_t": lot.price_minor_per_t,
                "currency": lot.currency,
                "certificate_id": lot.certificate_id,
                "ledger": [leaves[q] for q in sorted(set(seqs[lot.lot_id])) if q in leaves],
                "tokens": [],
            }
            if lot.certificate_id is not None:
                row.update(await self._certificate_custody(lot.lot_id))
            lots.append(row)
        out: dict[str, Any] = {
            "project_id": p.project_id,
            "name": p.name,
            "kind": p.kind,
            "registered_by": p.provider_account_id,
            "registered_ms": p.created_ms,
            "standard": p.standard,
            "verifier": p.verifier,
            "country": p.country,
            "vintage": p.vintage,
            "lots": lots,
            "events": [_event_public(e) for e in events],
            "retirements": [_retirement_public(prefixes[r.lot_id], r) for r in retired],
            "ledger_events": [leaves[q] for q in sorted(leaves)],
        }
        if self.ledger is not None:
            out["log_key"] = self.ledger.verifier_key
            out["records_aad"] = self.deployment
        return out

    async def _leaves(self, seqs: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The shop's ledger leaves at these seqs, decoded, each with its inclusion proof
        (None and `pending` while no signed checkpoint covers it)."""
        if self.ledger is None or not seqs:
            return {}
        raw = await self.ledger.store.leaves_at(list(seqs))
        proofs = await self.ledger.proofs_for_seqs(list(seqs))
        out: dict[int, dict[str, Any]] = {}
        for seq in seqs:
            leaf = raw.get(seq)
            if leaf is None:
                continue
            entry = Entry.from_bytes(decode_leaf(leaf).entry)
            event: dict[str, Any] | None = None
            if entry.kind is EntryKind.CARBON:
                event = _shop_event_public(decode_shop_event(entry.market))
            proof = proofs.get(seq)
            out[seq] = {
                "seq": seq,
                "kind": entry.kind.name,
                "site": entry.site,
                "ref": entry.ref,
                "event": event,
                "leaf": leaf.hex(),
                "leaf_hash": leaf_hash(leaf).hex(),
                "proof": None
                if proof is None
                else {
                    "tree_size": proof.tree_size,
                    "path": [h.hex() for h in proof.path],
                    "checkpoint": proof.checkpoint,
                },
                "pending": PROOF_PENDING if proof is None else None,
            }
        return out

    async def _certificate_custody(self, lot_id: str) -> dict[str, Any]:
        """A gridmint_solar lot's certificates and, per token behind them, the signed record,
        the key that signed it and the inclusion proof of the MINT_GEN that minted it."""
        if self.ledger is None or self.certificates is None:
            return {}
        certs = [
            c
            for cid in (await self.store.held_certificates([lot_id])).get(lot_id, [])
            if (c := await self.certificates.get(cid)) is not None
        ]
        slices = [(c.certificate_id, sl) for c in certs for sl in c.slices]
        token_ids = sorted({sl.token_id for _, sl in slices})
        records = await self.ledger.store.records_of_tokens(token_ids)
        keys = {
            (device, kid): pub
            for device, _site, kid, pub, _f, _u in await self.ledger.store.device_keys(
                sorted({r.device_id for r in records.values()})
            )
        }
        proofs = await self.ledger.proofs_for_tokens(token_ids)
        tokens = []
        for certificate_id, sl in slices:
            rec = records.get(sl.token_id)
            item: dict[str, Any] = {
                "certificate_id": certificate_id,
                "token_id": sl.token_id,
                "start_wh": sl.start_wh,
                "end_wh": sl.end_wh,
                "wh": sl.end_wh - sl.start_wh,
                "record": None,
                "mint": None,
                "pending": None,
            }
            if rec is not None:
                kid = cose.parse(rec.envelope).kid
                pub = keys.get((rec.device_id, kid))
                item["record"] = {
                    "device_id": rec.device_id,
                    "site_id": rec.site_id,
                    "seq": rec.seq,
                    "interval_start": rec.interval_start,
                    "record_hash": rec.record_hash.hex(),
                    "envelope": rec.envelope.hex(),
                    "kid": kid.hex(),
                    "public_key": None if pub is None else pub.hex(),
                }
            proof = proofs.get(sl.token_id)
            if proof is None:
                item["pending"] = PROOF_PENDING
            else:
                item["mint"] = {  # the same shape as a shop leaf's (`_leaves`)
                    "seq": proof.leaf_index,
                    "kind": EntryKind.MINT_GEN.name,
                    "leaf": proof.leaf.hex(),
                    "leaf_hash": leaf_hash(proof.leaf).hex(),
                    "proof": {
                        "tree_size": proof.tree_size,
                        "path": [h.hex() for h in proof.path],
                        "checkpoint": proof.checkpoint,
                    },
                }
            tokens.append(item)
        return {
            "certificates": [
                {
                    "certificate_id": cert.certificate_id,
                    "kind": cert.kind,
                    "status": cert.status,
                    "site_id": cert.issued_site_id,
                    "energy_wh": cert.energy_wh,
                    "g_co2e_per_kwh": self.grid_g_co2e_per_kwh,
                    "technology": cert.technology,
                    "market_zone": cert.market_zone,
                    "production_start": cert.production_start,
                    "production_end": cert.production_end,
                    "beneficiary": cert.beneficiary,
                }
                for cert in certs
            ],
            "tokens": tokens,
        }

    # orders ---------------------------------------------------------------------------------

    async def checkout(
        self,
        buyer_account_id: str,
        lines: Sequence[tuple[str, int]],
        currency: str,
        beneficiary: str,
        reason: str = "",
        retire_now: bool = True,
    ) -> StoredOrder:
        """Reserve every line (lot id, kg) or none, price it, start the payment and return the
        reserved order (expires at now + reservation_s). With `retire_now` False the paid order
        stays placed (its serials the buyer's, unsold to anyone else) until `retire`.

        ShopInvalid: empty order, bad quantity or currency, a lot in another currency;
        ShopNotFound: unknown lot; ShopConflict: not enough units (says how many are left).
        """
        if not lines:
            raise ShopInvalid("an order has at least one line")
        if not beneficiary.strip():
            raise ShopInvalid("a retirement names its beneficiary")
        try:
            check_currency(currency)
            for _, kg in lines:
                check_kg(kg)
        except ShopError as exc:
            raise ShopInvalid(str(exc)) from None
        found = {lot.lot_id: lot for lot in await self.store.lots(lot_ids=[i for i, _ in lines])}
        picked: list[tuple[StoredLot, int]] = []
        for lot_id, kg in lines:
            lot = found.get(lot_id)
            if lot is None:
                raise ShopNotFound(f"lot {lot_id} does not exist")
            if lot.currency != currency:
                raise ShopInvalid(
                    f"lot {lot_id} is priced in {lot.currency}, the order is in {currency}"
                )
            picked.append((lot, kg))
        await self.expire()  # units of reservations that ran out are for sale again
        projects = {p.project_id: p for p in await self.store.projects()}
        for lot, _ in picked:
            status = projects[lot.project_id].status
            if ProjectStatus(status) not in SELLABLE:
                raise ShopConflict(f"project {lot.project_id} of lot {lot.lot_id} is {status}")
        now_ms = self._now_ms()
        order_id = new_id("ord")
        try:
            order = await self.store.reserve(
                order_id=order_id,
                buyer_account_id=buyer_account_id,
                currency=currency,
                beneficiary=beneficiary.strip(),
                reason=reason.strip(),
                lines=picked,
                now_ms=now_ms,
                expires_ms=reservation_expiry(now_ms, self.reservation_s),
                retire_on_payment=retire_now,
            )
        except InsufficientUnits as exc:
            raise ShopConflict(
                f"lot {exc.lot_id} has only {exc.available_kg} kg left "
                f"({exc.wanted_kg} kg were asked for)"
            ) from None
        kg = sum(ln.kg for ln in order.lines)
        description = f"Retirement of {kg} kg CO2e for {order.beneficiary} (order {order_id})"
        try:
            payment_id = await self.start_payment(
                order_id, order.total_minor, currency, description
            )
        except BaseException:
            await self.store.release(
                order_id, OrderState.CANCELLED, self._now_ms(), note="payment not started"
            )
            raise
        await self.store.set_payment(order_id, payment_id)
        return await self.order(order_id)

    async def succeeded(self, ref: str, payment_id: str) -> StoredOrder | None:
        """The payment of order `ref` succeeded: the order is placed and its units retired on
        behalf of its beneficiary (complete). Idempotent: a second call changes nothing (and
        writes no second ledger leaf).

        With the ledger, the paid order and its retirement are two CARBON leaves written in the
        same transaction as the rows; a gridmint_solar lot whose last serials this retires has
        its certificate retired with it, for the lot's buyers.

        A payment that arrives after the reservation was released (expired or cancelled)
        retires nothing: the order stays as it is and a `paid_after_release` event says the
        payment must be refunded. Returns the order (None for an unknown ref)."""
        async with self._ledger_lock:
            order = await self.store.get_order(ref)
            if order is None:
                return None
            if order.state == OrderState.RESERVED.value:
                try:
                    if order.retire_on_payment:
                        await self._place_and_retire(order, payment_id)
                    else:
                        await self._place(order, payment_id)
                except (OrderNotReserved, CertificateNotHeld):
                    order = await self.store.get_order(ref)  # released meanwhile (expiry)
                    assert order is not None
                    if order.state == OrderState.RESERVED.value:
                        raise
            if order.state in (OrderState.EXPIRED.value, OrderState.CANCELLED.value):
                await self.store.note(
                    ref,
                    "paid_after_release",
                    self._now_ms(),
                    {"payment_id": payment_id, "state": order.state, "refund": True},
                )
        return await self.store.get_order(ref)

    async def retire(
        self,
        buyer_account_id: str | None,
        order_id: str,
        beneficiary: str | None = None,
        reason: str | None = None,
    ) -> StoredOrder:
        """Retire a paid order's units now, for `beneficiary` (default: the one named at
        checkout) and `reason`: a `Retired` leaf with the rows, in one unit of work.
        ShopNotFound: unknown, or not the buyer's (None: an admin); ShopConflict: not paid and
        waiting (still reserved, already retired, released); ShopInvalid: empty beneficiary."""
        async with self._ledger_lock:
            order = await self.store.get_order(order_id)
            if order is None or (
                buyer_account_id is not None and order.buyer_account_id != buyer_account_id
            ):
                raise ShopNotFound(f"order {order_id} does not exist")
            who = (order.beneficiary if beneficiary is None else beneficiary).strip()
            why = (order.reason if reason is None else reason).strip()
            if not who:
                raise ShopInvalid("a retirement names its beneficiary")
            if order.state != OrderState.PLACED.value:
                raise ShopConflict(
                    f"order {order_id} is {order.state}: only a paid order waiting to be "
                    "retired can be retired"
                )
            try:
                await self._retire_placed(order, who, why)
            except (OrderNotPlaced, CertificateNotHeld) as exc:
                raise ShopConflict(str(exc)) from None
        return await self.order(order_id)

    async def _retire_placed(self, order: StoredOrder, beneficiary: str, reason: str) -> None:
        now_ms = self._now_ms()
        sold_out = await self._sold_out(dataclasses.replace(order, beneficiary=beneficiary))
        if self.ledger is None:
            await self.store.retire_placed(
                order.order_id,
                now_ms,
                beneficiary=beneficiary,
                reason=reason,
                sold_out=sold_out,
            )
            return
        retired = Retired(
            at_ms=now_ms,
            order_id=order.order_id,
            beneficiary=beneficiary,
            reason=reason,
            spans=tuple(
                RetiredSpan(ln.lot_id, ln.serial_start, ln.serial_end)
                for ln in sorted(order.lines, key=lambda x: (x.lot_id, x.serial_start))
            ),
            certificates=tuple(so.certificate_id for so in sold_out),
        )
        seqs: list[int] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            e = engine.record_carbon(CARBON_SITE, order.order_id, encode_shop_event(retired))
            seqs.append(e.seq)
            return [e]

        async def also(conn: AsyncConnection) -> None:
            await self.store.retire_placed(
                order.order_id,
                now_ms,
                beneficiary=beneficiary,
                reason=reason,
                conn=conn,
                retired_seq=seqs[0],
                sold_out=sold_out,
            )

        assert self.ledger is not None
        await self.ledger.append(decide, also)
        await self._checkpoint()

    async def _place(self, order: StoredOrder, payment_id: str) -> None:
        """Paid, to be retired later: the order's `OrderPaid` leaf and placed row."""
        now_ms = self._now_ms()
        if self.ledger is None:
            await self.store.place(order.order_id, payment_id, now_ms)
            return
        paid = OrderPaid(
            at_ms=now_ms,
            order_id=order.order_id,
            buyer=order.buyer_account_id,
            currency=order.currency,
            total_minor=order.total_minor,
            payment_id=payment_id,
            lines=tuple(
                PaidLine(ln.lot_id, ln.serial_start, ln.serial_end, ln.kg, ln.price_minor)
                for ln in sorted(order.lines, key=lambda x: (x.lot_id, x.serial_start))
            ),
        )
        listings = await self._unlisted_listings(order, now_ms)
        seqs: list[int] = []
        listed: list[tuple[str, int]] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            out = []
            for lot_id, ev in listings:
                e = engine.record_carbon(CARBON_SITE, lot_id, encode_shop_event(ev))
                listed.append((lot_id, e.seq))
                out.append(e)
            e = engine.record_carbon(CARBON_SITE, order.order_id, encode_shop_event(paid))
            seqs.append(e.seq)
            return [*out, e]

        async def also(conn: AsyncConnection) -> None:
            for lot_id, seq in listed:
                await self.store.set_lot_seq(conn, lot_id, seq)
            await self.store.place(order.order_id, payment_id, now_ms, conn=conn, paid_seq=seqs[0])

        assert self.ledger is not None
        await self.ledger.append(decide, also)
        await self._checkpoint()

    async def _unlisted_listings(
        self, order: StoredOrder, now_ms: int
    ) -> list[tuple[str, LotListed]]:
        """Lots stored before the shop wrote leaves (an upgraded database) are listed on the
        ledger first, as they stand, so the paid order names listed lots."""
        unlisted = [
            lot
            for lot in await self.store.lots(lot_ids=sorted({ln.lot_id for ln in order.lines}))
            if lot.ledger_seq is None
        ]
        projects = {p.project_id: p for p in await self.store.projects()}
        return [
            (
                lot.lot_id,
                LotListed(
                    at_ms=now_ms,
                    lot_id=lot.lot_id,
                    project_id=lot.project_id,
                    kind=projects[lot.project_id].kind,
                    serial_prefix=lot.prefix(projects[lot.project_id].serial_prefix),
                    serial_start=lot.serial_start,
                    serial_end=lot.serial_end,
                    price_minor_per_t=lot.price_minor_per_t,
                    currency=lot.currency,
                ),
            )
            for lot in unlisted
        ]

    async def _place_and_retire(self, order: StoredOrder, payment_id: str) -> None:
        now_ms = self._now_ms()
        sold_out = await self._sold_out(order)
        if self.ledger is None:
            await self.store.place_and_retire(order.order_id, payment_id, now_ms, sold_out=sold_out)
            return
        lines = tuple(
            PaidLine(ln.lot_id, ln.serial_start, ln.serial_end, ln.kg, ln.price_minor)
            for ln in sorted(order.lines, key=lambda x: (x.lot_id, x.serial_start))
        )
        paid = OrderPaid(
            at_ms=now_ms,
            order_id=order.order_id,
            buyer=order.buyer_account_id,
            currency=order.currency,
            total_minor=order.total_minor,
            payment_id=payment_id,
            lines=lines,
        )
        retired = Retired(
            at_ms=now_ms,
            order_id=order.order_id,
            beneficiary=order.beneficiary,
            reason=order.reason,
            spans=tuple(RetiredSpan(x.lot_id, x.serial_start, x.serial_end) for x in lines),
            certificates=tuple(so.certificate_id for so in sold_out),
        )
        listings = await self._unlisted_listings(order, now_ms)
        seqs: list[int] = []
        listed: list[tuple[str, int]] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            out = []
            for lot_id, ev in listings:
                e = engine.record_carbon(CARBON_SITE, lot_id, encode_shop_event(ev))
                listed.append((lot_id, e.seq))
                out.append(e)
            mine = [
                engine.record_carbon(CARBON_SITE, order.order_id, encode_shop_event(ev))
                for ev in (paid, retired)
            ]
            seqs.extend(e.seq for e in mine)
            return out + mine

        async def also(conn: AsyncConnection) -> None:
            for lot_id, seq in listed:
                await self.store.set_lot_seq(conn, lot_id, seq)
            await self.store.place_and_retire(
                order.order_id,
                payment_id,
                now_ms,
                conn=conn,
                paid_seq=seqs[0],
                retired_seq=seqs[1],
                sold_out=sold_out,
            )

        await self.ledger.append(decide, also)
        await self._checkpoint()

    async def _sold_out(self, order: StoredOrder) -> list[SoldOut]:
        """The certificates whose lots this order's retirement sells out (their last serials),
        with the lots' beneficiaries (this order's last)."""
        kg: dict[str, int] = {}
        for ln in order.lines:
            kg[ln.lot_id] = kg.get(ln.lot_id, 0) + ln.kg
        lots = [lot for lot in await self.store.lots(lot_ids=list(kg)) if lot.certificate_id]
        if not lots:
            return []
        done = await self.store.retired_kg([lot.lot_id for lot in lots])
        held = await self.store.held_certificates([lot.lot_id for lot in lots])
        out = []
        for lot in lots:
            if done[lot.lot_id] + kg[lot.lot_id] != lot.kg:
                continue
            names = list(
                dict.fromkeys([*await self.store.beneficiaries(lot.lot_id), order.beneficiary])
            )
            beneficiary = f"carbon shop lot {lot.lot_id}: " + "; ".join(names)
            out += [SoldOut(c, lot.lot_id, beneficiary) for c in held.get(lot.lot_id, [])]
        return out

    async def failed(self, ref: str, payment_id: str, reason: str) -> StoredOrder | None:
        """The payment of order `ref` failed: the order is cancelled and its units released.
        Idempotent; a completed order is not touched. Returns the order (None: unknown)."""
        await self.store.release(
            ref, OrderState.CANCELLED, self._now_ms(), note=reason, payment_id=payment_id
        )
        return await self.store.get_order(ref)

    async def expire(self, now: float | None = None) -> list[str]:
        """Expire every reservation whose time is up and release its units; returns the order
        ids this call expired (idempotent: an order is expired once)."""
        now_ms = self._now_ms() if now is None else int(now * 1000)
        out = []
        for order_id in await self.store.expired_orders(now_ms):
            released = await self.store.release(
                order_id,
                OrderState.EXPIRED,
                now_ms,
                note="reservation ran out",
                expired_by_ms=now_ms,
            )
            if released:
                out.append(order_id)  # noqa: PERF401 (one transaction each, in order)
        return out

    async def orders(self, buyer_account_id: str) -> list[StoredOrder]:
        """The buyer's orders, oldest first (reservations past their time shown expired)."""
        await self.expire()
        return await self.store.orders(buyer_account_id)

    async def order(self, order_id: str) -> StoredOrder:
        await self.expire()
        order = await self.store.get_order(order_id)
        if order is None:
            raise ShopNotFound(f"order {order_id} does not exist")
        return order

    async def retirement_statement(self, order_id: str) -> dict[str, Any]:
        """What a printable retirement statement shows: beneficiary, reason, the retired
        serials with their projects, dates. ShopConflict while the order is not complete."""
        order = await self.order(order_id)
        if order.state != OrderState.COMPLETE.value:
            raise ShopConflict(f"order {order_id} is {order.state}: nothing is retired yet")
        retired = await self.store.retirements(order_id=order_id)
        lots = {
            lot.lot_id: lot for lot in await self.store.lots(lot_ids=[r.lot_id for r in retired])
        }
        projects = {p.project_id: p for p in await self.store.projects()}
        items = []
        for r in retired:
            p = projects[lots[r.lot_id].project_id]
            items.append(
                {
                    **_retirement_public(lots[r.lot_id].prefix(p.serial_prefix), r),
                    "project_id": p.project_id,
                    "project_name": p.name,
                    "kind": p.kind,
                    "country": p.country,
                    "standard": p.standard,
                    "verifier": p.verifier,
                    "vintage": p.vintage,
                    "certificate_id": lots[r.lot_id].certificate_id,
                }
            )
        return {
            "order_id": order.order_id,
            "buyer_account_id": order.buyer_account_id,
            "beneficiary": order.beneficiary,
            "reason": order.reason,
            "ordered_ms": order.created_ms,
            "retired_ms": max(r.retired_ms for r in retired),
            "total_kg": sum(r.serial_end - r.serial_start + 1 for r in retired),
            "total_minor": order.total_minor,
            "currency": order.currency,
            "payment_id": order.payment_id,
            "retirements": items,
            # The CARBON leaves of the paid order and its retirement, with inclusion proofs
            # against the newest signed checkpoint (None: the order was completed without the
            # ledger), so the statement can be checked offline, and by `gridmint verify`.
            "ledger_proof": await self._statement_proof(order),
        }

    async def _statement_proof(self, order: StoredOrder) -> dict[str, Any] | None:
        if self.ledger is None or order.paid_seq is None or order.retired_seq is None:
            return None
        leaves = await self._leaves([order.paid_seq, order.retired_seq])
        return {
            "log_key": self.ledger.verifier_key,
            "payment": leaves.get(order.paid_seq),
            "retirement": leaves.get(order.retired_seq),
        }


_PREFIX_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def solar_lot_prefix(certificate_ids: Sequence[str]) -> str:
    """The serial prefix of the lot that sells certificates: it names the certificate (or,
    for several, the hash of their ids)."""
    if len(certificate_ids) == 1:
        return f"GC-{certificate_ids[0][:16]}"
    digest = hashlib.sha256("\x00".join(sorted(certificate_ids)).encode()).hexdigest()
    return f"GC-{digest[:16]}"


def solar_project_prefix(site_id: str) -> str:
    """The serial prefix of a site's gridmint_solar project (its lots have their own)."""
    return "GC-" + (_PREFIX_UNSAFE.sub("-", site_id)[:37] or "site")


def _shop_event_public(ev: ShopEvent) -> dict[str, Any]:
    """A shop event as JSON (bytes as hex), with its type."""

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {"type": type(ev).__name__, **plain(dataclasses.asdict(ev))}


def _event_public(e: StoredEvent) -> dict[str, Any]:
    return {
        "at_ms": e.at_ms,
        "kind": e.kind,
        "order_id": e.order_id,
        "actor": e.actor,
        "detail": e.detail,
    }


def _retirement_public(prefix: str, r: StoredRetirement) -> dict[str, Any]:
    return {
        "retirement_id": r.retirement_id,
        "order_id": r.order_id,
        "lot_id": r.lot_id,
        "serials": f"{prefix}-{r.serial_start}..{r.serial_end}",
        "kg": r.serial_end - r.serial_start + 1,
        "beneficiary": r.beneficiary,
        "reason": r.reason,
        "retired_ms": r.retired_ms,
    }
