"""The outbox's counters when the cloud's receipt is handled before the publisher's PUBACK.

The publisher marks a token sent (and counts it delivered) after `MqttLink.publish` returns on the
broker's PUBACK; the cloud's receipt arrives on the same connection but is handled by the link's
worker task. When the event loop is slow, both callbacks are queued together and the receipt's
`confirm` can run first: the token is dropped from the outbox, `mark_sent` then finds no row, and
the token was counted neither time (the demo saw the cloud accept 26 tokens and the Pis report 25
delivered). These tests force that order, and check that a mint cancelled at any point of its
transaction is all or nothing, so nothing the outbox does not hold can be published.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import AccountantState
from edge.agent import EdgeAgent
from edge.outbox import Outbox, OutboxRow
from edge.settings import EdgeSettings
from protocol.clock import SystemClock
from protocol.receipts import Receipt, ReceiptStatus
from tests.helpers.records import FakeDevice


async def _counts(ob: Outbox) -> tuple[int, int, int, int, int]:
    c = await ob.counters()
    return c["minted"], c["delivered"], c["confirmed"], c["rejected"], c["waiting"]


async def test_receipt_before_mark_sent_still_counts_the_token_delivered_once(
    tmp_path: Path,
) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    t1, t2 = dev.next_token(), dev.next_token()
    for t in (t1, t2):
        await ob.commit_mint(t, AccountantState(), 0)
    # t1: the receipt wins the race; the late PUBACK's mark_sent finds nothing to mark.
    assert await ob.confirm(t1.record_hash)
    await ob.mark_sent(t1.record_hash, now_ms=1000)
    # t2: the usual order; the token must not be counted twice.
    await ob.mark_sent(t2.record_hash, now_ms=1000)
    assert await ob.confirm(t2.record_hash)
    assert not await ob.confirm(t2.record_hash)  # a second receipt changes nothing
    assert await _counts(ob) == (2, 2, 2, 0, 0)
    await ob.close()


async def test_refusal_before_mark_sent_counts_the_token_delivered_once(tmp_path: Path) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    t1, t2 = dev.next_token(), dev.next_token()
    for t in (t1, t2):
        await ob.commit_mint(t, AccountantState(), 0)
    await ob.reject(t1.record_hash, "bad_signature", retry=False, now_ms=1000)
    await ob.mark_sent(t1.record_hash, now_ms=1000)
    await ob.reject(t1.record_hash, "bad_signature", retry=False, now_ms=1001)
    # A retryable refusal before the PUBACK: mark_sent counts it, the receipt after does not.
    await ob.reject(t2.record_hash, "sequence_gap", retry=True, now_ms=1000)
    await ob.mark_sent(t2.record_hash, now_ms=1000)
    assert await ob.confirm(t2.record_hash)
    assert await _counts(ob) == (2, 2, 1, 1, 0)
    await ob.close()


class _ReceiptFirstLink:
    """Stands in for MqttLink: every publish is 'acknowledged' only after the cloud's receipt
    for it has been handled by the agent, the order seen under load."""

    def __init__(self, agent: EdgeAgent, ob: Outbox) -> None:
        self.agent, self.outbox = agent, ob
        self.connected = asyncio.Event()
        self.connected.set()
        self.published: list[bytes] = []

    async def wait_connected(self, timeout_s: float) -> bool:
        return True

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, **_: Any) -> bool:
        self.published.append(payload)
        rows = await self.outbox.due(now_ms=2**62, resend_after_ms=0)
        (row,) = [r for r in rows if r.envelope == payload]
        receipt = Receipt(row.record_hash.hex(), ReceiptStatus.ACCEPTED)
        await self.agent._on_receipts([("receipts", receipt.encode())])
        return True


async def test_agent_publisher_counts_every_token_when_receipts_beat_pubacks(
    tmp_path: Path,
) -> None:
    settings = EdgeSettings(
        device_id="pi-race",
        site_id="site-race",
        key_file=tmp_path / "k",
        state_db=tmp_path / "edge.sqlite",
        meters=[],
    )
    ob = await Outbox.open(settings.state_db)
    agent = EdgeAgent(settings, Ed25519PrivateKey.generate(), SystemClock(), [], ob)
    link = _ReceiptFirstLink(agent, ob)
    agent.link = link  # type: ignore[assignment]
    dev = FakeDevice("pi-race")
    for _ in range(3):
        await ob.commit_mint(dev.next_token(), AccountantState(), 0)
    stop = asyncio.Event()
    publisher = asyncio.create_task(agent._publish_loop(stop))
    try:
        assert await agent.drain(timeout_s=10.0)
    finally:
        stop.set()
        agent._wake.set()
        await asyncio.wait_for(publisher, 5.0)
    assert len(link.published) == 3
    # What the cloud holds (3 receipts) is what the outbox counts as minted and delivered.
    assert await _counts(ob) == (3, 3, 3, 0, 0)
    await ob.close()


class _CancelAtCall:
    """Proxies the outbox's aiosqlite connection and cancels the running task when the n-th
    statement (or commit) has been queued: the await is interrupted, the statement still runs
    on aiosqlite's thread."""

    def __init__(self, db: Any, n: int, ob: Outbox, seen: list[asyncio.Future[list[OutboxRow]]]):
        self._db, self.n, self.calls, self.ob, self.seen = db, n, 0, ob, seen

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            # A publisher asking for due tokens meanwhile must not see an uncommitted one.
            self.seen.append(asyncio.ensure_future(self.ob.due(now_ms=2**62, resend_after_ms=0)))

    def execute(self, *args: Any) -> Any:
        self._tick()
        return self._db.execute(*args)

    async def commit(self) -> None:
        self._tick()
        await self._db.commit()

    async def rollback(self) -> None:
        await self._db.rollback()


async def test_a_mint_cancelled_at_any_point_is_all_or_nothing(tmp_path: Path) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    real = ob._db
    stored = 0
    for n in range(1, 9):  # commit_mint makes 6 calls; 7 and 8 are never reached
        tok = dev.next_token()
        seen: list[asyncio.Future[list[OutboxRow]]] = []
        ob._db = _CancelAtCall(real, n, ob, seen)  # type: ignore[assignment]
        mint = asyncio.ensure_future(ob.commit_mint(tok, AccountantState(), 0))
        with contextlib.suppress(asyncio.CancelledError):
            await mint
        ob._db = real
        rows = await ob.due(now_ms=2**62, resend_after_ms=0, limit=100)
        held = tok.record_hash in {r.record_hash for r in rows}
        stored += held
        # A commit that was already queued completes; anything earlier is rolled back.
        assert held == (n >= 6), n
        if not held:
            dev.chain = await ob.load_chain()  # the next mint reuses the seq
        c = await ob.counters()
        assert c["minted"] == len(rows) == stored == (await ob.load_chain()).seq, n
        for task in seen:
            assert {r.record_hash for r in await task} <= {r.record_hash for r in rows}, n
    await ob.close()
