"""`gridmint verify DIR`: check an export of the ledger without trusting the aggregator.

Owns: reading the export directory (docs/tokens.md, "Verifying the ledger"), the order of the
checks, and turning the first discrepancy into one plain line naming the file, line and item.
Builds only on protocol/ (COSE records, Merkle log, signed checkpoints, ledger leaves), the
pure rules.ledger (entry bytes, replay, conservation) and the pure rules.market (order events
and trades, their canonical bytes, matching): never on the aggregator's storage, services, API
or database libraries, so anyone can run it on a copy of the files.

`verify_export(directory) -> VerifyReport` is the pure-ish core (it only reads the five files);
`verify_command` prints the report; `gridmint verify` (gridmint/cli.py, which declares the
options) calls it, importing this module only then.

Checks, in order, stopping at the first discrepancy:

1. the five files are present, UTF-8, well-formed JSON / JSON lines with exactly the expected
   fields and types, the format version is known, hex is lowercase;
2. devices: unique ids, each key's kid is the key id of its public key, kids unique, windows
   sane; records: COSE envelope, key by kid among the device's keys, signature with the
   deployment as external AAD, record payload, record hash, token id, device, seq, aligned
   interval, interval end within the key's validity; per device: seq +1 without gaps and prev =
   the previous record's hash (a chain's first record of seq 1 carries the zero hash; a chain
   first heard of at a later seq is anchored there, with a warning), one record per interval;
3. entries: index = line position, leaf decodes, leaf seq = index = entry seq, entry bytes are
   canonical, the leaf's record hashes are the entry refs' hashes; every referenced record is in
   records.jsonl and agrees with the ref; no record is minted twice; a MINT_GEN's measurement is
   the sum of its records (interval, length, G/I/E/C/D Wh, lowest SoC) and its records' devices
   belong to its site;
4. `replay` and `check_conservation` of the ledger rules;
5. the market (nothing to do for a log without market leaves): every ORDER_EVENT leaf's event
   decodes canonically, its seq is the entry's seq and the entry's site and interval are the
   event's (the order's, MARKET_SITE for a gate closure); every TRADE_MATCH leaf's trade decodes
   and the entry's site, counterparty, ref, requested Wh and interval are the trade's seller,
   buyer, id, quantity and interval. The events replay in log order through a fresh
   rules.market `Market` (mode: log.json's optional ``market_mode``, else inferred from the
   trades, see `_market_modes`); a refused event is a discrepancy at its entry, and the trades
   the replay makes must be the TRADE_MATCH leaves, one for one, right after the event that
   caused them (no entry between) and in order (missing, extra, reordered or altered trades are
   named by trade id and entry). Every P2P_TRADE whose ref names a matched trade settles it:
   after it was matched and its interval's gate closed, same seller and buyer, requested Wh =
   traded Wh, the value conversion rate = the trade's price, no more burned than traded, no Tgen
   of an earlier interval; a ref the market never matched is a warning (a trade settled
   outside the market);
6. the carbon shop (nothing to do for a log without CARBON leaves): every CARBON leaf's event
   decodes canonically (rules.carbon) and the entry's ref and site are the event's (the lot or
   order id; a gridmint_solar listing's site, else CARBON_SITE); the events replay in log order
   through rules.carbon's `ShopBook`: serials sold and retired only within a listed lot, no
   serial sold or retired twice, no retirement without a paid order for that lot covering it,
   order lines priced by the shop's price rule and totals their sum; a gridmint_solar listing's
   every token is a record of this export (signature verified in step 2) minted by a MINT_GEN
   to the listing's site before it, from the record the listing names, no Wh of a token backs
   two lots, and its kg do not exceed its Wh times the grid factor it states;
7. every checkpoint is signed by the log key for the log's origin, sizes never decrease and stay
   within the entries, roots equal the Merkle root of the first `size` leaves, consecutive
   checkpoints are consistent (RFC 9162 proofs), the last one covers every entry;
8. records no entry references are reported as warnings ("not yet in the ledger").
"""

from __future__ import annotations

import json
import re
import tempfile
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from protocol import cose
from protocol import record as rec_mod
from protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_signed_checkpoint,
    parse_verifier_key,
)
from protocol.ledger_leaf import LeafError, LedgerLeaf, decode_leaf
from protocol.merkle import MerkleLog, ProofError, leaf_hash, verify_consistency
from rules.carbon import (
    CarbonCodecError,
    CarbonRuleError,
    LotListed,
    MintedToken,
    OrderPaid,
    Retired,
    ShopBook,
    decode_shop_event,
)
from rules.ledger import (
    CARBON_SITE,
    INTERVAL_KINDS,
    MARKET_SITE,
    Entry,
    EntryKind,
    LedgerRuleError,
    LedgerState,
    check_conservation,
    replay,
    site_account,
)
from rules.market import (
    Amend,
    Cancel,
    CloseGate,
    Event,
    Market,
    MarketRuleError,
    MatchingMode,
    Place,
    Trade,
)
from rules.market.codec import decode_event, decode_trade

__all__ = [
    "EXPORT_FORMAT",
    "Discrepancy",
    "MarketSummary",
    "ShopSummary",
    "SiteSummary",
    "VerifyReport",
    "verify_command",
    "verify_export",
]

EXPORT_FORMAT = "gridmint-export/v1"
LOG_FILE = "log.json"
DEVICES_FILE = "devices.jsonl"
RECORDS_FILE = "records.jsonl"
ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
MAX_WARNINGS_SHOWN = 20

_HEX = re.compile(r"(?:[0-9a-f]{2})*", re.ASCII)
_HEXISH = re.compile(r"[0-9a-fA-F]*", re.ASCII)


def _one_line(text: str) -> str:
    """One printable line, whatever a cause said (tampered text may hold control bytes)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in " ".join(text.split()))


class Discrepancy(Exception):
    """The first thing in an export that does not verify, with where it is.

    `file` is the export file, `line` the 1-based line in it (None for the whole file), `item`
    what that line is about ("device pi-3 seq 16", "entry 42", "size 120"), `message` what is
    wrong. `entries` is the range of entry indexes (inclusive) the discrepancy concerns, when
    it concerns entries: a wrong checkpoint root names the range it covers beyond the previous
    checkpoint, a broken interval the entries from its MINT_GEN to the failing one.
    """

    def __init__(
        self,
        file: str,
        message: str,
        *,
        line: int | None = None,
        item: str | None = None,
        entries: tuple[int, int] | None = None,
    ) -> None:
        self.file = _one_line(file)
        self.line = line
        self.item = _one_line(item) if item is not None else None
        self.message = _one_line(message)
        self.entries = entries
        super().__init__(str(self))

    @property
    def location(self) -> str:
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.item:
            where += f" ({self.item})"
        return where

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "item": self.item,
            "message": self.message,
            "entries": list(self.entries) if self.entries is not None else None,
        }


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """One site's balances, recomputed by replaying the entries."""

    site: str
    tgen_wh: int
    tstorage_wh: int
    set_aside_wh: int
    balance_minor: int


@dataclass(frozen=True, slots=True)
class MarketSummary:
    """What replaying the market leaves (ORDER_EVENT, TRADE_MATCH) found; zeros without them.

    `mode` is the matching mode the events replayed in and `mode_from` how it was chosen
    ("log.json", or inferred from the trades; see `_market_modes`). `settled_trades` and
    `settled_wh` count the P2P_TRADE entries that settle a matched trade and the Wh they burned.
    """

    mode: MatchingMode | None = None
    mode_from: str | None = None
    events: int = 0
    orders: int = 0
    trades: int = 0
    traded_wh: int = 0
    settled_trades: int = 0
    settled_wh: int = 0

    @property
    def present(self) -> bool:
        """Whether the log holds market leaves at all."""
        return self.events > 0 or self.trades > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value if self.mode is not None else None,
            "mode_from": self.mode_from,
            "events": self.events,
            "orders": self.orders,
            "trades": self.trades,
            "traded_wh": self.traded_wh,
            "settled_trades": self.settled_trades,
            "settled_wh": self.settled_wh,
        }

    def line(self) -> str:
        """One line for the printed summary."""
        mode = self.mode.value if self.mode is not None else "-"
        return (
            f"market replayed: {self.events} events, {self.trades} trades match ({mode} "
            f"matching, {self.mode_from}; {self.orders} orders, {self.traded_wh} Wh traded; "
            f"{self.settled_trades} trades settled, {self.settled_wh} Wh)"
        )


@dataclass(frozen=True, slots=True)
class ShopSummary:
    """What replaying the carbon shop's leaves (CARBON) found; zeros without them."""

    listings: int = 0
    solar_listings: int = 0
    orders: int = 0
    retirements: int = 0
    kg_listed: int = 0
    kg_retired: int = 0

    @property
    def present(self) -> bool:
        return self.listings > 0 or self.orders > 0 or self.retirements > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "listings": self.listings,
            "solar_listings": self.solar_listings,
            "orders": self.orders,
            "retirements": self.retirements,
            "kg_listed": self.kg_listed,
            "kg_retired": self.kg_retired,
        }

    def line(self) -> str:
        """One line for the printed summary."""
        return (
            f"carbon shop replayed: {self.listings} lots listed ({self.solar_listings} from "
            f"gridmint certificates, traced to signed records; {self.kg_listed} kg), "
            f"{self.orders} orders paid, {self.retirements} retirements, {self.kg_retired} kg "
            "retired"
        )


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_export` found: `ok` with balances, or the first discrepancy in `error`."""

    directory: Path
    error: Discrepancy | None = None
    warnings: tuple[str, ...] = ()
    records: int = 0
    devices: int = 0
    entries: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    root: bytes | None = None  # the last checkpoint's root
    sites: tuple[SiteSummary, ...] = ()
    accounts: dict[str, int] = field(default_factory=dict)  # every payment account, minor units
    state: LedgerState | None = None  # the replayed ledger state (None on failure)
    market: MarketSummary = field(default_factory=MarketSummary)  # zeros on failure
    shop: ShopSummary = field(default_factory=ShopSummary)  # zeros on failure

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def market_replayed(self) -> bool:
        """The export verified and its log holds market leaves, which replayed to its trades."""
        return self.ok and self.market.present

    def balances(self) -> dict[str, Any]:
        """Per site Tgen / Tstorage / set-aside Wh and payment balance, and every account."""
        return {
            "sites": {
                s.site: {
                    "tgen_wh": s.tgen_wh,
                    "tstorage_wh": s.tstorage_wh,
                    "set_aside_wh": s.set_aside_wh,
                    "balance_minor": s.balance_minor,
                }
                for s in self.sites
            },
            "accounts": dict(self.accounts),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": str(self.error) if self.error is not None else None,
            "location": self.error.as_dict() if self.error is not None else None,
            "warnings": list(self.warnings),
            "balances": self.balances() if self.ok else {},
            "market": self.market.as_dict(),
            "shop": self.shop.as_dict(),
            "summary": {
                "records": self.records,
                "devices": self.devices,
                "entries": self.entries,
                "checkpoints": self.checkpoints,
                "tree_size": self.tree_size,
                "root": self.root.hex() if self.root is not None else None,
            },
        }


# --------------------------------------------------------------------------------------------
# Step 1: files


class _Row:
    """One parsed JSON line with its position."""

    __slots__ = ("data", "line")

    def __init__(self, line: int, data: dict[str, Any]) -> None:
        self.line = line
        self.data = data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"field {k!r} appears twice")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _read_text(directory: Path, name: str) -> str:
    path = directory / name
    if not path.is_file():
        raise Discrepancy(name, "missing from the export")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Discrepancy(name, f"cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Discrepancy(name, f"is not UTF-8 (byte {exc.start})") from None


def _jsonl(directory: Path, name: str) -> list[_Row]:
    text = _read_text(directory, name)
    if text and not text.endswith("\n"):
        last = text.count("\n") + 1
        raise Discrepancy(name, "the last line does not end with a newline: truncated?", line=last)
    rows: list[_Row] = []
    for n, raw in enumerate(text.split("\n")[:-1], start=1):
        if not raw.strip():
            raise Discrepancy(name, "blank line", line=n)
        try:
            data = _loads(raw)
        except ValueError as exc:
            raise Discrepancy(name, f"not valid JSON: {exc}", line=n) from None
        if not isinstance(data, dict):
            raise Discrepancy(name, "not a JSON object", line=n)
        rows.append(_Row(n, data))
    return rows


Check = Callable[[Any], str | None]  # returns what is wrong, or None


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be non-empty text"


def _uint(v: Any) -> str | None:
    return None if type(v) is int and v >= 0 else "must be an unsigned integer"


def _opt_uint(v: Any) -> str | None:
    return None if v is None else _uint(v)


def _hex(length: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "must be hex text"
        if not _HEX.fullmatch(v):
            if _HEXISH.fullmatch(v) and v != v.lower():
                return "contains uppercase hex (the export uses lowercase only)"
            return "is not lowercase hex of whole bytes"
        if length is not None and len(v) != 2 * length:
            return f"must be {length} bytes ({2 * length} hex digits), got {len(v) // 2}"
        return None

    return check


def _fields(
    file: str,
    row: _Row,
    spec: dict[str, Check],
    item: str | None = None,
    optional: dict[str, Check] | None = None,
) -> None:
    optional = optional or {}
    missing = [k for k in spec if k not in row.data]
    extra = [k for k in row.data if k not in spec and k not in optional]
    if missing:
        raise Discrepancy(
            file, f"missing field(s) {', '.join(missing)}", line=row.line or None, item=item
        )
    if extra:
        raise Discrepancy(
            file, f"unexpected field(s) {', '.join(extra)}", line=row.line or None, item=item
        )
    for key, check in (*spec.items(), *((k, c) for k, c in optional.items() if k in row.data)):
        problem = check(row.data[key])
        if problem:
            raise Discrepancy(file, f"field {key} {problem}", line=row.line or None, item=item)


_LOG_SPEC: dict[str, Check] = {
    "format": _text,
    "origin": _text,
    "log_key": _text,
    "deployment": _text,
}
_MODES = {m.value: m for m in MatchingMode}
_LOG_OPTIONAL: dict[str, Check] = {
    # The market's matching mode, when the exporter states it (else inferred from the trades).
    "market_mode": lambda v: (
        None
        if isinstance(v, str) and v in _MODES
        else f"must be one of {', '.join(sorted(_MODES))}"
    ),
}
_DEVICE_SPEC: dict[str, Check] = {
    "device_id": _text,
    "site_id": _text,
    "keys": lambda v: None if isinstance(v, list) and v else "must be a non-empty list",
}
_KEY_SPEC: dict[str, Check] = {
    "kid": _hex(8),
    "public_key": _hex(32),
    "valid_from": _uint,
    "valid_until": _opt_uint,
}
_RECORD_SPEC: dict[str, Check] = {
    "token_id": _hex(32),
    "device_id": _text,
    "seq": _uint,
    "record_hash": _hex(32),
    "envelope": _hex(),
}
_ENTRY_SPEC: dict[str, Check] = {"index": _uint, "leaf": _hex()}
_CHECKPOINT_SPEC: dict[str, Check] = {"note": _text}


@dataclass(frozen=True, slots=True)
class _Files:
    origin: str
    log_key: VerifierKey
    deployment: bytes
    market_mode: MatchingMode | None
    devices: list[_Row]
    records: list[_Row]
    entries: list[_Row]
    checkpoints: list[_Row]


def _read_files(directory: Path) -> _Files:
    if not directory.is_dir():
        raise Discrepancy(str(directory), "is not a directory")
    try:
        log = _loads(_read_text(directory, LOG_FILE))
    except ValueError as exc:
        raise Discrepancy(LOG_FILE, f"not valid JSON: {exc}") from None
    if not isinstance(log, dict):
        raise Discrepancy(LOG_FILE, "not a JSON object")
    fmt = log.get("format")
    if fmt != EXPORT_FORMAT:
        raise Discrepancy(
            LOG_FILE, f"unknown export format {fmt!r} (this verifier reads {EXPORT_FORMAT})"
        )
    _fields(LOG_FILE, _Row(0, log), _LOG_SPEC, optional=_LOG_OPTIONAL)
    try:
        log_key = parse_verifier_key(log["log_key"])
    except CheckpointError as exc:
        raise Discrepancy(LOG_FILE, f"log_key: {exc}") from None

    devices = _jsonl(directory, DEVICES_FILE)
    for row in devices:
        _fields(DEVICES_FILE, row, _DEVICE_SPEC)
        for n, key in enumerate(row.data["keys"]):
            if not isinstance(key, dict):
                raise Discrepancy(DEVICES_FILE, f"key {n} is not a JSON object", line=row.line)
            _fields(DEVICES_FILE, _Row(row.line, key), _KEY_SPEC, item=f"key {n}")
    records = _jsonl(directory, RECORDS_FILE)
    for row in records:
        _fields(RECORDS_FILE, row, _RECORD_SPEC)
    entries = _jsonl(directory, ENTRIES_FILE)
    for row in entries:
        _fields(ENTRIES_FILE, row, _ENTRY_SPEC)
    checkpoints = _jsonl(directory, CHECKPOINTS_FILE)
    for row in checkpoints:
        _fields(CHECKPOINTS_FILE, row, _CHECKPOINT_SPEC)
    return _Files(
        log["origin"],
        log_key,
        log["deployment"].encode("utf-8"),
        _MODES[log["market_mode"]] if "market_mode" in log else None,
        devices,
        records,
        entries,
        checkpoints,
    )


# --------------------------------------------------------------------------------------------
# Step 2: devices and records


@dataclass(frozen=True, slots=True)
class _Key:
    kid: bytes
    public_key: bytes
    valid_from: int
    valid_until: int | None


@dataclass(frozen=True, slots=True)
class _Device:
    device_id: str
    site_id: str
    keys: dict[bytes, _Key]


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    record: rec_mod.IntervalRecord
    record_hash: bytes
    site_id: str

    @property
    def item(self) -> str:
        return f"device {self.record.device_id} seq {self.record.seq}"


def _check_devices(rows: list[_Row]) -> dict[str, _Device]:
    devices: dict[str, _Device] = {}
    owner: dict[bytes, str] = {}
    for row in rows:
        device_id = row.data["device_id"]
        item = f"device {device_id}"
        if device_id in devices:
            raise Discrepancy(DEVICES_FILE, "device listed twice", line=row.line, item=item)
        keys: dict[bytes, _Key] = {}
        for n, k in enumerate(row.data["keys"]):
            key = _Key(
                bytes.fromhex(k["kid"]),
                bytes.fromhex(k["public_key"]),
                k["valid_from"],
                k["valid_until"],
            )
            if cose.key_id(key.public_key) != key.kid:
                raise Discrepancy(
                    DEVICES_FILE,
                    f"key {n}: kid {k['kid']} is not the key id of its public key",
                    line=row.line,
                    item=item,
                )
            if key.kid in owner:
                raise Discrepancy(
                    DEVICES_FILE,
                    f"key {n}: kid {k['kid']} is already a key of device {owner[key.kid]}",
                    line=row.line,
                    item=item,
                )
            if key.valid_until is not None and key.valid_until < key.valid_from:
                raise Discrepancy(
                    DEVICES_FILE,
                    f"key {n}: valid until {key.valid_until}, before valid from {key.valid_from}",
                    line=row.line,
                    item=item,
                )
            owner[key.kid] = device_id
            keys[key.kid] = key
        devices[device_id] = _Device(device_id, row.data["site_id"], keys)
    return devices


@dataclass(slots=True)
class _Head:
    seq: int
    record_hash: bytes
    line: int


def _check_records(
    rows: list[_Row], devices: dict[str, _Device], deployment: bytes, warnings: list[str]
) -> dict[bytes, _Record]:
    by_hash: dict[bytes, _Record] = {}
    heads: dict[str, _Head] = {}
    slots: dict[tuple[str, int], int] = {}
    owners = {kid: d.device_id for d in devices.values() for kid in d.keys}
    for row in rows:
        d = row.data
        item = f"device {d['device_id']} seq {d['seq']}"

        def bad(message: str, row: _Row = row, item: str = item) -> Discrepancy:
            return Discrepancy(RECORDS_FILE, message, line=row.line, item=item)

        device = devices.get(d["device_id"])
        if device is None:
            raise bad(f"device {d['device_id']} is not in {DEVICES_FILE}")
        envelope = bytes.fromhex(d["envelope"])
        try:
            s1 = cose.parse(envelope)
        except cose.EnvelopeError as exc:
            raise bad(f"envelope is not a valid COSE_Sign1: {exc}") from None
        key = device.keys.get(s1.kid)
        if key is None:
            other = owners.get(s1.kid)
            whose = f"a key of device {other}" if other else "not a registered key"
            raise bad(f"signed with key {s1.kid.hex()}, which is {whose}")
        try:
            cose.verify(s1, key.public_key, deployment)
        except cose.SignatureError as exc:
            raise bad(f"{exc} (key {key.kid.hex()}, deployment {deployment.decode()!r})") from None
        try:
            rec = rec_mod.decode(s1.payload)
        except rec_mod.RecordFormatError as exc:
            raise bad(f"signed payload is not a valid record: {exc}") from None
        digest = cose.record_hash(envelope)
        if digest.hex() != d["record_hash"]:
            raise bad(f"record_hash {d['record_hash']} is not the SHA-256 of the envelope")
        if rec.device_id != d["device_id"]:
            raise bad(f"the signed record is by device {rec.device_id}, listed as {d['device_id']}")
        if rec.seq != d["seq"]:
            raise bad(f"the signed record has seq {rec.seq}")
        if rec.token_id != d["token_id"]:
            raise bad(f"token_id {d['token_id']} is not the record's token id {rec.token_id}")
        if rec.interval_start % rec.interval_s:
            raise bad(f"interval start {rec.interval_start} is not a multiple of {rec.interval_s}")
        if key.valid_until is not None and rec.interval_end > key.valid_until:
            raise bad(
                f"interval ends at {rec.interval_end}, after its key {key.kid.hex()} was retired "
                f"at {key.valid_until}"
            )
        head = heads.get(rec.device_id)
        if head is None:
            if rec.seq <= 1:
                if rec.prev_hash != rec_mod.ZERO_HASH:
                    raise bad(f"the chain's first record (seq {rec.seq}) must carry the zero hash")
            else:
                warnings.append(
                    f"{RECORDS_FILE} line {row.line} ({item}): device {rec.device_id}'s chain "
                    f"starts at seq {rec.seq}; earlier records were never accepted"
                )
        elif rec.seq != head.seq + 1:
            if rec.seq <= head.seq:
                raise bad(f"seq {rec.seq} does not follow seq {head.seq} (line {head.line})")
            missing = (
                f"seq {head.seq + 1}"
                if rec.seq == head.seq + 2
                else f"seqs {head.seq + 1}..{rec.seq - 1}"
            )
            raise bad(f"chain gap: {missing} missing after seq {head.seq} (line {head.line})")
        elif rec.prev_hash != head.record_hash:
            raise bad(f"prev hash is not the hash of seq {head.seq} (line {head.line})")
        slot = (rec.device_id, rec.interval_start)
        if slot in slots:
            raise bad(f"interval {rec.interval_start} is already signed on line {slots[slot]}")
        slots[slot] = row.line
        heads[rec.device_id] = _Head(rec.seq, digest, row.line)
        by_hash[digest] = _Record(row.line, rec, digest, device.site_id)
    return by_hash


# --------------------------------------------------------------------------------------------
# Step 3: entries


def _check_entries(
    rows: list[_Row], records: dict[bytes, _Record], devices: dict[str, _Device]
) -> tuple[list[bytes], list[Entry], set[bytes]]:
    leaves: list[bytes] = []
    entries: list[Entry] = []
    minted_by: dict[bytes, int] = {}
    referenced: set[bytes] = set()
    for i, row in enumerate(rows):
        item = f"entry {i}"

        def bad(message: str, row: _Row = row, item: str = item, i: int = i) -> Discrepancy:
            return Discrepancy(ENTRIES_FILE, message, line=row.line, item=item, entries=(i, i))

        if row.data["index"] != i:
            raise Discrepancy(
                ENTRIES_FILE,
                f"holds index {row.data['index']} where entry {i} belongs "
                "(entries missing or out of order)",
                line=row.line,
                entries=(i, i),
            )
        data = bytes.fromhex(row.data["leaf"])
        try:
            leaf = decode_leaf(data)
        except LeafError as exc:
            raise bad(f"leaf: {exc}") from None
        if leaf.seq != i:
            raise bad(f"leaf seq {leaf.seq} is not its index {i}")
        try:
            entry = Entry.from_bytes(leaf.entry)
        except LedgerRuleError as exc:
            raise bad(f"entry bytes: {exc.reason}") from None
        if entry.seq != i:
            raise bad(f"entry seq {entry.seq} is not its index {i}")
        item = f"entry {i}, {entry.kind.name} {entry.site}"
        if leaf.record_hashes != tuple(r.record_hash for r in entry.refs):
            raise bad(
                "the leaf's record hashes are not those of the entry's record refs", item=item
            )
        if entry.refs and entry.kind is not EntryKind.MINT_GEN:
            raise bad(f"{entry.kind.name} references records; only MINT_GEN does", item=item)
        _check_refs(entry, leaf, records, devices, minted_by, bad, item)
        referenced.update(leaf.record_hashes)
        leaves.append(data)
        entries.append(entry)
    return leaves, entries, referenced


def _check_refs(
    entry: Entry,
    leaf: LedgerLeaf,
    records: dict[bytes, _Record],
    devices: dict[str, _Device],
    minted_by: dict[bytes, int],
    bad: Callable[..., Discrepancy],
    item: str,
) -> None:
    found: list[_Record] = []
    for n, ref in enumerate(entry.refs):
        what = f"ref {n} (token {ref.token_id})"
        r = records.get(ref.record_hash)
        if r is None:
            raise bad(
                f"{what} names record {ref.record_hash.hex()}, which is not in {RECORDS_FILE}",
                item=item,
            )
        rec = r.record
        at = f"{RECORDS_FILE} line {r.line}"
        for name, stated, actual in (
            ("token id", ref.token_id, rec.token_id),
            ("device", ref.device_id, rec.device_id),
            ("generated Wh", ref.generated_wh, rec.energy.generated_wh),
            ("tech", ref.tech or rec.tech[0], rec.tech[0]),
            ("zone", ref.zone or rec.zone, rec.zone),
        ):
            if stated != actual:
                raise bad(
                    f"{what}: {name} {stated!r}, but the record ({at}) says {actual!r}", item=item
                )
        earlier = minted_by.get(ref.record_hash)
        if earlier is not None:
            again = "twice in this entry" if earlier == entry.seq else f"already by entry {earlier}"
            raise bad(f"double mint: {what} ({at}) is minted {again}", item=item)
        minted_by[ref.record_hash] = entry.seq
        if devices[rec.device_id].site_id != entry.site:
            raise bad(
                f"{what}: device {rec.device_id} belongs to site "
                f"{devices[rec.device_id].site_id}, not {entry.site}",
                item=item,
            )
        found.append(r)
    if entry.kind is not EntryKind.MINT_GEN:
        return
    m = entry.measurement
    if m is None or not found:
        return  # replay refuses a MINT_GEN without its measurement; records checked above
    for r in found:
        if r.record.interval_start != entry.interval_start or r.record.interval_s != m.interval_s:
            raise bad(
                f"record {r.record.token_id} ({RECORDS_FILE} line {r.line}) is for interval "
                f"{r.record.interval_start}+{r.record.interval_s}s, the entry for "
                f"{entry.interval_start}+{m.interval_s}s",
                item=item,
            )
    for name, stated, channel in (
        ("generated", m.generated_wh, 0),
        ("imported", m.imported_wh, 1),
        ("exported", m.exported_wh, 2),
        ("charged", m.charged_wh, 3),
        ("discharged", m.discharged_wh, 4),
    ):
        total = sum(r.record.energy.as_list()[channel] for r in found)
        if stated != total:
            raise bad(
                f"measurement says {name} {stated} Wh, its records sum to {total} Wh", item=item
            )
    socs = [r.record.soc_permille for r in found if r.record.soc_permille is not None]
    soc = min(socs) if socs else None
    if m.soc_permille != soc:
        raise bad(f"measurement SoC {m.soc_permille} is not its records' lowest {soc}", item=item)


# --------------------------------------------------------------------------------------------
# Step 4: ledger rules


def _interval_opening(entries: Sequence[Entry], index: int) -> int | None:
    """The MINT_GEN that opened the interval entry `index` acts in (if it is an interval kind)."""
    e = entries[index]
    if e.kind not in INTERVAL_KINDS:
        return None
    for j in range(index - 1, -1, -1):
        o = entries[j]
        if o.site == e.site and o.kind is EntryKind.MINT_GEN:
            return j if o.interval_start == e.interval_start else None
    return None


def _rule_discrepancy(entries: Sequence[Entry], index: int, message: str) -> Discrepancy:
    e = entries[index]
    item = f"entry {index}, {e.kind.name} {e.site}"
    opened = _interval_opening(entries, index)
    span = (index, index)
    if opened is not None and opened != index:
        message += f" (in the interval {e.interval_start} of {e.site} opened by entry {opened})"
        span = (opened, index)
    return Discrepancy(ENTRIES_FILE, message, line=index + 1, item=item, entries=span)


def _replay(entries: list[Entry]) -> LedgerState:
    at = [0]

    def feed() -> Iterator[Entry]:
        for i, e in enumerate(entries):
            at[0] = i
            yield e

    try:
        state = replay(feed())
    except LedgerRuleError as exc:
        index = exc.index if exc.index is not None else at[0]
        raise _rule_discrepancy(entries, index, exc.reason) from None
    except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
        raise _rule_discrepancy(entries, at[0], f"entry cannot be applied: {exc!r}") from None
    problems = check_conservation(entries)
    if problems:
        found = re.match(r"entry (\d+): (.*)", problems[0])
        if found and int(found.group(1)) < len(entries):
            raise _rule_discrepancy(entries, int(found.group(1)), found.group(2))
        raise Discrepancy(ENTRIES_FILE, f"conservation: {problems[0]}")
    return state


# --------------------------------------------------------------------------------------------
# Step 5: the market


def _market_bad(
    e: Entry, message: str, trade_id: str | None = None, since: int | None = None
) -> Discrepancy:
    """A market discrepancy at entry `e` (about `trade_id`), concerning entries since `since`."""
    item = f"entry {e.seq}, {e.kind.name} {e.site}"
    if trade_id is not None:
        item += f", trade {trade_id}"
    first = e.seq if since is None else min(since, e.seq)
    return Discrepancy(ENTRIES_FILE, message, line=e.seq + 1, item=item, entries=(first, e.seq))


def _placed(market: Market, *trades: Trade, order_id: str | None = None) -> tuple[str, int | None]:
    """Where the replay placed the orders the trades (or `order_id`) name ("; orders X (placed
    at entry n), ...") and the earliest such entry: a changed order event surfaces later, at a
    trade or an event of its order."""
    ids = [oid for t in trades for oid in (t.sell_order_id, t.buy_order_id)]
    seen: dict[str, int] = {}
    for oid in [*ids, *([order_id] if order_id is not None else [])]:
        o = market.order(oid)
        if o is not None and oid not in seen:
            seen[oid] = o.placed_seq
    if not seen:
        return "", None
    named = ", ".join(f"{oid} (placed at entry {seq})" for oid, seq in seen.items())
    return f"; order{'s' if len(seen) > 1 else ''} {named}", min(seen.values())


def _describe(t: Trade) -> str:
    return (
        f"{t.quantity_wh} Wh at {t.price}/kWh from {t.seller_site_id} to {t.buyer_site_id}, "
        f"orders {t.sell_order_id}/{t.buy_order_id}"
    )


_MarketLeaf = tuple[Entry, Event | None, Trade | None]


def _decode_market(entries: Sequence[Entry]) -> list[_MarketLeaf]:
    """Decode every market leaf and check what can be checked leaf by leaf."""
    out: list[_MarketLeaf] = []
    for e in entries:
        if e.kind is EntryKind.ORDER_EVENT:
            if e.counterparty or e.ref or e.requested_wh:
                raise _market_bad(e, "an ORDER_EVENT carries no counterparty, ref or requested Wh")
            try:
                ev = decode_event(e.market)
            except MarketRuleError as exc:
                raise _market_bad(e, f"order event: {exc}") from None
            if ev.seq != e.seq:
                raise _market_bad(e, f"order event seq {ev.seq} is not its entry seq {e.seq}")
            if isinstance(ev, (Place, CloseGate)):
                site = ev.site_id if isinstance(ev, Place) else MARKET_SITE
                if (e.site, e.interval_start) != (site, ev.interval_start):
                    raise _market_bad(
                        e,
                        f"the entry is for site {e.site} interval {e.interval_start}, its "
                        f"{type(ev).__name__} for site {site} interval {ev.interval_start}",
                    )
            out.append((e, ev, None))
        elif e.kind is EntryKind.TRADE_MATCH:
            try:
                t = decode_trade(e.market)
            except MarketRuleError as exc:
                raise _market_bad(e, f"trade: {exc}") from None
            for name, stated, actual in (
                ("site", e.site, t.seller_site_id),
                ("counterparty", e.counterparty, t.buyer_site_id),
                ("ref", e.ref, t.trade_id),
                ("requested Wh", e.requested_wh, t.quantity_wh),
                ("interval", e.interval_start, t.interval_start),
            ):
                if stated != actual:
                    raise _market_bad(
                        e, f"the entry's {name} is {stated!r}, the trade's {actual!r}", t.trade_id
                    )
            out.append((e, None, t))
    return out


def _market_modes(
    declared: MatchingMode | None, leaves: Sequence[_MarketLeaf]
) -> tuple[list[MatchingMode], str]:
    """The matching mode(s) to replay in, and how they were chosen.

    The export states the mode in log.json's optional ``market_mode``; the aggregator's exporter
    does not (yet), so the mode is inferred: a log whose trades were all caused by gate
    closures is a call auction, one with any trade caused by a Place or an Amend continuous
    (continuous gate closures never trade, call-auction placements never do). A log without
    trades says nothing about its mode: it passes if it replays, tradeless, in either.
    """
    if declared is not None:
        return [declared], "log.json"
    causes = {e.seq: ev for e, ev, _ in leaves if ev is not None}
    trades = [t for _, _, t in leaves if t is not None]
    if not trades:
        return [MatchingMode.CONTINUOUS, MatchingMode.CALL_AUCTION], "no trades to infer it from"
    if all(isinstance(causes.get(t.taker_seq), CloseGate) for t in trades):
        return [MatchingMode.CALL_AUCTION], "inferred: every trade is caused by a gate closure"
    return [MatchingMode.CONTINUOUS], "inferred: trades are caused by orders"


def _missing_trade(cause: Entry, t: Trade, before: int | None, market: Market) -> Discrepancy:
    where = f"before entry {before}" if before is not None else "by the end of the log"
    placed, since = _placed(market, t)
    return _market_bad(
        cause,
        f"the replay of this event makes trade {t.trade_id} ({_describe(t)}), but no "
        f"TRADE_MATCH leaf for it follows {where}{placed}",
        t.trade_id,
        since,
    )


def _wrong_trade(e: Entry, t: Trade, want: Trade, cause: Entry, market: Market) -> Discrepancy:
    orders, since = _placed(market, t, want)
    since = cause.seq if since is None else min(since, cause.seq)
    if t.trade_id != want.trade_id:
        if t.taker_seq != cause.seq:
            said = f"names entry {t.taker_seq} as its cause, but follows entry {cause.seq}"
        else:
            said = "is out of order"
        return _market_bad(
            e,
            f"trade {t.trade_id} {said}: the replay makes trade {want.trade_id} "
            f"({_describe(want)}) here{orders}",
            t.trade_id,
            since,
        )
    diffs = [
        f"{name} {a!r} (the replay: {b!r})"
        for name, a, b in zip(Trade._fields, t, want, strict=True)
        if a != b
    ]
    return _market_bad(
        e,
        f"trade {t.trade_id} differs from the replay: {', '.join(diffs)}{orders}",
        t.trade_id,
        since,
    )


@dataclass(slots=True)
class _Replayed:
    matched: dict[str, tuple[Trade, int]]  # trade id -> (trade, its TRADE_MATCH entry index)
    closed: dict[int, int]  # delivery interval -> entry index of its gate closure
    events: int
    orders: int


def _replay_market(leaves: Sequence[_MarketLeaf], mode: MatchingMode) -> _Replayed:
    """Replay the order events in log order; each event's trades must follow it, in order."""
    market = Market(mode)
    pending: deque[Trade] = deque()  # made by the last event, not yet seen in the log
    cause: Entry | None = None  # the last ORDER_EVENT
    matched: dict[str, tuple[Trade, int]] = {}
    closed: dict[int, int] = {}
    events = orders = 0
    last = -1  # the entry of the previous market leaf
    for e, ev, t in leaves:
        previous, last = last, e.seq
        if ev is not None:
            if pending:
                assert cause is not None
                raise _missing_trade(cause, pending[0], e.seq, market)
            owner: tuple[str, str, int] | None = None
            if isinstance(ev, (Amend, Cancel)):
                o = market.order(ev.order_id)
                owner = None if o is None else (o.order_id, o.site_id, o.interval_start)
            try:
                made = market.apply(ev)
            except MarketRuleError as exc:
                placed, since = (
                    _placed(market, order_id=ev.order_id)
                    if isinstance(ev, (Amend, Cancel))
                    else ("", None)
                )
                raise _market_bad(
                    e, f"the market refuses this {type(ev).__name__}: {exc}{placed}", since=since
                ) from None
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise _market_bad(e, f"order event cannot be applied: {exc!r}") from None
            if owner is not None and (e.site, e.interval_start) != owner[1:]:
                raise _market_bad(
                    e,
                    f"the entry is for site {e.site} interval {e.interval_start}, its order "
                    f"{owner[0]} for site {owner[1]} interval {owner[2]}",
                )
            events += 1
            orders += isinstance(ev, Place)
            if isinstance(ev, CloseGate):
                closed[ev.interval_start] = e.seq
            pending.extend(made)
            cause = e
            continue
        assert t is not None
        if not pending:
            if cause is None:
                said = "comes before any order event"
            elif t.taker_seq != cause.seq:
                said = f"names entry {t.taker_seq} as its cause, but follows entry {cause.seq}"
            else:
                said = f"is not made by the replay of entry {cause.seq}"
            placed, since = _placed(market, t)
            raise _market_bad(
                e,
                f"extra trade: trade {t.trade_id} ({_describe(t)}) {said}{placed}",
                t.trade_id,
                since,
            )
        assert cause is not None
        if e.seq != previous + 1:
            between = (
                f"entry {previous + 1} lies"
                if e.seq == previous + 2
                else f"entries {previous + 1}..{e.seq - 1} lie"
            )
            raise _market_bad(
                e,
                f"trade {t.trade_id} does not come right after the event that caused it "
                f"(entry {cause.seq}) and the trades before it: {between} between",
                t.trade_id,
                cause.seq,
            )
        want = pending.popleft()
        if t != want:
            raise _wrong_trade(e, t, want, cause, market)
        matched[t.trade_id] = (t, e.seq)
    if pending:
        assert cause is not None
        raise _missing_trade(cause, pending[0], None, market)
    return _Replayed(matched, closed, events, orders)


def _check_settlements(
    entries: Sequence[Entry], state: LedgerState, market: _Replayed, warnings: list[str]
) -> tuple[int, int]:
    """Every P2P_TRADE naming a matched trade settles that trade; (settled trades, Wh)."""
    matched = market.matched
    count = wh = 0
    for e in entries:
        if e.kind is not EntryKind.P2P_TRADE or not e.ref:
            continue
        found = matched.get(e.ref)
        if found is None:
            warnings.append(
                f"{ENTRIES_FILE} line {e.seq + 1} (entry {e.seq}, P2P_TRADE {e.site}): settles "
                f"trade {e.ref!r}, which the market did not match (settled outside the market)"
            )
            continue
        t, at = found
        if e.seq < at:
            raise _market_bad(
                e, f"settles trade {t.trade_id} before it is matched (entry {at})", t.trade_id
            )
        gate = market.closed.get(t.interval_start)
        if gate is None or gate > e.seq:
            raise _market_bad(
                e,
                f"settles trade {t.trade_id} (matched at entry {at}) while the gate of its "
                f"interval {t.interval_start} is still open ("
                + ("no gate closure in the log" if gate is None else f"it closes at entry {gate}")
                + ")",
                t.trade_id,
            )
        value = next((c for c in e.convs if c.key == f"value:{e.counterparty}"), None)
        for name, stated, actual in (
            ("seller", e.site, t.seller_site_id),
            ("buyer", e.counterparty, t.buyer_site_id),
            ("traded Wh", e.requested_wh, t.quantity_wh),
            ("price", None if value is None else value.num, t.price),
        ):
            if stated != actual:
                raise _market_bad(
                    e,
                    f"settles trade {t.trade_id} (matched at entry {at}) with {name} "
                    f"{stated!r}, the trade's is {actual!r}",
                    t.trade_id,
                )
        if e.burned_wh > t.quantity_wh:
            raise _market_bad(
                e,
                f"settles {e.burned_wh} Wh of trade {t.trade_id}, which traded {t.quantity_wh} Wh",
                t.trade_id,
            )
        for b in e.burns:
            lot = state.lots.get(b.lot_id)
            if lot is not None and lot.interval_start < t.interval_start:
                raise _market_bad(
                    e,
                    f"settles trade {t.trade_id} for interval {t.interval_start} with lot "
                    f"{b.lot_id} of the earlier interval {lot.interval_start}",
                    t.trade_id,
                )
        count += 1
        wh += e.burned_wh
    return count, wh


def _check_market(
    entries: Sequence[Entry],
    state: LedgerState,
    declared: MatchingMode | None,
    warnings: list[str],
) -> MarketSummary:
    """Replay the market leaves through rules.market and check the trades and settlements.

    A no-op (a zero summary) for a log without market leaves.
    """
    leaves = _decode_market(entries)
    if not leaves:
        return MarketSummary()
    modes, how = _market_modes(declared, leaves)
    first: Discrepancy | None = None
    done: _Replayed | None = None
    used = modes[0]
    for used in modes:
        try:
            done = _replay_market(leaves, used)
            break
        except Discrepancy as exc:
            first = first or exc
    if done is None:
        assert first is not None
        if len(modes) > 1:
            raise Discrepancy(
                first.file,
                f"{first.message} (replayed in {modes[0].value} matching; the log has no trades "
                f"and states no mode, and {', '.join(m.value for m in modes[1:])} matching "
                "fails too)",
                line=first.line,
                item=first.item,
                entries=first.entries,
            )
        raise first
    settled, settled_wh = _check_settlements(entries, state, done, warnings)
    return MarketSummary(
        mode=used,
        mode_from=how,
        events=done.events,
        orders=done.orders,
        trades=len(done.matched),
        traded_wh=sum(t.quantity_wh for t, _ in done.matched.values()),
        settled_trades=settled,
        settled_wh=settled_wh,
    )


# --------------------------------------------------------------------------------------------
# Step 6: the carbon shop


def _shop_bad(e: Entry, message: str) -> Discrepancy:
    item = f"entry {e.seq}, CARBON {e.site}" + (f", {e.ref}" if e.ref else "")
    return Discrepancy(ENTRIES_FILE, message, line=e.seq + 1, item=item, entries=(e.seq, e.seq))


def _check_shop(entries: Sequence[Entry], records: dict[bytes, _Record]) -> ShopSummary:
    """Replay the CARBON leaves through rules.carbon's ShopBook (a no-op without them)."""
    if not any(e.kind is EntryKind.CARBON for e in entries):
        return ShopSummary()
    book = ShopBook()
    minted: dict[str, MintedToken] = {}
    listings = solar = orders = retirements = 0
    for e in entries:
        if e.kind is EntryKind.MINT_GEN:
            for r in e.refs:
                if r.generated_wh > 0:
                    minted[r.token_id] = MintedToken(e.site, r.generated_wh, r.record_hash, e.seq)
            continue
        if e.kind is not EntryKind.CARBON:
            continue
        try:
            ev = decode_shop_event(e.market)
        except CarbonCodecError as exc:
            raise _shop_bad(e, f"shop event: {exc}") from None
        subject = ev.order_id if isinstance(ev, (OrderPaid, Retired)) else ev.lot_id
        site = ev.site_id if isinstance(ev, LotListed) and ev.site_id else CARBON_SITE
        for name, stated, actual in (
            ("ref", e.ref, subject),
            ("site", e.site, site),
            ("interval", e.interval_start, 0),
            ("counterparty", e.counterparty, ""),
            ("requested Wh", e.requested_wh, 0),
        ):
            if stated != actual:
                raise _shop_bad(e, f"the entry's {name} is {stated!r}, its shop event's {actual!r}")
        if isinstance(ev, LotListed):
            for b in ev.backing:
                rec = records.get(b.record_hash)
                if rec is None or rec.record.token_id != b.token_id:
                    raise _shop_bad(
                        e,
                        f"lot {ev.lot_id}: token {b.token_id} (record {b.record_hash.hex()}) is "
                        f"not a signed record of {RECORDS_FILE}",
                    )
        try:
            book.apply(e.seq, ev, minted.get)
        except CarbonRuleError as exc:
            raise _shop_bad(e, str(exc)) from None
        if isinstance(ev, LotListed):
            listings += 1
            solar += bool(ev.backing)
        elif isinstance(ev, OrderPaid):
            orders += 1
        elif isinstance(ev, Retired):
            retirements += 1
    return ShopSummary(listings, solar, orders, retirements, book.kg_listed, book.kg_retired)


# --------------------------------------------------------------------------------------------
# Step 7: Merkle log and checkpoints


def _check_checkpoints(
    rows: list[_Row], leaves: list[bytes], origin: str, key: VerifierKey
) -> Checkpoint | None:
    log = MerkleLog(leaf_hash(leaf) for leaf in leaves)
    previous: tuple[Checkpoint, int] | None = None
    for row in rows:
        try:
            cp = parse_signed_checkpoint(row.data["note"].encode("utf-8"), key.name, key.public_key)
        except CheckpointError as exc:
            raise Discrepancy(
                CHECKPOINTS_FILE,
                f"not a checkpoint signed by the log key {key.name}+{key.key_id.hex()}: {exc}",
                line=row.line,
            ) from None
        item = f"size {cp.size}"

        def bad(message: str, row: _Row = row, item: str = item) -> Discrepancy:
            return Discrepancy(CHECKPOINTS_FILE, message, line=row.line, item=item)

        if cp.origin != origin:
            raise bad(f"checkpoint is for log {cp.origin!r}, the export for {origin!r}")
        prev_size = previous[0].size if previous else 0
        if cp.size < prev_size:
            raise bad(f"size decreases from {prev_size} (line {previous[1] if previous else 0})")
        if cp.size > log.size:
            raise bad(f"covers {cp.size} entries, but {ENTRIES_FILE} holds {log.size}")
        if log.root(cp.size) != cp.root:
            if prev_size < cp.size:
                span = (prev_size, cp.size - 1)
                what = f"entries {prev_size}..{cp.size - 1}"
            else:
                span = (0, cp.size - 1) if cp.size else (0, -1)
                what = f"the first {cp.size} entries"
            raise Discrepancy(
                CHECKPOINTS_FILE,
                f"root does not match {what}",
                line=row.line,
                item=item,
                entries=span,
            )
        if previous is not None:
            old = previous[0]
            try:
                verify_consistency(
                    old.size, cp.size, old.root, cp.root, log.consistency_proof(old.size, cp.size)
                )
            except ProofError as exc:
                raise bad(
                    f"not consistent with line {previous[1]} (size {old.size}): {exc}"
                ) from None
        previous = (cp, row.line)
    last = previous[0] if previous else None
    if log.size and (last is None or last.size != log.size):
        covered = last.size if last else 0
        raise Discrepancy(
            CHECKPOINTS_FILE,
            f"entries {covered}..{log.size - 1} are not covered by any checkpoint",
            line=previous[1] if previous else None,
            item=f"size {covered}" if previous else None,
            entries=(covered, log.size - 1),
        )
    return last


# --------------------------------------------------------------------------------------------
# The whole check


def verify_export(directory: Path) -> VerifyReport:
    """Check the export in `directory`; the report's `error` is the first discrepancy, if any.

    Reads the files and nothing else (no network, no database). Never raises for a bad export.
    """
    directory = Path(directory)
    warnings: list[str] = []
    files: _Files | None = None
    try:
        files = _read_files(directory)
        devices = _check_devices(files.devices)
        records = _check_records(files.records, devices, files.deployment, warnings)
        leaves, entries, referenced = _check_entries(files.entries, records, devices)
        state = _replay(entries)
        market = _check_market(entries, state, files.market_mode, warnings)
        shop = _check_shop(entries, records)
        last = _check_checkpoints(files.checkpoints, leaves, files.origin, files.log_key)
    except Discrepancy as exc:
        if files is None:
            return VerifyReport(directory, error=exc)
        return VerifyReport(
            directory,
            error=exc,
            records=len(files.records),
            devices=len(files.devices),
            entries=len(files.entries),
            checkpoints=len(files.checkpoints),
        )
    for r in sorted(records.values(), key=lambda r: r.line):
        if r.record_hash in referenced:
            continue
        late = (r.site_id, r.record.interval_start) in state.closed
        why = (
            f"its site's interval {r.record.interval_start} was closed without it (late record)"
            if late
            else "not yet in the ledger"
        )
        warnings.append(f"{RECORDS_FILE} line {r.line} ({r.item}): {why}")
    sites = sorted(
        set(state.sites())
        | {d.site_id for d in devices.values()}
        | {a.removeprefix("site:") for a in state.balances if a.startswith("site:")}
    )
    return VerifyReport(
        directory,
        warnings=tuple(warnings),
        tree_size=last.size if last else 0,
        root=last.root if last else None,
        sites=tuple(
            SiteSummary(
                s,
                state.tgen_wh(s),
                state.tstorage_wh(s),
                state.set_aside_wh(s),
                state.balance(site_account(s)),
            )
            for s in sites
        ),
        accounts={a: b for a, b in sorted(state.balances.items())},
        state=state,
        market=market,
        shop=shop,
        records=len(files.records),
        devices=len(files.devices),
        entries=len(files.entries),
        checkpoints=len(files.checkpoints),
    )


# --------------------------------------------------------------------------------------------
# The command


def _print_summary(report: VerifyReport, out: Console) -> None:
    root = report.root.hex() if report.root is not None else "-"
    out.print(
        f"[bold green]verified[/] {report.directory}: {report.records} records from "
        f"{report.devices} devices, {report.entries} entries, {report.checkpoints} checkpoints "
        f"(tree size {report.tree_size}, root {root})",
        markup=True,
        highlight=False,
    )
    if report.market.present:
        out.print(report.market.line(), markup=False, highlight=False)
    if report.shop.present:
        out.print(report.shop.line(), markup=False, highlight=False)
    table = Table(title="Balances recomputed by replaying the ledger")
    table.add_column("site")
    for name in ("Tgen Wh", "Tstorage Wh", "set-aside Wh", "balance (minor units)"):
        table.add_column(name, justify="right")
    for s in report.sites:
        table.add_row(
            s.site, str(s.tgen_wh), str(s.tstorage_wh), str(s.set_aside_wh), str(s.balance_minor)
        )
    out.print(table)
    others = {a: b for a, b in report.accounts.items() if not a.startswith("site:")}
    if others:
        accounts = Table(title="Other accounts")
        accounts.add_column("account")
        accounts.add_column("balance (minor units)", justify="right")
        for a, b in others.items():
            accounts.add_row(a, str(b))
        out.print(accounts)


EXPORT_FILES = ("log.json", "devices.jsonl", "records.jsonl", "entries.jsonl", "checkpoints.jsonl")


def fetch_export(api: str, token: str, directory: Path, timeout_s: float = 120.0) -> None:
    """Download one consistent export from a running aggregator into `directory`.

    Only the transport is the aggregator's: the files are then checked exactly like files on
    disk, so nothing the aggregator says is taken on trust.
    """
    url = api.rstrip("/") + "/api/v1/ledger/export"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--api {api!r} is not an http:// or https:// URL")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{url}: the aggregator refused ({exc.code} {exc.reason})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ValueError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    except json.JSONDecodeError:
        raise ValueError(f"{url} did not answer with JSON") from None
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, dict) or any(not isinstance(files.get(n), str) for n in EXPORT_FILES):
        raise ValueError(f"{url}: the answer is not a ledger export")
    directory.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        (directory / name).write_text(files[name], encoding="utf-8")


def verify_command(
    directory: Path | None = None,
    api: str | None = None,
    token: str | None = None,
    json_out: bool = False,
) -> None:
    """Check a ledger export: signatures, record chains, ledger rules, Merkle log, checkpoints."""
    if api is not None:
        if not token:
            typer.echo("error: --api needs --token (or GRIDMINT_TOKEN)", err=True)
            raise typer.Exit(1)
        target = directory or Path(tempfile.mkdtemp(prefix="gridmint-export-"))
        try:
            fetch_export(api, token, target)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        directory = target
    if directory is None:
        typer.echo("error: give an export directory, or --api URL", err=True)
        raise typer.Exit(1)
    report = verify_export(directory)
    if json_out:
        typer.echo(json.dumps(report.as_json(), sort_keys=True))
        raise typer.Exit(0 if report.ok else 1)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if report.error is not None:
        typer.echo(f"verification FAILED: {report.error}", err=True)
        raise typer.Exit(1)
    for w in report.warnings[:MAX_WARNINGS_SHOWN]:
        err.print(f"warning: {w}", markup=False)
    if len(report.warnings) > MAX_WARNINGS_SHOWN:
        err.print(
            f"warning: ... and {len(report.warnings) - MAX_WARNINGS_SHOWN} more", markup=False
        )
    _print_summary(report, Console(soft_wrap=True))
