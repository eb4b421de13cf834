"""Accounts, homeowners' sites, login bearer tokens and service API keys, on SQLite or PostgreSQL.

Owns: every query on the accounts, sites, auth_tokens and api_keys tables. It shares the engine
(and the migrated schema) of cloud.storage.store.Store: `AccountStore(store.engine)`. Secrets
never reach the database: passwords are argon2 hashes, tokens and key secrets SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.domain.identity import (
    AccountStatus,
    Role,
    api_key_matches,
    hash_password,
    new_api_key,
    new_bearer_token,
    parse_api_key,
    password_needs_rehash,
    secret_digest,
    verify_password,
)
from cloud.storage.store import single_statement
from cloud.storage.tables import (
    account_decisions,
    accounts,
    api_keys,
    auth_tokens,
    server_secrets,
    sites,
)

MIN_PASSWORD_CHARS = 8
log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL_S = 12 * 3600
# Verified against when the email is unknown, so both failures cost the same argon2 work.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class LoginError(ValueError):
    """Login refused: wrong credentials, or an account that is not approved."""


@dataclass(frozen=True, slots=True)
class Account:
    """A person's or service's account (without its password hash)."""

    account_id: str
    email: str
    display_name: str
    role: Role
    status: AccountStatus
    created_ms: int
    # The profile (migration 0019): individual or business, the business's name and number,
    # the affiliation (none: a plain buyer; provider), and when the email was verified.
    account_type: str = "individual"
    business_name: str = ""
    business_id: str = ""
    affiliation: str = "none"
    email_verified_ms: int | None = None

    @property
    def email_verified(self) -> bool:
        return self.email_verified_ms is not None


@dataclass(frozen=True, slots=True)
class AccountDecisionRow:
    """One approver decision on an account."""

    account_id: str
    email: str
    decided_by: str
    decided_by_email: str | None
    decided_ms: int
    old_status: str
    new_status: str
    reason: str


@dataclass(frozen=True, slots=True)
class Site:
    """A homeowner's site."""

    site_id: str
    owner_account_id: str
    name: str
    zone: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as listed (never the secret)."""

    key_id: str
    account_id: str
    name: str
    created_ms: int
    revoked: bool


def _account(row: Any) -> Account:
    return Account(
        account_id=row.account_id,
        email=row.email,
        display_name=row.display_name,
        role=Role(row.role),
        status=AccountStatus(row.status),
        created_ms=row.created_ms,
        account_type=row.account_type,
        business_name=row.business_name,
        business_id=row.business_id,
        affiliation=row.affiliation,
        email_verified_ms=row.email_verified_ms,
    )


def _site(row: Any) -> Site:
    return Site(row.site_id, row.owner_account_id, row.name, row.zone, row.created_ms)


def normalise_email(email: str) -> str:
    """Emails are compared trimmed and lower-case."""
    return email.strip().lower()


CREDENTIAL_TTL_S = 5.0  # how long a resolved bearer token or API key is trusted without a read


class _CredentialCache:
    """Accounts of credentials resolved recently, shared by every AccountStore on one engine.

    Every authenticated request resolves its credential; reading it from the database each
    time cost more than placing the order it carried (benchmarks/RESULTS.md). A logout, a
    revoked key or an approver's decision in this process clears the cache at once; another
    API process on the same database sees it within CREDENTIAL_TTL_S.
    """

    def __init__(self) -> None:
        # key -> (account, trusted until, refreshed in the background from)
        self.entries: dict[str, tuple[Account, float, float]] = {}
        # Bumped by every clear: a read that began before a revocation committed must not
        # put its (older) answer back after the clear.
        self.generation = 0
        # Reads in flight, by key: requests that miss together share one read (when an entry
        # expires, every request of that credential in the next few milliseconds misses).
        self.reads: dict[str, asyncio.Future[Account | None]] = {}
        self.refreshing: set[str] = set()
        self._refresh_tasks: set[asyncio.Task[None]] = set()
        self._refresh_slots = asyncio.Semaphore(2)  # a refresh never takes the whole pool

    def get(self, key: str, now: float) -> Account | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        if hit[1] <= now:
            del self.entries[key]
            return None
        return hit[0]

    def due(self, key: str, now: float) -> bool:
        """The entry is past half its life: read it again in the background (`refresh`), so
        that it does not expire under load. Without this every request of a credential waits
        for a read when its entry expires, and all the entries read together expire together:
        a burst of reads that took the pool from the group commit (a 200-400 ms stall every
        few seconds at 500 orders/s; benchmarks/RESULTS.md)."""
        hit = self.entries.get(key)
        return hit is not None and hit[2] <= now and key not in self.reads

    def refresh(self, key: str, read: Callable[[], Awaitable[Account | None]]) -> None:
        """Read `key` again in a task of its own, two refreshes at a time at most."""
        if key in self.refreshing:
            return
        self.refreshing.add(key)

        async def run() -> None:
            try:
                async with self._refresh_slots:
                    if await self.read_once(key, read) is None:
                        self.entries.pop(key, None)  # revoked or expired meanwhile
            except Exception as exc:  # the entry expires as usual; a request then reads it
                log.warning("refreshing a credential failed: %s", exc)
            finally:
                self.refreshing.discard(key)

        task = asyncio.ensure_future(run())
        self._refresh_tasks.add(task)
        task.add_done_callback(self._refresh_tasks.discard)

    def clear(self) -> None:
        self.entries.clear()
        self.reads.clear()  # a read begun before the change answers only those who asked
        self.generation += 1

    async def read_once(
        self, key: str, read: Callable[[], Awaitable[Account | None]]
    ) -> Account | None:
        """`read()`, or the answer of the same read already in flight for `key`."""
        reading = self.reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(read())
            self.reads[key] = reading

            def done(f: asyncio.Future[Account | None]) -> None:
                if self.reads.get(key) is f:
                    del self.reads[key]
                if not f.cancelled():
                    f.exception()  # retrieved here too, should every waiter have gone

            reading.add_done_callback(done)
        # Shielded: a caller that goes away (client disconnect) does not cancel the others'.
        return await asyncio.shield(reading)

    def put(
        self, key: str, account: Account, until: float, refresh_at: float, generation: int
    ) -> None:
        if generation != self.generation:
            return
        if len(self.entries) >= 100_000:  # bounded: forget everything rather than grow
            self.entries.clear()
        self.entries[key] = (account, until, refresh_at)


_CACHES: weakref.WeakKeyDictionary[AsyncEngine, _CredentialCache] = weakref.WeakKeyDictionary()


class AccountStore:
    """Async queries for accounts, sites, tokens and API keys over the Store's engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Callable[[], float] = time.time,
        *,
        credential_ttl_s: float = CREDENTIAL_TTL_S,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._ttl_s = credential_ttl_s
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = _CredentialCache()
        self._credentials = cache

    def _forget_credentials(self) -> None:
        """After any revocation or status change has committed: resolve every credential
        afresh."""
        self._credentials.clear()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # accounts

    async def create_account(
        self,
        email: str,
        name: str,
        password: str,
        role: Role | str,
        status: AccountStatus | str = AccountStatus.PENDING,
        *,
        email_verified: bool = True,
        account_type: str = "individual",
        business_name: str = "",
        business_id: str = "",
        affiliation: str | None = None,
    ) -> Account:
        """Create an account; ValueError for a taken email, unknown role or weak password.

        Accounts made by an operator (the CLI, the demo) or reviewed by an approver count as
        verified; self-registration (cloud.services.registration) passes
        `email_verified=False` and its checked profile. The affiliation defaults to `provider`
        for a provider, else `none`.
        """
        email = normalise_email(email)
        if "@" not in email or len(email) > 320:
            raise ValueError(f"{email!r} is not an email address")
        try:
            role = Role(role)
        except ValueError:
            raise ValueError(f"role must be one of {', '.join(Role)}") from None
        try:
            status = AccountStatus(status)
        except ValueError:
            raise ValueError(f"status must be one of {', '.join(AccountStatus)}") from None
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
        if not name.strip():
            raise ValueError("the display name must not be empty")
        account_id = secrets.token_hex(16)
        password_hash = hash_password(password)
        if affiliation is None:
            affiliation = "provider" if role is Role.PROVIDER else "none"
        now = self._now_ms()
        duplicate = ValueError(f"an account with email {email!r} already exists")
        try:
            async with self.engine.begin() as conn:
                taken = (
                    await conn.execute(
                        select(accounts.c.account_id).where(accounts.c.email == email)
                    )
                ).first()
                if taken is not None:
                    raise duplicate
                await conn.execute(
                    insert(accounts).values(
                        account_id=account_id,
                        email=email,
                        display_name=name.strip(),
                        password_hash=password_hash,
                        role=role.value,
                        status=status.value,
                        created_ms=now,
                        account_type=account_type,
                        business_name=business_name,
                        business_id=business_id,
                        affiliation=affiliation,
                        email_verified_ms=now if email_verified else None,
                    )
                )
        except IntegrityError:
            raise duplicate from None
        account = await self.get_account_by_id(account_id)
        assert account is not None
        return account

    async def mark_email_verified(self, account_id: str, email: str) -> Account | None:
        """Record that `email` of the account was verified now. None when it already was (or
        the account's email is no longer `email`): a verification link works once."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(accounts)
                .where(
                    accounts.c.account_id == account_id,
                    accounts.c.email == email,
                    accounts.c.email_verified_ms.is_(None),
                )
                .values(email_verified_ms=self._now_ms())
            )
        if result.rowcount == 0:
            return None
        self._forget_credentials()
        return await self.get_account_by_id(account_id)

    async def server_secret(self, name: str, nbytes: int = 32) -> bytes:
        """The deployment's secret `name`, made (random, `nbytes`) on first use. Two processes
        that make it at once keep the first one stored."""
        query = select(server_secrets.c.secret).where(server_secrets.c.name == name)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(server_secrets).values(
                            name=name, secret=secrets.token_hex(nbytes), created_ms=self._now_ms()
                        )
                    )
            except IntegrityError:
                pass  # another process made it first: use theirs
            async with self.engine.connect() as conn:
                row = (await conn.execute(query)).first()
        assert row is not None
        return bytes.fromhex(row.secret)

    async def _set_status(self, account_id: str, status: AccountStatus) -> Account:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(accounts)
                .where(accounts.c.account_id == account_id)
                .values(status=status.value)
            )
            if result.rowcount == 0:
                raise KeyError(account_id)
        self._forget_credentials()
        account = await self.get_account_by_id(account_id)
        assert account is not None
        return account

    async def approve_account(self, account_id: str) -> Account:
        """Let an account in; KeyError when there is no such account."""
        return await self._set_status(account_id, AccountStatus.APPROVED)

    async def reject_account(self, account_id: str) -> Account:
        """Refuse an account and revoke its tokens and API keys; KeyError when unknown."""
        account = await self._set_status(account_id, AccountStatus.REJECTED)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(auth_tokens).where(auth_tokens.c.account_id == account_id).values(revoked=1)
            )
            await conn.execute(
                update(api_keys).where(api_keys.c.account_id == account_id).values(revoked=1)
            )
        self._forget_credentials()
        return account

    async def decide_account(
        self, account_id: str, status: AccountStatus | str, decided_by: str, reason: str
    ) -> Account:
        """Approve or reject an account and log who decided, when and why, in one transaction.

        Rejecting also revokes the account's bearer tokens and API keys. KeyError when unknown.
        """
        new = AccountStatus(status)
        if new not in (AccountStatus.APPROVED, AccountStatus.REJECTED):
            raise ValueError(f"an approver decides approved or rejected, not {new.value}")
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.status).where(accounts.c.account_id == account_id)
                )
            ).first()
            if row is None:
                raise KeyError(account_id)
            await conn.execute(
                update(accounts).where(accounts.c.account_id == account_id).values(status=new.value)
            )
            if new is AccountStatus.REJECTED:
                await conn.execute(
                    update(auth_tokens)
                    .where(auth_tokens.c.account_id == account_id)
                    .values(revoked=1)
                )
                await conn.execute(
                    update(api_keys).where(api_keys.c.account_id == account_id).values(revoked=1)
                )
            await conn.execute(
                insert(account_decisions).values(
                    account_id=account_id,
                    decided_by=decided_by,
                    decided_ms=self._now_ms(),
                    old_status=row.status,
                    new_status=new.value,
                    reason=reason,
                )
            )
        self._forget_credentials()
        account = await self.get_account_by_id(account_id)
        assert account is not None
        return account

    async def list_account_decisions(self, limit: int = 50) -> list[AccountDecisionRow]:
        """Newest account decisions first, with the account's and the approver's email."""
        approver = accounts.alias("approver")
        q = (
            select(
                account_decisions,
                accounts.c.email.label("email"),
                approver.c.email.label("decided_by_email"),
            )
            .select_from(
                account_decisions.join(
                    accounts, accounts.c.account_id == account_decisions.c.account_id
                ).outerjoin(approver, approver.c.account_id == account_decisions.c.decided_by)
            )
            .order_by(account_decisions.c.decided_ms.desc(), account_decisions.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            AccountDecisionRow(
                r.account_id,
                r.email,
                r.decided_by,
                r.decided_by_email,
                r.decided_ms,
                r.old_status,
                r.new_status,
                r.reason,
            )
            for r in rows
        ]

    async def get_account_by_id(self, account_id: str) -> Account | None:
        """Look up an account by id."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(accounts).where(accounts.c.account_id == account_id))
            ).first()
        return None if row is None else _account(row)

    async def get_account_by_email(self, email: str) -> Account | None:
        """Look up an account by email (any case)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(accounts).where(accounts.c.email == normalise_email(email))
                )
            ).first()
        return None if row is None else _account(row)

    async def list_accounts(self, status: AccountStatus | str | None = None) -> list[Account]:
        """All accounts, oldest first, optionally only those with `status`."""
        query = select(accounts).order_by(accounts.c.created_ms, accounts.c.email)
        if status is not None:
            query = query.where(accounts.c.status == AccountStatus(status).value)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_account(r) for r in rows]

    async def login(self, email: str, password: str, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
        """A new bearer token for good credentials of an approved account; LoginError otherwise.

        Unknown email and wrong password give the same message (and the same argon2 work).
        """
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(accounts).where(accounts.c.email == normalise_email(email))
                )
            ).first()
        if row is None:
            verify_password(_DUMMY_HASH, password)
            raise LoginError("email or password is wrong")
        if not verify_password(row.password_hash, password):
            raise LoginError("email or password is wrong")
        if row.status == AccountStatus.PENDING:
            raise LoginError("account is waiting for approval")
        if row.status != AccountStatus.APPROVED:
            raise LoginError("account was rejected")
        if password_needs_rehash(row.password_hash):
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.account_id == row.account_id)
                    .values(password_hash=hash_password(password))
                )
        return await self.issue_token(row.account_id, ttl_s)

    # bearer tokens

    async def issue_token(self, account_id: str, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
        """A new bearer token for an account, valid for ttl_s seconds; only its digest is kept."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        token, digest = new_bearer_token()
        now = self._now_ms()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(auth_tokens).values(
                    token_hash=digest,
                    account_id=account_id,
                    created_ms=now,
                    expires_ms=now + ttl_s * 1000,
                    revoked=0,
                )
            )
        return token

    async def resolve_token(self, token: str) -> Account | None:
        """The account a live bearer token belongs to; None if unknown, expired or revoked.

        The account may still be pending or rejected; callers check its status.
        """
        digest = secret_digest(token)
        now = self._clock()
        cached = self._credentials.get(digest, now)
        if cached is not None:
            if self._credentials.due(digest, now):
                self._credentials.refresh(digest, lambda: self._read_token(digest, self._clock()))
            return cached
        return await self._credentials.read_once(digest, lambda: self._read_token(digest, now))

    async def _read_token(self, digest: str, now: float) -> Account | None:
        generation = self._credentials.generation
        query = (
            select(accounts, auth_tokens.c.expires_ms)
            .join(auth_tokens, auth_tokens.c.account_id == accounts.c.account_id)
            .where(
                auth_tokens.c.token_hash == digest,
                auth_tokens.c.revoked == 0,
                auth_tokens.c.expires_ms > self._now_ms(),
            )
        )
        async with single_statement(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        account = _account(row)
        until = min(now + self._ttl_s, row.expires_ms / 1000)
        self._credentials.put(digest, account, until, now + self._ttl_s / 2, generation)
        return account

    async def revoke_token(self, token: str) -> bool:
        """Log a token out; False when it was unknown or already revoked."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(auth_tokens)
                .where(auth_tokens.c.token_hash == secret_digest(token), auth_tokens.c.revoked == 0)
                .values(revoked=1)
            )
        self._forget_credentials()
        return bool(result.rowcount)

    # API keys

    async def create_api_key(self, account_id: str, name: str) -> str:
        """A new API key `gmk_<key_id>_<secret>` for a (service) account; shown only now."""
        made = new_api_key()
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(api_keys).values(
                        key_id=made.key_id,
                        key_hash=made.key_hash,
                        account_id=account_id,
                        name=name,
                        created_ms=self._now_ms(),
                        revoked=0,
                    )
                )
        except IntegrityError:
            raise KeyError(account_id) from None
        return made.key

    async def resolve_api_key(self, key: str) -> Account | None:
        """The account of a valid, unrevoked API key; None otherwise."""
        parsed = parse_api_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        digest = "k:" + secret_digest(key)
        now = self._clock()
        cached = self._credentials.get(digest, now)
        if cached is not None:
            if self._credentials.due(digest, now):
                self._credentials.refresh(
                    digest, lambda: self._read_api_key(key_id, secret, digest, self._clock())
                )
            return cached
        return await self._credentials.read_once(
            digest, lambda: self._read_api_key(key_id, secret, digest, now)
        )

    async def _read_api_key(
        self, key_id: str, secret: str, digest: str, now: float
    ) -> Account | None:
        generation = self._credentials.generation
        async with single_statement(self.engine) as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.key_hash, api_keys.c.revoked, accounts)
                    .join(accounts, accounts.c.account_id == api_keys.c.account_id)
                    .where(api_keys.c.key_id == key_id)
                )
            ).first()
        if row is None or row.revoked or not api_key_matches(secret, row.key_hash):
            return None
        account = _account(row)
        self._credentials.put(digest, account, now + self._ttl_s, now + self._ttl_s / 2, generation)
        return account

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key by its id (or the full key); False when unknown or already revoked."""
        parsed = parse_api_key(key_id)
        if parsed is not None:
            key_id = parsed[0]
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked == 0)
                .values(revoked=1)
            )
        self._forget_credentials()
        return bool(result.rowcount)

    async def list_api_keys(self, account_id: str | None = None) -> list[ApiKeyInfo]:
        """API keys (without secrets), optionally of one account."""
        query = select(api_keys).order_by(api_keys.c.created_ms, api_keys.c.key_id)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ApiKeyInfo(r.key_id, r.account_id, r.name, r.created_ms, bool(r.revoked)) for r in rows
        ]

    # sites

    async def create_site(self, site_id: str, owner: str, name: str, zone: str = "") -> Site:
        """A homeowner's site; ValueError for a taken id, KeyError for an unknown owner."""
        async with self.engine.begin() as conn:
            if (
                await conn.execute(select(sites.c.site_id).where(sites.c.site_id == site_id))
            ).first() is not None:
                raise ValueError(f"site {site_id!r} already exists")
            if (
                await conn.execute(
                    select(accounts.c.account_id).where(accounts.c.account_id == owner)
                )
            ).first() is None:
                raise KeyError(owner)
            await conn.execute(
                insert(sites).values(
                    site_id=site_id,
                    owner_account_id=owner,
                    name=name,
                    zone=zone,
                    created_ms=self._now_ms(),
                )
            )
        site = await self.get_site(site_id)
        assert site is not None
        return site

    async def get_site(self, site_id: str) -> Site | None:
        """Look up a site."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sites).where(sites.c.site_id == site_id))).first()
        return None if row is None else _site(row)

    async def list_sites(self, owner: str | None = None) -> list[Site]:
        """All sites by id, or only those owned by account `owner`."""
        query = select(sites).order_by(sites.c.site_id)
        if owner is not None:
            query = query.where(sites.c.owner_account_id == owner)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_site(r) for r in rows]
