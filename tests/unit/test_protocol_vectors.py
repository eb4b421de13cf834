"""Golden vectors: the code reproduces v1.json byte for byte and refuses v1-invalid.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cose
from protocol import record as rec_mod
from protocol.reasons import RejectReason
from protocol.record import Channels, Energy, IntervalRecord, Quality, TimeQuality
from protocol.vectors import make_vectors
from protocol.verify import RecordRejected, check_envelope, classify

VECTORS = Path(make_vectors.__file__).resolve().parent
VALID = json.loads((VECTORS / "v1.json").read_text(encoding="utf-8"))
INVALID = json.loads((VECTORS / "v1-invalid.json").read_text(encoding="utf-8"))
PUBLIC_KEY = bytes.fromhex(VALID["public_key_hex"])
AAD = bytes.fromhex(VALID["aad_hex"])


def record_from_json(v: dict[str, Any]) -> IntervalRecord:
    """Build the record from a vector's plain JSON fields (independently of the generator)."""
    e, r = v["energy"], v["registers_wh"]
    assert len(r) == 5
    return IntervalRecord(
        version=v["version"],
        device_id=v["device_id"],
        meter=v["meter"],
        seq=v["seq"],
        boot=v["boot"],
        interval_start=v["interval_start"],
        interval_s=v["interval_s"],
        energy=Energy(
            generated_wh=e["generated_wh"],
            imported_wh=e["imported_wh"],
            exported_wh=e["exported_wh"],
            charged_wh=e["charged_wh"],
            discharged_wh=e["discharged_wh"],
        ),
        registers_wh=(r[0], r[1], r[2], r[3], r[4]),
        channels=Channels(v["channels"]),
        soc_permille=v["soc_permille"],
        reading_ms=v["reading_ms"],
        time_quality=TimeQuality(v["time_quality"]),
        time_source=(v["time_source"][0], v["time_source"][1]),
        status=v["status"],
        quality=Quality(v["quality"]),
        prev_hash=bytes.fromhex(v["prev_hash_hex"]),
        firmware=v["firmware"],
        zone=v["zone"],
        tech=(v["tech"][0], v["tech"][1]),
    )


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def test_key_material_matches_the_seed() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VALID["seed_hex"]))
    assert cose.public_bytes(key.public_key()) == PUBLIC_KEY
    assert cose.key_id(PUBLIC_KEY).hex() == VALID["kid_hex"]
    assert AAD == b"gridmint-test-vectors" == VALID["aad"].encode()
    assert VALID["alg"] == cose.ALG_ED25519
    assert INVALID["public_key_hex"] == VALID["public_key_hex"]
    assert INVALID["aad_hex"] == VALID["aad_hex"]


def test_vector_set_covers_what_it_promises() -> None:
    vectors = VALID["vectors"]
    assert 4 <= len(vectors) <= 6
    assert len(set(_ids(vectors))) == len(vectors)
    assert any(v["soc_permille"] is None for v in vectors)
    assert any(v["soc_permille"] is not None for v in vectors)
    assert any(v["interval_s"] == 900 for v in vectors)
    assert any(v["channels"] == 31 for v in vectors)
    assert any(max(v["registers_wh"]) == rec_mod.MAX_UINT64 for v in vectors)
    assert any(int(v["prev_hash_hex"], 16) != 0 for v in vectors)
    # One vector chains to the one before it.
    assert any(
        b["prev_hash_hex"] == a["record_hash_hex"]
        for a, b in zip(vectors, vectors[1:], strict=False)
    )
    reasons = {v["expect"] for v in INVALID["vectors"]}
    assert {
        "non_canonical",
        "malformed",
        "unsupported_version",
        "bad_signature",
        "bad_field",
        "too_large",
    } <= reasons
    assert len(set(_ids(INVALID["vectors"]))) == len(INVALID["vectors"])


@pytest.mark.parametrize("v", VALID["vectors"], ids=_ids(VALID["vectors"]))
def test_valid_vector(v: dict[str, Any]) -> None:
    rec = record_from_json(v)
    payload = rec_mod.encode(rec)
    assert payload.hex() == v["payload_hex"]

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VALID["seed_hex"]))
    envelope = cose.seal(rec, key, AAD)
    assert envelope.hex() == v["envelope_hex"]

    assert check_envelope(envelope, PUBLIC_KEY, AAD) == rec
    assert rec_mod.decode(payload) == rec
    s1, classified = classify(envelope)
    assert classified == rec
    assert s1.payload == payload
    assert s1.signature.hex() == v["signature_hex"]
    assert s1.kid.hex() == v["kid_hex"]
    assert s1.alg == cose.ALG_ED25519

    assert rec.token_id == v["token_id"]
    assert rec_mod.token_id(v["device_id"], v["interval_start"]) == v["token_id"]
    assert cose.record_hash(envelope).hex() == v["record_hash_hex"]


def test_valid_vectors_do_not_verify_for_another_deployment() -> None:
    for v in VALID["vectors"]:
        with pytest.raises(RecordRejected) as info:
            check_envelope(bytes.fromhex(v["envelope_hex"]), PUBLIC_KEY, b"gridmint-demo")
        assert info.value.reason is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("v", INVALID["vectors"], ids=_ids(INVALID["vectors"]))
def test_invalid_vector(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["envelope_hex"])
    expected = RejectReason(v["expect"])
    with pytest.raises(RecordRejected) as info:
        check_envelope(data, PUBLIC_KEY, AAD)
    assert info.value.reason is expected, info.value.detail
    assert info.value.detail
    # Without the signature check, everything but a bad signature is caught the same way.
    if expected is RejectReason.BAD_SIGNATURE:
        classify(data)
    else:
        with pytest.raises(RecordRejected) as info:
            classify(data)
        assert info.value.reason is expected


def test_vector_files_are_up_to_date() -> None:
    valid, invalid = make_vectors.build()
    assert valid == VALID, "v1.json is stale: run python -m protocol.vectors.make_vectors"
    assert invalid == INVALID, (
        "v1-invalid.json is stale: run python -m protocol.vectors.make_vectors"
    )
    # Byte for byte, too: the files are exactly what the generator writes.
    assert (VECTORS / "v1.json").read_text(encoding="utf-8") == make_vectors.dumps(valid)
    assert (VECTORS / "v1-invalid.json").read_text(encoding="utf-8") == make_vectors.dumps(invalid)
