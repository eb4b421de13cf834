"""The ledger service on real storage (SQLite and PostgreSQL): intervals close into entries,
checkpoints are signed, proofs verify, a restart replays, late and pending records wait."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerCorrupted, LedgerService
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from cloud.storage.tables import ledger_entries
from protocol import cose, merkle, topics
from protocol.checkpoint import parse_signed_checkpoint
from protocol.ledger_leaf import decode_leaf
from rules.ledger import BatteryParams, Entry, EntryKind, replay
from tests.helpers.records import FakeDevice

ORIGIN = "gridmint/test/ledger"


class Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t


async def _setup(store: Store) -> tuple[list[FakeDevice], IngestService]:
    devs = [FakeDevice("pi-a", site_id="site-1"), FakeDevice("pi-b", site_id="site-2")]
    for d in devs:
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    return devs, IngestService(store, devs[0].deployment, time.time)


async def _send(ingest: IngestService, d: FakeDevice, n: int, gen: int = 300) -> list[str]:
    ids = []
    for _ in range(n):
        tok = d.next_token(generated_wh=gen, imported_wh=20)
        out = await ingest.handle(
            topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS), tok.envelope
        )
        assert out.receipt.status == "accepted"
        ids.append(tok.record.token_id)
    return ids


async def test_close_checkpoint_prove_and_replay(store: Store) -> None:
    devs, ingest = await _setup(store)
    ids_a = await _send(ingest, devs[0], 6)
    await _send(ingest, devs[1], 6, gen=0)
    key = Ed25519PrivateKey.generate()
    # The clock stands two intervals after the fourth interval's end: four intervals are due.
    clock = Clock(devs[0].next_start - 2 * 300 + 600)
    published: list[bytes] = []

    async def publish(note: bytes) -> None:
        published.append(note)

    ledger = LedgerService(
        LedgerStore(store.engine),
        key,
        ORIGIN,
        clock.now,
        grace_s=600,
        battery=lambda _s: BatteryParams(usable_capacity_wh=5000),
        publish=publish,
    )
    await ledger.load()
    assert await ledger.close_due() == 8  # 4 intervals x 2 sites
    assert await ledger.close_due() == 0  # nothing is closed twice
    assert len(published) == 1
    cp = parse_signed_checkpoint(
        published[0], ORIGIN, cose.public_bytes(key.public_key()), origin=ORIGIN
    )
    assert cp.size == ledger.log.size > 8

    # The first token of pi-a: its minting entry covers its record, proven against the note.
    proof = await ledger.proof_for_token(ids_a[0])
    assert proof is not None
    leaf = decode_leaf(proof.leaf)
    assert proof.record_hash in leaf.record_hashes
    entry = Entry.from_bytes(leaf.entry)
    assert entry.kind == EntryKind.MINT_GEN and entry.site == "site-1"
    merkle.verify_inclusion(
        merkle.leaf_hash(proof.leaf), proof.leaf_index, proof.tree_size, proof.path, cp.root
    )
    # Tokens of intervals not yet closed have no proof.
    assert await ledger.proof_for_token(ids_a[5]) is None

    # Later: the remaining intervals close, the log grows consistently.
    clock.t += 3 * 300
    assert await ledger.close_due() == 4
    cp2 = parse_signed_checkpoint(published[-1], ORIGIN, cose.public_bytes(key.public_key()))
    merkle.verify_consistency(
        cp.size, cp2.size, cp.root, cp2.root, ledger.consistency(cp.size, cp2.size)
    )
    # Generation is minted exactly once per record.
    minted = sum(
        m.wh for e in ledger.engine.entries if e.kind == EntryKind.MINT_GEN for m in e.mints
    )
    assert minted == 6 * 300

    # A restart replays the stored log to the same state and root.
    again = LedgerService(LedgerStore(store.engine), key, ORIGIN, clock.now)
    await again.load()
    assert again.log.root() == ledger.log.root()
    assert again.engine.state.snapshot() == replay(ledger.engine.entries).snapshot()


async def test_pending_and_late_records_and_corruption(store: Store) -> None:
    devs, ingest = await _setup(store)
    pending = FakeDevice("pi-pending", site_id="site-3")
    await store.add_device(
        pending.device_id,
        pending.site_id,
        pending.public_key,
        pending.kid,
        pending.capacity_w,
        status="pending",
    )
    await _send(ingest, pending, 3)
    await _send(ingest, devs[0], 2)
    clock = Clock(time.time())
    lstore = LedgerStore(store.engine)
    ledger = LedgerService(lstore, Ed25519PrivateKey.generate(), ORIGIN, clock.now, grace_s=0)
    await ledger.load()
    assert await ledger.close_due() == 2  # pi-a's two intervals; the pending device waits
    # pi-b was silent; its records for those intervals arrive late, after the close.
    devs[1].next_start = devs[0].next_start - 2 * 300
    await _send(ingest, devs[1], 2)
    assert await ledger.close_due() == 2  # site-2 is another site: its intervals close now
    # Approving the pending device lets its intervals close too (another site).
    await store.set_device_status("pi-pending", "approved")
    assert await ledger.close_due() == 3
    assert await lstore.late_records() == 0

    # A second device on site-1 whose records come after site-1's intervals closed: late.
    late = FakeDevice("pi-late", site_id="site-1")
    late.next_start = devs[0].next_start - 2 * 300
    await store.add_device(late.device_id, late.site_id, late.public_key, late.kid, late.capacity_w)
    await _send(ingest, late, 2)
    assert await ledger.close_due() == 0
    assert await lstore.late_records() == 2

    # One changed byte in a stored leaf: the service refuses to extend the log.
    row = (await lstore.leaves(0, 1))[0]
    tampered = bytearray(row.leaf)
    tampered[-1] ^= 1
    async with store.engine.begin() as conn:
        await conn.execute(
            ledger_entries.update().where(ledger_entries.c.seq == 0).values(leaf=bytes(tampered))
        )
    broken = LedgerService(lstore, Ed25519PrivateKey.generate(), ORIGIN, clock.now)
    with pytest.raises(LedgerCorrupted, match="entry 0"):
        await broken.load()


async def test_summary_api_balances_carbon_and_proof_access(store: Store) -> None:
    import httpx

    from cloud.api.app import create_app
    from cloud.storage.accounts import AccountStore

    devs, ingest = await _setup(store)
    ids_a = await _send(ingest, devs[0], 3, gen=400)
    await _send(ingest, devs[1], 3, gen=350)
    accounts = AccountStore(store.engine)
    owner = await accounts.create_account(
        "h@example.org", "h", "a long password", "homeowner", "approved"
    )
    await accounts.create_site("site-2", owner.account_id, "mine")
    bearer = {"Authorization": f"Bearer {await accounts.issue_token(owner.account_id, 600)}"}
    ledger = LedgerService(
        LedgerStore(store.engine), Ed25519PrivateKey.generate(), ORIGIN, time.time, grace_s=0
    )
    await ledger.load()
    assert await ledger.close_due() == 6
    app = create_app(store, accounts=accounts, ledger=ledger)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/api/v1/ledger/summary", headers=bearer)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [s["site_id"] for s in body["sites"]] == ["site-2"]  # own site only
        mine = body["sites"][0]
        assert mine["generated_wh"] == 1050
        assert mine["avoided_co2_g"] == 1050 * 707 // 1000
        assert mine["forest_milliacres"] == mine["avoided_co2_g"] * 1000 // 2_500_000
        # A neighbour's token proof is refused; the checkpoint is public.
        r = await c.get(f"/api/v1/ledger/proofs/tokens/{ids_a[0]}", headers=bearer)
        assert r.status_code == 403
        r = await c.get("/api/v1/ledger/checkpoint")
        assert r.status_code == 200 and r.text.startswith(ORIGIN + "\n")


async def test_a_site_waits_for_all_its_devices_then_for_max_wait(store: Store) -> None:
    a, b = FakeDevice("pi-roof", site_id="site-9"), FakeDevice("pi-shed", site_id="site-9")
    b.next_start = a.next_start
    for d in (a, b):
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    ingest = IngestService(store, a.deployment, time.time)
    await _send(ingest, a, 4)
    await _send(ingest, b, 2)  # the shed's Pi is behind (an outage): two intervals still missing
    clock = Clock(a.next_start + 120)
    ledger = LedgerService(
        LedgerStore(store.engine),
        Ed25519PrivateKey.generate(),
        ORIGIN,
        clock.now,
        grace_s=60,
        max_wait_s=3600,
    )
    await ledger.load()
    assert await ledger.close_due() == 2  # only the intervals both devices delivered
    await _send(ingest, b, 2)  # the backlog arrives
    assert await ledger.close_due() == 2
    minted = {r.token_id for e in ledger.engine.entries for r in e.refs}
    assert len(minted) == 8  # every record of both devices, none late
    assert await LedgerStore(store.engine).late_records() == 0
    # The shed goes silent for good: the roof's next interval waits, then closes at max wait.
    await _send(ingest, a, 1)
    clock.t = a.next_start + 600
    assert await ledger.close_due() == 0
    clock.t = a.next_start + 3600
    assert await ledger.close_due() == 1


async def test_registered_battery_parameters_reach_the_ledger(store: Store) -> None:
    import httpx

    from cloud.api.app import create_app
    from cloud.storage.accounts import AccountStore
    from cloud.storage.batteries import BatteryStore
    from rules.ledger import BatteryParams

    devs, ingest = await _setup(store)
    await _send(ingest, devs[0], 2)
    await _send(ingest, devs[1], 2)
    accounts = AccountStore(store.engine)
    owner = await accounts.create_account(
        "o@example.org", "o", "a long password", "homeowner", "approved"
    )
    installer = await accounts.create_account(
        "i@example.org", "i", "a long password", "installer", "approved"
    )
    await accounts.create_site("site-1", owner.account_id, "with a battery")
    tok = {"Authorization": f"Bearer {await accounts.issue_token(installer.account_id, 600)}"}
    app = create_app(store, accounts=accounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = {
            "usable_capacity_wh": 9500,
            "soh_permille": 930,
            "self_discharge_ppm_per_h": 80,
            "round_trip_permille": 910,
        }
        r = await c.put("/api/v1/sites/site-1/battery", headers=tok, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["updated_by"] == installer.account_id
        r = await c.put("/api/v1/sites/site-404/battery", headers=tok, json=body)
        assert r.status_code == 404
        r = await c.put(
            "/api/v1/sites/site-1/battery", headers=tok, json={**body, "soh_permille": 0}
        )
        assert r.status_code == 422

    async def registered() -> dict[str, BatteryParams]:
        return {
            s: BatteryParams(
                b.usable_capacity_wh,
                b.soh_permille,
                b.self_discharge_ppm_per_h,
                b.round_trip_permille,
            )
            for s, b in (await BatteryStore(store.engine).all()).items()
        }

    ledger = LedgerService(
        LedgerStore(store.engine),
        Ed25519PrivateKey.generate(),
        ORIGIN,
        time.time,
        grace_s=0,
        battery=lambda _s: BatteryParams(usable_capacity_wh=1000),
        registered_batteries=registered,
    )
    await ledger.load()
    assert await ledger.close_due() == 4
    capacity = {
        (e.site, e.measurement.capacity_wh, e.measurement.soh_permille)
        for e in ledger.engine.entries
        if e.kind == EntryKind.MINT_GEN and e.measurement is not None
    }
    # site-1 uses its registered battery; site-2 (none registered) the default.
    assert capacity == {("site-1", 9500, 930), ("site-2", 1000, 1000)}


async def test_a_device_gone_for_good_delays_its_site_only_once(store: Store) -> None:
    a, b = FakeDevice("pi-new", site_id="site-8"), FakeDevice("pi-gone", site_id="site-8")
    b.next_start = a.next_start - 30 * 300  # the old Pi's last records are 2.5 h older
    for d in (a, b):
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    ingest = IngestService(store, a.deployment, time.time)
    await _send(ingest, b, 2)  # then it was unplugged, never revoked
    await _send(ingest, a, 3)
    clock = Clock(a.next_start + 60)
    ledger = LedgerService(
        LedgerStore(store.engine),
        Ed25519PrivateKey.generate(),
        ORIGIN,
        clock.now,
        grace_s=0,
        max_wait_s=3600,
    )
    await ledger.load()
    # pi-gone's two intervals close (it was the only device then); the new Pi's three close at
    # once too, because pi-gone has been silent for longer than the maximum wait.
    assert await ledger.close_due() == 5
