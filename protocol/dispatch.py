"""Dispatch commands (cloud -> device) and their acknowledgements (device -> cloud), version 1.

Owns: the command and acknowledgement payloads, their signing, and the checks a device applies to
a command and the cloud to an acknowledgement. Imports nothing of ours beyond protocol. Pure: no
I/O and no clock (callers pass `now`). The vocabulary is IEEE 2030.5's (DERControl, EventStatus,
Response.status), the control names 2030.5's and CSIP-AUS's; see docs/tokens.md, "Dispatch
commands and acknowledgements".

Both messages are COSE_Sign1 envelopes (protocol/cose.py) around a canonical CBOR map whose key 0
names the message (protocol/wiremap.py). They are kept apart from every other signature by two
independent means:

* external AAD = deployment id || 0x00 || message kind, the scheme protocol/statements.py uses.
  A token's AAD is the bare deployment id, a statement's ends in its own kind.
* the payload: key 0 is a kind *text*, where a record has the integer 1 and a statement is an
  array. So even a deployment id chosen to collide with another message's AAD gains nothing.

A command is signed with the aggregator's dispatch key (pinned on the device at enrollment, like
the ledger key; a separate key, so a leaked dispatch key cannot sign checkpoints and vice versa).
An acknowledgement is signed with the device key, the one that signs its tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cose, wiremap
from protocol.wiremap import WireFormatError

COMMAND_KIND = "gridmint/dispatch/v1"
ACK_KIND = "gridmint/dispatch-ack/v1"
MAX_MESSAGE_BYTES = 1024  # a command is about 130 bytes
MAX_ID = 64  # event, device and site ids: the length of a topic segment
MAX_DETAIL = 128
MAX_UINT32 = 2**32 - 1
MAX_ABS_W = 2**31 - 1  # as protocol/telemetry.py: far beyond any site, fits a 32-bit register
# 2030.5's PerCent and SignedPerCent are hundredths of a percent: 10000 is 100 %.
FULL_SCALE = 10_000


class ControlMode(IntEnum):
    """The DER control a command sets, one per command, named after 2030.5 / CSIP-AUS.

    Value units (all integers):

    * OP_MOD_MAX_LIM_W: generation limit, hundredths of a percent of the inverter's rating,
      0..10000 (2030.5 PerCent). 5000 = at most half the rating.
    * OP_MOD_FIXED_W: battery setpoint, hundredths of a percent of the battery's maximum rate,
      -10000..10000 (2030.5 SignedPerCent); positive discharges, negative charges (the sign of
      `battery_w` in protocol/telemetry.py).
    * OP_MOD_TARGET_W: active power target at the device, W, signed as above (positive = into
      the home's bus).
    * OP_MOD_EXP_LIM_W / OP_MOD_IMP_LIM_W: site export / import limit, W, >= 0 (CSIP-AUS).
    * OP_MOD_CONNECT: 1 connect, 0 disconnect.
    """

    OP_MOD_MAX_LIM_W = 1
    OP_MOD_FIXED_W = 2
    OP_MOD_TARGET_W = 3
    OP_MOD_EXP_LIM_W = 4
    OP_MOD_IMP_LIM_W = 5
    OP_MOD_CONNECT = 6

    @property
    def wire_name(self) -> str:
        """The 2030.5 / CSIP-AUS element name, e.g. "opModMaxLimW"."""
        return _WIRE_NAMES[self]

    @property
    def value_range(self) -> tuple[int, int]:
        """The values a command for this control may carry (inclusive)."""
        return _VALUE_RANGES[self]


_WIRE_NAMES = {
    ControlMode.OP_MOD_MAX_LIM_W: "opModMaxLimW",
    ControlMode.OP_MOD_FIXED_W: "opModFixedW",
    ControlMode.OP_MOD_TARGET_W: "opModTargetW",
    ControlMode.OP_MOD_EXP_LIM_W: "opModExpLimW",
    ControlMode.OP_MOD_IMP_LIM_W: "opModImpLimW",
    ControlMode.OP_MOD_CONNECT: "opModConnect",
}
_VALUE_RANGES = {
    ControlMode.OP_MOD_MAX_LIM_W: (0, FULL_SCALE),
    ControlMode.OP_MOD_FIXED_W: (-FULL_SCALE, FULL_SCALE),
    ControlMode.OP_MOD_TARGET_W: (-MAX_ABS_W, MAX_ABS_W),
    ControlMode.OP_MOD_EXP_LIM_W: (0, MAX_ABS_W),
    ControlMode.OP_MOD_IMP_LIM_W: (0, MAX_ABS_W),
    ControlMode.OP_MOD_CONNECT: (0, 1),
}
_CONTROLS = {int(c): c for c in ControlMode}


class EventStatus(IntEnum):
    """IEEE 2030.5 EventStatus.currentStatus. A command carries the event's status, so a cancel
    or a supersession is a new modification of the same event, signed like any other."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4

    @property
    def runs(self) -> bool:
        """True when the device should (still) execute the event; False when it must stop."""
        return self in (EventStatus.SCHEDULED, EventStatus.ACTIVE)


_EVENT_STATUSES = {int(s): s for s in EventStatus}


class ResponseStatus(IntEnum):
    """IEEE 2030.5 Response.status values a device sends, plus one gridmint extension.

    FAILED (251) is not a 2030.5 value: 2030.5 has no code for "accepted and started, but the
    equipment did not do it" (an inverter refused the write, a relay did not switch). 252 would
    claim the control does not apply, 4 that the user chose to opt out; both would mislead the
    operator, and the cloud raises a failed-command alarm on exactly this code. 251 sits just
    below the 2030.5 rejection block; a 2030.5 front end must map it (e.g. to 253) before
    answering a 2030.5 server.
    """

    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    OPTED_OUT = 4
    CANCELLED = 6
    SUPERSEDED = 7
    FAILED = 251
    REJECTED_NOT_APPLICABLE = 252
    REJECTED_INVALID = 253
    REJECTED_LATE = 254

    @property
    def is_rejection(self) -> bool:
        """True for 252, 253 and 254: the device never executed the command."""
        return self >= ResponseStatus.REJECTED_NOT_APPLICABLE


_RESPONSE_STATUSES = {int(s): s for s in ResponseStatus}


class DispatchFormatError(WireFormatError):
    """Bytes that are not a well-formed, canonical command or acknowledgement."""

    def __init__(
        self, message: str, *, non_canonical: bool = False, unknown_control: bool = False
    ) -> None:
        super().__init__(message, non_canonical=non_canonical)
        self.unknown_control = unknown_control


def command_aad(deployment: bytes) -> bytes:
    """External AAD of a command: see the module docstring."""
    return deployment + b"\0" + COMMAND_KIND.encode()


def ack_aad(deployment: bytes) -> bytes:
    """External AAD of an acknowledgement."""
    return deployment + b"\0" + ACK_KIND.encode()


# --- commands ---------------------------------------------------------------------------------

C_KIND, C_EVENT, C_MODIFICATION, C_DEVICE, C_SITE, C_STATUS, C_CONTROL, C_VALUE = range(8)
C_START, C_DURATION, C_RAMP, C_RANDOMIZE, C_EXPIRY, C_ISSUED_MS = range(8, 14)
_COMMAND_KEYS = frozenset(range(14))


@dataclass(frozen=True, slots=True)
class DispatchCommand:
    """One device's instruction for one event, at one modification.

    Times are Unix seconds UTC (issued_ms: ms). The device starts at `start` plus a random delay
    in 0..randomize_start_s, reaches the value over ramp_s, and reverts to its default at
    `end_s` (start + duration or expiry, whichever is first). `modification` rises by one or more
    each time the cloud changes the event (2030.5's mRID version), cancellation included.
    """

    event_id: str
    modification: int
    device_id: str
    site_id: str
    control: ControlMode
    value: int
    start: int
    duration_s: int
    expiry: int
    issued_ms: int
    status: EventStatus = EventStatus.SCHEDULED
    ramp_s: int = 0
    randomize_start_s: int = 0

    @property
    def end_s(self) -> int:
        """When the device must no longer apply the command (exclusive)."""
        return min(self.start + self.duration_s, self.expiry)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical payload: tells a redelivered command from a different one
        under the same modification number."""
        return hashlib.sha256(encode_command(self)).digest()


def _command_map(c: DispatchCommand) -> dict[int, Any]:
    # Enum members go out as plain ints; anything else is passed through for the checks to judge.
    return {
        C_KIND: COMMAND_KIND,
        C_EVENT: c.event_id,
        C_MODIFICATION: c.modification,
        C_DEVICE: c.device_id,
        C_SITE: c.site_id,
        C_STATUS: _plain(c.status, EventStatus),
        C_CONTROL: _plain(c.control, ControlMode),
        C_VALUE: c.value,
        C_START: c.start,
        C_DURATION: c.duration_s,
        C_RAMP: c.ramp_s,
        C_RANDOMIZE: c.randomize_start_s,
        C_EXPIRY: c.expiry,
        C_ISSUED_MS: c.issued_ms,
    }


def _plain(value: object, enum: type[IntEnum]) -> object:
    return int(value) if isinstance(value, enum) else value


def _command_from_map(m: dict[int, Any]) -> DispatchCommand:
    """Check every field; the control last, so an unknown control (252, not 253) is reported
    only for a command that is otherwise well formed."""
    status_value = wiremap.uint(m, C_STATUS, "status", max(_EVENT_STATUSES))
    event_id = wiremap.text(m, C_EVENT, "event", MAX_ID, min_len=1)
    modification = wiremap.uint(m, C_MODIFICATION, "modification", MAX_UINT32)
    device_id = wiremap.text(m, C_DEVICE, "device", MAX_ID, min_len=1)
    site_id = wiremap.text(m, C_SITE, "site", MAX_ID, min_len=1)
    start = wiremap.uint(m, C_START, "start")
    duration_s = wiremap.uint(m, C_DURATION, "duration", MAX_UINT32)
    ramp_s = wiremap.uint(m, C_RAMP, "ramp", MAX_UINT32)
    randomize_start_s = wiremap.uint(m, C_RANDOMIZE, "randomize_start", MAX_UINT32)
    expiry = wiremap.uint(m, C_EXPIRY, "expiry")
    issued_ms = wiremap.uint(m, C_ISSUED_MS, "issued_ms")
    raw_value = m.get(C_VALUE)
    if not wiremap.is_int(raw_value, -MAX_ABS_W, MAX_ABS_W):
        raise DispatchFormatError(f"field value must be an integer, got {raw_value!r}")
    control_value = wiremap.uint(m, C_CONTROL, "control")
    control = _CONTROLS.get(control_value)
    if control is None:
        raise DispatchFormatError(f"unknown control {control_value}", unknown_control=True)
    lo, hi = control.value_range
    if not lo <= raw_value <= hi:
        raise DispatchFormatError(f"{control.wire_name} value {raw_value} is not in {lo}..{hi}")
    return DispatchCommand(
        event_id=event_id,
        modification=modification,
        device_id=device_id,
        site_id=site_id,
        control=control,
        value=raw_value,
        start=start,
        duration_s=duration_s,
        expiry=expiry,
        issued_ms=issued_ms,
        status=_EVENT_STATUSES[status_value],
        ramp_s=ramp_s,
        randomize_start_s=randomize_start_s,
    )


def encode_command(c: DispatchCommand) -> bytes:
    """Canonical CBOR payload; raises DispatchFormatError if a field is invalid (the decoder's
    checks run here too, so the cloud cannot sign a command every device would refuse)."""
    m = _command_map(c)
    _checked(_command_from_map, m)
    return cbor2.dumps(m)


def decode_command(payload: bytes) -> DispatchCommand:
    """Parse a command payload (no signature check); raises DispatchFormatError."""
    return _decode(payload, COMMAND_KIND, _COMMAND_KEYS, _command_from_map, _command_map)


def sign_command(c: DispatchCommand, dispatch_key: Ed25519PrivateKey, deployment: bytes) -> bytes:
    """The COSE_Sign1 envelope the cloud publishes on the device's commands topic."""
    return cose.sign(encode_command(c), dispatch_key, command_aad(deployment))


@dataclass(frozen=True, slots=True)
class Accepted:
    """The command is authentic, for this device, in time and new (or a redelivery).

    `duplicate` is True for the exact command already accepted (same event, modification and
    bytes): QoS 1 redelivers, and a persistent session replays what an offline device missed.
    The device must not restart it; it answers with the event's current status again, so a
    lost acknowledgement is replaced.
    """

    command: DispatchCommand
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """The command is refused and never executed. `event_id` and `modification` are what the
    payload claimed, for the acknowledgement ("" and 0 when unreadable): unauthenticated when
    the signature was the problem."""

    status: ResponseStatus
    detail: str
    event_id: str = ""
    modification: int = 0


def check_command(
    envelope: bytes,
    dispatch_key: bytes,
    deployment: bytes,
    device_id: str,
    seen: Mapping[str, tuple[int, bytes]],
    now: int,
    supported: Collection[ControlMode] | None = None,
) -> Accepted | Rejected:
    """What a device does with command bytes from its commands topic.

    `dispatch_key` is the pinned raw Ed25519 key, `seen` maps event id to the (modification,
    digest) of the last command accepted for it (see `remember`), `now` is Unix seconds,
    `supported` the controls this device can apply (None: all). Checks, in order:

    1. envelope structure, signature (pinned key, this deployment), payload: 253, or 252 for an
       unknown control;
    2. addressed to this device: 253;
    3. a control the device supports: 252;
    4. not over (now >= end_s): 254;
    5. modification: below the last accepted, or equal with other content, 253; equal with the
       same content is a duplicate (Accepted, duplicate=True).

    The target is checked before the control, so a command for another device is always 253.
    """
    try:
        s1 = cose.parse(envelope)
    except cose.EnvelopeError as exc:
        return Rejected(ResponseStatus.REJECTED_INVALID, f"malformed envelope: {exc}")
    event_id, modification, target = _claimed(s1.payload)

    def reject(status: ResponseStatus, detail: str) -> Rejected:
        return Rejected(status, detail, event_id, modification)

    try:
        cose.verify(s1, dispatch_key, command_aad(deployment))
    except cose.SignatureError as exc:
        return reject(ResponseStatus.REJECTED_INVALID, f"not signed by the dispatch key: {exc}")
    try:
        cmd = decode_command(s1.payload)
    except DispatchFormatError as exc:
        if exc.unknown_control and target == device_id:
            return reject(ResponseStatus.REJECTED_NOT_APPLICABLE, str(exc))
        if exc.unknown_control:
            return reject(ResponseStatus.REJECTED_INVALID, f"command is for device {target!r}")
        return reject(ResponseStatus.REJECTED_INVALID, f"malformed command: {exc}")
    if cmd.device_id != device_id:
        return reject(ResponseStatus.REJECTED_INVALID, f"command is for device {cmd.device_id!r}")
    if supported is not None and cmd.control not in supported:
        return reject(
            ResponseStatus.REJECTED_NOT_APPLICABLE, f"{cmd.control.wire_name} is not supported"
        )
    if now >= cmd.end_s:
        return reject(ResponseStatus.REJECTED_LATE, f"command ended at {cmd.end_s}, now {now}")
    last = seen.get(cmd.event_id)
    if last is not None:
        last_modification, last_digest = last
        if cmd.modification < last_modification:
            return reject(
                ResponseStatus.REJECTED_INVALID,
                f"modification {cmd.modification} is older than {last_modification}",
            )
        if cmd.modification == last_modification:
            if cmd.digest == last_digest:
                return Accepted(cmd, duplicate=True)
            return reject(
                ResponseStatus.REJECTED_INVALID,
                f"modification {cmd.modification} was already accepted with other content",
            )
    return Accepted(cmd)


def remember(seen: MutableMapping[str, tuple[int, bytes]], command: DispatchCommand) -> None:
    """Record an accepted command, so a replay of it or of anything older is caught."""
    seen[command.event_id] = (command.modification, command.digest)


def _claimed(payload: bytes) -> tuple[str, int, str]:
    """Event id, modification and target device as the payload claims them, best effort and
    unchecked: only to name the event in a rejection."""
    try:
        m = cbor2.loads(payload)
    except Exception:  # cbor2 raises several types for bad input
        return "", 0, ""
    if not isinstance(m, dict):
        return "", 0, ""
    event_id, modification, target = m.get(C_EVENT), m.get(C_MODIFICATION), m.get(C_DEVICE)
    return (
        event_id if type(event_id) is str and len(event_id) <= MAX_ID else "",
        modification if wiremap.is_uint(modification, MAX_UINT32) else 0,
        target if type(target) is str else "",
    )


# --- acknowledgements -------------------------------------------------------------------------

A_KIND, A_EVENT, A_MODIFICATION, A_DEVICE, A_STATUS, A_AT_MS, A_MEASURED_W, A_DETAIL = range(8)
_ACK_KEYS = frozenset(range(8))


@dataclass(frozen=True, slots=True)
class DispatchAck:
    """A device's response to one modification of one event (2030.5 Response).

    `event_id` is "" only for a rejection of a command whose payload could not be read.
    `measured_w` is the device's measured power for the controlled quantity when it responds
    (sign as in protocol/telemetry.py), None if it has none. `detail` says why, for rejections
    and failures (empty otherwise, and then omitted from the payload).
    """

    event_id: str
    modification: int
    device_id: str
    status: ResponseStatus
    at_ms: int
    measured_w: int | None = None
    detail: str = ""


def _ack_map(a: DispatchAck) -> dict[int, Any]:
    m: dict[int, Any] = {
        A_KIND: ACK_KIND,
        A_EVENT: a.event_id,
        A_MODIFICATION: a.modification,
        A_DEVICE: a.device_id,
        A_STATUS: _plain(a.status, ResponseStatus),
        A_AT_MS: a.at_ms,
    }
    if a.measured_w is not None:
        m[A_MEASURED_W] = a.measured_w
    if a.detail != "":
        m[A_DETAIL] = a.detail
    return m


def _ack_from_map(m: dict[int, Any]) -> DispatchAck:
    status_value = wiremap.uint(m, A_STATUS, "status", max(_RESPONSE_STATUSES))
    status = _RESPONSE_STATUSES.get(status_value)
    if status is None:
        raise DispatchFormatError(f"{status_value} is not a response status")
    event_id = wiremap.text(m, A_EVENT, "event", MAX_ID)
    if not event_id and not status.is_rejection:
        raise DispatchFormatError("only a rejection may leave the event id empty")
    measured = m.get(A_MEASURED_W)
    if A_MEASURED_W in m and not wiremap.is_int(measured, -MAX_ABS_W, MAX_ABS_W):
        raise DispatchFormatError(f"field measured_w must be an integer, got {measured!r}")
    return DispatchAck(
        event_id=event_id,
        modification=wiremap.uint(m, A_MODIFICATION, "modification", MAX_UINT32),
        device_id=wiremap.text(m, A_DEVICE, "device", MAX_ID, min_len=1),
        status=status,
        at_ms=wiremap.uint(m, A_AT_MS, "at_ms"),
        measured_w=measured if A_MEASURED_W in m else None,
        detail=wiremap.text(m, A_DETAIL, "detail", MAX_DETAIL) if A_DETAIL in m else "",
    )


def encode_ack(a: DispatchAck) -> bytes:
    """Canonical CBOR payload; raises DispatchFormatError if a field is invalid."""
    m = _ack_map(a)
    _checked(_ack_from_map, m)
    return cbor2.dumps(m)


def decode_ack(payload: bytes) -> DispatchAck:
    """Parse an acknowledgement payload (no signature check); raises DispatchFormatError."""
    return _decode(payload, ACK_KIND, _ACK_KEYS, _ack_from_map, _ack_map)


def sign_ack(a: DispatchAck, device_key: Ed25519PrivateKey, deployment: bytes) -> bytes:
    """The COSE_Sign1 envelope a device publishes on its acks topic."""
    return cose.sign(encode_ack(a), device_key, ack_aad(deployment))


def reject_ack(r: Rejected, device_id: str, at_ms: int) -> DispatchAck:
    """The acknowledgement that answers a rejected command."""
    return DispatchAck(
        r.event_id, r.modification, device_id, r.status, at_ms, detail=r.detail[:MAX_DETAIL]
    )


class AckRejected(ValueError):
    """Acknowledgement bytes the cloud refuses."""


def check_ack(
    envelope: bytes, device_public_key: bytes, deployment: bytes, device_id: str
) -> DispatchAck:
    """The acknowledgement in `envelope` if the device `device_id` (the topic's device, whose
    registered key is `device_public_key`) signed it for this deployment; raises AckRejected.

    The signature is checked before the payload is decoded, so bytes from an unknown signer are
    never interpreted (as protocol/verify.py does for records).
    """
    try:
        s1 = cose.parse(envelope)
        cose.verify(s1, device_public_key, ack_aad(deployment))
        ack = decode_ack(s1.payload)
    except (cose.EnvelopeError, cose.SignatureError, DispatchFormatError) as exc:
        raise AckRejected(str(exc)) from None
    if ack.device_id != device_id:
        raise AckRejected(f"acknowledgement names device {ack.device_id!r}, not {device_id!r}")
    return ack


T = TypeVar("T")


# --- shared -----------------------------------------------------------------------------------


def _checked(from_map: Callable[[dict[int, Any]], object], m: dict[int, Any]) -> None:
    """Run a decoder's field checks on a map about to be encoded, as a DispatchFormatError."""
    try:
        from_map(m)
    except DispatchFormatError:
        raise
    except WireFormatError as exc:
        raise DispatchFormatError(str(exc)) from None


def _decode(
    payload: bytes,
    kind: str,
    keys: frozenset[int],
    from_map: Callable[[dict[int, Any]], T],
    to_map: Callable[[T], dict[int, Any]],
) -> T:
    try:
        m = wiremap.load_map(payload, kind, keys, MAX_MESSAGE_BYTES)
        obj = from_map(m)
        wiremap.check_canonical(to_map(obj), payload)
    except DispatchFormatError:
        raise
    except WireFormatError as exc:
        raise DispatchFormatError(str(exc), non_canonical=exc.non_canonical) from None
    return obj
