"""Self-registration's rules: who a new account is (an individual or a business, and its
affiliation), and the signed, expiring email verification link.

Owns: the profile checks and the link token, pure (no I/O): the registration service
(cloud/services/registration.py) stores accounts and sends the mails.

The token is `<account id>.<expiry, Unix ms>.<MAC>`, the MAC an HMAC-SHA256 (base64url, no
padding) with the server's secret over the purpose, the account id, the email address and the
expiry. The email is in the MAC but not in the token: the link does not carry the address, and
a link made for one address does not verify another (should the account's email change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

from cloud.domain.identity import Role

EMAIL_LINK_PURPOSE = "gridmint/verify-email/v1"
MAX_BUSINESS_NAME = 200
MAX_BUSINESS_ID = 64


class AccountType(StrEnum):
    """ "I am": a person, or a business (with its name and company/VAT number)."""

    INDIVIDUAL = "individual"
    BUSINESS = "business"


class Affiliation(StrEnum):
    """How a registering account relates to the shop."""

    NONE = "none"  # a plain buyer: approved at once, buys once the email is verified
    PROVIDER = "provider"  # an offset project provider: waits for an approver


@dataclass(frozen=True, slots=True)
class Profile:
    """A checked profile: business fields are empty for an individual."""

    account_type: AccountType
    business_name: str
    business_id: str
    affiliation: Affiliation


def check_profile(
    account_type: str, business_name: str, business_id: str, affiliation: str
) -> Profile:
    """The profile, or ValueError with a plain reason."""
    try:
        kind = AccountType(account_type)
    except ValueError:
        raise ValueError("account_type must be individual or business") from None
    try:
        aff = Affiliation(affiliation)
    except ValueError:
        raise ValueError(
            f"affiliation must be one of {', '.join(a.value for a in Affiliation)}"
        ) from None
    name, number = business_name.strip(), business_id.strip()
    if kind is AccountType.BUSINESS:
        if not name:
            raise ValueError("a business account needs the business's name (business_name)")
        if not number:
            raise ValueError("a business account needs the company or VAT number (business_id)")
        if len(name) > MAX_BUSINESS_NAME:
            raise ValueError(f"business_name is longer than {MAX_BUSINESS_NAME} characters")
        if len(number) > MAX_BUSINESS_ID:
            raise ValueError(f"business_id is longer than {MAX_BUSINESS_ID} characters")
    else:
        if name or number:
            raise ValueError("business_name and business_id are for business accounts only")
    return Profile(kind, name, number, aff)


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def check_email(email: str) -> str:
    """The address trimmed and lower-case, if it looks like one a mail can go to (one @, a
    dot in the domain, no spaces or line breaks); ValueError otherwise."""
    address = email.strip().lower()
    if len(address) > 320 or not _EMAIL.fullmatch(address) or not address.isprintable():
        raise ValueError(f"{email.strip()!r} is not an email address")
    return address


def registration_role(affiliation: Affiliation) -> tuple[Role, bool]:
    """The role a registering account gets, and whether it is approved at once (a plain buyer)
    or waits for an approver (a provider, like every other account)."""
    if affiliation is Affiliation.PROVIDER:
        return Role.PROVIDER, False
    return Role.BUYER, True


# The verification link


class EmailTokenError(ValueError):
    """A verification link refused; the message says why, plainly."""


@dataclass(frozen=True, slots=True)
class EmailToken:
    """What a token claims (not yet checked against the secret)."""

    account_id: str
    expires_ms: int
    mac: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(secret: bytes, account_id: str, email: str, expires_ms: int) -> str:
    message = "\n".join((EMAIL_LINK_PURPOSE, account_id, email, str(expires_ms))).encode()
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def make_email_token(secret: bytes, account_id: str, email: str, expires_ms: int) -> str:
    """A token for `account_id` and `email`, valid until `expires_ms`."""
    if not secret:
        raise ValueError("the email link secret is empty")
    if "." in account_id or not account_id:
        raise ValueError("an account id must be non-empty and have no dots")
    return f"{account_id}.{expires_ms}.{_mac(secret, account_id, email, expires_ms)}"


def parse_email_token(token: str) -> EmailToken:
    """What the token claims; EmailTokenError when it is not a token at all."""
    parts = token.strip().split(".")
    digits = parts[1] if len(parts) == 3 else ""
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    ascii_number = digits.isascii() and digits.isdigit() and len(digits) <= 16
    if len(parts) != 3 or not all(parts) or not ascii_number:
        raise EmailTokenError("this verification link is incomplete or malformed")
    return EmailToken(parts[0], int(parts[1]), parts[2])


def check_email_token(
    secret: bytes, token: str, account_id: str, email: str, now_ms: int
) -> EmailToken:
    """The token, if it was made with `secret` for this account and email and has not
    expired; EmailTokenError with the reason otherwise. The signature is checked first, so a
    forged link is called forged whatever its expiry says."""
    claim = parse_email_token(token)
    if claim.account_id != account_id:
        raise EmailTokenError("this verification link is for another account")
    expected = _mac(secret, claim.account_id, email, claim.expires_ms)
    if not hmac.compare_digest(expected.encode(), claim.mac.encode()):
        raise EmailTokenError(
            "this verification link is not valid: it was altered, or it was sent to another "
            "email address"
        )
    if now_ms >= claim.expires_ms:
        raise EmailTokenError(
            "this verification link has expired: ask for a new one (resend the verification email)"
        )
    return claim


def must_verify_email(email: str) -> str:
    """The reason a checkout is refused before the email is verified."""
    return (
        f"verify your email address before buying: we sent a link to {email} "
        "(POST /api/v1/register/resend sends it again)"
    )
