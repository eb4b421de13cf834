"""The device CA: TLS client certificates for devices, with expiry, renewal and revocation.

Owns: the CA key and certificate, issuing device (clientAuth) and broker (serverAuth)
certificates from CSRs, renewal authenticated by the device's current key, revocation and the
CRL the broker enforces, and a small JSON record of issued and revoked serials.

Everything here is computation on PEM bytes with an explicit `now`; only `DeviceCA.save`,
`DeviceCA.load` and `write_private_key` touch files.

Keys: the CA and every TLS key are EC P-256 (ECDSA/SHA-256), which every TLS stack a device or
broker may run (OpenSSL, mbedTLS, Mosquitto) accepts. The Ed25519 key that signs generation
records (edge/keys.py) is a different key and never appears in a certificate.

Identity in a device certificate: subject CN = device id (Mosquitto's
`use_identity_as_username` makes it the MQTT username), OU = site id, and a SAN URI
`urn:gridmint:site:{site}:device:{device}`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.tls_identity import (  # re-exported: the CA's callers build requests in tests
    RENEWAL_CONTEXT,
    make_device_key_and_csr,
    renewal_payload,
    sign_renewal,
)
from protocol.topics import TopicError, check_segment

__all__ = [
    "RENEWAL_CONTEXT",
    "CertInfo",
    "DeviceCA",
    "PkiError",
    "check_csr",
    "describe",
    "device_uri",
    "make_device_key_and_csr",
    "renewal_payload",
    "sign_renewal",
    "write_private_key",
]

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
STATE_FILE = "ca-state.json"
RENEWAL_MAX_SKEW = timedelta(minutes=5)
_BACKDATE = timedelta(minutes=5)  # tolerate small clock differences on devices


class PkiError(ValueError):
    """A request the CA refuses: bad CSR, bad proof, unknown, expired or revoked certificate."""


def device_uri(site_id: str, device_id: str) -> str:
    """The SAN URI that names one device."""
    return f"urn:gridmint:site:{site_id}:device:{device_id}"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a certificate says about its holder."""

    serial: int
    common_name: str
    site_id: str | None
    not_before: datetime
    not_after: datetime
    client_auth: bool
    server_auth: bool


def describe(cert_pem: bytes) -> CertInfo:
    """Read the identity and validity of a certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return _info(cert)


def _info(cert: x509.Certificate) -> CertInfo:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = set(eku)
    except x509.ExtensionNotFound:
        usages = set()
    return CertInfo(
        serial=cert.serial_number,
        common_name=str(cns[0].value) if cns else "",
        site_id=str(ous[0].value) if ous else None,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        client_auth=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        server_auth=ExtendedKeyUsageOID.SERVER_AUTH in usages,
    )


# ---- device side: protocol/tls_identity.py (the device and the CA must agree on these bytes) ----


def write_private_key(path: Path, key_pem: bytes) -> None:
    """Write a private key readable by its owner only (mode 0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing leftover file
    os.replace(tmp, path)


def check_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A well-formed, self-signed CSR for an EC P-256 key, or PkiError."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise PkiError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PkiError("device TLS keys must be EC P-256")
    return csr


# ---- the CA ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    """Issued and revoked serials (hex keys) and the CRL counter."""

    issued: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoked: dict[str, dict[str, Any]] = field(default_factory=dict)
    crl_number: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {"issued": self.issued, "revoked": self.revoked, "crl_number": self.crl_number},
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> _State:
        data = json.loads(text)
        return cls(
            issued=dict(data.get("issued", {})),
            revoked=dict(data.get("revoked", {})),
            crl_number=int(data.get("crl_number", 0)),
        )


def _reason(name: str) -> x509.ReasonFlags:
    """A revocation reason by its Python name ("key_compromise") or RFC 5280 name."""
    try:
        return x509.ReasonFlags[name]
    except KeyError:
        pass
    try:
        return x509.ReasonFlags(name)
    except ValueError:
        names = ", ".join(f.name for f in x509.ReasonFlags)
        raise PkiError(f"unknown revocation reason {name!r}; use one of {names}") from None


def _hex(serial: int) -> str:
    return format(serial, "x")


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise PkiError("times must be timezone-aware")
    return when.astimezone(UTC)


class DeviceCA:
    """The certificate authority for device and broker TLS certificates."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, state: _State | None = None
    ):
        self._key = key
        self.cert = cert
        self._state = state or _State()

    # -- creation and files --

    @classmethod
    def create(cls, name: str, valid_days: float, now: datetime) -> DeviceCA:
        """A new CA: an EC P-256 key and a self-signed CA certificate."""
        now = _utc(now)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridmint"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def save(self, directory: Path) -> None:
        """Write ca.key (mode 0600), ca.crt and the serials record into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        write_private_key(
            directory / CA_KEY_FILE,
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        (directory / CA_CERT_FILE).write_bytes(self.cert_pem)
        self.save_state(directory)

    def save_state(self, directory: Path) -> None:
        """Write only the serials record (after issuing or revoking)."""
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(self._state.to_json())
        os.replace(tmp, directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> DeviceCA:
        """Load a CA written by `save`; refuses a key file group or others can read."""
        key_path = directory / CA_KEY_FILE
        if key_path.stat().st_mode & 0o077:
            raise PkiError(f"{key_path} is readable by others; run: chmod 600 {key_path}")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path} is not an EC private key")
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        if cert.public_key() != key.public_key():
            raise PkiError(f"{directory}: the CA certificate does not match the CA key")
        state_path = directory / STATE_FILE
        state = _State.from_json(state_path.read_text()) if state_path.exists() else _State()
        return cls(key, cert, state)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM (the broker's `cafile`, the devices' trust anchor)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    # -- issuing --

    def _builder(
        self, subject: x509.Name, public_key: Any, not_before: datetime, not_after: datetime
    ) -> x509.CertificateBuilder:
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        cert = builder.sign(self._key, hashes.SHA256())
        if cert.not_valid_after_utc > self.cert.not_valid_after_utc:
            raise PkiError("the certificate would outlive the CA certificate; renew the CA first")
        return cert

    def issue_client_cert(
        self, csr_pem: bytes, device_id: str, site_id: str, valid_days: float, now: datetime
    ) -> bytes:
        """A device certificate (clientAuth) for the key in `csr_pem`, valid for `valid_days`.

        The CSR must be correctly signed (proof the requester holds its key). The identity comes
        from the arguments (the approved registry entry), never from the CSR's subject.
        """
        now = _utc(now)
        try:
            check_segment(device_id, "device id")
            check_segment(site_id, "site id")
        except TopicError as exc:
            raise PkiError(str(exc)) from None
        csr = self._checked_csr(csr_pem)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridmint"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site_id),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        )
        builder = (
            self._builder(
                subject, csr.public_key(), now - _BACKDATE, now + timedelta(days=valid_days)
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(device_uri(site_id, device_id))]
                ),
                critical=False,
            )
        )
        cert = self._sign(builder)
        self._record(cert, "device", device_id=device_id, site_id=site_id)
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_cert(
        self, hostnames: list[str], valid_days: float, now: datetime
    ) -> tuple[bytes, bytes]:
        """A broker certificate (serverAuth) for DNS names and IP addresses: (key_pem, cert_pem).

        The broker's key is made here; it never leaves the machine that runs this.
        """
        import ipaddress

        if not hostnames:
            raise PkiError("a server certificate needs at least one host name or address")
        now = _utc(now)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridmint"),
                x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
            ]
        )
        builder = (
            self._builder(
                subject, key.public_key(), now - _BACKDATE, now + timedelta(days=valid_days)
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )
        cert = self._sign(builder)
        self._record(cert, "server", hostnames=list(hostnames))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    def _checked_csr(self, csr_pem: bytes) -> x509.CertificateSigningRequest:
        return check_csr(csr_pem)

    def _record(self, cert: x509.Certificate, kind: str, **extra: Any) -> None:
        self._state.issued[_hex(cert.serial_number)] = {
            "kind": kind,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            **extra,
        }

    # -- renewal --

    def verify_current(self, cert_pem: bytes, now: datetime) -> x509.Certificate:
        """A device certificate this CA issued that is unexpired and not revoked, or PkiError."""
        now = _utc(now)
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise PkiError("not a PEM certificate") from None
        if cert.issuer != self.cert.subject:
            raise PkiError("the certificate was not issued by this CA")
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError("the certificate was not issued by this CA") from None
        record = self._state.issued.get(_hex(cert.serial_number))
        if record is None or record.get("kind") != "device":
            raise PkiError("this CA has no record of issuing that device certificate")
        if self.is_revoked(cert.serial_number):
            raise PkiError("the certificate is revoked")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PkiError("the certificate is expired or not yet valid")
        return cert

    def renew(
        self,
        current_cert_pem: bytes,
        csr_pem: bytes,
        proof_signature: bytes,
        now: datetime,
        *,
        signed_at: datetime | None = None,
        valid_days: float | None = None,
    ) -> bytes:
        """A new certificate for the same device, for a new key, proven by the current key.

        `proof_signature` is `sign_renewal(current_key, csr_pem, signed_at)`; `signed_at`
        (default `now`) must be within RENEWAL_MAX_SKEW of `now`. The current certificate must
        be this CA's, unexpired and unrevoked; the new key must differ from the current one.
        The new certificate keeps the device and site of the current one and, unless
        `valid_days` is given, its lifetime. The current certificate stays valid until it
        expires (or is revoked), so the device can switch over without a gap.
        """
        now = _utc(now)
        signed_at = now if signed_at is None else _utc(signed_at)
        if abs(now - signed_at) > RENEWAL_MAX_SKEW:
            raise PkiError("the renewal proof is too old or from the future")
        current = self.verify_current(current_cert_pem, now)
        csr = self._checked_csr(csr_pem)
        public = current.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PkiError("the current certificate does not hold an EC key")
        try:
            public.verify(
                proof_signature, renewal_payload(csr_pem, signed_at), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise PkiError(
                "the renewal proof is not signed by the current certificate's key"
            ) from None
        if csr.public_key() == public:
            raise PkiError("renewal must rotate the key: the CSR reuses the current key")
        info = _info(current)
        if info.site_id is None:
            raise PkiError("the current certificate names no site")
        if valid_days is None:
            lifetime = current.not_valid_after_utc - current.not_valid_before_utc - _BACKDATE
            valid_days = lifetime / timedelta(days=1)
        new_pem = self.issue_client_cert(csr_pem, info.common_name, info.site_id, valid_days, now)
        new_serial = x509.load_pem_x509_certificate(new_pem).serial_number
        self._state.issued[_hex(new_serial)]["renews"] = _hex(current.serial_number)
        return new_pem

    # -- revocation --

    def revoke(self, serial: int, reason: x509.ReasonFlags | str, now: datetime) -> None:
        """Revoke a certificate this CA issued (idempotent: the first revocation counts)."""
        now = _utc(now)
        flag = reason if isinstance(reason, x509.ReasonFlags) else _reason(reason)
        key = _hex(serial)
        if key not in self._state.issued:
            raise PkiError(f"this CA did not issue serial {key}")
        self._state.revoked.setdefault(key, {"reason": flag.value, "at": now.isoformat()})

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial is revoked."""
        return _hex(serial) in self._state.revoked

    def revoked_serials(self) -> list[int]:
        """Every revoked serial."""
        return [int(k, 16) for k in self._state.revoked]

    def issued_serials(self, device_id: str | None = None) -> list[int]:
        """Serials issued (optionally only those of one device)."""
        return [
            int(k, 16)
            for k, v in self._state.issued.items()
            if device_id is None or v.get("device_id") == device_id
        ]

    def crl_pem(self, now: datetime, next_update_hours: float = 24.0) -> bytes:
        """A CRL of every revoked serial, valid until now + next_update_hours.

        Mosquitto refuses EVERY client once the CRL's nextUpdate has passed ("CRL has
        expired"), so publish a fresh one well before then (and on every revocation).
        """
        now = _utc(now)
        self._state.crl_number += 1
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + timedelta(hours=next_update_hours))
            .add_extension(x509.CRLNumber(self._state.crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        for key, entry in sorted(self._state.revoked.items()):
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(key, 16))
                .revocation_date(datetime.fromisoformat(entry["at"]))
                .add_extension(x509.CRLReason(x509.ReasonFlags(entry["reason"])), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)
