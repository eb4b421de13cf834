"""Who an account is and what it may see: roles, statuses, credential formats and the site rule.

Owns: the pure credential helpers (argon2 password hashes, SHA-256 digests of bearer tokens and
API-key secrets, the `gmk_<key_id>_<secret>` key format), the `Principal` a request runs as, and
the data rule for sites. No I/O and no web framework: storage (cloud.storage.accounts) and the
request side (cloud.auth) both build on it, so neither has to import the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Role(StrEnum):
    """What an account is for."""

    HOMEOWNER = "homeowner"
    INSTALLER = "installer"
    APPROVER = "approver"
    GRID_OPERATOR = "grid_operator"
    ADMIN = "admin"
    # The carbon shop (docs/carbon-shop.md): an offset project provider lists projects and
    # lots (approved like every other account); a buyer is a plain shop customer.
    PROVIDER = "provider"
    BUYER = "buyer"


class AccountStatus(StrEnum):
    """Accounts wait for approval, like devices."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


API_KEY_PREFIX = "gmk_"

# passwords


_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash (with its own salt and parameters) of a password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches the stored hash; a malformed hash never matches."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's and should be redone."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


# bearer tokens and API keys


def secret_digest(secret: str) -> str:
    """SHA-256 hex digest of a high-entropy secret (bearer token or API-key secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_bearer_token() -> tuple[str, str]:
    """A fresh bearer token and the digest to store in its place."""
    token = secrets.token_urlsafe(32)
    return token, secret_digest(token)


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly made API key: show `key` once, store `key_id` and `key_hash`."""

    key: str
    key_id: str
    key_hash: str


def new_api_key() -> NewApiKey:
    """An API key `gmk_<key_id>_<secret>`; key_id is 16 hex digits, the secret is urlsafe."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(f"{API_KEY_PREFIX}{key_id}_{secret}", key_id, secret_digest(secret))


def parse_api_key(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed API key, else None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not secret or len(key_id) != 16:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def api_key_matches(secret: str, key_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored digest."""
    return hmac.compare_digest(secret_digest(secret).encode(), key_hash.encode())


# principals and data rules


@dataclass(frozen=True, slots=True)
class Principal:
    """The account a request runs as, and how it proved it."""

    account_id: str
    role: Role
    email: str
    via: Literal["session", "bearer", "api_key"]


class _HasOwner(Protocol):
    @property
    def owner_account_id(self) -> str: ...


def can_see_site(principal: Principal, site: _HasOwner) -> bool:
    """The data rule for sites: homeowners see only their own; every other role sees all.

    Installers will later be limited to sites they created claim codes for.
    """
    if principal.role is Role.HOMEOWNER:
        return site.owner_account_id == principal.account_id
    return True


def site_owner_filter(principal: Principal) -> str | None:
    """The `owner` to pass to AccountStore.list_sites for this principal (None: all sites)."""
    return principal.account_id if principal.role is Role.HOMEOWNER else None
