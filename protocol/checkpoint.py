"""Signed checkpoints of the ledger's Merkle log: C2SP tlog-checkpoint inside a C2SP signed note.

Owns: the checkpoint body (origin, decimal size, base64 root), the signed-note envelope around any
text (Ed25519 signature lines, key ids), and the verifier-key string ("vkey") a device is
configured with. Imports nothing of ours and does no I/O; no floats.

Parsing is strict on purpose: a note is either exactly what an honest signer produces or it is
refused. Base64 must be canonical (otherwise unused low bits of the last character could change
without changing the decoded signature), sizes have no leading zeros, and extension lines are
refused (C2SP allows them but does not recommend them, and gridmint never writes them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIG_TYPE_ED25519 = 0x01  # signed-note signature type identifier
KEY_ID_SIZE = 4
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
ROOT_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1
# Verifiers must accept 16 signatures; 100 is what golang.org/x/mod/sumdb/note allows. The byte
# cap bounds the work an attacker can make us do before any signature is checked.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20

SIGNATURE_LINE_PREFIX = "\u2014 "  # em dash, space
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}", re.ASCII)


class CheckpointError(ValueError):
    """A note, checkpoint or verifier key that is malformed or not signed by the expected key."""


# base64 (RFC 4648 section 4, padded)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: alphabet and padding checked, and the encoding must be the one
    `_b64encode` would produce, so exactly one string stands for each byte string."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not valid base64") from None
    if _b64encode(data) != text:
        raise CheckpointError(f"{what} is not in canonical base64 form")
    return data


# keys


def _check_key_name(name: str) -> None:
    if not name:
        raise CheckpointError("key name is empty")
    if "+" in name or any(ch.isspace() for ch in name):
        raise CheckpointError(f"key name {name!r} contains a space or a plus sign")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        raise CheckpointError(f"key name {name!r} contains a control character")


def _check_public_key(public_key: bytes) -> None:
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise CheckpointError(
            f"an Ed25519 public key is {ED25519_PUBLIC_KEY_SIZE} bytes, got {len(public_key)}"
        )


def key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4], the signed-note Ed25519 key id."""
    _check_key_name(name)
    _check_public_key(public_key)
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([SIG_TYPE_ED25519]) + public_key
    ).digest()
    return digest[:KEY_ID_SIZE]


def verifier_key_string(name: str, public_key: bytes) -> str:
    """The vkey form "<name>+<hex key id>+<base64(0x01 || public key)>" a verifier is given."""
    kid = key_id(name, public_key)
    return f"{name}+{kid.hex()}+{_b64encode(bytes([SIG_TYPE_ED25519]) + public_key)}"


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A parsed vkey: who signs (name) and with which raw Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id in this key's signature lines."""
        return key_id(self.name, self.public_key)


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse and check a vkey string; the key id in it must match the name and key."""
    # The name holds no "+", the base64 key may: split at the first two only.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("a verifier key is <name>+<key id>+<key>")
    name, hex_id, encoded = parts
    _check_key_name(name)
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise CheckpointError("the verifier key id must be 8 lowercase hex digits")
    material = _b64decode(encoded, "verifier key")
    if not material or material[0] != SIG_TYPE_ED25519:
        raise CheckpointError("the verifier key is not an Ed25519 (type 0x01) key")
    public_key = material[1:]
    _check_public_key(public_key)
    if key_id(name, public_key) != bytes.fromhex(hex_id):
        raise CheckpointError("the verifier key id does not match its name and key")
    return VerifierKey(name, public_key)


def _public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# signed notes


def _check_note_text(text: str, what: str) -> None:
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise CheckpointError(f"{what} contains a control character other than newline")


def sign_note(text: bytes, name: str, private_key: Ed25519PrivateKey) -> bytes:
    """A signed note: `text`, a blank line, and one Ed25519 signature line by `name`."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("note text is not UTF-8") from None
    if not decoded.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    _check_note_text(decoded, "note text")
    kid = key_id(name, _public_bytes(private_key))
    signature = private_key.sign(text)
    line = f"{SIGNATURE_LINE_PREFIX}{name} {_b64encode(kid + signature)}\n"
    return text + b"\n" + line.encode("utf-8")


def open_note(note: bytes, name: str, public_key: bytes) -> bytes:
    """The text of a signed note, once a signature by (`name`, `public_key`) has verified.

    Signatures by other keys are ignored, as signed-note requires (they may be witnesses or a
    rotated key); every signature that claims to be ours must verify.
    """
    kid = key_id(name, public_key)
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(f"note is {len(note)} bytes, over {MAX_NOTE_BYTES}")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("note is not UTF-8") from None
    _check_note_text(decoded, "note")
    # The text ends at the last blank line; the text keeps its final newline.
    split = decoded.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    text, signature_block = decoded[: split + 1], decoded[split + 2 :]
    if not signature_block.endswith("\n"):
        raise CheckpointError("the last signature line does not end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has {len(lines)} signatures, over {MAX_SIGNATURES}")
    verifier = Ed25519PublicKey.from_public_bytes(public_key)
    signed_text = text.encode("utf-8")
    verified = False
    for number, line in enumerate(lines, start=1):
        if not line.startswith(SIGNATURE_LINE_PREFIX):
            raise CheckpointError(f"signature line {number} does not start with an em dash")
        fields = line[len(SIGNATURE_LINE_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise CheckpointError(f"signature line {number} is not '\u2014 <name> <signature>'")
        line_name, encoded = fields
        _check_key_name(line_name)
        blob = _b64decode(encoded, f"signature {number}")
        if len(blob) <= KEY_ID_SIZE:
            raise CheckpointError(f"signature {number} is too short to hold a key id")
        if line_name != name or blob[:KEY_ID_SIZE] != kid:
            continue  # another signer's line
        signature = blob[KEY_ID_SIZE:]
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise CheckpointError(f"signature {number} by {name} is not an Ed25519 signature")
        try:
            verifier.verify(signature, signed_text)
        except InvalidSignature:
            raise CheckpointError(f"signature {number} by {name} does not verify") from None
        verified = True
    if not verified:
        raise CheckpointError(f"note carries no signature by the key {name}+{kid.hex()}")
    return signed_text


# checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: which log (origin), how many leaves (size), and its RFC 6962 root."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin:
            raise CheckpointError("checkpoint origin is empty")
        if any(ord(ch) < 0x20 for ch in self.origin):
            raise CheckpointError("checkpoint origin contains a newline or control character")
        # type() check: True is an int in Python, but not a tree size.
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {self.size!r} is not in 0..2**64-1")
        if len(self.root) != ROOT_SIZE:
            raise CheckpointError(f"checkpoint root is {len(self.root)} bytes, not {ROOT_SIZE}")

    def body(self) -> bytes:
        """The note text: origin, size, base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{_b64encode(self.root)}\n".encode()


def parse_checkpoint_body(text: bytes) -> Checkpoint:
    """Parse an (already verified) checkpoint note text."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("checkpoint is not UTF-8") from None
    if not decoded.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = decoded[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root line")
    if len(lines) > 3:
        raise CheckpointError("checkpoint has extension lines, which gridmint does not accept")
    origin, size_text, root_text = lines
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a plain decimal number")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"checkpoint size {size_text} is over 2**64-1")
    return Checkpoint(origin, size, _b64decode(root_text, "checkpoint root"))


def sign_checkpoint(cp: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> bytes:
    """The whole signed note for `cp`, signed by `name`'s Ed25519 key."""
    return sign_note(cp.body(), name, private_key)


def parse_signed_checkpoint(
    note: bytes, name: str, public_key: bytes, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note and return its checkpoint.

    `public_key` is the raw 32-byte Ed25519 key of `name`. With `origin`, the checkpoint must
    also be for that log: a valid signature on another log's checkpoint is refused.
    """
    cp = parse_checkpoint_body(open_note(note, name, public_key))
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    return cp
