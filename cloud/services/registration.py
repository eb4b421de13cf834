"""Self-registration for the carbon shop (docs/carbon-shop.md, "Registration"): an individual
or a business registers as a plain buyer (approved at once; buys once the email is verified)
or as an offset project provider (waits for an approver, like every account); a signed,
expiring link in a mail verifies the address.

Owns: that flow. The account is stored before the mail is sent, so a mail server that is down
loses no registration: the answer says the mail failed and `resend` tries again. The rules
(profiles, the link's token) are in cloud.domain.registration; the accounts in
cloud.storage.accounts; the mail goes through the port in cloud.services.mailer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from cloud.domain.identity import AccountStatus
from cloud.domain.registration import (
    EmailTokenError,
    check_email,
    check_email_token,
    check_profile,
    make_email_token,
    must_verify_email,
    parse_email_token,
    registration_role,
)
from cloud.services.mailer import Mailer, MailError
from cloud.storage.accounts import Account, AccountStore, normalise_email

__all__ = [
    "DEFAULT_LINK_TTL_S",
    "EmailTokenError",
    "Registered",
    "RegistrationError",
    "RegistrationService",
    "SECRET_NAME",
]

log = logging.getLogger(__name__)

DEFAULT_LINK_TTL_S = 24 * 3600
SECRET_NAME = "email-link-key"  # noqa: S105 - its name in server_secrets, not a secret
RESEND_MIN_S = 60.0  # one verification mail per address per minute, however often asked


class RegistrationError(ValueError):
    """Registration refused; `status` is the HTTP answer it deserves (409 taken, 422 bad)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Registered:
    """A stored account and whether its verification mail went out (`mail_error` if not)."""

    account: Account
    mail_sent: bool
    mail_error: str | None


class RegistrationService:
    """Registers accounts, sends and checks verification links."""

    def __init__(
        self,
        accounts: AccountStore,
        mailer: Mailer,
        *,
        public_base_url: str,
        link_ttl_s: int = DEFAULT_LINK_TTL_S,
        secret: bytes | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.mailer = mailer
        self.public_base_url = public_base_url.rstrip("/")
        self.link_ttl_s = link_ttl_s
        self._secret = secret or None
        self._now = now
        self._last_sent: dict[str, float] = {}  # email -> when its mail last went out

    async def secret(self) -> bytes:
        """The link key: configured, else the deployment's own (made once, in the database)."""
        if self._secret is None:
            self._secret = await self.accounts.server_secret(SECRET_NAME)
        return self._secret

    def _now_ms(self) -> int:
        return int(self._now() * 1000)

    async def link(self, account: Account) -> str:
        """A fresh verification link for the account's email."""
        expires_ms = self._now_ms() + self.link_ttl_s * 1000
        token = make_email_token(await self.secret(), account.account_id, account.email, expires_ms)
        return f"{self.public_base_url}/verify-email?token={quote(token)}"

    async def register(
        self,
        *,
        email: str,
        display_name: str,
        password: str,
        account_type: str,
        business_name: str = "",
        business_id: str = "",
        affiliation: str = "none",
    ) -> Registered:
        """Store the account, then send its verification mail. RegistrationError: bad input
        (422) or a taken email (409); a mail that cannot be sent is reported, not raised."""
        try:
            profile = check_profile(account_type, business_name, business_id, affiliation)
            email = check_email(email)
        except ValueError as exc:
            raise RegistrationError(str(exc)) from None
        role, approved = registration_role(profile.affiliation)
        try:
            account = await self.accounts.create_account(
                email,
                display_name,
                password,
                role,
                AccountStatus.APPROVED if approved else AccountStatus.PENDING,
                email_verified=False,
                account_type=profile.account_type.value,
                business_name=profile.business_name,
                business_id=profile.business_id,
                affiliation=profile.affiliation.value,
            )
        except ValueError as exc:
            raise RegistrationError(str(exc), 409 if "exists" in str(exc) else 422) from None
        error = await self._send(account)
        return Registered(account, error is None, error)

    async def _send(self, account: Account) -> str | None:
        """Send the account's verification mail; the reason when it failed, else None."""
        link = await self.link(account)
        hours = self.link_ttl_s // 3600
        valid = f"{hours} hours" if hours >= 1 else f"{self.link_ttl_s // 60} minutes"
        wait = (
            "Then you can buy offsets in the gridmint carbon shop."
            if account.status is AccountStatus.APPROVED
            else "An approver will then review your account; you can sign in once approved."
        )
        text = (
            f"Hello {account.display_name},\n\n"
            "please confirm your email address for gridmint by opening this link:\n\n"
            f"{link}\n\n"
            f"The link works once and for {valid}. {wait}\n\n"
            "If you did not register, ignore this mail: nothing happens without the link.\n"
        )
        try:
            await self.mailer.send(account.email, "Confirm your email address for gridmint", text)
        except MailError as exc:
            log.warning("verification mail to %s not sent: %s", account.email, exc)
            return str(exc)
        self._last_sent[account.email] = self._now()
        return None

    async def resend(self, email: str) -> None:
        """Send a new link to `email` if an account with it waits for verification. Says
        nothing either way (the caller answers the same for any address), and sends at most one
        mail per address per minute."""
        account = await self.accounts.get_account_by_email(normalise_email(email))
        if account is None or account.email_verified or account.status is AccountStatus.REJECTED:
            return
        last = self._last_sent.get(account.email)
        if last is not None and self._now() - last < RESEND_MIN_S:
            return
        if len(self._last_sent) > 100_000:  # bounded: forget everything rather than grow
            self._last_sent.clear()
        await self._send(account)

    async def verify(self, token: str) -> Account:
        """Mark the email of the token's account verified; EmailTokenError (with the reason)
        for a malformed, forged, expired or already used link."""
        claim = parse_email_token(token)
        account = await self.accounts.get_account_by_id(claim.account_id)
        if account is None:
            raise EmailTokenError("this verification link is not valid: no such account")
        check_email_token(
            await self.secret(), token, account.account_id, account.email, self._now_ms()
        )
        if account.status is AccountStatus.REJECTED:
            raise EmailTokenError("this account was rejected")
        verified = await self.accounts.mark_email_verified(account.account_id, account.email)
        if verified is None:
            raise EmailTokenError(
                "this verification link was already used: the email address is verified"
            )
        return verified

    async def checkout_refusal(self, account_id: str) -> str | None:
        """Why the account may not buy yet (its email is not verified), or None. Accounts
        without a row (the legacy admin token) are not held back."""
        account = await self.accounts.get_account_by_id(account_id)
        if account is None or account.email_verified:
            return None
        return must_verify_email(account.email)
