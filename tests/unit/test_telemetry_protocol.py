"""Live telemetry's wire format: round trips, and strict refusal of everything else."""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import telemetry as tm
from protocol.telemetry import DeviceState, Health, Telemetry, TelemetryFormatError

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
# Small values too: CBOR heads change at 24, 256, 65536 and 2**32.
uints = st.one_of(st.integers(min_value=0, max_value=70_000), uint64)
watts = st.integers(min_value=-tm.MAX_ABS_W, max_value=tm.MAX_ABS_W)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "device_id": st.text(min_size=1, max_size=64),
    "boot": uints,
    "seq": uints,
    "at_ms": uints,
    "pv_w": st.none() | st.integers(min_value=0, max_value=tm.MAX_ABS_W),
    "battery_w": st.none() | watts,
    "soc_permille": st.none() | st.integers(min_value=0, max_value=1000),
    "grid_w": st.none() | watts,
    "health": st.sampled_from([Health.OK, Health.FAULT, Health.CLOCK_UNSYNCHRONISED, Health(3)]),
    "backlog": uints,
}
samples = st.fixed_dictionaries(FIELDS).map(lambda values: Telemetry(**values))

SAMPLE = Telemetry(
    device_id="home-17.pv",
    boot=3,
    seq=41,
    at_ms=1_800_000_000_123,
    pv_w=2450,
    battery_w=-800,
    soc_permille=615,
    grid_w=-1200,
    health=Health.OK,
    backlog=0,
)


def _items(m: dict[int, Any]) -> bytes:
    return b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in m.items())


def test_strategy_covers_every_field() -> None:
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Telemetry)}


@given(samples)
def test_round_trip(t: Telemetry) -> None:
    payload = tm.encode(t)
    assert tm.decode(payload) == t
    assert tm.encode(tm.decode(payload)) == payload
    # Plain encoding is canonical only while keys go out in ascending order.
    assert payload == cbor2.dumps(cbor2.loads(payload), canonical=True)


@given(samples, st.data())
def test_any_changed_byte_is_refused_or_is_another_canonical_sample(
    t: Telemetry, data: st.DataObject
) -> None:
    payload = tm.encode(t)
    i = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    mutated = payload[:i] + bytes([payload[i] ^ (1 << bit)]) + payload[i + 1 :]
    # Never any other exception, and never two byte strings for one sample.
    try:
        other = tm.decode(mutated)
    except TelemetryFormatError:
        return
    assert tm.encode(other) == mutated
    assert other != t


def test_signs_and_derived_values() -> None:
    # Positive is into the home's bus: 2450 PV + (-800 charging) + (-1200 exporting) = 450 load.
    assert SAMPLE.load_w == 450
    assert dataclasses.replace(SAMPLE, grid_w=None).load_w is None
    assert SAMPLE.state is DeviceState.OK
    assert dataclasses.replace(SAMPLE, backlog=5).state is DeviceState.BUFFERING
    unsynced = dataclasses.replace(SAMPLE, backlog=5, health=Health.CLOCK_UNSYNCHRONISED)
    assert unsynced.state is DeviceState.CLOCK_UNSYNCHRONISED
    faulty = dataclasses.replace(unsynced, health=Health(3))
    assert faulty.state is DeviceState.FAULT


def test_absent_channels_are_omitted_not_zero() -> None:
    bare = Telemetry(device_id="d", boot=0, seq=0, at_ms=0)
    m = cbor2.loads(tm.encode(bare))
    assert set(m) == {tm.K_KIND, tm.K_DEVICE, tm.K_BOOT, tm.K_SEQ, tm.K_AT_MS}.union(
        {tm.K_HEALTH, tm.K_BACKLOG}
    )
    assert tm.decode(tm.encode(bare)) == bare


def _map() -> dict[int, Any]:
    return tm.to_map(SAMPLE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (tm.K_PV_W, 2450.0),  # a float, even an integral one
        (tm.K_GRID_W, True),  # a bool is not an integer on the wire
        (tm.K_SEQ, True),
        (tm.K_SEQ, -1),
        (tm.K_SEQ, 2**64),  # a bignum
        (tm.K_PV_W, -1),  # PV does not flow out of the bus
        (tm.K_BATTERY_W, tm.MAX_ABS_W + 1),
        (tm.K_SOC, 1001),
        (tm.K_HEALTH, 4),  # no such flag
        (tm.K_HEALTH, False),
        (tm.K_DEVICE, ""),
        (tm.K_DEVICE, "x" * 65),
        (tm.K_DEVICE, b"home"),
        (tm.K_KIND, "gridmint/telemetry/v2"),
        (tm.K_KIND, 1),  # what a record's key 0 holds
        (11, 0),  # unknown key
    ],
)
def test_bad_fields_are_refused(key: int, value: object) -> None:
    m = _map()
    m[key] = value
    with pytest.raises(TelemetryFormatError) as caught:
        tm.decode(cbor2.dumps(dict(sorted(m.items()))))
    # Refused by the field's own check, with a message naming it, not only because the
    # re-encoding differs.
    assert not caught.value.non_canonical, caught.value


@pytest.mark.parametrize("key", [tm.K_DEVICE, tm.K_BOOT, tm.K_SEQ, tm.K_AT_MS, tm.K_HEALTH])
def test_missing_required_field_is_refused(key: int) -> None:
    m = _map()
    del m[key]
    with pytest.raises(TelemetryFormatError):
        tm.decode(cbor2.dumps(m))


def test_non_canonical_encodings_are_refused() -> None:
    m = _map()
    payload = tm.encode(SAMPLE)
    assert tm.decode(payload) == SAMPLE
    seq_value = cbor2.dumps(SAMPLE.seq)
    assert len(seq_value) == 2  # 41: one head byte plus one
    variants = {
        "keys descending": cbor2.dumps(dict(reversed(list(m.items())))),
        "indefinite-length map": b"\xbf" + _items(m) + b"\xff",
        "long-form integer": payload.replace(
            cbor2.dumps(tm.K_SEQ) + seq_value,
            cbor2.dumps(tm.K_SEQ) + b"\x19\x00" + seq_value[1:],
        ),
        "duplicate key": bytes([payload[0] + 1]) + payload[1:] + cbor2.dumps(tm.K_BACKLOG) + b"\0",
        "trailing byte": payload + b"\0",
    }
    for name, variant in variants.items():
        assert variant != payload, name
        with pytest.raises(TelemetryFormatError) as caught:
            tm.decode(variant)
        if name != "trailing byte":  # cbor2 itself refuses extra data
            assert caught.value.non_canonical, name


def test_oversized_payload_is_refused_before_parsing() -> None:
    m = _map()
    m[tm.K_DEVICE] = "x" * tm.MAX_TELEMETRY_BYTES
    with pytest.raises(TelemetryFormatError, match="over"):
        tm.decode(cbor2.dumps(m))


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", cbor2.dumps([0, 1]), cbor2.dumps({"0": tm.KIND}), b"\xa1" + b"\x00" * 600],
)
def test_garbage_is_refused_cleanly(payload: bytes) -> None:
    with pytest.raises(TelemetryFormatError):
        tm.decode(payload)


@pytest.mark.parametrize(
    "change",
    [
        {"pv_w": 1.5},
        {"battery_w": True},
        {"soc_permille": 1001},
        {"health": 8},
        {"backlog": -1},
        {"device_id": ""},
    ],
)
def test_encode_refuses_what_decode_would(change: dict[str, object]) -> None:
    with pytest.raises(TelemetryFormatError):
        tm.encode(dataclasses.replace(SAMPLE, **change))  # type: ignore[arg-type]
