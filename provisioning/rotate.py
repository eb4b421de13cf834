"""`gridmint provision rotate-key` and `renew-cert`: replace the device's credentials in place.

Owns: the device side of signing-key rotation and TLS certificate renewal.

Crash safety for rotation: the new key is written to `<key_file>.next` before the cloud hears of
it, and moved over the old key only after the cloud has registered it. A run interrupted in
between finishes on the next run: if the cloud lists the pending key it is installed, otherwise
it is discarded and the old key stays (the cloud never learnt of it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge.keys import KeyFileError, load_key_file
from edge.settings import ConfigError, EdgeSettings, load_settings
from protocol import cose, statements
from protocol.tls_identity import make_device_key_and_csr, sign_renewal
from provisioning.enroll import EnrollError, http_json, write_file


class RotateError(Exception):
    """The credentials were not replaced; the message says why."""


@dataclass(frozen=True, slots=True)
class Rotated:
    """The new signing key and until when the old one still verifies."""

    new_kid: str
    previous_kid: str
    previous_valid_until: int | None


def _settings(config: Path) -> EdgeSettings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise RotateError(str(exc)) from None
    if not settings.cloud_url:
        raise RotateError(f"{config} has no cloud_url (run provision enroll first)")
    return settings


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def rotate_signing_key(config: Path, *, timeout_s: float = 20.0) -> Rotated:
    """Register a new signing key with the cloud, signed by the current one, then install it."""
    s = _settings(config)
    base = f"{s.cloud_url.rstrip('/')}/api/v1/devices/{s.device_id}/keys"
    pending = s.key_file.with_name(s.key_file.name + ".next")
    try:
        current = load_key_file(s.key_file)
        if pending.exists():
            # An earlier run stopped after writing the new key: did the cloud register it?
            new = load_key_file(pending)
            new_kid = cose.key_id(cose.public_bytes(new.public_key())).hex()
            listed = http_json("GET", base, None, timeout_s)
            if any(k.get("kid") == new_kid for k in listed):
                os.replace(pending, s.key_file)
                old_kid = cose.key_id(cose.public_bytes(current.public_key())).hex()
                old = next((k for k in listed if k.get("kid") == old_kid), {})
                return Rotated(new_kid, old_kid, old.get("valid_until"))
            pending.unlink()
    except KeyFileError as exc:
        raise RotateError(str(exc)) from None
    except EnrollError as exc:
        raise RotateError(str(exc)) from None
    new = Ed25519PrivateKey.generate()
    new_pub = cose.public_bytes(new.public_key())
    try:
        write_file(pending, _pem(new), 0o600)
    except OSError as exc:
        raise RotateError(f"cannot write {pending}: {exc.strerror or exc}") from None
    request = statements.make_key_rotation(
        s.device_id, new_pub, int(time.time() * 1000), current, s.deployment.encode()
    )
    try:
        answer = http_json("POST", base, {"statement": request.hex()}, timeout_s)
    except EnrollError as exc:
        if "refused" in str(exc):  # the cloud said no: it will never list this key
            pending.unlink(missing_ok=True)
        raise RotateError(str(exc)) from None
    os.replace(pending, s.key_file)
    return Rotated(
        answer["new"]["kid"], answer["previous"]["kid"], answer["previous"]["valid_until"]
    )


def renew_certificate(config: Path, *, timeout_s: float = 20.0) -> datetime:
    """Get a certificate for a new TLS key, proven by the current key; returns its expiry."""
    s = _settings(config)
    if s.tls_cert_file is None or s.tls_key_file is None:
        raise RotateError(f"{config} has no TLS certificate to renew")
    try:
        current_cert = s.tls_cert_file.read_bytes()
        current_key = s.tls_key_file.read_bytes()
    except OSError as exc:
        raise RotateError(f"cannot read the current certificate: {exc}") from None
    key_pem, csr_pem = make_device_key_and_csr(s.device_id)
    signed_at = datetime.now(UTC).replace(microsecond=0)
    try:
        proof = sign_renewal(current_key, csr_pem, signed_at)
    except ValueError as exc:
        raise RotateError(f"{s.tls_key_file}: {exc}") from None
    url = f"{s.cloud_url.rstrip('/')}/api/v1/devices/{s.device_id}/certificate"
    try:
        answer = http_json(
            "POST",
            url,
            {
                "current_cert": current_cert.decode(),
                "csr": csr_pem.decode(),
                "proof": proof.hex(),
                "signed_at": signed_at.isoformat(),
            },
            timeout_s,
        )
    except EnrollError as exc:
        raise RotateError(str(exc)) from None
    cert_pem = str(answer["client_cert"]).encode()
    try:
        # Key before certificate: a crash in between leaves a key the old certificate does not
        # match, which the check reports, rather than a certificate without its key.
        write_file(s.tls_key_file, key_pem, 0o600)
        write_file(s.tls_cert_file, cert_pem, 0o644)
    except OSError as exc:
        raise RotateError(f"renewed, but writing failed: {exc}") from None
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
