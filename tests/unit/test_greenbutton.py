"""Green Button (ESPI v3.3) writer and reader: schema-valid output, round trips, determinism,
errors, and constant memory.

Every feed the writer produces here is validated with xmlschema against the vendored usage.xsd
(cloud/domain/greenbutton/schemas). The reader is also fed hand-written utility-style files:
espi: prefixes, kWh with multiplier 3, entries out of order.
"""

from __future__ import annotations

import hashlib
import io
import re
import tracemalloc
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.domain.greenbutton import (
    Accumulation,
    FlowDirection,
    GreenButtonError,
    IntervalBlockValues,
    IntervalValue,
    LoadedFeed,
    Quality,
    Reading,
    ReadingSpec,
    UsagePointInfo,
    load_feed,
    local_time_parameters,
    read_feed,
    validate,
    write_feed,
)
from cloud.domain.greenbutton.model import INT48_MAX, INT48_MIN
from cloud.domain.greenbutton.reader import SCHEMA_DIR
from cloud.domain.greenbutton.writer import GRIDMINT_GREENBUTTON_NS

ATOM = "{http://www.w3.org/2005/Atom}"
ESPI = "{http://naesb.org/espi}"
NY = "America/New_York"
UPDATED = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE = "https://vpp.example"
SITE = UsagePointInfo("site-1", "Rooftop 1", is_virtual=True, is_der=True, status=1)
Readings = list[tuple[ReadingSpec, Iterable[IntervalValue]]]


def _epoch(zone: str, y: int, m: int, d: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(y, m, d, hour, minute, tzinfo=ZoneInfo(zone)).timestamp())


def _series(
    start: int,
    count: int,
    interval_s: int,
    *,
    skip: Callable[[int], bool] = lambda i: False,
    value: Callable[[int], int] = lambda i: (i * 7919) % 2500,
    quality: Callable[[int], int | None] = lambda i: None,
    cost: Callable[[int], int | None] = lambda i: None,
) -> list[IntervalValue]:
    return [
        IntervalValue(start + i * interval_s, interval_s, value(i), quality(i), cost(i))
        for i in range(count)
        if not skip(i)
    ]


def _write(
    readings: Readings,
    *,
    zone: str = NY,
    site: UsagePointInfo = SITE,
    feed_id: str = "sub-1",
    year: int = 2026,
) -> bytes:
    return b"".join(
        write_feed(
            site,
            local_time_parameters(zone, year),
            readings,
            feed_id=feed_id,
            updated=UPDATED,
            base_url=BASE,
            tz=zone,
        )
    )


def _blocks(data: bytes) -> list[IntervalBlockValues]:
    return [i for i in read_feed(io.BytesIO(data)) if isinstance(i, IntervalBlockValues)]


# -- the vendored schema -------------------------------------------------------------------------


def test_the_vendored_schemas_are_the_published_files() -> None:
    """Byte for byte the files of OpenESPI-Common-java@f6d1879e (schemas/README.md)."""
    expected = {
        "usage.xsd": "60ae2300131eb288c490ac297374c9eeb1c7014118645c9dcb1ae03b62cfec60",
        "atom.xsd": "a4cc0fc8d0f4671315e1c53735a82811e88e8e37d214fb42246264e29aaa11db",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((SCHEMA_DIR / name).read_bytes()).hexdigest() == digest, name


# -- feeds the writer produces are schema-valid and read back identically ------------------------


def _five_minute_utc() -> tuple[str, Readings]:
    start = _epoch("UTC", 2026, 5, 1)
    return "UTC", [(ReadingSpec("import", "Import", interval_s=300), _series(start, 2 * 288, 300))]


def _fifteen_minute_spring_forward() -> tuple[str, Readings]:
    # 2026-03-07 .. 2026-03-09 local: the middle day has 23 hours.
    start = _epoch(NY, 2026, 3, 7)
    count = (_epoch(NY, 2026, 3, 10) - start) // 900
    return NY, [(ReadingSpec("import", interval_s=900), _series(start, count, 900))]


def _fifteen_minute_fall_back() -> tuple[str, Readings]:
    start = _epoch(NY, 2026, 10, 31)
    count = (_epoch(NY, 2026, 11, 3) - start) // 900
    return NY, [(ReadingSpec("export", flow_direction=19), _series(start, count, 900))]


def _berlin_across_the_change() -> tuple[str, Readings]:
    zone = "Europe/Berlin"
    start = _epoch(zone, 2026, 3, 28, 12)
    return zone, [(ReadingSpec("import", interval_s=900), _series(start, 4 * 48, 900))]


def _with_gaps() -> tuple[str, Readings]:
    # Two hours missing on the first day, the whole second day missing, one lone interval.
    start = _epoch(NY, 2026, 6, 1)
    return NY, [
        (
            ReadingSpec("import", interval_s=300),
            _series(start, 3 * 288, 300, skip=lambda i: 100 <= i < 124 or 288 <= i < 576),
        ),
        (ReadingSpec("export", flow_direction=19, interval_s=300), _series(start + 600, 1, 300)),
    ]


def _with_cost_and_quality() -> tuple[str, Readings]:
    codes = [None, *Quality]
    start = _epoch("Europe/Berlin", 2026, 7, 1)
    return "Europe/Berlin", [
        (
            ReadingSpec("import", "Import, priced", currency=978, interval_s=900),
            _series(
                start,
                96,
                900,
                quality=lambda i: codes[i % len(codes)],
                cost=lambda i: None if i % 5 == 0 else (i * 3_001) % 40_000,
            ),
        )
    ]


def _several_readings() -> tuple[str, Readings]:
    start = _epoch(NY, 2026, 8, 1)
    day = 86400
    return NY, [
        (ReadingSpec("import", "Import", interval_s=900), _series(start, 192, 900)),
        (
            ReadingSpec("export", "Export", flow_direction=FlowDirection.REVERSE, interval_s=900),
            _series(start, 192, 900, value=lambda i: (i * 31) % 900),
        ),
        (
            ReadingSpec("pv", "PV", flow_direction=FlowDirection.REVERSE, interval_s=900),
            _series(start, 192, 900, value=lambda i: (i * 17) % 1200),
        ),
        (
            ReadingSpec("net", "Net", flow_direction=FlowDirection.NET, interval_s=900),
            _series(start, 192, 900, value=lambda i: (i * 7919) % 2500 - 1250),
        ),
        (
            ReadingSpec(
                "import-register",
                "Import register",
                accumulation=Accumulation.BULK_QUANTITY,
                interval_s=day,
            ),
            _series(start, 3, day, value=lambda i: 4_000_000 + 12_345 * i),
        ),
    ]


def _kwh_multiplier() -> tuple[str, Readings]:
    start = _epoch(NY, 2026, 9, 1)
    spec = ReadingSpec("import", "Import, kWh", power_of_ten=3, interval_s=3600)
    return NY, [(spec, _series(start, 48, 3600, value=lambda i: 1000 * (i % 7)))]


SCENARIOS: dict[str, Callable[[], tuple[str, Readings]]] = {
    "5-minute, UTC": _five_minute_utc,
    "15-minute, New York spring forward": _fifteen_minute_spring_forward,
    "15-minute, New York fall back": _fifteen_minute_fall_back,
    "15-minute, Berlin across the change": _berlin_across_the_change,
    "gaps": _with_gaps,
    "cost and quality": _with_cost_and_quality,
    "several readings": _several_readings,
    "kWh, multiplier 3": _kwh_multiplier,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_feed_is_schema_valid_and_reads_back_identically(scenario: str) -> None:
    zone, readings = SCENARIOS[scenario]()
    data = _write(readings, zone=zone)
    assert validate(data) == []
    feed = load_feed(io.BytesIO(data))
    assert feed.usage_points == [SITE]
    assert feed.local_time == local_time_parameters(zone, 2026)
    assert [(r.usage_point_id, r.spec) for r in feed.readings] == [
        (SITE.site_id, spec) for spec, _ in readings
    ]
    for (_, values), loaded in zip(readings, feed.readings, strict=True):
        assert loaded.values == list(values)


def test_validate_reports_schema_errors() -> None:
    """The validation above is not vacuous."""
    zone, readings = _five_minute_utc()
    data = _write(readings, zone=zone)
    broken = data.replace(b"<value>0</value>", b"<value>zero</value>", 1).replace(
        b"<kind>0</kind>", b"<kind>0</kind><bogus/>", 1
    )
    errors = validate(broken)
    assert len(errors) == 2
    assert "atom:entry" in errors[0] and "bogus" in errors[0]
    assert "IntervalReading[1]/value" in errors[1]
    assert validate(b"<feed") == [validate(b"<feed")[0]]
    assert validate(b"<feed")[0].startswith("not well-formed XML")


def test_validate_takes_a_path_or_a_stream(tmp_path: Path) -> None:
    zone, readings = _five_minute_utc()
    data = _write(readings, zone=zone)
    path = tmp_path / "feed.xml"
    path.write_bytes(data)
    assert validate(path) == validate(str(path)) == validate(io.BytesIO(data)) == []


# -- days, DST, blocks ---------------------------------------------------------------------------


def test_blocks_are_site_local_days_with_23_and_25_hours() -> None:
    _, spring = _fifteen_minute_spring_forward()
    _, fall = _fifteen_minute_fall_back()
    spring_blocks = _blocks(_write(spring))
    fall_blocks = _blocks(_write(fall))
    assert [(b.start, b.duration_s, len(b.values)) for b in spring_blocks] == [
        (_epoch(NY, 2026, 3, 7), 24 * 3600, 96),
        (_epoch(NY, 2026, 3, 8), 23 * 3600, 92),
        (_epoch(NY, 2026, 3, 9), 24 * 3600, 96),
    ]
    assert [(b.duration_s, len(b.values)) for b in fall_blocks] == [
        (24 * 3600, 96),
        (25 * 3600, 100),
        (24 * 3600, 96),
    ]
    for block in spring_blocks + fall_blocks:
        assert all(block.start <= v.start < block.start + block.duration_s for v in block.values)


def test_a_missing_day_has_no_block() -> None:
    _, readings = _with_gaps()
    blocks = [b for b in _blocks(_write(readings)) if b.reading_key == "import"]
    assert [b.start for b in blocks] == [_epoch(NY, 2026, 6, 1), _epoch(NY, 2026, 6, 3)]
    assert [len(b.values) for b in blocks] == [288 - 24, 288]


# -- determinism and links -----------------------------------------------------------------------


def test_the_same_input_gives_the_same_bytes() -> None:
    zone, readings = _several_readings()
    first = _write(readings, zone=zone)
    again = _write([(spec, iter(list(values))) for spec, values in readings], zone=zone)
    assert first == again
    # A block's id is the UUIDv5 of site, reading key and local day.
    block_id = uuid.uuid5(GRIDMINT_GREENBUTTON_NS, "site-1\x1fimport\x1f2026-08-01")
    assert f"<id>urn:uuid:{block_id}</id>".encode() in first
    ids = [e.findtext(ATOM + "id") for e in ET.fromstring(first).iter(ATOM + "entry")]
    assert len(ids) == len(set(ids))
    assert all(i and i.startswith("urn:uuid:") for i in ids)


def test_the_atom_links_follow_the_green_button_pattern() -> None:
    zone, readings = _several_readings()
    root = ET.fromstring(_write(readings, zone=zone))
    entries: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for entry in root.iter(ATOM + "entry"):
        content = entry.find(ATOM + "content")
        assert content is not None
        kind = content[0].tag.removeprefix(ESPI)
        links: dict[str, list[tuple[str, str]]] = {}
        for link in entry.iter(ATOM + "link"):
            links.setdefault(link.get("rel", ""), []).append(
                (link.get("href", ""), link.get("type", ""))
            )
        entries.setdefault(kind, {})
        self_href = links["self"][0][0]
        entries[kind][self_href] = [l for rel in ("up", "related") for l in links.get(rel, [])]
    resource = f"{BASE}/espi/1_1/resource"
    up = f"{resource}/Subscription/sub-1/UsagePoint/site-1"
    mr = f"{up}/MeterReading/import"
    assert list(entries["UsagePoint"]) == [up]
    assert f"{mr}/IntervalBlock/2026-08-01" in entries["IntervalBlock"]
    (lt_self,) = entries["LocalTimeParameters"]
    assert (lt_self, "espi-entry/LocalTimeParameters") in entries["UsagePoint"][up]
    assert (f"{up}/MeterReading", "espi-feed/MeterReading") in entries["UsagePoint"][up]
    for mr_self, mr_links in entries["MeterReading"].items():
        assert (f"{mr_self}/IntervalBlock", "espi-feed/IntervalBlock") in mr_links
        (rt,) = [href for href, kind in mr_links if kind == "espi-entry/ReadingType"]
        assert rt in entries["ReadingType"]
    for ib_self, ib_links in entries["IntervalBlock"].items():
        collection = ib_self.rsplit("/", 1)[0]
        assert ib_links == [(collection, "espi-feed/IntervalBlock")]
        assert collection.removesuffix("/IntervalBlock") in entries["MeterReading"]


def test_the_usage_point_says_virtual_der_electricity() -> None:
    zone, readings = _five_minute_utc()
    root = ET.fromstring(_write(readings, zone=zone))
    (up,) = root.iter(ESPI + "UsagePoint")
    assert up.findtext(ESPI + "roleFlags") == "0008"  # Bit 4 (from 1): isDER
    assert up.findtext(f"{ESPI}ServiceCategory/{ESPI}kind") == "0"
    assert up.findtext(ESPI + "isVirtual") == "true"
    assert up.findtext(ESPI + "status") == "1"
    plain = UsagePointInfo("site-2", "", is_virtual=False, is_der=False, status=0)
    feed = load_feed(io.BytesIO(_write(readings, zone=zone, site=plain)))
    assert feed.usage_points == [plain]


def test_ids_and_titles_are_escaped_and_read_back() -> None:
    site = UsagePointInfo("site/ä & <1>", 'Title "&" <b>\r\nline\t2', is_virtual=True)
    spec = ReadingSpec("import/ä?", "Import <&>")
    start = _epoch(NY, 2026, 1, 1)
    data = _write([(spec, _series(start, 4, 900))], site=site, feed_id="sub ä/1")
    assert validate(data) == []
    feed = load_feed(io.BytesIO(data))
    assert feed.usage_points == [site]
    assert feed.readings[0].spec == spec
    assert feed.readings[0].usage_point_id == site.site_id


# -- the writer consumes lazily, in constant memory ---------------------------------------------


def test_values_are_consumed_lazily() -> None:
    consumed = 0

    def values() -> Iterator[IntervalValue]:
        nonlocal consumed
        for v in _series(_epoch(NY, 2026, 1, 1), 3 * 96, 900):
            consumed += 1
            yield v

    chunks = write_feed(
        SITE,
        local_time_parameters(NY, 2026),
        [(ReadingSpec("import"), values())],
        feed_id="s",
        updated=UPDATED,
        base_url=BASE,
        tz=NY,
    )
    next(chunks)  # the head
    next(chunks)  # the MeterReading and ReadingType
    assert consumed == 0
    first_block = next(chunks)
    assert first_block.count(b"<IntervalReading>") == 96
    assert consumed == 97  # the first value of the next day closed the block


def _peak_bytes_writing(days: int) -> int:
    start = _epoch(NY, 2026, 1, 1)

    def values() -> Iterator[IntervalValue]:
        for i in range(days * 288):
            yield IntervalValue(start + 300 * i, 300, (i * 7919) % 2500)

    sink = hashlib.sha256()
    tracemalloc.start()
    try:
        for chunk in write_feed(
            SITE,
            local_time_parameters(NY, 2026),
            [(ReadingSpec("import", interval_s=300), values())],
            feed_id="s",
            updated=UPDATED,
            base_url=BASE,
            tz=NY,
        ):
            sink.update(chunk)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_year_of_5_minute_data_is_written_in_constant_memory() -> None:
    """105,120 intervals from a generator: the peak is one day's block, whatever the period."""
    month = _peak_bytes_writing(30)
    year = _peak_bytes_writing(365)
    assert year < 2 * 1024 * 1024
    assert year < 1.5 * month + 64 * 1024


def test_the_reader_streams_in_constant_memory() -> None:
    def peak(days: int) -> int:
        start = _epoch(NY, 2026, 1, 1)
        spec = ReadingSpec("import", interval_s=300)
        data = io.BytesIO(_write([(spec, _series(start, days * 288, 300))]))
        tracemalloc.start()
        try:
            for _ in read_feed(data):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(10), peak(100)
    assert long < 2 * 1024 * 1024
    assert long < 1.5 * short + 64 * 1024


# -- writer input errors -------------------------------------------------------------------------

T0 = _epoch(NY, 2026, 1, 1)


@pytest.mark.parametrize(
    ("spec", "values", "match"),
    [
        (ReadingSpec("i"), [IntervalValue(T0, 900, INT48_MAX + 1)], "outside ESPI Int48"),
        (ReadingSpec("i"), [IntervalValue(T0, 900, INT48_MIN - 1)], "outside ESPI Int48"),
        (ReadingSpec("i"), [IntervalValue(T0, 900, 1, cost=INT48_MAX + 1)], "cost"),
        (ReadingSpec("i"), [IntervalValue(T0, 900, 1, quality=-1)], "quality"),
        (
            ReadingSpec("i"),
            [IntervalValue(T0, 900, 1, quality=11), IntervalValue(T0 + 900, 900, 1, quality=11.0)],  # type: ignore[arg-type]
            "quality 11.0 is not an integer",
        ),
        (
            ReadingSpec("i"),
            [IntervalValue(T0, 900, 1, quality=1), IntervalValue(T0 + 900, 900, 1, quality=True)],
            "quality True is not an integer",
        ),
        (
            ReadingSpec("i"),
            [IntervalValue(T0, 900, 1), IntervalValue(T0, 900, 2)],
            "starts must increase",
        ),
        (
            ReadingSpec("i"),
            [IntervalValue(T0 + 900, 900, 1), IntervalValue(T0, 900, 2)],
            "starts must increase",
        ),
        (ReadingSpec("i"), [IntervalValue(T0, 900, 1.5)], "value_wh 1.5 is not an integer"),  # type: ignore[arg-type]
        (ReadingSpec("i"), [IntervalValue(T0, 0, 1)], "duration_s 0"),
        (ReadingSpec("i"), [(T0, 900, 1)], "is not an IntervalValue"),
        (
            ReadingSpec("i", power_of_ten=3),
            [IntervalValue(T0, 900, 1500)],
            "not a whole number of 10\\^3",
        ),
        (ReadingSpec("i", power_of_ten=99), [], "powerOfTenMultiplier 99"),
        (ReadingSpec("", power_of_ten=0), [], "key is empty"),
        (ReadingSpec("i", "bell \x07"), [], "XML 1.0 cannot carry"),
    ],
)
def test_the_writer_rejects_bad_values_plainly(
    spec: ReadingSpec, values: list[IntervalValue], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _write([(spec, values)])


def test_a_start_beyond_the_calendar_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a date"):
        _write([(ReadingSpec("i"), [IntervalValue(2**62, 900, 1)])])


def test_an_int48_edge_value_is_written() -> None:
    values = [IntervalValue(T0, 900, INT48_MAX, cost=INT48_MIN), IntervalValue(T0 + 900, 900, 0)]
    data = _write([(ReadingSpec("i"), values)])
    assert validate(data) == []
    assert load_feed(io.BytesIO(data)).readings[0].values == values


def test_the_writer_rejects_duplicate_keys_and_naive_times() -> None:
    with pytest.raises(ValueError, match="unique"):
        _write([(ReadingSpec("i"), []), (ReadingSpec("i"), [])])
    with pytest.raises(ValueError, match="aware"):
        next(
            write_feed(
                SITE,
                local_time_parameters(NY, 2026),
                [],
                feed_id="s",
                updated=datetime(2026, 1, 1),  # noqa: DTZ001
                base_url=BASE,
                tz=NY,
            )
        )


# -- a property: random small inputs round trip --------------------------------------------------

_ZONES = ["UTC", NY, "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham"]


@st.composite
def _readings(draw: st.DrawFn) -> tuple[str, Readings]:
    zone = draw(st.sampled_from(_ZONES))
    n = draw(st.integers(1, 3))
    readings: Readings = []
    for k in range(n):
        interval = draw(st.sampled_from([300, 900, 1800, 3600, 86400]))
        p10 = draw(st.sampled_from([0, 0, 3, -3]))
        start = _epoch("UTC", 2026, 1, 1) + interval * draw(st.integers(0, 366 * 86400 // interval))
        steps = draw(st.lists(st.integers(1, 40), max_size=60))
        unit = 10**p10 if p10 > 0 else 1
        limit = INT48_MAX // (10**-p10 if p10 < 0 else 1) // unit
        values = []
        t = start
        for step in steps:
            t += step * interval
            values.append(
                IntervalValue(
                    start=t,
                    duration_s=interval,
                    value_wh=unit * draw(st.integers(-limit, limit)),
                    quality=draw(st.none() | st.sampled_from(list(Quality))),
                    cost=draw(st.none() | st.integers(INT48_MIN, INT48_MAX)),
                )
            )
        spec = ReadingSpec(
            key=draw(st.sampled_from(["import", "export", "net", "pv"])) + str(k),
            title=draw(st.text(max_size=8).filter(lambda s: s.isprintable() and s == s.strip())),
            flow_direction=draw(st.sampled_from(list(FlowDirection))),
            power_of_ten=p10,
            accumulation=draw(
                st.sampled_from([Accumulation.DELTA_DATA, Accumulation.BULK_QUANTITY])
            ),
            interval_s=interval,
            currency=draw(st.none() | st.sampled_from([840, 978])),
        )
        readings.append((spec, values))
    return zone, readings


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_readings())
def test_random_feeds_round_trip_and_validate(case: tuple[str, Readings]) -> None:
    zone, readings = case
    data = _write(readings, zone=zone)
    assert _write(readings, zone=zone) == data
    assert validate(data) == []
    feed = load_feed(io.BytesIO(data))
    assert [r.spec for r in feed.readings] == [spec for spec, _ in readings]
    assert [r.values for r in feed.readings] == [list(values) for _, values in readings]


# -- the reader on utility-style files -----------------------------------------------------------


def _utility_feed(
    *,
    multiplier: int = 3,
    values: Iterable[str] = ("1", "2"),
    order: str = "mr rt ib",
    reading: str | None = None,
    root: str = '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:espi="http://naesb.org/espi">',
    default_quality: str = "",
) -> bytes:
    """A small feed as a utility might write it: espi: prefixes, hosts and orders of its own."""
    up = "https://utility.example/DataCustodian/espi/1_1/resource/Subscription/9/UsagePoint/77"
    readings = "".join(
        reading
        or (
            f"<espi:IntervalReading><espi:ReadingQuality><espi:quality>19</espi:quality>"
            f"</espi:ReadingQuality><espi:timePeriod><espi:duration>3600</espi:duration>"
            f"<espi:start>{1767243600 + 3600 * i}</espi:start></espi:timePeriod>"
            f"<espi:value>{v}</espi:value></espi:IntervalReading>"
            if i == 0
            else f"<espi:IntervalReading><espi:timePeriod><espi:duration>3600</espi:duration>"
            f"<espi:start>{1767243600 + 3600 * i}</espi:start></espi:timePeriod>"
            f"<espi:value>{v}</espi:value></espi:IntervalReading>"
        )
        for i, v in enumerate(values)
    )
    entries = {
        "up": f"""<entry><id>urn:uuid:00000000-0000-0000-0000-000000000001</id>
<link href="{up}" rel="self" type="espi-entry/UsagePoint"/>
<link href="{up}/MeterReading" rel="related" type="espi-feed/MeterReading"/>
<title>Meter 77</title><content><espi:UsagePoint><espi:ServiceCategory><espi:kind>0</espi:kind>
</espi:ServiceCategory></espi:UsagePoint></content>
<published>2026-01-02T00:00:00Z</published><updated>2026-01-02T00:00:00Z</updated></entry>""",
        "mr": f"""<entry><id>urn:uuid:00000000-0000-0000-0000-000000000002</id>
<link href="{up}/MeterReading/01" rel="self" type="espi-entry/MeterReading"/>
<link href="{up}/MeterReading/01/IntervalBlock" rel="related" type="espi-feed/IntervalBlock"/>
<link href="http://utility.example/DataCustodian/espi/1_1/resource/ReadingType/07/"
 rel="related" type="espi-entry/ReadingType"/>
<title>Hourly kWh</title><content><espi:MeterReading/></content>
<published>2026-01-02T00:00:00Z</published><updated>2026-01-02T00:00:00Z</updated></entry>""",
        "rt": f"""<entry><id>urn:uuid:00000000-0000-0000-0000-000000000003</id>
<link href="https://utility.example/DataCustodian/espi/1_1/resource/ReadingType/07" rel="self"
 type="espi-entry/ReadingType"/>
<link href="https://utility.example/DataCustodian/espi/1_1/resource/ReadingType" rel="up"
 type="espi-feed/ReadingType"/>
<title>kWh</title><content><espi:ReadingType>
<espi:accumulationBehaviour>4</espi:accumulationBehaviour><espi:commodity>1</espi:commodity>
<espi:currency>840</espi:currency><espi:dataQualifier>12</espi:dataQualifier>
{default_quality}<espi:flowDirection>1</espi:flowDirection>
<espi:intervalLength>3600</espi:intervalLength><espi:kind>12</espi:kind>
<espi:phase>769</espi:phase><espi:powerOfTenMultiplier>{multiplier}</espi:powerOfTenMultiplier>
<espi:timeAttribute>0</espi:timeAttribute><espi:uom>72</espi:uom></espi:ReadingType></content>
<published>2026-01-02T00:00:00Z</published><updated>2026-01-02T00:00:00Z</updated></entry>""",
        "ib": f"""<entry><id>urn:uuid:00000000-0000-0000-0000-000000000004</id>
<link href="{up}/MeterReading/01/IntervalBlock/1" rel="self" type="espi-entry/IntervalBlock"/>
<link href="{up}/MeterReading/01/IntervalBlock" rel="up" type="espi-feed/IntervalBlock"/>
<title/><content><espi:IntervalBlock><espi:interval><espi:duration>86400</espi:duration>
<espi:start>1767243600</espi:start></espi:interval>{readings}</espi:IntervalBlock></content>
<published>2026-01-02T00:00:00Z</published><updated>2026-01-02T00:00:00Z</updated></entry>""",
    }
    body = "\n".join(entries[name] for name in ["up", *order.split()])
    return f"""<?xml version="1.0" encoding="UTF-8"?>
{root}
<id>urn:uuid:00000000-0000-0000-0000-000000000000</id><title>Utility</title>
<updated>2026-01-02T00:00:00Z</updated>
{body}
</feed>
""".encode()


def test_a_kwh_feed_with_multiplier_3_reads_as_wh() -> None:
    data = _utility_feed(multiplier=3, values=("1", "2", "0", "17"))
    assert validate(data) == []
    feed = load_feed(io.BytesIO(data))
    (reading,) = feed.readings
    assert reading.usage_point_id == "77"
    assert reading.spec == ReadingSpec(
        key="01",
        title="Hourly kWh",
        flow_direction=1,
        kind=12,
        uom=72,
        power_of_ten=3,
        accumulation=4,
        interval_s=3600,
        commodity=1,
        currency=840,
    )
    assert [v.value_wh for v in reading.values] == [1000, 2000, 0, 17000]
    assert [v.quality for v in reading.values] == [19, None, None, None]
    assert feed.usage_points == [UsagePointInfo("77", "Meter 77", False, False, 1)]


def test_retail_customer_entries_are_skipped() -> None:
    customer = (
        "<entry><id>urn:uuid:c</id><title>Customer</title><content>"
        '<cust:Customer xmlns:cust="http://naesb.org/espi/customer"/></content></entry>\n</feed>'
    )
    data = _utility_feed(multiplier=0, values=("4",)).replace(b"</feed>", customer.encode())
    assert [v.value_wh for v in load_feed(io.BytesIO(data)).readings[0].values] == [4]


def test_a_negative_multiplier_divides_exactly() -> None:
    feed = load_feed(io.BytesIO(_utility_feed(multiplier=-3, values=("1000", "-25000"))))
    assert [v.value_wh for v in feed.readings[0].values] == [1, -25]


def test_the_default_quality_applies_where_none_is_given() -> None:
    data = _utility_feed(
        multiplier=0,
        values=("1", "2"),
        default_quality="<espi:defaultQuality>17</espi:defaultQuality>",
    )
    assert validate(data) == []
    assert [v.quality for v in load_feed(io.BytesIO(data)).readings[0].values] == [19, 17]


@pytest.mark.parametrize("order", ["mr rt ib", "rt mr ib", "ib mr rt", "ib rt mr", "mr ib rt"])
def test_entries_in_any_order_link_up(order: str) -> None:
    items = list(read_feed(io.BytesIO(_utility_feed(multiplier=0, values=("5", "6"), order=order))))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["UsagePointInfo", "Reading", "IntervalBlockValues"]
    block = items[2]
    assert isinstance(block, IntervalBlockValues)
    assert (block.reading_key, [v.value_wh for v in block.values]) == ("01", [5, 6])


def test_blocks_stream_once_their_reading_type_is_known() -> None:
    """The first block comes out while most of the file is still unread."""

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            self.consumed += len(chunk)
            return chunk

    start = _epoch(NY, 2026, 1, 1)
    data = _write([(ReadingSpec("import", interval_s=300), _series(start, 60 * 288, 300))])
    stream = Counting(data)
    items = read_feed(stream)
    first = next(i for i in items if isinstance(i, IntervalBlockValues))
    assert first.start == start
    assert stream.consumed < len(data) / 10


def _error(data: bytes) -> GreenButtonError:
    with pytest.raises(GreenButtonError) as caught:
        for _ in read_feed(io.BytesIO(data)):
            pass
    assert isinstance(caught.value, ValueError)
    assert caught.value.__cause__ is None
    message = str(caught.value)
    assert "Traceback" not in message and "\n" not in message
    return caught.value


ONE_READING = (
    "<espi:IntervalReading><espi:timePeriod><espi:duration>3600</espi:duration>"
    "<espi:start>1767243600</espi:start></espi:timePeriod>{value}</espi:IntervalReading>"
)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"", "not well-formed XML at line 1", id="empty"),
        pytest.param(b"Green Button, honest", "not well-formed XML at line 1, column 1", id="text"),
        pytest.param(_utility_feed()[:900], "not well-formed XML at line", id="truncated"),
        pytest.param(
            b"<feed><entry/></feed>", "root element is <feed>, not an Atom <feed>", id="no-ns"
        ),
        pytest.param(
            _utility_feed(root='<feed xmlns="http://www.w3.org/2005/Atom-not">'),
            "not an Atom <feed>",
            id="wrong-atom-ns",
        ),
        pytest.param(
            _utility_feed(
                root='<feed xmlns="http://www.w3.org/2005/Atom" xmlns:espi="http://naesb.org/ESPI">'
            ),
            "entry 1 .*<content> holds <{http://naesb.org/ESPI}UsagePoint>, not an ESPI resource",
            id="wrong-espi-ns",
        ),
        pytest.param(
            _utility_feed(
                reading="<espi:IntervalReading><espi:value>1</espi:value></espi:IntervalReading>"
            ),
            "IntervalBlock IntervalReading 1: <timePeriod> is missing",
            id="no-timePeriod",
        ),
        pytest.param(
            _utility_feed(reading=ONE_READING.format(value="")),
            "IntervalBlock IntervalReading 1: <value> is missing",
            id="no-value",
        ),
        pytest.param(
            _utility_feed(values=("1", "2.5")),
            "IntervalReading 2: <value> '2.5' is not an integer",
            id="decimal",
        ),
        pytest.param(
            _utility_feed(values=("1_000",)), "<value> '1_000' is not an integer", id="underscore"
        ),
        pytest.param(_utility_feed(values=("",)), "<value> None is not an integer", id="blank"),
        pytest.param(_utility_feed(values=(str(2**63),)), "is outside", id="too-big"),
        pytest.param(
            _utility_feed(multiplier=-3, values=("1500",)),
            "<value> 1500 x 10\\^-3 is not a whole number",
            id="inexact-multiplier",
        ),
        pytest.param(
            _utility_feed(order="ib"),
            "no MeterReading entry has the IntervalBlock collection",
            id="no-MeterReading",
        ),
        pytest.param(
            _utility_feed(order="mr ib"),
            "MeterReading: none of its related links names a ReadingType",
            id="no-ReadingType",
        ),
        pytest.param(
            b'<!DOCTYPE feed [<!ENTITY a "aaaa">]><feed xmlns="http://www.w3.org/2005/Atom"/>',
            "DOCTYPE",
            id="doctype",
        ),
        pytest.param("<feed/>".encode("utf-16"), "not UTF-8", id="utf-16"),
    ],
)
def test_malformed_input_is_a_plain_green_button_error(data: bytes, match: str) -> None:
    message = str(_error(data))
    assert re.search(match, message), message


def test_an_empty_feed_has_no_items() -> None:
    assert list(read_feed(io.BytesIO(b'<feed xmlns="http://www.w3.org/2005/Atom"/>'))) == []
    assert load_feed(io.BytesIO(b'<feed xmlns="http://www.w3.org/2005/Atom"/>')) == LoadedFeed()


def test_load_feed_finds_a_reading_by_key() -> None:
    zone, readings = _several_readings()
    feed = load_feed(io.BytesIO(_write(readings, zone=zone)))
    assert feed.reading("net").spec.flow_direction == FlowDirection.NET
    with pytest.raises(KeyError):
        feed.reading("gas")


def test_read_feed_yields_the_reading_before_its_blocks() -> None:
    zone, readings = _several_readings()
    seen: set[str] = set()
    for item in read_feed(io.BytesIO(_write(readings, zone=zone))):
        if isinstance(item, Reading):
            seen.add(item.spec.key)
        elif isinstance(item, IntervalBlockValues):
            assert item.reading_key in seen
