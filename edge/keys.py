"""The device signing key on disk: an Ed25519 private key in a file only its owner can read.

Owns: creating and loading the key file (PKCS#8 PEM, mode 0600).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, too open or not an Ed25519 key."""


def create_key_file(path: Path) -> Ed25519PrivateKey:
    """Generate a new key and write it with mode 0600; refuses to overwrite an existing file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; not overwriting it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        # Durable before anyone learns the public key: without the syncs a power cut in the
        # next half minute left an empty key file (ext4 writes the name before the data), and
        # the agent refused to start until the device was provisioned again.
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)
    return key


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key_file(path: Path) -> Ed25519PrivateKey:
    """Load the device key, refusing a file that group or others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(mode):o}; run: chmod 600 {path}"
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise KeyFileError(f"key file {path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"key file {path} does not hold an Ed25519 key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the key file, creating it first if it does not exist."""
    if not path.exists():
        return create_key_file(path)
    return load_key_file(path)
