"""Signed checkpoints: the Go reference note vector, round trips, and every tampered byte refused.

Known answer: the PeterNeumann key and note from golang.org/x/mod/sumdb/note's note_test.go.
Ed25519 is deterministic (RFC 8032), so signing the same text with the same key must reproduce the
published note byte for byte; then Go verifiers accept our notes and we accept theirs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    VerifierKey,
    key_id,
    open_note,
    parse_checkpoint_body,
    parse_signed_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
)

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
GO_NOTE = GO_TEXT + f"\n\u2014 PeterNeumann {GO_SIGNATURE}\n".encode()

NAME = "gridmint.example/ledger"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


PUB = raw(KEY)
OTHER_PUB = raw(OTHER_KEY)
ROOT = hashlib.sha256(b"a root").digest()
CP = Checkpoint(NAME, 12345, ROOT)


def go_private_key() -> Ed25519PrivateKey:
    # PRIVATE+KEY+<name>+<id>+base64(0x01 || 32-byte seed); the base64 may hold "+".
    material = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert material[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(material[1:])


def rejected(parse: Callable[..., object], *args: object) -> bool:
    """True if `parse(*args)` raises CheckpointError; any other exception propagates."""
    try:
        parse(*args)
    except CheckpointError:
        return True
    return False


def sign_text(text: bytes) -> bytes:
    """A note with arbitrary text, properly signed, to reach the checkpoint body checks."""
    return sign_note(text, NAME, KEY)


# --- known answers ---------------------------------------------------------------------------


def test_go_reference_note_is_reproduced_byte_for_byte() -> None:
    key = go_private_key()
    assert verifier_key_string("PeterNeumann", raw(key)) == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE


def test_go_reference_note_verifies() -> None:
    vkey = parse_verifier_key(GO_VKEY)
    assert vkey.name == "PeterNeumann"
    assert vkey.key_id == bytes.fromhex("c74f20a3")
    assert open_note(GO_NOTE, vkey.name, vkey.public_key) == GO_TEXT
    tampered = GO_NOTE.replace(b"cryptography", b"cryptographY")
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(tampered, vkey.name, vkey.public_key)


def test_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    expected = hashlib.sha256(NAME.encode() + b"\x0a\x01" + PUB).digest()[:4]
    assert key_id(NAME, PUB) == expected
    assert key_id(NAME, PUB) != key_id(NAME + "x", PUB)
    assert key_id(NAME, PUB) != key_id(NAME, OTHER_PUB)
    vkey = verifier_key_string(NAME, PUB)
    material = base64.b64encode(b"\x01" + PUB).decode()
    assert vkey == f"{NAME}+{expected.hex()}+{material}"
    assert parse_verifier_key(vkey) == VerifierKey(NAME, PUB)


def test_checkpoint_body_and_signed_note_layout() -> None:
    b64root = base64.b64encode(ROOT).decode()
    assert CP.body() == f"{NAME}\n12345\n{b64root}\n".encode()
    note = sign_checkpoint(CP, NAME, KEY)
    body, sig_line = note.split(b"\n\n")
    assert body + b"\n" == CP.body()
    assert sig_line.startswith(f"\u2014 {NAME} ".encode())
    assert sig_line.endswith(b"\n")
    blob = base64.b64decode(sig_line.split(b" ")[2].rstrip(b"\n"), validate=True)
    assert blob[:4] == key_id(NAME, PUB)
    KEY.public_key().verify(blob[4:], CP.body())  # an ordinary Ed25519 signature on the body


# --- round trips -----------------------------------------------------------------------------

origins = st.text(
    st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1, max_size=40
)


@settings(max_examples=200)
@given(origins, st.integers(min_value=0, max_value=2**64 - 1), st.binary(min_size=32, max_size=32))
def test_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin, size, root)
    note = sign_checkpoint(cp, NAME, KEY)
    assert parse_signed_checkpoint(note, NAME, PUB) == cp
    assert parse_signed_checkpoint(note, NAME, PUB, origin=origin) == cp


def test_empty_tree_checkpoint_round_trips() -> None:
    cp = Checkpoint(NAME, 0, hashlib.sha256(b"").digest())
    assert cp.body().split(b"\n")[1] == b"0"
    assert parse_signed_checkpoint(sign_checkpoint(cp, NAME, KEY), NAME, PUB) == cp


# --- tampering -------------------------------------------------------------------------------


def test_every_single_byte_change_is_rejected() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    accepted = []
    for pos in range(len(note)):
        for value in range(256):
            changed = note[:pos] + bytes([value]) + note[pos + 1 :]
            if value != note[pos] and not rejected(parse_signed_checkpoint, changed, NAME, PUB):
                accepted.append((pos, value))
    assert accepted == []
    assert parse_signed_checkpoint(note, NAME, PUB) == CP  # the loop changed copies only


def test_every_single_byte_deletion_or_insertion_is_rejected() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    variants = [note[:pos] + note[pos + 1 :] for pos in range(len(note))]
    for extra in (b"\n", b" ", b"A", b"0", b"="):
        variants += [note[:pos] + extra + note[pos:] for pos in range(len(note) + 1)]
    accepted = [v for v in variants if not rejected(parse_signed_checkpoint, v, NAME, PUB)]
    assert accepted == []


def test_wrong_key_rejected() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    with pytest.raises(CheckpointError, match="no signature by the key"):
        parse_signed_checkpoint(note, NAME, OTHER_PUB)
    with pytest.raises(CheckpointError, match="no signature by the key"):
        parse_signed_checkpoint(note, "someone.else/log", PUB)


def test_same_name_and_key_id_with_a_forged_signature_rejected() -> None:
    # Another key's signature under our name and key id: a known key whose signature fails.
    forged = OTHER_KEY.sign(CP.body())
    line = f"\u2014 {NAME} {base64.b64encode(key_id(NAME, PUB) + forged).decode()}\n"
    with pytest.raises(CheckpointError, match="does not verify"):
        parse_signed_checkpoint(CP.body() + b"\n" + line.encode(), NAME, PUB)


def test_signatures_by_other_keys_are_ignored() -> None:
    ours = sign_checkpoint(CP, NAME, KEY)
    witness = sign_checkpoint(CP, "witness.example/w1", OTHER_KEY)
    witness_line = witness.split(b"\n\n")[1]
    both = ours + witness_line
    assert parse_signed_checkpoint(both, NAME, PUB) == CP
    assert parse_signed_checkpoint(both, "witness.example/w1", OTHER_PUB) == CP
    # ...but a note that only other keys signed is refused.
    with pytest.raises(CheckpointError, match="no signature by the key"):
        parse_signed_checkpoint(witness, NAME, PUB)


def test_a_failing_signature_by_our_key_rejects_the_note_even_beside_a_good_one() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    bad = f"\u2014 {NAME} {base64.b64encode(key_id(NAME, PUB) + bytes(64)).decode()}\n"
    with pytest.raises(CheckpointError, match="signature 2 by .* does not verify"):
        parse_signed_checkpoint(note + bad.encode(), NAME, PUB)


def test_origin_must_match_when_given() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    with pytest.raises(CheckpointError, match="expected 'other.example/log'"):
        parse_signed_checkpoint(note, NAME, PUB, origin="other.example/log")


def test_too_many_signatures_rejected() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    line = note.split(b"\n\n")[1]
    with pytest.raises(CheckpointError, match="signatures, over"):
        parse_signed_checkpoint(note + line * MAX_SIGNATURES, NAME, PUB)


# --- malformed bodies (properly signed, so only the body checks can refuse them) --------------

B64ROOT = base64.b64encode(ROOT).decode()
URLSAFE_ROOT = base64.urlsafe_b64encode(bytes([0xFB, 0xFF]) * 16).decode()  # has "-" and "_"
EM = "\u2014".encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{NAME}\n012\n{B64ROOT}\n", "not a plain decimal"),  # leading zero
        (f"{NAME}\n00\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n+12\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n-1\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n 12\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n1_000\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n0x10\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n1.0\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n1e3\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n\u0661\u0662\n{B64ROOT}\n", "not a plain decimal"),  # Arabic-Indic digits
        (f"{NAME}\n\n{B64ROOT}\n", "not a plain decimal"),
        (f"{NAME}\n18446744073709551616\n{B64ROOT}\n", "over 2\\*\\*64-1"),
        (f"{NAME}\n12\n{B64ROOT[:-1]}\n", "not valid base64"),  # padding missing
        (f"{NAME}\n12\n{B64ROOT.rstrip('=')}\n", "not valid base64"),
        (f"{NAME}\n12\n{B64ROOT[:-2]}!=\n", "not valid base64"),
        (f"{NAME}\n12\n{B64ROOT[:-2]}h=\n", "not in canonical base64"),  # unused bits set
        (f"{NAME}\n12\n{URLSAFE_ROOT}\n", "not valid base64"),
        (f"{NAME}\n12\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{NAME}\n12\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes"),
        (f"{NAME}\n12\n{B64ROOT}\nextension\n", "extension lines"),
        (f"{NAME}\n12\n", "an origin, a size and a root"),
        (f"\n12\n{B64ROOT}\n", "origin is empty"),
    ],
)
def test_malformed_checkpoint_bodies_rejected(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_signed_checkpoint(sign_text(text.encode()), NAME, PUB)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (b"", "no blank line"),
        (b"just text\n", "no blank line"),
        (CP.body() + b"\n", "does not end with a newline"),
        (CP.body() + b"\n" + EM + b" x\n", "is not"),
        (CP.body() + b"\n" + EM + b" a b c\n", "is not"),
        (CP.body() + b"\n" + EM + b"  AAAAAAAA\n", "is not|key name is empty"),
        (CP.body() + b"\n" + EM + b"x AAAAAAAA\n", "em dash"),
        (CP.body() + b"\n- " + NAME.encode() + b" AAAAAAAA\n", "em dash"),
        (CP.body() + b"\n" + EM + b" " + NAME.encode() + b" AAAAAA==\n", "too short"),
        (CP.body() + b"\n" + EM + b" " + NAME.encode() + b" AAAA AAAA\n", "is not"),
        (CP.body() + b"\n" + EM + b" n AAAA\x00AAAA\n", "control character"),
        (CP.body() + b"\n" + EM + b" n \xff\n", "not UTF-8"),
        (CP.body().replace(b"\n", b"\r\n") + b"\n", "control character"),
    ],
)
def test_malformed_notes_rejected(note: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_signed_checkpoint(note, NAME, PUB)


def test_signature_without_final_newline_rejected() -> None:
    note = sign_checkpoint(CP, NAME, KEY)
    with pytest.raises(CheckpointError, match="does not end with a newline"):
        parse_signed_checkpoint(note[:-1], NAME, PUB)


def test_parse_checkpoint_body_alone() -> None:
    assert parse_checkpoint_body(CP.body()) == CP
    with pytest.raises(CheckpointError, match="end with a newline"):
        parse_checkpoint_body(CP.body()[:-1])


# --- construction errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "size", "root", "message"),
    [
        ("", 1, ROOT, "origin is empty"),
        ("a\nb", 1, ROOT, "newline or control"),
        ("a", -1, ROOT, "not in 0..2"),
        ("a", 2**64, ROOT, "not in 0..2"),
        ("a", True, ROOT, "not in 0..2"),
        ("a", 1, ROOT[:31], "31 bytes"),
    ],
)
def test_invalid_checkpoints_cannot_be_built(
    origin: str, size: int, root: bytes, message: str
) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(origin, size, root)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("a b", "space or a plus"),
        ("a+b", "space or a plus"),
        ("a\u00a0b", "space or a plus"),
        ("a\x7fb", "control character"),
    ],
)
def test_bad_key_names_rejected(name: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        sign_checkpoint(CP, name, KEY)
    with pytest.raises(CheckpointError, match=message):
        verifier_key_string(name, PUB)


def test_sign_note_refuses_text_a_verifier_would_refuse() -> None:
    with pytest.raises(CheckpointError, match="end with a newline"):
        sign_note(b"no newline", NAME, KEY)
    with pytest.raises(CheckpointError, match="control character"):
        sign_note(b"tab\there\n", NAME, KEY)
    with pytest.raises(CheckpointError, match="not UTF-8"):
        sign_note(b"\xff\n", NAME, KEY)


# --- verifier keys ---------------------------------------------------------------------------


def test_every_mangled_verifier_key_is_rejected() -> None:
    # After golang.org/x/mod/sumdb/note TestNewVerifier: every proper substring and every
    # single-character increment of a good key is refused.
    parse_verifier_key(GO_VKEY)
    b = GO_VKEY.encode()
    mangled = [b[i:j] for i in range(len(b) + 1) for j in range(i + 1, len(b) + 1)]
    mangled = [m for m in mangled if m != b]
    mangled += [b[:i] + bytes([b[i] + 1]) + b[i + 1 :] for i in range(len(b))]
    accepted = [
        m for m in mangled if not rejected(parse_verifier_key, m.decode("utf-8", errors="replace"))
    ]
    assert accepted == []


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase hex"),
        ("PeterNeumann+c74f20a3+AhpcAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "type 0x01"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy", "33 bytes|32 bytes"),
        ("PeterNeumann+c74f20a3", "<name>\\+<key id>\\+<key>"),
    ],
)
def test_bad_verifier_keys(vkey: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_verifier_key(vkey)
