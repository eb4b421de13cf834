"""Utility access for the Connect API: the clients an admin registers, the access tokens they
get with their client credentials, and the grants by which homeowners let them read a site.

Owns: the transactions. A grant or a revocation and its line in the site's grant log commit
together; revoking a client ends its grants (each logged, by the admin) and drops its tokens in
the same transaction. Nothing is cached: `authenticate` and `may_read` read the database on
every call, so a revocation takes effect on the very next request. The rules (scopes, formats,
who reads what) are cloud.domain.utility_access's; the SQL cloud.storage.utility_store's.

Who may call what (admin, the site's owner) is the API's concern (cloud.api.connect_auth_routes),
and so is whether a site exists: this service trusts the site ids it is given.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud.domain.identity import secret_digest
from cloud.domain.utility_access import (
    ACCESS_TOKEN_LIFETIME_S,
    ScopeError,
    SiteGrant,
    UtilityClient,
    client_name,
    client_scopes,
    grant_allows,
    is_access_token,
    is_client_id,
    is_client_secret,
    new_access_token,
    new_client_id,
    new_client_secret,
    token_is_live,
    token_scopes,
)
from cloud.storage.unit_of_work import UnitOfWork
from cloud.storage.utility_store import (
    GRANTED,
    REVOKED,
    GrantedSite,
    GrantLogEntry,
    GrantRace,
    GrantView,
    StoredClient,
    UtilityStore,
)

__all__ = [
    "ClientInfo",
    "InvalidClient",
    "IssuedToken",
    "NoSuchGrant",
    "RegisteredClient",
    "ScopeError",
    "SiteGrants",
    "UnknownClient",
    "UtilityAccess",
    "UtilityClient",
]


class InvalidClient(ValueError):
    """Unknown client, wrong secret, or a revoked client (one answer for all: `invalid_client`)."""


class UnknownClient(LookupError):
    """No client with this id (for a grant: or it was revoked)."""


class NoSuchGrant(LookupError):
    """The site has no live grant to this client."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A client as an admin lists it (never its secret)."""

    client_id: str
    name: str
    scopes: frozenset[str]
    created_ms: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A new client and its secret, which is shown now and never again."""

    client: ClientInfo
    client_secret: str


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token for the client credentials grant."""

    access_token: str
    expires_in: int
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class SiteGrants:
    """Who may read a site now, and the log of grants and revocations (newest first)."""

    site_id: str
    current: list[GrantView]
    log: list[GrantLogEntry]


def _info(c: StoredClient) -> ClientInfo:
    return ClientInfo(c.client_id, c.name, c.scopes, c.created_ms, c.revoked)


class UtilityAccess:
    """Clients, tokens and grants over one UtilityStore."""

    def __init__(self, store: UtilityStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- clients (admin) ----------------------------------------------------------------------

    async def register_client(self, name: str, scopes: str | list[str]) -> RegisteredClient:
        """A new client; ValueError for a bad name, ScopeError for bad scopes."""
        name = client_name(name)
        held = client_scopes(scopes)
        secret = new_client_secret()
        stored = await self.store.add_client(
            new_client_id(), name, secret.digest, held, self._now_ms()
        )
        return RegisteredClient(_info(stored), secret.value)

    async def list_clients(self) -> list[ClientInfo]:
        """Every client, revoked ones too, oldest first."""
        return [_info(c) for c in await self.store.clients()]

    async def directory(self) -> list[ClientInfo]:
        """The clients a homeowner may grant to: those not revoked, by name."""
        found = [_info(c) for c in await self.store.clients(include_revoked=False)]
        return sorted(found, key=lambda c: (c.name.lower(), c.client_id))

    async def revoke_client(self, client_id: str, by: str) -> ClientInfo:
        """Revoke a client: its tokens stop working and its grants end (logged as revoked by
        `by`). Revoking a revoked client changes nothing. UnknownClient when there is none."""
        now = self._now_ms()
        async with UnitOfWork(self.store.engine) as conn:
            revoked = await self.store.write_client_status(conn, client_id)
            if revoked is None:
                raise UnknownClient(client_id)
            if not revoked:
                for site_id in await self.store.write_revoke_client(conn, client_id, now):
                    await self.store.write_log(conn, site_id, client_id, REVOKED, by, now)
        stored = await self.store.client(client_id)
        assert stored is not None
        return _info(stored)

    # --- tokens (the client credentials grant) ------------------------------------------------

    async def issue_token(
        self, client_id: str, client_secret: str, scope: str | None
    ) -> IssuedToken:
        """An access token for good credentials of a client that is not revoked, with the asked
        scopes (all it holds when none are asked). InvalidClient or ScopeError otherwise."""
        stored = await self.store.client(client_id) if is_client_id(client_id) else None
        presented = secret_digest(client_secret) if is_client_secret(client_secret) else ""
        if (
            stored is None
            or stored.revoked
            or not hmac.compare_digest(presented.encode(), stored.secret_sha256.encode())
        ):
            raise InvalidClient("unknown client, wrong secret, or a revoked client")
        granted = token_scopes(scope, stored.scopes)
        token = new_access_token()
        now = self._now_ms()
        async with UnitOfWork(self.store.engine) as conn:
            await self.store.write_forget_expired_tokens(conn, client_id, now)
            await self.store.write_token(
                conn, token.digest, client_id, granted, now + ACCESS_TOKEN_LIFETIME_S * 1000
            )
        return IssuedToken(token.value, ACCESS_TOKEN_LIFETIME_S, granted)

    async def authenticate(self, bearer: str) -> UtilityClient | None:
        """The client of a live access token whose client is not revoked; None otherwise (also
        for a user's bearer token or API key, which never have the access token's form)."""
        if not is_access_token(bearer):
            return None
        now = self._now_ms()
        found = await self.store.token(secret_digest(bearer), now)
        if found is None:
            return None
        token, name = found
        if not token_is_live(token, now):
            return None
        return UtilityClient(token.client_id, name, token.scopes)

    # --- grants (homeowners) ------------------------------------------------------------------

    async def grant(self, site_id: str, client_id: str, by: str) -> tuple[GrantView, bool]:
        """Let `client_id` read `site_id`; (the grant, whether it is new). A live grant is left
        as it is (and not logged again). UnknownClient for an unknown or revoked client."""
        for _attempt in range(2):
            now = self._now_ms()
            try:
                async with UnitOfWork(self.store.engine) as conn:
                    status = await self.store.write_client_status(conn, client_id, shared=True)
                    if status in (None, True):
                        raise UnknownClient(client_id)
                    created = await self.store.write_grant(conn, site_id, client_id, by, now)
                    if created:
                        await self.store.write_log(conn, site_id, client_id, GRANTED, by, now)
            except GrantRace:
                continue  # granted meanwhile by another request: read it as live next time
            view = await self.store.grant(site_id, client_id)
            if view is not None:
                return view, created
        raise UnknownClient(client_id)  # revoked between the grant and the read

    async def revoke(self, site_id: str, client_id: str, by: str) -> SiteGrant:
        """End a live grant; the grant as ended. NoSuchGrant when there is none."""
        now = self._now_ms()
        async with UnitOfWork(self.store.engine) as conn:
            ended = await self.store.write_revoke_grant(conn, site_id, client_id, now)
            if ended is None:
                raise NoSuchGrant(f"{site_id}/{client_id}")
            await self.store.write_log(conn, site_id, client_id, REVOKED, by, now)
        return ended

    async def grants(self, site_id: str, log_limit: int = 50) -> SiteGrants:
        """The site's live grants and its grant log (newest first)."""
        return SiteGrants(
            site_id,
            await self.store.live_grants(site_id),
            await self.store.log(site_id, log_limit),
        )

    # --- what a client may read ---------------------------------------------------------------

    async def sites_of(self, client_id: str) -> list[GrantedSite]:
        """The sites the client may read now (none once it is revoked), by id."""
        return await self.store.sites_of(client_id)

    async def may_read(self, client_id: str, site_id: str) -> bool:
        """Whether the client may read the site now: read afresh on every call."""
        access = await self.store.access(client_id, site_id)
        return access is not None and grant_allows(access.client_revoked, access.grant)
