"""The virtual smart meter on real storage (SQLite and PostgreSQL) over its HTTP API: interval
data from the ledger's accepted records only, explicit gaps and stated estimates, roll-ups to the
site's local days, registers, the reset history, tracing to signed records with inclusion proofs,
and Green Button feeds that validate against the ESPI schema and add up to the ledger, Wh for
Wh."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api.app import create_app
from cloud.domain import greenbutton as gb
from cloud.services.fleet import FleetService
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService
from cloud.storage.accounts import AccountStore
from cloud.storage.dispatch_store import DispatchStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from edge.accounting import Channel
from protocol import cose, merkle, topics
from protocol.checkpoint import parse_signed_checkpoint
from protocol.ledger_leaf import decode_leaf
from protocol.verify import check_envelope
from rules.ledger import BatteryParams
from tests.helpers.records import FakeDevice

ORIGIN = "gridmint/test/meter"
# 2026-03-28 22:00 UTC: the Berlin DST change (29 March, 02:00 -> 03:00) falls inside the data
T0 = int(datetime(2026, 3, 28, 22, 0, tzinfo=UTC).timestamp())
PW = "a long password"
ADMIN = "meter-admin-token"


class Meter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = [float(T0)]
        self.ingest: IngestService | None = None
        self.sent: dict[tuple[str, int], dict[str, int]] = {}  # (site, start) -> flows

    async def send(self, d: FakeDevice, start: int, **flows: Any) -> None:
        assert self.ingest is not None
        d.next_start = start
        self.clock[0] = float(start + d.interval_s + 30)
        energy = {
            Channel.GENERATED: flows.get("gen", 0),
            Channel.IMPORTED: flows.get("imp", 0),
            Channel.EXPORTED: flows.get("exp", 0),
        }
        tok = d.sign(energy, flags=flows.get("flags", ()), estimated=flows.get("est", False))
        out = await self.ingest.handle(
            topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS), tok.envelope
        )
        assert out.receipt.status == "accepted", out.receipt
        row = self.sent.setdefault((d.site_id, start), {"gen": 0, "imp": 0, "exp": 0})
        for k in row:
            row[k] += flows.get(k, 0)


@pytest.fixture
async def meter(store: Store) -> Any:
    return Meter(store)


async def _world(m: Meter) -> dict[str, Any]:
    store = m.store
    accounts = AccountStore(store.engine)
    hal = await accounts.create_account("hal@x.org", "Hal", PW, "homeowner", "approved")
    nia = await accounts.create_account("nia@x.org", "Nia", PW, "homeowner", "approved")
    op = await accounts.create_account("olga@x.org", "Olga", PW, "grid_operator", "approved")
    await accounts.create_site("site-a", hal.account_id, "Hal's home")
    await accounts.create_site("site-q", nia.account_id, "Nia's home")
    pv = FakeDevice("pi-a1", site_id="site-a", interval_s=300)
    grid = FakeDevice("pi-a2", site_id="site-a", interval_s=300)  # a second device, same site
    quarter = FakeDevice("pi-q", site_id="site-q", interval_s=900)
    for d in (pv, grid, quarter):
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    m.ingest = IngestService(store, pv.deployment, lambda: m.clock[0])
    rng = random.Random(7)
    # site-a: 5-minute data over 30 hours; interval 10 has no record (a gap); interval 20 is
    # flagged R (a counter reset); interval 30 is an edge estimate
    n = 30 * 12
    for i in range(n):
        start = T0 + i * 300
        if i == 10:
            continue
        flags = ("R",) if i == 20 else ()
        await m.send(pv, start, gen=rng.randrange(0, 400), flags=flags, est=i == 30)
        await m.send(grid, start, imp=rng.randrange(0, 200), exp=rng.randrange(0, 100))
    # site-q: 15-minute data for 26 hours
    for i in range(26 * 4):
        await m.send(quarter, T0 + i * 900, gen=rng.randrange(0, 900), imp=rng.randrange(0, 90))

    key = Ed25519PrivateKey.generate()
    ledger = LedgerService(
        LedgerStore(store.engine),
        key,
        ORIGIN,
        lambda: float(T0 + n * 300 + 3600),
        grace_s=600,
        battery=lambda _s: BatteryParams(usable_capacity_wh=0),
    )
    await ledger.load()
    assert await ledger.close_due() > 0
    fleet = FleetService(DispatchStore(store.engine))
    await fleet.load()
    app = create_app(
        store,
        accounts=accounts,
        ledger=ledger,
        fleet=fleet,
        admin_token=ADMIN,
        now=lambda: float(T0 + 2 * 86400),
    )
    tokens = {a.email: await accounts.issue_token(a.account_id, 3600) for a in (hal, nia, op)}
    return {
        "app": app,
        "ledger": ledger,
        "key": key,
        "hal": {"Authorization": f"Bearer {tokens['hal@x.org']}"},
        "nia": {"Authorization": f"Bearer {tokens['nia@x.org']}"},
        "op": {"Authorization": f"Bearer {tokens['olga@x.org']}"},
        "pv": pv,
        "grid": grid,
        "n": n,
    }


def _client(w: dict[str, Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=w["app"]), base_url="http://t")


def _iso(s: int) -> str:
    return datetime.fromtimestamp(s, UTC).isoformat()


async def test_intervals_gaps_rollups_registers_history_and_the_data_rule(meter: Meter) -> None:
    w = await _world(meter)
    n = w["n"]
    end = T0 + n * 300
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=w["app"]), base_url="http://t"
    ) as c:
        q = {"start": _iso(T0), "end": _iso(end)}
        r = await c.get("/api/v1/sites/site-a/meter/intervals", params=q, headers=w["hal"])
        assert r.status_code == 200, r.text
        rows = r.json()["intervals"]
        assert len(rows) == n  # every 5-minute interval, the gap included
        by_start = {row["start"]: row for row in rows}
        gap = by_start[T0 + 10 * 300]
        assert gap["state"] == "missing" and gap["generated_wh"] is None and gap["load_wh"] is None
        for (site, start), sent in meter.sent.items():
            if site != "site-a":
                continue
            row = by_start[start]
            assert (row["generated_wh"], row["imported_wh"], row["exported_wh"]) == (
                sent["gen"],
                sent["imp"],
                sent["exp"],
            )
            assert row["records"] == 2
            assert row["net_wh"] == sent["imp"] - sent["exp"]
            assert row["load_wh"] == sent["gen"] + sent["imp"] - sent["exp"]
            assert row["self_consumed_wh"] == max(sent["gen"] - sent["exp"], 0)
        assert by_start[T0 + 20 * 300]["flags"] == ["R"]
        assert by_start[T0 + 30 * 300]["state"] == "estimated"

        # estimates: the stated neighbour mean, marked
        r = await c.get(
            "/api/v1/sites/site-a/meter/intervals",
            params={**q, "fill": "estimate"},
            headers=w["hal"],
        )
        body = r.json()
        assert "neighbour mean" in body["estimate_method"]
        est = {row["start"]: row for row in body["intervals"]}[T0 + 10 * 300]
        before, after = by_start[T0 + 9 * 300], by_start[T0 + 11 * 300]
        assert est["state"] == "estimated"
        assert est["generated_wh"] == (before["generated_wh"] + after["generated_wh"]) // 2

        # local days in Berlin: 29 March has 23 hours
        r = await c.put(
            "/api/v1/sites/site-a/time-zone", json={"time_zone": "Europe/Berlin"}, headers=w["hal"]
        )
        assert r.status_code == 200, r.text
        bad = await c.put(
            "/api/v1/sites/site-a/time-zone", json={"time_zone": "Mars/Olympus"}, headers=w["hal"]
        )
        assert bad.status_code == 400 and "Mars/Olympus" in bad.text
        r = await c.get(
            "/api/v1/sites/site-a/meter/intervals",
            params={**q, "interval": "day"},
            headers=w["hal"],
        )
        days = r.json()["intervals"]
        berlin_29 = int(datetime(2026, 3, 28, 23, 0, tzinfo=UTC).timestamp())  # local midnight
        day29 = next(d for d in days if d["start"] == berlin_29)
        assert day29["interval_s"] == 23 * 3600
        assert day29["state"] == "estimated"  # interval 30, 01:30 local, an edge estimate
        berlin_28 = berlin_29 - 86400
        day28 = next(d for d in days if d["start"] == berlin_28)  # the gap: 23:50 local
        assert day28["state"] == "partial" and day28["missing_intervals"] == 1
        assert sum(d["generated_wh"] for d in days) == sum(
            v["gen"] for (s, _t), v in meter.sent.items() if s == "site-a"
        )
        r = await c.get(
            "/api/v1/sites/site-a/meter/intervals",
            params={**q, "interval": "60min", "format": "csv"},
            headers=w["hal"],
        )
        lines = r.text.strip().splitlines()
        assert lines[0].startswith("start_iso,interval_s,state,generated_wh")
        assert len(lines) == 1 + 30

        # registers: everything read so far
        r = await c.get("/api/v1/sites/site-a/meter/registers", headers=w["hal"])
        reg = r.json()
        site_a = [v for (s, _t), v in meter.sent.items() if s == "site-a"]
        assert reg["generated_wh"] == sum(v["gen"] for v in site_a)
        assert reg["imported_wh"] == sum(v["imp"] for v in site_a)
        assert reg["exported_wh"] == sum(v["exp"] for v in site_a)
        assert reg["intervals"] == n - 1

        # the history shows the reset
        r = await c.get("/api/v1/sites/site-a/meter", headers=w["hal"])
        summary = r.json()
        assert summary["native_interval_s"] == 300 and summary["time_zone"] == "Europe/Berlin"
        assert [(e["at"], e["flag"]) for e in summary["history"]] == [(T0 + 20 * 300, "R")]

        # the data rule: Nia does not see Hal's site; the operator does; bad periods are 400
        assert (await c.get("/api/v1/sites/site-a/meter", headers=w["nia"])).status_code == 404
        assert (
            await c.get("/api/v1/sites/site-a/meter/intervals", params=q, headers=w["nia"])
        ).status_code == 404
        assert (
            await c.get("/api/v1/sites/site-a/meter/registers", headers=w["op"])
        ).status_code == 200
        r = await c.get(
            "/api/v1/sites/site-a/meter/intervals",
            params={"start": _iso(end), "end": _iso(T0)},
            headers=w["hal"],
        )
        assert r.status_code == 400 and "empty" in r.text


async def test_an_interval_traces_to_signed_records_with_inclusion_proofs(meter: Meter) -> None:
    w = await _world(meter)
    pick = T0 + random.Random(3).randrange(0, 9) * 300  # a random interval of the first hour
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=w["app"]), base_url="http://t"
    ) as c:
        r = await c.get(f"/api/v1/sites/site-a/meter/intervals/{pick}/records", headers=w["hal"])
        assert r.status_code == 200, r.text
        t = r.json()
    assert len(t["records"]) == 2
    reading = t["reading"]
    assert sum(x["generated_wh"] for x in t["records"]) == reading["generated_wh"]
    assert sum(x["imported_wh"] for x in t["records"]) == reading["imported_wh"]
    keys = {d.device_id: d.public_key for d in (w["pv"], w["grid"])}
    ledger_key = cose.public_bytes(w["key"].public_key())
    for x in t["records"]:
        envelope = bytes.fromhex(x["envelope_hex"])
        # the signature is the device's, and the record says what the API says
        rec = check_envelope(envelope, keys[x["device_id"]], w["pv"].deployment)
        assert rec.token_id == x["token_id"]
        assert (rec.energy.generated_wh, rec.energy.imported_wh, rec.energy.exported_wh) == (
            x["generated_wh"],
            x["imported_wh"],
            x["exported_wh"],
        )
        proof = x["proof"]
        assert proof is not None
        cp = parse_signed_checkpoint(
            proof["checkpoint"].encode(), ORIGIN, ledger_key, origin=ORIGIN
        )
        leaf = bytes.fromhex(proof["leaf"])
        assert bytes.fromhex(proof["record_hash"]) in decode_leaf(leaf).record_hashes
        merkle.verify_inclusion(
            merkle.leaf_hash(leaf),
            proof["leaf_index"],
            proof["tree_size"],
            [bytes.fromhex(h) for h in proof["path"]],
            cp.root,
        )


async def test_green_button_feeds_validate_and_add_up_to_the_ledger(meter: Meter) -> None:
    w = await _world(meter)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=w["app"]), base_url="http://t"
    ) as c:
        await c.put(
            "/api/v1/sites/site-q/time-zone",
            json={"time_zone": "America/New_York"},
            headers=w["nia"],
        )
        feeds = {}
        for site, who in (("site-a", "hal"), ("site-q", "nia")):
            for fill in ("none", "estimate"):
                r = await c.get(
                    f"/api/v1/sites/{site}/meter/greenbutton",
                    params={"start": _iso(T0), "end": _iso(T0 + 3 * 86400), "fill": fill},
                    headers=w[who],
                )
                assert r.status_code == 200, r.text
                assert r.headers["content-type"].startswith("application/atom+xml")
                feeds[site, fill] = r.content
        r = await c.get(
            "/api/v1/sites/site-a/meter/greenbutton",
            params={"start": _iso(T0), "end": _iso(T0 + 86400)},
            headers=w["nia"],
        )
        assert r.status_code == 404
    for (site, fill), xml in feeds.items():
        assert gb.validate(xml) == [], (site, fill)
        loaded = gb.load_feed(io.BytesIO(xml))
        sent = [v for (s, _t), v in meter.sent.items() if s == site]
        wanted = {
            "import": sum(v["imp"] for v in sent),
            "export": sum(v["exp"] for v in sent),
            "generation": sum(v["gen"] for v in sent),
            "net": sum(v["imp"] - v["exp"] for v in sent),
        }
        for key, total in wanted.items():
            reading = loaded.reading(key)
            assert reading.spec.interval_s == (300 if site == "site-a" else 900)
            read = [v for v in reading.values if v.quality != 9]
            assert sum(v.value_wh for v in read) == total, (site, fill, key)  # Wh for Wh
            assert {v.quality for v in read} <= {11, 8}
            filled = [v for v in reading.values if v.quality == 9]  # interpolated: our gap fill
            if site == "site-a" and fill == "estimate":
                assert [v.start for v in filled] == [T0 + 10 * 300]
            else:
                assert filled == []


async def test_an_exported_feed_imported_as_revenue_data_reconciles_to_zero(
    meter: Meter,
) -> None:
    """Round trip: our own Green Button imported as revenue meter data differs by nothing;
    the same feed with one reading changed shows that day and that interval."""
    w = await _world(meter)
    period = {"start": _iso(T0), "end": _iso(T0 + 2 * 86400)}
    async with _client(w) as c:
        r = await c.get("/api/v1/sites/site-a/meter/greenbutton", params=period, headers=w["hal"])
        feed = r.content
        r = await c.post(
            "/api/v1/sites/site-a/meter/revenue",
            params={"source": "round-trip.xml"},
            content=feed,
            headers={**w["hal"], "Content-Type": "application/atom+xml"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "accepted" and r.json()["intervals"] > 0
        for flow in ("import", "export", "generation", "net"):
            r = await c.get(
                "/api/v1/sites/site-a/meter/reconciliation",
                params={**period, "flow": flow},
                headers=w["hal"],
            )
            assert r.status_code == 200, r.text
            rep = r.json()
            assert rep["total"]["difference_wh"] == 0, (flow, rep["total"])
            assert all(d["difference_wh"] == 0 and not d["over_tolerance"] for d in rep["days"])
            # the only interval that explains anything is the gap: no reading on our side
            assert [(e["start"], e["revenue_wh"]) for e in rep["explanations"]] == [
                (T0 + 10 * 300, None)
            ]
            assert "missing in the virtual meter" in rep["explanations"][0]["reasons"][0]

        # the utility's meter read 5,000 Wh more in one interval (over the 1 % tolerance)
        changed_at = T0 + 40 * 300
        doc = feed.decode()
        marker = f"<start>{changed_at}</start></timePeriod><value>"
        k = doc.index(marker) + len(marker)  # the first reading in the feed: import
        end_value = doc.index("</value>", k)
        old = int(doc[k:end_value])
        doc = doc[:k] + str(old + 5000) + doc[end_value:]
        r = await c.post(
            "/api/v1/sites/site-a/meter/revenue",
            content=doc.encode(),
            headers={**w["hal"], "Content-Type": "application/atom+xml"},
        )
        assert r.status_code == 201, r.text
        r = await c.get(
            "/api/v1/sites/site-a/meter/reconciliation",
            params={**period, "flow": "import"},
            headers=w["hal"],
        )
        rep = r.json()
        assert rep["total"]["difference_wh"] == -5000
        bad_days = [d["label"] for d in rep["days"] if d["difference_wh"] != 0]
        local = datetime.fromtimestamp(changed_at, UTC).astimezone(ZoneInfo("UTC"))
        assert bad_days == [f"{local:%Y-%m-%d}"]  # site-a's zone is UTC in this test
        assert [d["over_tolerance"] for d in rep["days"] if d["difference_wh"]] == [True]
        differs = [e for e in rep["explanations"] if e["reasons"][0] == "readings differ"]
        assert [(e["start"], e["revenue_wh"] - e["virtual_wh"]) for e in differs] == [
            (changed_at, 5000)
        ]

        # garbage is refused with a plain reason, and kept as a rejected import
        r = await c.post(
            "/api/v1/sites/site-a/meter/revenue",
            content=b"<not-green-button/>",
            headers={**w["hal"], "Content-Type": "application/atom+xml"},
        )
        assert r.status_code == 400 and "Green Button" in r.json()["detail"]
        r = await c.get("/api/v1/sites/site-a/meter/revenue", headers=w["hal"])
        assert sorted(i["status"] for i in r.json()) == ["accepted", "accepted", "rejected"]
        # someone else's site: 404, nothing stored
        r = await c.post("/api/v1/sites/site-a/meter/revenue", content=feed, headers=w["nia"])
        assert r.status_code == 404
    # the day over the tolerance raised an alarm for the site
    from cloud.storage.dispatch_store import DispatchStore

    alarms = await DispatchStore(meter.store.engine).alarms(open_only=True)
    assert [(a.kind, a.site_id) for a in alarms] == [("meter_mismatch", "site-a")]


async def test_a_utility_client_reads_only_what_the_homeowner_granted(meter: Meter) -> None:
    """Connect: a utility's system (client credentials) reads the meter data of the sites
    granted to it, in JSON pages and as Green Button; a revocation holds from the next
    request; other sites are 404."""
    w = await _world(meter)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    period = {"start": _iso(T0), "end": _iso(T0 + 86400)}
    async with _client(w) as c:
        r = await c.post(
            "/api/v1/utility-clients",
            json={"name": "Northgrid Utility", "scopes": "meter:read"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        cid, secret = r.json()["client_id"], r.json()["client_secret"]
        r = await c.post(
            "/api/v1/connect/token",
            data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
        )
        utility = {"Authorization": f"Bearer {r.json()['access_token']}"}
        base = "/api/v1/connect/sites"
        # nothing granted yet
        assert (await c.get(f"{base}/site-a/usage-point", headers=utility)).status_code == 404
        r = await c.post("/api/v1/sites/site-a/grants", json={"client_id": cid}, headers=w["hal"])
        assert r.status_code in (200, 201), r.text

        r = await c.get(f"{base}/site-a/usage-point", headers=utility)
        assert r.status_code == 200, r.text
        up = r.json()
        assert up["is_virtual"] and up["is_der"] and up["native_interval_s"] == 300
        assert [x["key"] for x in up["readings"]] == ["import", "export", "generation", "net"]

        # JSON pages of at most 31 days: a 40-day request says where the next page starts
        r = await c.get(
            f"{base}/site-a/intervals",
            params={"start": _iso(T0), "end": _iso(T0 + 40 * 86400), "interval": "60min"},
            headers=utility,
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["end"] == T0 + 31 * 86400 and page["next"] is not None
        own = await c.get(
            "/api/v1/sites/site-a/meter/intervals",
            params={"start": _iso(T0), "end": _iso(T0 + 31 * 86400), "interval": "60min"},
            headers=w["hal"],
        )
        assert page["intervals"] == own.json()["intervals"]  # the same readings
        r = await c.get(page["next"], headers=utility)
        assert r.status_code == 200 and r.json()["intervals"] == [] and r.json()["next"] is None

        r = await c.get(f"{base}/site-a/greenbutton", params=period, headers=utility)
        assert r.status_code == 200 and gb.validate(r.content) == []
        r = await c.get(f"{base}/site-a/registers", headers=utility)
        assert r.status_code == 200 and r.json()["intervals"] == w["n"] - 1

        # another homeowner's site was never granted; a user token is no client credential
        for what in ("usage-point", "registers"):
            assert (await c.get(f"{base}/site-q/{what}", headers=utility)).status_code == 404
        assert (await c.get(f"{base}/site-a/usage-point", headers=w["hal"])).status_code == 401

        # revoked: the very next request is refused
        r = await c.delete(f"/api/v1/sites/site-a/grants/{cid}", headers=w["hal"])
        assert r.status_code == 200, r.text
        r = await c.get(f"{base}/site-a/greenbutton", params=period, headers=utility)
        assert r.status_code == 404
        assert (
            await c.get(f"{base}/site-a/intervals", params=period, headers=utility)
        ).status_code == 404


async def test_the_operator_reads_a_groups_meter_by_day(meter: Meter) -> None:
    w = await _world(meter)
    q = {"start": _iso(T0), "end": _iso(T0 + 3 * 86400)}
    async with _client(w) as c:
        r = await c.get("/api/v1/fleet/meter", params={**q, "group": "all"}, headers=w["op"])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sites"] == 2
        days = body["intervals"]
        assert sum(d["generated_wh"] for d in days) == sum(v["gen"] for v in meter.sent.values())
        assert sum(d["imported_wh"] for d in days) == sum(v["imp"] for v in meter.sent.values())
        r = await c.get(
            "/api/v1/fleet/meter",
            params={**q, "group": "site:site-q", "interval": "60min", "format": "csv"},
            headers=w["op"],
        )
        assert r.status_code == 200 and len(r.text.strip().splitlines()) == 1 + 26
        r = await c.get("/api/v1/fleet/meter", params={**q, "group": "where:x=1"}, headers=w["op"])
        assert r.status_code == 400 and "unknown key" in r.text
        r = await c.get("/api/v1/fleet/meter", params={**q, "tz": "Mars/Base"}, headers=w["op"])
        assert r.status_code == 400
        r = await c.get("/api/v1/fleet/meter", params=q, headers=w["hal"])
        assert r.status_code == 403  # homeowners see their own sites only
