"""The virtual smart meter service: per-site readings, registers, tracing and Green Button.

Owns: answering a meter question for one site from the ledger's accepted records
(cloud/storage/meter_store.py) with the rules of cloud/domain/virtual_meter.py, and the Green
Button export (cloud/domain/greenbutton). Everything streams: the database hands over chunks,
the rules hold one gap or bucket, the export one local day, so a site-year costs the same
memory as a day.

The Green Button writer is a plain (synchronous) generator that pulls interval values; the
database is asynchronous. The writer runs in a worker thread and pulls chunks from the event
loop (`_Bridge`), handing finished XML back through a bounded queue, so a slow client holds
back the writer, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloud.domain import greenbutton as gb
from cloud.domain.virtual_meter import (
    DAY,
    ESTIMATE_METHOD,
    Gaps,
    HistoryEvent,
    MeterError,
    MeterInterval,
    Registers,
    RollUp,
    State,
    history,
    registers,
    zone,
)
from cloud.services.ledger import LedgerService
from cloud.storage.meter_store import MeterSite, MeterStore, MeterToken

# The readings a Green Button export carries: key, title, ESPI flow direction, the quantity.
GREEN_BUTTON_READINGS = (
    ("import", "Energy imported from the grid", gb.FlowDirection.FORWARD, "imported_wh"),
    ("export", "Energy exported to the grid", gb.FlowDirection.REVERSE, "exported_wh"),
    ("generation", "Solar generation", gb.FlowDirection.REVERSE, "generated_wh"),
    ("net", "Net energy (import - export)", gb.FlowDirection.NET, "net_wh"),
)
MAX_SPAN_S = 400 * DAY  # one request reads at most this much (a year and then some)


class NoSuchSite(KeyError):
    pass


@dataclass(frozen=True, slots=True)
class TracedInterval:
    """An interval's reading with the signed records behind it and their proofs."""

    site_id: str
    start: int
    interval_s: int
    reading: MeterInterval | None
    tokens: list[MeterToken]
    envelopes: dict[str, bytes]
    proofs: dict[str, Any]  # token id -> cloud.services.ledger Proof


def espi_quality(iv: MeterInterval) -> int:
    """ESPI reading quality: 11 derived (from the edge's signed records), 8 estimated (an
    edge estimate: quality ESTIMATED or SUBSTITUTED), 9 interpolated (a gap we filled)."""
    if iv.state is State.ESTIMATED:
        return int(gb.Quality.INTERPOLATED if iv.records == 0 else gb.Quality.ESTIMATED)
    return int(gb.Quality.DERIVED)


class MeterService:
    def __init__(
        self,
        store: MeterStore,
        ledger: LedgerService | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.now = now

    async def site(self, site_id: str) -> MeterSite:
        s = await self.store.site(site_id)
        if s is None:
            raise NoSuchSite(site_id)
        return s

    async def set_time_zone(self, site_id: str, name: str) -> str:
        zone(name)  # MeterError for an unknown zone
        if not await self.store.set_time_zone(site_id, name):
            raise NoSuchSite(site_id)
        return name

    async def span(self, site_id: str) -> tuple[int, int, int] | None:
        return await self.store.span(site_id)

    async def readings(
        self,
        site_id: str,
        start: int,
        end: int,
        *,
        interval_s: int | None = None,
        estimate: bool = False,
    ) -> AsyncIterator[MeterInterval]:
        """The site's intervals in [start, end): native (`interval_s` None or the native
        length) or rolled up (900, 1800, 3600, DAY for local days); gaps explicit. The
        period is cut to the site's accepted data: before its first record there was no
        meter, after its last closed interval nothing is known yet."""
        site = await self.site(site_id)
        if end <= start:
            raise MeterError("the period is empty: end must be after start")
        if end - start > MAX_SPAN_S:
            raise MeterError(f"a period is at most {MAX_SPAN_S // DAY} days")
        tz = zone(site.time_zone)
        span = await self.store.span(site_id)
        if span is None:
            return
        first, last_end, native = span
        lo, hi = max(start, first), min(end, last_end)
        if hi <= lo:
            return
        roll = None if interval_s in (None, native) else RollUp(interval_s, tz)
        gaps = Gaps(lo, hi, native, estimate=estimate)

        def out(items: Iterator[MeterInterval]) -> Iterator[MeterInterval]:
            for iv in items:
                if roll is None:
                    yield iv
                else:
                    yield from roll.feed(iv)

        async for chunk in self.store.intervals(site_id, lo, hi):
            for done in out(iter(gaps.feed_all(chunk))):
                yield done
        for done in out(gaps.close()):
            yield done
        if roll is not None:
            for done in roll.close():
                yield done

    async def group_readings(
        self, site_ids: list[str], start: int, end: int, interval_s: int, tz_name: str = "UTC"
    ) -> AsyncIterator[MeterInterval]:
        """A group's readings: its sites' accepted records summed per interval and rolled up
        to `interval_s` (900, 1800, 3600, DAY) in `tz_name`. No gaps are filled: a group's
        interval is what its sites delivered (`records` says how many records)."""
        if end <= start:
            raise MeterError("the period is empty: end must be after start")
        if end - start > MAX_SPAN_S:
            raise MeterError(f"a period is at most {MAX_SPAN_S // DAY} days")
        roll = RollUp(interval_s, zone(tz_name))
        async for chunk in self.store.group_intervals(site_ids, start, end):
            for iv in chunk:
                for done in roll.feed(iv):
                    yield done
        for done in roll.close():
            yield done

    async def registers(self, site_id: str, at: int) -> Registers:
        """Cumulative registers at `at` from the site's first record."""
        span = await self.store.span(await self._id(site_id))
        total = Registers(at)
        if span is None:
            return total
        async for chunk in self.store.intervals(site_id, span[0], at):
            total = _add(total, registers(chunk, at))
        return total

    async def _id(self, site_id: str) -> str:
        return (await self.site(site_id)).site_id

    async def history(self, site_id: str) -> list[HistoryEvent]:
        """Counter resets and meter swaps the edge flagged, oldest first."""
        span = await self.store.span(await self._id(site_id))
        if span is None:
            return []
        events: list[HistoryEvent] = []
        async for chunk in self.store.intervals(site_id, span[0], span[1]):
            events.extend(history(chunk))
        return events

    async def trace(self, site_id: str, interval_start: int) -> TracedInterval:
        """The records behind one native interval, their signed envelopes and their
        inclusion proofs in the ledger (against the latest checkpoint)."""
        await self.site(site_id)
        found = await self.store.tokens_of(site_id, interval_start)
        reading = None
        async for chunk in self.store.intervals(site_id, interval_start, interval_start + 1):
            reading = chunk[0] if chunk else None
        ids = [t.token_id for t in found]
        proofs = await self.ledger.proofs_for_tokens(ids) if self.ledger else {}
        return TracedInterval(
            site_id,
            interval_start,
            found[0].interval_s if found else 0,
            reading,
            found,
            await self.store.envelopes(ids),
            dict(proofs),
        )

    async def green_button(
        self,
        site_id: str,
        start: int,
        end: int,
        *,
        estimate: bool = False,
        base_url: str = "",
        updated: datetime | None = None,
    ) -> AsyncIterator[bytes]:
        """The site's Green Button (ESPI) feed for [start, end) at the native interval, as
        UTF-8 chunks. Gaps are left out of the feed, or with `estimate` filled and marked
        interpolated (quality 9)."""
        site = await self.site(site_id)
        span = await self.store.span(site_id)
        native = span[2] if span else 900
        tz = zone(site.time_zone)
        year = datetime.fromtimestamp(start, UTC).astimezone(tz).year
        usage_point = gb.UsagePointInfo(
            site_id=site.site_id, title=site.name, is_virtual=True, is_der=True
        )
        specs = [
            gb.ReadingSpec(key=key, title=title, flow_direction=int(flow), interval_s=native)
            for key, title, flow, _q in GREEN_BUTTON_READINGS
        ]
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)

        def values(quantity: str, rows: Iterator[MeterInterval]) -> Iterator[gb.IntervalValue]:
            for iv in rows:
                v = iv.value(quantity)
                if v is None:
                    continue  # a missing interval is absent from the feed
                yield gb.IntervalValue(iv.start, iv.interval_s, v, espi_quality(iv))

        def write() -> Iterator[bytes]:
            # One read of the period: each reading is a view of the same rows, and the writer
            # interleaves the readings' days, so tee holds about a day of them.
            rows = bridge.pull(self.readings(site_id, start, end, estimate=estimate))
            views = itertools.tee(rows, len(specs))
            return gb.write_feed(
                usage_point,
                gb.local_time_parameters(tz, year),
                [
                    (spec, values(reading[3], view))
                    for spec, reading, view in zip(specs, GREEN_BUTTON_READINGS, views, strict=True)
                ],
                feed_id=f"site-{site.site_id}",
                updated=updated or datetime.now(UTC),
                base_url=base_url,
                tz=tz,
                interleave=True,
            )

        async for piece in bridge.run(write):
            yield piece


def _add(a: Registers, b: Registers) -> Registers:
    firsts = [x for x in (a.first_start, b.first_start) if x is not None]
    lasts = [x for x in (a.last_end, b.last_end) if x is not None]
    return Registers(
        a.at,
        a.imported_wh + b.imported_wh,
        a.exported_wh + b.exported_wh,
        a.generated_wh + b.generated_wh,
        a.self_consumed_wh + b.self_consumed_wh,
        a.charged_wh + b.charged_wh,
        a.discharged_wh + b.discharged_wh,
        a.load_wh + b.load_wh,
        a.intervals + b.intervals,
        min(firsts) if firsts else None,
        max(lasts) if lasts else None,
    )


class _Bridge:
    """Runs a synchronous generator of bytes in a thread that pulls async data from the loop.

    `pull` (in the thread) turns an async iterator of items into a plain iterator, fetching
    in batches from the loop; `run` (on the loop) starts the thread and yields what the
    generator produces through a bounded queue. If the consumer goes away (a client
    disconnects), the thread is told to stop at its next handover."""

    BATCH = 2048
    QUEUE = 8

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stopped = threading.Event()
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(self.QUEUE)

    def _call(self, coro: Any) -> Any:
        if self.stopped.is_set():
            coro.close()
            raise _Stopped
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def pull(self, agen: AsyncIterator[MeterInterval]) -> Iterator[MeterInterval]:
        async def batch() -> list[MeterInterval]:
            got: list[MeterInterval] = []
            async for item in agen:
                got.append(item)
                if len(got) >= self.BATCH:
                    break
            return got

        while True:
            items = self._call(batch())
            if not items:
                return
            yield from items

    async def run(self, make: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
        def work() -> None:
            try:
                for piece in make():
                    self._call(self.queue.put(piece))
                self._call(self.queue.put(None))
            except _Stopped:
                return
            except BaseException as exc:  # handed to the loop side, raised there
                with contextlib.suppress(_Stopped):
                    self._call(self.queue.put(exc))

        thread = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stopped.set()
            while not thread.done():  # free any put the thread is blocked on, until it ends
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.wait([thread], timeout=0.05)
            with contextlib.suppress(Exception):
                await thread


class _Stopped(Exception):
    """The consumer went away: the writer thread ends quietly."""


__all__ = [
    "ESTIMATE_METHOD",
    "GREEN_BUTTON_READINGS",
    "MeterService",
    "NoSuchSite",
    "TracedInterval",
]
