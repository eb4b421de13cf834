"""The virtual meter: a site's interval data and registers, as a revenue meter would give them.

Owns: what a meter reading is made of and the rules that turn the ledger's accepted records
into one: the sums per interval (the records of a site's devices for one interval, as the
ledger sums them when it closes the interval), the derived flows (load, self-consumption, net),
roll-ups to longer intervals and to the site's local days, explicit gaps and their estimates,
and cumulative registers. Every function streams: it takes an iterable and yields, holding at
most one bucket or one gap at a time, so a year of 5-minute data never sits in memory.
Pure: no I/O, no clock.

Gaps are never zero: an interval with no record is `missing` (no values), or, when the caller
asks for estimates, `estimated` by the stated method `ESTIMATE_METHOD`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

FLOWS = ("generated_wh", "imported_wh", "exported_wh", "charged_wh", "discharged_wh")
# Record status flags (edge/accounting.py) that are events on the meter's history.
HISTORY_FLAGS = {"R": "counter reset", "SWAP": "meter swap"}
ESTIMATE_METHOD = (
    "neighbour mean: each flow of a missing interval is the mean (rounded down) of the same "
    "flow in the last measured interval before the gap and the first after it; at the edge "
    "of the data, the one neighbour there is"
)
ROLLUPS = (900, 1800, 3600)  # besides the native length and days
DAY = 86_400


class MeterError(ValueError):
    """A meter request that cannot be answered; the message says why."""


class State(StrEnum):
    MEASURED = "measured"  # every record behind it measured
    ESTIMATED = "estimated"  # an estimate: the edge's (quality) or ours (a filled gap)
    MISSING = "missing"  # no record: no values
    PARTIAL = "partial"  # a roll-up with missing intervals inside


@dataclass(frozen=True, slots=True)
class MeterInterval:
    """One interval of a site's meter. Energy in Wh; None only when `state` is missing."""

    start: int  # Unix s, UTC
    interval_s: int
    generated_wh: int | None = None
    imported_wh: int | None = None
    exported_wh: int | None = None
    charged_wh: int | None = None
    discharged_wh: int | None = None
    state: State = State.MEASURED
    records: int = 0  # accepted records (tokens) summed into it
    flags: frozenset[str] = field(default_factory=frozenset)  # record status flags seen
    missing: int = 0  # native intervals without a record inside (roll-ups)
    estimated: int = 0  # native intervals estimated inside (roll-ups)

    @property
    def end(self) -> int:
        return self.start + self.interval_s

    def wh(self, name: str) -> int:
        """A flow's Wh, 0 when the interval has none."""
        value = getattr(self, name)
        return 0 if value is None else int(value)

    @property
    def load_wh(self) -> int | None:
        """What the home used: everything that came in minus everything that left or was
        stored (generation + import + discharge - export - charge)."""
        if self.state is State.MISSING:
            return None
        return (
            self.wh("generated_wh")
            + self.wh("imported_wh")
            + self.wh("discharged_wh")
            - self.wh("exported_wh")
            - self.wh("charged_wh")
        )

    @property
    def self_consumed_wh(self) -> int | None:
        """Generation that did not leave the site (used at home or stored)."""
        if self.state is State.MISSING:
            return None
        return max(self.wh("generated_wh") - self.wh("exported_wh"), 0)

    @property
    def net_wh(self) -> int | None:
        """Import minus export (negative: the site exported more than it took)."""
        if self.state is State.MISSING:
            return None
        return self.wh("imported_wh") - self.wh("exported_wh")

    def value(self, name: str) -> int | None:
        """A flow or derived quantity by name (generated_wh ... load_wh, net_wh)."""
        got = getattr(self, name)
        return None if got is None else int(got)


QUANTITIES = (*FLOWS, "load_wh", "self_consumed_wh", "net_wh")


def with_flows(
    start: int,
    interval_s: int,
    values: dict[str, int],
    state: State,
    *,
    records: int = 0,
    flags: frozenset[str] = frozenset(),
    missing: int = 0,
    estimated: int = 0,
) -> MeterInterval:
    """An interval with every flow from `values` (absent: 0)."""
    g = values.get
    return MeterInterval(
        start,
        interval_s,
        g("generated_wh", 0),
        g("imported_wh", 0),
        g("exported_wh", 0),
        g("charged_wh", 0),
        g("discharged_wh", 0),
        state=state,
        records=records,
        flags=flags,
        missing=missing,
        estimated=estimated,
    )


def missing(start: int, interval_s: int) -> MeterInterval:
    return MeterInterval(start, interval_s, state=State.MISSING, missing=1)


def status_flags(status: str) -> frozenset[str]:
    """The flags of a record's status text ("G,R,GAP" -> {"R", "GAP"})."""
    return frozenset(f for f in status.split(",") if f and f != "G")


class Gaps:
    """Push-style `with_gaps`: `feed` each interval (sorted), then `close`; each returns what
    can be yielded so far (an async reader feeds it chunk by chunk)."""

    def __init__(self, start: int, end: int, native_s: int, *, estimate: bool) -> None:
        if native_s <= 0:
            raise MeterError("the native interval length must be positive")
        self.end = end
        self.estimate = estimate
        self.step = native_s
        self.expected = start - start % native_s
        self.before: MeterInterval | None = None

    def feed(self, iv: MeterInterval) -> Iterator[MeterInterval]:
        gap = list(range(self.expected, iv.start, self.step))
        yield from _fill(gap, self.step, self.before, iv, self.estimate)
        yield iv
        self.before, self.step, self.expected = iv, iv.interval_s, iv.end

    def feed_all(self, chunk: Iterable[MeterInterval]) -> list[MeterInterval]:
        """`feed` for a chunk, in one call (a year is 105,120 intervals: a generator per
        interval was a third of an export's time)."""
        out: list[MeterInterval] = []
        append = out.append
        expected = self.expected
        for iv in chunk:
            if iv.start != expected:
                self.expected = expected
                out.extend(self.feed(iv))
            else:
                append(iv)
                self.before, self.step = iv, iv.interval_s
            expected = iv.start + iv.interval_s
        self.expected = expected
        return out

    def close(self) -> Iterator[MeterInterval]:
        gap = list(range(self.expected, self.end, self.step))
        yield from _fill(gap, self.step, self.before, None, self.estimate)


def with_gaps(
    intervals: Iterable[MeterInterval], start: int, end: int, native_s: int, *, estimate: bool
) -> Iterator[MeterInterval]:
    """`intervals` (sorted, within [start, end)) with every absent native interval in
    [start, end) made explicit: missing, or estimated by ESTIMATE_METHOD. Holds one gap."""
    gaps = Gaps(start, end, native_s, estimate=estimate)
    for iv in intervals:
        yield from gaps.feed(iv)
    yield from gaps.close()


def _fill(
    starts: list[int],
    step: int,
    before: MeterInterval | None,
    after: MeterInterval | None,
    estimate: bool,
) -> Iterator[MeterInterval]:
    if not starts:
        return
    sides = [s for s in (before, after) if s is not None and s.state is not State.MISSING]
    if not estimate or not sides:
        for s in starts:
            yield missing(s, step)
        return
    values = {
        name: sum(side.wh(name) for side in sides) // len(sides)
        for name in FLOWS  # per native interval: the neighbours are native intervals too
    }
    for s in starts:
        yield with_flows(s, step, values, State.ESTIMATED, estimated=1)


def bucket_start(start: int, length_s: int, tz: ZoneInfo) -> int:
    """The start (UTC s) of the `length_s` bucket (or local day, DAY) holding `start`,
    aligned in the site's local time."""
    local = datetime.fromtimestamp(start, UTC).astimezone(tz)
    if length_s == DAY:
        midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
        return int(midnight.timestamp())
    delta = local.utcoffset()
    offset = int(delta.total_seconds()) if delta is not None else 0
    local_s = start + offset
    return local_s - local_s % length_s - offset


def bucket_length(bucket: int, length_s: int, tz: ZoneInfo) -> int:
    """A bucket's real length: a local day has 23, 24 or 25 hours."""
    if length_s != DAY:
        return length_s
    local = datetime.fromtimestamp(bucket, UTC).astimezone(tz)
    nxt = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
    nxt = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    return int(nxt.timestamp()) - bucket


class RollUp:
    """Push-style `roll_up`: `feed` intervals in order, then `close`."""

    def __init__(self, length_s: int, tz: ZoneInfo) -> None:
        if length_s not in (*ROLLUPS, DAY):
            raise MeterError(f"roll-ups are 900, 1800, 3600 s or a day ({DAY}), not {length_s}")
        self.length_s = length_s
        self.tz = tz
        self.current: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.acc: dict[str, int] = {}
        self.records = self.missing_n = self.estimated_n = 0
        self.flags: set[str] = set()
        self.any_value = False

    def _bucket(self) -> MeterInterval:
        assert self.current is not None
        length = bucket_length(self.current, self.length_s, self.tz)
        if not self.any_value:
            return MeterInterval(self.current, length, state=State.MISSING, missing=self.missing_n)
        state = (
            State.PARTIAL
            if self.missing_n
            else State.ESTIMATED
            if self.estimated_n
            else State.MEASURED
        )
        return with_flows(
            self.current,
            length,
            self.acc,
            state,
            records=self.records,
            flags=frozenset(self.flags),
            missing=self.missing_n,
            estimated=self.estimated_n,
        )

    def feed(self, iv: MeterInterval) -> Iterator[MeterInterval]:
        if iv.interval_s > self.length_s:
            raise MeterError(
                f"cannot roll {iv.interval_s} s intervals up into {self.length_s} s buckets"
            )
        b = bucket_start(iv.start, self.length_s, self.tz)
        if b != self.current:
            if self.current is not None:
                yield self._bucket()
            self.current = b
            self._reset()
        if iv.state is State.MISSING:
            self.missing_n += max(iv.missing, 1)
            return
        self.any_value = True
        for name in FLOWS:
            self.acc[name] = self.acc.get(name, 0) + iv.wh(name)
        self.records += iv.records
        self.flags |= iv.flags
        self.estimated_n += iv.estimated or int(iv.state is State.ESTIMATED)
        self.missing_n += iv.missing

    def close(self) -> Iterator[MeterInterval]:
        if self.current is not None:
            yield self._bucket()
            self.current = None


def roll_up(
    intervals: Iterable[MeterInterval], length_s: int, tz: ZoneInfo
) -> Iterator[MeterInterval]:
    """Sum consecutive intervals into buckets of `length_s` (900, 1800, 3600 or DAY for the
    site's local days). A bucket with a missing interval inside is `partial` (its values are
    the sum of what is there, `missing` says how many are not); one with an estimate inside
    is `estimated`. Holds one bucket."""
    r = RollUp(length_s, tz)
    for iv in intervals:
        yield from r.feed(iv)
    yield from r.close()


@dataclass(frozen=True, slots=True)
class Registers:
    """Cumulative registers at `at` (Unix s): everything before it since the first record."""

    at: int
    imported_wh: int = 0
    exported_wh: int = 0
    generated_wh: int = 0
    self_consumed_wh: int = 0
    charged_wh: int = 0
    discharged_wh: int = 0
    load_wh: int = 0
    intervals: int = 0
    first_start: int | None = None
    last_end: int | None = None


def registers(intervals: Iterable[MeterInterval], at: int) -> Registers:
    """Sum measured and edge-estimated intervals that ended by `at` (gaps add nothing: a
    register counts what was read)."""
    sums = dict.fromkeys(
        (
            "imported_wh",
            "exported_wh",
            "generated_wh",
            "self_consumed_wh",
            "charged_wh",
            "discharged_wh",
            "load_wh",
        ),
        0,
    )
    n = 0
    first = last = None
    for iv in intervals:
        if iv.state is State.MISSING or iv.end > at:
            continue
        for name in sums:
            sums[name] += iv.value(name) or 0
        n += 1
        first = iv.start if first is None else min(first, iv.start)
        last = iv.end if last is None else max(last, iv.end)
    return Registers(at, **sums, intervals=n, first_start=first, last_end=last)


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """A meter event from the records' status: a counter reset or a meter swap."""

    at: int  # the interval's start
    interval_s: int
    flag: str
    what: str


def history(intervals: Iterable[MeterInterval]) -> Iterator[HistoryEvent]:
    for iv in intervals:
        for flag in sorted(iv.flags & HISTORY_FLAGS.keys()):
            yield HistoryEvent(iv.start, iv.interval_s, flag, HISTORY_FLAGS[flag])


def zone(name: str) -> ZoneInfo:
    """The site's zone; MeterError for a name the tz database does not know."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise MeterError(f"unknown time zone {name!r}") from exc
