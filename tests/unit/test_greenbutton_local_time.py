"""ESPI LocalTimeParameters: the DstRuleType bit layout, hand-worked zones, and every rule checked
against the zone's real changes.

Hand-worked values: America/New_York 2026 starts DST on Sunday 2026-03-08 at 02:00 local (the
second Sunday of March) and ends it on Sunday 2026-11-01 at 02:00 local (the first Sunday of
November); these are the Green Button sample feed's 360E2000 and B40E2000. Europe/Berlin changes at
01:00 UTC on the last Sundays of March and October: 02:00 CET on 2026-03-29, 03:00 CEST on
2026-10-25.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cloud.domain.greenbutton.local_time import (
    NO_DST_RULE,
    DstOperator,
    DstRule,
    LocalTimeParameters,
    local_time_parameters,
)


def _word(month: int, operator: int, dom: int, dow: int, hour: int, seconds: int) -> str:
    """The DstRuleType layout spelled out from usage.xsd, independently of the module."""
    value = (month << 28) | (operator << 25) | (dom << 20) | (dow << 17) | (hour << 12) | seconds
    return f"{value:08X}"


def test_new_york_2026_by_hand() -> None:
    # Second (operator 3) Sunday (7) of March (3) at 02:00; first (2) Sunday of November (11).
    assert _word(3, 3, 0, 7, 2, 0) == "360E2000"
    assert _word(11, 2, 0, 7, 2, 0) == "B40E2000"
    lt = local_time_parameters("America/New_York", 2026)
    assert lt == LocalTimeParameters(
        tz_offset_s=-5 * 3600,
        dst_offset_s=3600,
        dst_start_rule="360E2000",
        dst_end_rule="B40E2000",
        title="America/New_York",
    )
    start = DstRule.decode(lt.dst_start_rule)
    end = DstRule.decode(lt.dst_end_rule)
    assert start is not None and end is not None
    assert start.local_datetime(2026) == datetime(2026, 3, 8, 2, 0)  # noqa: DTZ001
    assert end.local_datetime(2026) == datetime(2026, 11, 1, 2, 0)  # noqa: DTZ001


def test_berlin_2026_by_hand() -> None:
    lt = local_time_parameters("Europe/Berlin", 2026)
    assert (lt.tz_offset_s, lt.dst_offset_s) == (3600, 3600)
    assert lt.dst_start_rule == _word(3, DstOperator.LAST, 0, 7, 2, 0) == "3E0E2000"
    assert lt.dst_end_rule == _word(10, DstOperator.LAST, 0, 7, 3, 0) == "AE0E3000"
    start = DstRule.decode(lt.dst_start_rule)
    end = DstRule.decode(lt.dst_end_rule)
    assert start is not None and end is not None
    assert start.local_datetime(2026) == datetime(2026, 3, 29, 2, 0)  # noqa: DTZ001
    assert end.local_datetime(2026) == datetime(2026, 10, 25, 3, 0)  # noqa: DTZ001


@pytest.mark.parametrize(("zone", "offset_s"), [("Asia/Tokyo", 9 * 3600), ("UTC", 0)])
def test_a_zone_without_dst_says_none(zone: str, offset_s: int) -> None:
    lt = local_time_parameters(zone, 2026)
    assert lt == LocalTimeParameters(offset_s, 0, NO_DST_RULE, NO_DST_RULE, zone)
    assert DstRule.decode(NO_DST_RULE) is None


def test_a_tzinfo_is_accepted_and_titled_by_its_key() -> None:
    assert local_time_parameters(ZoneInfo("America/New_York"), 2026).title == "America/New_York"
    assert local_time_parameters(UTC, 2026).dst_offset_s == 0


def test_the_schema_example_third_friday_of_march_at_0145() -> None:
    # usage.xsd: "DST starts on third Friday in March at 1:45 AM": seconds 2700, hours 1, day of
    # week 5, day of month 0, operator 4, month 3.
    rule = DstRule(month=3, operator=4, day_of_month=0, day_of_week=5, hour=1, seconds=2700)
    assert rule.encode() == _word(3, 4, 0, 5, 1, 2700) == "380A1A8C"
    assert DstRule.decode(rule.encode()) == rule
    assert rule.local_datetime(2026) == datetime(2026, 3, 20, 1, 45)  # noqa: DTZ001


def test_the_other_operators() -> None:
    on_day = DstRule(month=4, operator=0, day_of_month=5, day_of_week=0, hour=3, seconds=0)
    assert on_day.local_datetime(2026) == datetime(2026, 4, 5, 3)  # noqa: DTZ001
    # Sunday on or after 2026-04-02 (a Thursday) is 2026-04-05; on or after the 5th is the 5th.
    after = DstRule(month=4, operator=1, day_of_month=2, day_of_week=7, hour=2, seconds=0)
    assert after.local_datetime(2026) == datetime(2026, 4, 5, 2)  # noqa: DTZ001
    same = DstRule(month=4, operator=1, day_of_month=5, day_of_week=7, hour=2, seconds=0)
    assert same.local_datetime(2026) == datetime(2026, 4, 5, 2)  # noqa: DTZ001
    # March 2026 has five Sundays (1st .. 29th); February 2026 has four.
    fifth = DstRule(month=3, operator=6, day_of_month=0, day_of_week=7, hour=2, seconds=0)
    assert fifth.local_datetime(2026) == datetime(2026, 3, 29, 2)  # noqa: DTZ001
    no_fifth = DstRule(month=2, operator=6, day_of_month=0, day_of_week=7, hour=2, seconds=0)
    with pytest.raises(ValueError, match="names no day"):
        no_fifth.local_datetime(2026)


@pytest.mark.parametrize("text", ["XYZ", "123456789A", "", "360E200"])
def test_decode_rejects_what_is_not_a_word(text: str) -> None:
    with pytest.raises(ValueError, match="DstRuleType"):
        DstRule.decode(text)


def test_rule_fields_are_range_checked() -> None:
    with pytest.raises(ValueError, match="month 13"):
        DstRule(month=13, operator=0, day_of_month=1, day_of_week=0, hour=0, seconds=0)
    with pytest.raises(ValueError, match="seconds 3600"):
        DstRule(month=1, operator=0, day_of_month=1, day_of_week=0, hour=0, seconds=3600)


ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "America/Havana",  # changes at midnight
    "America/Santiago",  # southern hemisphere, changes at midnight
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # tz data calls winter time the negative-DST one
    "Australia/Sydney",
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Chatham",  # :45 offsets
    "Asia/Tehran",  # fixed dates until 2022, none since
    "Asia/Kolkata",
]


def _offset(zone: ZoneInfo, instant: datetime) -> int:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


@pytest.mark.parametrize("zone_name", ZONES)
def test_every_rule_names_the_zones_real_change(zone_name: str) -> None:
    """The rule's wall-clock time, read as the time before the change, is the change's instant."""
    zone = ZoneInfo(zone_name)
    for year in range(2020, 2031):
        lt = local_time_parameters(zone_name, year)
        start = DstRule.decode(lt.dst_start_rule)
        end = DstRule.decode(lt.dst_end_rule)
        standard, daylight = lt.tz_offset_s, lt.tz_offset_s + lt.dst_offset_s
        if start is None or end is None:
            assert start is None and end is None and lt.dst_offset_s == 0
            jan, jul = datetime(year, 1, 15, tzinfo=UTC), datetime(year, 7, 15, tzinfo=UTC)
            assert _offset(zone, jan) == _offset(zone, jul) == standard
            continue
        second = timedelta(seconds=1)
        start_utc = (start.local_datetime(year) - timedelta(seconds=standard)).replace(tzinfo=UTC)
        assert _offset(zone, start_utc - second) == standard, (zone_name, year)
        assert _offset(zone, start_utc) == daylight, (zone_name, year)
        end_utc = (end.local_datetime(year) - timedelta(seconds=daylight)).replace(tzinfo=UTC)
        assert _offset(zone, end_utc - second) == daylight, (zone_name, year)
        assert _offset(zone, end_utc) == standard, (zone_name, year)


def test_a_standing_offset_change_is_refused() -> None:
    # Yukon stayed on its summer offset from 2020-03-08 on: one change in 2020, not a DST period.
    with pytest.raises(ValueError, match="America/Whitehorse changes its UTC offset 1 time"):
        local_time_parameters("America/Whitehorse", 2020)
