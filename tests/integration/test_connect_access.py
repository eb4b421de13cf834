"""Utility access for the Connect API on both storage backends, over real HTTP (uvicorn): an admin
registers a utility client, the client gets access tokens with its credentials (form and HTTP
Basic), a homeowner grants and revokes a site, the client reads exactly the granted sites and a
revocation holds from its very next request; the grant log, revoked clients, expiry, and that
utility tokens and user credentials never stand in for each other."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from sqlalchemy import delete, update
from sqlalchemy.exc import DBAPIError

from cloud.api.app import create_app
from cloud.domain.utility_access import new_access_token
from cloud.runtime import free_port, http_config
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store
from cloud.storage.tables import site_grant_log
from cloud.storage.unit_of_work import UnitOfWork
from cloud.storage.utility_store import UtilityStore

PASSWORD = "a long password"  # noqa: S105 - a test credential


class Clock:
    """The app's clock (access tokens expire on it); user tokens keep the real one."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    http: httpx.AsyncClient
    store: Store
    clock: Clock
    ids: dict[str, str]  # role name -> account id
    users: dict[str, dict[str, str]]  # role name -> Authorization header


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    """The app served by uvicorn on a free port: an admin, a grid operator, an installer, a
    homeowner Hal with sites site-a and site-b, and a neighbour Nia with site-n."""
    accounts = AccountStore(store.engine)
    ids: dict[str, str] = {}
    users: dict[str, dict[str, str]] = {}
    for name, role in (
        ("admin", "admin"),
        ("ops", "grid_operator"),
        ("installer", "installer"),
        ("hal", "homeowner"),
        ("nia", "homeowner"),
    ):
        a = await accounts.create_account(f"{name}@example.org", name, PASSWORD, role, "approved")
        ids[name] = a.account_id
        users[name] = {"Authorization": f"Bearer {await accounts.issue_token(a.account_id)}"}
    await accounts.create_site("site-a", ids["hal"], "Hal's roof")
    await accounts.create_site("site-b", ids["hal"], "Hal's barn")
    await accounts.create_site("site-n", ids["nia"], "Next door")
    clock = Clock()
    app = create_app(store, accounts=accounts, now=clock)
    port = free_port()
    server = uvicorn.Server(http_config(app, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the app did not start")
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield World(http, store, clock, ids, users)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def register(w: World, name: str = "Northgrid Utility") -> tuple[str, str]:
    r = await w.http.post(
        "/api/v1/utility-clients",
        json={"name": name, "scopes": "meter:read"},
        headers=w.users["admin"],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and body["scopes"] == "meter:read" and not body["revoked"]
    return body["client_id"], body["client_secret"]


async def token_of(w: World, client_id: str, secret: str) -> dict[str, str]:
    r = await w.http.post(
        "/api/v1/connect/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def grant(w: World, who: str, site_id: str, client_id: str) -> httpx.Response:
    return await w.http.post(
        f"/api/v1/sites/{site_id}/grants", json={"client_id": client_id}, headers=w.users[who]
    )


def oauth_error(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["error_description"]
    assert r.headers["cache-control"] == "no-store"


async def test_admin_registers_a_client_that_gets_tokens(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    assert client_id.startswith("uc-") and secret.startswith("gmcs_")
    # The secret is shown once: lists never carry it.
    listed = (await w.http.get("/api/v1/utility-clients", headers=w.users["ops"])).json()
    assert [c["client_id"] for c in listed] == [client_id]
    assert "client_secret" not in listed[0] and secret not in str(listed)
    directory = await w.http.get("/api/v1/utility-clients/directory", headers=w.users["hal"])
    assert directory.json() == [{"client_id": client_id, "name": "Northgrid Utility"}]
    # Bad registrations are plain 422s.
    for body in ({"name": "X", "scopes": "meter:write"}, {"name": "X", "scopes": ""}):
        r = await w.http.post("/api/v1/utility-clients", json=body, headers=w.users["admin"])
        assert r.status_code == 422 and "scope" in r.json()["detail"], r.text

    # Form credentials: every scope the client holds when none are asked.
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    r = await w.http.post("/api/v1/connect/token", data=form)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["token_type"] == "Bearer" and got["expires_in"] == 3600
    assert got["scope"] == "meter:read" and got["access_token"].startswith("gmu_")
    assert r.headers["cache-control"] == "no-store"
    # HTTP Basic, with the scope asked for.
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    r = await w.http.post(
        "/api/v1/connect/token",
        data={"grant_type": "client_credentials", "scope": "meter:read"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] != got["access_token"] and r.json()["scope"] == "meter:read"
    for token in (got["access_token"], r.json()["access_token"]):
        listed_sites = await w.http.get(
            "/api/v1/connect/sites", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed_sites.status_code == 200 and listed_sites.json() == []

    # RFC 6749 errors.
    r = await w.http.post("/api/v1/connect/token", data={**form, "client_secret": secret + "x"})
    oauth_error(r, 401, "invalid_client")
    assert r.headers["www-authenticate"].startswith("Basic")
    wrong = base64.b64encode(f"{client_id}:gmcs_{'A' * 43}".encode()).decode()
    r = await w.http.post(
        "/api/v1/connect/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {wrong}"},
    )
    oauth_error(r, 401, "invalid_client")
    r = await w.http.post(
        "/api/v1/connect/token", data={**form, "client_id": "uc-0000000000000000"}
    )
    oauth_error(r, 401, "invalid_client")
    r = await w.http.post("/api/v1/connect/token", data={"grant_type": "client_credentials"})
    oauth_error(r, 401, "invalid_client")
    r = await w.http.post("/api/v1/connect/token", data={**form, "scope": "meter:read meter:write"})
    oauth_error(r, 400, "invalid_scope")
    assert "meter:write" in r.json()["error_description"]
    r = await w.http.post("/api/v1/connect/token", data={**form, "grant_type": "password"})
    oauth_error(r, 400, "unsupported_grant_type")
    r = await w.http.post("/api/v1/connect/token", json=form)
    oauth_error(r, 400, "invalid_request")
    r = await w.http.post(  # Basic and a secret in the form: one way to authenticate only
        "/api/v1/connect/token", data=form, headers={"Authorization": f"Basic {basic}"}
    )
    oauth_error(r, 400, "invalid_request")
    r = await w.http.post(
        "/api/v1/connect/token",
        content=f"grant_type=client_credentials&client_id={client_id}&client_id=uc-x"
        f"&client_secret={secret}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    oauth_error(r, 400, "invalid_request")


async def test_homeowner_grants_and_revokes_a_site(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    bearer = await token_of(w, client_id, secret)

    r = await grant(w, "hal", "site-a", client_id)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["site_id"] == "site-a" and made["client_id"] == client_id
    assert made["client_name"] == "Northgrid Utility" and made["granted_by"] == w.ids["hal"]
    again = await grant(w, "hal", "site-a", client_id)  # a double click changes nothing
    assert again.status_code == 200 and again.json() == made

    # The client reads exactly site-a.
    r = await w.http.get("/api/v1/connect/sites", headers=bearer)
    assert r.status_code == 200 and r.json() == [{"site_id": "site-a", "name": "Hal's roof"}]
    r = await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)
    assert r.status_code == 200 and r.json() == {"site_id": "site-a", "name": "Hal's roof"}
    # Hal's other site, the neighbour's and one that does not exist answer alike.
    details = set()
    for site in ("site-b", "site-n", "no-such-site"):
        r = await w.http.get(f"/api/v1/connect/sites/{site}", headers=bearer)
        assert r.status_code == 404, (site, r.text)
        details.add(r.json()["detail"].replace(site, "<site>"))
    assert len(details) == 1

    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    assert r.status_code == 200
    assert [g["client_id"] for g in r.json()["grants"]] == [client_id]

    r = await w.http.delete(f"/api/v1/sites/site-a/grants/{client_id}", headers=w.users["hal"])
    assert r.status_code == 200, r.text
    assert r.json()["revoked_ms"] >= r.json()["granted_ms"]
    # The very next request is refused: no cache stands between the revocation and the check.
    r = await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)
    assert r.status_code == 404
    assert (await w.http.get("/api/v1/connect/sites", headers=bearer)).json() == []
    r = await w.http.delete(f"/api/v1/sites/site-a/grants/{client_id}", headers=w.users["hal"])
    assert r.status_code == 404  # nothing left to revoke

    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    view = r.json()
    assert view["site_id"] == "site-a" and view["grants"] == []
    log = view["log"]  # newest first
    assert [(e["action"], e["client_id"], e["by"]) for e in log] == [
        ("revoked", client_id, w.ids["hal"]),
        ("granted", client_id, w.ids["hal"]),
    ]
    assert log[0]["by_email"] == "hal@example.org" and log[0]["at_ms"] >= log[1]["at_ms"]
    assert log[0]["client_name"] == "Northgrid Utility"

    # Granted again: readable again, and logged a third time.
    assert (await grant(w, "hal", "site-a", client_id)).status_code == 201
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)).status_code == 200
    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    assert [e["action"] for e in r.json()["log"]] == ["granted", "revoked", "granted"]
    # The other site's log is its own.
    r = await w.http.get("/api/v1/sites/site-b/grants", headers=w.users["hal"])
    assert r.json() == {"site_id": "site-b", "grants": [], "log": []}


async def test_only_the_owner_or_an_admin_manages_a_sites_grants(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    bearer = await token_of(w, client_id, secret)
    # The neighbour cannot see, grant or revoke on Hal's site: it is a 404, like an unknown one.
    assert (await grant(w, "nia", "site-a", client_id)).status_code == 404
    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["nia"])
    assert r.status_code == 404
    assert (await grant(w, "hal", "site-a", client_id)).status_code == 201
    r = await w.http.delete(f"/api/v1/sites/site-a/grants/{client_id}", headers=w.users["nia"])
    assert r.status_code == 404
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)).status_code == 200
    # Other roles are refused by role.
    for who in ("installer", "ops"):
        r = await grant(w, who, "site-b", client_id)
        assert r.status_code == 403 and "may not manage" in r.json()["detail"], r.text
    # An admin may act on any site, and is logged as the actor.
    assert (await grant(w, "admin", "site-n", client_id)).status_code == 201
    r = await w.http.get("/api/v1/sites/site-n/grants", headers=w.users["nia"])
    assert [(e["action"], e["by"]) for e in r.json()["log"]] == [("granted", w.ids["admin"])]
    # Unknown clients and unknown sites.
    r = await grant(w, "hal", "site-b", "uc-0000000000000000")
    assert r.status_code == 404 and "does not exist or was revoked" in r.json()["detail"]
    assert (await grant(w, "admin", "no-such-site", client_id)).status_code == 404
    r = await w.http.post(
        "/api/v1/sites/site-b/grants", json={"client": client_id}, headers=w.users["hal"]
    )
    assert r.status_code == 422


async def test_a_revoked_client_loses_its_tokens_and_grants(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    other_id, other_secret = await register(w, "Southern Power")
    bearer = await token_of(w, client_id, secret)
    other = await token_of(w, other_id, other_secret)
    for cid in (client_id, other_id):
        assert (await grant(w, "hal", "site-a", cid)).status_code == 201
    assert (await grant(w, "nia", "site-n", client_id)).status_code == 201

    r = await w.http.post(f"/api/v1/utility-clients/{client_id}/revoke", headers=w.users["hal"])
    assert r.status_code == 403
    r = await w.http.post(f"/api/v1/utility-clients/{client_id}/revoke", headers=w.users["admin"])
    assert r.status_code == 200 and r.json()["revoked"] is True
    again = await w.http.post(
        f"/api/v1/utility-clients/{client_id}/revoke", headers=w.users["admin"]
    )
    assert again.status_code == 200  # revoking twice changes nothing
    r = await w.http.post(
        "/api/v1/utility-clients/uc-0000000000000000/revoke", headers=w.users["admin"]
    )
    assert r.status_code == 404

    # Its token stops at once, and it gets no new one.
    r = await w.http.get("/api/v1/connect/sites", headers=bearer)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)).status_code == 401
    r = await w.http.post(
        "/api/v1/connect/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    oauth_error(r, 401, "invalid_client")
    # Its grants ended (logged as the admin's doing); the other client keeps its own.
    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    assert [g["client_id"] for g in r.json()["grants"]] == [other_id]
    assert (r.json()["log"][0]["action"], r.json()["log"][0]["by"]) == ("revoked", w.ids["admin"])
    r = await w.http.get("/api/v1/sites/site-n/grants", headers=w.users["nia"])
    assert [e["action"] for e in r.json()["log"]] == ["revoked", "granted"]
    r = await w.http.get("/api/v1/connect/sites", headers=other)
    assert [s["site_id"] for s in r.json()] == ["site-a"]
    # Homeowners cannot pick it any more; the admin's list still shows it, revoked.
    r = await w.http.get("/api/v1/utility-clients/directory", headers=w.users["hal"])
    assert [c["client_id"] for c in r.json()] == [other_id]
    assert (await grant(w, "hal", "site-b", client_id)).status_code == 404
    r = await w.http.get("/api/v1/utility-clients", headers=w.users["admin"])
    assert {c["client_id"]: c["revoked"] for c in r.json()} == {client_id: True, other_id: False}


async def test_access_tokens_expire_after_an_hour(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    bearer = await token_of(w, client_id, secret)
    assert (await grant(w, "hal", "site-a", client_id)).status_code == 201
    w.clock.now += 3599
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)).status_code == 200
    w.clock.now += 1
    r = await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    fresh = await token_of(w, client_id, secret)
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=fresh)).status_code == 200


async def test_a_token_without_the_scope_is_a_403(world: World) -> None:
    w = world
    client_id, _ = await register(w)
    # No client can ask for a token without meter:read today (it is the only scope and a
    # client holds at least one); a token stored without it stands for a future narrower one.
    made = new_access_token()
    store = UtilityStore(w.store.engine)
    async with UnitOfWork(w.store.engine) as conn:
        await store.write_token(
            conn, made.digest, client_id, frozenset(), int(w.clock.now * 1000) + 60_000
        )
    r = await w.http.get("/api/v1/connect/sites", headers={"Authorization": f"Bearer {made.value}"})
    assert r.status_code == 403 and "meter:read" in r.json()["detail"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


async def test_utility_tokens_and_user_credentials_do_not_stand_in_for_each_other(
    world: World,
) -> None:
    w = world
    client_id, secret = await register(w)
    bearer = await token_of(w, client_id, secret)
    assert (await grant(w, "hal", "site-a", client_id)).status_code == 201

    # A utility access token is no user credential.
    for path in ("/api/v1/sites", "/api/v1/me", "/api/v1/sites/site-a/grants"):
        r = await w.http.get(path, headers=bearer)
        assert r.status_code == 401, (path, r.text)
        assert "not a user credential" in r.json()["detail"]
    session = {"Cookie": f"gridmint_session={bearer['Authorization'][7:]}"}
    r = await w.http.get("/api/v1/sites", headers=session)
    assert r.status_code == 401
    # ...and user credentials are no utility access token.
    api_key = await AccountStore(w.store.engine).create_api_key(w.ids["admin"], "prometheus")
    for headers in (
        w.users["hal"],
        w.users["admin"],
        {"Authorization": f"Bearer {api_key}"},
        {"Authorization": f"Bearer {secret}"},  # the client secret itself is no token either
        {},
    ):
        for path in ("/api/v1/connect/sites", "/api/v1/connect/sites/site-a"):
            r = await w.http.get(path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
    user_token = w.users["hal"]["Authorization"][7:]
    r = await w.http.get(
        "/api/v1/connect/sites", headers={"Cookie": f"gridmint_session={user_token}"}
    )
    assert r.status_code == 401
    assert "access token" in r.json()["detail"]


async def test_the_grant_log_is_append_only(world: World) -> None:
    w = world
    client_id, _ = await register(w)
    assert (await grant(w, "hal", "site-a", client_id)).status_code == 201
    for statement in (
        update(site_grant_log).values(by="someone else"),
        delete(site_grant_log),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with w.store.engine.begin() as conn:
                await conn.execute(statement)
    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    assert [(e["action"], e["by"]) for e in r.json()["log"]] == [("granted", w.ids["hal"])]


async def test_simultaneous_grants_and_revocations_are_logged_once(world: World) -> None:
    w = world
    client_id, secret = await register(w)
    bearer = await token_of(w, client_id, secret)
    granted = await asyncio.gather(*(grant(w, "hal", "site-a", client_id) for _ in range(5)))
    assert sorted(r.status_code for r in granted) == [200, 200, 200, 200, 201]
    revoked = await asyncio.gather(
        *(
            w.http.delete(f"/api/v1/sites/site-a/grants/{client_id}", headers=w.users["hal"])
            for _ in range(5)
        )
    )
    assert sorted(r.status_code for r in revoked) == [200, 404, 404, 404, 404]
    r = await w.http.get("/api/v1/sites/site-a/grants", headers=w.users["hal"])
    assert [e["action"] for e in r.json()["log"]] == ["revoked", "granted"]
    assert (await w.http.get("/api/v1/connect/sites/site-a", headers=bearer)).status_code == 404
