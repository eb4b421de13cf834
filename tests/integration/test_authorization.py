"""Authorization table: every API endpoint x every role -> allowed, 401 or 403.

The table is the policy; a new endpoint without a row fails the coverage test, so no endpoint
can ship without a decision. "Allowed" means authorization passed: the request may still be
refused later for its body (422) or a missing object (404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import fastapi.routing
import httpx
import pytest
from fastapi.routing import APIRoute

from cloud.api.app import create_app
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store

ROLES = ("anonymous", "homeowner", "installer", "approver", "grid_operator", "admin")
A, D = "allow", "deny"  # deny = 401 for anonymous, 403 for a signed-in role
# For utility (machine) clients only: every user credential is a 401, as no credential is.
C = "utility client"
CLIENT = (C,) * len(ROLES)

# (method, path): decision per role in ROLES order
TABLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", "/healthz"): (A, A, A, A, A, A),
    ("GET", "/metrics"): (D, D, D, D, A, A),
    ("GET", "/api/v1/devices"): (D, A, A, A, A, A),
    ("POST", "/api/v1/admin/devices"): (D, D, A, D, D, A),
    ("POST", "/api/v1/admin/devices/{device_id}/status"): (D, D, D, A, D, A),
    ("POST", "/api/v1/admin/devices/{device_id}/keys/{kid}/revoke"): (D, D, D, A, D, A),
    ("GET", "/api/v1/tokens"): (D, A, A, A, A, A),
    ("GET", "/api/v1/stats"): (D, D, A, A, A, A),
    ("GET", "/api/v1/rejections"): (D, D, D, A, A, A),
    ("GET", "/api/v1/stream"): (D, D, A, A, A, A),
    # A homeowner's "/" is a 303 to their own page, /home (checked below).
    ("GET", "/"): (D, A, A, A, A, A),
    ("GET", "/home"): (D, A, D, D, D, A),
    ("GET", "/home/analytics"): (D, A, D, D, D, A),  # meter analytics, like /home
    ("GET", "/market"): (D, A, D, D, A, A),  # the trading desk; read-only but for homeowners
    ("GET", "/approvals"): (D, D, D, A, D, A),
    # A homeowner passes the role check; the data rule then limits them to their own sites'
    # devices (the fixture's pi-x is on the homeowner's site-x; see test_device_pages.py).
    ("GET", "/devices/{device_id}"): (D, A, A, A, A, A),
    ("POST", "/api/v1/login"): (A, A, A, A, A, A),
    ("POST", "/api/v1/logout"): (D, A, A, A, A, A),
    ("GET", "/api/v1/me"): (D, A, A, A, A, A),
    ("POST", "/api/v1/accounts"): (A, A, A, A, A, A),
    ("GET", "/api/v1/accounts"): (D, D, D, A, D, A),
    ("POST", "/api/v1/accounts/{account_id}/status"): (D, D, D, A, D, A),
    ("POST", "/api/v1/sites"): (D, D, A, D, D, A),
    ("GET", "/api/v1/sites"): (D, A, A, A, A, A),
    ("POST", "/api/v1/sites/{site_id}/claim-codes"): (D, D, A, D, D, A),
    ("PUT", "/api/v1/sites/{site_id}/battery"): (D, D, A, D, D, A),
    ("GET", "/api/v1/sites/{site_id}/battery"): (D, A, A, A, A, A),
    ("POST", "/api/v1/enroll"): (A, A, A, A, A, A),
    # Device-signed requests: the signature is the credential, so no role is needed.
    ("POST", "/api/v1/devices/{device_id}/probe"): (A, A, A, A, A, A),
    ("POST", "/api/v1/devices/{device_id}/keys"): (A, A, A, A, A, A),
    ("GET", "/api/v1/devices/{device_id}/keys"): (A, A, A, A, A, A),
    ("POST", "/api/v1/devices/{device_id}/certificate"): (A, A, A, A, A, A),
    ("POST", "/api/v1/devices/{device_id}/proofs"): (A, A, A, A, A, A),
    # The transparency log: sizes and hashes are public; entries need a role (own site).
    ("GET", "/api/v1/ledger/checkpoint"): (A, A, A, A, A, A),
    ("GET", "/api/v1/ledger/key"): (A, A, A, A, A, A),
    ("GET", "/api/v1/ledger/consistency"): (A, A, A, A, A, A),
    ("GET", "/api/v1/ledger/proofs/tokens/{token_id}"): (D, A, A, A, A, A),
    ("GET", "/api/v1/ledger/summary"): (D, A, A, A, A, A),
    ("GET", "/api/v1/ledger/export"): (D, D, D, A, A, A),
    ("POST", "/api/v1/api-keys"): (D, D, D, D, D, A),
    # Certificates: a homeowner issues, transfers and retires their own sites' (503 here: no
    # ledger); fleet roles read every site's.
    ("POST", "/api/v1/sites/{site_id}/certificates"): (D, A, D, D, D, A),
    ("GET", "/api/v1/sites/{site_id}/certificates"): (D, A, A, A, A, A),
    ("POST", "/api/v1/certificates/{certificate_id}/transfer"): (D, A, D, D, D, A),
    ("POST", "/api/v1/certificates/{certificate_id}/retire"): (D, A, D, D, D, A),
    # The market: everyone signed in sees the rules, the anonymous book, the history and the
    # stream; homeowners trade for their own sites (503 here: no market in this app) and see
    # their own orders and trades; the grid operator sees all of them.
    ("GET", "/api/v1/market"): (D, A, A, A, A, A),
    ("GET", "/api/v1/market/book"): (D, A, A, A, A, A),
    ("GET", "/api/v1/market/history"): (D, A, A, A, A, A),
    ("GET", "/api/v1/market/stream"): (D, A, A, A, A, A),
    ("POST", "/api/v1/market/orders"): (D, A, D, D, D, A),
    ("GET", "/api/v1/market/orders"): (D, A, D, D, A, A),
    ("GET", "/api/v1/market/orders/{order_id}"): (D, A, D, D, A, A),
    ("PATCH", "/api/v1/market/orders/{order_id}"): (D, A, D, D, D, A),
    ("DELETE", "/api/v1/market/orders/{order_id}"): (D, A, D, D, D, A),
    ("GET", "/api/v1/market/orders/{order_id}/proofs"): (D, A, D, D, A, A),
    ("GET", "/api/v1/market/trades"): (D, A, D, D, A, A),
    ("GET", "/api/v1/market/trades/{trade_id}/proof"): (D, A, D, D, A, A),
    ("GET", "/api/v1/market/policies/{site_id}"): (D, A, D, D, A, A),
    ("PUT", "/api/v1/market/policies/{site_id}"): (D, A, D, D, D, A),
    ("GET", "/login"): (A, A, A, A, A, A),
    ("POST", "/login"): (A, A, A, A, A, A),
    # The DERMS (503 here: no fleet or dispatch in this app): fleet roles watch the live fleet
    # and the events; the grid operator handles alarms and dispatches; the dispatch key is
    # public (devices pin it).
    ("GET", "/api/v1/fleet/live"): (D, D, A, A, A, A),
    ("GET", "/api/v1/fleet/groups"): (D, D, A, A, A, A),
    ("GET", "/api/v1/fleet/totals"): (D, D, A, A, A, A),
    ("GET", "/api/v1/fleet/stream"): (D, D, A, A, A, A),
    ("GET", "/api/v1/alarms"): (D, D, A, A, A, A),
    ("POST", "/api/v1/alarms/{alarm_id}/ack"): (D, D, D, D, A, A),
    ("PUT", "/api/v1/sites/{site_id}/location"): (D, D, A, D, A, A),
    ("PUT", "/api/v1/sites/{site_id}/feeder"): (D, D, A, D, A, A),
    ("GET", "/api/v1/dispatch/key"): (A, A, A, A, A, A),
    ("POST", "/api/v1/dispatch/events"): (D, D, D, D, A, A),
    ("GET", "/api/v1/dispatch/events"): (D, D, A, A, A, A),
    ("GET", "/api/v1/dispatch/events/{event_id}"): (D, D, A, A, A, A),
    ("PUT", "/api/v1/dispatch/events/{event_id}"): (D, D, D, D, A, A),
    ("POST", "/api/v1/dispatch/events/{event_id}/cancel"): (D, D, D, D, A, A),
    ("GET", "/api/v1/dispatch/events/{event_id}/devices"): (D, D, A, A, A, A),
    ("GET", "/api/v1/dispatch/events/{event_id}/performance"): (D, D, A, A, A, A),
    # The DERMS pages, and one site's live power, energy and events (own sites for a homeowner).
    ("GET", "/fleet"): (D, D, A, A, A, A),
    ("GET", "/events"): (D, D, A, A, A, A),
    ("GET", "/events/{event_id}"): (D, D, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/live"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/energy"): (D, A, A, A, A, A),
    # The virtual meter: homeowners (own sites, by the data rule) and fleet roles read it.
    ("GET", "/api/v1/sites/{site_id}/meter"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/intervals"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/registers"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/intervals/{start}/records"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/greenbutton"): (D, A, A, A, A, A),
    ("PUT", "/api/v1/sites/{site_id}/time-zone"): (D, A, A, D, D, A),
    ("POST", "/api/v1/sites/{site_id}/meter/revenue"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/revenue"): (D, A, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/meter/reconciliation"): (D, A, A, A, A, A),
    ("GET", "/api/v1/fleet/meter"): (D, D, A, A, A, A),
    ("GET", "/api/v1/sites/{site_id}/events"): (D, A, A, A, A, A),
    # Utility access (Connect): the admin registers and revokes utility clients (the grid
    # operator may read the list); homeowners pick from the directory and manage their own
    # sites' grants. The token endpoint's credential is the client's secret; the rest of
    # /api/v1/connect/ takes a utility access token only (test_connect_access.py).
    ("POST", "/api/v1/utility-clients"): (D, D, D, D, D, A),
    ("GET", "/api/v1/utility-clients"): (D, D, D, D, A, A),
    ("GET", "/api/v1/utility-clients/directory"): (D, A, D, D, D, A),
    ("POST", "/api/v1/utility-clients/{client_id}/revoke"): (D, D, D, D, D, A),
    ("GET", "/api/v1/sites/{site_id}/grants"): (D, A, D, D, D, A),
    ("POST", "/api/v1/sites/{site_id}/grants"): (D, A, D, D, D, A),
    ("DELETE", "/api/v1/sites/{site_id}/grants/{client_id}"): (D, A, D, D, D, A),
    ("POST", "/api/v1/connect/token"): (A, A, A, A, A, A),
    ("GET", "/api/v1/connect/sites"): CLIENT,
    ("GET", "/api/v1/connect/sites/{site_id}"): CLIENT,
    ("GET", "/api/v1/connect/sites/{site_id}/usage-point"): CLIENT,
    ("GET", "/api/v1/connect/sites/{site_id}/intervals"): CLIENT,
    ("GET", "/api/v1/connect/sites/{site_id}/registers"): CLIENT,
    ("GET", "/api/v1/connect/sites/{site_id}/greenbutton"): CLIENT,
    # Payments (503 here: no payments in this app). Stripe's webhook is signed: the signature
    # is the credential, so no role is needed (test_payments_stripe.py checks it). The
    # sandbox's pay button takes any signed-in account; the service then allows only the
    # buyer who owns the payment, or an admin. FX rates: all read, the admin sets them.
    ("POST", "/api/v1/payments/stripe/webhook"): (A, A, A, A, A, A),
    ("POST", "/api/v1/payments/sandbox/{payment_id}/complete"): (D, A, A, A, A, A),
    ("GET", "/api/v1/fx-rates"): (D, A, A, A, A, A),
    ("PUT", "/api/v1/fx-rates"): (D, D, D, D, D, A),
    # A home's market credits: its homeowner tops up and redeems (someone else's site is a 404,
    # test_market_credits.py); admins may too.
    ("GET", "/api/v1/sites/{site_id}/credits"): (D, A, D, D, D, A),
    ("POST", "/api/v1/sites/{site_id}/credits/top-ups"): (D, A, D, D, D, A),
    ("POST", "/api/v1/sites/{site_id}/credits/redemptions"): (D, A, D, D, D, A),
    # The carbon shop: everyone signed in browses; providers (not in ROLES: see
    # test_carbon_shop_api.py for provider and buyer) and admins list projects and lots;
    # homeowners (and buyers) check out and read their own orders.
    ("GET", "/api/v1/shop/projects"): (D, A, A, A, A, A),
    ("GET", "/api/v1/shop/projects/{project_id}"): (D, A, A, A, A, A),
    ("GET", "/api/v1/shop/projects/{project_id}/custody"): (D, A, A, A, A, A),
    ("POST", "/api/v1/shop/projects"): (D, D, D, D, D, A),
    ("POST", "/api/v1/shop/projects/{project_id}/lots"): (D, D, D, D, D, A),
    ("POST", "/api/v1/shop/projects/{project_id}/status"): (D, D, D, D, D, A),
    ("POST", "/api/v1/shop/orders"): (D, A, D, D, D, A),
    ("GET", "/api/v1/shop/orders"): (D, A, D, D, D, A),
    ("GET", "/api/v1/shop/orders/{order_id}"): (D, A, D, D, D, A),
    ("GET", "/api/v1/shop/orders/{order_id}/statement"): (D, A, D, D, D, A),
    ("POST", "/api/v1/shop/orders/{order_id}/retire"): (D, A, D, D, D, A),
    # Monthly subscriptions: buyers (not in ROLES) and homeowners subscribe; admins too.
    ("POST", "/api/v1/shop/subscriptions"): (D, A, D, D, D, A),
    ("GET", "/api/v1/shop/packages"): (D, A, D, D, D, A),
    ("GET", "/api/v1/shop/subscriptions"): (D, A, D, D, D, A),
    ("DELETE", "/api/v1/shop/subscriptions/{subscription_id}"): (D, A, D, D, D, A),
    # Self-registration and email verification: for anyone (the link's token, the credential
    # of a verification, is checked in test_registration.py).
    ("POST", "/api/v1/register"): (A, A, A, A, A, A),
    ("POST", "/api/v1/register/resend"): (A, A, A, A, A, A),
    ("POST", "/api/v1/verify-email"): (A, A, A, A, A, A),
    ("GET", "/register"): (A, A, A, A, A, A),
    ("POST", "/register"): (A, A, A, A, A, A),
    ("POST", "/register/resend"): (A, A, A, A, A, A),
    ("GET", "/verify-email"): (A, A, A, A, A, A),
    # The footprint: shoppers (homeowners here; buyers in test_shop_journey.py) keep their own.
    ("POST", "/api/v1/footprint/estimate"): (D, A, D, D, D, A),
    ("POST", "/api/v1/footprint"): (D, A, D, D, D, A),
    ("GET", "/api/v1/footprint"): (D, A, D, D, D, A),
    # The shop's pages: everyone signed in browses (as the API); the basket, checkout, orders,
    # statements and the footprint are for shoppers and admins.
    ("GET", "/shop"): (D, A, A, A, A, A),
    ("GET", "/shop/projects/{project_id}"): (D, A, A, A, A, A),
    ("GET", "/shop/checkout"): (D, A, D, D, D, A),
    ("GET", "/shop/orders"): (D, A, D, D, D, A),
    ("GET", "/shop/orders/{order_id}"): (D, A, D, D, D, A),
    ("GET", "/shop/orders/{order_id}/statement"): (D, A, D, D, D, A),
    ("GET", "/footprint"): (D, A, D, D, D, A),
    # homeowners list their own certificates for sale (admins: anyone's)
    ("POST", "/api/v1/shop/solar-listings"): (D, A, D, D, D, A),
}

# HTML pages: anonymous callers are sent to /login; a wrong role gets a plain 403 page.
PAGES = {
    "/",
    "/approvals",
    "/devices/{device_id}",
    "/home",
    "/home/analytics",
    "/market",
    "/fleet",
    "/events",
    "/events/{event_id}",
    "/shop",
    "/shop/projects/{project_id}",
    "/shop/checkout",
    "/shop/orders",
    "/shop/orders/{order_id}",
    "/shop/orders/{order_id}/statement",
    "/footprint",
}

BODIES = {
    "/api/v1/login": {"email": "homeowner@example.org", "password": "a long password"},
    "/api/v1/accounts": {"email": "new@example.org", "display_name": "N", "password": "12345678"},
}


@pytest.fixture
async def client_and_tokens(
    store: Store,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    accounts = AccountStore(store.engine)
    tokens: dict[str, str] = {}
    for role in ROLES[1:]:
        a = await accounts.create_account(
            f"{role}@example.org", role, "a long password", role, "approved"
        )
        tokens[role] = await accounts.issue_token(a.account_id, 3600)
        if role == "homeowner":
            await accounts.create_site("site-x", a.account_id, "X")
            await store.add_device("pi-x", "site-x", b"\x01" * 32, b"\x02" * 8, 5000)
    app = create_app(store, accounts=accounts, stream_interval_s=0.01)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, tokens


async def test_every_route_has_a_row(store: Store) -> None:
    # The routes live in included routers: since FastAPI 0.137 app.routes is a tree of them, and
    # iter_route_contexts (0.137.2) flattens it; before, include_router copied routes flat.
    flatten = getattr(fastapi.routing, "iter_route_contexts", iter)
    found = {
        (m, r.path)
        for r in flatten(create_app(store).routes)
        if isinstance(getattr(r, "original_route", r), APIRoute)
        for m in r.methods
        if r.path not in ("/docs", "/redoc", "/openapi.json")
        # The OpenADR 3 VTN answers to its own OAuth2 clients and scopes, not to roles: its
        # policy is tested in test_openadr_api.py (401 without a token, 403 without the scope).
        and not r.path.startswith("/openadr3/")
    }
    assert found == set(TABLE)


@pytest.mark.parametrize(("method", "path"), sorted(TABLE))
async def test_role_table(
    client_and_tokens: tuple[httpx.AsyncClient, dict[str, str]], method: str, path: str
) -> None:
    client, tokens = client_and_tokens
    url = (
        path.replace("{device_id}", "pi-x")
        .replace("{account_id}", "acct-x")
        .replace("{site_id}", "site-x")
        .replace("{order_id}", "o-x")
        .replace("{trade_id}", "t-x")
        .replace("{event_id}", "ev-x")
        .replace("{alarm_id}", "1")
        .replace("{client_id}", "uc-x")
        .replace("{payment_id}", "pay-x")
    )
    for role, decision in zip(ROLES, TABLE[(method, path)], strict=True):
        headers = {} if role == "anonymous" else {"Authorization": f"Bearer {tokens[role]}"}
        if path in ("/api/v1/stream", "/api/v1/fleet/stream"):
            r = await client.get(url, params={"events": 1}, headers=headers)
            status = r.status_code
        elif path == "/login" and method == "POST":
            r = await client.post(
                url,
                data={"email": "homeowner@example.org", "password": "a long password"},
                headers=headers,
            )
            status = r.status_code
        else:
            r = await client.request(method, url, json=BODIES.get(path, {}), headers=headers)
            status = r.status_code
        if path in PAGES and role == "anonymous":
            assert status == 303, (role, path, status)  # the page sends people to log in
            assert r.headers["location"] == "/login"
            continue
        if path == "/" and role == "homeowner":
            assert status == 303, (role, path, status)  # the homeowner's own page instead
            assert r.headers["location"] == "/home"
            continue
        if path in PAGES and path != "/" and decision == D:
            assert status == 403, (role, method, path, status)
            assert r.headers["content-type"].startswith("text/html")
            assert f"role {role} may not" in r.text
            continue
        if decision == C:
            assert status == 401, (role, method, path, status)
            assert r.headers["www-authenticate"].startswith("Bearer")
            continue
        if decision == A:
            assert status not in (401, 403), (role, method, path, status, r.text)
        elif role == "anonymous":
            assert status == 401, (role, method, path, status)
            assert "www-authenticate" in {k.lower() for k in r.headers}
        else:
            assert status == 403, (role, method, path, status)
            assert f"role {role} may not" in r.json()["detail"]
