"""Regenerate the golden vectors of the version-1 signed interval record.

    .venv/bin/python -m protocol.vectors.make_vectors          # rewrite v1.json, v1-invalid.json
    .venv/bin/python -m protocol.vectors.make_vectors --check  # exit 1 if they are out of date

Everything is deterministic: a fixed Ed25519 seed (Ed25519 signatures are deterministic), a fixed
deployment id, fixed records. The files are the contract; see README.md beside this script.

The invalid vectors need bytes that cbor2 will not produce (it always encodes canonically when
asked), so this script carries a tiny CBOR writer of its own (`cbor`) that can write longer heads,
unsorted or duplicate map keys and indefinite lengths. As a cross-check, that writer must reproduce
cbor2's canonical bytes for every valid vector.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cose
from protocol import record as rec_mod
from protocol.reasons import RejectReason
from protocol.record import Channels, Energy, IntervalRecord, Key, Quality, TimeQuality
from protocol.verify import RecordRejected, check_envelope

HERE = Path(__file__).resolve().parent
VALID_PATH = HERE / "v1.json"
INVALID_PATH = HERE / "v1-invalid.json"

# Test-only key material. Never use these anywhere but in tests.
SEED = bytes(range(32))
OTHER_SEED = bytes(range(32, 64))
AAD = b"gridmint-test-vectors"
OTHER_AAD = b"gridmint-production"

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, aligned to 300 and 900 s


def private_key(seed: bytes = SEED) -> Ed25519PrivateKey:
    """The fixed test key (or another fixed key, from another seed)."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(seed: bytes = SEED) -> bytes:
    """Raw public key of the fixed test key."""
    return cose.public_bytes(private_key(seed).public_key())


def _expect(ok: bool, what: str) -> None:
    """A self-check of the generator that also runs under python -O."""
    if not ok:
        raise AssertionError(what)


# --- a minimal CBOR writer that can also write non-canonical forms ---------------------------


@dataclass(frozen=True)
class Wide:
    """Write `value`'s head with additional info `ai` (24..27: 1, 2, 4, 8 argument bytes)."""

    value: object
    ai: int


@dataclass(frozen=True)
class Pairs:
    """A map written with exactly these pairs, in this order (duplicates allowed)."""

    items: tuple[tuple[object, object], ...]


@dataclass(frozen=True)
class Indefinite:
    """An array written with indefinite length (0x9f ... 0xff)."""

    items: tuple[object, ...]


_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def _head(major: int, arg: int, ai: int | None = None) -> bytes:
    if ai is None:
        ai = _shortest_ai(arg)
    if ai < 24:
        return bytes([major << 5 | arg])
    return bytes([major << 5 | ai]) + arg.to_bytes(_ARG_BYTES[ai], "big")


def _shortest_ai(arg: int) -> int:
    if arg < 24:
        return arg
    for ai, size in _ARG_BYTES.items():
        if arg < 256**size:
            return ai
    raise ValueError(f"{arg} does not fit in 64 bits")


def cbor(item: object, ai: int | None = None) -> bytes:
    """Encode `item`; canonical (RFC 8949 section 4.2.1) unless a Wide/Pairs/Indefinite says not."""
    if isinstance(item, Wide):
        return cbor(item.value, item.ai)
    if isinstance(item, bool):
        return b"\xf5" if item else b"\xf4"
    if isinstance(item, int):
        return _head(0, item, ai) if item >= 0 else _head(1, -1 - item, ai)
    if isinstance(item, float):
        return cbor2.dumps(item, canonical=True)  # shortest float form; floats only appear invalid
    if isinstance(item, bytes):
        return _head(2, len(item), ai) + item
    if isinstance(item, str):
        data = item.encode("utf-8")
        return _head(3, len(data), ai) + data
    if isinstance(item, list | tuple):
        return _head(4, len(item), ai) + b"".join(cbor(x) for x in item)
    if isinstance(item, Indefinite):
        return b"\x9f" + b"".join(cbor(x) for x in item.items) + b"\xff"
    if isinstance(item, dict):
        encoded = sorted((cbor(k), cbor(v)) for k, v in item.items())  # bytewise key order
        return _head(5, len(encoded), ai) + b"".join(k + v for k, v in encoded)
    if isinstance(item, Pairs):
        return _head(5, len(item.items), ai) + b"".join(cbor(k) + cbor(v) for k, v in item.items)
    if isinstance(item, cbor2.CBORTag):
        return _head(6, item.tag, ai) + cbor(item.value)
    raise TypeError(f"cannot encode {type(item).__name__}")


def sign1(
    payload: bytes,
    *,
    key: Ed25519PrivateKey | None = None,
    aad: bytes = AAD,
    protected: object = None,
    unprotected: object = None,
    array_ai: int | None = None,
    tag_ai: int | None = None,
    signature_ai: int | None = None,
) -> bytes:
    """A COSE_Sign1 written by hand, signed over exactly these protected and payload bytes."""
    key = key or private_key()
    if protected is None:
        protected = {cose.HDR_ALG: cose.ALG_ED25519, cose.HDR_KID: cose.key_id(public_key())}
    protected_bytes = cbor(protected)
    signature = key.sign(cbor(["Signature1", protected_bytes, aad, payload]))
    items = [protected_bytes, {} if unprotected is None else unprotected, payload]
    return (
        _head(6, cose.COSE_SIGN1_TAG, tag_ai)
        + _head(4, 4, array_ai)
        + b"".join(cbor(x) for x in items)
        + cbor(signature, signature_ai)
    )


# --- the valid vectors ------------------------------------------------------------------------


def _records() -> list[tuple[str, str, IntervalRecord]]:
    """(name, description, record); a record may chain to the one before it."""
    minimal = IntervalRecord(
        device_id="m1",
        seq=0,
        boot=0,
        interval_start=T0,
        interval_s=300,
        energy=Energy(),
        registers_wh=(0, 0, 0, 0, 0),
        channels=Channels.NONE,
        reading_ms=(T0 + 300) * 1000,
        prev_hash=rec_mod.ZERO_HASH,
    )
    with_soc = IntervalRecord(
        device_id="home-17.bess",
        meter="SunSpec 103+124 SN A1B2C3",
        seq=41,
        boot=2,
        interval_start=T0 + 300,
        interval_s=300,
        energy=Energy(generated_wh=812, exported_wh=655, charged_wh=120),
        registers_wh=(1_204_455, 0, 987_001, 56_230, 0),
        channels=Channels.GENERATED | Channels.EXPORTED | Channels.CHARGED,
        soc_permille=735,
        reading_ms=(T0 + 600) * 1000 + 412,
        time_source=("ntp", 42),
        firmware="gridmint-edge/0.1",
        zone="DE-LU",
        tech=("pv+bess", 9_800),
        prev_hash=bytes([0x5A]) * 32,
    )
    all_channels = IntervalRecord(
        device_id="big-counters",
        meter="lab meter",
        seq=2**32 + 5,
        boot=65_535,
        interval_start=T0 + 600,
        interval_s=300,
        # Each value sits on a CBOR head boundary: 1, 2, 2, 3, 3 bytes.
        energy=Energy(23, 24, 255, 256, 65_535),
        # 5, 5, 9, 9, 9 bytes: the largest uint32, 2^32, 2^53 + 1 (not a double), 2^63, 2^64 - 1.
        registers_wh=(2**32 - 1, 2**32, 2**53 + 1, 2**63, rec_mod.MAX_UINT64),
        channels=Channels.GENERATED
        | Channels.IMPORTED
        | Channels.EXPORTED
        | Channels.CHARGED
        | Channels.DISCHARGED,
        soc_permille=1000,
        reading_ms=(T0 + 900) * 1000,
        time_quality=TimeQuality.UNKNOWN,
        time_source=("none", 0),
        quality=Quality.SUBSTITUTED,
        tech=("bess", 2**40),
        prev_hash=rec_mod.ZERO_HASH,
    )
    fifteen = IntervalRecord(
        device_id="farm-3",
        meter="EM24 SN 0042",
        seq=1_000,
        boot=7,
        interval_start=T0 + 900,
        interval_s=900,
        energy=Energy(generated_wh=3_210, imported_wh=4),
        registers_wh=(9_876_543, 12_345, 0, 0, 0),
        channels=Channels.GENERATED | Channels.IMPORTED,
        reading_ms=(T0 + 1_800) * 1000 + 999,
        time_quality=TimeQuality.RELATIVE,
        time_source=("rtc", 86_400),
        status="G,GAP",
        quality=Quality.ESTIMATED,
        firmware="gridmint-edge/0.1",
        zone="NL",
        tech=("pv", 30_000),
        prev_hash=rec_mod.ZERO_HASH,
    )
    return [
        ("minimal", "all optional fields at their defaults, no soc, zero prev hash", minimal),
        ("with_soc", "PV + battery with state of charge; three channels measured", with_soc),
        (
            "all_channels_large_values",
            "all five channels; values on CBOR length boundaries up to 2^64 - 1",
            all_channels,
        ),
        ("interval_900s", "a 15-minute interval, estimated, relative time", fifteen),
    ]


def _chained(prev_envelope: bytes, prev: IntervalRecord) -> tuple[str, str, IntervalRecord]:
    rec = replace(
        prev,
        seq=prev.seq + 1,
        interval_start=prev.interval_end,
        reading_ms=(prev.interval_end + prev.interval_s) * 1000 + 3,
        energy=Energy(generated_wh=2_990, imported_wh=0),
        registers_wh=(9_876_543 + 2_990, 12_345, 0, 0, 0),
        prev_hash=cose.record_hash(prev_envelope),
        meter="Zähler Ω-3 電表",
        zone="NO-5 Ålesund",
        soc_permille=0,
        status="G",
        quality=Quality.MEASURED,
    )
    return (
        "chained_prev_hash",
        "follows interval_900s: prev is its record hash; non-ASCII text; soc 0 is not absent",
        rec,
    )


def _max_lengths() -> tuple[str, str, IntervalRecord]:
    rec = IntervalRecord(
        device_id="d" * 63 + "9",
        meter="m" * 255 + "é",
        seq=rec_mod.MAX_UINT64,
        boot=rec_mod.MAX_UINT64,
        interval_start=T0 + 3_600,
        interval_s=300,
        energy=Energy(1, 1, 1, 1, 1),
        registers_wh=(1, 1, 1, 1, 1),
        channels=Channels(31),
        reading_ms=(T0 + 3_900) * 1000,
        prev_hash=bytes(range(0xE0, 0x100)),
        status="G" + ",R" * 31 + "J",
        firmware="f" * 256,
        zone="z" * 64,
        time_source=("t" * 24, rec_mod.MAX_UINT64),
        tech=("x", rec_mod.MAX_UINT64),
    )
    return ("max_lengths", "every text at its length limit, every uint at 2^64 - 1", rec)


def record_json(rec: IntervalRecord) -> dict[str, Any]:
    """The record's fields as plain JSON: ints, strings, hex for bytes, enums as their numbers."""
    return {
        "version": rec.version,
        "device_id": rec.device_id,
        "meter": rec.meter,
        "seq": rec.seq,
        "boot": rec.boot,
        "interval_start": rec.interval_start,
        "interval_s": rec.interval_s,
        "energy": {
            "generated_wh": rec.energy.generated_wh,
            "imported_wh": rec.energy.imported_wh,
            "exported_wh": rec.energy.exported_wh,
            "charged_wh": rec.energy.charged_wh,
            "discharged_wh": rec.energy.discharged_wh,
        },
        "registers_wh": list(rec.registers_wh),
        "channels": int(rec.channels),
        "soc_permille": rec.soc_permille,
        "reading_ms": rec.reading_ms,
        "time_quality": int(rec.time_quality),
        "time_source": [rec.time_source[0], rec.time_source[1]],
        "status": rec.status,
        "quality": int(rec.quality),
        "prev_hash_hex": rec.prev_hash.hex(),
        "firmware": rec.firmware,
        "zone": rec.zone,
        "tech": [rec.tech[0], rec.tech[1]],
    }


def build_valid() -> tuple[dict[str, Any], list[IntervalRecord]]:
    """The v1.json document, and the records it holds."""
    key, pub = private_key(), public_key()
    kid = cose.key_id(pub)
    named = _records()
    vectors: list[dict[str, Any]] = []
    records: list[IntervalRecord] = []
    envelopes: list[bytes] = []

    def add(name: str, description: str, rec: IntervalRecord) -> None:
        payload = rec_mod.encode(rec)
        envelope = cose.seal(rec, key, AAD)
        # Cross-checks: an independent writer agrees with cbor2, and the verifier accepts.
        _expect(cbor(rec_mod.to_map(rec)) == payload, f"{name}: the writers disagree (payload)")
        _expect(sign1(payload) == envelope, f"{name}: the writers disagree (envelope)")
        _expect(check_envelope(envelope, pub, AAD) == rec, f"{name}: does not round-trip")
        s1 = cose.parse(envelope)
        vectors.append(
            {
                "name": name,
                "description": description,
                **record_json(rec),
                "payload_hex": payload.hex(),
                "envelope_hex": envelope.hex(),
                "signature_hex": s1.signature.hex(),
                "kid_hex": s1.kid.hex(),
                "token_id": rec.token_id,
                "record_hash_hex": cose.record_hash(envelope).hex(),
            }
        )
        records.append(rec)
        envelopes.append(envelope)

    for name, description, rec in named:
        add(name, description, rec)
    add(*_chained(envelopes[-1], records[-1]))
    add(*_max_lengths())
    doc = {
        "description": "gridmint signed interval record v1: valid golden vectors (see README.md)",
        "format_version": rec_mod.FORMAT_VERSION,
        "alg": cose.ALG_ED25519,
        "seed_hex": SEED.hex(),
        "public_key_hex": pub.hex(),
        "kid_hex": kid.hex(),
        "aad": AAD.decode("ascii"),
        "aad_hex": AAD.hex(),
        "vectors": vectors,
    }
    return doc, records


# --- the invalid vectors ----------------------------------------------------------------------


def _invalid_cases(base: IntervalRecord) -> list[tuple[str, str, bytes, RejectReason, bool]]:
    """(name, description, envelope, expected reason, encoding-only change of a valid item)."""
    key = private_key()
    other = private_key(OTHER_SEED)
    kid = cose.key_id(public_key())
    m = rec_mod.to_map(base)
    payload = rec_mod.encode(base)
    envelope = cose.seal(base, key, AAD)
    s1 = cose.parse(envelope)

    def with_field(key_: Key, value: object) -> bytes:
        return cbor({**m, int(key_): value})

    def without_field(key_: Key) -> bytes:
        return cbor({k: v for k, v in m.items() if k != int(key_)})

    ordered = sorted(m.items())
    swapped = [ordered[0], ordered[2], ordered[1], *ordered[3:]]  # keys 0, 2, 1, 3, ...
    duplicated = [*ordered[:4], ordered[3], *ordered[4:]]  # key 3 (seq) twice, same value
    flipped = bytearray(envelope)
    flipped[-1] ^= 0x01  # the last byte is the signature's
    forged = replace(base, energy=replace(base.energy, generated_wh=base.energy.generated_wh + 1))
    non_canonical = RejectReason.NON_CANONICAL
    malformed = RejectReason.MALFORMED
    bad_field = RejectReason.BAD_FIELD
    bad_sig = RejectReason.BAD_SIGNATURE
    return [
        (
            "payload_uint_long_form",
            "seq written with an 8-byte argument (1b 00..29), validly re-signed",
            sign1(with_field(Key.SEQ, Wide(base.seq, 27))),
            non_canonical,
            True,
        ),
        (
            "payload_small_uint_long_form",
            "version 1 written as 18 01 instead of 01, validly re-signed",
            sign1(with_field(Key.VERSION, Wide(1, 24))),
            non_canonical,
            True,
        ),
        (
            "payload_text_long_form",
            "device id's text head written with a 1-byte length argument, validly re-signed",
            sign1(with_field(Key.DEVICE, Wide(base.device_id, 24))),
            non_canonical,
            True,
        ),
        (
            "payload_keys_out_of_order",
            "map keys written 0, 2, 1, 3, ...; validly re-signed",
            sign1(cbor(Pairs(tuple(swapped)))),
            non_canonical,
            True,
        ),
        (
            "payload_indefinite_array",
            "energy array written with indefinite length, validly re-signed",
            sign1(with_field(Key.ENERGY, Indefinite(tuple(base.energy.as_list())))),
            non_canonical,
            True,
        ),
        (
            "payload_duplicate_key",
            "seq key written twice with the same value, validly re-signed",
            sign1(cbor(Pairs(tuple(duplicated)))),
            non_canonical,
            False,
        ),
        (
            "payload_trailing_byte",
            "a valid payload followed by one extra byte (00), validly re-signed",
            sign1(payload + b"\x00"),
            non_canonical,
            False,
        ),
        (
            "envelope_array_long_form",
            "outer array head 98 04 instead of 84; the signature still verifies",
            sign1(payload, array_ai=24),
            non_canonical,
            True,
        ),
        (
            "envelope_tag_long_form",
            "tag 18 written as d8 12 instead of d2; the signature still verifies",
            sign1(payload, tag_ai=24),
            non_canonical,
            True,
        ),
        (
            "envelope_signature_long_form",
            "signature head 59 00 40 instead of 58 40; the signature still verifies",
            sign1(payload, signature_ai=25),
            non_canonical,
            True,
        ),
        (
            "protected_header_keys_out_of_order",
            "protected header written {4: kid, 1: -19}, validly re-signed",
            sign1(payload, protected=Pairs(((cose.HDR_KID, kid), (cose.HDR_ALG, -19)))),
            non_canonical,
            True,
        ),
        (
            "payload_float_energy",
            "generated energy as the half float 812.0 (f9 6258), validly re-signed",
            sign1(with_field(Key.ENERGY, [float(base.energy.generated_wh), *m[7][1:]])),
            bad_field,
            False,
        ),
        (
            "payload_float_version",
            "version as the half float 1.0 (f9 3c00), which Python compares equal to 1; re-signed",
            sign1(with_field(Key.VERSION, 1.0)),
            bad_field,
            False,
        ),
        (
            "payload_version_2",
            "a version-2 payload (otherwise the valid record), validly re-signed",
            sign1(with_field(Key.VERSION, 2)),
            RejectReason.UNSUPPORTED_VERSION,
            False,
        ),
        (
            "payload_without_version",
            "the version key left out, validly re-signed",
            sign1(without_field(Key.VERSION)),
            RejectReason.UNSUPPORTED_VERSION,
            False,
        ),
        (
            "payload_interval_600s",
            "interval length 600 s, validly re-signed",
            sign1(with_field(Key.INTERVAL_S, 600)),
            bad_field,
            False,
        ),
        (
            "payload_unknown_key",
            "an extra key 20, validly re-signed",
            sign1(cbor({**m, 20: 0})),
            bad_field,
            False,
        ),
        (
            "payload_prev_31_bytes",
            "prev hash of 31 bytes, validly re-signed",
            sign1(with_field(Key.PREV, bytes(31))),
            bad_field,
            False,
        ),
        (
            "payload_not_a_map",
            "the payload is a CBOR array, validly re-signed",
            sign1(cbor([1, base.device_id])),
            bad_field,
            False,
        ),
        ("not_cbor", "JSON text, not CBOR", b'{"v": 1, "dev": "m1"}', malformed, False),
        (
            "truncated_envelope",
            "a valid envelope without its last byte",
            envelope[:-1],
            malformed,
            False,
        ),
        ("empty", "no bytes at all", b"", malformed, False),
        (
            "cbor_untagged_array",
            "a valid COSE_Sign1 array without tag 18",
            cbor([s1.protected, {}, payload, s1.signature]),
            malformed,
            False,
        ),
        (
            "cbor_tag_17",
            "the valid array under tag 17 (COSE_Mac0) instead of 18",
            cbor(cbor2.CBORTag(17, [s1.protected, {}, payload, s1.signature])),
            malformed,
            False,
        ),
        ("cbor_integer", "valid CBOR, just the integer 18", cbor(18), malformed, False),
        (
            "unprotected_header_not_empty",
            "kid repeated in the unprotected header",
            sign1(payload, unprotected={cose.HDR_KID: kid}),
            malformed,
            False,
        ),
        (
            "alg_es256",
            "protected alg -7 (ES256), signed with the Ed25519 key",
            sign1(payload, protected={cose.HDR_ALG: -7, cose.HDR_KID: kid}),
            malformed,
            False,
        ),
        (
            "alg_float",
            "protected alg as the float -19.0 (f9 ccc0), validly signed",
            sign1(payload, protected={cose.HDR_ALG: -19.0, cose.HDR_KID: kid}),
            malformed,
            False,
        ),
        (
            "too_large",
            f"a validly signed envelope over {cose.MAX_RECORD_BYTES} bytes",
            sign1(bytes(cose.MAX_RECORD_BYTES)),
            RejectReason.TOO_LARGE,
            False,
        ),
        (
            "signature_bit_flipped",
            "the valid envelope with the last signature byte's low bit flipped",
            bytes(flipped),
            bad_sig,
            False,
        ),
        (
            "other_key_claiming_kid",
            "signed with another key, protected header naming this key's kid",
            sign1(payload, key=other),
            bad_sig,
            False,
        ),
        (
            "other_deployment",
            f"signed with this key for deployment {OTHER_AAD.decode()!r}",
            cose.sign(payload, key, OTHER_AAD),
            bad_sig,
            False,
        ),
        (
            "payload_altered",
            "generated energy +1 Wh, the original signature kept",
            cbor(
                cbor2.CBORTag(
                    cose.COSE_SIGN1_TAG,
                    [s1.protected, {}, rec_mod.encode(forged), s1.signature],
                )
            ),
            bad_sig,
            False,
        ),
    ]


def build_invalid(base: IntervalRecord) -> dict[str, Any]:
    """The v1-invalid.json document, built from one valid record."""
    pub = public_key()
    canonical = {
        "payload": rec_mod.encode(base),
        "envelope": cose.seal(base, private_key(), AAD),
    }
    vectors: list[dict[str, Any]] = []
    for name, description, data, reason, encoding_only in _invalid_cases(base):
        if encoding_only:
            # Only the encoding differs: the data model is that of a valid item.
            s1 = cbor2.loads(data)
            inner = cbor2.loads(s1.value[2]) if isinstance(s1, cbor2.CBORTag) else None
            _expect(inner == cbor2.loads(canonical["payload"]), f"{name} changes more than bytes")
        try:
            check_envelope(data, pub, AAD)
            got, detail = None, "accepted"
        except RecordRejected as exc:
            got, detail = exc.reason, exc.detail
        _expect(got is reason, f"invalid vector {name}: expected {reason}, got {got} ({detail})")
        vectors.append(
            {
                "name": name,
                "description": description,
                "envelope_hex": data.hex(),
                "expect": reason.value,
            }
        )
    return {
        "description": "gridmint signed interval record v1: envelopes that must be refused",
        "public_key_hex": pub.hex(),
        "aad": AAD.decode("ascii"),
        "aad_hex": AAD.hex(),
        "vectors": vectors,
    }


def build() -> tuple[dict[str, Any], dict[str, Any]]:
    """Both documents, in memory: (v1.json, v1-invalid.json)."""
    valid, records = build_valid()
    return valid, build_invalid(records[1])


def dumps(doc: dict[str, Any]) -> str:
    """The exact file text of a document."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the vector files, or with --check report whether they are up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    valid, invalid = build()
    stale = False
    writers: list[tuple[Path, dict[str, Any]]] = [(VALID_PATH, valid), (INVALID_PATH, invalid)]
    for path, doc in writers:
        text = dumps(doc)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            print(f"{path.name}: up to date")
        elif args.check:
            print(f"{path.name}: OUT OF DATE")
            stale = True
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{path.name}: written ({len(doc['vectors'])} vectors)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
