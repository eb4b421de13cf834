"""The device's side of its TLS identity: a P-256 key with a certificate request, and the signed
renewal request. The CA (cloud/pki.py) checks exactly these bytes, so they live in protocol/.

Owns: CSR creation (CN = device id) and the renewal proof's bytes. Imports nothing of ours
beyond protocol.topics.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.topics import check_segment

RENEWAL_CONTEXT = b"gridmint-renew-v1\n"


def make_device_key_and_csr(device_id: str) -> tuple[bytes, bytes]:
    """A new EC P-256 TLS key (PKCS#8 PEM) and a CSR for it with CN = device id."""
    check_segment(device_id, "device id")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def renewal_payload(csr_pem: bytes, signed_at: datetime) -> bytes:
    """The bytes a device signs with its current key to ask for a renewal."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if signed_at.tzinfo is None:
        signed_at = signed_at.replace(tzinfo=UTC)
    stamp = signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return RENEWAL_CONTEXT + stamp + b"\n" + csr.public_bytes(serialization.Encoding.DER)


def sign_renewal(current_key_pem: bytes, csr_pem: bytes, signed_at: datetime) -> bytes:
    """The proof for a renewal: the renewal payload signed with the current TLS key."""
    key = serialization.load_pem_private_key(current_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the current TLS key must be an EC key")
    return key.sign(renewal_payload(csr_pem, signed_at), ec.ECDSA(hashes.SHA256()))
