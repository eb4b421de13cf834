"""The device CA: issuing from CSRs, certificate fields, renewal by the current key, the CRL."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.pki import (
    DeviceCA,
    PkiError,
    describe,
    device_uri,
    make_device_key_and_csr,
    sign_renewal,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> DeviceCA:
    return DeviceCA.create("gridmint device CA", 3650, NOW)


def issue(
    ca: DeviceCA, device: str = "pi-a", site: str = "site-1", days: float = 30, now: datetime = NOW
) -> tuple[bytes, bytes]:
    key_pem, csr_pem = make_device_key_and_csr(device)
    return key_pem, ca.issue_client_cert(csr_pem, device, site, days, now)


def test_ca_certificate_is_a_self_signed_ca(ca: DeviceCA) -> None:
    cert = ca.cert
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)


def test_client_certificate_fields(ca: DeviceCA) -> None:
    _, pem = issue(ca, "pi-a", "site-1", days=30)
    cert = x509.load_pem_x509_certificate(pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "site-1"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert (
        san.get_values_for_type(x509.UniformResourceIdentifier)
        == [device_uri("site-1", "pi-a")]
        == ["urn:gridmint:site:site-1:device:pi-a"]
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert cert.not_valid_before_utc <= NOW
    info = describe(pem)
    assert (info.common_name, info.site_id, info.client_auth, info.server_auth) == (
        "pi-a",
        "site-1",
        True,
        False,
    )


def test_serials_are_random_and_recorded(ca: DeviceCA) -> None:
    serials = {describe(issue(ca, "pi-s")[1]).serial for _ in range(3)}
    assert len(serials) == 3
    assert all(s.bit_length() > 64 for s in serials)
    assert serials <= set(ca.issued_serials("pi-s"))


def test_identity_comes_from_the_arguments_not_the_csr(ca: DeviceCA) -> None:
    _, csr = make_device_key_and_csr("someone-else")
    info = describe(ca.issue_client_cert(csr, "pi-a", "site-1", 1, NOW))
    assert info.common_name == "pi-a"


def test_ids_that_are_not_topic_segments_are_refused(ca: DeviceCA) -> None:
    _, csr = make_device_key_and_csr("pi-a")
    for device, site in [("pi/a", "site-1"), ("+", "site-1"), ("pi-a", "#"), ("pi a", "s")]:
        with pytest.raises(PkiError):
            ca.issue_client_cert(csr, device, site, 1, NOW)


def test_csr_with_a_bad_signature_is_refused(ca: DeviceCA) -> None:
    _, csr_pem = make_device_key_and_csr("pi-a")
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(PkiError, match="signature"):
        ca.issue_client_cert(csr.public_bytes(serialization.Encoding.PEM), "pi-a", "s", 1, NOW)
    with pytest.raises(PkiError):
        ca.issue_client_cert(b"not a csr", "pi-a", "s", 1, NOW)


def test_csr_with_a_non_p256_key_is_refused(ca: DeviceCA) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-a")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PkiError, match="P-256"):
        ca.issue_client_cert(csr.public_bytes(serialization.Encoding.PEM), "pi-a", "s", 1, NOW)


def test_server_certificate(ca: DeviceCA) -> None:
    key_pem, pem = ca.issue_server_cert(["broker.example", "127.0.0.1"], 90, NOW)
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert describe(pem).server_auth and not describe(pem).client_auth
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == cert.public_key()


def test_nothing_outlives_the_ca() -> None:
    short = DeviceCA.create("short CA", 10, NOW)
    with pytest.raises(PkiError, match="outlive"):
        issue(short, days=30)


def test_renewal_authenticated_by_the_current_key(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r", "site-7", days=30)
    later = NOW + timedelta(days=25)
    new_key, new_csr = make_device_key_and_csr("pi-r")
    proof = sign_renewal(key_pem, new_csr, later)
    new_pem = ca.renew(cert_pem, new_csr, proof, later)
    old, new = describe(cert_pem), describe(new_pem)
    assert (new.common_name, new.site_id) == ("pi-r", "site-7")
    assert new.serial != old.serial
    assert new.not_after == later + timedelta(days=30)
    new_cert = x509.load_pem_x509_certificate(new_pem)
    assert new_cert.public_key() == x509.load_pem_x509_csr(new_csr).public_key()
    assert not ca.is_revoked(old.serial)  # the old one stays usable until it expires
    # and the renewed certificate can itself be renewed with the new key
    newer_key, newer_csr = make_device_key_and_csr("pi-r")
    ca.renew(new_pem, newer_csr, sign_renewal(new_key, newer_csr, later), later)


def test_renewal_signed_by_another_key_is_refused(ca: DeviceCA) -> None:
    _, cert_pem = issue(ca, "pi-r")
    intruder_key, _ = make_device_key_and_csr("pi-r")
    _, new_csr = make_device_key_and_csr("pi-r")
    with pytest.raises(PkiError, match="current certificate's key"):
        ca.renew(cert_pem, new_csr, sign_renewal(intruder_key, new_csr, NOW), NOW)


def test_renewal_proof_for_another_csr_is_refused(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r")
    _, csr_1 = make_device_key_and_csr("pi-r")
    _, csr_2 = make_device_key_and_csr("pi-r")
    with pytest.raises(PkiError, match="current certificate's key"):
        ca.renew(cert_pem, csr_2, sign_renewal(key_pem, csr_1, NOW), NOW)


def test_stale_renewal_proof_is_refused(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r")
    _, csr = make_device_key_and_csr("pi-r")
    then = NOW - timedelta(hours=1)
    with pytest.raises(PkiError, match="too old"):
        ca.renew(cert_pem, csr, sign_renewal(key_pem, csr, then), NOW, signed_at=then)


def test_renewal_must_rotate_the_key(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r")
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    same_key_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-r")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(PkiError, match="rotate"):
        ca.renew(cert_pem, same_key_csr, sign_renewal(key_pem, same_key_csr, NOW), NOW)


def test_renewal_of_a_revoked_certificate_is_refused(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r")
    ca.revoke(describe(cert_pem).serial, "key_compromise", NOW)
    _, csr = make_device_key_and_csr("pi-r")
    with pytest.raises(PkiError, match="revoked"):
        ca.renew(cert_pem, csr, sign_renewal(key_pem, csr, NOW), NOW)


def test_renewal_of_an_expired_certificate_is_refused(ca: DeviceCA) -> None:
    key_pem, cert_pem = issue(ca, "pi-r", days=1)
    late = NOW + timedelta(days=2)
    _, csr = make_device_key_and_csr("pi-r")
    with pytest.raises(PkiError, match="expired"):
        ca.renew(cert_pem, csr, sign_renewal(key_pem, csr, late), late)


def test_renewal_of_another_cas_certificate_is_refused(ca: DeviceCA) -> None:
    other = DeviceCA.create("gridmint device CA", 3650, NOW)  # same name, other key
    key_pem, cert_pem = issue(other, "pi-r")
    _, csr = make_device_key_and_csr("pi-r")
    with pytest.raises(PkiError, match="not issued by this CA"):
        ca.renew(cert_pem, csr, sign_renewal(key_pem, csr, NOW), NOW)


def test_crl_lists_revoked_serials(ca: DeviceCA) -> None:
    _, kept = issue(ca, "pi-k")
    _, gone = issue(ca, "pi-g")
    serial = describe(gone).serial
    assert not ca.is_revoked(serial)
    ca.revoke(serial, x509.ReasonFlags.key_compromise, NOW)
    assert ca.is_revoked(serial)
    crl = x509.load_pem_x509_crl(ca.crl_pem(NOW, next_update_hours=6))
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.cert.subject
    assert crl.next_update_utc == NOW + timedelta(hours=6)
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None and entry.revocation_date_utc == NOW
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(describe(kept).serial) is None
    first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    again = x509.load_pem_x509_crl(ca.crl_pem(NOW))
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > first


def test_revoking_an_unknown_serial_or_with_an_unknown_reason_is_refused(ca: DeviceCA) -> None:
    with pytest.raises(PkiError):
        ca.revoke(12345, "key_compromise", NOW)
    _, pem = issue(ca)
    with pytest.raises(PkiError, match="reason"):
        ca.revoke(describe(pem).serial, "bored", NOW)
    ca.revoke(describe(pem).serial, "keyCompromise", NOW)  # RFC 5280 spelling works too


def test_save_and_load(tmp_path: Path) -> None:
    ca = DeviceCA.create("saved CA", 365, NOW)
    _, pem = issue(ca)
    ca.revoke(describe(pem).serial, "superseded", NOW)
    ca.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    loaded = DeviceCA.load(tmp_path)
    assert loaded.cert_pem == ca.cert_pem
    assert loaded.is_revoked(describe(pem).serial)
    assert describe(pem).serial in loaded.issued_serials("pi-a")
    _, csr = make_device_key_and_csr("pi-z")
    x509.load_pem_x509_certificate(
        loaded.issue_client_cert(csr, "pi-z", "s", 1, NOW)
    ).verify_directly_issued_by(ca.cert)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(PkiError, match="chmod 600"):
        DeviceCA.load(tmp_path)


def test_naive_times_are_refused(ca: DeviceCA) -> None:
    _, csr = make_device_key_and_csr("pi-a")
    with pytest.raises(PkiError, match="timezone"):
        ca.issue_client_cert(csr, "pi-a", "s", 1, datetime(2025, 1, 1))  # noqa: DTZ001
