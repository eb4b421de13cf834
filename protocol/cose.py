"""COSE_Sign1 (RFC 9052 section 4.2) with Ed25519, built directly on cbor2 and cryptography.

Owns: the signed envelope around a record payload, key ids, and signature checks. Imports nothing
of ours beyond protocol.record. The deployment id is the external AAD, so a record signed for a
test deployment does not verify in production.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import record as rec_mod

COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_KID = 4
ALG_ED25519 = -19  # RFC 9864 fully specified Ed25519
ALG_EDDSA = -8  # RFC 9053 polymorphic EdDSA, accepted when verifying
MAX_RECORD_BYTES = 4096


class EnvelopeError(ValueError):
    """Bytes that are not a well-formed, canonical COSE_Sign1 envelope."""

    def __init__(self, message: str, *, non_canonical: bool = False):
        super().__init__(message)
        self.non_canonical = non_canonical


class SignatureError(ValueError):
    """A signature that does not verify."""


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: bytes) -> bytes:
    """Key id: the first 8 bytes of SHA-256 over the raw public key."""
    return hashlib.sha256(public_key).digest()[:8]


def record_hash(envelope: bytes) -> bytes:
    """SHA-256 of the envelope bytes; the next record's `prev` field."""
    return hashlib.sha256(envelope).digest()


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed COSE_Sign1 envelope."""

    protected: bytes
    alg: int
    kid: bytes
    payload: bytes
    signature: bytes

    def sig_structure(self, external_aad: bytes) -> bytes:
        """The bytes that were signed (RFC 9052 section 4.4)."""
        return _sig_structure(self.protected, external_aad, self.payload)


def _sig_structure(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, external_aad, payload], canonical=True)


def sign(payload: bytes, private_key: Ed25519PrivateKey, external_aad: bytes) -> bytes:
    """Wrap `payload` in a COSE_Sign1 envelope signed with `private_key`."""
    kid = key_id(public_bytes(private_key.public_key()))
    protected = cbor2.dumps({HDR_ALG: ALG_ED25519, HDR_KID: kid}, canonical=True)
    signature = private_key.sign(_sig_structure(protected, external_aad, payload))
    return cbor2.dumps(
        cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]), canonical=True
    )


def parse(envelope: bytes) -> Sign1:
    """Parse envelope bytes; raises EnvelopeError if they are not a canonical COSE_Sign1."""
    if len(envelope) > MAX_RECORD_BYTES:
        raise EnvelopeError(f"envelope is {len(envelope)} bytes, over {MAX_RECORD_BYTES}")
    try:
        obj: Any = cbor2.loads(envelope)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise EnvelopeError(f"not CBOR: {exc}") from None
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_SIGN1_TAG:
        raise EnvelopeError("not a COSE_Sign1 (CBOR tag 18)")
    value = obj.value
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise EnvelopeError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = value
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise EnvelopeError("COSE_Sign1 headers have the wrong types")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise EnvelopeError("COSE_Sign1 payload and signature must be byte strings")
    if unprotected:
        raise EnvelopeError("unprotected header must be empty")
    try:
        hdr = cbor2.loads(protected)
    except Exception:  # cbor2 raises several types for bad input
        raise EnvelopeError("protected header is not CBOR") from None
    # type() checks: True == 1 and -19.0 == -19 in Python, but they are other CBOR items.
    if (
        not isinstance(hdr, dict)
        or set(hdr) != {HDR_ALG, HDR_KID}
        or any(type(label) is not int for label in hdr)
    ):
        raise EnvelopeError("protected header must hold exactly alg and kid")
    alg, kid = hdr[HDR_ALG], hdr[HDR_KID]
    if type(alg) is not int or alg not in (ALG_ED25519, ALG_EDDSA):
        raise EnvelopeError(f"unsupported algorithm {alg!r}")
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise EnvelopeError("kid must be 8 bytes")
    if len(signature) != 64:
        raise EnvelopeError("Ed25519 signature must be 64 bytes")
    # Plain-mode re-encoding is canonical here (and cheaper than cbor2's canonical mode): the
    # header map is rebuilt in canonical key order (alg 1 before kid 4), and the only other
    # map, the unprotected header, is empty. Indefinite lengths or long-form integers in the
    # input do not survive the round trip, so they are refused too.
    if (
        cbor2.dumps({HDR_ALG: alg, HDR_KID: kid}) != protected
        or cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))
        != envelope
    ):
        raise EnvelopeError("envelope is not in canonical CBOR form", non_canonical=True)
    return Sign1(protected=protected, alg=alg, kid=kid, payload=payload, signature=signature)


@functools.lru_cache(maxsize=1 << 16)
def _verifier(public_key: bytes) -> tuple[bytes, Ed25519PublicKey]:
    """A public key's id and its loaded key object: a fleet's keys are few and used over and
    over, so they are loaded once (about 5 % of a verify each time otherwise)."""
    return key_id(public_key), Ed25519PublicKey.from_public_bytes(public_key)


def verify(envelope: Sign1, public_key: bytes, external_aad: bytes) -> None:
    """Raise SignatureError unless `envelope` was signed by `public_key` for this deployment."""
    kid, key = _verifier(public_key)
    if kid != envelope.kid:
        raise SignatureError("key id does not match the public key")
    try:
        key.verify(envelope.signature, envelope.sig_structure(external_aad))
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


def seal(record: rec_mod.IntervalRecord, private_key: Ed25519PrivateKey, aad: bytes) -> bytes:
    """Encode and sign a record: the generation token's bytes."""
    return sign(rec_mod.encode(record), private_key, aad)


def open_record(envelope: bytes) -> tuple[Sign1, rec_mod.IntervalRecord]:
    """Parse an envelope and its record payload without checking the signature."""
    s1 = parse(envelope)
    return s1, rec_mod.decode(s1.payload)
