"""Write a Green Button (ESPI v3.3) Atom feed for one site, streaming.

`write_feed` turns a UsagePoint, its LocalTimeParameters and any number of readings (a ReadingSpec
and an iterable of IntervalValues each) into the feed's bytes, chunk by chunk: the head with the
LocalTimeParameters and UsagePoint entries, then per reading its MeterReading and ReadingType
entries, then one IntervalBlock entry per site-local day (a DST day has 23 or 25 hours). It
consumes each reading's values lazily and holds at most one IntervalBlock's text, so a year of
5-minute data streams in constant memory. Pure: no I/O, no clock (the caller passes `updated`).

Layout (Green Button's resource URLs; `{r}` = `{base_url}/espi/1_1/resource`,
`{up}` = `{r}/Subscription/{sid}/UsagePoint/{upid}`, `{mr}` = `{up}/MeterReading/{mrid}`):

| entry               | self                            | related                                |
|---------------------|---------------------------------|----------------------------------------|
| LocalTimeParameters | {r}/LocalTimeParameters/{ltid}  |                                        |
| UsagePoint          | {up}                            | {up}/MeterReading, LocalTimeParameters |
| MeterReading        | {mr}                            | {mr}/IntervalBlock, ReadingType        |
| ReadingType         | {r}/ReadingType/{rtid}          |                                        |
| IntervalBlock       | {mr}/IntervalBlock/{yyyy-mm-dd} |                                        |

Each entry's `up` link is the collection its self link is in (self without the last segment).
`sid` is the feed id, `upid` the site id, `mrid` the reading key (each percent-encoded as one path
segment); `ltid` and `rtid` are name-based UUIDs. Entry ids are urn:uuid UUIDv5s of the site id,
reading key and local day, so the same input gives the same bytes.

Values: IntervalValue.value_wh is written as value_wh / 10**power_of_ten (exact, or ValueError);
`value` and `cost` must fit ESPI's Int48 and `duration` its UInt32. Missing intervals are simply
absent: filling gaps (and marking them estimated) is the caller's decision.

Must not import storage, services, the API, a database or a web framework (import-linter).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from urllib.parse import quote
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from cloud.domain.greenbutton.local_time import DstRule, LocalTimeParameters
from cloud.domain.greenbutton.model import (
    INT48_MAX,
    INT48_MIN,
    ROLE_IS_DER,
    SERVICE_ELECTRICITY,
    UINT32_MAX,
    IntervalValue,
    ReadingSpec,
    UsagePointInfo,
)

ATOM_NS = "http://www.w3.org/2005/Atom"
ESPI_NS = "http://naesb.org/espi"
#: The namespace of every UUIDv5 the writer makes.
GRIDMINT_GREENBUTTON_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:gridmint:greenbutton")

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTR_ENTITIES = {'"': "&quot;"}
_TEXT_ENTITIES = {"\r": "&#13;"}  # a parser would read a raw CR (or CR LF) back as LF


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(GRIDMINT_GREENBUTTON_NS, "\x1f".join(parts)))


def _text(value: str, what: str) -> str:
    """`value` escaped for XML character data; ValueError for characters XML 1.0 cannot carry."""
    if _XML_INVALID.search(value):
        raise ValueError(f"{what} {value!r} holds a character XML 1.0 cannot carry")
    return escape(value, _TEXT_ENTITIES)


def _segment(value: str, what: str) -> str:
    """`value` as one percent-encoded URL path segment."""
    if not value:
        raise ValueError(f"{what} is empty")
    _text(value, what)
    return quote(value, safe="")


def _link(rel: str, href: str, kind: str) -> str:
    return f'<link rel="{rel}" href="{href}" type="{kind}"/>'


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("updated must be an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_int(value: object, low: int, high: int, what: str) -> int:
    """`value` as a plain int (an IntEnum is fine, a bool or a float is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} {value!r} is not an integer in {low}..{high}")
    return int(value)


class _Entry:
    """Shared entry framing: the title, published and updated times."""

    def __init__(self, updated: str) -> None:
        self.tail = (
            f"</content><published>{updated}</published><updated>{updated}</updated></entry>\n"
        )

    def head(self, entry_id: str, links: Sequence[str], title: str) -> str:
        return f"<entry><id>urn:uuid:{entry_id}</id>{''.join(links)}<title>{title}</title><content>"


def _local_time_xml(lt: LocalTimeParameters) -> str:
    for what, rule in (("dst_start_rule", lt.dst_start_rule), ("dst_end_rule", lt.dst_end_rule)):
        DstRule.decode(rule)  # ValueError for a malformed word
        if len(rule) != 8:
            raise ValueError(f"LocalTimeParameters {what} {rule!r} is not 8 hex digits")
    for what, offset in (("tz_offset_s", lt.tz_offset_s), ("dst_offset_s", lt.dst_offset_s)):
        _check_int(offset, -86400, 86400, f"LocalTimeParameters {what}")
    return (
        f'<LocalTimeParameters xmlns="{ESPI_NS}">'
        f"<dstEndRule>{lt.dst_end_rule.upper()}</dstEndRule>"
        f"<dstOffset>{lt.dst_offset_s}</dstOffset>"
        f"<dstStartRule>{lt.dst_start_rule.upper()}</dstStartRule>"
        f"<tzOffset>{lt.tz_offset_s}</tzOffset>"
        "</LocalTimeParameters>"
    )


def _usage_point_xml(up: UsagePointInfo) -> str:
    _check_int(up.status, 0, 255, "UsagePoint status")
    role_flags = ROLE_IS_DER if up.is_der else 0
    return (
        f'<UsagePoint xmlns="{ESPI_NS}">'
        f"<roleFlags>{role_flags:04X}</roleFlags>"
        f"<ServiceCategory><kind>{SERVICE_ELECTRICITY}</kind></ServiceCategory>"
        f"<status>{up.status}</status>"
        f"<isVirtual>{'true' if up.is_virtual else 'false'}</isVirtual>"
        "</UsagePoint>"
    )


def _reading_type_xml(spec: ReadingSpec) -> str:
    fields: list[tuple[str, int | None, int, int]] = [
        ("accumulationBehaviour", spec.accumulation, 0, 65535),
        ("commodity", spec.commodity, 0, 65535),
        ("currency", spec.currency, 0, 65535),
        ("flowDirection", spec.flow_direction, 0, 65535),
        ("intervalLength", spec.interval_s, 1, UINT32_MAX),
        ("kind", spec.kind, 0, 65535),
        ("powerOfTenMultiplier", spec.power_of_ten, -12, 12),
        ("uom", spec.uom, 0, 65535),
    ]
    parts = [f'<ReadingType xmlns="{ESPI_NS}">']
    for name, value, low, high in fields:
        if value is None:
            continue
        _check_int(value, low, high, f"ReadingSpec {spec.key!r} {name}")
        parts.append(f"<{name}>{value}</{name}>")
    parts.append("</ReadingType>")
    return "".join(parts)


def _cost_xml(cost: object, v: IntervalValue, spec: ReadingSpec) -> str:
    """`<cost>` for a cost the writer's loop did not accept as it is."""
    where = f"reading {spec.key!r} IntervalValue {v!r} cost"
    return f"<cost>{_check_int(cost, INT48_MIN, INT48_MAX, where)}</cost>"


def _quality_xml(quality: object, v: IntervalValue, spec: ReadingSpec) -> str:
    """`<ReadingQuality>` for a quality code (QualityOfReading is a UInt16)."""
    where = f"reading {spec.key!r} IntervalValue {v!r} quality"
    code = _check_int(quality, 0, 65535, where)
    return f"<ReadingQuality><quality>{code}</quality></ReadingQuality>"


def _checked(
    v: object, spec: ReadingSpec, previous: int | None, divisor: int, factor: int
) -> tuple[int, int, int]:
    """(start, duration, value in the file's unit) of an IntervalValue the fast loop did not
    accept as it is: int subclasses become ints; anything wrong raises a ValueError saying what."""
    if not isinstance(v, IntervalValue):
        raise ValueError(f"reading {spec.key!r}: {v!r} is not an IntervalValue")
    where = f"reading {spec.key!r} IntervalValue {v!r}"
    start = _check_int(v.start, -(2**63), 2**63 - 1, f"{where} start")
    duration = _check_int(v.duration_s, 1, UINT32_MAX, f"{where} duration_s")
    value_wh = _check_int(v.value_wh, -(2**127), 2**127, f"{where} value_wh")
    if previous is not None and start <= previous:
        raise ValueError(f"{where}: starts must increase (the previous one is {previous})")
    value, rest = divmod(value_wh * factor, divisor)
    if rest:
        raise ValueError(
            f"{where}: {value_wh} is not a whole number of 10^{spec.power_of_ten} units "
            "(the reading's power_of_ten)"
        )
    if not INT48_MIN <= value <= INT48_MAX:
        raise ValueError(
            f"{where}: value {value} (in 10^{spec.power_of_ten} units) is outside ESPI Int48 "
            f"{INT48_MIN}..{INT48_MAX}"
        )
    return start, duration, value


class _Days:
    """Site-local day boundaries in `tz`, as epoch seconds."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz

    def day_of(self, epoch_s: int) -> tuple[date, int, int]:
        """(local date, epoch of its 00:00, epoch of the next day's 00:00) for the day holding
        `epoch_s`."""
        try:
            day = datetime.fromtimestamp(epoch_s, self.tz).date()
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"start {epoch_s} is not a date this writer can place") from None
        start = self.midnight(day)
        if start > epoch_s:  # a midnight that came twice; the day began at the earlier one
            day -= timedelta(days=1)
            start = self.midnight(day)
        end = self.midnight(day + timedelta(days=1))
        return day, start, end

    def midnight(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp())


def write_feed(
    usage_point: UsagePointInfo,
    local_time: LocalTimeParameters,
    readings: Sequence[tuple[ReadingSpec, Iterable[IntervalValue]]],
    *,
    feed_id: str,
    updated: datetime,
    base_url: str,
    tz: str | tzinfo,
    interleave: bool = False,
) -> Iterator[bytes]:
    """The Green Button feed for one site, as UTF-8 chunks (one per IntervalBlock after the head).

    Args:
        usage_point: the site; its `site_id` is the UsagePoint's id.
        local_time: the site's LocalTimeParameters (see local_time.local_time_parameters).
        readings: (spec, values) per MeterReading, keys unique. Each iterable is consumed lazily,
            in order, once; its values must have strictly increasing starts.
        feed_id: the Subscription id in the URLs; the feed's urn:uuid id derives from it.
        updated: the feed's and its entries' `updated` and `published` time (aware).
        base_url: prefix of every resource URL, e.g. "https://vpp.example"; "" for relative ones.
        tz: the site's zone (IANA name or tzinfo): IntervalBlocks are its local days.
        interleave: every reading's MeterReading and ReadingType first, then the readings'
            IntervalBlocks in turn, one local day of each: readings that are views of one
            stream of rows (itertools.tee) then read it once, holding about a day. Atom
            entries are linked by URL, not by position, so the feed means the same.

    Raises:
        ValueError: bad input, found before anything is yielded (the head) or when the offending
            value is reached (an interval out of order, a value or cost outside Int48, a value the
            power of ten multiplier does not divide). Output already yielded is then incomplete.
        zoneinfo.ZoneInfoNotFoundError: `tz` names no zone.
    """
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    stamp = _timestamp(updated)
    keys = [spec.key for spec, _ in readings]
    if len(set(keys)) != len(keys):
        raise ValueError(f"reading keys must be unique: {keys}")
    site = usage_point.site_id
    sid = _segment(feed_id, "feed_id")
    upid = _segment(site, "UsagePoint site_id")
    base = escape(base_url.rstrip("/"), _ATTR_ENTITIES)
    res = f"{base}/espi/1_1/resource"
    up_url = f"{res}/Subscription/{sid}/UsagePoint/{upid}"
    ltid = _uuid(
        "LocalTimeParameters",
        str(local_time.tz_offset_s),
        str(local_time.dst_offset_s),
        local_time.dst_start_rule.upper(),
        local_time.dst_end_rule.upper(),
    )
    lt_url = f"{res}/LocalTimeParameters/{ltid}"
    entry = _Entry(stamp)
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<feed xmlns="{ATOM_NS}">\n',
        f"<id>urn:uuid:{_uuid('Subscription', feed_id)}</id>\n",
        f"<title>{_text(usage_point.title or site, 'UsagePoint title')}</title>\n",
        f"<updated>{stamp}</updated>\n",
        _link("self", f"{res}/Subscription/{sid}/UsagePoint", "espi-feed/UsagePoint"),
        "\n",
        entry.head(
            ltid,
            [
                _link("self", lt_url, "espi-entry/LocalTimeParameters"),
                _link("up", f"{res}/LocalTimeParameters", "espi-feed/LocalTimeParameters"),
            ],
            _text(local_time.title, "LocalTimeParameters title"),
        ),
        _local_time_xml(local_time),
        entry.tail,
        entry.head(
            _uuid(site, "UsagePoint"),
            [
                _link("self", up_url, "espi-entry/UsagePoint"),
                _link("up", f"{res}/Subscription/{sid}/UsagePoint", "espi-feed/UsagePoint"),
                _link("related", f"{up_url}/MeterReading", "espi-feed/MeterReading"),
                _link("related", lt_url, "espi-entry/LocalTimeParameters"),
            ],
            _text(usage_point.title, "UsagePoint title"),
        ),
        _usage_point_xml(usage_point),
        entry.tail,
    ]
    # Check every reading's spec before the first byte goes out.
    heads = [_reading_head(spec, site, up_url, res, entry) for spec, _ in readings]
    yield "".join(head).encode()
    days = _Days(zone)
    if not interleave:
        for (spec, values), reading_head in zip(readings, heads, strict=True):
            yield reading_head.encode()
            yield from _blocks(spec, values, site, up_url, entry, days)
        yield b"</feed>\n"
        return
    yield "".join(heads).encode()
    running = [_blocks(spec, values, site, up_url, entry, days) for spec, values in readings]
    while running:
        for blocks in list(running):
            chunk = next(blocks, None)
            if chunk is None:
                running.remove(blocks)
            else:
                yield chunk
    yield b"</feed>\n"


def _reading_head(spec: ReadingSpec, site: str, up_url: str, res: str, entry: _Entry) -> str:
    """The MeterReading and ReadingType entries of one reading."""
    mr_url = f"{up_url}/MeterReading/{_segment(spec.key, 'ReadingSpec key')}"
    rtid = _uuid(site, spec.key, "ReadingType")
    rt_url = f"{res}/ReadingType/{rtid}"
    title = _text(spec.title, "ReadingSpec title")
    return "".join(
        (
            entry.head(
                _uuid(site, spec.key, "MeterReading"),
                [
                    _link("self", mr_url, "espi-entry/MeterReading"),
                    _link("up", f"{up_url}/MeterReading", "espi-feed/MeterReading"),
                    _link("related", f"{mr_url}/IntervalBlock", "espi-feed/IntervalBlock"),
                    _link("related", rt_url, "espi-entry/ReadingType"),
                ],
                title,
            ),
            f'<MeterReading xmlns="{ESPI_NS}"/>',
            entry.tail,
            entry.head(
                rtid,
                [
                    _link("self", rt_url, "espi-entry/ReadingType"),
                    _link("up", f"{res}/ReadingType", "espi-feed/ReadingType"),
                ],
                title,
            ),
            _reading_type_xml(spec),
            entry.tail,
        )
    )


def _blocks(
    spec: ReadingSpec,
    values: Iterable[IntervalValue],
    site: str,
    up_url: str,
    entry: _Entry,
    days: _Days,
) -> Iterator[bytes]:
    """One IntervalBlock entry (one chunk) per local day that has values."""
    mr_url = f"{up_url}/MeterReading/{_segment(spec.key, 'ReadingSpec key')}"
    ib_up = _link("up", f"{mr_url}/IntervalBlock", "espi-feed/IntervalBlock")
    p10 = spec.power_of_ten
    divisor = 10**p10 if p10 > 0 else 1
    factor = 10**-p10 if p10 < 0 else 1
    tail = f"</IntervalBlock>{entry.tail}"
    parts: list[str] = []
    append = parts.append
    day_end = -(2**63)
    previous: int | None = None
    qualities: dict[tuple[type, object], str] = {}
    for v in values:
        try:
            start = v.start
            duration = v.duration_s
            value = v.value_wh
            # One combined test for the common case; _checked handles the rest or says what
            # was wrong.
            ok = (
                type(start) is int
                and type(duration) is int
                and type(value) is int
                and (previous is None or start > previous)
                and 0 < duration <= UINT32_MAX
            )
            if ok:
                if divisor != 1:
                    value, rest = divmod(value, divisor)
                    ok = not rest
                elif factor != 1:
                    value *= factor
                ok = ok and INT48_MIN <= value <= INT48_MAX
        except AttributeError:
            ok = False
        if not ok:
            start, duration, value = _checked(v, spec, previous, divisor, factor)
        previous = start
        if start >= day_end:
            if parts:
                append(tail)
                yield "".join(parts).encode()
                parts.clear()
            day, day_start, day_end = days.day_of(start)
            label = day.isoformat()
            append(
                entry.head(
                    _uuid(site, spec.key, label),
                    [
                        _link(
                            "self", f"{mr_url}/IntervalBlock/{label}", "espi-entry/IntervalBlock"
                        ),
                        ib_up,
                    ],
                    label,
                )
            )
            append(
                f'<IntervalBlock xmlns="{ESPI_NS}"><interval><duration>{day_end - day_start}'
                f"</duration><start>{day_start}</start></interval>\n"
            )
        cost = v.cost
        quality = v.quality
        if cost is None and quality is None:
            append(
                f"<IntervalReading><timePeriod><duration>{duration}</duration><start>{start}"
                f"</start></timePeriod><value>{value}</value></IntervalReading>\n"
            )
            continue
        if cost is None:
            cost_xml = ""
        elif type(cost) is int and INT48_MIN <= cost <= INT48_MAX:
            cost_xml = f"<cost>{cost}</cost>"
        else:
            cost_xml = _cost_xml(cost, v, spec)
        if quality is None:
            quality_xml = ""
        else:
            # Few distinct codes: each is checked and formatted once. The key holds the type
            # so that 11.0 or True never finds the entry of 11 or 1.
            key = (quality.__class__, quality)
            try:
                quality_xml = qualities[key]
            except (KeyError, TypeError):
                quality_xml = qualities[key] = _quality_xml(quality, v, spec)
        append(
            f"<IntervalReading>{cost_xml}{quality_xml}<timePeriod><duration>{duration}"
            f"</duration><start>{start}</start></timePeriod><value>{value}</value>"
            "</IntervalReading>\n"
        )
    if parts:
        append(tail)
        yield "".join(parts).encode()
