"""Who is calling, and may they: password hashing, bearer tokens, API keys, role checks.

Owns: the pure credential helpers (argon2 password hashes, SHA-256 digests of bearer tokens and
API-key secrets, the `gmk_<key_id>_<secret>` key format), the `Principal` a request runs as, the
data rule for sites, and the FastAPI dependencies that turn a request into a principal or a clear
401/403. Account rows live in cloud.storage.accounts; this module only reads through it.

No `from __future__ import annotations` here: FastAPI reads the dependency signatures built inside
`Auth.require`, and their `Annotated[..., Depends(...)]` metadata must be real objects.
"""

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from cloud.storage.accounts import Account, AccountStore


class Role(StrEnum):
    """What an account is for."""

    HOMEOWNER = "homeowner"
    INSTALLER = "installer"
    APPROVER = "approver"
    GRID_OPERATOR = "grid_operator"
    ADMIN = "admin"


class AccountStatus(StrEnum):
    """Accounts wait for approval, like devices."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


SESSION_COOKIE = "gridmint_session"
API_KEY_PREFIX = "gmk_"
# The legacy configured admin token acts as this (account-less) admin principal.
LEGACY_ADMIN_ID = "admin-token"

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


async def visible_site_ids(accounts: "AccountStore", principal: Principal) -> list[str] | None:
    """Site ids the principal may see under the data rule; None means all."""
    owner = site_owner_filter(principal)
    if owner is None:
        return None
    return [site.site_id for site in await accounts.list_sites(owner=owner)]


# FastAPI dependencies

_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A bearer token from login, an API key (gmk_...), or the admin token.",
)
_session_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="A bearer token from login, as a cookie."
)


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _invalid_token(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Auth:
    """The request-to-principal dependencies around one AccountStore; build with make_auth."""

    async def page_principal(self, request: Request) -> Principal | None:
        """For server-rendered pages: the caller, or None when there are no (or no longer
        valid) credentials, so the page can send the browser to log in instead of a 401."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        bearer = (
            HTTPAuthorizationCredentials(scheme=scheme, credentials=value.strip())
            if scheme.lower() == "bearer" and value.strip()
            else None
        )
        try:
            return await self.optional_principal(bearer, request.cookies.get(SESSION_COOKIE))
        except HTTPException as exc:
            if exc.status_code == 401:  # expired or logged-out session: log in again
                return None
            raise

    def __init__(self, accounts: "AccountStore", admin_token: str = "") -> None:
        self.accounts = accounts
        self.admin_token = admin_token

        async def optional_principal(
            authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
            session: Annotated[str | None, Depends(_session_cookie)],
        ) -> Principal | None:
            """The caller, or None when no credentials were sent; bad credentials are 401/403.

            `Authorization: Bearer` wins over the session cookie when both are present.
            """
            if authorization is not None:
                return await self._from_bearer(authorization.credentials)
            if session:
                account = await self.accounts.resolve_token(session)
                if account is None:
                    raise _invalid_token("the session has expired or was logged out; log in again")
                return self._principal(account, "session")
            return None

        async def current_principal(
            principal: Annotated[Principal | None, Depends(optional_principal)],
        ) -> Principal:
            """The caller; 401 when no credentials were sent."""
            if principal is None:
                raise _unauthenticated(
                    "not authenticated: send 'Authorization: Bearer <token or API key>' "
                    f"or the {SESSION_COOKIE} cookie"
                )
            return principal

        self.optional_principal = optional_principal
        self.current_principal = current_principal

    def _principal(
        self, account: "Account", via: Literal["session", "bearer", "api_key"]
    ) -> Principal:
        if account.status == AccountStatus.PENDING:
            raise HTTPException(403, "account is waiting for approval")
        if account.status != AccountStatus.APPROVED:
            raise HTTPException(403, "account was rejected")
        return Principal(account.account_id, Role(account.role), account.email, via)

    async def _from_bearer(self, value: str) -> Principal:
        if self.admin_token and hmac.compare_digest(value.encode(), self.admin_token.encode()):
            return Principal(LEGACY_ADMIN_ID, Role.ADMIN, "", "bearer")
        if value.startswith(API_KEY_PREFIX):
            account = await self.accounts.resolve_api_key(value)
            if account is None:
                raise _invalid_token("the API key is not valid or was revoked")
            return self._principal(account, "api_key")
        account = await self.accounts.resolve_token(value)
        if account is None:
            raise _invalid_token("the bearer token is not valid or has expired; log in again")
        return self._principal(account, "bearer")

    def require(
        self, *roles: Role, action: str = "use this endpoint"
    ) -> Callable[..., Awaitable[Principal]]:
        """A dependency that lets through only `roles` (admins always) and returns the caller.

        `action` completes the 403 message: "role homeowner may not <action>".
        """
        allowed = frozenset(roles) | {Role.ADMIN}

        async def dependency(
            principal: Annotated[Principal, Depends(self.current_principal)],
        ) -> Principal:
            if principal.role not in allowed:
                raise HTTPException(403, f"role {principal.role} may not {action}")
            return principal

        return dependency


def make_auth(accounts: "AccountStore", admin_token: str = "") -> Auth:
    """The auth dependencies for an app: `.current_principal`, `.optional_principal`,
    `.require(*roles, action=...)`."""
    return Auth(accounts, admin_token)
