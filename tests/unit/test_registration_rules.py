"""Registration's pure rules: profiles (individual or business, affiliation) and the signed,
expiring email verification token."""

from __future__ import annotations

import pytest

from cloud.domain.identity import Role
from cloud.domain.registration import (
    AccountType,
    Affiliation,
    EmailTokenError,
    check_email,
    check_email_token,
    check_profile,
    make_email_token,
    parse_email_token,
    registration_role,
)

SECRET = b"s" * 32
ACCOUNT, EMAIL, NOW = "a1b2c3", "ana@example.org", 1_800_000_000_000
EXPIRES = NOW + 3_600_000


def test_a_good_token_checks_until_it_expires() -> None:
    token = make_email_token(SECRET, ACCOUNT, EMAIL, EXPIRES)
    claim = check_email_token(SECRET, token, ACCOUNT, EMAIL, NOW)
    assert (claim.account_id, claim.expires_ms) == (ACCOUNT, EXPIRES)
    check_email_token(SECRET, token, ACCOUNT, EMAIL, EXPIRES - 1)
    with pytest.raises(EmailTokenError, match="has expired"):
        check_email_token(SECRET, token, ACCOUNT, EMAIL, EXPIRES)


def test_tampered_tokens_are_refused() -> None:
    token = make_email_token(SECRET, ACCOUNT, EMAIL, EXPIRES)
    account, expires, mac = token.split(".")
    later = f"{account}.{EXPIRES + 10**9}.{mac}"  # a longer life, same MAC
    flipped = f"{account}.{expires}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"
    for bad in (later, flipped):
        with pytest.raises(EmailTokenError, match="not valid: it was altered"):
            check_email_token(SECRET, bad, ACCOUNT, EMAIL, NOW)
    with pytest.raises(EmailTokenError, match="not valid: it was altered"):
        check_email_token(b"t" * 32, token, ACCOUNT, EMAIL, NOW)  # another server's secret


def test_a_forged_expired_token_is_called_forged() -> None:
    token = make_email_token(b"t" * 32, ACCOUNT, EMAIL, NOW - 1)
    with pytest.raises(EmailTokenError, match="altered"):
        check_email_token(SECRET, token, ACCOUNT, EMAIL, NOW)


def test_wrong_account_or_email_is_refused() -> None:
    token = make_email_token(SECRET, ACCOUNT, EMAIL, EXPIRES)
    with pytest.raises(EmailTokenError, match="another account"):
        check_email_token(SECRET, token, "ffff", EMAIL, NOW)
    with pytest.raises(EmailTokenError, match="sent to another email address"):
        check_email_token(SECRET, token, ACCOUNT, "bo@example.org", NOW)
    # the account id swapped inside the token: the MAC no longer fits
    other = "ffff." + token.split(".", 1)[1]
    with pytest.raises(EmailTokenError, match="altered"):
        check_email_token(SECRET, other, "ffff", EMAIL, NOW)


@pytest.mark.parametrize(
    "junk",
    ["", "abc", "a.b.c", "a..c", "a.12.c.d", "a.-5.c", "a.²3.c", "a.١٢.c", f"a.{'9' * 20}.c"],
)
def test_malformed_tokens_are_refused_plainly(junk: str) -> None:
    with pytest.raises(EmailTokenError, match="incomplete or malformed"):
        parse_email_token(junk)


def test_token_needs_a_secret_and_a_dotless_account() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        make_email_token(b"", ACCOUNT, EMAIL, EXPIRES)
    with pytest.raises(ValueError, match="no dots"):
        make_email_token(SECRET, "a.b", EMAIL, EXPIRES)


def test_profiles() -> None:
    p = check_profile("individual", "", "", "none")
    assert (p.account_type, p.affiliation) == (AccountType.INDIVIDUAL, Affiliation.NONE)
    b = check_profile("business", " Acme Ltd ", " GB123456789 ", "provider")
    assert (b.business_name, b.business_id) == ("Acme Ltd", "GB123456789")
    with pytest.raises(ValueError, match="business's name"):
        check_profile("business", " ", "GB1", "none")
    with pytest.raises(ValueError, match="VAT number"):
        check_profile("business", "Acme", "", "none")
    with pytest.raises(ValueError, match="for business accounts only"):
        check_profile("individual", "Acme", "", "none")
    with pytest.raises(ValueError, match="individual or business"):
        check_profile("company", "", "", "none")
    with pytest.raises(ValueError, match="affiliation must be one of none, provider"):
        check_profile("individual", "", "", "installer")


def test_email_addresses() -> None:
    assert check_email(" Ana@Example.ORG ") == "ana@example.org"
    for bad in (
        "ana",
        "ana@",
        "@x.org",
        "ana@x",
        "a b@x.org",
        "a@b@x.org",
        "a@x.org\r\nBcc: e@x.org",
    ):
        with pytest.raises(ValueError, match="is not an email address"):
            check_email(bad)


def test_roles_of_registering_accounts() -> None:
    assert registration_role(Affiliation.NONE) == (Role.BUYER, True)
    assert registration_role(Affiliation.PROVIDER) == (Role.PROVIDER, False)
