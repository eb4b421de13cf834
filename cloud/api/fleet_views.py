"""The fleet as the API shows it: devices with their totals, ingest statistics and the ledger's
progress, converted from storage dataclasses to wire schemas.

Owns: those conversions, shared by the fleet and token routes, the SSE stream, /metrics and the
dashboard page. Reads only; no rules.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.api.schemas import DevicePublic, IntervalGeneration, StatsPublic
from cloud.services.ledger import LedgerService
from cloud.storage.store import Store


def ts(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def epoch(dt: datetime | None) -> int | None:
    """A datetime as Unix seconds (None stays None)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # the API speaks UTC; a bare time is taken as UTC
    return int(dt.timestamp())


async def stats_public(store: Store) -> StatsPublic:
    """Accepted, held and rejected counts and generation per interval."""
    s = await store.stats()
    return StatsPublic(
        accepted=s.accepted,
        held=s.held,
        rejected=s.rejected,
        rejected_by_reason=s.rejected_by_reason,
        generated_wh=s.generated_wh,
        kwh=s.generated_wh / 1000,
        per_interval=[
            IntervalGeneration(interval_start=ts(t), generated_wh=w) for t, w in s.per_interval_wh
        ],
    )


async def devices_public(store: Store, sites: list[str] | None = None) -> list[DevicePublic]:
    """Registered devices with their totals, of `sites` only unless None."""
    return [
        DevicePublic(
            device_id=d.device.device_id,
            site_id=d.device.site_id,
            status=d.device.status,
            capacity_w=d.device.capacity_w,
            zone=d.device.zone,
            tokens=d.tokens,
            generated_wh=d.generated_wh,
            last_interval_start=ts(d.last_interval_start)
            if d.last_interval_start is not None
            else None,
        )
        for d in await store.list_devices()
        if sites is None or d.device.site_id in sites
    ]


async def device_public(store: Store, device_id: str) -> DevicePublic | None:
    """One registered device with its totals, or None."""
    for d in await devices_public(store):
        if d.device_id == device_id:
            return d
    return None


async def ledger_status(ledger: LedgerService | None) -> dict[str, int] | None:
    """Log size, newest checkpoint and closed intervals, for the dashboard."""
    if ledger is None:
        return None
    cp = await ledger.store.latest_checkpoint()
    return {
        "entries": ledger.log.size,
        "checkpoint": cp.size if cp else 0,
        "intervals": len(ledger.engine.state.closed),
    }
