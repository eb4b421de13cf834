"""Utility access rules (pure): scopes, credential formats, and who reads which site."""

from __future__ import annotations

import pytest

from cloud.domain.identity import API_KEY_PREFIX, new_api_key, new_bearer_token, secret_digest
from cloud.domain.utility_access import (
    ACCESS_TOKEN_PREFIX,
    CLIENT_SECRET_PREFIX,
    KNOWN_SCOPES,
    METER_READ,
    AccessToken,
    ScopeError,
    SiteGrant,
    client_name,
    client_scopes,
    format_scopes,
    grant_allows,
    is_access_token,
    is_client_id,
    is_client_secret,
    may_read,
    new_access_token,
    new_client_id,
    new_client_secret,
    split_scopes,
    token_allows,
    token_is_live,
    token_scopes,
)

NOW = 1_800_000_000_000
TOKEN = AccessToken("uc-0123456789abcdef", frozenset({METER_READ}), NOW + 3_600_000)
GRANT = SiteGrant("site-a", "uc-0123456789abcdef", "owner-1", NOW - 1000)


# --- scopes -----------------------------------------------------------------------------------


def test_meter_read_is_the_known_scope() -> None:
    assert frozenset({"meter:read"}) == KNOWN_SCOPES


def test_split_scopes_tolerates_extra_spaces_and_refuses_bad_characters() -> None:
    assert split_scopes("") == frozenset()
    assert split_scopes("  meter:read   meter:read ") == {"meter:read"}
    assert split_scopes("a b") == {"a", "b"}
    for bad in ('me"ter', "me\\ter", "meter\tread", "mète:read", "meter\x7f"):
        with pytest.raises(ScopeError, match="malformed"):
            split_scopes(bad)


def test_client_scopes_need_one_known_scope() -> None:
    assert client_scopes("meter:read") == {METER_READ}
    assert client_scopes(["meter:read"]) == {METER_READ}
    with pytest.raises(ScopeError, match="at least one scope"):
        client_scopes("  ")
    with pytest.raises(ScopeError, match="at least one scope"):
        client_scopes([])
    with pytest.raises(ScopeError, match="unknown scope meter:write"):
        client_scopes("meter:read meter:write")


def test_token_scopes_default_to_all_held_and_refuse_more() -> None:
    held = frozenset({METER_READ})
    assert token_scopes(None, held) == held
    assert token_scopes("", held) == held
    assert token_scopes(" meter:read ", held) == held
    with pytest.raises(ScopeError, match="unknown scope billing:read"):
        token_scopes("meter:read billing:read", held)
    with pytest.raises(ScopeError, match="does not hold the scope meter:read"):
        token_scopes("meter:read", frozenset())
    with pytest.raises(ScopeError, match="malformed"):
        token_scopes('meter:"read"', held)


def test_format_scopes_is_sorted_and_space_separated() -> None:
    assert format_scopes({"b", "a", "c"}) == "a b c"
    assert format_scopes([]) == ""


# --- names and credentials ----------------------------------------------------------------------


def test_client_name_is_trimmed_and_bounded() -> None:
    assert client_name("  Northgrid Utility ") == "Northgrid Utility"
    assert client_name("x" * 100) == "x" * 100
    for bad in ("", "   ", "x" * 101, "tab\there", "new\nline"):
        with pytest.raises(ValueError, match="client's name"):
            client_name(bad)


def test_client_ids_secrets_and_tokens_have_their_own_forms() -> None:
    cid = new_client_id()
    assert cid.startswith("uc-") and len(cid) == 19 and is_client_id(cid)
    assert cid != new_client_id()
    for bad in ("uc-0123", "uc-0123456789ABCDEF", "xx-0123456789abcdef", ""):
        assert not is_client_id(bad)

    secret, token = new_client_secret(), new_access_token()
    assert secret.value.startswith(CLIENT_SECRET_PREFIX) and is_client_secret(secret.value)
    assert token.value.startswith(ACCESS_TOKEN_PREFIX) and is_access_token(token.value)
    # Only digests are stored, the same SHA-256 as users' tokens and API-key secrets.
    assert secret.digest == secret_digest(secret.value) and len(secret.digest) == 64
    assert token.digest == secret_digest(token.value)
    assert new_access_token().value != token.value
    # A secret is no token and the other way round.
    assert not is_access_token(secret.value) and not is_client_secret(token.value)
    assert not is_access_token(token.value[:-1]) and not is_access_token(token.value + "x")
    assert not is_access_token(ACCESS_TOKEN_PREFIX + "!" * 43)


def test_user_credentials_never_look_like_access_tokens() -> None:
    user_token, _ = new_bearer_token()
    key = new_api_key().key
    assert key.startswith(API_KEY_PREFIX)
    assert not is_access_token(user_token)
    assert not is_access_token(key)
    assert not is_access_token("oa3.payload.mac")  # an OpenADR VTN token
    assert not ACCESS_TOKEN_PREFIX.startswith(API_KEY_PREFIX)


# --- the access rule ------------------------------------------------------------------------------


def test_tokens_live_until_their_expiry_exclusive() -> None:
    assert token_is_live(TOKEN, TOKEN.expires_ms - 1)
    assert not token_is_live(TOKEN, TOKEN.expires_ms)
    assert token_allows(TOKEN, METER_READ, NOW)
    assert not token_allows(TOKEN, "billing:read", NOW)
    assert not token_allows(None, METER_READ, NOW)
    assert not token_allows(TOKEN, METER_READ, TOKEN.expires_ms)


def test_grants_allow_while_live_and_the_client_is_not_revoked() -> None:
    assert GRANT.live and grant_allows(False, GRANT)
    assert not grant_allows(True, GRANT)
    assert not grant_allows(False, None)
    ended = SiteGrant("site-a", GRANT.client_id, "owner-1", NOW - 1000, revoked_ms=NOW)
    assert not ended.live and not grant_allows(False, ended)


def test_may_read_needs_every_condition() -> None:
    assert may_read(client_revoked=False, token=TOKEN, grant=GRANT, now_ms=NOW)
    # each condition alone refuses
    assert not may_read(client_revoked=True, token=TOKEN, grant=GRANT, now_ms=NOW)
    assert not may_read(client_revoked=False, token=None, grant=GRANT, now_ms=NOW)
    assert not may_read(client_revoked=False, token=TOKEN, grant=GRANT, now_ms=TOKEN.expires_ms)
    no_scope = AccessToken(TOKEN.client_id, frozenset(), TOKEN.expires_ms)
    assert not may_read(client_revoked=False, token=no_scope, grant=GRANT, now_ms=NOW)
    assert not may_read(client_revoked=False, token=TOKEN, grant=None, now_ms=NOW)
    ended = SiteGrant("site-a", GRANT.client_id, "owner-1", NOW - 1000, revoked_ms=NOW - 1)
    assert not may_read(client_revoked=False, token=TOKEN, grant=ended, now_ms=NOW)
    # a grant to another client is no grant to this one
    other = SiteGrant("site-a", "uc-fedcba9876543210", "owner-1", NOW - 1000)
    assert not may_read(client_revoked=False, token=TOKEN, grant=other, now_ms=NOW)
    assert not may_read(
        client_revoked=False, token=TOKEN, grant=GRANT, now_ms=NOW, scope="billing:read"
    )
