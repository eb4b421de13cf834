"""The edge outbox on a real SQLite file: store before publish, delete only on the cloud's word."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.accounting import AccountantState, Channel, ChannelState
from edge.keys import KeyFileError, create_key_file, load_key_file
from edge.outbox import Outbox
from tests.helpers.records import FakeDevice


async def test_minted_token_and_chain_survive_a_reopen(tmp_path: Path) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    tok = dev.next_token()
    state = AccountantState(
        interval_start=tok.record.interval_end,
        last_closed_start=tok.record.interval_start,
        channels={Channel.GENERATED: ChannelState(base=9, last=9, source="m1")},
        flags=["R"],
    )
    await ob.commit_mint(tok, state, 1)
    await ob.close()

    ob = await Outbox.open(tmp_path / "edge.sqlite")
    chain = await ob.load_chain()
    assert chain == tok.next_chain
    assert await ob.load_accountant() == state
    (row,) = await ob.due(now_ms=2, resend_after_ms=1000)
    assert row.envelope == tok.envelope
    assert (await ob.counters())["minted"] == 1
    await ob.close()


async def test_token_is_dropped_only_on_the_clouds_receipt(tmp_path: Path) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    t1, t2 = dev.next_token(), dev.next_token()
    for t in (t1, t2):
        await ob.commit_mint(t, AccountantState(), 0)
    await ob.mark_sent(t1.record_hash, now_ms=1000)
    # broker acknowledged, cloud not yet: t1 waits, not due again until the resend delay
    assert [r.seq for r in await ob.due(now_ms=1500, resend_after_ms=5000)] == [2]
    assert [r.seq for r in await ob.due(now_ms=7000, resend_after_ms=5000)] == [1, 2]
    assert await ob.confirm(t1.record_hash)
    assert not await ob.confirm(t1.record_hash)  # a second receipt changes nothing
    c = await ob.counters()
    assert (c["minted"], c["delivered"], c["confirmed"], c["waiting"]) == (2, 1, 1, 1)
    await ob.close()


async def test_sequence_gap_receipt_resends_earlier_tokens_first(tmp_path: Path) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    toks = [dev.next_token() for _ in range(3)]
    for t in toks:
        await ob.commit_mint(t, AccountantState(), 0)
        await ob.mark_sent(t.record_hash, now_ms=1000)
    await ob.reject(toks[2].record_hash, "sequence_gap", retry=True, now_ms=2000)
    assert [r.seq for r in await ob.due(now_ms=2100, resend_after_ms=5000)] == [1, 2]
    await ob.reject(toks[0].record_hash, "bad_signature", retry=False, now_ms=2200)
    c = await ob.counters()
    assert c["rejected"] == 1
    assert [r.seq for r in await ob.due(now_ms=99_000, resend_after_ms=5000)] == [2, 3]
    await ob.close()


async def test_rate_limited_receipt_waits_the_resend_delay_and_hurries_nothing(
    tmp_path: Path,
) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    toks = [dev.next_token() for _ in range(3)]
    for t in toks:
        await ob.commit_mint(t, AccountantState(), 0)
        await ob.mark_sent(t.record_hash, now_ms=1000)
    await ob.reject(toks[2].record_hash, "rate_limited", retry=True, now_ms=2000)
    # Nothing is due at once (the earlier tokens are not hurried); the refused one is kept and
    # goes again after the resend delay, counted as neither rejected nor confirmed.
    assert await ob.due(now_ms=2100, resend_after_ms=5000) == []
    assert [r.seq for r in await ob.due(now_ms=6500, resend_after_ms=5000)] == [1, 2]
    assert [r.seq for r in await ob.due(now_ms=7100, resend_after_ms=5000)] == [1, 2, 3]
    c = await ob.counters()
    assert c["rejected"] == 0 and c["waiting"] == 3
    await ob.close()


def test_key_file_is_private_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "device.key"
    key = create_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_key_file(path).public_key() == key.public_key()
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


async def test_confirmed_tokens_wait_for_their_ledger_proof_then_are_pruned(
    tmp_path: Path,
) -> None:
    dev = FakeDevice("pi-1")
    ob = await Outbox.open(tmp_path / "edge.sqlite")
    tokens = [dev.next_token() for _ in range(3)]
    for t in tokens:
        await ob.commit_mint(t, AccountantState(), 0)
        await ob.confirm(t.record_hash)
    waiting = await ob.proofs_waiting()
    assert waiting == [(t.record.token_id, t.record_hash) for t in tokens]  # oldest first
    await ob.mark_proof(tokens[0].record.token_id, "proven", "in log of 9", now_ms=1_000)
    await ob.mark_proof(tokens[1].record.token_id, "failed", "not covered", now_ms=1_000)
    with pytest.raises(ValueError, match="unknown proof state"):
        await ob.mark_proof(tokens[2].record.token_id, "maybe", "", now_ms=1_000)
    assert await ob.proof_counts() == {"waiting": 1, "proven": 1, "failed": 1}
    # A month later the proven one is forgotten; the failed one stays for inspection.
    assert await ob.prune_proofs(checked_before_ms=2_000) == 1
    assert await ob.proof_counts() == {"waiting": 1, "proven": 0, "failed": 1}
    await ob.save_tree_head(9, b"\x01" * 32)
    await ob.close()
    ob = await Outbox.open(tmp_path / "edge.sqlite")  # survives a restart
    assert await ob.load_tree_head() == (9, b"\x01" * 32)
    await ob.close()
