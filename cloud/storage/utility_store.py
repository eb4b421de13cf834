"""Utility clients, their access tokens, homeowners' site grants and the grant log (migration
0016), on SQLite or PostgreSQL.

Owns: every query on utility_clients, utility_tokens, site_grants and site_grant_log. Secrets
never reach the database: client secrets and access tokens are SHA-256 digests. Reads are one
statement each and nothing is cached: a revocation is seen by the very next request. Methods
named `write_*` run inside the caller's transaction (cloud.services.utility_access opens it
with UnitOfWork, so a grant and its log line commit together); the others are one
transaction (or one statement) of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.domain.utility_access import AccessToken, SiteGrant, format_scopes, split_scopes
from cloud.storage.store import single_statement
from cloud.storage.tables import (
    accounts,
    site_grant_log,
    site_grants,
    sites,
    utility_clients,
    utility_tokens,
)

GRANTED = "granted"
REVOKED = "revoked"


class GrantRace(Exception):
    """Another transaction inserted the same (site, client) grant first; try again."""


@dataclass(frozen=True, slots=True)
class StoredClient:
    """A utility client row; `secret_sha256` never leaves the service."""

    client_id: str
    name: str
    secret_sha256: str
    scopes: frozenset[str]
    created_ms: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class GrantView:
    """A live grant, with its client's name."""

    site_id: str
    client_id: str
    client_name: str
    granted_by: str
    granted_ms: int


@dataclass(frozen=True, slots=True)
class GrantLogEntry:
    """One line of a site's grant log, with the client's name and the actor's email (None for
    an actor without an account row, such as the legacy admin token)."""

    id: int
    site_id: str
    client_id: str
    client_name: str
    action: str
    by: str
    by_email: str | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class GrantedSite:
    """A site a client may read."""

    site_id: str
    name: str
    granted_ms: int


@dataclass(frozen=True, slots=True)
class SiteAccess:
    """What decides whether a client reads a site: is the client revoked, and the grant (None:
    never granted)."""

    client_revoked: bool
    grant: SiteGrant | None


def _client(row: Any) -> StoredClient:
    return StoredClient(
        row.client_id,
        row.name,
        row.secret_sha256,
        split_scopes(row.scopes),
        row.created_ms,
        bool(row.revoked),
    )


class UtilityStore:
    """Async queries for utility access over the Store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- clients ----------------------------------------------------------------------------

    async def add_client(
        self, client_id: str, name: str, secret_sha256: str, scopes: frozenset[str], now_ms: int
    ) -> StoredClient:
        """Store a new client (its id is fresh: a collision is an IntegrityError)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(utility_clients).values(
                    client_id=client_id,
                    name=name,
                    secret_sha256=secret_sha256,
                    scopes=format_scopes(scopes),
                    created_ms=now_ms,
                    revoked=0,
                )
            )
        return StoredClient(client_id, name, secret_sha256, scopes, now_ms, False)

    async def client(self, client_id: str) -> StoredClient | None:
        """One client, revoked or not."""
        async with single_statement(self.engine) as conn:
            row = (
                await conn.execute(
                    select(utility_clients).where(utility_clients.c.client_id == client_id)
                )
            ).first()
        return None if row is None else _client(row)

    async def clients(self, *, include_revoked: bool = True) -> list[StoredClient]:
        """Clients, oldest first."""
        query = select(utility_clients).order_by(
            utility_clients.c.created_ms, utility_clients.c.client_id
        )
        if not include_revoked:
            query = query.where(utility_clients.c.revoked == 0)
        async with single_statement(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [_client(r) for r in rows]

    async def write_client_status(
        self, conn: AsyncConnection, client_id: str, *, shared: bool = False
    ) -> bool | None:
        """Inside a transaction: whether the client is revoked (None: no such client). On
        PostgreSQL the row stays locked until the transaction ends, so a grant (`shared`: grants
        do not wait for each other, nor token issuing) and the client's revocation (exclusive)
        never interleave: no live grant is left to a revoked client."""
        row = (
            await conn.execute(
                select(utility_clients.c.revoked)
                .where(utility_clients.c.client_id == client_id)
                .with_for_update(read=shared)
            )
        ).first()
        return None if row is None else bool(row.revoked)

    async def write_revoke_client(
        self, conn: AsyncConnection, client_id: str, now_ms: int
    ) -> list[str]:
        """Inside a transaction: mark the client revoked, drop its access tokens and end its
        live grants; the sites whose grants ended, by id (the caller logs them)."""
        await conn.execute(
            update(utility_clients)
            .where(utility_clients.c.client_id == client_id)
            .values(revoked=1)
        )
        await conn.execute(delete(utility_tokens).where(utility_tokens.c.client_id == client_id))
        live = and_(site_grants.c.client_id == client_id, site_grants.c.revoked_ms.is_(None))
        ended = [
            r.site_id
            for r in (
                await conn.execute(
                    select(site_grants.c.site_id).where(live).order_by(site_grants.c.site_id)
                )
            ).all()
        ]
        if ended:
            await conn.execute(update(site_grants).where(live).values(revoked_ms=now_ms))
        return ended

    # --- access tokens ------------------------------------------------------------------------

    async def write_token(
        self,
        conn: AsyncConnection,
        token_sha256: str,
        client_id: str,
        scopes: frozenset[str],
        expires_ms: int,
    ) -> None:
        """Inside a transaction: store an access token's digest."""
        await conn.execute(
            insert(utility_tokens).values(
                token_sha256=token_sha256,
                client_id=client_id,
                scopes=format_scopes(scopes),
                expires_ms=expires_ms,
            )
        )

    async def write_forget_expired_tokens(
        self, conn: AsyncConnection, client_id: str, now_ms: int
    ) -> None:
        """Inside a transaction: drop the client's expired tokens (so the table holds about one
        hour of tokens per client, however often it asks)."""
        await conn.execute(
            delete(utility_tokens).where(
                utility_tokens.c.client_id == client_id, utility_tokens.c.expires_ms <= now_ms
            )
        )

    async def token(self, token_sha256: str, now_ms: int) -> tuple[AccessToken, str] | None:
        """A live token of a client that is not revoked, with the client's name; None else."""
        query = (
            select(
                utility_tokens.c.client_id,
                utility_tokens.c.scopes,
                utility_tokens.c.expires_ms,
                utility_clients.c.name,
            )
            .join(utility_clients, utility_clients.c.client_id == utility_tokens.c.client_id)
            .where(
                utility_tokens.c.token_sha256 == token_sha256,
                utility_tokens.c.expires_ms > now_ms,
                utility_clients.c.revoked == 0,
            )
        )
        async with single_statement(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return AccessToken(row.client_id, split_scopes(row.scopes), row.expires_ms), row.name

    # --- grants -------------------------------------------------------------------------------

    async def write_grant(
        self, conn: AsyncConnection, site_id: str, client_id: str, by: str, now_ms: int
    ) -> bool:
        """Inside a transaction: grant `site_id` to `client_id`; False when it already was (a
        live grant is left as it is). GrantRace when another transaction inserted it first."""
        key = and_(site_grants.c.site_id == site_id, site_grants.c.client_id == client_id)
        renewed = await conn.execute(
            update(site_grants)
            .where(key, site_grants.c.revoked_ms.is_not(None))
            .values(granted_by=by, granted_ms=now_ms, revoked_ms=None)
        )
        if renewed.rowcount:
            return True
        if (await conn.execute(select(site_grants.c.site_id).where(key))).first() is not None:
            return False  # live already
        try:
            await conn.execute(
                insert(site_grants).values(
                    site_id=site_id,
                    client_id=client_id,
                    granted_by=by,
                    granted_ms=now_ms,
                    revoked_ms=None,
                )
            )
        except IntegrityError:
            raise GrantRace(f"{site_id}/{client_id}") from None
        return True

    async def write_revoke_grant(
        self, conn: AsyncConnection, site_id: str, client_id: str, now_ms: int
    ) -> SiteGrant | None:
        """Inside a transaction: end a live grant; the grant as ended, None when there was
        none."""
        live = and_(
            site_grants.c.site_id == site_id,
            site_grants.c.client_id == client_id,
            site_grants.c.revoked_ms.is_(None),
        )
        row = (
            await conn.execute(
                select(site_grants.c.granted_by, site_grants.c.granted_ms)
                .where(live)
                .with_for_update()
            )
        ).first()
        if row is None:
            return None
        result = await conn.execute(update(site_grants).where(live).values(revoked_ms=now_ms))
        if not result.rowcount:  # SQLite: ended by another writer between the two statements
            return None
        return SiteGrant(site_id, client_id, row.granted_by, row.granted_ms, now_ms)

    async def write_log(
        self, conn: AsyncConnection, site_id: str, client_id: str, action: str, by: str, at_ms: int
    ) -> None:
        """Inside a transaction: append a line to the site's grant log."""
        await conn.execute(
            insert(site_grant_log).values(
                site_id=site_id, client_id=client_id, action=action, by=by, at_ms=at_ms
            )
        )

    async def live_grants(self, site_id: str) -> list[GrantView]:
        """The site's live grants, oldest first."""
        query = (
            select(site_grants, utility_clients.c.name)
            .join(utility_clients, utility_clients.c.client_id == site_grants.c.client_id)
            .where(site_grants.c.site_id == site_id, site_grants.c.revoked_ms.is_(None))
            .order_by(site_grants.c.granted_ms, site_grants.c.client_id)
        )
        async with single_statement(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [GrantView(r.site_id, r.client_id, r.name, r.granted_by, r.granted_ms) for r in rows]

    async def grant(self, site_id: str, client_id: str) -> GrantView | None:
        """One live grant; None when there is none."""
        query = (
            select(site_grants, utility_clients.c.name)
            .join(utility_clients, utility_clients.c.client_id == site_grants.c.client_id)
            .where(
                site_grants.c.site_id == site_id,
                site_grants.c.client_id == client_id,
                site_grants.c.revoked_ms.is_(None),
            )
        )
        async with single_statement(self.engine) as conn:
            r = (await conn.execute(query)).first()
        return (
            None
            if r is None
            else GrantView(r.site_id, r.client_id, r.name, r.granted_by, r.granted_ms)
        )

    async def log(self, site_id: str, limit: int = 50) -> list[GrantLogEntry]:
        """The site's grant log, newest first."""
        query = (
            select(
                site_grant_log,
                utility_clients.c.name.label("client_name"),
                accounts.c.email.label("by_email"),
            )
            .select_from(
                site_grant_log.outerjoin(
                    utility_clients, utility_clients.c.client_id == site_grant_log.c.client_id
                ).outerjoin(accounts, accounts.c.account_id == site_grant_log.c.by)
            )
            .where(site_grant_log.c.site_id == site_id)
            .order_by(site_grant_log.c.id.desc())
            .limit(limit)
        )
        async with single_statement(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [
            GrantLogEntry(
                r.id,
                r.site_id,
                r.client_id,
                r.client_name or r.client_id,
                r.action,
                r.by,
                r.by_email,
                r.at_ms,
            )
            for r in rows
        ]

    async def sites_of(self, client_id: str) -> list[GrantedSite]:
        """The sites with a live grant to the client, if the client is not revoked; by id."""
        query = (
            select(sites.c.site_id, sites.c.name, site_grants.c.granted_ms)
            .select_from(
                site_grants.join(sites, sites.c.site_id == site_grants.c.site_id).join(
                    utility_clients, utility_clients.c.client_id == site_grants.c.client_id
                )
            )
            .where(
                site_grants.c.client_id == client_id,
                site_grants.c.revoked_ms.is_(None),
                utility_clients.c.revoked == 0,
            )
            .order_by(sites.c.site_id)
        )
        async with single_statement(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return [GrantedSite(r.site_id, r.name, r.granted_ms) for r in rows]

    async def access(self, client_id: str, site_id: str) -> SiteAccess | None:
        """The facts of the access rule for (client, site) in one statement; None for an
        unknown client."""
        query = (
            select(
                utility_clients.c.revoked,
                site_grants.c.site_id,
                site_grants.c.granted_by,
                site_grants.c.granted_ms,
                site_grants.c.revoked_ms,
            )
            .select_from(
                utility_clients.outerjoin(
                    site_grants,
                    and_(
                        site_grants.c.client_id == utility_clients.c.client_id,
                        site_grants.c.site_id == site_id,
                    ),
                )
            )
            .where(utility_clients.c.client_id == client_id)
        )
        async with single_statement(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        grant = (
            None
            if row.site_id is None
            else SiteGrant(row.site_id, client_id, row.granted_by, row.granted_ms, row.revoked_ms)
        )
        return SiteAccess(bool(row.revoked), grant)
