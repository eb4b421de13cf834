"""Who is calling, and may they: the FastAPI dependencies that turn a request into a principal.

Owns: bearer tokens, API keys, session cookies and the admin token as request credentials, role
checks, and clear 401/403 answers. The pure parts (roles, statuses, credential formats, the site
rule) live in cloud.domain.identity; account rows in cloud.storage.accounts, read through here.

No `from __future__ import annotations` here: FastAPI reads the dependency signatures built inside
`Auth.require`, and their `Annotated[..., Depends(...)]` metadata must be real objects.
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from cloud.domain.identity import (
    API_KEY_PREFIX,
    AccountStatus,
    Principal,
    Role,
    can_see_site,
    site_owner_filter,
)
from cloud.domain.utility_access import is_access_token

if TYPE_CHECKING:
    from cloud.storage.accounts import Account, AccountStore

__all__ = [
    "LEGACY_ADMIN_ID",
    "SESSION_COOKIE",
    "Auth",
    "bearer_scheme",
    "session_cookie",
    "Principal",
    "Role",
    "can_see_site",
    "make_auth",
    "site_owner_filter",
    "visible_site_ids",
]

SESSION_COOKIE = "gridmint_session"
# The legacy configured admin token acts as this (account-less) admin principal.
LEGACY_ADMIN_ID = "admin-token"


async def visible_site_ids(accounts: "AccountStore", principal: Principal) -> list[str] | None:
    """Site ids the principal may see under the data rule; None means all."""
    owner = site_owner_filter(principal)
    if owner is None:
        return None
    return [site.site_id for site in await accounts.list_sites(owner=owner)]


# FastAPI dependencies

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A bearer token from login, an API key (gmk_...), or the admin token.",
)
session_cookie = APIKeyCookie(
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
            authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
            session: Annotated[str | None, Depends(session_cookie)],
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
            if is_access_token(value):  # never in auth_tokens: say where it does belong
                raise _invalid_token(
                    "a utility client's access token is not a user credential: only the "
                    "Connect API's client endpoints accept it"
                )
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
            return self.check_role(principal, allowed, action)

        return dependency

    @staticmethod
    def check_role(principal: Principal, allowed: frozenset[Role], action: str) -> Principal:
        """`principal` if its role is in `allowed`, else the 403 "role homeowner may not
        <action>"."""
        if principal.role not in allowed:
            raise HTTPException(403, f"role {principal.role} may not {action}")
        return principal


def make_auth(accounts: "AccountStore", admin_token: str = "") -> Auth:
    """The auth dependencies for an app: `.current_principal`, `.optional_principal`,
    `.require(*roles, action=...)`."""
    return Auth(accounts, admin_token)
