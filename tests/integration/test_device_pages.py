"""Approver decisions on devices: the reason rule, the decision log, the queue and device pages.

Runs the real app (ASGI) and the real ingest service on both storage backends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from cloud.api.app import create_app
from cloud.services.ingest import IngestService
from cloud.storage.accounts import AccountStore
from cloud.storage.device_views import DeviceViews
from cloud.storage.store import Store
from protocol import topics
from tests.helpers.records import FakeDevice

ADMIN_TOKEN = "admin-secret-token"  # noqa: S105 - a test credential


@dataclass
class World:
    client: httpx.AsyncClient
    store: Store
    views: DeviceViews
    ids: dict[str, str]  # role or person -> account id
    tokens: dict[str, str]  # role or person -> bearer token
    pending: FakeDevice  # pending at the homeowner's site, two held tokens
    approved: FakeDevice  # approved at the neighbour's site, one token

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    accounts = AccountStore(store.engine)
    ids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    people = {
        "homeowner": "homeowner",
        "neighbour": "homeowner",
        "installer": "installer",
        "approver": "approver",
        "grid_operator": "grid_operator",
    }
    for who, role in people.items():
        a = await accounts.create_account(
            f"{who}@example.org", who.title(), "a long password", role, "approved"
        )
        ids[who] = a.account_id
        tokens[who] = await accounts.issue_token(a.account_id, 3600)
    await accounts.create_account("waiting@example.org", "Wait", "a long password", "installer")
    await accounts.create_site("site-home", ids["homeowner"], "Home")
    await accounts.create_site("site-next", ids["neighbour"], "Next door")

    pending = FakeDevice("pi-pending", site_id="site-home")
    approved = FakeDevice("pi-approved", site_id="site-next")
    await store.add_device(
        pending.device_id, pending.site_id, pending.public_key, pending.kid, 5000, status="pending"
    )
    await store.add_device(
        approved.device_id, approved.site_id, approved.public_key, approved.kid, 3000
    )
    ingest = IngestService(store, pending.deployment, time.time)
    for dev, whs in ((pending, (200, 300)), (approved, (120,))):
        topic = topics.topic(dev.site_id, dev.device_id, topics.Channel.TOKENS)
        for wh in whs:
            out = await ingest.handle(topic, dev.next_token(generated_wh=wh).envelope)
            assert out.receipt.status == "accepted"
    bad_topic = topics.topic(pending.site_id, pending.device_id, topics.Channel.TOKENS)
    await ingest.handle(bad_topic, b"not a token")

    app = create_app(store, accounts=accounts, admin_token=ADMIN_TOKEN)
    tokens["admin"] = ADMIN_TOKEN
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield World(c, store, DeviceViews(store.engine), ids, tokens, pending, approved)


async def test_reject_and_revoke_need_a_reason(world: World) -> None:
    c = world.client
    cases = (("rejected", "reject", "pi-pending"), ("revoked", "revoke", "pi-approved"))
    for status, verb, device in cases:
        for reason in (None, "", "   \t"):
            body = {"status": status} if reason is None else {"status": status, "reason": reason}
            r = await c.post(
                f"/api/v1/admin/devices/{device}/status", json=body, headers=world.as_("approver")
            )
            assert r.status_code == 422, (status, reason, r.text)
            assert r.json()["detail"] == f"a reason is required to {verb} a device"
    # Nothing changed and nothing was logged.
    assert (await world.store.get_device("pi-pending")).status == "pending"  # type: ignore[union-attr]
    assert (await world.store.get_device("pi-approved")).status == "approved"  # type: ignore[union-attr]
    assert await world.views.list_decisions() == []
    # The reason is checked after authorization, and an unknown device is still a 404.
    r = await c.post(
        "/api/v1/admin/devices/pi-pending/status",
        json={"status": "rejected"},
        headers=world.as_("installer"),
    )
    assert r.status_code == 403
    r = await c.post(
        "/api/v1/admin/devices/nope/status",
        json={"status": "revoked", "reason": "gone"},
        headers=world.as_("approver"),
    )
    assert r.status_code == 404
    assert await world.views.list_decisions() == []


async def test_decisions_are_logged_with_who_when_and_why(world: World) -> None:
    c = world.client
    before_ms = int(time.time() * 1000)
    r = await c.post(
        "/api/v1/admin/devices/pi-pending/status",
        json={"status": "approved"},
        headers=world.as_("approver"),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["tokens"]) == ("approved", 2)
    r = await c.post(
        "/api/v1/admin/devices/pi-approved/status",
        json={"status": "revoked", "reason": "  meter seal broken  "},
        headers=world.as_("admin"),  # the legacy admin token has no account row
    )
    assert r.status_code == 200, r.text
    after_ms = int(time.time() * 1000)

    log = await world.views.list_decisions()
    assert [(d.device_id, d.old_status, d.new_status, d.reason) for d in log] == [
        ("pi-approved", "approved", "revoked", "meter seal broken"),
        ("pi-pending", "pending", "approved", ""),
    ]
    assert [(d.decided_by, d.decided_by_email) for d in log] == [
        ("admin-token", ""),
        (world.ids["approver"], "approver@example.org"),
    ]
    assert all(before_ms <= d.decided_ms <= after_ms for d in log)
    assert [d.device_id for d in await world.views.list_decisions("pi-pending")] == ["pi-pending"]
    assert len(await world.views.list_decisions(limit=1)) == 1

    # Approving counted the two held tokens; the revoked device's one token no longer counts.
    stats = (await c.get("/api/v1/stats", headers=world.as_("approver"))).json()
    assert (stats["accepted"], stats["held"], stats["generated_wh"]) == (2, 1, 500)


async def test_decide_refuses_unknown_devices_and_statuses(world: World) -> None:
    with pytest.raises(KeyError):
        await world.views.decide("nope", "approved", world.ids["approver"], "")
    with pytest.raises(ValueError, match="status must be one of"):
        await world.views.decide("pi-pending", "maybe", world.ids["approver"], "")
    assert await world.views.list_decisions() == []
    d = await world.views.decide("pi-pending", "rejected", world.ids["approver"], "x" * 900)
    assert (d.old_status, d.new_status, len(d.reason)) == ("pending", "rejected", 500)
    assert (await world.store.get_device("pi-pending")).status == "rejected"  # type: ignore[union-attr]


async def test_review_lists_and_device_detail(world: World) -> None:
    (p,) = await world.views.list_for_review("pending")
    assert (p.device_id, p.site_id, p.site_name) == ("pi-pending", "site-home", "Home")
    assert (p.owner_account_id, p.owner_email) == (world.ids["homeowner"], "homeowner@example.org")
    assert p.key_ids == (world.pending.kid.hex(),)
    assert (p.tokens, p.generated_wh) == (2, 500)
    (a,) = await world.views.list_for_review("approved")
    assert (a.device_id, a.tokens, a.generated_wh) == ("pi-approved", 1, 120)
    assert await world.views.list_for_review("revoked") == []

    detail = await world.views.device_detail("pi-pending")
    assert detail is not None
    assert [k.kid for k in detail.keys] == [world.pending.kid]
    assert [t.generated_wh for t in detail.latest_tokens] == [300, 200]  # newest first
    assert detail.latest_tokens[0].interval_start > detail.latest_tokens[1].interval_start
    assert detail.imported_wh == 20
    assert [r.reason for r in detail.rejections] == ["malformed"]
    assert await world.views.device_detail("nope") is None
    other = await world.views.device_detail("pi-approved")
    assert other is not None and other.rejections == []


async def test_device_page_access(world: World) -> None:
    c = world.client
    # Anonymous: to the login page.
    r = await c.get("/devices/pi-pending")
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    # The homeowner sees their own device, with its held tokens and rejection.
    r = await c.get("/devices/pi-pending", headers=world.as_("homeowner"))
    assert r.status_code == 200, r.text
    assert 'id="held">2<' in r.text and "malformed" in r.text
    assert world.pending.kid.hex() in r.text
    # ... but not the neighbour's, and an unknown id looks the same (no probing of ids).
    for device in ("pi-approved", "nope"):
        r = await c.get(f"/devices/{device}", headers=world.as_("homeowner"))
        assert r.status_code == 403, (device, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        assert "only view devices on their own sites" in r.text
    # Fleet roles see every device; an unknown one is a 404 page.
    for who in ("installer", "approver", "grid_operator", "admin"):
        r = await c.get("/devices/pi-approved", headers=world.as_(who))
        assert r.status_code == 200, (who, r.text)
        r = await c.get("/devices/nope", headers=world.as_(who))
        assert r.status_code == 404 and "is not registered" in r.text


async def test_device_page_shows_decisions_with_reasons(world: World) -> None:
    c = world.client
    r = await c.post(
        "/api/v1/admin/devices/pi-approved/status",
        json={"status": "revoked", "reason": "inverter <b>replaced</b>"},
        headers=world.as_("approver"),
    )
    assert r.status_code == 200
    page = (await c.get("/devices/pi-approved", headers=world.as_("neighbour"))).text
    assert "approved → revoked" in page
    assert "inverter &lt;b&gt;replaced&lt;/b&gt;" in page  # escaped, never markup
    assert "approver@example.org" not in page  # a homeowner sees "an approver"
    assert 'id="not-counted">1<' in page
    page = (await c.get("/devices/pi-approved", headers=world.as_("installer"))).text
    assert "approver@example.org" in page


async def test_approvals_page(world: World) -> None:
    c = world.client
    r = await c.get("/approvals")
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    for who in ("homeowner", "installer", "grid_operator"):
        r = await c.get("/approvals", headers=world.as_(who))
        assert r.status_code == 403, who
        assert f"role {who} may not view the approval queue" in r.text
    await world.views.decide("pi-approved", "revoked", world.ids["approver"], "stolen panel")
    r = await c.get("/approvals", headers=world.as_("approver"))
    assert r.status_code == 200
    page = r.text
    assert "waiting@example.org" in page  # pending account
    assert 'data-id="pi-pending"' in page and world.pending.kid.hex() in page
    assert "homeowner@example.org" in page  # the pending device's owner
    assert "stolen panel" in page  # recent decision with its reason
    # The revoked device is no longer offered for revocation.
    approved_section = page.split('id="approved-devices"')[1].split("</table>")[0]
    assert "pi-approved" not in approved_section
