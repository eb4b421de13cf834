"""Approver decisions on devices, and the read models of the approval queue and device pages.

Owns: every query on the device_decisions table (a status change and its log row are written in
one transaction), the review lists (devices by status with their site, owner, key ids and the
tokens they hold) and the device detail (keys, token totals, latest tokens, rejections and
decisions). It shares the Store's engine: `DeviceViews(store.engine)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.domain.devices import DeviceStatus
from cloud.storage.store import DeviceKey, Rejection
from cloud.storage.tables import (
    accounts,
    device_decisions,
    device_keys,
    devices,
    rejections,
    sites,
    tokens,
)

REASON_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class Decision:
    """One approver decision on a device, as logged."""

    id: int
    device_id: str
    decided_by: str
    decided_by_email: str  # "" when the decider has no account row (the legacy admin token)
    decided_ms: int
    old_status: str
    new_status: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReviewDevice:
    """A device with what an approver needs to judge it: site, owner, keys, tokens so far."""

    device_id: str
    site_id: str
    site_name: str  # "" when the site id names no site row (devices registered by id only)
    owner_account_id: str
    owner_email: str
    owner_name: str
    status: str
    capacity_w: int
    zone: str
    created_ms: int
    key_ids: tuple[str, ...]  # hex, oldest first
    tokens: int
    generated_wh: int
    last_interval_start: int | None


@dataclass(frozen=True, slots=True)
class TokenLine:
    """One stored token's figures (without its bytes), for the device page."""

    seq: int
    interval_start: int
    interval_s: int
    generated_wh: int
    imported_wh: int
    exported_wh: int
    charged_wh: int
    discharged_wh: int
    status: str
    quality: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """Everything the device page shows."""

    device: ReviewDevice
    keys: list[DeviceKey]
    imported_wh: int
    exported_wh: int
    latest_tokens: list[TokenLine]
    rejections: list[Rejection]
    decisions: list[Decision]


def _decision(r: Any) -> Decision:
    return Decision(
        id=int(r.id),
        device_id=r.device_id,
        decided_by=r.decided_by,
        decided_by_email=r.decided_by_email or "",
        decided_ms=int(r.decided_ms),
        old_status=r.old_status,
        new_status=r.new_status,
        reason=r.reason,
    )


def _token_totals() -> Any:
    return (
        select(
            tokens.c.device_id,
            func.count().label("n"),
            func.coalesce(func.sum(tokens.c.generated_wh), 0).label("gen"),
            func.coalesce(func.sum(tokens.c.imported_wh), 0).label("imp"),
            func.coalesce(func.sum(tokens.c.exported_wh), 0).label("exp"),
            func.max(tokens.c.interval_start).label("last"),
        )
        .group_by(tokens.c.device_id)
        .subquery()
    )


class DeviceViews:
    """Decision log and device read models over the Store's engine."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock

    # decisions

    async def decide(
        self, device_id: str, status: DeviceStatus | str, decided_by: str, reason: str
    ) -> Decision:
        """Set a device's status and log who decided, when, old -> new and why, atomically.

        Raises KeyError for an unknown device, ValueError for an unknown status. The reason
        rule (required for reject and revoke) is the caller's; this only trims and stores it.
        """
        status = _status(status)
        reason = reason.strip()[:REASON_MAX_CHARS]
        now = int(self._clock() * 1000)
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(devices.c.status)
                    .where(devices.c.device_id == device_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise KeyError(device_id)
            await conn.execute(
                update(devices).where(devices.c.device_id == device_id).values(status=status)
            )
            result = await conn.execute(
                insert(device_decisions).values(
                    device_id=device_id,
                    decided_by=decided_by,
                    decided_ms=now,
                    old_status=row.status,
                    new_status=status,
                    reason=reason,
                )
            )
            new_id = result.inserted_primary_key
            assert new_id is not None
            decision = await self._decisions(conn, device_decisions.c.id == new_id[0], 1)
        return decision[0]

    async def list_decisions(self, device_id: str | None = None, limit: int = 50) -> list[Decision]:
        """Logged decisions, newest first; of one device or of all."""
        async with self.engine.connect() as conn:
            where = None if device_id is None else device_decisions.c.device_id == device_id
            return await self._decisions(conn, where, limit)

    async def _decisions(self, conn: AsyncConnection, where: Any, limit: int) -> list[Decision]:
        q = select(device_decisions, accounts.c.email.label("decided_by_email")).select_from(
            device_decisions.outerjoin(
                accounts, accounts.c.account_id == device_decisions.c.decided_by
            )
        )
        if where is not None:
            q = q.where(where)
        q = q.order_by(device_decisions.c.id.desc()).limit(limit)
        return [_decision(r) for r in (await conn.execute(q)).all()]

    # review lists and detail

    async def list_for_review(
        self, status: DeviceStatus | str, limit: int = 500
    ) -> list[ReviewDevice]:
        """Devices with `status` (oldest enrolment first) with site, owner, keys and tokens."""
        status = _status(status)
        async with self.engine.connect() as conn:
            rows = await self._review_rows(
                conn, devices.c.status == status, limit, order=devices.c.created_ms
            )
        return [r for r, _imp, _exp in rows]

    async def _review_rows(
        self, conn: AsyncConnection, where: Any, limit: int, order: Any
    ) -> list[tuple[ReviewDevice, int, int]]:
        agg = _token_totals()
        q = (
            select(
                devices,
                sites.c.name.label("site_name"),
                sites.c.owner_account_id,
                accounts.c.email.label("owner_email"),
                accounts.c.display_name.label("owner_name"),
                agg.c.n,
                agg.c.gen,
                agg.c.imp,
                agg.c.exp,
                agg.c.last,
            )
            .select_from(
                devices.outerjoin(sites, sites.c.site_id == devices.c.site_id)
                .outerjoin(accounts, accounts.c.account_id == sites.c.owner_account_id)
                .outerjoin(agg, agg.c.device_id == devices.c.device_id)
            )
            .where(where)
            .order_by(order, devices.c.device_id)
            .limit(limit)
        )
        rows = (await conn.execute(q)).all()
        ids = [r.device_id for r in rows]
        kids: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            for k in (
                await conn.execute(
                    select(device_keys.c.device_id, device_keys.c.kid)
                    .where(device_keys.c.device_id.in_(ids))
                    .order_by(device_keys.c.valid_from, device_keys.c.kid)
                )
            ).all():
                kids[k.device_id].append(bytes(k.kid).hex())
        return [
            (
                ReviewDevice(
                    device_id=r.device_id,
                    site_id=r.site_id,
                    site_name=r.site_name or "",
                    owner_account_id=r.owner_account_id or "",
                    owner_email=r.owner_email or "",
                    owner_name=r.owner_name or "",
                    status=r.status,
                    capacity_w=int(r.capacity_w),
                    zone=r.zone,
                    created_ms=int(r.created_ms),
                    key_ids=tuple(kids[r.device_id]),
                    tokens=int(r.n or 0),
                    generated_wh=int(r.gen or 0),
                    last_interval_start=None if r.last is None else int(r.last),
                ),
                int(r.imp or 0),
                int(r.exp or 0),
            )
            for r in rows
        ]

    async def device_detail(
        self, device_id: str, tokens_limit: int = 20, rejections_limit: int = 20
    ) -> DeviceDetail | None:
        """The device page's data; None for an unknown device."""
        async with self.engine.connect() as conn:
            found = await self._review_rows(
                conn, devices.c.device_id == device_id, 1, order=devices.c.device_id
            )
            if not found:
                return None
            device, imported, exported = found[0]
            keys = [
                DeviceKey(
                    bytes(k.kid), k.device_id, bytes(k.public_key), k.valid_from, k.valid_until
                )
                for k in (
                    await conn.execute(
                        select(device_keys)
                        .where(device_keys.c.device_id == device_id)
                        .order_by(device_keys.c.valid_from, device_keys.c.kid)
                    )
                ).all()
            ]
            latest = [
                TokenLine(
                    seq=t.seq,
                    interval_start=t.interval_start,
                    interval_s=t.interval_s,
                    generated_wh=t.generated_wh,
                    imported_wh=t.imported_wh,
                    exported_wh=t.exported_wh,
                    charged_wh=t.charged_wh,
                    discharged_wh=t.discharged_wh,
                    status=t.status,
                    quality=t.quality,
                    received_ms=t.received_ms,
                )
                for t in (
                    await conn.execute(
                        select(
                            tokens.c.seq,
                            tokens.c.interval_start,
                            tokens.c.interval_s,
                            tokens.c.generated_wh,
                            tokens.c.imported_wh,
                            tokens.c.exported_wh,
                            tokens.c.charged_wh,
                            tokens.c.discharged_wh,
                            tokens.c.status,
                            tokens.c.quality,
                            tokens.c.received_ms,
                        )
                        .where(tokens.c.device_id == device_id)
                        .order_by(tokens.c.interval_start.desc())
                        .limit(tokens_limit)
                    )
                ).all()
            ]
            refused = [
                Rejection(
                    r.id,
                    r.received_ms,
                    r.topic,
                    r.device_id,
                    r.reason,
                    r.detail,
                    r.size,
                    bytes(r.sha256),
                )
                for r in (
                    await conn.execute(
                        select(  # not the payload: up to 64 KiB a row
                            rejections.c.id,
                            rejections.c.received_ms,
                            rejections.c.topic,
                            rejections.c.device_id,
                            rejections.c.reason,
                            rejections.c.detail,
                            rejections.c.size,
                            rejections.c.sha256,
                        )
                        .where(rejections.c.device_id == device_id)
                        .order_by(rejections.c.id.desc())
                        .limit(rejections_limit)
                    )
                ).all()
            ]
            decisions = await self._decisions(conn, device_decisions.c.device_id == device_id, 100)
        return DeviceDetail(device, keys, imported, exported, latest, refused, decisions)


def _status(status: DeviceStatus | str) -> DeviceStatus:
    try:
        return DeviceStatus(status)
    except ValueError:
        raise ValueError(f"status must be one of {', '.join(DeviceStatus)}") from None
