"""OpenADR 3.0.1 objects as gridmint reads them: times, durations, targets, and the mapping of an
event to a dispatch event request. Pure: no I/O and no clock.

gridmint's VTN speaks OpenADR **3.0.1** (grid-coordination/openadr3-specification, 3.0.1/
openadr3.yaml); see docs/openadr.md for the routes and cloud/services/openadr.py for the service.

Mapping (one event interval with one payload of one value):

| payload type            | control       | value                                              |
|-------------------------|---------------|----------------------------------------------------|
| DISPATCH_SETPOINT       | opModFixedW   | group total W, + = discharge (export), - = charge  |
| EXPORT_CAPACITY_LIMIT   | opModExpLimW  | W per site (>= 0)                                  |
| IMPORT_CAPACITY_LIMIT   | opModImpLimW  | W per site (>= 0)                                  |
| SIMPLE level 1..3       | opModImpLimW  | SIMPLE_IMPORT_LIMIT_W[level] per site              |
| SIMPLE level 0          | none          | normal operation: no dispatch event                |

Power values are in the units of the event's (else the program's) payload descriptor for that
payload type: KW (the default), W or MW; they become whole W (rounded half to even).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cloud.domain.dispatch_events import EventRequest, parse_group
from protocol.dispatch import ControlMode

VERSION = "3.0.1"
BASE_PATH = f"/openadr3/{VERSION}"

SCOPES = (
    "read_all",
    "write_programs",
    "write_events",
    "write_reports",
    "write_subscriptions",
    "write_vens",
)

#: The payload types an event may carry, and the control each becomes.
DISPATCHED_TYPES = {
    "DISPATCH_SETPOINT": ControlMode.OP_MOD_FIXED_W,
    "EXPORT_CAPACITY_LIMIT": ControlMode.OP_MOD_EXP_LIM_W,
    "IMPORT_CAPACITY_LIMIT": ControlMode.OP_MOD_IMP_LIM_W,
    "SIMPLE": ControlMode.OP_MOD_IMP_LIM_W,
}
#: SIMPLE levels (spec example: normal, moderate shed, high shed, emergency shed) as a site
#: import limit in W; level 0 (normal operation) dispatches nothing.
SIMPLE_IMPORT_LIMIT_W = {1: 5000, 2: 2000, 3: 0}
UNIT_SCALE_W = {"W": 1, "KW": 1000, "MW": 1_000_000}
GROUP_TARGET = "GROUP"


class OpenAdrError(ValueError):
    """A request gridmint's VTN refuses; `status` is the HTTP status, the message the detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def bad(detail: str) -> OpenAdrError:
    """A 400 with `detail`."""
    return OpenAdrError(400, detail)


# --- times ------------------------------------------------------------------------------------

_DURATION = re.compile(
    r"^(-)?P(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)(?:\.(\d+))?S)?)?$"
)


def parse_duration(text: str, what: str = "duration") -> int:
    """Whole seconds of an ISO 8601 duration of the forms PnW, PnD, PTnHnMnS (and combinations
    such as P1DT2H). Years and months (calendar-dependent) and negative durations are refused."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or text in ("P", "PT") or text.endswith("T"):
        raise bad(f"{what} {text!r} is not an ISO 8601 duration such as PT1H, PT15M or P1D")
    neg, weeks, days, hours, minutes, seconds, fraction = m.groups()
    if neg:
        raise bad(f"{what} {text!r} is negative")
    if fraction is not None and fraction.strip("0"):
        raise bad(f"{what} {text!r} is not whole seconds")
    return (
        int(weeks or 0) * 7 * 86400
        + int(days or 0) * 86400
        + int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + int(seconds or 0)
    )


def format_duration(seconds: int) -> str:
    """ISO 8601 duration of whole seconds: P1DT2H, PT15M, PT0S."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time_part = "".join(
        f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n
    )
    out = "P" + (f"{days}D" if days else "") + (f"T{time_part}" if time_part else "")
    return out if out != "P" else "PT0S"


def parse_datetime(text: str, what: str = "start") -> int:
    """Unix seconds of an RFC 3339 date-time with an offset (Z or +hh:mm); fractions dropped."""
    try:
        dt = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None or "T" not in text.upper():
        raise bad(f"{what} {text!r} is not an RFC 3339 date-time with an offset (e.g. ...Z)")
    return int(dt.timestamp() // 1)


def format_datetime_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-12-07T05:30:00.000Z."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def format_datetime_s(s: int) -> str:
    """RFC 3339 UTC in whole seconds, e.g. 2026-12-07T05:30:00Z."""
    return datetime.fromtimestamp(s, UTC).isoformat()[:-6] + "Z"


def check_interval_period(period: Mapping[str, Any] | None, what: str) -> None:
    """Raise OpenAdrError unless the intervalPeriod's start, duration and randomizeStart parse."""
    if not period:
        return
    if period.get("start") is not None:
        parse_datetime(period["start"], f"{what}.start")
    if period.get("duration") is not None:
        parse_duration(period["duration"], f"{what}.duration")
    if period.get("randomizeStart") is not None:
        parse_duration(period["randomizeStart"], f"{what}.randomizeStart")


# --- targets ----------------------------------------------------------------------------------


def group_of(targets: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The gridmint group named by a GROUP target ("all", "zone:..", "site:..", "device:.."),
    None when there is no GROUP target."""
    groups = [t for t in targets or () if t.get("type") == GROUP_TARGET]
    if not groups:
        return None
    values = [v for t in groups for v in t.get("values") or ()]
    if len(values) != 1 or not isinstance(values[0], str):
        raise bad(
            "a GROUP target has exactly one value: all, zone:<zone>, site:<id> or device:<id>"
        )
    try:
        parse_group(values[0])
    except ValueError as exc:
        raise bad(str(exc)) from None
    return values[0]


def matches_targets(
    targets: Sequence[Mapping[str, Any]] | None, target_type: str | None, values: Sequence[str]
) -> bool:
    """The spec's targetType/targetValues filter: some target of that type has one of `values`."""
    if target_type is None:
        return True
    wanted = set(values)
    return any(
        t.get("type") == target_type
        and (not wanted or wanted & set(map(str, t.get("values") or ())))
        for t in targets or ()
    )


# --- the mapping ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventTimes:
    """When an event's (single) interval runs, in Unix s."""

    start: int
    duration_s: int
    randomize_start_s: int

    @property
    def end(self) -> int:
        return self.start + self.duration_s


def event_times(event: Mapping[str, Any]) -> EventTimes:
    """The start, duration and randomization of the event's interval: the interval's own
    intervalPeriod, each missing field taken from the event's intervalPeriod."""
    intervals = event.get("intervals") or []
    if len(intervals) != 1:
        raise bad(
            f"gridmint dispatches events with exactly one interval; this one has {len(intervals)}"
        )
    own = intervals[0].get("intervalPeriod") or {}
    top = event.get("intervalPeriod") or {}

    def field(name: str) -> Any:
        return own.get(name) if own.get(name) is not None else top.get(name)

    if field("start") is None:
        raise bad("the event has no start: set intervalPeriod.start on the event or its interval")
    if field("duration") is None:
        raise bad("the event has no duration: set intervalPeriod.duration")
    start = parse_datetime(field("start"), "intervalPeriod.start")
    duration = parse_duration(field("duration"), "intervalPeriod.duration")
    if duration <= 0:
        raise bad("intervalPeriod.duration must be longer than PT0S for a dispatch event")
    randomize = field("randomizeStart")
    return EventTimes(
        start, duration, 0 if randomize is None else parse_duration(randomize, "randomizeStart")
    )


def _units(payload_type: str, *descriptor_lists: Sequence[Mapping[str, Any]] | None) -> str:
    for descriptors in descriptor_lists:
        for d in descriptors or ():
            if d.get("payloadType") == payload_type and d.get("units"):
                return str(d["units"]).upper()
    return "KW"


def _number(value: Any, payload_type: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad(f"{payload_type} needs a number, got {value!r}")
    try:
        n = Decimal(str(value))
    except InvalidOperation:
        raise bad(f"{payload_type} needs a number, got {value!r}") from None
    if not n.is_finite():
        raise bad(f"{payload_type} needs a finite number, got {value!r}")
    return n


def to_watts(value: Any, payload_type: str, units: str) -> int:
    """A power value in `units` (W, KW, MW) as whole W."""
    scale = UNIT_SCALE_W.get(units)
    if scale is None:
        raise bad(f"{payload_type} units {units!r} are not power units gridmint knows: W, KW, MW")
    return int((_number(value, payload_type) * scale).to_integral_value())


def event_request(
    program: Mapping[str, Any],
    event: Mapping[str, Any],
    *,
    program_id: str,
    event_id: str,
) -> EventRequest | None:
    """The dispatch event request an OpenADR event stands for; None for SIMPLE level 0.

    Raises OpenAdrError (400) for an event gridmint cannot dispatch, with a plain message.
    """
    times = event_times(event)
    payloads = event["intervals"][0].get("payloads") or []
    if len(payloads) != 1:
        raise bad(
            f"gridmint dispatches an interval with exactly one payload; it has {len(payloads)}"
        )
    ptype = payloads[0].get("type")
    values = payloads[0].get("values") or []
    if ptype not in DISPATCHED_TYPES:
        raise bad(
            f"payload type {ptype!r} is not one gridmint dispatches: "
            + ", ".join(sorted(DISPATCHED_TYPES))
        )
    if len(values) != 1:
        raise bad(f"{ptype} needs exactly one value, got {len(values)}")
    control = DISPATCHED_TYPES[ptype]
    if ptype == "SIMPLE":
        level = _number(values[0], ptype)
        if level not in (0, 1, 2, 3):
            raise bad(f"SIMPLE level must be 0, 1, 2 or 3, got {values[0]!r}")
        if level == 0:
            return None
        value = SIMPLE_IMPORT_LIMIT_W[int(level)]
    else:
        units = _units(ptype, event.get("payloadDescriptors"), program.get("payloadDescriptors"))
        value = to_watts(values[0], ptype, units)
        if control is not ControlMode.OP_MOD_FIXED_W and value < 0:
            raise bad(f"{ptype} must not be negative, got {values[0]!r}")
    group = group_of(event.get("targets")) or group_of(program.get("targets")) or "all"
    return EventRequest(
        group=group,
        control=control,
        value=value,
        start=times.start,
        duration_s=times.duration_s,
        randomize_start_s=times.randomize_start_s,
        name=str(event.get("eventName") or "")[:200],
        source=f"openadr:{program_id}/{event_id}",
    )


# --- clients and access tokens ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAdrClient:
    """A client the VTN issues tokens to (settings `openadr_clients`)."""

    client_id: str
    secret: str
    scopes: frozenset[str]


_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,48}$")


def parse_clients(text: str) -> dict[str, OpenAdrClient]:
    """`[{"client_id": "...", "client_secret": "...", "scopes": ["read_all", ...]}, ...]`."""
    try:
        raw = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"openadr_clients is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError("openadr_clients must be a JSON list of clients")
    out: dict[str, OpenAdrClient] = {}
    for c in raw:
        if not isinstance(c, dict):
            raise ValueError("each openadr_clients entry is an object")
        cid, secret, scopes = c.get("client_id"), c.get("client_secret"), c.get("scopes", [])
        if not isinstance(cid, str) or not _CLIENT_ID.match(cid):
            raise ValueError("each OpenADR client_id is 1..48 of A-Z a-z 0-9 . _ -")
        if not isinstance(secret, str) or len(secret) < 8:
            raise ValueError(f"OpenADR client {cid}: client_secret needs 8+ characters")
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"OpenADR client {cid}: unknown scopes {sorted(unknown)}")
        out[cid] = OpenAdrClient(cid, secret, frozenset(scopes))
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(client: OpenAdrClient, scopes: frozenset[str], expires: int) -> str:
    """A bearer token for `client` with `scopes` until `expires` (Unix s), signed with the
    client's secret (HMAC-SHA256): any process with the same settings can check it, and a
    changed secret voids the tokens issued under the old one."""
    payload = _b64(json.dumps({"c": client.client_id, "s": sorted(scopes), "e": expires}).encode())
    mac = hmac.new(client.secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"oa3.{payload}.{_b64(mac)}"


def check_token(
    token: str, clients: Mapping[str, OpenAdrClient], now: int
) -> tuple[str, frozenset[str]] | None:
    """(client_id, scopes) of a valid, unexpired token; None otherwise."""
    try:
        prefix, payload, mac = token.split(".")
        body = json.loads(_unb64(payload))
        client = clients.get(body["c"])
        if prefix != "oa3" or client is None:
            return None
        good = hmac.new(client.secret.encode(), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(good, _unb64(mac)) or int(body["e"]) <= now:
            return None
        return client.client_id, frozenset(body["s"]) & client.scopes
    except (ValueError, KeyError, TypeError):
        return None
