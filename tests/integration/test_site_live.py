"""One site's reads for its homeowner (cloud/api/site_live_routes.py), on both backends:
energy today and this month summed from the site's tokens by UTC day and month, and the data
rule (someone else's site is the same 404 as an unknown one)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from cloud.api.app import create_app
from cloud.services.ingest import IngestService
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store
from protocol import topics
from tests.helpers.records import FakeDevice

NOW = int(datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp())


def _at(day: int, month: int, hour: int, minute: int) -> int:
    return int(datetime(2026, month, day, hour, minute, tzinfo=UTC).timestamp())


async def test_energy_today_and_this_month_and_the_data_rule(store: Store) -> None:
    accounts = AccountStore(store.engine)
    pw, ok = "a long password", "approved"
    hal = await accounts.create_account("hal@x.org", "Hal", pw, "homeowner", ok)
    nia = await accounts.create_account("nia@x.org", "Nia", pw, "homeowner", ok)
    ian = await accounts.create_account("ian@x.org", "Ian", pw, "installer", ok)
    await accounts.create_site("site-a", hal.account_id, "A")
    await accounts.create_site("site-b", nia.account_id, "B")
    mine, theirs = FakeDevice("pi-a", site_id="site-a"), FakeDevice("pi-b", site_id="site-b")
    for d in (mine, theirs):
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    clock = [float(NOW)]  # ingest refuses stale intervals: each is sent just after it ends
    ingest = IngestService(store, mine.deployment, lambda: clock[0])

    async def send(d: FakeDevice, start: int, wh: int) -> None:
        d.next_start = start
        clock[0] = float(start + 400)
        topic = topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS)
        out = await ingest.handle(topic, d.next_token(generated_wh=wh, imported_wh=7).envelope)
        assert out.receipt.status == "accepted", out.receipt

    await send(mine, _at(28, 2, 23, 55), 100)  # last month
    await send(mine, _at(2, 3, 10, 0), 200)  # this month
    await send(mine, _at(15, 3, 0, 0), 300)  # today (UTC), from midnight
    await send(mine, _at(15, 3, 11, 0), 400)
    await send(theirs, _at(15, 3, 11, 0), 350)  # the neighbour's

    app = create_app(store, accounts=accounts, now=lambda: float(NOW))
    tokens = {a.email: await accounts.issue_token(a.account_id, 3600) for a in (hal, nia, ian)}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        as_hal = {"Authorization": f"Bearer {tokens['hal@x.org']}"}
        r = await c.get("/api/v1/sites/site-a/energy", headers=as_hal)
        assert r.status_code == 200, r.text
        e = r.json()
        assert e["today"]["since"] == _at(15, 3, 0, 0)
        assert (e["today"]["generated_wh"], e["today"]["imported_wh"]) == (700, 14)
        assert (e["month"]["generated_wh"], e["month"]["tokens"]) == (900, 3)
        assert e["month"]["since"] == _at(1, 3, 0, 0)

        for what in ("energy", "live", "events"):
            r = await c.get(f"/api/v1/sites/site-b/{what}", headers=as_hal)
            assert r.status_code == 404, (what, r.text)
            r = await c.get(f"/api/v1/sites/nowhere/{what}", headers=as_hal)
            assert r.status_code == 404, (what, r.text)
        # No fleet or dispatch in this app: live is 503, the event list is empty.
        assert (await c.get("/api/v1/sites/site-a/live", headers=as_hal)).status_code == 503
        r = await c.get("/api/v1/sites/site-a/events", headers=as_hal)
        assert r.status_code == 200 and r.json() == []

        as_ian = {"Authorization": f"Bearer {tokens['ian@x.org']}"}
        r = await c.get("/api/v1/sites/site-b/energy", headers=as_ian)  # fleet roles: any site
        assert r.status_code == 200 and r.json()["today"]["generated_wh"] == 350
        r = await c.get("/api/v1/sites/nowhere/energy", headers=as_ian)
        assert r.status_code == 404
