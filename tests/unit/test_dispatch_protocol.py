"""Dispatch commands and acknowledgements: wire format, signatures and the device's checks."""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import cose, statements
from protocol import dispatch as dp
from protocol.dispatch import (
    Accepted,
    AckRejected,
    ControlMode,
    DispatchAck,
    DispatchCommand,
    DispatchFormatError,
    EventStatus,
    Rejected,
    ResponseStatus,
)
from protocol.verify import RecordRejected, check_envelope

DISPATCH_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
DISPATCH_PUB = cose.public_bytes(DISPATCH_KEY.public_key())
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
DEVICE_PUB = cose.public_bytes(DEVICE_KEY.public_key())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
DEPLOYMENT = b"gridmint-dispatch-tests"
DEVICE = "home-17.battery"
NOW = 1_800_000_000

COMMAND = DispatchCommand(
    event_id="ev-2026-0042",
    modification=3,
    device_id=DEVICE,
    site_id="home-17",
    control=ControlMode.OP_MOD_FIXED_W,
    value=7500,  # discharge at 75 % of the battery's maximum rate
    start=NOW + 60,
    duration_s=1800,
    expiry=NOW + 60 + 1800,
    issued_ms=NOW * 1000,
    ramp_s=30,
    randomize_start_s=120,
)
ACK = DispatchAck(
    event_id=COMMAND.event_id,
    modification=COMMAND.modification,
    device_id=DEVICE,
    status=ResponseStatus.STARTED,
    at_ms=(NOW + 90) * 1000,
    measured_w=3650,
)


def _check(envelope: bytes, **kwargs: Any) -> Accepted | Rejected:
    args: dict[str, Any] = {
        "dispatch_key": DISPATCH_PUB,
        "deployment": DEPLOYMENT,
        "device_id": DEVICE,
        "seen": {},
        "now": NOW,
    }
    args.update(kwargs)
    return dp.check_command(envelope, **args)


def _status(result: Accepted | Rejected) -> ResponseStatus | None:
    return result.status if isinstance(result, Rejected) else None


def _signed_map(m: dict[int, Any], key: Ed25519PrivateKey = DISPATCH_KEY) -> bytes:
    """A command envelope around an arbitrary map, signed properly: tests what the device does
    with authentic but bad content."""
    return cose.sign(cbor2.dumps(m), key, dp.command_aad(DEPLOYMENT))


# --- strategies -------------------------------------------------------------------------------

uint32 = st.integers(min_value=0, max_value=dp.MAX_UINT32)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.text(min_size=1, max_size=64)


@st.composite
def commands(draw: st.DrawFn) -> DispatchCommand:
    control = draw(st.sampled_from(ControlMode))
    lo, hi = control.value_range
    return DispatchCommand(
        event_id=draw(ids),
        modification=draw(uint32),
        device_id=draw(ids),
        site_id=draw(ids),
        control=control,
        value=draw(st.integers(min_value=lo, max_value=hi)),
        start=draw(uint64),
        duration_s=draw(uint32),
        expiry=draw(uint64),
        issued_ms=draw(uint64),
        status=draw(st.sampled_from(EventStatus)),
        ramp_s=draw(uint32),
        randomize_start_s=draw(uint32),
    )


@st.composite
def acks(draw: st.DrawFn) -> DispatchAck:
    status = draw(st.sampled_from(ResponseStatus))
    return DispatchAck(
        event_id=draw(st.text(min_size=0 if status.is_rejection else 1, max_size=64)),
        modification=draw(uint32),
        device_id=draw(ids),
        status=status,
        at_ms=draw(uint64),
        measured_w=draw(st.none() | st.integers(min_value=-dp.MAX_ABS_W, max_value=dp.MAX_ABS_W)),
        detail=draw(st.text(max_size=128)),
    )


# --- round trips ------------------------------------------------------------------------------


@given(commands())
def test_command_round_trip(cmd: DispatchCommand) -> None:
    payload = dp.encode_command(cmd)
    assert dp.decode_command(payload) == cmd
    assert payload == cbor2.dumps(cbor2.loads(payload), canonical=True)
    envelope = dp.sign_command(cmd, DISPATCH_KEY, DEPLOYMENT)
    now = NOW
    result = _check(envelope, device_id=cmd.device_id, now=now)
    if now < cmd.end_s:
        assert result == Accepted(cmd)
    else:
        assert _status(result) is ResponseStatus.REJECTED_LATE


@given(acks())
def test_ack_round_trip(ack: DispatchAck) -> None:
    payload = dp.encode_ack(ack)
    assert dp.decode_ack(payload) == ack
    assert payload == cbor2.dumps(cbor2.loads(payload), canonical=True)
    envelope = dp.sign_ack(ack, DEVICE_KEY, DEPLOYMENT)
    assert dp.check_ack(envelope, DEVICE_PUB, DEPLOYMENT, ack.device_id) == ack


def test_wire_names_and_codes_are_the_standards() -> None:
    assert [c.wire_name for c in ControlMode] == [
        "opModMaxLimW",
        "opModFixedW",
        "opModTargetW",
        "opModExpLimW",
        "opModImpLimW",
        "opModConnect",
    ]
    assert [int(s) for s in EventStatus] == [0, 1, 2, 3, 4]
    assert {s.name: int(s) for s in ResponseStatus} == {
        "RECEIVED": 1,
        "STARTED": 2,
        "COMPLETED": 3,
        "OPTED_OUT": 4,
        "CANCELLED": 6,
        "SUPERSEDED": 7,
        "FAILED": 251,
        "REJECTED_NOT_APPLICABLE": 252,
        "REJECTED_INVALID": 253,
        "REJECTED_LATE": 254,
    }


# --- the device's checks ----------------------------------------------------------------------


def test_a_valid_command_is_accepted_and_a_redelivery_is_a_duplicate() -> None:
    envelope = dp.sign_command(COMMAND, DISPATCH_KEY, DEPLOYMENT)
    assert _check(envelope) == Accepted(COMMAND)
    seen: dict[str, tuple[int, bytes]] = {}
    dp.remember(seen, COMMAND)
    assert _check(envelope, seen=seen) == Accepted(COMMAND, duplicate=True)
    # The next modification (a cancel, here) is new again.
    cancel = dataclasses.replace(COMMAND, modification=4, status=EventStatus.CANCELLED)
    result = _check(dp.sign_command(cancel, DISPATCH_KEY, DEPLOYMENT), seen=seen)
    assert result == Accepted(cancel)
    assert not cancel.status.runs


def test_stale_or_conflicting_modifications_are_253() -> None:
    seen: dict[str, tuple[int, bytes]] = {}
    dp.remember(seen, COMMAND)
    older = dataclasses.replace(COMMAND, modification=2)
    result = _check(dp.sign_command(older, DISPATCH_KEY, DEPLOYMENT), seen=seen)
    assert result == Rejected(
        ResponseStatus.REJECTED_INVALID,
        "modification 2 is older than 3",
        COMMAND.event_id,
        2,
    )
    # Same modification number, other content: not a redelivery, so never executed.
    changed = dataclasses.replace(COMMAND, value=10_000)
    result = _check(dp.sign_command(changed, DISPATCH_KEY, DEPLOYMENT), seen=seen)
    assert _status(result) is ResponseStatus.REJECTED_INVALID
    # Another event's history does not matter.
    other_event = dataclasses.replace(COMMAND, event_id="ev-other", modification=0)
    result = _check(dp.sign_command(other_event, DISPATCH_KEY, DEPLOYMENT), seen=seen)
    assert result == Accepted(other_event)


@pytest.mark.parametrize(
    ("key", "deployment", "device"),
    [
        (OTHER_KEY, DEPLOYMENT, DEVICE),  # not the pinned dispatch key
        (DEVICE_KEY, DEPLOYMENT, DEVICE),  # a device cannot command itself or others
        (DISPATCH_KEY, b"gridmint-demo", DEVICE),  # another deployment
        (DISPATCH_KEY, DEPLOYMENT, "home-18.battery"),  # another device
    ],
)
def test_wrong_signer_deployment_or_device_is_253(
    key: Ed25519PrivateKey, deployment: bytes, device: str
) -> None:
    cmd = dataclasses.replace(COMMAND, device_id=device)
    result = _check(dp.sign_command(cmd, key, deployment))
    assert _status(result) is ResponseStatus.REJECTED_INVALID
    assert isinstance(result, Rejected)
    assert result.event_id == COMMAND.event_id  # named, so the cloud can match the answer


def test_signatures_for_other_purposes_are_253() -> None:
    payload = dp.encode_command(COMMAND)
    token_aad = cose.sign(payload, DISPATCH_KEY, DEPLOYMENT)  # the bare deployment: a token's
    ack_aad = cose.sign(payload, DISPATCH_KEY, dp.ack_aad(DEPLOYMENT))
    probe = statements.make_probe(DEVICE, NOW * 1000, DISPATCH_KEY, DEPLOYMENT)
    ack = dp.sign_ack(ACK, DISPATCH_KEY, DEPLOYMENT)
    for envelope in (token_aad, ack_aad, probe, ack):
        assert _status(_check(envelope)) is ResponseStatus.REJECTED_INVALID


def test_a_command_is_never_a_token() -> None:
    envelope = dp.sign_command(COMMAND, DISPATCH_KEY, DEPLOYMENT)
    with pytest.raises(RecordRejected):
        check_envelope(envelope, DISPATCH_PUB, dp.command_aad(DEPLOYMENT))
    # Even signed under a token's AAD, the payload is not a record.
    same_aad = cose.sign(dp.encode_command(COMMAND), DISPATCH_KEY, DEPLOYMENT)
    with pytest.raises(RecordRejected):
        check_envelope(same_aad, DISPATCH_PUB, DEPLOYMENT)


def test_every_flipped_bit_is_refused() -> None:
    envelope = dp.sign_command(COMMAND, DISPATCH_KEY, DEPLOYMENT)
    for i in range(len(envelope)):
        for bit in range(8):
            mutated = envelope[:i] + bytes([envelope[i] ^ (1 << bit)]) + envelope[i + 1 :]
            result = _check(mutated)
            assert _status(result) is ResponseStatus.REJECTED_INVALID, (i, bit, result)


def test_expired_or_over_is_254() -> None:
    envelope = dp.sign_command(COMMAND, DISPATCH_KEY, DEPLOYMENT)
    assert isinstance(_check(envelope, now=COMMAND.end_s - 1), Accepted)
    for now in (COMMAND.end_s, COMMAND.end_s + 3600):
        assert _status(_check(envelope, now=now)) is ResponseStatus.REJECTED_LATE
    # Expiry before the event's end ends it early.
    early = dataclasses.replace(COMMAND, expiry=COMMAND.start + 10)
    result = _check(dp.sign_command(early, DISPATCH_KEY, DEPLOYMENT), now=COMMAND.start + 10)
    assert _status(result) is ResponseStatus.REJECTED_LATE


def test_unknown_or_unsupported_control_is_252() -> None:
    m = dp._command_map(COMMAND)
    m[dp.C_CONTROL] = 99
    result = _check(_signed_map(m))
    assert result == Rejected(
        ResponseStatus.REJECTED_NOT_APPLICABLE, "unknown control 99", COMMAND.event_id, 3
    )
    # ... but for another device it is simply not ours.
    m[dp.C_DEVICE] = "home-18.battery"
    assert _status(_check(_signed_map(m))) is ResponseStatus.REJECTED_INVALID
    # A known control this device cannot apply (a PV-only device asked to discharge).
    envelope = dp.sign_command(COMMAND, DISPATCH_KEY, DEPLOYMENT)
    result = _check(envelope, supported={ControlMode.OP_MOD_MAX_LIM_W})
    assert _status(result) is ResponseStatus.REJECTED_NOT_APPLICABLE
    assert isinstance(_check(envelope, supported=set(ControlMode)), Accepted)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (dp.C_VALUE, 10_001),  # over 100.00 % for opModFixedW
        (dp.C_VALUE, 7500.0),  # a float
        (dp.C_VALUE, True),
        (dp.C_MODIFICATION, 2**32),
        (dp.C_MODIFICATION, -1),
        (dp.C_MODIFICATION, True),
        (dp.C_STATUS, 5),
        (dp.C_START, "soon"),
        (dp.C_EVENT, ""),
        (dp.C_KIND, "gridmint/dispatch/v2"),
        (dp.C_ISSUED_MS + 1, 0),  # unknown key
    ],
)
def test_authentic_but_malformed_commands_are_253(key: int, value: object) -> None:
    m = dp._command_map(COMMAND)
    m[key] = value
    result = _check(_signed_map(dict(sorted(m.items()))))
    assert _status(result) is ResponseStatus.REJECTED_INVALID
    # Refused by that field's check (a clear reason), not only by the canonical re-encoding.
    assert isinstance(result, Rejected)
    assert "canonical" not in result.detail, result.detail


def test_non_canonical_commands_are_refused() -> None:
    m = dp._command_map(COMMAND)
    payload = dp.encode_command(COMMAND)
    reordered = cbor2.dumps(dict(reversed(list(m.items()))))
    indefinite = b"\xbf" + payload[1:] + b"\xff"
    for variant in (reordered, indefinite):
        with pytest.raises(DispatchFormatError) as caught:
            dp.decode_command(variant)
        assert caught.value.non_canonical
        envelope = cose.sign(variant, DISPATCH_KEY, dp.command_aad(DEPLOYMENT))
        assert _status(_check(envelope)) is ResponseStatus.REJECTED_INVALID


@pytest.mark.parametrize(
    "change",
    [
        {"value": -10_001},
        {"value": True},
        {"control": 99},
        {"control": ControlMode.OP_MOD_CONNECT, "value": 2},
        {"control": ControlMode.OP_MOD_EXP_LIM_W, "value": -1},
        {"control": ControlMode.OP_MOD_MAX_LIM_W, "value": 10_001},
        {"modification": 2**32},
        {"device_id": ""},
        {"start": 1.0e9},
    ],
)
def test_the_cloud_cannot_sign_a_command_every_device_would_refuse(
    change: dict[str, object],
) -> None:
    with pytest.raises(DispatchFormatError):
        dp.sign_command(dataclasses.replace(COMMAND, **change), DISPATCH_KEY, DEPLOYMENT)  # type: ignore[arg-type]


def test_garbage_envelopes_are_253_without_an_event() -> None:
    for data in (b"", b"\x00", cbor2.dumps([1, 2, 3]), b"\xd2" * 5000):
        result = _check(data)
        assert isinstance(result, Rejected)
        assert result.status is ResponseStatus.REJECTED_INVALID
        assert (result.event_id, result.modification) == ("", 0)


# --- acknowledgements -------------------------------------------------------------------------


def test_ack_signature_checks() -> None:
    envelope = dp.sign_ack(ACK, DEVICE_KEY, DEPLOYMENT)
    assert dp.check_ack(envelope, DEVICE_PUB, DEPLOYMENT, DEVICE) == ACK
    bad = [
        (dp.sign_ack(ACK, OTHER_KEY, DEPLOYMENT), DEVICE),  # another key
        (dp.sign_ack(ACK, DEVICE_KEY, b"gridmint-demo"), DEVICE),  # another deployment
        (envelope, "home-18.battery"),  # published on another device's topic
        (cose.sign(dp.encode_ack(ACK), DEVICE_KEY, DEPLOYMENT), DEVICE),  # a token's AAD
        (cose.sign(dp.encode_ack(ACK), DEVICE_KEY, dp.command_aad(DEPLOYMENT)), DEVICE),
    ]
    for data, device in bad:
        with pytest.raises(AckRejected):
            dp.check_ack(data, DEVICE_PUB, DEPLOYMENT, device)
    for i in range(len(envelope)):
        for bit in range(8):
            mutated = envelope[:i] + bytes([envelope[i] ^ (1 << bit)]) + envelope[i + 1 :]
            with pytest.raises(AckRejected):
                dp.check_ack(mutated, DEVICE_PUB, DEPLOYMENT, DEVICE)


def test_a_command_envelope_is_not_an_ack() -> None:
    envelope = cose.sign(dp.encode_command(COMMAND), DEVICE_KEY, dp.ack_aad(DEPLOYMENT))
    with pytest.raises(AckRejected):
        dp.check_ack(envelope, DEVICE_PUB, DEPLOYMENT, DEVICE)


@pytest.mark.parametrize(
    "change",
    [
        {"status": 5},  # opt-in: not a status a gridmint device sends
        {"status": ResponseStatus.STARTED, "event_id": ""},  # only a rejection may omit it
        {"measured_w": 1.5},
        {"measured_w": dp.MAX_ABS_W + 1},
        {"detail": "x" * 129},
        {"at_ms": -1},
    ],
)
def test_bad_acks_are_refused(change: dict[str, object]) -> None:
    bad = dataclasses.replace(ACK, **change)  # type: ignore[arg-type]
    with pytest.raises(DispatchFormatError):
        dp.encode_ack(bad)
    m = dp._ack_map(bad)
    envelope = cose.sign(cbor2.dumps(dict(sorted(m.items()))), DEVICE_KEY, dp.ack_aad(DEPLOYMENT))
    with pytest.raises(AckRejected):
        dp.check_ack(envelope, DEVICE_PUB, DEPLOYMENT, DEVICE)


def test_an_empty_detail_is_omitted_so_one_ack_has_one_encoding() -> None:
    m = dp._ack_map(ACK)
    assert dp.A_DETAIL not in m
    m[dp.A_DETAIL] = ""
    with pytest.raises(DispatchFormatError) as caught:
        dp.decode_ack(cbor2.dumps(m))
    assert caught.value.non_canonical


def test_a_rejection_answers_with_a_valid_ack() -> None:
    result = _check(dp.sign_command(COMMAND, OTHER_KEY, DEPLOYMENT))
    assert isinstance(result, Rejected)
    ack = dp.reject_ack(result, DEVICE, NOW * 1000)
    assert ack.status is ResponseStatus.REJECTED_INVALID
    assert ack.event_id == COMMAND.event_id
    envelope = dp.sign_ack(ack, DEVICE_KEY, DEPLOYMENT)
    assert dp.check_ack(envelope, DEVICE_PUB, DEPLOYMENT, DEVICE) == ack
    # An unreadable command still gets an answer, with no event id.
    unreadable = _check(b"\x00")
    assert isinstance(unreadable, Rejected)
    blank = dp.reject_ack(unreadable, DEVICE, NOW * 1000)
    assert blank.event_id == ""
    assert dp.decode_ack(dp.encode_ack(blank)) == blank
