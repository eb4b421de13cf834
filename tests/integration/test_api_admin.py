"""Admin API on both storage backends: device registration and approval, 401/403 bodies."""

from __future__ import annotations

import httpx

from cloud.api.app import create_app
from cloud.storage.store import Store
from tests.helpers.records import FakeDevice

ADMIN = {"Authorization": "Bearer s3cret-admin"}


async def test_register_and_approve_a_device(store: Store) -> None:
    app = create_app(store, admin_token="s3cret-admin")
    dev = FakeDevice("pi-api", site_id="site-api")
    body = {"device_id": dev.device_id, "site_id": dev.site_id,
            "public_key": dev.public_key.hex(), "capacity_w": 4000, "status": "pending"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/api/v1/admin/devices", json=body)
        assert r.status_code == 401
        assert "Bearer" in r.json()["detail"]
        r = await c.post("/api/v1/admin/devices", json=body,
                         headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert "invalid_token" in r.headers["www-authenticate"]
        r = await c.post("/api/v1/admin/devices", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "pending"
        r = await c.post("/api/v1/admin/devices",
                         json={**body, "public_key": "zz"}, headers=ADMIN)
        assert r.status_code == 422
        r = await c.post(f"/api/v1/admin/devices/{dev.device_id}/status",
                         json={"status": "approved"}, headers=ADMIN)
        assert r.status_code == 200
        assert r.json()["status"] == "approved"
        r = await c.post("/api/v1/admin/devices/nope/status", json={"status": "approved"},
                         headers=ADMIN)
        assert r.status_code == 404
        devices = (await c.get("/api/v1/devices", headers=ADMIN)).json()
        assert [d["device_id"] for d in devices] == ["pi-api"]


async def test_no_legacy_admin_token_unless_configured(store: Store) -> None:
    app = create_app(store, admin_token="")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/api/v1/admin/devices/x/status", json={"status": "approved"},
                         headers={"Authorization": "Bearer anything"})
        assert r.status_code == 401
        assert "not valid" in r.json()["detail"]
