"""Revenue meter data in, difference reports out.

Owns: importing a Green Button file from a utility's revenue meter for a site (parsed with
cloud/domain/greenbutton; a file that cannot be read is refused with a plain message and kept
as a rejected import, so nothing is lost and the refusal is counted), and reconciling the
virtual meter against the stored revenue readings (cloud/domain/reconciliation.py). A report
with a day over the tolerance opens a `meter_mismatch` alarm for the site (the alarms table's
device column holds "site:<id>" for site alarms); one within it clears it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from cloud.domain import greenbutton as gb
from cloud.domain.reconciliation import (
    QUANTITY_OF_FLOW,
    Report,
    RevenueInterval,
    reconcile,
)
from cloud.domain.virtual_meter import DAY, ROLLUPS, MeterError, MeterInterval, zone
from cloud.services.virtual_meter import MeterService
from cloud.storage.dispatch_store import DispatchStore
from cloud.storage.revenue_store import RevenueImport, RevenueStore

log = logging.getLogger(__name__)
MAX_FILE_BYTES = 64 << 20
ALARM = "meter_mismatch"
FLOW_OF_DIRECTION = {1: "import", 19: "export", 4: "net"}


class ImportRefused(ValueError):
    """A revenue file that cannot be stored; the message says why (the refusal is kept)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    record: RevenueImport
    flows: dict[str, int]  # flow -> intervals stored


def _flow(reading: gb.LoadedReading, taken: set[str]) -> str:
    """Which of our flows a utility's reading is: by our own keys (a feed we exported), else
    by its ESPI flow direction."""
    key = reading.spec.key.lower()
    if key in QUANTITY_OF_FLOW and key not in taken:
        return key
    flow = FLOW_OF_DIRECTION.get(reading.spec.flow_direction)
    if flow is None:
        raise ImportRefused(
            f"reading {reading.spec.key!r}: flow direction {reading.spec.flow_direction} is not "
            "import (1), export (19) or net (4)"
        )
    if flow in taken:
        raise ImportRefused(f"two readings in the file are {flow}; send one per flow")
    return flow


def parse_revenue_feed(data: bytes) -> dict[str, list[RevenueInterval]]:
    """The file's readings by flow; ImportRefused with a plain message."""
    try:
        feed = gb.load_feed(io.BytesIO(data))
    except gb.GreenButtonError as exc:
        raise ImportRefused(f"not a Green Button file we can read: {exc}") from None
    if not feed.readings:
        raise ImportRefused("the file has no MeterReading with interval data")
    out: dict[str, list[RevenueInterval]] = {}
    for reading in feed.readings:
        if reading.spec.accumulation not in (int(gb.Accumulation.DELTA_DATA), 0):
            continue  # registers (bulk quantities) are not interval energy
        if reading.spec.uom != int(gb.UnitSymbol.WH):
            raise ImportRefused(f"reading {reading.spec.key!r} is not in Wh (uom 72)")
        flow = _flow(reading, set(out))
        values = sorted(reading.values, key=lambda v: v.start)
        lengths = {v.duration_s for v in values}
        if len(lengths) > 1:
            raise ImportRefused(f"reading {reading.spec.key!r} mixes interval lengths {lengths}")
        out[flow] = [RevenueInterval(v.start, v.duration_s, v.value_wh, v.quality) for v in values]
    if not out:
        raise ImportRefused("the file has no interval (delta) readings")
    return out


class ReconciliationService:
    def __init__(
        self,
        meter: MeterService,
        store: RevenueStore,
        alarms: DispatchStore | None = None,
        tolerance_permille: int = 10,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.meter = meter
        self.store = store
        self.alarms = alarms
        self.tolerance_permille = tolerance_permille
        self.now = now
        self.refused = 0

    async def import_feed(self, site_id: str, data: bytes, *, source: str, by: str) -> ImportResult:
        """Store a revenue meter's Green Button file for the site; ImportRefused (after
        recording the refusal) if it cannot be read."""
        await self.meter.site(site_id)  # NoSuchSite
        base = RevenueImport(
            import_id=f"rv-{secrets.token_hex(8)}",
            site_id=site_id,
            source=source[:200],
            sha256=hashlib.sha256(data).digest(),
            size=len(data),
            imported_ms=int(self.now() * 1000),
            imported_by=by,
            status="rejected",
            detail="",
            intervals=0,
            first_start=None,
            last_end=None,
        )
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ImportRefused(f"the file is over {MAX_FILE_BYTES >> 20} MiB")
            readings = parse_revenue_feed(data)
        except ImportRefused as exc:
            self.refused += 1
            await self.store.record(replace(base, detail=str(exc)), {})
            log.warning("revenue import for %s refused: %s", site_id, exc)
            raise
        everything = [v for values in readings.values() for v in values]
        rec = replace(
            base,
            status="accepted",
            detail=", ".join(f"{f}: {len(v)}" for f, v in readings.items()),
            intervals=len(everything),
            first_start=min(v.start for v in everything),
            last_end=max(v.start + v.interval_s for v in everything),
        )
        await self.store.record(rec, readings)
        return ImportResult(rec, {f: len(v) for f, v in readings.items()})

    async def report(self, site_id: str, start: int, end: int, flow: str) -> Report:
        """The difference report for one flow over [start, end), at the revenue data's
        interval length (the virtual meter rolled up to it)."""
        if flow not in QUANTITY_OF_FLOW:
            raise MeterError(f"flow is one of {', '.join(QUANTITY_OF_FLOW)}")
        site = await self.meter.site(site_id)
        tz = zone(site.time_zone)
        length = await self.store.interval_length(site_id, flow)
        if length is None:
            raise MeterError(f"no revenue meter data for {flow} at site {site_id}")
        span = await self.meter.span(site_id)
        native = span[2] if span else length
        if length < native:
            raise MeterError(
                f"the revenue data ({length} s) is finer than the virtual meter ({native} s)"
            )
        if length != native and length not in (*ROLLUPS, DAY):
            raise MeterError(f"cannot compare at {length} s intervals")
        virtual = await _collect(
            self.meter.readings(
                site_id, start, end, interval_s=None if length == native else length
            )
        )
        revenue = await _collect_chunks(self.store.intervals(site_id, flow, start, end))
        # Both are a period's intervals (a year of 5-minute data is ~100k small objects);
        # the comparison itself streams over them.
        report = reconcile(
            iter(virtual), iter(revenue), flow, tz, tolerance_permille=self.tolerance_permille
        )
        await self._alarm(site_id, report)
        return report

    async def _alarm(self, site_id: str, report: Report) -> None:
        if self.alarms is None:
            return
        over = report.days_over
        now_ms = int(self.now() * 1000)
        device = f"site:{site_id}"
        if over:
            worst = max(over, key=lambda d: abs(d.difference_wh))
            detail = (
                f"{report.flow}: {len(over)} day(s) over {report.tolerance_permille} per mille; "
                f"worst {worst.label}: virtual {worst.virtual_wh} Wh, revenue "
                f"{worst.revenue_wh} Wh"
            )
            await self.alarms.raise_alarm(ALARM, device, site_id, detail, now_ms)
        else:
            await self.alarms.clear_alarm(ALARM, device, now_ms)


async def _collect(rows: AsyncIterator[MeterInterval]) -> list[MeterInterval]:
    return [iv async for iv in rows]


async def _collect_chunks(
    chunks: AsyncIterator[list[RevenueInterval]],
) -> list[RevenueInterval]:
    out: list[RevenueInterval] = []
    async for chunk in chunks:
        out.extend(chunk)
    return out
