"""Signed statements a device makes besides interval records: a commissioning probe and a key
rotation request.

Owns: their payloads and signing. Both are COSE_Sign1 envelopes like a record, but

* the payload is a CBOR *array* whose first item names the statement (a record is a map), and
* the external AAD is the deployment id plus a per-statement suffix,

so neither can ever be taken for a generation token, nor one for the other.
Imports nothing of ours beyond protocol.cose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cose

PROBE = "gridmint/probe/v1"
ROTATE_KEY = "gridmint/rotate-key/v1"


class StatementError(ValueError):
    """A statement that is malformed, of the wrong kind, or not signed by the expected key."""


def _aad(deployment: bytes, kind: str) -> bytes:
    return deployment + b"\0" + kind.encode()


def _sign(items: list[Any], key: Ed25519PrivateKey, deployment: bytes) -> bytes:
    return cose.sign(cbor2.dumps(items, canonical=True), key, _aad(deployment, items[0]))


def _open(envelope: bytes, kind: str, public_key: bytes, deployment: bytes) -> list[Any]:
    try:
        sign1 = cose.parse(envelope)
    except cose.EnvelopeError as exc:
        raise StatementError(f"not a signed statement: {exc}") from None
    try:
        items = cbor2.loads(sign1.payload)
    except Exception:  # cbor2 raises several types for bad input
        raise StatementError("statement payload is not CBOR") from None
    if not isinstance(items, list) or not items or items[0] != kind:
        raise StatementError(f"not a {kind} statement")
    if cbor2.dumps(items, canonical=True) != sign1.payload:
        raise StatementError("statement payload is not canonical CBOR")
    try:
        cose.verify(sign1, public_key, _aad(deployment, kind))
    except cose.SignatureError as exc:
        raise StatementError(f"statement signature: {exc}") from None
    return items


def signer_kid(envelope: bytes) -> bytes:
    """The key id a statement claims to be signed with (unverified)."""
    try:
        return cose.parse(envelope).kid
    except cose.EnvelopeError as exc:
        raise StatementError(f"not a signed statement: {exc}") from None


@dataclass(frozen=True, slots=True)
class Probe:
    """'I am this device, my clock says this' — signed at commissioning."""

    device_id: str
    unix_ms: int


def make_probe(device_id: str, unix_ms: int, key: Ed25519PrivateKey, deployment: bytes) -> bytes:
    """A signed commissioning probe."""
    return _sign([PROBE, device_id, unix_ms], key, deployment)


def open_probe(envelope: bytes, public_key: bytes, deployment: bytes) -> Probe:
    """Verify and read a probe."""
    items = _open(envelope, PROBE, public_key, deployment)
    if len(items) != 3 or not isinstance(items[1], str) or type(items[2]) is not int:
        raise StatementError("a probe is [kind, device id, unix ms]")
    return Probe(items[1], items[2])


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """'Replace my signing key with this one' — signed with the key being replaced."""

    device_id: str
    new_public_key: bytes
    unix_ms: int


def make_key_rotation(
    device_id: str,
    new_public_key: bytes,
    unix_ms: int,
    current_key: Ed25519PrivateKey,
    deployment: bytes,
) -> bytes:
    """A rotation request, signed by the current key."""
    return _sign([ROTATE_KEY, device_id, new_public_key, unix_ms], current_key, deployment)


def open_key_rotation(envelope: bytes, current_public_key: bytes, deployment: bytes) -> KeyRotation:
    """Verify a rotation request against the current key and read it."""
    items = _open(envelope, ROTATE_KEY, current_public_key, deployment)
    if (
        len(items) != 4
        or not isinstance(items[1], str)
        or not isinstance(items[2], bytes)
        or len(items[2]) != 32
        or type(items[3]) is not int
    ):
        raise StatementError("a key rotation is [kind, device id, 32-byte key, unix ms]")
    return KeyRotation(items[1], items[2], items[3])
