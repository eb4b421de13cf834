"""The access layer of the Connect API for routes that serve a site's data to utility clients.

Owns: `require_client(scope)`, the FastAPI dependency that turns a request's
`Authorization: Bearer gmu_...` access token into the calling `UtilityClient` (401 with
`WWW-Authenticate: Bearer` when the token is missing, malformed, unknown, expired or its client
was revoked; 403 when the token lacks the scope), and `check_site(...)`, which answers 404 (not
403: whether a site exists is not the client's business) unless the homeowner granted the site
to the client. Both read the database on every request: a revocation holds from the next one.

A meter route uses them like this:

    @router.get("/api/v1/connect/sites/{site_id}/meter/readings", tags=["connect"])
    async def readings(site_id: str, ctx: CtxDep,
                       client: Annotated[UtilityClient, Depends(require_client(METER_READ))]):
        await check_site(ctx, client, site_id)  # 404 unless granted to this client, right now
        ...  # read and return the site's meter data

(`METER_READ` and `UtilityClient` from cloud.domain.utility_access, `CtxDep` from cloud.api.deps.)

Only utility access tokens pass: a user's bearer token, session cookie or API key never does,
and a utility access token is no user credential (cloud.auth refuses it).

No `from __future__ import annotations` here: FastAPI reads the signatures of these dependencies
(see cloud.api.deps).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.deps import ApiContext, CtxDep
from cloud.domain.utility_access import ACCESS_TOKEN_PREFIX, UtilityClient, is_access_token
from cloud.services.utility_access import UtilityAccess

__all__ = ["UtilityAccessDep", "check_site", "require_client", "utility_access", "utility_bearer"]

utility_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="UtilityAccessToken",
    description=(
        f"A utility client's access token ({ACCESS_TOKEN_PREFIX}...) from "
        "POST /api/v1/connect/token (OAuth2 client credentials)."
    ),
)


async def utility_access(ctx: CtxDep) -> UtilityAccess:
    """The app's UtilityAccess; 503 in a context built without it."""
    if ctx.utility_access is None:
        raise HTTPException(503, "utility access is not available in this process")
    return ctx.utility_access


UtilityAccessDep = Annotated[UtilityAccess, Depends(utility_access)]


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def require_client(scope: str) -> Callable[..., Awaitable[UtilityClient]]:
    """A dependency: the calling utility client, whose access token carries `scope`."""

    async def dependency(
        access: UtilityAccessDep,
        authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(utility_bearer)],
    ) -> UtilityClient:
        if authorization is None:
            raise _unauthorized(
                "an access token is needed: get one from POST /api/v1/connect/token with your "
                "client credentials and send 'Authorization: Bearer <token>'"
            )
        if not is_access_token(authorization.credentials):
            raise _unauthorized(
                f"this endpoint takes a utility client's access token ({ACCESS_TOKEN_PREFIX}...) "
                "from POST /api/v1/connect/token, not a user's token or API key",
                "invalid_token",
            )
        client = await access.authenticate(authorization.credentials)
        if client is None:
            raise _unauthorized(
                "the access token is not valid, has expired, or its client was revoked",
                "invalid_token",
            )
        if scope not in client.scopes:
            raise HTTPException(
                403,
                f"the access token lacks the scope {scope}",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        return client

    return dependency


async def check_site(
    ctx_or_access: ApiContext | UtilityAccess, client: UtilityClient, site_id: str
) -> None:
    """Return when `client` may read `site_id` now; else 404, the same answer as for a site
    that does not exist."""
    access = (
        await utility_access(ctx_or_access)
        if isinstance(ctx_or_access, ApiContext)
        else ctx_or_access
    )
    if not await access.may_read(client.client_id, site_id):
        raise HTTPException(404, f"no site {site_id!r} is shared with this client")
