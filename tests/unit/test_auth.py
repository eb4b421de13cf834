"""Credential helpers (pure): argon2 hashing, token digests, API-key format, roles, site rule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from argon2 import PasswordHasher

from cloud.domain.identity import (
    API_KEY_PREFIX,
    Principal,
    Role,
    api_key_matches,
    can_see_site,
    hash_password,
    new_api_key,
    new_bearer_token,
    parse_api_key,
    password_needs_rehash,
    secret_digest,
    site_owner_filter,
    verify_password,
)


def test_password_hash_is_salted_argon2_and_verifies() -> None:
    h1, h2 = hash_password("correct horse"), hash_password("correct horse")
    assert h1.startswith("$argon2id$")
    assert h1 != h2  # salted
    assert "correct horse" not in h1
    assert verify_password(h1, "correct horse")
    assert not verify_password(h1, "Correct horse")
    assert not verify_password("not-a-hash", "correct horse")
    assert not password_needs_rehash(h1)


def test_weaker_hash_needs_rehash_but_still_verifies() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw-12345")
    assert verify_password(weak, "pw-12345")
    assert password_needs_rehash(weak)
    assert password_needs_rehash("garbage")


def test_bearer_tokens_are_random_and_only_the_digest_is_kept() -> None:
    (t1, d1), (t2, d2) = new_bearer_token(), new_bearer_token()
    assert t1 != t2 and d1 != d2
    assert len(t1) >= 43  # 32 random bytes, urlsafe base64
    assert d1 == secret_digest(t1) and len(d1) == 64 and t1 not in d1


def test_api_key_format_round_trips() -> None:
    made = new_api_key()
    assert made.key.startswith(f"{API_KEY_PREFIX}{made.key_id}_")
    parsed = parse_api_key(made.key)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == made.key_id and len(key_id) == 16
    assert api_key_matches(secret, made.key_hash)
    assert not api_key_matches(secret + "x", made.key_hash)


def test_api_key_secret_may_contain_underscores() -> None:
    assert parse_api_key("gmk_0123456789abcdef_a_b-c") == ("0123456789abcdef", "a_b-c")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "gmk_",
        "gmk_0123456789abcdef",
        "gmk_0123456789abcdef_",
        "gmk_0123456789ABCDEF_secret",
        "gmk_0123_secret",
        "xyz_0123456789abcdef_secret",
        "0123456789abcdef_secret",
    ],
)
def test_malformed_api_keys_are_refused(key: str) -> None:
    assert parse_api_key(key) is None


def test_roles_are_plain_strings() -> None:
    assert [r.value for r in Role] == [
        "homeowner",
        "installer",
        "approver",
        "grid_operator",
        "admin",
        "provider",
        "buyer",
    ]
    assert Role("grid_operator") is Role.GRID_OPERATOR
    assert f"{Role.INSTALLER}" == "installer"
    with pytest.raises(ValueError):
        Role("superuser")


@dataclass
class _Site:
    owner_account_id: str


@pytest.mark.parametrize("role", list(Role))
def test_only_homeowners_are_limited_to_their_own_sites(role: Role) -> None:
    me = Principal("me", role, "me@example.org", "bearer")
    assert can_see_site(me, _Site("me"))
    assert can_see_site(me, _Site("someone-else")) is (role is not Role.HOMEOWNER)
    assert site_owner_filter(me) == ("me" if role is Role.HOMEOWNER else None)
