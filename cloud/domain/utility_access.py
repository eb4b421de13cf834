"""Who may read a site's meter data from outside: utility (machine) clients, their scopes and
access tokens, and the homeowner's grant. Pure: no I/O, no clock (times are passed in).

Owns: the known scopes, parsing and checking of scope strings (RFC 6749 §3.3), the formats of
client ids, client secrets and access tokens, and the access rule:

    a client reads a site iff the client is not revoked, the token it presents is live and
    carries the scope, and the site has a live grant to that client.

Storage (cloud.storage.utility_store) keeps only SHA-256 digests of secrets and tokens; the
service (cloud.services.utility_access) and the request side (cloud.api.connect_auth) build on
these rules.

The prefixes keep the credentials apart: an access token (`gmu_...`) is never a user's bearer
token (unprefixed), API key (`gmk_...`) or OpenADR token (`oa3....`), and the other way round.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from cloud.domain.identity import secret_digest

METER_READ = "meter:read"
#: Every scope a utility client may hold. Reading one site's meter data is the only one so far.
KNOWN_SCOPES = frozenset({METER_READ})

CLIENT_ID_PREFIX = "uc-"
CLIENT_SECRET_PREFIX = "gmcs_"  # noqa: S105 - a prefix, not a secret
ACCESS_TOKEN_PREFIX = "gmu_"  # noqa: S105 - a prefix, not a secret
ACCESS_TOKEN_LIFETIME_S = 3600
MAX_CLIENT_NAME_CHARS = 100
# A scope-token is 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII but space, '"' and '\'.
_SCOPE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
_TOKEN_BYTES = 32  # token_urlsafe(32): 43 characters


class ScopeError(ValueError):
    """A requested scope is malformed, unknown, or more than the client holds (`invalid_scope`)."""


# --- scopes -----------------------------------------------------------------------------------


def split_scopes(text: str) -> frozenset[str]:
    """The scope-tokens of a space-separated scope string; ScopeError when one is malformed.

    Only single spaces separate tokens in the RFC; runs of spaces and surrounding spaces are
    tolerated here because clients in the wild send them, and they are unambiguous.
    """
    tokens = text.split(" ")
    found = frozenset(t for t in tokens if t)
    for t in found:
        if not set(t) <= _SCOPE_CHARS:
            raise ScopeError(f"scope {t!r} is malformed")
    return found


def client_scopes(requested: str | Iterable[str]) -> frozenset[str]:
    """The scopes an admin registers a client with: at least one, each known."""
    found = (
        split_scopes(requested) if isinstance(requested, str) else split_scopes(" ".join(requested))
    )
    if not found:
        raise ScopeError(f"a client needs at least one scope: {format_scopes(KNOWN_SCOPES)}")
    unknown = found - KNOWN_SCOPES
    if unknown:
        raise ScopeError(
            f"unknown scope {format_scopes(unknown)}; known: {format_scopes(KNOWN_SCOPES)}"
        )
    return found


def token_scopes(requested: str | None, held: frozenset[str]) -> frozenset[str]:
    """The scopes to put in an access token: all the client holds when none are asked, else
    exactly those asked, which must all be known and held (RFC 6749: an over-broad request is
    refused with `invalid_scope`, not silently narrowed)."""
    asked = split_scopes(requested or "")
    if not asked:
        return held
    unknown = asked - KNOWN_SCOPES
    if unknown:
        raise ScopeError(f"unknown scope {format_scopes(unknown)}")
    missing = asked - held
    if missing:
        raise ScopeError(f"this client does not hold the scope {format_scopes(missing)}")
    return asked


def format_scopes(scopes: Iterable[str]) -> str:
    """Scopes as stored and sent: sorted, space separated."""
    return " ".join(sorted(scopes))


# --- names and credentials ----------------------------------------------------------------------


def client_name(name: str) -> str:
    """A client's display name, trimmed: 1 to 100 characters, no control characters."""
    name = name.strip()
    if not name:
        raise ValueError("the client's name must not be empty")
    if len(name) > MAX_CLIENT_NAME_CHARS:
        raise ValueError(f"the client's name is longer than {MAX_CLIENT_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError("the client's name must not contain control characters")
    return name


def new_client_id() -> str:
    """`uc-` and 16 hex digits."""
    return CLIENT_ID_PREFIX + secrets.token_hex(8)


def is_client_id(value: str) -> bool:
    """Whether `value` has the form of a client id (it may still be unknown)."""
    body = value[len(CLIENT_ID_PREFIX) :]
    return value.startswith(CLIENT_ID_PREFIX) and len(body) == 16 and set(body) <= _HEX


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A fresh secret or token: give `value` to the client once, store only `digest`."""

    value: str
    digest: str


def _new(prefix: str) -> NewSecret:
    value = prefix + secrets.token_urlsafe(_TOKEN_BYTES)
    return NewSecret(value, secret_digest(value))


def new_client_secret() -> NewSecret:
    """A client secret `gmcs_<43 urlsafe characters>`."""
    return _new(CLIENT_SECRET_PREFIX)


def new_access_token() -> NewSecret:
    """An access token `gmu_<43 urlsafe characters>`."""
    return _new(ACCESS_TOKEN_PREFIX)


def _has_form(value: str, prefix: str) -> bool:
    body = value[len(prefix) :]
    return value.startswith(prefix) and len(body) == 43 and set(body) <= _URLSAFE


def is_access_token(value: str) -> bool:
    """Whether `value` has the form of a utility access token (it may still be unknown)."""
    return _has_form(value, ACCESS_TOKEN_PREFIX)


def is_client_secret(value: str) -> bool:
    """Whether `value` has the form of a client secret."""
    return _has_form(value, CLIENT_SECRET_PREFIX)


# --- the access rule ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UtilityClient:
    """A utility's system, as a request runs: who, and what its token allows."""

    client_id: str
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A stored access token's facts."""

    client_id: str
    scopes: frozenset[str]
    expires_ms: int


@dataclass(frozen=True, slots=True)
class SiteGrant:
    """A homeowner's grant of one site to one client; `revoked_ms` None while it lasts."""

    site_id: str
    client_id: str
    granted_by: str
    granted_ms: int
    revoked_ms: int | None = None

    @property
    def live(self) -> bool:
        """Not revoked (a grant has no end time of its own)."""
        return self.revoked_ms is None


def token_is_live(token: AccessToken, now_ms: int) -> bool:
    """An access token lasts until its expiry, exclusive."""
    return now_ms < token.expires_ms


def token_allows(token: AccessToken | None, scope: str, now_ms: int) -> bool:
    """The token exists, is live and carries `scope`."""
    return token is not None and token_is_live(token, now_ms) and scope in token.scopes


def grant_allows(client_revoked: bool, grant: SiteGrant | None) -> bool:
    """The site has a live grant to a client that is not revoked."""
    return not client_revoked and grant is not None and grant.live


def may_read(
    *,
    client_revoked: bool,
    token: AccessToken | None,
    grant: SiteGrant | None,
    now_ms: int,
    scope: str = METER_READ,
) -> bool:
    """The rule: a client reads a site iff it is not revoked, its token is live and has the
    scope, and the site has a live grant to it (the grant must name the token's client)."""
    return (
        token_allows(token, scope, now_ms)
        and grant_allows(client_revoked, grant)
        and grant is not None
        and token is not None
        and grant.client_id == token.client_id
    )
