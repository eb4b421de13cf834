"""Accounts, approval, login, tokens, API keys and sites on both backends, and the auth
dependencies in a small FastAPI app: 401 without credentials, 403 for the wrong role or an
unapproved account, 200 via bearer token, session cookie and API key.

No `from __future__ import annotations`: FastAPI must see the route annotations built in _app.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select

from cloud.auth import SESSION_COOKIE, Principal, Role, can_see_site, make_auth
from cloud.storage.accounts import AccountStore, LoginError
from cloud.storage.store import Store
from cloud.storage.tables import accounts as accounts_table
from cloud.storage.tables import api_keys, auth_tokens

PW = "correct horse battery"


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def accounts(store: Store, clock: FakeClock) -> AccountStore:
    return AccountStore(store.engine, clock=clock)


async def _approved(accounts: AccountStore, email: str, role: Role) -> str:
    acc = await accounts.create_account(email, email.split("@")[0], PW, role)
    await accounts.approve_account(acc.account_id)
    return acc.account_id


async def test_accounts_start_pending_and_are_approved_or_rejected(accounts: AccountStore) -> None:
    a = await accounts.create_account(" Ana@Example.ORG ", "Ana", PW, "homeowner")
    assert a.email == "ana@example.org" and a.status == "pending" and a.role is Role.HOMEOWNER
    b = await accounts.create_account("bo@example.org", "Bo", PW, Role.INSTALLER)
    assert [x.email for x in await accounts.list_accounts(status="pending")] == [
        "ana@example.org",
        "bo@example.org",
    ]
    assert (await accounts.approve_account(a.account_id)).status == "approved"
    assert (await accounts.reject_account(b.account_id)).status == "rejected"
    assert [x.email for x in await accounts.list_accounts("pending")] == []
    assert [x.email for x in await accounts.list_accounts("approved")] == ["ana@example.org"]
    assert len(await accounts.list_accounts()) == 2
    assert await accounts.get_account_by_email(
        "ANA@example.org"
    ) == await accounts.get_account_by_id(a.account_id)
    assert await accounts.get_account_by_email("nobody@example.org") is None
    with pytest.raises(KeyError):
        await accounts.approve_account("no-such-account")


async def test_password_is_stored_only_as_argon2_hash(store: Store, accounts: AccountStore) -> None:
    await accounts.create_account("ana@example.org", "Ana", PW, Role.HOMEOWNER)
    async with store.engine.connect() as conn:
        stored = (await conn.execute(select(accounts_table.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and PW not in stored


async def test_bad_account_input_is_a_plain_value_error(accounts: AccountStore) -> None:
    await accounts.create_account("ana@example.org", "Ana", PW, Role.HOMEOWNER)
    with pytest.raises(ValueError, match="already exists"):
        await accounts.create_account("ANA@example.org", "Other Ana", PW, Role.INSTALLER)
    with pytest.raises(ValueError, match="role must be one of"):
        await accounts.create_account("x@example.org", "X", PW, "superuser")
    with pytest.raises(ValueError, match="at least 8"):
        await accounts.create_account("x@example.org", "X", "short", Role.HOMEOWNER)
    with pytest.raises(ValueError, match="not an email"):
        await accounts.create_account("nobody", "X", PW, Role.HOMEOWNER)


async def test_login_same_message_for_unknown_email_and_wrong_password(
    accounts: AccountStore,
) -> None:
    acc = await accounts.create_account("ana@example.org", "Ana", PW, Role.HOMEOWNER)
    with pytest.raises(LoginError, match="waiting for approval"):
        await accounts.login("ana@example.org", PW)
    await accounts.approve_account(acc.account_id)
    messages = []
    for email, pw in (("ana@example.org", "wrong password"), ("bob@example.org", PW)):
        with pytest.raises(LoginError) as err:
            await accounts.login(email, pw)
        messages.append(str(err.value))
    assert messages == ["email or password is wrong"] * 2
    token = await accounts.login("ANA@example.org", PW)
    resolved = await accounts.resolve_token(token)
    assert resolved is not None and resolved.account_id == acc.account_id


async def test_rejected_account_cannot_log_in(accounts: AccountStore) -> None:
    acc = await accounts.create_account("ana@example.org", "Ana", PW, Role.HOMEOWNER)
    await accounts.reject_account(acc.account_id)
    with pytest.raises(LoginError, match="rejected"):
        await accounts.login("ana@example.org", PW)


async def test_tokens_expire_and_can_be_revoked(
    store: Store, accounts: AccountStore, clock: FakeClock
) -> None:
    ana = await _approved(accounts, "ana@example.org", Role.HOMEOWNER)
    token = await accounts.issue_token(ana, ttl_s=60)
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(auth_tokens.c.token_hash))).scalar_one() != token
    assert (await accounts.resolve_token(token)) is not None
    clock.t += 59
    assert (await accounts.resolve_token(token)) is not None
    clock.t += 1
    assert (await accounts.resolve_token(token)) is None
    other = await accounts.issue_token(ana, ttl_s=60)
    assert await accounts.revoke_token(other) is True
    assert await accounts.revoke_token(other) is False
    assert await accounts.resolve_token(other) is None
    assert await accounts.resolve_token("never-issued") is None


async def test_api_keys_resolve_until_revoked(store: Store, accounts: AccountStore) -> None:
    svc = await _approved(accounts, "meter-bridge@svc.example.org", Role.GRID_OPERATOR)
    key = await accounts.create_api_key(svc, "meter bridge")
    assert key.startswith("gmk_")
    async with store.engine.connect() as conn:
        assert (
            key.split("_", 2)[2]
            not in (await conn.execute(select(api_keys.c.key_hash))).scalar_one()
        )
    account = await accounts.resolve_api_key(key)
    assert account is not None and account.account_id == svc
    key_id = key.split("_")[1]
    assert await accounts.resolve_api_key(f"gmk_{key_id}_wrong-secret") is None
    assert await accounts.resolve_api_key("gmk_0123456789abcdef_whatever") is None
    assert await accounts.resolve_api_key("not-a-key") is None
    (info,) = await accounts.list_api_keys(svc)
    assert (info.key_id, info.name, info.revoked) == (key_id, "meter bridge", False)
    assert await accounts.revoke_api_key(key_id) is True
    assert await accounts.resolve_api_key(key) is None
    assert (await accounts.list_api_keys())[0].revoked is True
    with pytest.raises(KeyError):
        await accounts.create_api_key("no-such-account", "x")


async def test_rejecting_an_account_revokes_its_tokens_and_keys(accounts: AccountStore) -> None:
    ana = await _approved(accounts, "ana@example.org", Role.INSTALLER)
    token = await accounts.login("ana@example.org", PW)
    key = await accounts.create_api_key(ana, "laptop")
    await accounts.reject_account(ana)
    assert await accounts.resolve_token(token) is None
    assert await accounts.resolve_api_key(key) is None


async def test_sites_by_owner(accounts: AccountStore) -> None:
    ana = await _approved(accounts, "ana@example.org", Role.HOMEOWNER)
    bo = await _approved(accounts, "bo@example.org", Role.HOMEOWNER)
    await accounts.create_site("s2", ana, "Ana's barn", "NL-north")
    await accounts.create_site("s1", ana, "Ana's house")
    await accounts.create_site("s3", bo, "Bo's flat", "NL-south")
    assert [s.site_id for s in await accounts.list_sites(owner=ana)] == ["s1", "s2"]
    assert [s.site_id for s in await accounts.list_sites(owner=bo)] == ["s3"]
    assert [s.site_id for s in await accounts.list_sites()] == ["s1", "s2", "s3"]
    site = await accounts.get_site("s2")
    assert site is not None and (site.owner_account_id, site.zone) == (ana, "NL-north")
    assert await accounts.get_site("nope") is None
    with pytest.raises(ValueError, match="already exists"):
        await accounts.create_site("s1", bo, "dup")
    with pytest.raises(KeyError):
        await accounts.create_site("s9", "no-such-account", "orphan")


# the FastAPI dependencies

ADMIN_TOKEN = "legacy-admin-token"


def _app(accounts: AccountStore) -> FastAPI:
    auth = make_auth(accounts, admin_token=ADMIN_TOKEN)
    app = FastAPI()
    Me = Annotated[Principal, Depends(auth.current_principal)]

    @app.get("/me")
    async def me(p: Me) -> dict[str, str]:
        return {"account_id": p.account_id, "role": p.role, "via": p.via}

    @app.get("/homeowner")
    async def homeowner(
        p: Annotated[Principal, Depends(auth.require(Role.HOMEOWNER, action="view own sites"))],
    ) -> dict[str, list[str]]:
        return {"sites": [s.site_id for s in await accounts.list_sites() if can_see_site(p, s)]}

    for role in (Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR, Role.ADMIN):

        @app.get(f"/{role}", dependencies=[Depends(auth.require(role))])
        async def only_role() -> dict[str, bool]:
            return {"ok": True}

    return app


@pytest.fixture
async def client(accounts: AccountStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(accounts))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_no_credentials_is_401_with_a_json_body_and_challenge(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/me", "/homeowner", "/installer", "/admin"):
        r = await client.get(path)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"].startswith("not authenticated")


async def test_bad_credentials_are_401(client: httpx.AsyncClient) -> None:
    for headers, cookies in (
        ({"Authorization": "Bearer nonsense"}, {}),
        ({"Authorization": "Bearer gmk_0123456789abcdef_nonsense"}, {}),
        ({}, {SESSION_COOKIE: "nonsense"}),
    ):
        client.cookies.clear()
        for name, value in cookies.items():
            client.cookies.set(name, value)
        r = await client.get("/me", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "detail" in r.json()


async def test_wrong_role_is_403_and_right_role_is_200_via_bearer(
    accounts: AccountStore, client: httpx.AsyncClient
) -> None:
    await _approved(accounts, "ana@example.org", Role.HOMEOWNER)
    await _approved(accounts, "ivo@example.org", Role.INSTALLER)
    ana = {"Authorization": f"Bearer {await accounts.login('ana@example.org', PW)}"}
    ivo = {"Authorization": f"Bearer {await accounts.login('ivo@example.org', PW)}"}
    r = await client.get("/installer", headers=ana)
    assert r.status_code == 403
    assert r.json() == {"detail": "role homeowner may not use this endpoint"}
    r = await client.get("/homeowner", headers=ivo)
    assert r.status_code == 403
    assert r.json() == {"detail": "role installer may not view own sites"}
    assert (await client.get("/installer", headers=ivo)).json() == {"ok": True}
    assert (await client.get("/me", headers=ana)).json()["via"] == "bearer"


async def test_homeowner_sees_only_own_sites(
    accounts: AccountStore, client: httpx.AsyncClient
) -> None:
    ana = await _approved(accounts, "ana@example.org", Role.HOMEOWNER)
    bo = await _approved(accounts, "bo@example.org", Role.HOMEOWNER)
    await accounts.create_site("a1", ana, "Ana's house")
    await accounts.create_site("b1", bo, "Bo's house")
    token = await accounts.login("ana@example.org", PW)
    r = await client.get("/homeowner", headers={"Authorization": f"Bearer {token}"})
    assert r.json() == {"sites": ["a1"]}
    admin = await client.get("/homeowner", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.json() == {"sites": ["a1", "b1"]}


async def test_session_cookie_and_logout(accounts: AccountStore, client: httpx.AsyncClient) -> None:
    await _approved(accounts, "apa@example.org", Role.APPROVER)
    token = await accounts.login("apa@example.org", PW)
    client.cookies.set(SESSION_COOKIE, token)
    r = await client.get("/approver")
    assert r.status_code == 200
    assert (await client.get("/me")).json()["via"] == "session"
    assert (await client.get("/grid_operator")).status_code == 403
    await accounts.revoke_token(token)
    assert (await client.get("/approver")).status_code == 401


async def test_api_key_authenticates_a_service(
    accounts: AccountStore, client: httpx.AsyncClient
) -> None:
    svc = await _approved(accounts, "dso@svc.example.org", Role.GRID_OPERATOR)
    key = await accounts.create_api_key(svc, "dso feed")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/grid_operator", headers=headers)).status_code == 200
    assert (await client.get("/me", headers=headers)).json() == {
        "account_id": svc,
        "role": "grid_operator",
        "via": "api_key",
    }
    assert (await client.get("/installer", headers=headers)).status_code == 403
    await accounts.revoke_api_key(key)
    assert (await client.get("/grid_operator", headers=headers)).status_code == 401


async def test_admin_passes_every_role_check_and_legacy_token_is_admin(
    accounts: AccountStore, client: httpx.AsyncClient
) -> None:
    await _approved(accounts, "root@example.org", Role.ADMIN)
    token = await accounts.login("root@example.org", PW)
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ):
        for path in ("/homeowner", "/installer", "/approver", "/grid_operator", "/admin"):
            assert (await client.get(path, headers=headers)).status_code == 200, path
    r = await client.get("/me", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.json()["role"] == "admin"


async def test_pending_and_rejected_accounts_are_403(
    accounts: AccountStore, client: httpx.AsyncClient
) -> None:
    pending = await accounts.create_account("new@example.org", "New", PW, Role.INSTALLER)
    token = await accounts.issue_token(pending.account_id)
    key = await accounts.create_api_key(pending.account_id, "early key")
    for cred in (token, key):
        r = await client.get("/installer", headers={"Authorization": f"Bearer {cred}"})
        assert r.status_code == 403
        assert r.json() == {"detail": "account is waiting for approval"}
    client.cookies.set(SESSION_COOKIE, token)
    assert (await client.get("/me")).status_code == 403
    rejected = await accounts.create_account("no@example.org", "No", PW, Role.INSTALLER)
    await accounts.reject_account(rejected.account_id)
    late = await accounts.issue_token(rejected.account_id)
    r = await client.get("/installer", headers={"Authorization": f"Bearer {late}"})
    assert r.status_code == 403
    assert r.json() == {"detail": "account was rejected"}


async def test_openapi_documents_the_security_schemes(accounts: AccountStore) -> None:
    schema = _app(accounts).openapi()
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    assert schema["paths"]["/admin"]["get"]["security"]


async def test_account_decisions_need_a_reason_to_reject_and_are_logged(store: Store) -> None:
    import httpx

    from cloud.api.app import create_app

    accounts = AccountStore(store.engine)
    approver = await accounts.create_account(
        "ap@example.org", "ap", "a long password", "approver", "approved"
    )
    bearer = {"Authorization": f"Bearer {await accounts.issue_token(approver.account_id, 600)}"}
    a = await accounts.create_account("a@example.org", "a", "a long password", "homeowner")
    b = await accounts.create_account("b@example.org", "b", "a long password", "installer")
    b_token_before = await accounts.issue_token(b.account_id, 600)
    app = create_app(store, accounts=accounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(
            f"/api/v1/accounts/{b.account_id}/status",
            headers=bearer,
            json={"status": "rejected", "reason": "  "},
        )
        assert r.status_code == 422
        assert "reason is required" in r.json()["detail"]
        r = await c.post(
            f"/api/v1/accounts/{a.account_id}/status", headers=bearer, json={"status": "approved"}
        )
        assert r.status_code == 200 and r.json()["status"] == "approved"
        r = await c.post(
            f"/api/v1/accounts/{b.account_id}/status",
            headers=bearer,
            json={"status": "rejected", "reason": "not a licensed installer"},
        )
        assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert await accounts.resolve_token(b_token_before) is None  # rejecting revoked its tokens
    log = await accounts.list_account_decisions()
    assert [(x.email, x.old_status, x.new_status, x.reason, x.decided_by_email) for x in log] == [
        ("b@example.org", "pending", "rejected", "not a licensed installer", "ap@example.org"),
        ("a@example.org", "pending", "approved", "", "ap@example.org"),
    ]


async def test_a_cached_credential_is_read_again_past_half_its_life_without_waiting(
    store: Store, clock: FakeClock
) -> None:
    # Another API process's view: a logout there reaches this process's cache through the
    # background refresh at half the entry's life, and no request waits for that read.
    here = AccountStore(store.engine, clock=clock, credential_ttl_s=10.0)
    token = await here.issue_token(await _approved(here, "half@example.org", Role.HOMEOWNER))
    assert await here.resolve_token(token) is not None  # read and cached
    async with store.engine.begin() as conn:  # revoked elsewhere: this cache is not told
        await conn.execute(auth_tokens.update().values(revoked=1))
    clock.t += 4
    assert await here.resolve_token(token) is not None  # cached, not yet half its life
    clock.t += 2
    assert await here.resolve_token(token) is not None  # served at once; a refresh starts
    cache = here._credentials
    for _ in range(200):
        if not cache.refreshing:
            break
        await asyncio.sleep(0.01)
    assert not cache.refreshing
    # The refresh found the token revoked, so the entry is gone 4 s before it would expire.
    assert await here.resolve_token(token) is None
