"""Read a Green Button (ESPI) Atom feed incrementally, and validate one against usage.xsd.

`read_feed` parses with ElementTree's iterparse, one Atom entry at a time, dropping each entry once
read, and yields what it finds in feed order:

- UsagePointInfo for each UsagePoint entry (`site_id` is the UsagePoint's id in its URL);
- LocalTimeParameters;
- Reading (a MeterReading with its ReadingType as a ReadingSpec), before any of its blocks;
- IntervalBlockValues: one IntervalBlock's IntervalValues, in base units (Wh for uom 72).

Other ESPI resources (usage summaries, power quality) and retail customer entries are skipped.

Entries are linked as Green Button links them: a MeterReading's `related` links name its
ReadingType and its IntervalBlock collection, and an IntervalBlock's `up` link names that
collection. Utility feeds order entries in various ways; blocks whose MeterReading or ReadingType
has not been seen yet are held back (as raw integers) until it is, or until the end of the feed.
When the ReadingType comes first, blocks stream with one block in memory.

Values are scaled by the ReadingType's powerOfTenMultiplier (kWh with multiplier 3: x1000); a
negative multiplier must divide the value exactly. Costs are as written (hundred-thousandths of
the currency). A reading without ReadingQuality gets the ReadingType's defaultQuality, else None;
with several, the first one counts.

Titles are read with surrounding whitespace stripped (pretty-printed files indent them).

Malformed input raises GreenButtonError (a ValueError) with a plain message naming the line (XML
syntax) or the entry and element (content). `validate` checks a file against the vendored
usage.xsd with xmlschema, compiled once.

Must not import storage, services, the API, a database or a web framework (import-linter).
"""

from __future__ import annotations

import functools
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from cloud.domain.greenbutton.local_time import DstRule, LocalTimeParameters
from cloud.domain.greenbutton.model import (
    INT48_MAX,
    INT48_MIN,
    ROLE_IS_DER,
    IntervalValue,
    ReadingSpec,
    UsagePointInfo,
)

if TYPE_CHECKING:
    import xmlschema

ATOM = "{http://www.w3.org/2005/Atom}"
ESPI = "{http://naesb.org/espi}"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

_CUSTOMER = "{http://naesb.org/espi/customer}"
_ENTRY = ATOM + "entry"
_CHUNK = 1 << 16
_FEED = ATOM + "feed"


class GreenButtonError(ValueError):
    """The input is not a Green Button feed gridmint can read; the message says where."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A MeterReading of a UsagePoint, with its ReadingType."""

    usage_point_id: str
    spec: ReadingSpec


@dataclass(frozen=True, slots=True)
class IntervalBlockValues:
    """The values of one IntervalBlock of a Reading (same usage_point_id and spec.key)."""

    usage_point_id: str
    reading_key: str
    start: int
    duration_s: int
    values: tuple[IntervalValue, ...]


FeedItem = UsagePointInfo | LocalTimeParameters | Reading | IntervalBlockValues


@dataclass(slots=True)
class LoadedReading:
    """A reading and all its values, as load_feed collects them."""

    usage_point_id: str
    spec: ReadingSpec
    values: list[IntervalValue] = field(default_factory=list)


@dataclass(slots=True)
class LoadedFeed:
    """A whole feed in memory (load_feed): for small files and tests."""

    usage_points: list[UsagePointInfo] = field(default_factory=list)
    local_time: LocalTimeParameters | None = None
    readings: list[LoadedReading] = field(default_factory=list)

    def reading(self, key: str) -> LoadedReading:
        """The reading with MeterReading id `key` (KeyError: none; ValueError: several)."""
        found = [r for r in self.readings if r.spec.key == key]
        if not found:
            raise KeyError(key)
        if len(found) > 1:
            raise ValueError(f"{len(found)} readings have the key {key!r}")
        return found[0]


# A raw IntervalReading: start, duration, value as written, quality, cost.
_Raw = tuple[int, int, int, int | None, int | None]


@dataclass(slots=True)
class _RawBlock:
    start: int
    duration_s: int
    readings: list[_Raw]
    where: str


@dataclass(slots=True)
class _MeterReading:
    path: str
    usage_point_id: str
    key: str
    title: str
    related: list[str]
    where: str
    spec: ReadingSpec | None = None
    default_quality: int | None = None


@dataclass(slots=True)
class _ReadingType:
    spec: ReadingSpec  # key "" until matched to its MeterReading
    default_quality: int | None


def _path(href: str) -> str:
    """A link's path, for matching links to entries written with different hosts or slashes."""
    return urlsplit(href.strip()).path.rstrip("/")


def _int(elem: ET.Element | None, what: str, where: str, low: int, high: int) -> int:
    if elem is None:
        raise GreenButtonError(f"{where}: <{what}> is missing")
    text = elem.text
    try:
        if text is None or not text.isascii() or "_" in text:
            raise ValueError
        value = int(text)
    except ValueError:
        raise GreenButtonError(f"{where}: <{what}> {text!r} is not an integer") from None
    if not low <= value <= high:
        raise GreenButtonError(f"{where}: <{what}> {value} is outside {low}..{high}")
    return value


def _opt_int(parent: ET.Element, name: str, where: str, low: int, high: int) -> int | None:
    elem = parent.find(ESPI + name)
    return None if elem is None else _int(elem, name, where, low, high)


class _Parser:
    """The state of one read_feed: entries seen, blocks waiting for their reading type."""

    def __init__(self) -> None:
        self.meter_readings: dict[str, _MeterReading] = {}  # by self path
        self.collections: dict[str, str] = {}  # IntervalBlock collection path -> MR path
        self.reading_types: dict[str, _ReadingType] = {}  # by self path
        self.pending: dict[str, list[_RawBlock]] = {}  # by IntervalBlock collection path
        self.n_entries = 0

    # -- entries -----------------------------------------------------------------------------

    def entry(self, elem: ET.Element) -> Iterator[FeedItem]:
        self.n_entries += 1
        links: list[tuple[str, str]] = []
        for link in elem.iterfind(ATOM + "link"):
            href = link.get("href")
            if href is not None:
                links.append((link.get("rel", "alternate"), _path(href)))
        self_path = next((href for rel, href in links if rel == "self"), "")
        entry_id = (elem.findtext(ATOM + "id") or "").strip()
        where = f"entry {self.n_entries}" + (
            f" ({entry_id or self_path})" if entry_id or self_path else ""
        )
        content = elem.find(ATOM + "content")
        if content is None or len(content) == 0:
            return
        resource = content[0]
        tag = resource.tag
        if not tag.startswith(ESPI):
            if tag.startswith(_CUSTOMER):  # retail customer data (customer.xsd): not ours
                return
            raise GreenButtonError(f"{where}: <content> holds <{tag}>, not an ESPI resource")
        name = tag[len(ESPI) :]
        where = f"{where} {name}"
        title = (elem.findtext(ATOM + "title") or "").strip()
        if name == "IntervalBlock":
            yield from self.interval_block(resource, links, self_path, where)
        elif name == "MeterReading":
            yield from self.meter_reading(links, self_path, title, where)
        elif name == "ReadingType":
            yield from self.reading_type(resource, self_path, title, where)
        elif name == "UsagePoint":
            yield self.usage_point(resource, self_path, title, where)
        elif name == "LocalTimeParameters":
            yield self.local_time(resource, title, where)

    def usage_point(
        self, elem: ET.Element, self_path: str, title: str, where: str
    ) -> UsagePointInfo:
        flags_text = (elem.findtext(ESPI + "roleFlags") or "0").strip()
        try:
            flags = int(flags_text, 16)
        except ValueError:
            raise GreenButtonError(f"{where}: <roleFlags> {flags_text!r} is not hex") from None
        virtual = (elem.findtext(ESPI + "isVirtual") or "false").strip()
        if virtual not in ("true", "false", "1", "0"):
            raise GreenButtonError(f"{where}: <isVirtual> {virtual!r} is not a boolean")
        status = _opt_int(elem, "status", where, 0, 255)
        return UsagePointInfo(
            site_id=unquote(self_path.rsplit("/", 1)[-1]),
            title=title,
            is_virtual=virtual in ("true", "1"),
            is_der=bool(flags & ROLE_IS_DER),
            status=1 if status is None else status,
        )

    def local_time(self, elem: ET.Element, title: str, where: str) -> LocalTimeParameters:
        rules = []
        for name in ("dstStartRule", "dstEndRule"):
            text = elem.findtext(ESPI + name)
            if text is None:
                raise GreenButtonError(f"{where}: <{name}> is missing")
            try:
                DstRule.decode(text)
            except ValueError as exc:
                raise GreenButtonError(f"{where}: <{name}>: {exc}") from None
            rules.append(text.strip().upper().rjust(8, "0"))
        day = 86400
        return LocalTimeParameters(
            tz_offset_s=_int(elem.find(ESPI + "tzOffset"), "tzOffset", where, -day, day),
            dst_offset_s=_int(elem.find(ESPI + "dstOffset"), "dstOffset", where, -day, day),
            dst_start_rule=rules[0],
            dst_end_rule=rules[1],
            title=title,
        )

    def reading_type(
        self, elem: ET.Element, self_path: str, title: str, where: str
    ) -> Iterator[FeedItem]:
        u16 = (0, 65535)
        spec = ReadingSpec(
            key="",
            title=title,
            flow_direction=_opt_int(elem, "flowDirection", where, *u16) or 0,
            kind=_opt_int(elem, "kind", where, *u16) or 0,
            uom=_opt_int(elem, "uom", where, *u16) or 0,
            power_of_ten=_opt_int(elem, "powerOfTenMultiplier", where, -12, 12) or 0,
            accumulation=_opt_int(elem, "accumulationBehaviour", where, *u16) or 0,
            interval_s=_opt_int(elem, "intervalLength", where, 0, 2**32 - 1) or 0,
            commodity=_opt_int(elem, "commodity", where, *u16) or 0,
            currency=_opt_int(elem, "currency", where, *u16),
        )
        default_quality = _opt_int(elem, "defaultQuality", where, *u16)
        self.reading_types[self_path] = _ReadingType(spec, default_quality)
        for mr in self.meter_readings.values():
            if mr.spec is None and self_path in mr.related:
                yield from self.resolve(mr)

    def meter_reading(
        self, links: list[tuple[str, str]], self_path: str, title: str, where: str
    ) -> Iterator[FeedItem]:
        if not self_path:
            raise GreenButtonError(f'{where}: no rel="self" link, so no IntervalBlock can name it')
        segments = self_path.split("/")
        up_id = ""
        if "UsagePoint" in segments[:-1]:
            up_id = unquote(segments[segments.index("UsagePoint") + 1])
        related = [href for rel, href in links if rel == "related"]
        mr = _MeterReading(
            path=self_path,
            usage_point_id=up_id,
            key=unquote(segments[-1]),
            title=title,
            related=related,
            where=where,
        )
        self.meter_readings[self_path] = mr
        self.collections[self_path + "/IntervalBlock"] = self_path
        for href in related:
            if href.endswith("/IntervalBlock"):
                self.collections[href] = self_path
        yield from self.resolve(mr)

    def resolve(self, mr: _MeterReading) -> Iterator[FeedItem]:
        """Once a MeterReading's ReadingType is known: its Reading, then its held-back blocks."""
        if mr.spec is None:
            rt = next((self.reading_types[h] for h in mr.related if h in self.reading_types), None)
            if rt is None:
                return
            mr.spec = replace(rt.spec, key=mr.key, title=mr.title or rt.spec.title)
            mr.default_quality = rt.default_quality
            yield Reading(mr.usage_point_id, mr.spec)
        for collection, mr_path in self.collections.items():
            if mr_path == mr.path and collection in self.pending:
                for block in self.pending.pop(collection):
                    yield self.convert(mr, block)

    def interval_block(
        self, elem: ET.Element, links: list[tuple[str, str]], self_path: str, where: str
    ) -> Iterator[FeedItem]:
        up = next((href for rel, href in links if rel == "up"), "")
        collection = up or self_path.rsplit("/", 1)[0]
        if not collection:
            raise GreenButtonError(f'{where}: no rel="up" or rel="self" link to its MeterReading')
        block = self.parse_block(elem, where)
        mr_path = self.collections.get(collection)
        mr = None if mr_path is None else self.meter_readings[mr_path]
        if mr is not None and mr.spec is not None:
            yield self.convert(mr, block)
        else:
            self.pending.setdefault(collection, []).append(block)

    @staticmethod
    def parse_block(elem: ET.Element, where: str) -> _RawBlock:
        interval = elem.find(ESPI + "interval")
        readings: list[_Raw] = []
        tp_tag, value_tag, cost_tag, q_tag = (
            ESPI + "timePeriod",
            ESPI + "value",
            ESPI + "cost",
            ESPI + "ReadingQuality",
        )
        i64 = (-(2**63), 2**63 - 1)
        for n, reading in enumerate(elem.iterfind(ESPI + "IntervalReading"), 1):
            at = f"{where} IntervalReading {n}"
            tp = value = cost = quality = None
            for child in reading:
                tag = child.tag
                if tag == tp_tag:
                    tp = child
                elif tag == value_tag:
                    value = child
                elif tag == cost_tag:
                    cost = child
                elif tag == q_tag and quality is None:
                    quality = child.find(ESPI + "quality")
                    if quality is None:
                        raise GreenButtonError(f"{at}: <ReadingQuality> has no <quality>")
            if tp is None:
                raise GreenButtonError(f"{at}: <timePeriod> is missing")
            if value is None:
                raise GreenButtonError(f"{at}: <value> is missing")
            readings.append(
                (
                    _int(tp.find(ESPI + "start"), "timePeriod/start", at, *i64),
                    _int(tp.find(ESPI + "duration"), "timePeriod/duration", at, 0, 2**32 - 1),
                    _int(value, "value", at, INT48_MIN, INT48_MAX + 1),
                    None if quality is None else _int(quality, "quality", at, 0, 65535),
                    None if cost is None else _int(cost, "cost", at, INT48_MIN, INT48_MAX + 1),
                )
            )
        if interval is not None:
            start = _int(interval.find(ESPI + "start"), "interval/start", where, *i64)
            duration = _int(
                interval.find(ESPI + "duration"), "interval/duration", where, 0, 2**32 - 1
            )
        elif readings:
            start = readings[0][0]
            duration = readings[-1][0] + readings[-1][1] - start
        else:
            start = duration = 0
        return _RawBlock(start, duration, readings, where)

    @staticmethod
    def convert(mr: _MeterReading, block: _RawBlock) -> IntervalBlockValues:
        assert mr.spec is not None
        p10 = mr.spec.power_of_ten
        default_q = mr.default_quality
        if p10 == 0:
            values = tuple(
                IntervalValue(s, d, v, default_q if q is None else q, c)
                for s, d, v, q, c in block.readings
            )
        elif p10 > 0:
            f = 10**p10
            values = tuple(
                IntervalValue(s, d, v * f, default_q if q is None else q, c)
                for s, d, v, q, c in block.readings
            )
        else:
            divisor = 10**-p10
            out = []
            for n, (s, d, v, q, c) in enumerate(block.readings, 1):
                whole, rest = divmod(v, divisor)
                if rest:
                    raise GreenButtonError(
                        f"{block.where} IntervalReading {n}: <value> {v} x 10^{p10} is not a "
                        "whole number of the unit (powerOfTenMultiplier of its ReadingType)"
                    )
                out.append(IntervalValue(s, d, whole, default_q if q is None else q, c))
            values = tuple(out)
        return IntervalBlockValues(
            mr.usage_point_id, mr.spec.key, block.start, block.duration_s, values
        )

    def finish(self) -> Iterator[FeedItem]:
        """At the end of the feed, blocks still held back name what was missing."""
        for collection, blocks in self.pending.items():
            mr_path = self.collections.get(collection)
            if mr_path is None:
                raise GreenButtonError(
                    f"{blocks[0].where}: no MeterReading entry has the IntervalBlock collection "
                    f"{collection!r}"
                )
            mr = self.meter_readings[mr_path]
            if mr.spec is None:
                raise GreenButtonError(
                    f"{mr.where}: none of its related links names a ReadingType entry of the feed"
                )
        # Every pending collection belongs to a resolved MeterReading: resolve() took them.
        return iter(())


def read_feed(stream: IO[bytes]) -> Iterator[FeedItem]:
    """The items of the Green Button feed in `stream`, incrementally (see the module doc).

    Raises:
        GreenButtonError: not well-formed XML, not an Atom feed, an ESPI element that is missing
            or not an integer, a value the multiplier does not divide, a block without a reading
            type. Items yielded before the error stand.
    """
    parser = _Parser()
    # Green Button files have no DTD: refusing one before expat sees it rules out entity
    # expansion attacks (ElementTree never fetches external entities anyway).
    pull: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))  # noqa: S314
    root: ET.Element | None = None
    depth = 0
    tail = b""
    try:
        while True:
            chunk = stream.read(_CHUNK)
            if not isinstance(chunk, bytes):
                raise TypeError("read_feed needs a binary stream")
            if not tail and chunk and (chunk[:2] in (b"\xff\xfe", b"\xfe\xff") or 0 in chunk[:4]):
                raise GreenButtonError("the input is not UTF-8 (Green Button files are)")
            window = tail + chunk[:_CHUNK]
            if b"<!DOCTYPE" in window or b"<!ENTITY" in window:
                raise GreenButtonError("the input has a DOCTYPE; Green Button files have none")
            tail = chunk[-16:] if chunk else tail
            if chunk:
                pull.feed(chunk)
            else:
                pull.close()
            # Only start and end events were asked for: each carries an element.
            for event, elem in cast(Iterator[tuple[str, ET.Element]], pull.read_events()):
                if event == "start":
                    depth += 1
                    if root is None:
                        root = elem
                        if elem.tag != _FEED:
                            raise GreenButtonError(
                                f"the root element is <{elem.tag}>, not an Atom <feed> "
                                "(namespace http://www.w3.org/2005/Atom)"
                            )
                    continue
                depth -= 1
                if depth == 1 and elem.tag == _ENTRY:
                    yield from parser.entry(elem)
                    elem.clear()
                    if root is not None:
                        root.clear()
            if not chunk:
                break
    except ET.ParseError as exc:
        line, column = exc.position
        raise GreenButtonError(
            f"not well-formed XML at line {line}, column {column + 1}: {exc.msg}"
        ) from None
    yield from parser.finish()


def load_feed(stream: IO[bytes]) -> LoadedFeed:
    """The whole feed in memory: read_feed's items collected per reading."""
    feed = LoadedFeed()
    by_key: dict[tuple[str, str], LoadedReading] = {}
    for item in read_feed(stream):
        if isinstance(item, UsagePointInfo):
            feed.usage_points.append(item)
        elif isinstance(item, LocalTimeParameters):
            feed.local_time = item
        elif isinstance(item, Reading):
            loaded = LoadedReading(item.usage_point_id, item.spec)
            by_key[item.usage_point_id, item.spec.key] = loaded
            feed.readings.append(loaded)
        else:
            by_key[item.usage_point_id, item.reading_key].values.extend(item.values)
    return feed


def _schema_error(err: xmlschema.XMLSchemaValidationError) -> str:
    path = (err.path or "").replace(ATOM, "atom:").replace(ESPI, "espi:")
    line = f"line {err.sourceline}: " if err.sourceline is not None else ""
    return f"{line}{path}: {err.reason}"


@functools.cache
def _schema() -> xmlschema.XMLSchema:
    import xmlschema  # only validate() needs it: a heavy import

    return xmlschema.XMLSchema(str(SCHEMA_DIR / "usage.xsd"))


def validate(source: IO[bytes] | bytes | str | os.PathLike[str]) -> list[str]:
    """Schema errors of a Green Button file against the vendored usage.xsd; [] when valid.

    `source` is a binary stream, the document's bytes, or a file path. Each error reads
    "/xpath: reason" (the document is validated lazily, in constant memory, so xmlschema reports
    no line numbers); a file that is not well-formed XML gives one error saying so.
    """
    import xmlschema

    data: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(data, (str, os.PathLike)):
        data = os.fspath(data)
    schema = _schema()
    try:
        resource = xmlschema.XMLResource(data, lazy=True)
        return [_schema_error(err) for err in schema.iter_errors(resource)]
    except (xmlschema.XMLResourceError, ET.ParseError) as exc:
        return [f"not well-formed XML: {exc}"]
