"""Property tests of the wire contract: record encoding, COSE envelopes, topics."""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import cose, topics
from protocol import record as rec_mod
from protocol.reasons import RejectReason
from protocol.record import (
    Channels,
    Energy,
    IntervalRecord,
    Quality,
    RecordFormatError,
    TimeQuality,
)
from protocol.topics import Channel, DeviceTopic, TopicError
from protocol.verify import RecordRejected, check_envelope, classify

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = cose.public_bytes(KEY.public_key())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
AAD = b"gridmint-property-tests"

# --- strategies -------------------------------------------------------------------------------

uint64 = st.integers(min_value=0, max_value=rec_mod.MAX_UINT64)
# Small values too: most real counters are small, and CBOR heads change at 24, 256, 65536, 2^32.
uints = st.one_of(st.integers(min_value=0, max_value=70_000), uint64)


def texts(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text of bounded length (in code points), non-ASCII included, no surrogates."""
    return st.text(min_size=min_size, max_size=max_size)


energies = st.builds(Energy, uints, uints, uints, uints, uints)
registers = st.tuples(uints, uints, uints, uints, uints)
pairs = st.tuples(texts(32), uints)
socs = st.none() | st.integers(min_value=0, max_value=1000)
# Aligned to 900 s, so aligned for both allowed lengths.
interval_starts = st.integers(min_value=0, max_value=rec_mod.MAX_UINT64 // 900).map(
    lambda n: n * 900
)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "device_id": texts(64, min_size=1),
    "seq": uints,
    "boot": uints,
    "interval_start": interval_starts,
    "interval_s": st.sampled_from(rec_mod.ALLOWED_INTERVALS_S),
    "energy": energies,
    "registers_wh": registers,
    "channels": st.integers(min_value=0, max_value=31).map(Channels),
    "reading_ms": uints,
    "prev_hash": st.binary(min_size=32, max_size=32),
    "meter": texts(256),
    "soc_permille": socs,
    "time_quality": st.sampled_from(TimeQuality),
    "time_source": pairs,
    "status": texts(64),
    "quality": st.sampled_from(Quality),
    "firmware": texts(256),
    "zone": texts(64),
    "tech": pairs,
}


@st.composite
def records(draw: st.DrawFn) -> IntervalRecord:
    """Valid version-1 records, interval start aligned to the interval length."""
    values = {name: draw(strategy) for name, strategy in FIELDS.items()}
    ivl = values["interval_s"]
    values["interval_start"] -= values["interval_start"] % ivl
    return IntervalRecord(**values)


def _reseal(envelope: bytes, payload: bytes) -> bytes:
    """The envelope with another payload under the original protected header and signature."""
    s1 = cose.parse(envelope)
    return cbor2.dumps(
        cbor2.CBORTag(cose.COSE_SIGN1_TAG, [s1.protected, {}, payload, s1.signature]),
        canonical=True,
    )


def _small_envelope() -> bytes:
    rec = IntervalRecord(
        device_id="d",
        seq=1,
        boot=0,
        interval_start=1_800_000_000 - 1_800_000_000 % 300,
        interval_s=300,
        energy=Energy(generated_wh=5),
        registers_wh=(5, 0, 0, 0, 0),
        channels=Channels.GENERATED,
        reading_ms=0,
        prev_hash=rec_mod.ZERO_HASH,
        time_source=("", 0),
        tech=("", 0),
    )
    return cose.seal(rec, KEY, AAD)


def test_record_strategy_covers_every_field() -> None:
    names = {f.name for f in dataclasses.fields(IntervalRecord)}
    assert set(FIELDS) == names - {"version"}


# --- records ----------------------------------------------------------------------------------


@given(records())
def test_encode_decode_round_trip(rec: IntervalRecord) -> None:
    payload = rec_mod.encode(rec)
    assert rec_mod.decode(payload) == rec
    assert rec_mod.encode(rec_mod.decode(payload)) == payload


@given(records())
def test_seal_check_envelope_round_trip(rec: IntervalRecord) -> None:
    envelope = cose.seal(rec, KEY, AAD)
    assert check_envelope(envelope, PUBLIC_KEY, AAD) == rec
    s1, classified = classify(envelope)
    assert classified == rec
    assert s1.kid == cose.key_id(PUBLIC_KEY)


@given(records())
def test_plain_encoding_of_the_record_map_is_canonical(rec: IntervalRecord) -> None:
    # decode and cose.parse check canonical form with cbor2's plain encoder, which is right
    # only while to_map (and the envelope) put keys in canonical order.
    assert cbor2.dumps(rec_mod.to_map(rec)) == cbor2.dumps(rec_mod.to_map(rec), canonical=True)
    envelope = cose.seal(rec, KEY, AAD)
    assert cbor2.dumps(cbor2.loads(envelope)) == envelope


@given(records(), st.sampled_from([(4, 1), (1, 4)]))
def test_a_protected_header_with_keys_out_of_order_is_refused(
    rec: IntervalRecord, order: tuple[int, int]
) -> None:
    s1 = cose.parse(cose.seal(rec, KEY, AAD))
    header = {order[0]: None, order[1]: None}
    header.update({cose.HDR_ALG: s1.alg, cose.HDR_KID: s1.kid})
    protected = cbor2.dumps(header)  # plain mode keeps the order given
    envelope = cbor2.dumps(
        cbor2.CBORTag(cose.COSE_SIGN1_TAG, [protected, {}, s1.payload, s1.signature])
    )
    if order == (1, 4):
        assert cose.parse(envelope) == s1
    else:
        with pytest.raises(cose.EnvelopeError) as info:
            cose.parse(envelope)
        assert info.value.non_canonical


@given(records(), st.binary(min_size=1, max_size=1))
def test_decode_rejects_a_trailing_byte(rec: IntervalRecord, extra: bytes) -> None:
    payload = rec_mod.encode(rec)
    with pytest.raises(RecordFormatError):
        rec_mod.decode(payload + extra)
    envelope = cose.seal(rec, KEY, AAD)
    with pytest.raises(RecordRejected) as info:
        check_envelope(envelope + extra, PUBLIC_KEY, AAD)
    assert info.value.reason is RejectReason.NON_CANONICAL


@given(records(), st.data())
def test_changing_any_field_breaks_the_signature(rec: IntervalRecord, data: st.DataObject) -> None:
    envelope = cose.seal(rec, KEY, AAD)
    name = data.draw(st.sampled_from(sorted(FIELDS)), label="field")
    old = getattr(rec, name)
    new = data.draw(FIELDS[name].filter(lambda v: v != old), label="new value")
    forged = dataclasses.replace(rec, **{name: new})
    payload = rec_mod.encode(forged)
    assert payload != rec_mod.encode(rec)
    with pytest.raises(RecordRejected) as info:
        check_envelope(_reseal(envelope, payload), PUBLIC_KEY, AAD)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


@given(records(), st.data())
def test_flipping_any_bit_of_an_envelope_is_refused(
    rec: IntervalRecord, data: st.DataObject
) -> None:
    envelope = cose.seal(rec, KEY, AAD)
    for _ in range(8):
        pos = data.draw(st.integers(min_value=0, max_value=len(envelope) - 1), label="byte")
        bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
        damaged = bytearray(envelope)
        damaged[pos] ^= 1 << bit
        with pytest.raises(RecordRejected):
            check_envelope(bytes(damaged), PUBLIC_KEY, AAD)


def test_flipping_every_bit_of_a_small_envelope_is_refused() -> None:
    envelope = _small_envelope()
    assert check_envelope(envelope, PUBLIC_KEY, AAD).device_id == "d"
    reasons: set[RejectReason] = set()
    for pos in range(len(envelope)):
        for bit in range(8):
            damaged = bytearray(envelope)
            damaged[pos] ^= 1 << bit
            with pytest.raises(RecordRejected) as info:
                check_envelope(bytes(damaged), PUBLIC_KEY, AAD)
            reasons.add(info.value.reason)
    assert RejectReason.BAD_SIGNATURE in reasons
    assert RejectReason.MALFORMED in reasons


@given(st.binary(max_size=300))
def test_other_signers_payloads_are_never_decoded(payload: bytes) -> None:
    """Whatever another key signed, the verdict is bad_signature, not a payload complaint."""
    # Signed with the other key under a protected header that names our kid.
    protected = cbor2.dumps(
        {cose.HDR_ALG: cose.ALG_ED25519, cose.HDR_KID: cose.key_id(PUBLIC_KEY)}, canonical=True
    )
    signature = OTHER_KEY.sign(cbor2.dumps(["Signature1", protected, AAD, payload], canonical=True))
    claiming = cbor2.dumps(
        cbor2.CBORTag(cose.COSE_SIGN1_TAG, [protected, {}, payload, signature]), canonical=True
    )
    for envelope in (cose.sign(payload, OTHER_KEY, AAD), claiming):
        with pytest.raises(RecordRejected) as info:
            check_envelope(envelope, PUBLIC_KEY, AAD)
        assert info.value.reason is RejectReason.BAD_SIGNATURE


@given(records(), st.binary(max_size=40))
def test_another_deployment_does_not_verify(rec: IntervalRecord, other_aad: bytes) -> None:
    if other_aad == AAD:
        return
    with pytest.raises(RecordRejected) as info:
        check_envelope(cose.seal(rec, KEY, AAD), PUBLIC_KEY, other_aad)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


# Wider than valid: out-of-range numbers, over-long or empty texts, odd intervals and lengths.
_wide_int = st.one_of(
    st.integers(min_value=-5, max_value=70_000),
    st.integers(min_value=rec_mod.MAX_UINT64 - 3, max_value=rec_mod.MAX_UINT64 + 3),
)
_wide_pair = st.tuples(texts(40), _wide_int)
LOOSE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "device_id": texts(70),
    "seq": _wide_int,
    "boot": _wide_int,
    "interval_start": _wide_int,
    "interval_s": st.sampled_from([0, 299, 300, 600, 900, 3600]),
    "energy": st.builds(Energy, _wide_int, _wide_int, _wide_int, _wide_int, _wide_int),
    "registers_wh": st.tuples(_wide_int, _wide_int, _wide_int, _wide_int, _wide_int),
    "channels": st.integers(min_value=0, max_value=40).map(Channels),
    "reading_ms": _wide_int,
    "prev_hash": st.binary(min_size=31, max_size=33),
    "meter": texts(260),
    "soc_permille": st.none() | st.integers(min_value=-1, max_value=1001),
    "time_quality": st.integers(min_value=-1, max_value=5),
    "time_source": _wide_pair,
    "status": texts(66),
    "quality": st.integers(min_value=-1, max_value=4),
    "firmware": texts(260),
    "zone": texts(66),
    "tech": _wide_pair,
    "version": st.sampled_from([0, 1, 2]),
}


@given(records(), st.data())
def test_whatever_encodes_also_decodes(rec: IntervalRecord, data: st.DataObject) -> None:
    """The signer never produces a record that verifiers refuse: encode raises, or it round-trips.

    A valid record with one or two fields set to possibly invalid values, so each rule is hit.
    """
    names = data.draw(
        st.lists(st.sampled_from(sorted(LOOSE_FIELDS)), min_size=1, max_size=2, unique=True),
        label="fields",
    )
    loose = dataclasses.replace(rec, **{n: data.draw(LOOSE_FIELDS[n], label=n) for n in names})
    try:
        payload = rec_mod.encode(loose)
    except RecordFormatError:
        return
    assert rec_mod.decode(payload) == loose


# --- topics -----------------------------------------------------------------------------------

segments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)
channels = st.sampled_from(Channel)


@given(segments, segments, channels)
def test_topic_round_trip(site: str, device: str, channel: Channel) -> None:
    name = topics.topic(site, device, channel)
    assert name == f"gridmint/v1/sites/{site}/devices/{device}/{channel.value}"
    assert topics.parse(name) == DeviceTopic(site, device, channel)


@st.composite
def bad_segments(draw: st.DrawFn) -> str:
    """A valid id with one of '/', '+', '#', a blank or a newline put somewhere in it."""
    good = draw(segments)
    pos = draw(st.integers(min_value=0, max_value=len(good)))
    bad = draw(st.sampled_from(["/", "+", "#", " ", "\t", "\n"]))
    return good[:pos] + bad + good[pos:]


@given(st.one_of(st.just(""), bad_segments()), segments, channels)
def test_bad_ids_are_topic_errors(bad: str, good: str, channel: Channel) -> None:
    for site, device in ((bad, good), (good, bad)):
        with pytest.raises(TopicError):
            topics.topic(site, device, channel)
        with pytest.raises(TopicError):
            topics.parse(f"gridmint/v1/sites/{site}/devices/{device}/{channel.value}")
    with pytest.raises(TopicError):
        topics.check_segment(bad, "id")


@given(segments, segments, st.text(max_size=12))
def test_unknown_channels_and_foreign_topics_are_topic_errors(
    site: str, device: str, leaf: str
) -> None:
    if leaf in {c.value for c in Channel}:
        return
    with pytest.raises(TopicError):
        topics.parse(f"gridmint/v1/sites/{site}/devices/{device}/{leaf}")
    with pytest.raises(TopicError):
        topics.parse(f"gridmint/v2/sites/{site}/devices/{device}/tokens")
