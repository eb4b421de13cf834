"""ESPI LocalTimeParameters for an IANA time zone and a year.

A Green Button feed says how its UsagePoint's local time relates to UTC with one
LocalTimeParameters resource: `tzOffset` (the standard offset from UTC, seconds), `dstOffset`
(seconds added in daylight saving time) and two DstRuleType words that say when, in local time,
daylight saving time starts and ends. Pure: only the standard library's zoneinfo data.

DstRuleType (usage.xsd), a 32-bit word written as 8 hex digits:

| bits  | field                                                        |
|-------|--------------------------------------------------------------|
| 0-11  | seconds within the hour, 0-3599                              |
| 12-16 | hour, 0-23                                                   |
| 17-19 | day of the week, 1 Monday .. 7 Sunday; 0 not applicable      |
| 20-24 | day of the month, 1-31; 0 not applicable                     |
| 25-27 | operator (DstOperator)                                       |
| 28-31 | month, 1-12                                                  |

0xFFFFFFFF means "no DST correction": what a zone without daylight saving time gets, with
`dstOffset` 0. The Green Button sample feed for North America has start 360E2000 (second Sunday of
March, 02:00) and end B40E2000 (first Sunday of November, 02:00).

Choices the schema leaves open, made here:

- The rule's time is the local wall-clock time just before the change, as the clocks show it: 02:00
  for both US changes (the sample feed), 02:00 and 03:00 for the EU's (01:00 UTC both times).
- The rule is derived from the zone's actual changes in the given year, so it is exact for that
  year. A change within the month's last seven days is written "last <weekday>" (the EU's rule);
  otherwise "first/second/third/fourth <weekday>" (the US rules). A zone whose law says otherwise
  ("fourth Sunday") can read differently in other years: export one resource per year.
- Standard time is the lower of the year's two offsets, so a zone whose tz data calls winter time
  the negative-DST one (Europe/Dublin) still gets a positive `dstOffset`. In the southern hemisphere
  DST starts later in the calendar year than it ends; the schema's "end greater than start" cannot
  hold there and the rules still say start = into DST, end = out of it.
- A zone with more than one DST period in the year, or a standing change of its UTC offset within
  the year, cannot be written as one ESPI rule pair: ValueError.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import IntEnum
from zoneinfo import ZoneInfo

#: DstRuleType "rule processing / DST correction disabled".
NO_DST_RULE = "FFFFFFFF"


class DstOperator(IntEnum):
    """How a DstRuleType picks its day within the month."""

    DAY_OF_MONTH = 0  # on the day of the month
    WEEKDAY_ON_OR_AFTER = 1  # the day of the week on or after the day of the month
    FIRST = 2  # first occurrence of the day of the week in the month
    SECOND = 3
    THIRD = 4
    FOURTH = 5
    FIFTH = 6
    LAST = 7  # last occurrence of the day of the week in the month


@dataclass(frozen=True, slots=True)
class DstRule:
    """One decoded DstRuleType.

    `day_of_week`: 1 Monday .. 7 Sunday, 0 not applicable; `day_of_month`: 1-31, 0 not applicable;
    `hour` and `seconds` (0-3599, within the hour) give the local wall-clock time of the change.
    """

    month: int
    operator: int
    day_of_month: int
    day_of_week: int
    hour: int
    seconds: int

    def __post_init__(self) -> None:
        checks = (
            ("month", self.month, 1, 12),
            ("operator", self.operator, 0, 7),
            ("day_of_month", self.day_of_month, 0, 31),
            ("day_of_week", self.day_of_week, 0, 7),
            ("hour", self.hour, 0, 23),
            ("seconds", self.seconds, 0, 3599),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ValueError(f"DstRule {name} {value} is outside {low}..{high}")

    def encode(self) -> str:
        """The 8-hex-digit DstRuleType word, upper case."""
        word = (
            self.seconds
            | self.hour << 12
            | self.day_of_week << 17
            | self.day_of_month << 20
            | self.operator << 25
            | self.month << 28
        )
        return f"{word:08X}"

    @classmethod
    def decode(cls, text: str) -> DstRule | None:
        """The rule a DstRuleType word holds; None for FFFFFFFF (no DST correction).

        Raises:
            ValueError: not 1-8 hex digits, or a field out of range.
        """
        stripped = text.strip()
        if not 0 < len(stripped) <= 8 or len(stripped) % 2:
            raise ValueError(f"DstRuleType {text!r} is not 1-4 octets of hex")
        try:
            word = int(stripped, 16)
        except ValueError:
            raise ValueError(f"DstRuleType {text!r} is not hex") from None
        if word == 0xFFFFFFFF:
            return None
        return cls(
            month=word >> 28,
            operator=(word >> 25) & 0x7,
            day_of_month=(word >> 20) & 0x1F,
            day_of_week=(word >> 17) & 0x7,
            hour=(word >> 12) & 0x1F,
            seconds=word & 0xFFF,
        )

    def local_datetime(self, year: int) -> datetime:
        """The naive local wall-clock time this rule names in `year`.

        Raises:
            ValueError: the rule names no day in that year (a fifth weekday the month lacks, a
                weekday operator without a weekday, a day of the month the month lacks).
        """
        days = calendar.monthrange(year, self.month)[1]
        op = self.operator
        if op == DstOperator.DAY_OF_MONTH:
            day = self.day_of_month
        else:
            if not 1 <= self.day_of_week <= 7:
                raise ValueError(f"DstRule operator {op} needs a day of the week")
            first_weekday = calendar.weekday(year, self.month, 1) + 1  # 1 Monday .. 7 Sunday
            first = 1 + (self.day_of_week - first_weekday) % 7
            if op == DstOperator.WEEKDAY_ON_OR_AFTER:
                start = max(self.day_of_month, 1)
                day = start + (self.day_of_week - calendar.weekday(year, self.month, start) - 1) % 7
            elif op == DstOperator.LAST:
                day = first + 7 * ((days - first) // 7)
            else:
                day = first + 7 * (op - DstOperator.FIRST)
        if not 1 <= day <= days:
            raise ValueError(f"DstRule {self.encode()} names no day in {year}-{self.month:02d}")
        minute, second = divmod(self.seconds, 60)
        return datetime(year, self.month, day, self.hour, minute, second)  # noqa: DTZ001


@dataclass(frozen=True, slots=True)
class LocalTimeParameters:
    """The ESPI LocalTimeParameters resource (schema type TimeConfiguration).

    `tz_offset_s`: standard offset from UTC; `dst_offset_s`: added during DST; the rules are
    DstRuleType words (8 hex digits, NO_DST_RULE when the zone has no DST). `title` is the
    feed entry's title (local_time_parameters puts the zone's name there).
    """

    tz_offset_s: int
    dst_offset_s: int
    dst_start_rule: str
    dst_end_rule: str
    title: str = ""


def _offset_s(zone: tzinfo, epoch_s: int) -> int:
    offset = datetime.fromtimestamp(epoch_s, zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


def _changes(zone: tzinfo, year: int) -> list[tuple[int, int, int]]:
    """(epoch second of the change, offset before, offset after), for changes whose wall-clock
    time before the change falls in `year`."""
    first = int(datetime(year, 1, 1, tzinfo=UTC).timestamp()) - 2 * 86400
    last = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()) + 2 * 86400
    step = 3600  # tz data changes are hours or more apart
    changes = []
    t = first
    before = _offset_s(zone, t)
    while t < last:
        after = _offset_s(zone, t + step)
        if after != before:
            lo, hi = t, t + step  # offset(lo) == before, offset(hi) == after
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_s(zone, mid) == before:
                    lo = mid
                else:
                    hi = mid
            wall = datetime(1970, 1, 1) + timedelta(seconds=hi + before)  # noqa: DTZ001
            if wall.year == year:
                changes.append((hi, before, after))
            before = after
        t += step
    return changes


def _rule_for(wall: datetime) -> DstRule:
    days = calendar.monthrange(wall.year, wall.month)[1]
    if wall.day + 7 > days:
        operator = DstOperator.LAST
    else:
        operator = DstOperator(DstOperator.FIRST + (wall.day - 1) // 7)
    return DstRule(
        month=wall.month,
        operator=operator,
        day_of_month=0,
        day_of_week=wall.isoweekday(),
        hour=wall.hour,
        seconds=wall.minute * 60 + wall.second,
    )


def local_time_parameters(zone: str | tzinfo, year: int) -> LocalTimeParameters:
    """LocalTimeParameters for `zone` (an IANA name or a tzinfo) as its rules stand in `year`.

    Raises:
        ValueError: the zone's changes in that year are not one DST period (see the module doc).
        zoneinfo.ZoneInfoNotFoundError: an unknown zone name.
    """
    tz = ZoneInfo(zone) if isinstance(zone, str) else zone
    title = zone if isinstance(zone, str) else str(getattr(zone, "key", zone))
    changes = _changes(tz, year)
    if not changes:
        jan = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
        return LocalTimeParameters(_offset_s(tz, jan), 0, NO_DST_RULE, NO_DST_RULE, title)
    if len(changes) != 2:
        raise ValueError(
            f"{title} changes its UTC offset {len(changes)} time(s) in {year}, not twice "
            "(into DST and out of it): no ESPI DST rule pair describes that"
        )
    (_, a_before, a_after), (_, b_before, b_after) = changes
    standard, daylight = min(a_before, a_after), max(a_before, a_after)
    if {b_before, b_after} != {standard, daylight}:
        raise ValueError(
            f"{title} moves between more than two UTC offsets in {year}: "
            "no ESPI DST rule pair describes it"
        )
    start = next(c for c in changes if c[2] == daylight)
    end = next(c for c in changes if c[2] == standard)
    start_wall = datetime(1970, 1, 1) + timedelta(seconds=start[0] + standard)  # noqa: DTZ001
    end_wall = datetime(1970, 1, 1) + timedelta(seconds=end[0] + daylight)  # noqa: DTZ001
    return LocalTimeParameters(
        tz_offset_s=standard,
        dst_offset_s=daylight - standard,
        dst_start_rule=_rule_for(start_wall).encode(),
        dst_end_rule=_rule_for(end_wall).encode(),
        title=title,
    )
