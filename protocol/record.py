"""The signed interval record, version 1: the generation token's payload.

Owns: the record's fields and their deterministic CBOR encoding (RFC 8949 section 4.2.1), and the
token id. Imports nothing of ours. No floats anywhere: energy is whole Wh, time is integer seconds
or milliseconds (UTC), state of charge is permille.

Map keys are the unsigned integers 0..23, which all encode in one byte, so cbor2's length-first
canonical order and RFC 8949's bytewise order agree (see docs/tokens.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, TypeVar

import cbor2

FORMAT_VERSION = 1
ALLOWED_INTERVALS_S = (300, 900)
ZERO_HASH = bytes(32)
MAX_UINT64 = 2**64 - 1


class RecordFormatError(ValueError):
    """A payload that is not a well-formed, canonical version-1 record."""

    def __init__(self, message: str, *, non_canonical: bool = False, version: bool = False):
        super().__init__(message)
        self.non_canonical = non_canonical
        self.version = version


class Key(IntEnum):
    """CBOR map keys of the record payload."""

    VERSION = 0
    DEVICE = 1
    METER = 2
    SEQ = 3
    BOOT = 4
    INTERVAL_START = 5
    INTERVAL_S = 6
    ENERGY = 7
    REGISTERS = 8
    CHANNELS = 9
    SOC = 10
    READING_MS = 11
    TIME_QUALITY = 12
    TIME_SOURCE = 13
    STATUS = 14
    QUALITY = 15
    PREV = 16
    FIRMWARE = 17
    ZONE = 18
    TECH = 19


class Channels(IntFlag):
    """Which energy channels a record actually measured (the others are zero by absence)."""

    NONE = 0
    GENERATED = 1
    IMPORTED = 2
    EXPORTED = 4
    CHARGED = 8
    DISCHARGED = 16


class TimeQuality(IntEnum):
    """How far the reading time can be trusted (after OCMF's U/I/S/R)."""

    UNKNOWN = 0
    INFORMATIVE = 1
    SYNCHRONIZED = 2
    RELATIVE = 3


class Quality(IntEnum):
    """Whether the interval's energy was measured, estimated or substituted (Green Button style)."""

    MEASURED = 0
    ESTIMATED = 1
    SUBSTITUTED = 2


@dataclass(frozen=True, slots=True)
class Energy:
    """One interval's energy per channel, in whole Wh, all non-negative."""

    generated_wh: int = 0
    imported_wh: int = 0
    exported_wh: int = 0
    charged_wh: int = 0
    discharged_wh: int = 0

    def as_list(self) -> list[int]:
        """The wire order: generated, imported, exported, charged, discharged."""
        return [
            self.generated_wh,
            self.imported_wh,
            self.exported_wh,
            self.charged_wh,
            self.discharged_wh,
        ]


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    """One device's closed interval, as signed by the device.

    `registers_wh` holds the meters' running totals at interval end (Wh, same channel order as
    `energy`), evidence that consecutive records agree: registers[n] - registers[n-1] == energy[n]
    unless the status names a counter reset.
    """

    device_id: str
    seq: int
    boot: int
    interval_start: int
    interval_s: int
    energy: Energy
    registers_wh: tuple[int, int, int, int, int]
    channels: Channels
    reading_ms: int
    prev_hash: bytes
    meter: str = ""
    soc_permille: int | None = None
    time_quality: TimeQuality = TimeQuality.SYNCHRONIZED
    time_source: tuple[str, int] = ("ntp", 0)
    status: str = "G"
    quality: Quality = Quality.MEASURED
    firmware: str = ""
    zone: str = ""
    tech: tuple[str, int] = ("pv", 0)
    version: int = field(default=FORMAT_VERSION)

    @property
    def interval_end(self) -> int:
        """End of the interval (exclusive), Unix seconds."""
        return self.interval_start + self.interval_s

    @property
    def token_id(self) -> str:
        """The generation token's id: derived from (device, interval start) so it exists once."""
        return token_id(self.device_id, self.interval_start)

    @property
    def capacity_w(self) -> int:
        """Rated capacity the device declared, in W."""
        return self.tech[1]


def token_id(device_id: str, interval_start: int) -> str:
    """Hex SHA-256 over a domain tag, the device id and the interval start."""
    h = hashlib.sha256()
    h.update(b"gridmint/token/v1\x00")
    h.update(device_id.encode("utf-8"))
    h.update(b"\x00")
    h.update(interval_start.to_bytes(8, "big"))
    return h.hexdigest()


def to_map(rec: IntervalRecord) -> dict[int, Any]:
    """The record as the CBOR map that is signed, its plain-int keys in ascending order.

    Ascending small-int keys are the canonical (RFC 8949 section 4.2.3 length-first) key order,
    so `cbor2.dumps(to_map(rec))` in plain mode already gives the canonical bytes: `decode`
    relies on that to check canonical form without cbor2's slower canonical encoder.
    """
    m: dict[int, Any] = {
        _K_VERSION: rec.version,
        _K_DEVICE: rec.device_id,
        _K_METER: rec.meter,
        _K_SEQ: rec.seq,
        _K_BOOT: rec.boot,
        _K_INTERVAL_START: rec.interval_start,
        _K_INTERVAL_S: rec.interval_s,
        _K_ENERGY: rec.energy.as_list(),
        _K_REGISTERS: list(rec.registers_wh),
        _K_CHANNELS: int(rec.channels),
    }
    if rec.soc_permille is not None:
        m[_K_SOC] = rec.soc_permille
    m[_K_READING_MS] = rec.reading_ms
    m[_K_TIME_QUALITY] = int(rec.time_quality)
    m[_K_TIME_SOURCE] = [rec.time_source[0], rec.time_source[1]]
    m[_K_STATUS] = rec.status
    m[_K_QUALITY] = int(rec.quality)
    m[_K_PREV] = rec.prev_hash
    m[_K_FIRMWARE] = rec.firmware
    m[_K_ZONE] = rec.zone
    m[_K_TECH] = [rec.tech[0], rec.tech[1]]
    return m


def encode(rec: IntervalRecord) -> bytes:
    """Deterministic CBOR bytes of the record; raises RecordFormatError if a field is invalid."""
    validate(rec)
    return cbor2.dumps(to_map(rec), canonical=True)


def decode(payload: bytes) -> IntervalRecord:
    """Parse canonical CBOR bytes into a record.

    Raises RecordFormatError if the bytes are not CBOR, not a version-1 record, or not
    byte-identical to the record's canonical encoding.
    """
    try:
        obj = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise RecordFormatError(f"payload is not CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordFormatError("payload is not a CBOR map")
    version = obj.get(_K_VERSION)
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"unsupported record version {version!r}", version=True)
    rec = from_map(obj)
    # Plain mode gives canonical bytes here: to_map's keys are in canonical order (see there).
    if cbor2.dumps(to_map(rec)) != payload:
        raise RecordFormatError("payload is not in canonical CBOR form", non_canonical=True)
    return rec


T = TypeVar("T")

# The keys as plain ints, and every value the small enums can take: looked up once here, not
# per record (enum attribute access and IntFlag construction were half of decoding's time).
_K_VERSION, _K_DEVICE, _K_METER, _K_SEQ, _K_BOOT = 0, 1, 2, 3, 4
_K_INTERVAL_START, _K_INTERVAL_S, _K_ENERGY, _K_REGISTERS, _K_CHANNELS = 5, 6, 7, 8, 9
_K_SOC, _K_READING_MS, _K_TIME_QUALITY, _K_TIME_SOURCE, _K_STATUS = 10, 11, 12, 13, 14
_K_QUALITY, _K_PREV, _K_FIRMWARE, _K_ZONE, _K_TECH = 15, 16, 17, 18, 19
_KNOWN_KEYS = frozenset(int(k) for k in Key)
_CHANNELS = {v: Channels(v) for v in range(32)}
_TIME_QUALITIES = {int(q): q for q in TimeQuality}
_QUALITIES = {int(q): q for q in Quality}


def _uint(m: dict[Any, Any], key: Key, maximum: int = MAX_UINT64) -> int:
    v = m.get(key)
    if type(v) is not int or not 0 <= v <= maximum:
        raise RecordFormatError(f"field {key.name.lower()} must be an unsigned integer, got {v!r}")
    return v


def _text(m: dict[Any, Any], key: Key, max_len: int = 256) -> str:
    v = m.get(key)
    if not isinstance(v, str) or len(v) > max_len:
        raise RecordFormatError(f"field {key.name.lower()} must be text of at most {max_len}")
    return v


def _uint_list(m: dict[Any, Any], key: Key, length: int) -> list[int]:
    v = m.get(key)
    if (
        not isinstance(v, (list, tuple))
        or len(v) != length
        or not all(type(x) is int and 0 <= x <= MAX_UINT64 for x in v)
    ):
        raise RecordFormatError(f"field {key.name.lower()} must be {length} unsigned integers")
    return list(v)


def _pair(m: dict[Any, Any], key: Key) -> tuple[str, int]:
    v = m.get(key)
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not isinstance(v[0], str)
        or type(v[1]) is not int
        or not 0 <= v[1] <= MAX_UINT64
    ):
        raise RecordFormatError(f"field {key.name.lower()} must be [text, unsigned integer]")
    return (v[0], v[1])


def _member(table: dict[int, T], m: dict[Any, Any], key: Key, maximum: int) -> T:
    v = _uint(m, key, maximum)
    try:
        return table[v]
    except KeyError:
        raise RecordFormatError(f"{v} is not a valid {key.name.lower()}") from None


def from_map(m: dict[Any, Any]) -> IntervalRecord:
    """Build a record from a decoded CBOR map, checking every field's type and every rule
    `validate` applies (each check once: this runs for every token the cloud receives)."""
    for k in m:
        if type(k) is not int or k not in _KNOWN_KEYS:
            unknown = [k for k in m if not (type(k) is int and k in _KNOWN_KEYS)]
            raise RecordFormatError(f"unknown payload keys {unknown!r}")
    prev = m.get(_K_PREV)
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise RecordFormatError("field prev must be 32 bytes")
    soc = _uint(m, Key.SOC, 1000) if _K_SOC in m else None
    e = _uint_list(m, Key.ENERGY, 5)
    r = _uint_list(m, Key.REGISTERS, 5)
    version = _uint(m, Key.VERSION)
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"unsupported record version {version}", version=True)
    device_id = _text(m, Key.DEVICE, 64)
    if not device_id:
        raise RecordFormatError("device id is empty")
    interval_s = _uint(m, Key.INTERVAL_S)
    if interval_s not in ALLOWED_INTERVALS_S:
        raise RecordFormatError(f"interval length {interval_s} s is not 300 or 900")
    return IntervalRecord(
        version=version,
        device_id=device_id,
        meter=_text(m, Key.METER),
        seq=_uint(m, Key.SEQ),
        boot=_uint(m, Key.BOOT),
        interval_start=_uint(m, Key.INTERVAL_START),
        interval_s=interval_s,
        energy=Energy(e[0], e[1], e[2], e[3], e[4]),
        registers_wh=(r[0], r[1], r[2], r[3], r[4]),
        channels=_member(_CHANNELS, m, Key.CHANNELS, 31),
        soc_permille=soc,
        reading_ms=_uint(m, Key.READING_MS),
        time_quality=_member(_TIME_QUALITIES, m, Key.TIME_QUALITY, 3),
        time_source=_pair(m, Key.TIME_SOURCE),
        status=_text(m, Key.STATUS, 64),
        quality=_member(_QUALITIES, m, Key.QUALITY, 2),
        prev_hash=prev,
        firmware=_text(m, Key.FIRMWARE),
        zone=_text(m, Key.ZONE, 64),
        tech=_pair(m, Key.TECH),
    )


def validate(rec: IntervalRecord) -> None:
    """Check every field against the rules `decode` applies, so whatever encodes also decodes.

    Types are checked at run time too (fields typed `object` here on purpose): a record built
    from untyped input must fail here, at signing, not at the verifier.
    """
    if rec.version != FORMAT_VERSION:
        raise RecordFormatError(f"unsupported record version {rec.version}", version=True)
    texts: tuple[tuple[Key, object, int], ...] = (
        (Key.DEVICE, rec.device_id, 64),
        (Key.METER, rec.meter, 256),
        (Key.STATUS, rec.status, 64),
        (Key.FIRMWARE, rec.firmware, 256),
        (Key.ZONE, rec.zone, 64),
    )
    for key, text, max_len in texts:
        if not isinstance(text, str) or len(text) > max_len:
            raise RecordFormatError(f"field {key.name.lower()} must be text of at most {max_len}")
    if not rec.device_id:
        raise RecordFormatError("device id is empty")
    uints: tuple[tuple[Key, object, int], ...] = (
        (Key.SEQ, rec.seq, MAX_UINT64),
        (Key.BOOT, rec.boot, MAX_UINT64),
        (Key.INTERVAL_START, rec.interval_start, MAX_UINT64),
        (Key.INTERVAL_S, rec.interval_s, MAX_UINT64),
        (Key.CHANNELS, rec.channels, 31),
        (Key.READING_MS, rec.reading_ms, MAX_UINT64),
        (Key.TIME_QUALITY, rec.time_quality, 3),
        (Key.QUALITY, rec.quality, 2),
    )
    for key, value, maximum in uints:
        if not _is_uint(value, maximum):
            raise RecordFormatError(f"field {key.name.lower()} must be an unsigned integer")
    if rec.interval_s not in ALLOWED_INTERVALS_S:
        raise RecordFormatError(f"interval length {rec.interval_s} s is not 300 or 900")
    prev: object = rec.prev_hash
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise RecordFormatError("prev hash must be 32 bytes")
    soc: object = rec.soc_permille
    if soc is not None and not _is_uint(soc, 1000):
        raise RecordFormatError("state of charge must be 0..1000 permille")
    lists: tuple[tuple[Key, object], ...] = (
        (Key.ENERGY, tuple(rec.energy.as_list())),
        (Key.REGISTERS, rec.registers_wh),
    )
    for key, values in lists:
        if not isinstance(values, tuple) or len(values) != 5:
            raise RecordFormatError(f"field {key.name.lower()} must be 5 unsigned integers")
        for v in values:
            if not _is_uint(v):
                raise RecordFormatError(f"{v!r} is not an unsigned 64-bit integer")
    pairs: tuple[tuple[Key, object], ...] = (
        (Key.TIME_SOURCE, rec.time_source),
        (Key.TECH, rec.tech),
    )
    for key, pair in pairs:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not _is_uint(pair[1])
        ):
            raise RecordFormatError(f"field {key.name.lower()} must be (text, unsigned integer)")


def _is_uint(value: object, maximum: int = MAX_UINT64) -> bool:
    """An int (or int enum member, never a bool) in 0..maximum."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
